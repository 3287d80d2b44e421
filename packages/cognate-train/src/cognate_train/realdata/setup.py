"""`--data` for the trainer: which datasets each stage trains on, and the packed, resumable stream.

`--data seeds` is the original design's 3-stage curriculum over the six datasets:
foundation = gsm8k, svamp, mbpp, arc_easy; reasoning = those + arc_challenge, hellaswag;
advanced = all six. `--data NAME[,NAME...]` trains those datasets as one stage (the trainer's
last, "advanced"). `--data curriculum` is the built-in generated data and is not handled here.

`build_real_data` turns that into: the tokenizer (`--tokenizer train`: a BPE learnt on the
training splits, cached; or a folder), each dataset's train split tokenised through the
preprocessing cache, `n_val` examples per dataset held back for validation (seeded, never
trained on), the rest packed into rows of `max_len` and pooled per stage, and a
`PackedBatches` stream over the pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import PreprocessCache
from .packing import PackedBatches, TokenizedSplit, concat_rows, pack_rows
from .pipeline import holdout, load_tokenized, trained_bpe
from .sources import DATASET_NAMES, DataError
from .tokenizer import DEFAULT_VOCAB_SIZE, load_tokenizer

__all__ = ["SEED_STAGES", "RealData", "build_real_data", "parse_data", "stages_for"]

STAGE_NAMES = ("foundation", "reasoning", "advanced")
SEED_STAGES: dict[str, tuple[str, ...]] = {
    "foundation": ("gsm8k", "svamp", "mbpp", "arc_easy"),
    "reasoning": ("gsm8k", "svamp", "mbpp", "arc_easy", "arc_challenge", "hellaswag"),
    "advanced": DATASET_NAMES,
}


def parse_data(spec: str) -> str | tuple[str, ...]:
    """`--data`: "curriculum", "seeds", or a tuple of dataset names (ValueError otherwise)."""
    if spec in ("curriculum", "seeds"):
        return spec
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in DATASET_NAMES]
    if not names or unknown:
        raise ValueError(
            f"--data must be curriculum, seeds or names from {', '.join(DATASET_NAMES)}; "
            f"got {spec!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--data names a dataset twice: {spec!r}")
    return names


def stages_for(data: str | Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Datasets of each stage: the seed curriculum, or the names as the one stage "advanced"."""
    if data == "seeds":
        return dict(SEED_STAGES)
    if isinstance(data, str):
        raise ValueError(f"stages_for takes 'seeds' or dataset names, got {data!r}")
    return {"advanced": tuple(data)}


@dataclass
class RealData:
    """What the trainer needs from real data (see `build_real_data`)."""

    tokenizer: Any
    batches: PackedBatches
    stages: dict[str, tuple[str, ...]]
    val: dict[str, TokenizedSplit]  # held-back training examples, per dataset
    summary: dict[str, Any] = field(default_factory=dict)


def _tokenizer(
    spec: str,
    names: Sequence[str],
    vocab_size: int,
    data_dir: str | Path | None,
    skip_bad_rows: bool,
    cache: PreprocessCache,
) -> Any:
    if spec == "train":
        return trained_bpe(
            names, vocab_size, data_dir=data_dir, skip_bad_rows=skip_bad_rows, cache=cache
        )
    return load_tokenizer(spec)


def build_real_data(
    data: str | Sequence[str],
    *,
    data_dir: str | Path | None,
    tokenizer: str | Any = "train",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_len: int,
    loss_on: str = "answers",
    skip_bad_rows: bool = False,
    seed: int = 0,
    batch_size: int,
    n_val: int = 32,
    cache: PreprocessCache | None = None,
    active_stages: Sequence[str] | None = None,
) -> RealData:
    """Tokenizer, per-stage packed pools, held-back validation and the resumable stream.

    `tokenizer` is "train", a folder path, or an already built tokenizer (a resumed run passes
    the one saved in its checkpoint). A dataset with at most `n_val` training examples keeps
    half of them for validation. `active_stages` limits the stages built (default: all).
    """
    cache = cache or PreprocessCache()
    stages = stages_for(data)
    if active_stages is not None:
        stages = {s: v for s, v in stages.items() if s in active_stages}
        if not stages:
            raise ValueError(f"no active stage among {list(stages_for(data))}")
    names = [n for n in DATASET_NAMES if any(n in v for v in stages.values())]
    if isinstance(tokenizer, str):
        tok = _tokenizer(tokenizer, names, vocab_size, data_dir, skip_bad_rows, cache)
    else:
        tok = tokenizer
    packed: dict[str, dict[str, Any]] = {}
    val: dict[str, TokenizedSplit] = {}
    summary: dict[str, Any] = {"datasets": {}, "tokenizer_vocab": len(tok)}
    for name in names:
        split, hit = load_tokenized(
            name, "train", tok, data_dir=data_dir, skip_bad_rows=skip_bad_rows, cache=cache
        )
        k = min(n_val, split.n_examples // 2)
        if k < 1:
            raise DataError(f"{name}: the train split has too few rows to hold any out")
        train, val[name] = holdout(split, k, seed)
        try:
            packed[name] = pack_rows(train, max_len, loss_on)
        except ValueError as exc:
            raise DataError(f"{name}: train split: {exc}") from None
        summary["datasets"][name] = {
            "train_examples": train.n_examples,
            "val_examples": k,
            "rows": int(packed[name]["input_ids"].shape[0]),
            "tokens": int(packed[name]["input_ids"].numel()),
            "dropped_tokens": int(packed[name]["dropped"]),
            "skipped_rows": len(split.skipped),
            "cache_hit": hit,
        }
        summary.setdefault("skipped", []).extend(split.skipped)
    pools = {s: concat_rows([packed[n] for n in v]) for s, v in stages.items()}
    try:
        batches = PackedBatches(pools, batch_size, seed)
    except ValueError as exc:
        raise DataError(f"--batch-size/--max-len: {exc}") from None
    return RealData(tok, batches, stages, val, summary)
