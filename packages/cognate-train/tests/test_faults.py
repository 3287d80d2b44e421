"""Fault injection: signals, full and read-only disks, damaged files, concurrent runs, non-finite
weights, changed settings on resume. Each fault ends in a one-line message, the conventional
exit status, and output directories that still hold every good checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cognate_train import checkpoints as ck
from cognate_train import engine as engine_mod
from cognate_train.cli import main
from cognate_train.metrics import read_metrics
from safetensors.torch import load_file

GROK = ["grok", "--preset", "smoke"]


def one_line(capsys, rc_expected: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("cognate-train:"), err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "cognate_train", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )


def wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def n_records(out: Path) -> int:
    return len(read_metrics(out / "metrics.jsonl"))


LONG = ["--max-steps", "100000", "--checkpoint-every", "100000"]


def start_long_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A grok run in a child process that would go on for long, once it has logged a little."""
    out, log = tmp_path / "run", tmp_path / "child.log"
    proc = spawn([*GROK, *LONG, "--output-dir", str(out)], log)
    wait_for(lambda: n_records(out) >= 3, proc, log)
    return proc, out, log


# ------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize(
    "sig, status",
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
)
def test_signal_finishes_the_step_checkpoints_and_exits(tmp_path, capsys, sig, status):
    proc, out, log = start_long_run(tmp_path)
    # meanwhile a second run on the same directory is refused, and the first goes on untouched
    assert main([*GROK, *LONG, "--output-dir", str(out)]) == 2
    one_line(capsys, 2, "output-dir", "in use by another run", f"pid {proc.pid}")
    assert proc.poll() is None
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == status
    err = log.read_text()
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name} at step" in last, last
    step = int(last.split(" at step ")[1].split(",")[0])
    saved = out / "checkpoints" / f"step-{step:06d}"
    assert ck.verify(saved)["step"] == step
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == step
    assert not any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())


@pytest.mark.slow
def test_second_signal_exits_at_once(tmp_path):
    proc, _, log = start_long_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = log.read_text()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("cognate-train: ")


@pytest.mark.parametrize(
    "delay",
    [1.0, pytest.param(0.4, marks=pytest.mark.slow), pytest.param(2.5, marks=pytest.mark.slow)],
)
def test_ctrl_c_while_starting_is_clean(tmp_path, delay):
    """SIGINT while the interpreter is still importing (or has just begun): exit 130, one line."""
    log = tmp_path / "child.log"
    proc = spawn([*GROK, "--output-dir", str(tmp_path / "run")], log)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = log.read_text()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("cognate-train: ")


# ---------------------------------------------------------------------------- disk full, R/O


@pytest.mark.parametrize(
    "exc, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device", "state.pt"), "No space left on device"),
        (OSError(errno.EROFS, "Read-only file system", "state.pt"), "Read-only file system"),
        (RuntimeError("IoError(Os { code: 28, kind: StorageFull })"), "No space left on device"),
    ],
)
def test_failed_checkpoint_write_is_one_line_and_keeps_earlier_ones(
    tmp_path, monkeypatch, capsys, exc, cause
):
    out = tmp_path / "run"
    real = ck.save_torch_state
    calls = []

    def writer(directory, state):
        calls.append(directory)
        if len(calls) == 2:
            (directory / "state.pt").write_bytes(b"half a file")
            raise exc
        real(directory, state)

    monkeypatch.setattr(ck, "save_torch_state", writer)
    assert main([*GROK, "--output-dir", str(out)]) == 1
    one_line(capsys, 1, "cannot write checkpoint", "step-000040", cause)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000020"]  # no temp left
    ck.verify(out / "checkpoints" / "step-000020")


def test_output_dir_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*GROK, "--output-dir", str(blocker / "run")]) == 2
    one_line(capsys, 2, "output-dir", str(blocker), "not a directory")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as on a read-only mount
    assert main([*GROK, "--output-dir", str(tmp_path / "ro")]) == 2
    one_line(capsys, 2, "output-dir", "cannot write", "read-only")


def test_a_full_disk_while_writing_metrics_is_one_line(tmp_path, monkeypatch, capsys):
    from cognate_train.metrics import MetricsLogger

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsLogger, "log", full)
    assert main([*GROK, "--output-dir", str(tmp_path / "run")]) == 1
    one_line(capsys, 1, "No space left on device", "metrics.jsonl")


# ------------------------------------------------------------------------------ concurrency


