"""Where and how a run computes: device choice, CPU threads, denormals, autocast, seeding."""

from __future__ import annotations

import contextlib
import random

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


def flushing_denormals() -> bool:
    """Whether this process flushes denormal floats to zero now (torch has no getter)."""
    return torch.tensor([1e-40]).mul(1.0).item() == 0.0


@contextlib.contextmanager
def denormals_flushed(device: torch.device):
    """Run the block with denormal floats flushed to zero on the CPU, then restore the
    process's previous setting (a library call leaves the caller's arithmetic as it was).

    Denormals (|x| < 1e-38) appear in slowly decaying optimizer and filter state late in long
    runs and make CPU arithmetic many times slower; flushing them changes no result that
    matters at float32 precision."""
    if device.type != "cpu":
        yield
        return
    before = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when enabled, else a no-op context."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's global RNGs (model initialisation, dropout)."""
    torch.manual_seed(seed)
    random.seed(seed)
