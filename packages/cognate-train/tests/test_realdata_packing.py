"""Packing into full rows, the resumable packed stream, hold-out, and the preprocessing cache."""

from __future__ import annotations

import os

import pytest
import torch
from cognate_train.realdata import pipeline
from cognate_train.realdata.cache import PreprocessCache
from cognate_train.realdata.packing import (
    PackedBatches,
    concat_rows,
    pack_rows,
    tokenize_records,
)
from cognate_train.realdata.synthetic import synthetic_rows, write_dataset
from cognate_train.realdata.templates import TEMPLATES
from cognate_train.realdata.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tok():
    texts = []
    for name in ("gsm8k", "arc_easy"):
        texts += [r.prompt + r.answer for r in map(TEMPLATES[name].build, synthetic_rows(name, 50))]
    return train_bpe(texts, 400)


@pytest.fixture(scope="module")
def records():
    return [TEMPLATES["gsm8k"].build(r) for r in synthetic_rows("gsm8k", 20)]


def test_tokenized_stream_is_bos_prompt_answer_eos(tok, records):
    split = tokenize_records(tok, records)
    assert split.n_examples == len(records)
    for i, r in enumerate(records):
        a, b = split.offsets[i].item(), split.offsets[i + 1].item()
        p = tok(r.prompt, add_special_tokens=False)["input_ids"]
        ans = tok(r.answer, add_special_tokens=False)["input_ids"]
        assert split.ids[a:b].tolist() == [tok.bos_token_id, *p, *ans, tok.eos_token_id]
        assert split.answer[a:b].tolist() == [False] * (1 + len(p)) + [True] * (len(ans) + 1)


