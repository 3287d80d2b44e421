"""DDP under torchrun, on CPU with gloo and 2 processes (ddp_probe.py records what each rank
saw, its RNG state per step, its final parameters and their evaluation): the run finishes with
rank-0 outputs, the ranks end identical, they train on disjoint examples whose union is the
single-process global batch, evaluation is split across the ranks and equals the
single-process evaluation, the ranks draw from different RNG streams, checkpoints resume across
world sizes (2 -> 1, 1 -> 2, and 2 -> 2 in the slow suite), and ``grok`` runs the same way."""

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
from cognate_train.config import build_config
from cognate_train.grok_data import modular_dataset, vocab_size
from cognate_train.grok_model import GrokDecoder, score
from cognate_train.lock import output_lock
from cognate_train.metrics import read_metrics
from cognate_train.trainer import CurriculumTask
from safetensors.torch import load_file

PROBE = Path(__file__).with_name("ddp_probe.py")
SMOKE = ["train", "--preset", "smoke", "--max-steps", "4", "--checkpoint-every", "2"]
SMOKE += ["--eval-every", "4", "--log-every", "2", "--samples", "0"]


def torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--standalone", *args]  # standalone: a free port, no clash with other runs
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def probe_run(probe: Path, args: list[str]) -> list[dict]:
    """A 2-process run of the CLI under ddp_probe.py; each rank's records."""
    proc = torchrun([str(PROBE), str(probe), *args])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """A 2-process smoke run from scratch (global batch 2 x 8 examples per step)."""
    root = tmp_path_factory.mktemp("ddp")
    out = root / "run"
    return {"out": out, "ranks": probe_run(root / "probe", [*SMOKE, "--output-dir", str(out)])}


def record_steps(monkeypatch) -> dict[str, list]:
    """Patch the engine to record, per step, the token rows of its micro-batches and the torch
    RNG state (what ddp_probe.py records per rank)."""
    seen: dict[str, list] = {"seen": [], "rng": []}
    real = engine_mod.Engine.train_step

    def train_step(self, batches):
        seen["seen"].append([tuple(r.tolist()) for mb in batches for r in mb["input_ids"]])
        seen["rng"].append(torch.get_rng_state())
        return real(self, batches)

    monkeypatch.setattr(engine_mod.Engine, "train_step", train_step)
    return seen


def single_process(monkeypatch, out: Path, *extra: str) -> dict[str, list]:
    """A run in this process; returns the rows and RNG state of every step (record_steps)."""
    seen = record_steps(monkeypatch)
    assert main([*SMOKE, "--output-dir", str(out), *extra]) == 0
    return seen


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> dict:
    """The smoke run in one process with the 2-process run's global batch (grad_accum 2),
    uninterrupted: the reference of the DDP run and of resumes across world sizes."""
    out = tmp_path_factory.mktemp("one") / "run"
    with pytest.MonkeyPatch.context() as mp:
        return {"out": out, **single_process(mp, out, "--grad-accum", "2")}


def losses(d: Path) -> dict[int, float]:
    records = read_metrics(d / "metrics.jsonl")
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


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


def test_ddp_equals_one_process_with_the_same_global_batch(ddp, one):
    s0, s1 = (r["seen"] for r in ddp["ranks"])
    for step, rows in enumerate(one["seen"]):  # the union of the ranks' shards, step by step
        assert sorted(rows) == sorted(s0[step] + s1[step])
    ref, got = final_weights(one["out"]), ddp["ranks"][0]["params"]
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)


def test_evaluation_is_split_across_ranks_and_equals_one_process(ddp):
    r0, r1 = ddp["ranks"]
    cfg = build_config("train", "smoke", None, {})
    task = CurriculumTask(cfg, "reasoning", torch.device("cpu"))
    task.model.load_state_dict(r0["params"])
    prompts = [ex.prompt for ex in task.val_examples]
    assert not set(r0["evaluated"]) & set(r1["evaluated"])  # each rank scored its own shard
    assert sorted(r0["evaluated"] + r1["evaluated"]) == sorted(prompts)
    assert r0["eval"] == r1["eval"]  # the reduced figures, bit-identical on both ranks
    ref = task.evaluate()  # one process, all examples
    assert r0["eval"].keys() == ref.keys()
    for k, v in ref.items():
        assert r0["eval"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_ranks_draw_from_different_rng_streams(ddp, one):
    r0, r1 = ddp["ranks"]
    assert torch.equal(r0["rng"][0], one["rng"][0])  # rank 0: a single process's stream
    derived = torch.Generator().manual_seed(dist.rank_seed(0, 1)).get_state()
    assert torch.equal(r1["rng"][0], derived)  # rank 1: seeded from (run seed, rank)
    gen0, gen1 = torch.Generator(), torch.Generator()
    gen0.set_state(r0["rng"][0])
    gen1.set_state(r1["rng"][0])
    p = 0.5  # the dropout masks the two ranks would draw differ
    assert not torch.equal(torch.rand(64, generator=gen0) < p, torch.rand(64, generator=gen1) < p)


def test_rank_seed_is_deterministic_and_distinct():
    seeds = {dist.rank_seed(s, r, t) for s in (0, 1) for r in range(4) for t in (0, 5)}
    assert len(seeds) == 16
    assert dist.rank_seed(7, 3, 2) == dist.rank_seed(7, 3, 2)
    assert all(0 <= s < 2**63 for s in seeds)


def test_two_process_checkpoint_resumes_in_one_process(ddp, monkeypatch, tmp_path):
    ckpt = ddp["out"] / "checkpoints" / "step-000002"
    out = tmp_path / "resumed"
    got = single_process(monkeypatch, out, "--grad-accum", "2", "--resume", str(ckpt))
    r0, r1 = ddp["ranks"]
    want = [sorted(r0["seen"][k] + r1["seen"][k]) for k in (2, 3)]
    assert [sorted(r) for r in got["seen"]] == want  # the same data
    assert torch.equal(got["rng"][0], r0["rng"][2])  # rank 0's RNG stream continues
    ref = r0["params"]
    for k, v in final_weights(out).items():
        torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-5)
    assert losses(out)[4] == pytest.approx(losses(ddp["out"])[4], rel=1e-4)  # the curve continues


