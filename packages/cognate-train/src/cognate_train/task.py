"""What a task gives the training engine (:mod:`cognate_train.engine`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from .engine import Engine


class Task(Protocol):
    """What a task gives the engine. ``name`` prefixes log lines; ``fingerprint`` holds the
    settings a checkpoint must share to be resumed; ``console_every``: plain log lines only at
    multiples of it (1: every record)."""

    name: str
    model: torch.nn.Module
    device: torch.device
    total_steps: int
    fingerprint: dict[str, Any]
    console_every: int
    save_best: bool

    def batches(self, step: int) -> list[Any]: ...  # the micro-batches of optimizer step `step`
    def loss(self, batch: Any) -> tuple[torch.Tensor, int, dict[str, float]]: ...
    def evaluate(self) -> dict[str, float]: ...  # val/loss, val/accuracy[, train/accuracy]
    def log_extras(self, step: int) -> dict[str, float]: ...
    def save_weights(self, directory: Path) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any], step: int) -> None: ...
    def describe(self) -> str: ...
    def summary(self, engine: Engine, records: list[dict[str, Any]]) -> dict[str, Any]: ...
