"""Where and how a run computes: device choice, CPU threads, denormals, autocast, seeding,
and how it stops on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import random
import signal
import threading

import torch

from .config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a missing GPU is a
    :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name} does not exist ({torch.cuda.device_count()} GPUs)")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the block with ``n`` intra-op threads (0: unchanged), then restore the old count."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def setup_device(device: torch.device) -> None:
    if device.type == "cpu":
        # Denormal floats (|x| < 1e-38) appear in slowly decaying optimizer and filter state
        # late in long runs and make CPU arithmetic many times slower; flushing them to zero
        # changes no result that matters at float32 precision.
        torch.set_flush_denormal(True)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when enabled, else a no-op context."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's global RNGs (model initialisation, dropout)."""
    torch.manual_seed(seed)
    random.seed(seed)


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the run; ``status`` is the conventional 128 + signal number.
    A BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.status = 128 + signum


class StopSignals:
    """While active, a first SIGINT/SIGTERM is only remembered (``received``): the engine
    finishes its step, writes a checkpoint and stops. A second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            name = signal.Signals(signum).name
            raise Interrupted(f"stopped at once by a second {name}", signum)
        self.received = signum
