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

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..curriculum import StagedStream
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


class PackedBatches(StagedStream):
    """Deterministic, resumable stream of packed batches, one pool of rows per stage.

    `next_batch(stage)` returns {input_ids, attention_mask (all ones), labels} of shape
    (batch_size, max_len) and advances that stage's (epoch, position); `state_dict()` between
    two batches resumes exactly there. The order and state are `StagedStream`'s, as for the
    generated curriculum's `CurriculumDataset`.
    """

    unit = "row"

    def __init__(self, pools: dict[str, dict[str, torch.Tensor]], batch_size: int, seed: int):
        if not pools:
            raise ValueError("pools must map at least one stage to packed rows")
        sizes = {stage: int(pool["input_ids"].shape[0]) for stage, pool in pools.items()}
        super().__init__(sizes, batch_size, seed)
        for stage, rows in sizes.items():
            if rows < batch_size:
                raise ValueError(
                    f"stage {stage!r} has {rows} packed rows, fewer than batch_size={batch_size}; "
                    "use more data, a smaller max_len or a smaller batch size"
                )
        self.pools = pools

    def _make_batch(self, stage: str, indices: list[int]) -> dict[str, torch.Tensor]:
        pool, chosen = self.pools[stage], torch.tensor(indices)
        input_ids = pool["input_ids"][chosen]
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": pool["labels"][chosen],
        }
