"""GrokkingDetector on synthetic accuracy curves."""

import json
import math

import pytest
from cognate_train.detector import GrokkingDetector


def grokking_curve(n_evals: int, jump_at: int, width: int = 3):
    """Train accuracy saturates early; val sits near chance, then a sigmoid jump at ``jump_at``."""
    out = []
    for i in range(n_evals):
        train = min(1.0, 0.2 + 0.2 * i)
        val = 0.05 + 0.93 / (1.0 + math.exp(-(i - jump_at) / (width / 4)))
        out.append((i * 10, train, val))
    return out


def run(det, curve):
    events = []
    for step, tr, va in curve:
        events += det.update(step, tr, va)
    return events


def test_jump_is_found_at_the_step_where_val_leaves_its_window_mean():
    curve = grokking_curve(60, jump_at=30)
    det = GrokkingDetector(window_size=5, gap_threshold=0.05, jump_threshold=0.10, patience=5)
    events = run(det, curve)
    grok = [e for e in events if e["event"] == "grokking"]
    assert len(grok) == 1
    # independent reference: the first eval whose val exceeds the mean of the previous 5 by
    # >= 0.10 while the mean gap over those 5 was >= 0.05
    expected = None
    for i in range(1, len(curve)):
        prev = curve[max(0, i - 5) : i]
        mean_val = sum(v for _, _, v in prev) / len(prev)
        mean_gap = sum(t for _, t, _ in prev) / len(prev) - mean_val
        if curve[i][2] - mean_val >= 0.10 and mean_gap >= 0.05:
            expected = curve[i][0]
            break
    assert grok[0]["step"] == expected
    assert 270 <= expected <= 300  # during the sigmoid's rise, not before it
    conv = [e for e in events if e["event"] == "converged"]
    assert len(conv) == 1 and conv[0]["step"] > grok[0]["step"]
    # converged exactly after `patience` consecutive small-gap evals following the jump
    small = 0
    for step, tr, va in curve:
        if step < grok[0]["step"]:
            continue
        small = small + 1 if abs(tr - va) < 0.05 else 0
        if small == 5:
            assert conv[0]["step"] == step
            break


def test_no_false_alarm_on_smooth_curves():
    # train and val rise together (ordinary learning): no memorisation gap, no grokking
    together = [(i, min(1.0, i / 50), min(1.0, i / 50) - 0.01) for i in range(100)]
    det = GrokkingDetector(window_size=5, jump_threshold=0.10, gap_threshold=0.05, patience=3)
    assert run(det, together) == []
    # a slow generalisation after memorisation: val creeps up 1 % per eval, never a jump
    slow = [(i, 1.0, 0.1 + 0.01 * i) for i in range(80)]
    det = GrokkingDetector(window_size=5, jump_threshold=0.10, gap_threshold=0.05, patience=3)
    assert run(det, slow) == []
    assert not det.detected and not det.converged


def test_single_noisy_eval_below_threshold_is_ignored():
    curve = [(i, 1.0, 0.1 + (0.08 if i == 20 else 0.0)) for i in range(40)]
    det = GrokkingDetector(window_size=5, jump_threshold=0.10)
    assert run(det, curve) == []


def test_state_dict_round_trip_continues_identically():
    curve = grokking_curve(60, jump_at=30)
    a = GrokkingDetector(window_size=4, patience=4)
    ev_a = run(a, curve)
    b = GrokkingDetector(window_size=4, patience=4)
    ev_b = run(b, curve[:25])
    state = json.loads(json.dumps(b.state_dict()))  # must survive JSON (checkpoint file)
    c = GrokkingDetector(window_size=4, patience=4)
    c.load_state_dict(state)
    ev_b += run(c, curve[25:])
    assert ev_a == ev_b
    assert c.grokking_step == a.grokking_step and c.converged_step == a.converged_step


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"window_size": 0}, "window_size"),
        ({"gap_threshold": 0.0}, "gap_threshold"),
        ({"jump_threshold": 1.5}, "jump_threshold"),
        ({"patience": 0}, "patience"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GrokkingDetector(**kwargs)
