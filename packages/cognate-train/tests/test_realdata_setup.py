"""`--data` parsing, the trainer's real-data set-up, and checkpoint evaluation on held-out splits."""

from __future__ import annotations

import pytest
import torch
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_train.realdata.cache import PreprocessCache
from cognate_train.realdata.evaluate import evaluate_checkpoint, load_checkpoint
from cognate_train.realdata.metrics import answer_loss, split_answer_loss
from cognate_train.realdata.packing import tokenize_records
from cognate_train.realdata.setup import SEED_STAGES, build_real_data, parse_data, stages_for
from cognate_train.realdata.sources import DATASET_NAMES, DataError
from cognate_train.realdata.synthetic import synthetic_rows, write_dataset
from cognate_train.realdata.templates import TEMPLATES

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    for name in DATASET_NAMES:
        held = "validation" if name == "hellaswag" else "test"
        splits = {"train": synthetic_rows(name, 24, 1), held: synthetic_rows(name, 6, 2)}
        write_dataset(root, name, splits, "parquet" if name == "arc_easy" else "jsonl")
    return root


def test_parse_data():
    assert parse_data("curriculum") == "curriculum" and parse_data("seeds") == "seeds"
    assert parse_data("gsm8k, arc_easy") == ("gsm8k", "arc_easy")
    for bad in ("", "gsm8k,squad", "gsm8k,gsm8k"):
        with pytest.raises(ValueError, match="--data"):
            parse_data(bad)
    assert stages_for("seeds")["foundation"] == ("gsm8k", "svamp", "mbpp", "arc_easy")
    assert set(stages_for("seeds")["reasoning"]) == set(DATASET_NAMES)
    assert stages_for(("svamp",)) == {"advanced": ("svamp",)}


def test_build_real_data_pools_stages_and_caches(tmp_path, data_dir):
    cache = PreprocessCache(tmp_path / "cache")
    kw = dict(data_dir=data_dir, vocab_size=400, max_len=48, batch_size=2, n_val=4, cache=cache)
    rd = build_real_data("seeds", **kw)
    assert rd.stages == SEED_STAGES and len(rd.tokenizer) <= 400
    info = rd.summary["datasets"]
    assert all(not d["cache_hit"] for d in info.values())
    sizes = rd.batches.state_dict()["sizes"]
    assert sizes["foundation"] == sum(info[n]["rows"] for n in SEED_STAGES["foundation"])
    assert sizes["advanced"] == sum(info[n]["rows"] for n in DATASET_NAMES)
    for name in DATASET_NAMES:
        assert rd.val[name].n_examples == 4 and info[name]["train_examples"] == 20
    batch = rd.batches.next_batch("foundation")
    assert batch["input_ids"].shape == (2, 48)
    again = build_real_data("seeds", **kw)
    assert all(d["cache_hit"] for d in again.summary["datasets"].values())
    assert torch.equal(again.batches.next_batch("foundation")["input_ids"], batch["input_ids"])
    one = build_real_data(("mbpp",), **{**kw, "tokenizer": rd.tokenizer})
    assert list(one.batches.pools) == ["advanced"]


def test_too_little_data_for_a_batch(tmp_path, data_dir):
    with pytest.raises(DataError, match="fewer than batch_size"):
        build_real_data(
            ("svamp",),
            data_dir=data_dir,
            vocab_size=300,
            max_len=48,
            batch_size=10_000,
            cache=PreprocessCache(tmp_path),
        )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir):
    rd = build_real_data(
        "seeds",
        data_dir=data_dir,
        vocab_size=400,
        max_len=48,
        batch_size=2,
        cache=PreprocessCache(tmp_path_factory.mktemp("c")),
    )
    tok = rd.tokenizer
    torch.manual_seed(0)
    cfg = CognateConfig.from_preset(
        "cognate-tiny",
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("ckpt")
    CognateForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out, rd


def test_validation_loss_of_tokens_equals_the_records_loss(checkpoint):
    out, rd = checkpoint
    model, tok = load_checkpoint(out)
    records = [TEMPLATES["svamp"].build(r) for r in synthetic_rows("svamp", 5, 7)]
    split = tokenize_records(tok, records)
    assert split_answer_loss(model, split, tok.pad_token_id, 2) == pytest.approx(
        answer_loss(model, tok, records, 3), rel=1e-6
    )


def test_evaluate_checkpoint_reports_each_dataset_on_its_held_out_split(checkpoint, data_dir):
    out, _ = checkpoint
    model, tok = load_checkpoint(out)
    res = evaluate_checkpoint(
        model, tok, list(DATASET_NAMES), data_dir=data_dir, limit=3, max_new_tokens=4
    )
    assert list(res) == list(DATASET_NAMES)
    assert res["hellaswag"]["split"] == "validation" and res["gsm8k"]["split"] == "test"
    for name in ("arc_easy", "arc_challenge", "hellaswag"):
        assert {"acc", "acc_norm", "loss"} <= set(res[name]) and res[name]["n"] == 3
    assert {"exact_match", "loss"} <= set(res["gsm8k"]) and "pass@1" not in res["mbpp"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_checkpoint(tmp_path)
