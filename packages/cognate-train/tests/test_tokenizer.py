"""The character tokenizer: fixed ids, lossless round trip, offline save/load."""

from __future__ import annotations

import random

from cognate_train.tasks import FAMILIES
from cognate_train.tokenizer import BYTE_TOKENS, CHARACTERS, SPECIAL_TOKENS, build_tokenizer
from transformers import AutoTokenizer

PRINTABLE = "".join(chr(c) for c in range(32, 127)) + "\n"


def _family_texts(n: int = 50) -> list[str]:
    texts = []
    for name, fam in FAMILIES.items():
        rng = random.Random(name)
        for _ in range(n):
            prompt, answer = fam.generate(rng)
            texts += [prompt, answer, prompt + answer]
    return texts


def test_special_tokens_have_the_agreed_ids():
    tok = build_tokenizer()
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 0
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<bos>", "<eos>", "<unk>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) + 256 == 356


def test_one_token_per_character_and_lossless_round_trip():
    tok = build_tokenizer()
    for text in [PRINTABLE, "  two  spaces ", "a\nb"] + _family_texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # independent reference: the id of a character is its position in the vocabulary list
        assert ids == [len(SPECIAL_TOKENS) + CHARACTERS.index(c) for c in text]
        assert tok.decode(ids) == text


def test_other_characters_fall_back_to_their_utf8_bytes():
    tok = build_tokenizer()
    text = "a\u00e9b\t\u4e2d\U0001f600"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # independent reference: each character outside the vocabulary is its UTF-8 bytes, byte b
    # having id 100 + b
    ref: list[int] = []
    for c in text:
        if c in CHARACTERS:
            ref.append(len(SPECIAL_TOKENS) + CHARACTERS.index(c))
        else:
            ref.extend(100 + b for b in c.encode("utf-8"))
    assert ids == ref and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids[1:3]) == [BYTE_TOKENS[0xC3], BYTE_TOKENS[0xA9]]
    assert tok.decode(ids) == text


def test_post_processor_adds_bos_and_a_pair_ends_with_eos():
    tok = build_tokenizer()
    plain = tok("ab:", add_special_tokens=False)["input_ids"]
    assert tok("ab:")["input_ids"] == [tok.bos_token_id, *plain]
    answer = tok("ba", add_special_tokens=False)["input_ids"]
    # a (prompt, answer) pair is a training row as cognate_train.data.encode builds it
    assert tok("ab:", "ba")["input_ids"] == [tok.bos_token_id, *plain, *answer, tok.eos_token_id]


def test_batches_pad_on_the_left():
    tok = build_tokenizer()
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0] == [tok.pad_token_id] * 2 + tok("a")["input_ids"]
    assert batch["attention_mask"][0] == [0, 0, 1, 1]


def test_special_token_strings_are_single_tokens():
    tok = build_tokenizer()
    assert tok("7<eos>", add_special_tokens=False)["input_ids"][1:] == [tok.eos_token_id]


def test_build_is_deterministic():
    assert (
        build_tokenizer().backend_tokenizer.to_str() == build_tokenizer().backend_tokenizer.to_str()
    )


def test_save_and_load_with_autotokenizer_from_a_local_folder(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(loaded, attr) == getattr(tok, attr)
    assert len(loaded) == len(tok)
    texts = _family_texts(10) + [PRINTABLE]
    a = tok(texts, add_special_tokens=False)["input_ids"]
    b = loaded(texts, add_special_tokens=False)["input_ids"]
    assert a == b
    assert [loaded.decode(ids) for ids in b] == texts
    assert loaded.padding_side == "left"
    assert loaded("x\u00e9")["input_ids"] == tok("x\u00e9")["input_ids"]
