"""`cognate-train eval --checkpoint DIR --data NAMES --data-dir DIR`: per-dataset held-out metrics.

The checkpoint is a `save_pretrained` folder with its tokenizer (`final/`, `best/` or a
`checkpoints/step-N/`); the model loads with `AutoModelForCausalLM`, the tokenizer with
`AutoTokenizer`, both from local files only. Each dataset is evaluated on its held-out split
(test, else validation), the first `limit` rows when a limit is given, with the metrics of
`cognate_train.realdata.metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import evaluate_records
from .pipeline import load_records
from .sources import DataError

__all__ = ["evaluate_checkpoint", "load_checkpoint", "model_max_len"]


def load_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a save_pretrained folder; ValueError if it is not."""
    import cognate_model  # noqa: F401 - registers the Cognate classes with the Auto factories
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--checkpoint {folder}: no config.json (not a save_pretrained folder)")
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"--checkpoint {folder}: no tokenizer.json saved with the model")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(f"--checkpoint {folder}: cannot load ({detail})") from None
    return model.to(device).eval(), tokenizer


def model_max_len(model: Any, default: int = 1024) -> int:
    """The longest input the model takes (`max_seq_len` or `max_position_embeddings`)."""
    cfg = getattr(model, "config", None)
    for attr in ("max_seq_len", "max_position_embeddings", "n_positions"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def evaluate_checkpoint(
    model: Any,
    tokenizer: Any,
    names: Sequence[str],
    *,
    data_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    limit: int | None = None,
    execute_code: bool = False,
    skip_bad_rows: bool = False,
    batch_size: int = 16,
    device: Any = "cpu",
    max_new_tokens: int | None = None,
) -> dict[str, dict[str, Any]]:
    """{name: metrics (+ split, skipped_rows, seconds)} for each dataset in `names`."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be a positive int, got {limit!r}")
    max_len = model_max_len(model)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        loaded = load_records(
            name, None, data_dir=data_dir, hub_cache=hub_cache, skip_bad_rows=skip_bad_rows
        )
        records = loaded.records[:limit] if limit else loaded.records
        t0 = time.perf_counter()
        try:
            metrics = evaluate_records(
                name,
                model,
                tokenizer,
                records,
                execute_code=execute_code,
                batch_size=batch_size,
                device=device,
                max_len=max_len,
                max_new_tokens=max_new_tokens,
            )
        except ValueError as exc:
            raise DataError(f"{name}: {loaded.source.label}: {exc}") from None
        metrics.update(
            split=loaded.source.split,
            skipped_rows=len(loaded.skipped),
            seconds=round(time.perf_counter() - t0, 2),
        )
        results[name] = metrics
    return results
