"""``train --dry-run`` estimates without writing; evaluation progress covers every prompt."""

from __future__ import annotations

import re

import pytest
from cognate_train.cli import main
from cognate_train.presets import TRAIN_PRESETS


def test_dry_run_prints_an_estimate_and_writes_nothing(tmp_path, capsys, single_thread):
    out = tmp_path / "never"
    args = ["train", "--preset", "smoke", "--output-dir", str(out), "--dry-run"]
    assert main(args + ["--specialization", "all"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    rows = re.findall(r"(\w+)\s+(\d+) steps x ([\d.]+) s = (\d+)m(\d\d)s training", text)
    assert [r[0] for r in rows] == ["reasoning", "memory", "speed"]
    for _, steps, per_step, m, s in rows:
        assert int(steps) == TRAIN_PRESETS["smoke"]["max_steps"]
        # the training estimate is steps x seconds per step (printed rounded)
        assert int(m) * 60 + int(s) == pytest.approx(int(steps) * float(per_step), abs=1.0)
    assert "estimated total:" in text and "peak memory" in text


def test_an_evaluation_advances_its_bar_by_every_prompt(monkeypatch):
    import cognate_train.evaluation as evaluation
    import torch
    from cognate_model import CognateConfig, CognateForCausalLM
    from cognate_train.data import make_split
    from cognate_train.tokenizer import build_tokenizer

    counted: dict[str, int] = {}

    class Bar:
        def __init__(self, total, desc):
            self.total, self.desc = total, desc
            counted[desc] = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            assert counted[self.desc] == self.total

        def update(self, n):
            counted[self.desc] += n

    monkeypatch.setattr(evaluation, "eval_bar", Bar)
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = CognateConfig.from_preset("cognate-tiny", vocab_size=len(tok), max_seq_len=64)
    model = CognateForCausalLM(cfg)
    _, val = make_split(["copy", "reverse", "arith_add"], 4, 5, 0, 48)
    evaluation.exact_match(model, tok, val, batch_size=4)
    evaluation.val_loss(model, tok, val, batch_size=4, max_len=48)
    assert counted == {"generate": len(val), "val loss": len(val)}
