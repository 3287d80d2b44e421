"""Loaders for every on-disk layout and the local HF cache, and their one-line errors.

All rows are generated here (`cognate_train.realdata.synthetic`) in each dataset's hub schema.
"""

from __future__ import annotations

import json

import pytest
from cognate_train.realdata.pipeline import find_split, load_records
from cognate_train.realdata.sources import DATASET_NAMES, HUB_IDS, DataError, locate
from cognate_train.realdata.synthetic import FORMATS, synthetic_rows, write_dataset
from cognate_train.realdata.templates import TEMPLATES


def _splits(name: str, n_train: int = 6, n_test: int = 4) -> dict[str, list[dict]]:
    held = "validation" if name == "hellaswag" else "test"
    return {"train": synthetic_rows(name, n_train, 1), held: synthetic_rows(name, n_test, 2)}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_layout_loads_every_dataset(tmp_path, name, fmt):
    splits = _splits(name)
    write_dataset(tmp_path, name, splits, fmt)
    held = "validation" if name == "hellaswag" else "test"
    assert set(locate(name, tmp_path)) == {"train", held}
    for split, rows in splits.items():
        loaded = load_records(name, split, data_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
        # the reference: the template applied to the rows as written (no file in between)
        assert loaded.records == [TEMPLATES[name].build(r) for r in rows]
        assert loaded.skipped == []
    # no split asked: the held-out one
    assert load_records(name, data_dir=tmp_path).source.split == held


def test_test_split_is_preferred_over_validation(tmp_path):
    rows = synthetic_rows("hellaswag", 3)
    write_dataset(tmp_path, "hellaswag", {"train": rows, "validation": rows, "test": rows})
    assert find_split("hellaswag", None, tmp_path).split == "test"


def _fake_hub_cache(root, name, rows_by_split, fmt="parquet"):
    """The hub cache layout: datasets--ORG--NAME/{refs/main, snapshots/<rev>/<config>/...}."""
    import datasets

    repo, config = HUB_IDS[name]
    base = root / ("datasets--" + repo.replace("/", "--"))
    rev = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    folder = base / "snapshots" / rev / (config or "data")
    folder.mkdir(parents=True)
    for split, rows in rows_by_split.items():
        path = folder / f"{split}-00000-of-00001.{fmt}"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return base


@pytest.mark.parametrize("name", ["gsm8k", "arc_challenge"])
def test_hub_cache_is_found_offline(tmp_path, name):
    splits = _splits(name)
    _fake_hub_cache(tmp_path, name, splits)
    if name == "arc_challenge":  # the other config of the same repo must not be picked up
        other = tmp_path / "datasets--allenai--ai2_arc" / "snapshots" / ("0" * 40) / "ARC-Easy"
        other.mkdir()
        (other / "test-00000-of-00001.parquet").write_bytes(b"not used")
    found = locate(name, hub_cache=tmp_path)
    assert set(found) == {"train", "test"}
    loaded = load_records(name, "test", hub_cache=tmp_path)
    assert loaded.records == [TEMPLATES[name].build(r) for r in splits["test"]]


def test_missing_everywhere_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError) as err:
        locate("svamp", hub_cache=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "ChilleD/SVAMP" in msg and str(tmp_path) in msg
    assert "DIR/svamp/" in msg and "--data-dir" in msg


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


def test_missing_directory(tmp_path):
    with pytest.raises(DataError) as err:
        locate("gsm8k", tmp_path)
    _one_line(err, "gsm8k", str(tmp_path / "gsm8k"), "not a directory")


def test_directory_without_data_files(tmp_path):
    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        locate("mbpp", tmp_path)
    _one_line(err, "mbpp", "no data files", str(tmp_path / "mbpp"))


def test_missing_split(tmp_path):
    write_dataset(tmp_path, "gsm8k", {"train": synthetic_rows("gsm8k", 3)})
    with pytest.raises(DataError) as err:
        find_split("gsm8k", None, tmp_path)
    _one_line(err, "gsm8k", "no held-out split", "train")
    with pytest.raises(DataError) as err:
        find_split("gsm8k", "validation", tmp_path)
    _one_line(err, "gsm8k", "'validation'", "found train")


def test_two_formats_for_one_split(tmp_path):
    write_dataset(tmp_path, "gsm8k", {"train": synthetic_rows("gsm8k", 3)}, "jsonl")
    write_dataset(tmp_path, "gsm8k", {"train": synthetic_rows("gsm8k", 3)}, "json")
    with pytest.raises(DataError) as err:
        locate("gsm8k", tmp_path)
    _one_line(err, "gsm8k", "train.json", "train.jsonl", "keep one")


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError) as err:
        locate("squad", tmp_path)
    _one_line(err, "squad", "gsm8k")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_missing_column(tmp_path, fmt):
    rows = [{k: v for k, v in r.items() if k != "answerKey"} for r in synthetic_rows("arc_easy", 3)]
    write_dataset(tmp_path, "arc_easy", {"test": rows}, fmt)
    with pytest.raises(DataError) as err:
        load_records("arc_easy", "test", data_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    _one_line(err, "arc_easy", f"test.{fmt}", "missing column 'answerKey'")


def test_empty_split(tmp_path):
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "test.jsonl").write_text("\n")
    with pytest.raises(DataError) as err:
        load_records("svamp", "test", data_dir=tmp_path)
    _one_line(err, "svamp", "test.jsonl", "empty split")


