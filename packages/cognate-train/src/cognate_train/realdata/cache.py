"""The preprocessing cache: tokenised splits and trained tokenizers, keyed by what made them.

Key = sha256 of (cache format, template version, dataset, split, the data files' path + size +
mtime_ns, the tokenizer's full definition, settings such as skip_bad_rows). Any change to a data
file, the tokenizer or a template gives a new key, so a stale entry is never read; an unchanged
set-up finds its entry and skips reading, templating and tokenising the data.

Entries are safetensors files (tensors + a JSON metadata string), written to a temporary name
and renamed, so a killed or concurrent run never leaves a half entry that looks whole. The
location is `COGNATE_TRAIN_CACHE`, else `$XDG_CACHE_HOME/cognate-train`, else
`~/.cache/cognate-train` (data directories may be read-only, so the cache never goes there).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .packing import TokenizedSplit

__all__ = ["CACHE_FORMAT", "PreprocessCache", "default_cache_dir", "make_key"]

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """`COGNATE_TRAIN_CACHE`, else `$XDG_CACHE_HOME/cognate-train`, else ~/.cache/cognate-train."""
    if os.environ.get("COGNATE_TRAIN_CACHE"):
        return Path(os.environ["COGNATE_TRAIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cognate-train"


def make_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `parts` (plus the cache format)."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class PreprocessCache:
    """Tokenised splits under `root/tokenized/KEY.safetensors`; tokenizers under `root/bpe/KEY/`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _entry(self, key: str) -> Path:
        return self.root / "tokenized" / f"{key}.safetensors"

    def load_split(self, key: str) -> TokenizedSplit | None:
        """The cached split of `key`, or None (absent or unreadable: then it is rebuilt)."""
        path = self._entry(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            return TokenizedSplit(
                tensors["ids"].long(),
                tensors["answer"].bool(),
                tensors["offsets"].long(),
                list(meta.get("skipped", [])),
            )
        except (OSError, KeyError, ValueError, SafetensorError):
            return None

    def save_split(self, key: str, split: TokenizedSplit) -> Path:
        """Write atomically (temporary file, then rename); returns the entry's path."""
        path = self._entry(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "ids": split.ids.to(torch.int64).contiguous(),
            "answer": split.answer.to(torch.uint8).contiguous(),
            "offsets": split.offsets.to(torch.int64).contiguous(),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"meta": json.dumps({"skipped": split.skipped})})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def tokenizer_dir(self, key: str) -> Path:
        """Where a tokenizer trained for `key` is kept (saved with `save_pretrained`)."""
        return self.root / "bpe" / key
