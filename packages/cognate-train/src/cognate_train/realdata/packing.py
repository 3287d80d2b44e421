"""Tokenise templated examples, pack them into full rows, and stream the rows resumably.

Packing (GPT-style): every example becomes `<bos> prompt answer <eos>`; the examples of one split
are concatenated in file order and cut into rows of exactly `max_len` tokens; the tail shorter
than a row is dropped (counted). No row holds padding, so every token the model computes on is a
real one and tokens/s counts real tokens. An example may continue from one row into the next, and
attention crosses example boundaries inside a row (the `<eos><bos>` pair marks them), as in GPT-2
and most LM pretraining.

Labels (HF convention, the model shifts them): with `loss_on="answers"` only the answer tokens and
their `<eos>` carry their id, everything else is -100; with `loss_on="all"` every token does.

`PackedBatches` is the resumable stream: epoch e of stage s visits that stage's rows in the order
of `random.Random(f"{seed}|{s}|{e}")`'s shuffle, `batch_size` rows at a time (the incomplete last
batch is dropped). The batch sequence is a pure function of (seed, stage, epoch, position), so a
state of a few integers resumes it exactly.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import IGNORE_INDEX
from .templates import Record

__all__ = [
    "LOSS_ON",
    "PackedBatches",
    "TokenizedSplit",
    "concat_rows",
    "pack_rows",
    "tokenize_records",
]

LOSS_ON = ("answers", "all")
_CHUNK = 1000  # examples per tokenizer call (and per progress-bar tick)
_BAR_FROM = 5000  # show a progress bar from this many examples on (when stderr is a terminal)


@dataclass
class TokenizedSplit:
    """One split as a token stream: `ids` (N,) int64, `answer` (N,) bool, example `offsets`."""

    ids: torch.Tensor
    answer: torch.Tensor
    offsets: torch.Tensor  # (n_examples + 1,) start of each example in `ids`, then len(ids)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_examples(self) -> int:
        return int(self.offsets.numel()) - 1


def tokenize_records(
    tokenizer: Any, records: Sequence[Record], progress: bool | None = None
) -> TokenizedSplit:
    """`<bos> prompt answer <eos>` for each record, concatenated, with the answer mask.

    Prompt and answer are encoded separately (`add_special_tokens=False`), so the mask marks
    exactly the answer's tokens and `<eos>`. A bar shows progress on large sets (`progress`
    None: from 5000 examples on, on a terminal).
    """
    if not records:
        raise ValueError("records must not be empty")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("tokenizer needs bos_token_id and eos_token_id")
    if progress is None:
        progress = len(records) >= _BAR_FROM and sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="tokenizing", unit="ex", file=sys.stderr)
    ids: list[int] = []
    mask: list[bool] = []
    offsets = [0]
    for start in range(0, len(records), _CHUNK):
        chunk = records[start : start + _CHUNK]
        prompts = tokenizer([r.prompt for r in chunk], add_special_tokens=False)["input_ids"]
        answers = tokenizer([r.answer for r in chunk], add_special_tokens=False)["input_ids"]
        for p, a in zip(prompts, answers, strict=True):
            ids.extend([bos, *p, *a, eos])
            mask.extend([False] * (1 + len(p)) + [True] * (len(a) + 1))
            offsets.append(len(ids))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return TokenizedSplit(
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(mask, dtype=torch.bool),
        torch.tensor(offsets, dtype=torch.long),
    )


def pack_rows(split: TokenizedSplit, max_len: int, loss_on: str = "answers") -> dict[str, Any]:
    """Cut the stream into rows of `max_len`: {input_ids, labels} (R, max_len), `dropped` tokens.

    Raises ValueError when the split has fewer than `max_len` tokens (not one full row).
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    n_rows = split.ids.numel() // max_len
    if n_rows == 0:
        raise ValueError(
            f"{split.ids.numel()} tokens do not fill one row of max_len={max_len}; "
            "use more data or a smaller max_len"
        )
    used = n_rows * max_len
    input_ids = split.ids[:used].view(n_rows, max_len).clone()
    labels = input_ids.clone()
    if loss_on == "answers":
        labels[~split.answer[:used].view(n_rows, max_len)] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels, "dropped": split.ids.numel() - used}