def test_empty_parquet_split(tmp_path):
    import datasets

    (tmp_path / "svamp").mkdir()
    features = datasets.Features({k: datasets.Value("string") for k in ("Body", "Question")})
    datasets.Dataset.from_dict({"Body": [], "Question": []}, features=features).to_parquet(
        str(tmp_path / "svamp" / "test.parquet")
    )
    with pytest.raises(DataError) as err:
        load_records("svamp", "test", data_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    _one_line(err, "svamp", "test.parquet", "empty split")


def test_malformed_row_stops_or_is_skipped_and_counted(tmp_path):
    rows = synthetic_rows("gsm8k", 5)
    rows[2] = {"question": rows[2]["question"], "answer": "no final line here"}
    rows[4] = {"question": "", "answer": rows[4]["answer"]}
    write_dataset(tmp_path, "gsm8k", {"test": rows})
    with pytest.raises(DataError) as err:
        load_records("gsm8k", "test", data_dir=tmp_path)
    _one_line(err, "gsm8k", "test.jsonl", "row 3", "####", "--skip-bad-rows")
    loaded = load_records("gsm8k", "test", data_dir=tmp_path, skip_bad_rows=True)
    assert len(loaded.records) == 3 and len(loaded.skipped) == 2
    assert "row 3" in loaded.skipped[0] and "row 5" in loaded.skipped[1]


def test_unparseable_json_line_names_the_row(tmp_path):
    rows = synthetic_rows("svamp", 4)
    lines = [json.dumps(r) for r in rows]
    lines[1] = '{"Body": "broken'
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_records("svamp", "test", data_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    _one_line(err, "svamp", "test.jsonl", "row 2", "not valid JSON")
    loaded = load_records(
        "svamp", "test", data_dir=tmp_path, skip_bad_rows=True, hf_cache_dir=tmp_path / "hf"
    )
    assert len(loaded.records) == 3 and len(loaded.skipped) == 1


def test_every_row_bad_is_an_error_even_when_skipping(tmp_path):
    rows = [{**r, "label": ""} for r in synthetic_rows("hellaswag", 3)]  # the hub's test split
    write_dataset(tmp_path, "hellaswag", {"test": rows})
    with pytest.raises(DataError) as err:
        load_records("hellaswag", "test", data_dir=tmp_path, skip_bad_rows=True)
    _one_line(err, "hellaswag", "test.jsonl", "no usable rows")


def test_a_saved_dataset_that_is_not_a_datasetdict(tmp_path):
    import datasets

    datasets.Dataset.from_list(synthetic_rows("gsm8k", 2)).save_to_disk(str(tmp_path / "gsm8k"))
    with pytest.raises(DataError) as err:
        locate("gsm8k", tmp_path)
    _one_line(err, "gsm8k", "not a DatasetDict")
