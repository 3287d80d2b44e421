"""The training engine: train and grok run the same loop; one config, flags generated from it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from cognate_train import engine as engine_mod
from cognate_train.cli import build_parser, main
from cognate_train.config import GrokConfig, RunConfig, TrainConfig, build_config
from cognate_train.grok import GrokTask
from cognate_train.state import TrainState
from cognate_train.trainer import CurriculumTask


def test_train_and_grok_run_through_the_engine(tmp_path, monkeypatch, single_thread):
    """Every optimizer step of both commands is the engine's ``train_step``."""
    seen: list[str] = []
    real = engine_mod.Engine.train_step

    def spy(self, batches):
        seen.append(type(self.task).__name__)
        return real(self, batches)

    monkeypatch.setattr(engine_mod.Engine, "train_step", spy)
    common = ["--max-steps", "3", "--eval-every", "3", "--checkpoint-every", "3"]
    assert main(["train", "--preset", "smoke", *common, "--samples", "0",
                 "--output-dir", str(tmp_path / "t")]) == 0  # fmt: skip
    assert main(["grok", "--preset", "smoke", *common, "--output-dir", str(tmp_path / "g")]) == 0
    assert seen == [CurriculumTask.__name__] * 3 + [GrokTask.__name__] * 3


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    """Two accumulated micro-batches of 16 rows give the step of one 32-row batch (float64)."""
    torch.set_default_dtype(torch.float64)
    try:
        results = []
        for accum, batch in ((1, 32), (2, 16)):
            cfg = build_config(
                "grok",
                "smoke",
                None,
                {"grad_accum": accum, "batch_size": batch, "optimizer": "adamw", "max_steps": 1},
            )
            task = GrokTask(cfg, torch.device("cpu"))
            if accum == 2:  # the same 32 rows, split in two
                full = torch.randperm(task.train_rows.shape[0], generator=task.generator)[:32]
                rows = task.train_rows
                task.batches = lambda step, f=full, r=rows: [r[f[:16]], r[f[16:]]]
            eng = engine_mod.Engine(task, cfg, tmp_path / str(accum), log=lambda m: None)
            out = eng.train_step(task.batches(0))
            results.append((out["loss"], [p.detach().clone() for p in task.model.parameters()]))
        (loss_a, wa), (loss_b, wb) = results
        assert loss_a == pytest.approx(loss_b, rel=1e-6)  # the engine reports loss in float32
        for a, b in zip(wa, wb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("cls", [TrainConfig, GrokConfig])
def test_every_shared_field_has_one_flag_in_each_command(cls):
    """The flag table is generated from the config: each RunConfig field is a flag of both
    commands, spelled like the field."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["train" if cls is TrainConfig else "grok"]
    dests = {a.dest for a in sub._actions}
    for f in dataclasses.fields(RunConfig):
        if f.name in ("preset", *cls.NO_FLAGS):
            continue
        assert f.name in dests, f.name


@pytest.mark.parametrize(
    "old, new, field, value",
    [
        ("--supervision-steps", "--steps-per-batch", "steps_per_batch", 2),
        ("--min-delta", "--early-stopping-min-delta", "early_stopping_min_delta", 0.25),
    ],
)
def test_old_flag_names_are_aliases(old, new, field, value):
    ns_old = build_parser().parse_args(["train", old, str(value)])
    ns_new = build_parser().parse_args(["train", new, str(value)])
    assert getattr(ns_old, field) == getattr(ns_new, field) == value
    cfg = build_config("train", "smoke", None, {field: getattr(ns_old, field)})
    assert getattr(cfg, field) == value


def test_old_toml_key_is_an_alias(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("supervision_steps = 3\n")
    assert build_config("train", "smoke", str(path), {}).steps_per_batch == 3


def test_an_error_on_a_renamed_field_names_both_spellings(capsys):
    assert main(["train", "--supervision-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "steps-per-batch (--supervision-steps): must be >= 1" in err


def test_list_fields_take_comma_separated_flags():
    cfg = build_config("train", "smoke", None, {"betas": "0.8, 0.95", "stage_fractions": "1,0,0"})
    assert cfg.betas == [0.8, 0.95] and cfg.stage_fractions == [1.0, 0.0, 0.0]


def test_train_state_round_trips_whole_and_rejects_wrong_types():
    st = TrainState(step=7, best_val_loss=math.inf, tokens_seen=99, stop_reason="max_steps")
    st.events.append({"event": "grokking", "step": 5})
    assert TrainState.from_dict(st.to_dict()) == st
    assert st.to_dict()["best_val_loss"] is None  # JSON has no inf
    with pytest.raises(ValueError, match="'step' has the wrong type"):
        TrainState.from_dict({**st.to_dict(), "step": "7"})
    with pytest.raises(ValueError, match="has no 'tokens_seen'"):
        TrainState.from_dict({k: v for k, v in st.to_dict().items() if k != "tokens_seen"})


def test_a_run_flushes_denormals_only_while_it_runs(tmp_path, monkeypatch, single_thread):
    """Training flushes CPU denormals (they slow decaying optimizer state) and then gives the
    caller's process its own setting back, whichever it was."""
    from cognate_train.runtime import flushing_denormals

    inside: list[bool] = []
    real = engine_mod.Engine.train_step

    def spy(self, batches):
        inside.append(flushing_denormals())
        return real(self, batches)

    monkeypatch.setattr(engine_mod.Engine, "train_step", spy)
    args = ["grok", "--preset", "smoke", "--max-steps", "2", "--eval-every", "2",
            "--checkpoint-every", "2"]  # fmt: skip
    try:
        for before in (False, True):
            torch.set_flush_denormal(before)
            assert flushing_denormals() is before  # the probe reads the real setting
            assert main([*args, "--output-dir", str(tmp_path / str(before))]) == 0
            assert flushing_denormals() is before
    finally:
        torch.set_flush_denormal(False)
    assert inside == [True] * 4