def concat_rows(parts: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack packed rows of several datasets into one pool (rows never mix datasets)."""
    if not parts:
        raise ValueError("parts must not be empty")
    return {k: torch.cat([p[k] for p in parts]) for k in ("input_ids", "labels")}


class PackedBatches:
    """Deterministic, resumable stream of packed batches, one pool of rows per stage.

    `next_batch(stage)` returns {input_ids, attention_mask (all ones), labels} of shape
    (batch_size, max_len) and advances that stage's (epoch, position); `state_dict()` between
    two batches resumes exactly there. Same state layout as `CurriculumDataset`.
    """

    def __init__(self, pools: dict[str, dict[str, torch.Tensor]], batch_size: int, seed: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not pools:
            raise ValueError("pools must map at least one stage to packed rows")
        for stage, pool in pools.items():
            rows = pool["input_ids"].shape[0]
            if rows < batch_size:
                raise ValueError(
                    f"stage {stage!r} has {rows} packed rows, fewer than batch_size={batch_size}; "
                    "use more data, a smaller max_len or a smaller batch size"
                )
        self.pools = pools
        self.batch_size = batch_size
        self.seed = seed
        self.stage: str | None = None
        self._pos: dict[str, list[int]] = {s: [0, 0] for s in pools}  # [epoch, batch]
        self._order_cache: dict[str, tuple[int, list[int]]] = {}

    def _pool(self, stage: str) -> dict[str, torch.Tensor]:
        if stage not in self.pools:
            raise ValueError(f"stage {stage!r} has no rows; have {list(self.pools)}")
        return self.pools[stage]

    def steps_per_epoch(self, stage: str) -> int:
        """Batches in one epoch of `stage` (incomplete last batch dropped)."""
        return self._pool(stage)["input_ids"].shape[0] // self.batch_size

    def epoch(self, stage: str) -> int:
        """Completed epochs of `stage` so far."""
        self._pool(stage)
        return self._pos[stage][0]

    def _order(self, stage: str, epoch: int) -> list[int]:
        cached = self._order_cache.get(stage)
        if cached is None or cached[0] != epoch:
            order = list(range(self.pools[stage]["input_ids"].shape[0]))
            random.Random(f"{self.seed}|{stage}|{epoch}").shuffle(order)
            cached = (epoch, order)
            self._order_cache[stage] = cached
        return cached[1]

    def next_batch(self, stage: str) -> dict[str, torch.Tensor]:
        """The next batch of `stage`; advances its position (rolling over to a new epoch)."""
        pool = self._pool(stage)
        epoch, index = self._pos[stage]
        if index >= self.steps_per_epoch(stage):
            epoch, index = epoch + 1, 0
        order = self._order(stage, epoch)
        chosen = torch.tensor(order[index * self.batch_size : (index + 1) * self.batch_size])
        input_ids = pool["input_ids"][chosen]
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": pool["labels"][chosen],
        }
        self._pos[stage] = [epoch, index + 1]
        self.stage = stage
        return batch

    def batches(self, stage: str) -> Iterator[dict[str, torch.Tensor]]:
        """Infinite stream of `next_batch(stage)` (no read-ahead, so state_dict stays exact)."""
        self._pool(stage)
        while True:
            yield self.next_batch(stage)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: current stage, its epoch/position, and every stage's."""
        current = self.stage
        epoch, position = self._pos[current] if current is not None else (0, 0)
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "stage": current,
            "epoch": epoch,
            "position": position,
            "positions": {s: {"epoch": e, "position": p} for s, (e, p) in self._pos.items()},
            "sizes": {s: int(p["input_ids"].shape[0]) for s, p in self.pools.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict`; the pools must be the same ones."""
        try:
            seed, batch_size, sizes = state["seed"], state["batch_size"], state["sizes"]
            positions, stage = state["positions"], state["stage"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"state is not a PackedBatches state_dict (missing {exc})") from None
        mine = {s: int(p["input_ids"].shape[0]) for s, p in self.pools.items()}
        if seed != self.seed or batch_size != self.batch_size or dict(sizes) != mine:
            raise ValueError(
                "state was saved for different data (seed, batch_size or row counts differ: "
                f"saved seed={seed} batch_size={batch_size} sizes={dict(sizes)}, "
                f"now seed={self.seed} batch_size={self.batch_size} sizes={mine})"
            )
        new_pos: dict[str, list[int]] = {}
        for s in self.pools:
            entry = positions.get(s, {"epoch": 0, "position": 0})
            e, p = int(entry["epoch"]), int(entry["position"])
            if e < 0 or not 0 <= p <= self.steps_per_epoch(s):
                raise ValueError(f"state positions[{s!r}] out of range: {entry}")
            new_pos[s] = [e, p]
        if stage is not None:
            self._pool(stage)
        self._pos = new_pos
        self.stage = stage
