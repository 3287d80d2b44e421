"""One run per output directory: an exclusive ``flock`` on ``<output-dir>/.lock``.

The operating system drops the lock when its process ends, however it ends (a ``kill -9``
included), so a crashed run never leaves a directory locked. Under ``torchrun`` only rank 0 (the
process that writes checkpoints and metrics) takes it: ``RANK`` from the environment, 0 when
unset, so every future distributed mode shares this one lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .config import ConfigError

LOCK_FILE = ".lock"


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
    fh = (root / LOCK_FILE).open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise ConfigError(
                f"output-dir: {root} is in use by another run (pid {holder}); wait for it to "
                "finish or choose another --output-dir",
                field="output_dir",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing the file releases the lock
