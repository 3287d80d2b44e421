"""Training a finished run longer (``--max-steps`` + ``--override``) continues its lr schedule:
no second warmup, no jump back up the cosine (the issue: lr 1e-4 -> 4.86e-4)."""

from __future__ import annotations

import json
import math

import pytest
from cognate_train.cli import main
from cognate_train.optim import lr_multiplier
from cognate_train.presets import TRAIN_PRESETS


def _lrs(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def test_extending_a_finished_run_goes_on_at_the_final_lr(tmp_path, capsys, single_thread):
    out = tmp_path / "run"
    base = ["train", "--preset", "smoke", "--output-dir", str(out)]
    assert main(base) == 0
    assert main([*base, "--max-steps", "32", "--override"]) == 0
    assert "warmup is not repeated" in capsys.readouterr().err
    assert main([*base, "--max-steps", "40", "--override"]) == 0  # a second extension
    lrs = _lrs(out)
    final_lr = 1e-3 * 0.1  # RunConfig's lr x min_lr_ratio (the smoke preset keeps both)
    assert lrs[24] == pytest.approx(final_lr, rel=1e-9)
    assert sorted(s for s in lrs if s > 24) == [28, 32, 36, 40]
    for step in (28, 32, 36, 40):
        assert lrs[step] == pytest.approx(final_lr, rel=1e-9), step


def test_the_continued_schedule_is_continuous_and_decays_to_the_final_ratio():
    warmup, total, r = 4, 24, 0.1
    s0 = 12
    m0 = lr_multiplier(s0, warmup, total, r)
    anchored = [lr_multiplier(s, warmup, 48, r, (s0, m0)) for s in range(s0, 49)]
    assert anchored[0] == pytest.approx(m0)
    assert anchored[-1] == pytest.approx(r)
    assert all(a >= b for a, b in zip(anchored, anchored[1:], strict=False))
    # halfway through the remaining steps the cosine is halfway between m0 and r
    assert lr_multiplier(30, warmup, 48, r, (s0, m0)) == pytest.approx((m0 + r) / 2)
    assert not math.isclose(lr_multiplier(s0, warmup, 48, r), m0)  # what re-laying would do
    assert TRAIN_PRESETS["smoke"]["warmup_steps"] == warmup