@pytest.mark.parametrize("loss_on", ["answers", "all"])
def test_rows_are_full_and_labels_follow_the_flag(tok, records, loss_on):
    split = tokenize_records(tok, records)
    packed = pack_rows(split, 32, loss_on)
    rows, labels = packed["input_ids"], packed["labels"]
    n = split.ids.numel()
    assert rows.shape == (n // 32, 32) and packed["dropped"] == n % 32
    assert torch.equal(rows.flatten(), split.ids[: rows.numel()])  # no padding, in order
    mask = split.answer[: rows.numel()].view_as(rows)
    if loss_on == "answers":
        assert torch.equal(labels[mask], rows[mask]) and bool((labels[~mask] == -100).all())
    else:
        assert torch.equal(labels, rows)


def test_pack_errors(tok, records):
    split = tokenize_records(tok, records[:1])
    with pytest.raises(ValueError, match="do not fill one row"):
        pack_rows(split, 10_000)
    with pytest.raises(ValueError, match="loss_on"):
        pack_rows(split, 8, "prompts")


def _pools(tok, records):
    packed = pack_rows(tokenize_records(tok, records), 16)
    return {"foundation": concat_rows([packed]), "advanced": concat_rows([packed, packed])}


def test_packed_stream_is_a_function_of_seed_and_position(tok, records):
    pools = _pools(tok, records)
    a = PackedBatches(pools, 4, seed=3)
    stream = [a.next_batch("foundation") for _ in range(7)] + [a.next_batch("advanced")]
    state = a.state_dict()
    rest = [a.next_batch("advanced") for _ in range(5)]
    b = PackedBatches(pools, 4, seed=3)
    b.load_state_dict(state)
    for x, y in zip(rest, [b.next_batch("advanced") for _ in range(5)], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # an epoch visits every row once: compare with a direct permutation of the pool
    c = PackedBatches(pools, 4, seed=3)
    per_epoch = c.steps_per_epoch("foundation")
    seen = torch.cat([c.next_batch("foundation")["input_ids"] for _ in range(per_epoch)])
    n_rows = pools["foundation"]["input_ids"].shape[0]
    used = seen.shape[0]
    assert used == n_rows // 4 * 4
    assert {tuple(r) for r in seen.tolist()} <= {
        tuple(r) for r in pools["foundation"]["input_ids"].tolist()
    }
    assert torch.equal(stream[0]["attention_mask"], torch.ones_like(stream[0]["input_ids"]))
    other = PackedBatches(pools, 4, seed=4).next_batch("foundation")["input_ids"]
    assert not torch.equal(other, stream[0]["input_ids"])


def test_packed_stream_rejects_foreign_state(tok, records):
    pools = _pools(tok, records)
    state = PackedBatches(pools, 4, seed=3).state_dict()
    with pytest.raises(ValueError, match="different data"):
        PackedBatches(pools, 4, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        PackedBatches(pools, 10_000, seed=0)


def test_holdout_is_disjoint_and_seeded(tok, records):
    split = tokenize_records(tok, records)
    train, val = pipeline.holdout(split, 5, seed=1)
    assert (train.n_examples, val.n_examples) == (15, 5)

    def examples(s):
        return [tuple(s.ids[s.offsets[i] : s.offsets[i + 1]].tolist()) for i in range(s.n_examples)]

    assert sorted(examples(train) + examples(val)) == sorted(examples(split))
    assert not set(examples(train)) & set(examples(val))
    assert examples(pipeline.holdout(split, 5, seed=1)[1]) == examples(val)


def test_second_load_comes_from_the_cache_without_tokenizing(tmp_path, tok, monkeypatch):
    write_dataset(tmp_path / "data", "gsm8k", {"train": synthetic_rows("gsm8k", 30)})
    cache = PreprocessCache(tmp_path / "cache")
    first, hit = pipeline.load_tokenized(
        "gsm8k", "train", tok, data_dir=tmp_path / "data", cache=cache
    )
    assert not hit
    calls = []
    real = pipeline.tokenize_records
    monkeypatch.setattr(
        pipeline, "tokenize_records", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    second, hit = pipeline.load_tokenized(
        "gsm8k", "train", tok, data_dir=tmp_path / "data", cache=cache
    )
    assert hit and calls == []
    for name in ("ids", "answer", "offsets"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    # a touched data file, another tokenizer or another setting is a new key: re-tokenized
    path = tmp_path / "data" / "gsm8k" / "train.jsonl"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    _, hit = pipeline.load_tokenized("gsm8k", "train", tok, data_dir=tmp_path / "data", cache=cache)
    assert not hit and calls == [1]
    _, hit = pipeline.load_tokenized(
        "gsm8k", "train", tok, data_dir=tmp_path / "data", cache=cache, skip_bad_rows=True
    )
    assert not hit and calls == [1, 1]


def test_skipped_rows_are_cached_with_the_tokens(tmp_path, tok):
    rows = synthetic_rows("gsm8k", 6)
    rows[1] = {"question": "q", "answer": "no final line"}
    write_dataset(tmp_path / "data", "gsm8k", {"train": rows})
    cache = PreprocessCache(tmp_path / "cache")
    kw = dict(data_dir=tmp_path / "data", cache=cache, skip_bad_rows=True)
    first, _ = pipeline.load_tokenized("gsm8k", "train", tok, **kw)
    second, hit = pipeline.load_tokenized("gsm8k", "train", tok, **kw)
    assert (
        hit and first.n_examples == 5 and len(second.skipped) == 1 and "row 2" in second.skipped[0]
    )


def test_trained_bpe_is_cached(tmp_path):
    write_dataset(tmp_path / "data", "svamp", {"train": synthetic_rows("svamp", 40)})
    cache = PreprocessCache(tmp_path / "cache")
    a = pipeline.trained_bpe(["svamp"], 300, data_dir=tmp_path / "data", cache=cache)
    assert len(list((tmp_path / "cache" / "bpe").iterdir())) == 1
    b = pipeline.trained_bpe(["svamp"], 300, data_dir=tmp_path / "data", cache=cache)
    text = "Question: Ada had 12 pens."
    assert a(text)["input_ids"] == b(text)["input_ids"] and len(a) == len(b)
