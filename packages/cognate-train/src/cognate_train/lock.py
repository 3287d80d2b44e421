"""One run per output directory: an exclusive ``flock`` on ``<output-dir>/.lock``.

The operating system drops the lock when its process ends, however it ends (a ``kill -9``
included), so a crashed run never leaves a directory locked; a clean exit also removes the file.
Under ``torchrun`` only rank 0 (the process that writes checkpoints and metrics) takes it:
``RANK`` from the environment, 0 when unset, so a distributed mode shares this one lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .config import ConfigError

LOCK_FILE = ".lock"


def _acquire(path: Path):
    """Open and lock ``path``; retry when the file was replaced between open and lock (a holder
    removing it on exit), so two runs can never hold locks on two different files."""
    while True:
        fh = path.open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(
                f"output-dir: {path.parent} is in use by another run (pid {holder}); wait for "
                "it to finish or choose another --output-dir",
                field="output_dir",
            ) from None
        try:
            same = os.fstat(fh.fileno()).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()


@contextlib.contextmanager
def output_lock(directory: str | Path, rank: int | None = None) -> Iterator[None]:
    """Hold the output directory's lock for the block; a held lock is a :class:`ConfigError`
    naming the holder's pid. Ranks other than 0 do not lock."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if rank != 0:
        yield
        return
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fh = _acquire(path)
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: no other run holds this file
        fh.close()