def test_the_lock_is_released_by_kill_9(tmp_path, capsys):
    """A process holding the output directory's lock dies by SIGKILL: the lock is free again."""
    out = tmp_path / "run"
    holder = (
        "import sys, time; from cognate_train.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    assert main([*GROK, "--output-dir", str(out)]) == 2
    one_line(capsys, 2, "output-dir", "in use by another run", f"pid {proc.pid}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from cognate_train.lock import output_lock

    with output_lock(out):
        assert (out / ".lock").read_text().strip() == str(os.getpid())
    assert not (out / ".lock").exists()  # removed on release


# --------------------------------------------------------------------------- non-finite runs


def _poison_after(monkeypatch, step: int) -> None:
    """From optimizer step ``step`` on, one weight becomes nan (as inf weight decay would)."""
    real = engine_mod.Engine.train_step

    def poisoned(self, batches):
        result = real(self, batches)
        if self.state.step + 1 >= step:
            with torch.no_grad():
                next(self.task.model.parameters()).view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(engine_mod.Engine, "train_step", poisoned)


def test_nan_weights_are_never_checkpointed_nor_rotate_out_the_last_good_one(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    _poison_after(monkeypatch, 7)
    args = [*GROK, "--checkpoint-every", "2", "--keep-last", "2", "--max-nonfinite", "4"]
    assert main([*args, "--output-dir", str(out)]) == 1
    one_line(capsys, 1, "4 non-finite steps in a row")
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000006"]  # step 8 had nan weights: not written
    for name in names:
        state = ck.load_torch_state(out / "checkpoints" / name)
        weights = load_file(str(out / "checkpoints" / name / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values())
        assert all(
            torch.isfinite(t).all()
            for s in state["optimizer"]["state"].values()
            for t in s.values()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        )
    assert not (out / "final").exists()


def test_skipped_steps_at_the_tail_are_not_a_clean_finish(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    from cognate_train.grok import GrokTask

    real, calls = GrokTask.loss, []

    def nan_loss_at_the_end(self, rows):
        calls.append(1)  # one micro-batch per step: the call count is the step number
        loss, tokens, aux = real(self, rows)
        return (loss * float("nan") if len(calls) >= 59 else loss), tokens, aux

    monkeypatch.setattr(GrokTask, "loss", nan_loss_at_the_end)
    assert main([*GROK, "--output-dir", str(out)]) == 1
    one_line(capsys, 1, "last 2 steps skipped", "not a clean finish")
    assert not (out / "final").exists() and not (out / "summary.json").exists()


def test_inf_hyperparameters_are_refused(capsys, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("weight_decay = inf\n")
    assert main(["train", "--config", str(path)]) == 2
    one_line(capsys, 2, "weight-decay", "inf")


# ------------------------------------------------------------------ changed settings on resume


def test_resume_with_changed_settings_is_refused_or_applied_with_override(tmp_path, capsys):
    out = tmp_path / "run"
    first = [*GROK, "--lr", "0.001", "--muon-lr", "0.02", "--max-steps", "20"]
    assert main([*first, "--output-dir", str(out)]) == 0
    (out / "final").rename(tmp_path / "final-20")
    before = sorted(p.name for p in out.rglob("*"))
    changed = [*GROK, "--lr", "0.009", "--muon-lr", "0.05", "--max-steps", "40"]
    assert main([*changed, "--output-dir", str(out)]) == 2
    line = one_line(capsys, 2, "settings differ", "lr 0.001 -> 0.009", "muon_lr 0.02 -> 0.05")
    assert "max_steps 20 -> 40" in line and "--override" in line
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written
    assert main([*changed, "--override", "--output-dir", str(out)]) == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if "lr" in r and "train/loss" in r]
    lrs = {r["step"]: (r["lr"], r["lr/muon"]) for r in records}
    assert lrs[20] == pytest.approx((0.001, 0.02)) and lrs[40] == pytest.approx((0.009, 0.05))
    ts = json.loads((out / "checkpoints" / "step-000040" / "trainer_state.json").read_text())
    assert ts["config"]["lr"] == 0.009 and ts["config"]["muon_lr"] == 0.05
    event = [e for e in ts["events"] if e["event"] == "override"]
    assert event == [
        {
            "event": "override",
            "step": 20,
            "changed": {"lr": [0.001, 0.009], "muon_lr": [0.02, 0.05], "max_steps": [20, 40]},
            "lr_multiplier": 1.0,  # the schedule continues: no second warmup
        }
    ]
    groups = ck.load_torch_state(out / "checkpoints" / "step-000040")["optimizer"]["param_groups"]
    assert {g["initial_lr"] for g in groups} == {0.009, 0.05}


# ------------------------------------------------------------------------------ damaged files


@pytest.fixture(scope="module")
def grok_done(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("done") / "run"
    assert (
        main([*GROK, "--max-steps", "20", "--checkpoint-every", "10", "--output-dir", str(out)])
        == 0
    )
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_odd_metrics_lines_never_block_a_resume(grok_done, tmp_path, capsys):
    out = _copy(grok_done, tmp_path / "run")
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('[1, 2]\n3\n{"step": "x"}\n{"no_step": 1}\n{"step": 5, "train/l')
    args = [*GROK, "--max-steps", "20", "--checkpoint-every", "10", "--output-dir", str(out)]
    assert main(args) == 0
    assert all(isinstance(r["step"], int) for r in read_metrics(out / "metrics.jsonl"))


@pytest.mark.parametrize(
    "manifest",
    [
        {"format": 1, "step": 20, "fingerprint": {}, "files": {}},  # lists no files
        {"format": 1, "step": "20", "fingerprint": {}, "files": {}},
        {"format": 1, "step": 20, "fingerprint": [], "files": {}},
        {"format": 1, "step": 20, "files": {"model.safetensors": {"sha256": 1, "bytes": "2"}}},
        [1, 2, 3],
    ],
)
def test_manifest_of_the_wrong_shape_or_listing_no_files_is_damage(
    grok_done, tmp_path, capsys, manifest
):
    out = _copy(grok_done, tmp_path / "run")
    newest = out / "checkpoints" / "step-000020"
    (newest / "model.safetensors").write_bytes(b"garbled")
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ck.CheckpointError, match="step-000020 is damaged"):
        ck.verify(newest)
    assert main([*GROK, "--resume", str(newest), "--output-dir", str(tmp_path / "x")]) == 2
    one_line(capsys, 2, "step-000020 is damaged")


def test_a_file_missing_from_the_manifest_is_damage(grok_done, tmp_path):
    out = _copy(grok_done, tmp_path / "run")
    (out / "final" / "extra.bin").write_bytes(b"swapped in")
    with pytest.raises(ck.CheckpointError, match="extra.bin is not in the manifest"):
        ck.verify(out / "final")


def test_resume_from_best_or_final_is_a_one_line_error(smoke_run, tmp_path, capsys):
    for name in ("best", "final"):
        args = ["train", "--preset", "smoke", "--resume", str(smoke_run / name)]
        assert main([*args, "--output-dir", str(tmp_path / name)]) == 2
        one_line(capsys, 2, "holds weights only", "checkpoints/step-")


@pytest.mark.parametrize("victim", ["config.json", "tokenizer.json", "trainer_state.json"])
@pytest.mark.parametrize("with_manifest", [True, False])
def test_damaged_files_in_final_are_one_line_errors(
    smoke_run, tmp_path, capsys, victim, with_manifest
):
    final = _copy(smoke_run / "final", tmp_path / "final")
    (final / victim).write_text('{"not": "what it was"')
    if not with_manifest:
        (final / "manifest.json").unlink()
    for cmd in (["eval"], ["generate", "--prompt", "1+1="]):
        assert main([*cmd, "--checkpoint", str(final)]) == 2
        one_line(capsys, 2, str(final))


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["train", "--epochs", "1e308"], ["epochs"]),
        (["train", "--seed", str(2**70)], ["seed"]),
        (["train", "--lr", "1e300"], ["lr", "1e+300"]),
        (["grok", "--muon-lr", "inf"], ["muon-lr"]),
        (["grok", "--grokfast-lambda", "inf"], ["grokfast-lambda"]),
    ],
)
def test_absurd_values_are_one_line_errors(capsys, argv, needles):
    assert main(argv) == 2
    one_line(capsys, 2, *needles)


def test_config_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_bytes(b"lr = 0.001\n# \xff\xfe\n")
    assert main(["train", "--config", str(path)]) == 2
    one_line(capsys, 2, str(path), "UTF-8")


def test_prompt_past_max_seq_len_is_a_one_line_error(smoke_run, capsys):
    prompt = "1+" * 200
    assert main(["generate", "--checkpoint", str(smoke_run / "final"), "--prompt", prompt]) == 2
    one_line(capsys, 2, "max_seq_len", "--prompt")


@pytest.mark.parametrize(
    "victim, content",
    [
        ("trainer_state.json", b"[1, 2]"),
        ("trainer_state.json", b'{"step": "x", "config": {}}'),
        ("trainer_state.json", b"{not json"),
        ("state.pt", b"not a torch file"),
    ],
)
def test_contents_that_pass_the_manifest_but_do_not_load(
    grok_done, tmp_path, capsys, victim, content
):
    """A file changed and the manifest rewritten to match: still a one-line error, exit 2."""
    out = _copy(grok_done, tmp_path / "run")
    newest = out / "checkpoints" / "step-000020"
    (newest / victim).write_bytes(content)
    manifest = json.loads((newest / "manifest.json").read_text())
    from cognate_train.manifest import write_manifest

    write_manifest(newest, manifest["step"], manifest["fingerprint"])
    args = [*GROK, "--max-steps", "20", "--checkpoint-every", "10", "--resume", str(newest)]
    assert main([*args, "--output-dir", str(out)]) == 2
    one_line(capsys, 2, "step-000020")
