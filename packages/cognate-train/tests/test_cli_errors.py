"""Bad input: one line on stderr naming the culprit, exit status 2, no traceback, no file touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from cognate_train import checkpoints as ck
from cognate_train.cli import main
from cognate_train.config import build_config, compat_fingerprint


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cognate-train: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["train", "--preset", "nope"], ["--preset", "nope"]),
        (["train", "--batch-size", "0"], ["batch-size", "0"]),
        (["train", "--lr", "-0.001"], ["lr", "-0.001"]),
        (["train", "--muon-lr", "nan"], ["muon-lr"]),
        (["train", "--grad-accum", "0"], ["grad-accum"]),
        (["train", "--max-steps", "-5"], ["max-steps"]),
        (["train", "--optimizer", "sgd"], ["--optimizer", "sgd"]),
        (["train", "--specialization", "poetry"], ["specialization", "poetry"]),
        (["train", "--ema-decay", "1.0"], ["ema-decay"]),
        (["train", "--supervision-steps", "0"], ["supervision-steps"]),
        (["train", "--device", "tpu"], ["device", "tpu"]),
        (["train", "--log", "mlflow"], ["log", "mlflow"]),
        (["train", "--resume", "/no/such/checkpoint"], ["resume", "/no/such/checkpoint"]),
        (["train", "--batch-size", "many"], ["--batch-size", "many"]),
        (
            ["train", "--grokking-aware", "--early-stopping-patience", "3"],
            ["early-stopping-patience"],
        ),
        (
            ["train", "--model-preset", "cognate-huge", "--output-dir", "/tmp/unused-ct"],
            ["model-preset"],
        ),
        (["grok", "--p", "91"], ["p", "91 is not prime"]),
        (["grok", "--op", "%"], ["op"]),
        (["grok", "--train-fraction", "1.5"], ["train-fraction"]),
        (["frobnicate"], ["frobnicate"]),
        (["eval", "--checkpoint", "/no/such/dir"], ["checkpoint", "/no/such/dir"]),
        (["generate", "--checkpoint", "/no/such/dir", "--prompt", "1+1="], ["checkpoint"]),
    ],
)
def test_bad_flag(capsys, argv, needles):
    rc, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, err, *needles)


def test_missing_config_file(capsys, tmp_path):
    rc, err = run_cli(capsys, "train", "--config", str(tmp_path / "absent.toml"))
    assert_one_line_error(rc, err, "--config", "absent.toml")


@pytest.mark.parametrize(
    "text, needles",
    [
        ("bogus_key = 3\n", ["unknown key 'bogus_key'"]),
        ("batch_size = 'big'\n", ["batch_size", "integer"]),
        ("lr = -0.5\n", ["lr"]),
        ("batch_size = 0\n", ["batch-size"]),
        ("this is not toml\n", ["invalid TOML"]),
        ("[model]\nd = 1\n", ["unknown table [model]"]),
    ],
)
def test_bad_config_file(capsys, tmp_path, text, needles):
    path = tmp_path / "run.toml"
    path.write_text(text)
    rc, err = run_cli(capsys, "train", "--config", str(path))
    assert_one_line_error(rc, err, str(path), *needles)


def test_precedence_preset_then_toml_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "smoke"\nbatch_size = 4\nlr = 0.002\n[train]\nseed = 7\n[grok]\np = 13\n'
    )
    cfg = build_config("train", None, str(path), {"lr": 0.003})
    assert cfg.preset == "smoke" and cfg.max_steps == 24  # from the preset named in the file
    assert cfg.batch_size == 4 and cfg.seed == 7  # file over preset ([train] table flattened)
    assert cfg.lr == 0.003  # flag over file
    assert build_config("grok", "smoke", str(path), {}).p == 13


def test_max_steps_flag_wins_over_a_preset_in_epochs():
    assert build_config("train", "phase1", None, {}).epochs == 10.0
    cfg = build_config("train", "phase1", None, {"max_steps": 100})
    assert cfg.max_steps == 100 and cfg.epochs == 0.0
    cfg = build_config("train", "quick", None, {"epochs": 2.0})
    assert cfg.epochs == 2.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys, tmp_path):
    rc, err = run_cli(
        capsys, "train", "--preset", "smoke", "--device", "cuda", "--output-dir", str(tmp_path)
    )
    assert_one_line_error(rc, err, "device", "CUDA is not available")


@pytest.mark.parametrize("backend, module", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_missing_optional_backend(capsys, tmp_path, backend, module):
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    rc, err = run_cli(
        capsys, "train", "--preset", "smoke", "--log", backend, "--output-dir", str(tmp_path)
    )
    assert_one_line_error(rc, err, f"{backend} is not installed", f"--extra {backend}")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def _fake_checkpoint(root: Path, step: int, fingerprint: dict) -> None:
    mgr = ck.CheckpointManager(root, 3, fingerprint)
    mgr.save(step, lambda d: (d / "model.safetensors").write_bytes(b"not really weights"))


def test_output_dir_of_an_incompatible_run_is_refused_untouched(capsys, tmp_path):
    other = build_config("train", "smoke", None, {"optimizer": "adamw"})
    _fake_checkpoint(tmp_path, 8, compat_fingerprint(other, "reasoning"))
    (tmp_path / "metrics.jsonl").write_text('{"step": 8, "train/loss": 1.0}\n')
    before = tree_digest(tmp_path)
    rc, err = run_cli(capsys, "train", "--preset", "smoke", "--output-dir", str(tmp_path))
    assert_one_line_error(rc, err, "incompatible run", "optimizer 'adamw' != 'mugrokfast'")
    assert tree_digest(tmp_path) == before


def test_resume_never_refuses_a_directory_with_checkpoints(capsys, tmp_path):
    cfg = build_config("train", "smoke", None, {})
    _fake_checkpoint(tmp_path, 8, compat_fingerprint(cfg, "reasoning"))
    before = tree_digest(tmp_path)
    rc, err = run_cli(
        capsys, "train", "--preset", "smoke", "--resume", "never", "--output-dir", str(tmp_path)
    )
    assert_one_line_error(rc, err, "resume", "already holds checkpoints")
    assert tree_digest(tmp_path) == before


def test_all_checkpoints_damaged_is_a_one_line_error(capsys, tmp_path):
    cfg = build_config("train", "smoke", None, {})
    _fake_checkpoint(tmp_path, 8, compat_fingerprint(cfg, "reasoning"))
    (tmp_path / "checkpoints" / "step-000008" / "model.safetensors").write_bytes(b"garbage!!")
    before = tree_digest(tmp_path)
    rc, err = run_cli(capsys, "train", "--preset", "smoke", "--output-dir", str(tmp_path))
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("cognate-train: error: no intact checkpoint") and "step-000008" in last
    assert "Traceback" not in err
    assert tree_digest(tmp_path) == before


def test_eval_of_a_damaged_checkpoint_names_the_file(capsys, tmp_path):
    cfg = build_config("train", "smoke", None, {})
    _fake_checkpoint(tmp_path, 8, compat_fingerprint(cfg, "reasoning"))
    victim = tmp_path / "checkpoints" / "step-000008" / "model.safetensors"
    victim.write_bytes(b"not really weightz")  # same size, other bytes
    rc, err = run_cli(capsys, "eval", "--checkpoint", str(victim.parent))
    assert_one_line_error(rc, err, "step-000008 is damaged", "model.safetensors checksum mismatch")
