"""Where the six Phase 1 datasets live on disk, and loading one split of one through `datasets`.

A dataset `NAME` (gsm8k, svamp, mbpp, arc_easy, arc_challenge, hellaswag) is found in one place:

- with a data directory: `DIR/NAME/` holding either a `DatasetDict.save_to_disk` copy
  (`dataset_dict.json` plus one folder per split) or files `<split>.parquet`, `<split>.jsonl` or
  `<split>.json` (one file per split, in the hub's own columns);
- without one: the local Hugging Face hub cache (`huggingface_hub`'s `snapshot_download` with
  `local_files_only=True`, so nothing is downloaded), where the hub keeps the dataset's data files
  (e.g. `main/test-00000-of-00001.parquet` for openai/gsm8k).

Nothing here touches the network. Every problem raises `DataError` (a `ValueError`) with one line
that names the dataset and the directory or file, and says where files are expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET_NAMES",
    "FILE_FORMATS",
    "HELD_OUT_SPLITS",
    "HUB_IDS",
    "DataError",
    "SplitSource",
    "file_fingerprint",
    "held_out_split",
    "load_rows",
    "locate",
]

DATASET_NAMES: tuple[str, ...] = (
    "gsm8k",
    "svamp",
    "mbpp",
    "arc_easy",
    "arc_challenge",
    "hellaswag",
)
# hub repository and config of each dataset (the schema its files must follow)
HUB_IDS: dict[str, tuple[str, str | None]] = {
    "gsm8k": ("openai/gsm8k", "main"),
    "svamp": ("ChilleD/SVAMP", None),
    "mbpp": ("google-research-datasets/mbpp", "full"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"),
    "hellaswag": ("Rowan/hellaswag", None),
}
FILE_FORMATS: tuple[str, ...] = ("parquet", "jsonl", "json")
# the split a metric is reported on: test, else validation (hellaswag's hub test has no labels,
# so a hellaswag copy without a labelled test split is evaluated on validation)
HELD_OUT_SPLITS: tuple[str, ...] = ("test", "validation")
_HUB_EXTS = (".parquet", ".jsonl", ".json", ".arrow")


class DataError(ValueError):
    """Bad or missing data: the message is one line naming dataset and file (or directory)."""


@dataclass(frozen=True)
class SplitSource:
    """One split of one dataset on disk: `kind` is save_to_disk, parquet, jsonl, json or arrow."""

    dataset: str
    split: str
    kind: str
    files: tuple[Path, ...]
    root: Path  # the DatasetDict folder for save_to_disk, else the folder holding the files

    @property
    def label(self) -> str:
        """What an error message names: the file, or the split folder of a save_to_disk copy."""
        if self.kind == "save_to_disk":
            return str(self.root / self.split)
        return str(self.files[0]) if len(self.files) == 1 else f"{self.root} ({self.split}-*)"


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


def _where_to_put(name: str) -> str:
    repo, config = HUB_IDS[name]
    schema = f"{repo}" + (f" ({config})" if config else "")
    return (
        f"put a save_to_disk DatasetDict or <split>.parquet|.jsonl|.json files in the schema of "
        f"{schema} into DIR/{name}/ and pass --data-dir DIR"
    )


def _from_directory(name: str, folder: Path) -> dict[str, SplitSource]:
    if not folder.is_dir():
        raise DataError(f"{name}: {folder} is not a directory; {_where_to_put(name)}")
    marker = folder / "dataset_dict.json"
    if marker.is_file():
        try:
            splits = json.loads(marker.read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{name}: {marker} is not a DatasetDict index ({exc})") from None
        out = {}
        for split in splits:
            sub = folder / str(split)
            files = tuple(sorted(p for p in sub.glob("*") if p.is_file()))
            if not files:
                raise DataError(f"{name}: {sub} (split {split!r} of {marker}) has no files")
            out[str(split)] = SplitSource(name, str(split), "save_to_disk", files, folder)
        return out
    if (folder / "state.json").is_file():
        raise DataError(
            f"{name}: {folder} is a save_to_disk Dataset, not a DatasetDict; save a "
            "DatasetDict({'train': ..., 'test': ...}) instead"
        )
    out: dict[str, SplitSource] = {}
    for path in sorted(folder.iterdir()):
        split, _, ext = path.name.rpartition(".")
        if ext not in FILE_FORMATS or not split or not path.is_file():
            continue
        if split in out:
            raise DataError(
                f"{name}: both {out[split].files[0].name} and {path.name} in {folder}; keep one"
            )
        out[split] = SplitSource(name, split, ext, (path,), folder)
    if not out:
        raise DataError(f"{name}: no data files in {folder}; {_where_to_put(name)}")
    return out


def _split_of(filename: str) -> str:
    """Hub data file names: `test-00000-of-00001.parquet`, `train.jsonl`, `validation-*.arrow`."""
    stem = filename.split(".", 1)[0]
    return stem.split("-", 1)[0]


def _from_hub_cache(name: str, hub_cache: str | Path | None) -> dict[str, SplitSource]:
    from huggingface_hub import constants, snapshot_download

    repo, config = HUB_IDS[name]
    where = str(hub_cache or constants.HF_HUB_CACHE)
    try:
        snapshot = Path(
            snapshot_download(repo, repo_type="dataset", local_files_only=True, cache_dir=hub_cache)
        )
    except Exception:  # noqa: BLE001 - any lookup failure means "not in the cache"
        raise DataError(
            f"{name}: no --data-dir given and {repo} is not in the Hugging Face cache ({where}); "
            f"{_where_to_put(name)}"
        ) from None
    grouped: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(snapshot.rglob("*")):
        rel = path.relative_to(snapshot)
        if path.suffix not in _HUB_EXTS or (config is not None and config not in rel.parts[:-1]):
            continue
        grouped.setdefault((_split_of(path.name), path.suffix[1:]), []).append(path)
    out: dict[str, SplitSource] = {}
    for (split, kind), files in grouped.items():
        if split in out:
            raise DataError(f"{name}: split {split!r} has files of two formats in {snapshot}")
        folder = files[0].parent
        # the cache keeps links into blobs/: resolve them so the fingerprint sees the real files
        out[split] = SplitSource(name, split, kind, tuple(files), folder)
    if not out:
        raise DataError(
            f"{name}: {repo} is in the Hugging Face cache ({snapshot}) but has no data files"
            + (f" for config {config}" if config else "")
            + f"; {_where_to_put(name)}"
        )
    return out


def locate(
    name: str, data_dir: str | Path | None = None, hub_cache: str | Path | None = None
) -> dict[str, SplitSource]:
    """Every split of dataset `name` found locally, by split name.

    With `data_dir`, only `data_dir/name/` is looked at; without it, only the hub cache
    (`hub_cache`, default the Hugging Face one). Raises DataError when nothing is found.
    """
    _check_name(name)
    if data_dir is not None:
        return _from_directory(name, Path(data_dir) / name)
    return _from_hub_cache(name, hub_cache)


def held_out_split(name: str, splits: Sequence[str]) -> str:
    """The evaluation split among `splits`: test, else validation."""
    for split in HELD_OUT_SPLITS:
        if split in splits:
            return split
    raise DataError(
        f"{name}: no held-out split (looked for {' or '.join(HELD_OUT_SPLITS)}; "
        f"found {', '.join(sorted(splits)) or 'none'})"
    )


def file_fingerprint(source: SplitSource) -> list[list[Any]]:
    """(path, size, mtime_ns) of every file behind a split: the preprocessing cache key.

    A changed, replaced or touched file changes the key; reading sizes and times is instant,
    where hashing a large file is not.
    """
    out = []
    for path in source.files:
        real = Path(os.path.realpath(path))
        st = real.stat()
        out.append([str(real), st.st_size, st.st_mtime_ns])
    return out


@lru_cache(maxsize=8)
def _load_dict(root: str) -> Any:
    import datasets

    return datasets.load_from_disk(root)


def _bad_json_lines(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse a JSON Lines file line by line: (rows, one message per line that is not an object)."""
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(f"{path}: row {n}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                bad.append(f"{path}: row {n}: not a JSON object")
                continue
            rows.append(row)
    return rows, bad


def load_rows(
    source: SplitSource, cache_dir: str | Path | None = None, skip_bad_rows: bool = False
) -> tuple[Any, list[str]]:
    """The split's rows as a `datasets.Dataset`, and the lines skipped as unreadable.

    json/parquet files go through `datasets.load_dataset` (arrow cache in `cache_dir`, default the
    Hugging Face one); a save_to_disk copy through `datasets.load_from_disk`. A JSON Lines file
    that `datasets` cannot read is scanned line by line to name the first bad row; with
    `skip_bad_rows` its readable rows are kept (`Dataset.from_list`) and each bad line is
    reported in the returned list instead.
    """
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return _load(source, cache_dir), []
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow/json/datasets errors vary; one line out
        if source.kind == "jsonl":
            rows, bad = [], []
            for path in source.files:
                good, wrong = _bad_json_lines(path)
                rows.extend(good)
                bad.extend(wrong)
            if bad and not skip_bad_rows:
                raise DataError(
                    f"{source.dataset}: {bad[0]} (--skip-bad-rows skips such rows)"
                ) from None
            if bad and rows:
                try:
                    return datasets.Dataset.from_list(rows), bad
                except Exception:  # noqa: BLE001 - fall through to the generic message
                    pass
        detail = " ".join(str(exc).split())[:300]
        raise DataError(
            f"{source.dataset}: cannot read {source.label} as {source.kind} "
            f"({type(exc).__name__}: {detail})"
        ) from None
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _load(source: SplitSource, cache_dir: str | Path | None) -> Any:
    import datasets

    if source.kind == "save_to_disk":
        dd = _load_dict(str(source.root))
        if not isinstance(dd, datasets.DatasetDict):
            raise DataError(f"{source.dataset}: {source.root} is not a DatasetDict")
        return dd[source.split]
    builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "arrow": "arrow"}
    return datasets.load_dataset(
        builder[source.kind],
        data_files=[str(p) for p in source.files],
        split="train",
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