def test_one_process_checkpoint_resumes_in_two_processes(one, tmp_path):
    ckpt = one["out"] / "checkpoints" / "step-000002"
    out = tmp_path / "resumed"
    r0, r1 = probe_run(
        tmp_path / "probe", [*SMOKE, "--output-dir", str(out), "--resume", str(ckpt)]
    )
    for k, step in enumerate((2, 3)):  # the ranks split the single process's batches
        assert sorted(r0["seen"][k] + r1["seen"][k]) == sorted(one["seen"][step])
    assert torch.equal(r0["rng"][0], one["rng"][2])  # rank 0 takes the checkpoint's RNG
    derived = torch.Generator().manual_seed(dist.rank_seed(0, 1, 2)).get_state()
    assert torch.equal(r1["rng"][0], derived)  # rank 1 (not in that run): seeded afresh
    ref = final_weights(one["out"])
    for k, v in ref.items():
        torch.testing.assert_close(r0["params"][k], v, rtol=1e-4, atol=1e-5)
        assert torch.equal(r0["params"][k], r1["params"][k])
    assert losses(out)[4] == pytest.approx(losses(one["out"])[4], rel=1e-4)  # the curve continues
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_process_checkpoint_resumes_exactly_in_two_processes(ddp, tmp_path):
    ckpt = ddp["out"] / "checkpoints" / "step-000002"
    out = tmp_path / "resumed"
    ranks = probe_run(tmp_path / "probe", [*SMOKE, "--output-dir", str(out), "--resume", str(ckpt)])
    for got, ref in zip(ranks, ddp["ranks"], strict=True):
        assert got["seen"] == ref["seen"][2:]
        assert all(torch.equal(a, b) for a, b in zip(got["rng"], ref["rng"][2:], strict=True))
        assert all(torch.equal(got["params"][k], v) for k, v in ref["params"].items())


def test_grok_runs_ddp_under_torchrun(tmp_path):
    out = tmp_path / "grok"
    args = ["grok", "--preset", "smoke", "--max-steps", "6", "--batch-size", "16"]
    args += ["--eval-every", "3", "--checkpoint-every", "3", "--output-dir", str(out)]
    r0, r1 = probe_run(tmp_path / "probe", args)
    assert all(torch.equal(v, r1["params"][k]) for k, v in r0["params"].items())
    assert len(r0["seen"]) == len(r1["seen"]) == 6
    for a, b in zip(r0["seen"], r1["seen"], strict=True):  # disjoint shards of 2 x 16
        assert len(a) == len(b) == 16 and not set(a) & set(b)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    evals = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "val/accuracy" in r]
    assert evals == [3, 6]  # one writer
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "step-000006"
    cfg = build_config("grok", "smoke", None, {})
    model = GrokDecoder(vocab_size(cfg.p), cfg.d_model, cfg.n_layers, cfg.n_heads)
    model.load_state_dict(r0["params"])
    train, val = modular_dataset(cfg.p, cfg.op, cfg.train_fraction, cfg.seed)
    (tl, ta), (vl, va) = score(model, train), score(model, val)  # one process, whole sets
    assert r0["eval"] == r1["eval"]
    assert r0["eval"]["train/accuracy"] == pytest.approx(ta, abs=1e-12)
    assert r0["eval"]["val/accuracy"] == pytest.approx(va, abs=1e-12)
    assert r0["eval"]["train/eval_loss"] == pytest.approx(tl, rel=1e-5)
    assert r0["eval"]["val/loss"] == pytest.approx(vl, rel=1e-5)


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
