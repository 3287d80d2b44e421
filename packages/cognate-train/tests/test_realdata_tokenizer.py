"""`--tokenizer {train,PATH}`: the trained BPE, local folders, and what is not a tokenizer."""

from __future__ import annotations

import json

import pytest
from cognate_train.realdata.tokenizer import load_tokenizer, tokenizer_fingerprint, train_bpe
from transformers import AutoTokenizer

TEXTS = [f"Question: what is {a} plus {a + 1}?\nAnswer: {2 * a + 1}" for a in range(200)]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXTS, 400)


def test_trained_bpe_round_trips_any_text_and_reloads_with_autotokenizer(bpe, tmp_path):
    assert len(bpe) == 400
    assert (bpe.pad_token_id, bpe.bos_token_id, bpe.eos_token_id) == (0, 1, 2)
    assert bpe.padding_side == "left"
    text = "Ünïcode ✓ and 😀 never seen in training\n\tdone"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text  # byte level: nothing is unknown
    assert bpe(text)["input_ids"] == [bpe.bos_token_id, *ids]  # BOS from the post-processor
    bpe.save_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert auto(text)["input_ids"] == bpe(text)["input_ids"]
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert auto.padding_side == "left"
    # reloading through --tokenizer PATH keeps ids and adds no second BOS
    again = load_tokenizer(tmp_path)
    assert again(text)["input_ids"] == bpe(text)["input_ids"]
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(bpe)


def test_merges_are_learnt_from_the_text(bpe):
    assert len(bpe("Question: what is", add_special_tokens=False)["input_ids"]) < len(
        "Question: what is"
    )


def test_training_is_deterministic(bpe):
    assert tokenizer_fingerprint(train_bpe(TEXTS, 400)) == tokenizer_fingerprint(bpe)


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 259"):
        train_bpe(TEXTS, 100)


def test_gpt2_style_vocab_and_merges_folder(bpe, tmp_path):
    folder = tmp_path / "gpt2ish"
    folder.mkdir()
    bpe.backend_tokenizer.model.save(str(folder))  # writes vocab.json + merges.txt
    vocab = json.loads((folder / "vocab.json").read_text())
    # GPT-2 has one special token and no <bos>/<pad>
    vocab["<|endoftext|>"] = vocab.pop("<eos>")
    del vocab["<bos>"], vocab["<pad>"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tok = load_tokenizer(folder)
    eot = vocab["<|endoftext|>"]
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == eot
    text = "what is 3 plus 4?"
    assert (
        tok(text, add_special_tokens=False)["input_ids"]
        == bpe(text, add_special_tokens=False)["input_ids"]
    )
    assert tok(text)["input_ids"][0] == eot
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_folder_with_config_names_its_special_tokens(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["pad_token"] = "<eos>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path).pad_token_id == bpe.eos_token_id


def test_not_a_tokenizer_folder(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError) as err:
        load_tokenizer(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "not a tokenizer folder" in msg
    with pytest.raises(ValueError, match="not a directory"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the tokenizer"):
        load_tokenizer(tmp_path)
