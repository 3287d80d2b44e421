"""From a dataset name to templated records or (cached) token streams, and the BPE to train.

`load_records(name, split)` locates the split (`sources`), reads it through `datasets`, checks
its columns and templates every row (`templates`). `load_tokenized` does the same and tokenises,
through the preprocessing cache: on a hit nothing is read, templated or tokenised. `trained_bpe`
learns the `--tokenizer train` BPE on the training splits' prompt+answer text, cached the same
way, so a second run (and a resumed run) gets the identical tokenizer at once.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import PreprocessCache, make_key
from .packing import TokenizedSplit, tokenize_records
from .sources import (
    DataError,
    SplitSource,
    file_fingerprint,
    held_out_split,
    load_rows,
    locate,
)
from .templates import TEMPLATE_VERSION, Record, build_records, check_columns
from .tokenizer import load_tokenizer, tokenizer_fingerprint, train_bpe

__all__ = [
    "LoadedSplit",
    "find_split",
    "holdout",
    "holdout_indices",
    "load_records",
    "load_tokenized",
    "trained_bpe",
]


@dataclass
class LoadedSplit:
    """Templated rows of one split, the messages of rows skipped, and where they came from."""

    records: list[Record]
    skipped: list[str]
    source: SplitSource


def find_split(
    name: str,
    split: str | None = None,
    data_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
) -> SplitSource:
    """The source of `split` of `name` (None: the held-out split, test else validation)."""
    splits = locate(name, data_dir, hub_cache)
    if split is None:
        split = held_out_split(name, list(splits))
    if split not in splits:
        where = next(iter(splits.values())).root
        raise DataError(
            f"{name}: no {split!r} split in {where} (found {', '.join(sorted(splits))})"
        )
    return splits[split]


def _is_empty(source: SplitSource) -> bool:
    """No rows at all (checked before `datasets`, whose own message for it is unclear)."""
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return all(pq.read_metadata(str(p)).num_rows == 0 for p in source.files)
        except Exception:  # noqa: BLE001 - unreadable: load_rows reports it
            return False
    if source.kind not in ("jsonl", "json"):
        return False
    return all(not p.read_text(encoding="utf-8", errors="replace").strip() for p in source.files)


def load_records(
    name: str,
    split: str | None = None,
    *,
    data_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    skip_bad_rows: bool = False,
    hf_cache_dir: str | Path | None = None,
) -> LoadedSplit:
    """Read, check and template one split; DataError (one line) on any problem."""
    source = find_split(name, split, data_dir, hub_cache)
    if _is_empty(source):
        raise DataError(f"{name}: {source.label}: empty split (no rows)")
    rows, bad_lines = load_rows(source, hf_cache_dir, skip_bad_rows)
    if len(rows) == 0:
        raise DataError(f"{name}: {source.label}: empty split (no rows)")
    check_columns(name, rows.column_names, source.label)
    records, skipped = build_records(name, rows, source.label, skip_bad_rows)
    return LoadedSplit(records, bad_lines + skipped, source)


def load_tokenized(
    name: str,
    split: str,
    tokenizer: Any,
    *,
    data_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    skip_bad_rows: bool = False,
    cache: PreprocessCache | None = None,
) -> tuple[TokenizedSplit, bool]:
    """One split as a token stream, and whether it came from the cache.

    The key covers the split's files (path, size, mtime), the tokenizer, the template version
    and `skip_bad_rows`; the skipped-row messages are cached with the tokens.
    """
    source = find_split(name, split, data_dir, hub_cache)
    key = make_key(
        {
            "kind": "tokenized",
            "template": TEMPLATE_VERSION,
            "dataset": name,
            "split": source.split,
            "files": file_fingerprint(source),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "skip_bad_rows": bool(skip_bad_rows),
        }
    )
    if cache is not None:
        hit = cache.load_split(key)
        if hit is not None:
            return hit, True
    loaded = load_records(
        name,
        source.split,
        data_dir=data_dir,
        hub_cache=hub_cache,
        skip_bad_rows=skip_bad_rows,
        hf_cache_dir=None if cache is None else cache.root / "hf-datasets",
    )
    tokens = tokenize_records(tokenizer, loaded.records)
    tokens.skipped = loaded.skipped
    if cache is not None:
        cache.save_split(key, tokens)
    return tokens, False


def holdout_indices(n: int, n_val: int, seed: int) -> list[int]:
    """Which of `n` examples are held back: `n_val` drawn by `Random(f"{seed}|holdout")`,
    in file order."""
    if isinstance(n_val, bool) or not isinstance(n_val, int) or not 0 < n_val < n:
        raise ValueError(f"n_val must be an int in [1, {n - 1}] for {n} examples, got {n_val!r}")
    chosen = set(random.Random(f"{seed}|holdout").sample(range(n), n_val))
    return [i for i in range(n) if i in chosen]


def holdout(split: TokenizedSplit, n_val: int, seed: int) -> tuple[TokenizedSplit, TokenizedSplit]:
    """(train, val) by `holdout_indices`; both keep file order, and share no example."""
    val = holdout_indices(split.n_examples, n_val, seed)
    chosen = set(val)
    train = [i for i in range(split.n_examples) if i not in chosen]
    return _select(split, train), _select(split, val)


def _select(split: TokenizedSplit, indices: Sequence[int]) -> TokenizedSplit:
    starts, ends = split.offsets[:-1].tolist(), split.offsets[1:].tolist()
    pieces = [torch.arange(starts[i], ends[i]) for i in indices]
    where = torch.cat(pieces)
    lengths = torch.tensor([ends[i] - starts[i] for i in indices])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return TokenizedSplit(split.ids[where], split.answer[where], offsets, list(split.skipped))


def _texts(loaded: Sequence[LoadedSplit]) -> Iterator[str]:
    for part in loaded:
        for r in part.records:
            yield r.prompt + r.answer


def trained_bpe(
    names: Sequence[str],
    vocab_size: int,
    *,
    data_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    skip_bad_rows: bool = False,
    cache: PreprocessCache | None = None,
    split: str = "train",
) -> Any:
    """The byte-level BPE learnt on the `split` text of `names` (cached by files + vocab size)."""
    sources = [find_split(n, split, data_dir, hub_cache) for n in names]
    key = make_key(
        {
            "kind": "bpe",
            "template": TEMPLATE_VERSION,
            "vocab_size": vocab_size,
            "files": [[s.dataset, file_fingerprint(s)] for s in sources],
            "skip_bad_rows": bool(skip_bad_rows),
        }
    )
    folder = cache.tokenizer_dir(key) if cache is not None else None
    if folder is not None and (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    loaded = [
        load_records(n, split, data_dir=data_dir, hub_cache=hub_cache, skip_bad_rows=skip_bad_rows)
        for n in names
    ]
    tokenizer = train_bpe(_texts(loaded), vocab_size)
    if folder is not None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}."))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(folder)  # atomic; a concurrent run that got there first wins
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
