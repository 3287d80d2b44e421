"""DDP under torchrun, on CPU with gloo and 2 processes (ddp_probe.py records what each rank
saw and its final parameters): the run finishes with rank-0 outputs, the ranks end identical,
they train on disjoint examples whose union is the single-process global batch, and checkpoints
resume across world sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cognate_train import distributed as dist
from cognate_train import engine as engine_mod
from cognate_train.cli import main
from cognate_train.lock import output_lock
from cognate_train.metrics import read_metrics
from safetensors.torch import load_file

PROBE = Path(__file__).with_name("ddp_probe.py")
SMOKE = ["train", "--preset", "smoke", "--max-steps", "4", "--checkpoint-every", "2"]
SMOKE += ["--eval-every", "4", "--log-every", "2", "--samples", "0"]


def torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--standalone", *args]  # standalone: a free port, no clash with other runs
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """A 2-process smoke run from scratch (global batch 2 x 8 examples per step)."""
    root = tmp_path_factory.mktemp("ddp")
    out, probe = root / "run", root / "probe"
    proc = torchrun([str(PROBE), str(probe), *SMOKE, "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return {"out": out, "ranks": ranks}


def single_process(monkeypatch, out: Path, *extra: str) -> list[list[tuple[int, ...]]]:
    """A run in this process; returns the token rows of every step's micro-batches."""
    seen: list[list[tuple[int, ...]]] = []
    real = engine_mod.Engine.train_step

    def train_step(self, batches):
        seen.append([tuple(r.tolist()) for mb in batches for r in mb["input_ids"]])
        return real(self, batches)

    monkeypatch.setattr(engine_mod.Engine, "train_step", train_step)
    assert main([*SMOKE, "--output-dir", str(out), *extra]) == 0
    return seen


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def test_ddp_run_finishes_with_rank0_outputs(ddp):
    out = ddp["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert steps == [2, 4]  # one writer: no record twice
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000002",
        "step-000004",
    ]
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (out / "plots").is_dir() and (out / "report.md").is_file()


def test_parameters_identical_on_both_ranks_and_saved(ddp):
    p0, p1 = (r["params"] for r in ddp["ranks"])
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0)


def test_each_rank_saw_different_examples(ddp):
    s0, s1 = (r["seen"] for r in ddp["ranks"])
    assert len(s0) == len(s1) == 4
    for a, b in zip(s0, s1, strict=True):
        assert len(a) == len(b) == 8
        assert not set(a) & set(b)


def test_ddp_equals_one_process_with_the_same_global_batch(ddp, monkeypatch, tmp_path):
    seen = single_process(monkeypatch, tmp_path / "one", "--grad-accum", "2")
    s0, s1 = (r["seen"] for r in ddp["ranks"])
    for step, rows in enumerate(seen):  # the union of the ranks' shards, step by step
        assert sorted(rows) == sorted(s0[step] + s1[step])
    ref, got = final_weights(tmp_path / "one"), ddp["ranks"][0]["params"]
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)


def test_two_process_checkpoint_resumes_in_one_process(ddp, monkeypatch, tmp_path):
    ckpt = ddp["out"] / "checkpoints" / "step-000002"
    out = tmp_path / "resumed"
    seen = single_process(monkeypatch, out, "--grad-accum", "2", "--resume", str(ckpt))
    s0, s1 = (r["seen"] for r in ddp["ranks"])
    assert [sorted(r) for r in seen] == [sorted(s0[k] + s1[k]) for k in (2, 3)]  # same data
    ref = ddp["ranks"][0]["params"]
    for k, v in final_weights(out).items():
        torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-5)

    def losses(d: Path) -> dict[int, float]:
        records = read_metrics(d / "metrics.jsonl")
        return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}

    assert losses(out)[4] == pytest.approx(losses(ddp["out"])[4], rel=1e-4)  # the curve continues


def test_other_global_batch_on_resume_is_refused_without_override(ddp, capsys, tmp_path):
    ckpt = ddp["out"] / "checkpoints" / "step-000002"
    rc = main([*SMOKE, "--output-dir", str(tmp_path / "r"), "--resume", str(ckpt)])
    assert rc == 2
    assert "grad_accum x world_size 2 -> 1" in capsys.readouterr().err


def test_second_launch_on_a_locked_directory_fails_at_once(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, rank=0):
        proc = torchrun(["-m", "cognate_train", *SMOKE, "--output-dir", str(out)])
    assert proc.returncode != 0
    assert "is in use by another run" in proc.stderr
    assert not (out / "checkpoints").exists()


def test_single_process_helpers_are_no_ops():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_writer()
    assert dist.micro_batches(3) == 3 and dist.shard([1, 2, 3]) == [1, 2, 3]
    assert dist.broadcast({"a": 1}) == {"a": 1}
