"""Progress lines: per-model ETA, and with several models an ETA over all of them."""

from __future__ import annotations

import pytest
from cognate_train import progress as pg
from cognate_train.progress import Progress, RunPlan, hms


def test_run_plan_eta_all_follows_the_mean_of_finished_models():
    plan = RunPlan(4)
    assert plan.index == 1
    # no model finished yet: the others are assumed to take this one's projected time
    assert plan.eta_all(eta=30.0, projected=100.0) == 30.0 + 3 * 100.0
    plan.finished += [80.0, 120.0]
    assert plan.index == 3
    assert plan.eta_all(eta=10.0, projected=999.0) == 10.0 + 1 * 100.0
    plan.finished.append(90.0)
    assert plan.eta_all(eta=5.0, projected=999.0) == 5.0  # the last model: its own ETA only


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def record(step: int) -> dict[str, float]:
    return {"step": step, "train/loss": 1.5, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0}


@pytest.mark.parametrize("n_models", [1, 3])
def test_log_line_eta_per_model_and_for_all_models(monkeypatch, n_models):
    clock = Clock()
    monkeypatch.setattr(pg.time, "perf_counter", clock)
    monkeypatch.setattr(pg.sys.stderr, "isatty", lambda: False)
    lines: list[str] = []
    plan = RunPlan(n_models)
    p = Progress(total=100, initial=0, name="reasoning", log=lines.append, plan=plan)
    clock.t += 20.0  # 25 steps in 20 s: 0.8 s/step, 75 steps (60 s) left
    p.post(record(25))
    (line,) = lines
    assert "[reasoning] step 25/100" in line and "eta 60s" in line
    if n_models == 1:
        assert "all models" not in line
    else:
        # this model 60 s left; two more at this model's projected 80 s each
        assert line.endswith("(model 1/3, all models ~220s)")


def test_hms_formats_minutes_and_hours():
    assert hms(65) == "1m05s"
    assert hms(3725) == "1h02m05s"
    assert hms(None) == "0m00s"


def test_a_resumed_model_projects_whole_models_for_the_others(monkeypatch):
    """Resumed at step 50 of 100: the models still to come take all 100 steps at this rate."""
    clock = Clock()
    monkeypatch.setattr(pg.time, "perf_counter", clock)
    monkeypatch.setattr(pg.sys.stderr, "isatty", lambda: False)
    lines: list[str] = []
    p = Progress(total=100, initial=50, name="memory", log=lines.append, plan=RunPlan(2))
    clock.t += 10.0  # 25 steps in 10 s: 0.4 s/step, 25 steps (10 s) left
    p.post(record(75))
    # this model 10 s left; the next one 100 steps x 0.4 s
    assert lines[0].endswith("(model 1/2, all models ~50s)")
