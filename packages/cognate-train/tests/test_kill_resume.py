"""kill -9 mid-run, restart with the same command: the same final weights as a run never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cognate_train.cli import main

ARGS = ["train", "--preset", "smoke", "--max-steps", "32", "--checkpoint-every", "8", "--eval-every", "16"]  # fmt: skip


def test_kill_9_then_restart_equals_uninterrupted(tmp_path, single_thread, same_weights):
    # the uninterrupted reference, in this process (single-threaded like the child below)
    ref = tmp_path / "ref"
    assert main([*ARGS, "--output-dir", str(ref)]) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cognate_train", *ARGS, "--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = tmp_path / "child.log"  # a file, not a pipe: a full pipe would block the child
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=fh)
    first = out / "checkpoints" / "step-000008"
    deadline = time.monotonic() + 300
    while not first.is_dir():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists(), "the run finished before it was killed"

    # the same command again, here (the child ran with one thread, as this process does)
    assert main([*ARGS, "--output-dir", str(out)]) == 0
    same_weights(out / "final", ref / "final")
    same_weights(out / "checkpoints" / "step-000032", ref / "checkpoints" / "step-000032")
    assert not any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())
