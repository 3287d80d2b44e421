"""`cognate-train train --data ...` and `eval --data ...` end to end on generated hub-schema
files: real-token accounting, bit-exact resume, the saved tokenizer, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from cognate_train.cli import main
from cognate_train.realdata.sources import DATASET_NAMES
from cognate_train.realdata.synthetic import synthetic_rows, write_dataset
from transformers import AutoTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    for i, name in enumerate(DATASET_NAMES):
        held = "validation" if name == "hellaswag" else "test"
        splits = {"train": synthetic_rows(name, 16, 1), held: synthetic_rows(name, 4, 2)}
        write_dataset(root, name, splits, ("jsonl", "json", "parquet", "save_to_disk")[i % 4])
    return root


def args(data_dir, out, cache, *extra):
    return [
        "train", "--preset", "smoke", "--data", "seeds", "--data-dir", str(data_dir),
        "--vocab-size", "300", "--max-len", "32", "--batch-size", "4", "--n-val", "2",
        "--max-steps", "12", "--eval-every", "12", "--checkpoint-every", "4", "--keep-last", "5",
        "--samples", "1", "--cache-dir", str(cache), "--output-dir", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory, data_dir, single_thread):
    root = tmp_path_factory.mktemp("ref")
    assert main(args(data_dir, root / "run", root / "cache", "--grad-accum", "2")) == 0
    return root / "run"


def test_train_counts_real_tokens_and_saves_a_loadable_tokenizer(ref_run):
    summary = json.loads((ref_run / "summary.json").read_text())
    # packed rows: every position of every micro-batch is a real token
    assert summary["tokens_seen"] == 12 * 2 * 4 * 32
    assert summary["data"]["skipped_rows"] == 0
    assert set(summary["data"]["datasets"]) == set(DATASET_NAMES)
    final = summary["final"]
    assert {f"val/loss/{n}" for n in DATASET_NAMES} <= set(final)
    assert {"val/accuracy/gsm8k", "val/accuracy/arc_easy"} <= set(final)
    tok = AutoTokenizer.from_pretrained(str(ref_run / "final"), local_files_only=True)
    assert len(tok) <= 300 and tok.padding_side == "left"
    assert tok("Question: x")["input_ids"][0] == tok.bos_token_id
    records = [json.loads(x) for x in (ref_run / "metrics.jsonl").open()]
    stages = [r["curriculum/stage"] for r in records if "curriculum/stage" in r]
    assert stages[0] == 0 and stages[-1] == 2  # foundation -> advanced


def test_resume_from_a_mid_run_checkpoint_is_bit_exact(tmp_path, ref_run, data_dir, same_weights):
    # what a run killed after step 4 leaves behind: its checkpoint (and nothing later);
    # a fresh cache, so nothing but the checkpoint carries over
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_run / "checkpoints" / "step-000004", out / "checkpoints" / "step-000004")
    assert main(args(data_dir, out, tmp_path / "cache", "--grad-accum", "2")) == 0
    same_weights(out / "final", ref_run / "final")
    same_weights(out / "checkpoints" / "step-000012", ref_run / "checkpoints" / "step-000012")


def test_eval_reports_each_dataset_on_its_held_out_split(ref_run, data_dir, capsys):
    argv = ["eval", "--checkpoint", str(ref_run / "final"), "--data", ",".join(DATASET_NAMES)]
    argv += ["--data-dir", str(data_dir), "--limit", "2", "--max-new-tokens", "4", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 12 and list(result["datasets"]) == list(DATASET_NAMES)
    sets = result["datasets"]
    assert sets["hellaswag"]["split"] == "validation" and sets["arc_easy"]["split"] == "test"
    assert all(m["n"] == 2 for m in sets.values())
    assert {"acc", "acc_norm"} <= set(sets["arc_challenge"]) and "exact_match" in sets["svamp"]
    # seeds means all six; curriculum is not real data
    seeds = [*argv[:4], "seeds", *argv[5:]]
    assert main(seeds) == 0
    assert list(json.loads(capsys.readouterr().out)["datasets"]) == list(DATASET_NAMES)
    assert main([*argv[:4], "curriculum", *argv[5:]]) == 2
    assert "data:" in capsys.readouterr().err


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_data_flags_are_one_line_errors(tmp_path, data_dir, capsys):
    out, cache = tmp_path / "o", tmp_path / "c"
    assert main(args(data_dir, out, cache, "--data", "gsm8k,squad")) == 2
    msg = _error(capsys)
    assert msg.startswith("cognate-train: error: data:") and "'gsm8k,squad'" in msg
    assert main(args(tmp_path / "nowhere", out, cache)) == 2
    assert "data-dir" in _error(capsys)
    (tmp_path / "notatok").mkdir()
    assert main(args(data_dir, out, cache, "--tokenizer", str(tmp_path / "notatok"))) == 2
    msg = _error(capsys)
    assert "tokenizer" in msg and "not a tokenizer folder" in msg
    assert main(args(data_dir, out, cache, "--data", "mbpp", "--vocab-size", "100")) == 2
    assert "vocab-size" in _error(capsys)


def test_a_malformed_row_stops_the_run_unless_skipped(tmp_path, capsys):
    rows = synthetic_rows("svamp", 16)
    rows[3]["Answer"] = "many"
    write_dataset(tmp_path / "d", "svamp", {"train": rows, "test": rows[:4]})
    base = args(tmp_path / "d", tmp_path / "o", tmp_path / "c", "--data", "svamp")
    assert main([*base, "--max-steps", "2", "--eval-every", "2"]) == 2
    msg = _error(capsys)
    assert "svamp" in msg and "train.jsonl" in msg and "row 4" in msg and "--skip-bad-rows" in msg
    assert not (tmp_path / "o" / "final").exists()
    assert main([*base, "--max-steps", "2", "--eval-every", "2", "--skip-bad-rows"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["data"]["skipped_rows"] == 1
    assert summary["data"]["datasets"]["svamp"]["train_examples"] == 15 - 2


def test_evaluation_split_over_two_ranks_equals_one_process(data_dir, tmp_path, monkeypatch):
    """Two ranks simulated in this process (rank, world size and the gather patched): each
    scores its shard of every dataset, the reduced figures equal the whole set's."""
    import torch
    from cognate_train import distributed as dist
    from cognate_train.config import build_config
    from cognate_train.realdata.task import RealDataTask

    flags = dict(data="seeds", data_dir=str(data_dir), vocab_size=300, max_len=32)
    flags |= dict(batch_size=4, n_val=2, cache_dir=str(tmp_path / "cache"))
    task = RealDataTask(
        build_config("train", "smoke", None, flags), "reasoning", torch.device("cpu")
    )
    whole = task.evaluate()  # one process, every held-back example
    parts: list[dict] = []
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    for r in range(2):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(dist, "gather", lambda obj: parts.append(obj) or [obj])
        task.evaluate()
    assert all(c == 1 for part in parts for k, (_, c) in part.items() if "accuracy" in k)
    monkeypatch.setattr(dist, "gather", lambda obj: parts)  # what all_gather_object returns
    split = task.evaluate()
    assert split.keys() == whole.keys()
    for k, v in whole.items():
        assert split[k] == pytest.approx(v, rel=1e-5, abs=1e-9), k
