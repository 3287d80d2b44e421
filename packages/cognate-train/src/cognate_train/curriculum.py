"""The curriculum over a run: which stage each optimizer step trains in, and a deterministic,
resumable stream of encoded batches per stage.

A run gives each stage (foundation -> reasoning -> advanced) a share of its optimizer steps
(`stage_at`); stages with no share are not trained (`active_stages`).

`CurriculumDataset` API (a simplification of an iterator interface, on purpose): `next_batch(stage)`
returns the next batch and advances the position of that stage; `batches(stage)` is an infinite
generator over `next_batch` that never reads ahead, so `state_dict()` taken between two batches
resumes exactly there.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .data import Example, _check_stage, encode
from .tasks import STAGES


def active_stages(fractions: Sequence[float]) -> list[str]:
    """The stages a run trains in: those given a positive share of the steps."""
    return [s for s, f in zip(STAGES, fractions, strict=True) if f > 0]


def stage_at(step: int, total_steps: int, fractions: Sequence[float]) -> str:
    """The curriculum stage of optimizer step ``step``: stage i covers a ``fractions[i]`` share."""
    total = sum(fractions)
    bound = 0.0
    for name, frac in zip(STAGES, fractions, strict=True):
        bound += frac / total * total_steps
        if step < bound - 1e-9:
            return name
    return active_stages(fractions)[-1]


class StagedStream:
    """Deterministic, resumable stream of equal-sized batches for each curriculum stage.

    Each stage has its own position (epoch, batch index). Epoch e of stage s visits the stage's
    items in the order of a permutation drawn from `Random(f"{seed}|{s}|{e}")`, in batches of
    `batch_size`; the last incomplete batch of an epoch is dropped so every batch has the same size
    (the next epoch's shuffle covers those items). Because the order is a function of (seed,
    stage, epoch) alone, the state is three integers per stage and resuming is exact.

    Subclasses say how many items each stage has (`sizes`), name the item (`unit`, for errors)
    and turn a list of item indices into a batch (`_make_batch`).
    """

    unit = "item"

    def __init__(self, sizes: dict[str, int], batch_size: int, seed: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.sizes = dict(sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.stage: str | None = None
        self._pos: dict[str, list[int]] = {s: [0, 0] for s in self.sizes}  # [epoch, batch]
        self._order_cache: dict[str, tuple[int, list[int]]] = {}

    def _check(self, stage: str) -> None:
        if stage not in self.sizes:
            raise ValueError(f"stage {stage!r} has no {self.unit}s; have {list(self.sizes)}")

    def _make_batch(self, stage: str, indices: list[int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def steps_per_epoch(self, stage: str) -> int:
        """Batches in one epoch of `stage` (incomplete last batch dropped)."""
        self._check(stage)
        return self.sizes[stage] // self.batch_size

    def epoch(self, stage: str) -> int:
        """Completed epochs of `stage` so far."""
        self._check(stage)
        return self._pos[stage][0]

    def _order(self, stage: str, epoch: int) -> list[int]:
        cached = self._order_cache.get(stage)
        if cached is None or cached[0] != epoch:
            order = list(range(self.sizes[stage]))
            random.Random(f"{self.seed}|{stage}|{epoch}").shuffle(order)
            cached = (epoch, order)
            self._order_cache[stage] = cached
        return cached[1]

    def next_batch(self, stage: str) -> dict[str, torch.Tensor]:
        """The next batch of `stage`; advances that stage's position (and rolls to a new epoch)."""
        self._check(stage)
        epoch, index = self._pos[stage]
        if index >= self.steps_per_epoch(stage):
            epoch, index = epoch + 1, 0
        order = self._order(stage, epoch)
        batch = self._make_batch(
            stage, order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        self._pos[stage] = [epoch, index + 1]
        self.stage = stage
        return batch

    def batches(self, stage: str) -> Iterator[dict[str, torch.Tensor]]:
        """Infinite stream of `next_batch(stage)` (no read-ahead, so state_dict stays exact)."""
        self._check(stage)
        while True:
            yield self.next_batch(stage)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: current stage with its epoch/position, and every stage's."""
        current = self.stage
        epoch, position = self._pos[current] if current is not None else (0, 0)
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "stage": current,
            "epoch": epoch,
            "position": position,
            "positions": {s: {"epoch": e, "position": p} for s, (e, p) in self._pos.items()},
            "sizes": dict(self.sizes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict`; the data set-up must be the same one."""
        try:
            seed, batch_size, sizes = state["seed"], state["batch_size"], state["sizes"]
            positions, stage = state["positions"], state["stage"]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"state is not a {type(self).__name__} state_dict (missing {exc})"
            ) from None
        if seed != self.seed or batch_size != self.batch_size or dict(sizes) != self.sizes:
            raise ValueError(
                f"state was saved for different data (seed, batch_size or {self.unit} counts "
                f"differ: saved seed={seed} batch_size={batch_size} sizes={dict(sizes)}, "
                f"now seed={self.seed} batch_size={self.batch_size} sizes={self.sizes})"
            )
        new_pos: dict[str, list[int]] = {}
        for s in self.sizes:
            entry = positions.get(s, {"epoch": 0, "position": 0})
            e, p = int(entry["epoch"]), int(entry["position"])
            if e < 0 or not 0 <= p <= self.steps_per_epoch(s):
                raise ValueError(f"state positions[{s!r}] out of range: {entry}")
            new_pos[s] = [e, p]
        if stage is not None:
            self._check(stage)
        self._pos = new_pos
        self.stage = stage


class CurriculumDataset(StagedStream):
    """Encoded training batches of each curriculum stage's examples, as a `StagedStream`.

    `next_batch(stage)` / `batches(stage)` return dicts of tensors only (`encode`'s output).
    """

    unit = "example"

    def __init__(
        self,
        tokenizer: Any,
        train_examples: dict[str, list[Example]],
        batch_size: int,
        max_len: int,
        seed: int,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
        if not train_examples:
            raise ValueError("train_examples must map at least one stage to examples")
        for stage, examples in train_examples.items():
            _check_stage(stage)
            if len(examples) < batch_size:
                raise ValueError(
                    f"train_examples[{stage!r}] has {len(examples)} examples, fewer than "
                    f"batch_size={batch_size}"
                )
        self.examples = {s: list(ex) for s, ex in train_examples.items()}
        super().__init__({s: len(ex) for s, ex in self.examples.items()}, batch_size, seed)
        self.tokenizer = tokenizer
        self.max_len = max_len

    def _check(self, stage: str) -> None:
        _check_stage(stage)
        if stage not in self.examples:
            raise ValueError(
                f"stage {stage!r} has no training examples; have {list(self.examples)}"
            )

    def _make_batch(self, stage: str, indices: list[int]) -> dict[str, torch.Tensor]:
        examples = self.examples[stage]
        return encode(self.tokenizer, [examples[i] for i in indices], self.max_len)
