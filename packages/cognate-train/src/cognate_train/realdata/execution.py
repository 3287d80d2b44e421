"""Running a generated program under resource limits, for mbpp's pass@1.

Each program runs with `python -I` in a fresh temporary directory and its own session, with a
wall-time, CPU-time, address-space and file-size limit. This is a resource limit, not a
security sandbox: enable code execution only for code you are willing to run.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def _limits(memory_mb: int, cpu_s: int) -> None:
    import resource

    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 512) -> tuple[bool, str]:
    """Run `source` with `python -I` in a fresh temporary directory: (passed, reason).

    Passed means exit status 0 within `timeout_s` seconds of wall time. The child gets its own
    session (killed as a group on timeout), an address-space limit of `memory_mb`, a CPU-time
    limit and a 1 MiB file-size limit; stdout is discarded, the last stderr line is the reason.
    """
    with tempfile.TemporaryDirectory(prefix="cognate-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(source, encoding="utf-8")
        err_path = Path(tmp) / "stderr.txt"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(path)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
                start_new_session=True,
                preexec_fn=lambda: _limits(memory_mb, int(math.ceil(timeout_s)) + 1),
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False, f"timed out after {timeout_s:g} s"
        if proc.returncode == 0:
            return True, "passed"
        lines = err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return False, lines[-1] if lines else f"exit status {proc.returncode}"
