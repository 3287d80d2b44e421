"""End-to-end runs of the smoke preset: outputs, metrics, checkpoints, resume, eval/generate."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from cognate_train import checkpoints as ck
from cognate_train import trainer as trainer_mod
from cognate_train.cli import main
from cognate_train.config import TRAIN_PRESETS, build_config
from cognate_train.metrics import read_metrics
from cognate_train.state import Checkpointer

SMOKE = TRAIN_PRESETS["smoke"]


def test_output_layout(smoke_run):
    for name in ("metrics.jsonl", "summary.json", "report.md", "best", "final"):
        assert (smoke_run / name).exists(), name
    steps = sorted(p.name for p in (smoke_run / "checkpoints").iterdir())
    # checkpoint_every 8 over 24 steps, keep_last 2: the last two survive
    assert steps == ["step-000016", "step-000024"]
    for s in steps:
        ck.verify(smoke_run / "checkpoints" / s)
    for png in ("loss.png", "accuracy.png", "lr.png"):
        assert (smoke_run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["world_size"] == 1
    assert summary["steps"] == SMOKE["max_steps"] and summary["stop_reason"] == "max_steps"
    assert summary["grokking_step"] is None
    assert len(summary["samples"]) == SMOKE["samples"]


def test_metrics_jsonl_contents(smoke_run):
    records = read_metrics(smoke_run / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in train] == list(range(4, 25, 4))  # log_every 4
    assert [r["step"] for r in evals] == [12, 24]  # eval_every 12 and the end
    for r in train:
        for key in (
            "lr",
            "grad_norm",
            "tokens_per_s",
            "curriculum/stage",
            "skipped_steps",
            "grokfast/lambda",
            "act/steps_mean",
            "ltm/gate_mean",
            "attn/max_logit",  # recorded on logged steps even without --qk-clip
        ):
            assert key in r, key
        assert r["train/perplexity"] == pytest.approx(math.exp(r["train/loss"]), rel=1e-12)
        assert r["skipped_steps"] == 0 and r["grad_norm"] > 0
    # warmup + cosine, recomputed here from the formula (AdamW groups' base lr = cfg.lr)
    cfg = build_config("train", "smoke", None, {})
    w, total, r_min = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio
    for r in train:
        s = r["step"]
        f = (
            (s + 1) / w
            if s < w
            else r_min + (1 - r_min) * 0.5 * (1 + math.cos(math.pi * (s - w) / (total - w)))
        )
        assert r["lr"] == pytest.approx(cfg.lr * f, rel=1e-9)
        assert r["lr/muon"] == pytest.approx(cfg.muon_lr * f, rel=1e-9)
    # the curriculum goes foundation -> reasoning -> advanced over fractions 0.3/0.3/0.4
    stages = [r["curriculum/stage"] for r in train]
    assert stages == sorted(stages) and stages[0] == 0 and stages[-1] == 2
    for r in evals:
        fams = {k: v for k, v in r.items() if k.startswith("val/accuracy/")}
        assert len(fams) >= 10
        # equal n per family, so the overall accuracy is the mean over families
        assert r["val/accuracy"] == pytest.approx(sum(fams.values()) / len(fams))


def test_train_tokens_count_the_batches_drawn(smoke_run):
    """``train/tokens`` = non-padding tokens of every batch so far, replayed from the data."""
    from cognate_train.data import (
        STAGES,
        CurriculumDataset,
        families_for_stage,
        make_split,
        split_by_stage,
        stage_at,
    )
    from cognate_train.tokenizer import build_tokenizer

    cfg = build_config("train", "smoke", None, {})
    train, _ = make_split(
        families_for_stage(STAGES[-1]), cfg.n_train, cfg.n_val, cfg.seed, cfg.max_len
    )
    data = CurriculumDataset(
        build_tokenizer(), split_by_stage(train), cfg.batch_size, cfg.max_len, cfg.seed
    )
    expected, total = {}, 0
    for step in range(cfg.max_steps):
        batch = data.next_batch(stage_at(step, cfg.max_steps, cfg.stage_fractions))
        total += int(batch["attention_mask"].sum())
        expected[step + 1] = total
    records = [r for r in read_metrics(smoke_run / "metrics.jsonl") if "train/tokens" in r]
    assert {r["step"] for r in records} >= {4, 8, 12, 24}
    for r in records:
        assert r["train/tokens"] == expected[r["step"]], r["step"]
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["tokens_seen"] == total


def test_final_loads_with_auto_classes_and_matches_summary(smoke_run, same_weights):
    import cognate_model  # noqa: F401
    from cognate_train.data import families_for_stage, make_split
    from cognate_train.evaluation import val_loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = smoke_run / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    summary = json.loads((smoke_run / "summary.json").read_text())
    _, val = make_split(
        families_for_stage("advanced"), SMOKE["n_train"], SMOKE["n_val"], 0, SMOKE["max_len"]
    )
    assert val_loss(model, tok, val, 32, SMOKE["max_len"]) == pytest.approx(
        summary["final"]["val/loss"], rel=1e-5
    )
    # final/ holds the last step's weights (no EMA in the smoke preset)
    same_weights(final, smoke_run / "checkpoints" / "step-000024")


def test_eval_and_generate_commands(smoke_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(smoke_run / "final"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert result["val/loss"] == pytest.approx(summary["final"]["val/loss"], rel=1e-5)
    assert result["val/accuracy"] == summary["final"]["val/accuracy"]
    # more validation examples than the run had would include its training examples
    assert main(["eval", "--checkpoint", str(smoke_run / "final"), "--n-val", "5"]) == 2
    assert "n-val: must be in [1, 4]" in capsys.readouterr().err
    sample = summary["samples"][0]
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(smoke_run / "final"),
                "--prompt",
                sample["prompt"],
                "--max-new-tokens",
                "16",
            ]
        )
        == 0
    )
    shown = json.dumps(sample["prompt"]) + " -> " + json.dumps(sample["generated"]) + "\n"
    assert capsys.readouterr().out == shown  # the completion apart from its prompt


def test_resume_after_crash_equals_uninterrupted(smoke_run, tmp_path, monkeypatch, same_weights):
    out = tmp_path / "run"
    real_save = Checkpointer.save
    calls = []

    def crash_after_first(self):
        path = real_save(self)
        calls.append(path)
        raise KeyboardInterrupt  # the process dies right after the step-8 checkpoint

    monkeypatch.setattr(Checkpointer, "save", crash_after_first)
    assert main(["train", "--preset", "smoke", "--output-dir", str(out)]) == 130
    assert [p.name for p in calls] == ["step-000008"] and not (out / "final").exists()
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert main(["train", "--preset", "smoke", "--output-dir", str(out)]) == 0
    same_weights(out / "final", smoke_run / "final")
    # the resumed run's metrics read like the uninterrupted run's (losses are bit-identical)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]  # noqa: E731
    assert strip(read_metrics(out / "metrics.jsonl")) == strip(
        read_metrics(smoke_run / "metrics.jsonl")
    )
    # the same command once more: nothing to do, the same weights
    assert main(["train", "--preset", "smoke", "--output-dir", str(out)]) == 0
    same_weights(out / "final", smoke_run / "final")


def test_damaged_newest_checkpoint_is_named_and_skipped(smoke_run, tmp_path, capsys, same_weights):
    out = tmp_path / "run"
    shutil.copytree(smoke_run, out)
    shutil.rmtree(out / "final")
    victim = out / "checkpoints" / "step-000024" / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--preset", "smoke", "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "step-000024 is damaged: model.safetensors checksum mismatch" in err
    assert "resumed from" in err and "step-000016" in err
    # the damaged checkpoint was kept (renamed), not deleted
    kept = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("step-000024.damaged")]
    assert len(kept) == 1 and (kept[0] / "model.safetensors").read_bytes() == bytes(data)
    same_weights(out / "final", smoke_run / "final")


def _nan_model_factory(nan_calls):
    """The real model, with the loss replaced by nan on the forward calls in ``nan_calls``."""

    def factory(tok):
        model = trainer_mod.build_model("cognate-tiny", "reasoning", tok, SMOKE["max_len"])
        original = model.forward
        count = [0]

        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            if kwargs.get("labels") is not None:
                count[0] += 1
                if nan_calls is None or count[0] in nan_calls:
                    out.loss = out.loss * float("nan")
            return out

        model.forward = forward
        return model

    return factory


def test_nonfinite_step_is_skipped_without_touching_optimizer_state(
    tmp_path, single_thread, same_weights, load_weights
):
    cfg = build_config(
        "train",
        "smoke",
        None,
        {"max_steps": 4, "checkpoint_every": 1, "keep_last": 4, "eval_every": 100, "samples": 0},
    )
    out = tmp_path / "run"
    t = trainer_mod.Trainer(
        cfg, "reasoning", out, model_factory=_nan_model_factory({3}), log=lambda m: None
    )
    summary = t.run()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    before, after = out / "checkpoints" / "step-000002", out / "checkpoints" / "step-000003"
    same_weights(before, after)
    sa, sb = ck.load_torch_state(before), ck.load_torch_state(after)
    for pid, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, sb["optimizer"]["state"][pid][k]), (pid, k)
    # step 4 trained normally again
    w3, w4 = load_weights(after), load_weights(out / "checkpoints" / "step-000004")
    assert any(not torch.equal(w3[k], w4[k]) for k in w3)
    assert all(torch.isfinite(v).all() for v in w4.values())
    records = read_metrics(out / "metrics.jsonl")
    assert any(r.get("skipped_steps") == 1 for r in records)


def test_too_many_nonfinite_steps_stop_the_run(tmp_path, single_thread):
    cfg = build_config("train", "smoke", None, {"max_nonfinite": 3, "samples": 0})
    t = trainer_mod.Trainer(
        cfg,
        "reasoning",
        tmp_path / "run",
        model_factory=_nan_model_factory(None),
        log=lambda m: None,
    )
    with pytest.raises(trainer_mod.TrainingStopped, match="3 non-finite steps in a row"):
        t.run()


def test_modes_resume_mid_supervision_with_ema_and_accumulation(
    tmp_path, monkeypatch, single_thread, same_weights
):
    """Deep supervision (2 steps a batch), grad accumulation, weight EMA and grokking-aware
    evaluation together; a crash after the step-3 checkpoint (mid-way through a batch's
    supervision steps) and a restart still end bit-identical to an uninterrupted run."""
    args = ["train", "--preset", "smoke", "--max-steps", "8", "--checkpoint-every", "3", "--eval-every", "8",
            "--supervision-steps", "2", "--grad-accum", "2", "--ema-decay", "0.9", "--grokking-aware",
            "--samples", "0", "--n-val", "2"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main([*args, "--output-dir", str(ref)]) == 0
    records = read_metrics(ref / "metrics.jsonl")
    evals = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in evals] == [8]
    assert all(0.0 <= r["train/accuracy"] <= 1.0 and "grokking/gap" in r for r in evals)
    # final/ holds the EMA weights, the step checkpoint the raw ones
    fin, raw = load_file_dir(ref / "final"), load_file_dir(ref / "checkpoints" / "step-000008")
    assert any(not torch.equal(fin[k], raw[k]) for k in fin)

    real_save = Checkpointer.save

    def crash_after_first(self):
        real_save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", crash_after_first)
    assert main([*args, "--output-dir", str(out)]) == 130
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert main([*args, "--output-dir", str(out)]) == 0
    same_weights(out / "final", ref / "final")
    same_weights(out / "checkpoints" / "step-000008", ref / "checkpoints" / "step-000008")


def load_file_dir(d):
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def test_early_stopping_stops_after_patience_evaluations(tmp_path, single_thread):
    out = tmp_path / "run"
    # an improvement of 100 nats is impossible: the 2nd evaluation cannot improve, patience 1
    args = ["train", "--preset", "smoke", "--eval-every", "4", "--early-stopping-patience", "1",
            "--min-delta", "100", "--samples", "0", "--output-dir", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "early_stopping" and summary["steps"] == 8
    assert ck.verify(out / "best")["step"] == 4  # the first evaluation is the best one
    assert ck.verify(out / "checkpoints" / "step-000008")["step"] == 8  # saved where it stopped
    # killed after that checkpoint but before final/: the restarted run stays stopped
    shutil.rmtree(out / "final")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "early_stopping" and summary["steps"] == 8
    assert (out / "final").is_dir() and not (out / "checkpoints" / "step-000012").exists()


def test_epochs_set_the_number_of_steps(tmp_path):
    cfg = build_config("train", "smoke", None, {"epochs": 2.0, "grad_accum": 2})
    t = trainer_mod.Trainer(cfg, "reasoning", tmp_path, log=lambda m: None)
    task = t.make_task(torch.device("cpu"))
    from cognate_train.data import families_for_stage

    n_final_stage = SMOKE["n_train"] * len(
        families_for_stage("advanced")
    )  # every family's train split
    per_epoch = n_final_stage // SMOKE["batch_size"] // 2  # optimizer steps per epoch (accum 2)
    assert task.total_steps == 2 * per_epoch


def test_resume_from_an_explicit_checkpoint_path(smoke_run, tmp_path, same_weights):
    out = tmp_path / "run"
    start = smoke_run / "checkpoints" / "step-000016"
    assert (
        main(["train", "--preset", "smoke", "--resume", str(start), "--output-dir", str(out)]) == 0
    )
    same_weights(out / "final", smoke_run / "final")


def test_eval_and_generate_take_test_time_cycles(smoke_run, capsys):
    """--trm-cycles K: eval reports K and scores the model run with K cycles (the reference:
    val_loss of the loaded model called with trm_cycles=K); the trained count changes nothing."""
    import functools

    from cognate_model import CognateForCausalLM
    from cognate_train.data import active_stages, families_for_stage, make_split
    from cognate_train.evaluation import val_loss
    from cognate_train.tokenizer import build_tokenizer

    final = str(smoke_run / "final")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", final, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    trained = plain["trm_cycles"]
    assert main(["eval", "--checkpoint", final, "--json", "--trm-cycles", str(trained)]) == 0
    assert json.loads(capsys.readouterr().out) == plain
    deeper = trained + 3
    assert main(["eval", "--checkpoint", final, "--json", "--trm-cycles", str(deeper)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trm_cycles"] == deeper
    model = CognateForCausalLM.from_pretrained(final).eval()
    tok = build_tokenizer()
    cfg = SMOKE | {"stage_fractions": build_config("train", "smoke", None, {}).stage_fractions}
    families = families_for_stage(active_stages(cfg["stage_fractions"])[-1])
    _, val = make_split(families, cfg["n_train"], cfg["n_val"], 0, cfg["max_len"])
    ref = val_loss(functools.partial(model, trm_cycles=deeper), tok, val, 32, cfg["max_len"], "cpu")
    assert result["val/loss"] == pytest.approx(ref, rel=1e-6)
    assert main(["eval", "--checkpoint", final, "--trm-cycles", "0"]) == 2
    assert "trm-cycles: must be >= 1" in capsys.readouterr().err
    args = ["generate", "--checkpoint", final, "--prompt", "1+1=", "--trm-cycles", str(deeper)]
    assert main(args) == 0
