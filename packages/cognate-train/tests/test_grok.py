"""The grok subcommand: outputs, accuracy recomputed from the saved weights, resume equality."""

from __future__ import annotations

import json

import pytest
import torch
from cognate_train import checkpoints as ck
from cognate_train import grok as grok_mod
from cognate_train.cli import main
from cognate_train.detector import GrokkingDetector
from cognate_train.grok_data import modular_dataset, vocab_size
from cognate_train.metrics import read_metrics

ARGS = ["grok", "--preset", "smoke", "--optimizer", "mugrokfast"]  # the filter and its boost


@pytest.fixture(scope="module")
def grok_run(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("grok") / "run"
    assert main([*ARGS, "--output-dir", str(out)]) == 0
    return out


def test_outputs_and_metrics(grok_run):
    summary = json.loads((grok_run / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["world_size"] == 1
    assert summary["task"] == "x*y mod 11"
    records = read_metrics(grok_run / "metrics.jsonl")
    evals = [r for r in records if "val/accuracy" in r]
    assert [r["step"] for r in evals] == list(range(5, 61, 5))
    for r in evals:
        assert {"train/accuracy", "grokking/gap", "grokking/detected"} <= set(r)
        assert r["grokking/gap"] == pytest.approx(r["train/accuracy"] - r["val/accuracy"])
    assert all(r["grokfast/lambda"] == 1.0 for r in records if "grokfast/lambda" in r)
    for png in ("loss.png", "accuracy.png", "lr.png"):
        assert (grok_run / "plots" / png).is_file()


def test_final_accuracy_recomputed_from_saved_weights(grok_run):
    model = grok_mod.GrokDecoder(vocab_size(11), d_model=32, n_layers=2, n_heads=2)
    ck.load_weights(model, grok_run / "final")
    train, val = modular_dataset(11, "*", 0.5, 0)
    summary = json.loads((grok_run / "summary.json").read_text())
    with torch.no_grad():
        for rows, key in ((train, "train/accuracy"), (val, "val/accuracy")):
            pred = model(rows[:, :4])[:, -1, :].argmax(-1)
            assert (pred == rows[:, 4]).float().mean().item() == pytest.approx(
                summary["final"][key]
            )


def test_grok_resume_after_crash_equals_uninterrupted(
    grok_run, tmp_path, monkeypatch, same_weights
):
    out = tmp_path / "run"
    real_save = ck.CheckpointManager.save

    def crash(self, step, writer):
        real_save(self, step, writer)
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.CheckpointManager, "save", crash)
    assert main([*ARGS, "--output-dir", str(out)]) == 130
    monkeypatch.setattr(ck.CheckpointManager, "save", real_save)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000020"]
    assert main([*ARGS, "--output-dir", str(out)]) == 0
    same_weights(out / "final", grok_run / "final")


def test_eval_of_a_grok_checkpoint(grok_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(grok_run / "final"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((grok_run / "summary.json").read_text())
    assert result["val/accuracy"] == pytest.approx(summary["final"]["val/accuracy"])


def test_detector_events_boost_lambda_stop_the_run_and_reach_metrics(tmp_path, monkeypatch):
    """Scripted detector: 'grokking' at the 2nd eval, 'converged' at the 4th."""

    def scripted(self, step, train_acc, val_acc):
        self.val_history.append(val_acc)
        self.train_history.append(train_acc)
        n = len(self.val_history)
        if n == 2:
            self.grokking_step = step
            return [{"event": "grokking", "step": step, "val_acc": val_acc}]
        if n == 4:
            self.converged_step = step
            return [{"event": "converged", "step": step}]
        return []

    monkeypatch.setattr(GrokkingDetector, "update", scripted)
    out = tmp_path / "run"
    assert main([*ARGS, "--output-dir", str(out), "--log-every", "5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grokking_step"] == 10 and summary["converged_step"] == 20
    assert summary["steps"] == 20 and summary["stop_reason"] == "grokking_converged"
    records = read_metrics(out / "metrics.jsonl")
    lam = {r["step"]: r["grokfast/lambda"] for r in records if "grokfast/lambda" in r}
    assert lam[5] == lam[10] == 1.0  # logged before the eval at step 10 boosted it
    assert lam[15] == lam[20] == pytest.approx(1.0 * 1.5)  # lambda_boost 1.5
    assert any(r.get("grokking/event/grokking") == 1.0 and r["step"] == 10 for r in records)
    assert any(r.get("grokking/event/converged") == 1.0 and r["step"] == 20 for r in records)
    # the boosted lambda is in the optimizer state of the last checkpoint, so a resume keeps it
    state = ck.load_torch_state(out / "checkpoints" / "step-000020")
    assert all(
        g["grokfast_lambda"] == pytest.approx(1.5) for g in state["optimizer"]["param_groups"]
    )


def test_grok_defaults_are_mugrokfasts_tuned_grokking_preset():
    from cognate_train.config import GrokConfig
    from mugrokfast import PRESETS

    preset, cfg = PRESETS["grokking"], GrokConfig()
    kw = preset.kwargs
    assert kw["grokfast"] is None and cfg.optimizer == "muon"  # measured: the filter adds nothing
    assert (cfg.lr, tuple(cfg.betas), cfg.weight_decay) == (
        kw["lr"],
        tuple(kw["betas"]),
        kw["weight_decay"],
    )
    assert cfg.muon_lr == kw["muon_lr"]
    assert (cfg.grokfast_alpha, cfg.grokfast_lambda) == (0.98, 1.0)  # for --optimizer mugrokfast
    assert cfg.grad_clip == (preset.grad_clip or 0.0)
