"""The character tokenizer: fixed ids, lossless round trip, offline save/load."""

from __future__ import annotations

import random

from cognate_train.tasks import FAMILIES
from cognate_train.tokenizer import CHARACTERS, SPECIAL_TOKENS, build_tokenizer
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
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 100


def test_one_token_per_character_and_lossless_round_trip():
    tok = build_tokenizer()
    for text in [PRINTABLE, "  two  spaces ", "a\nb"] + _family_texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # independent reference: the id of a character is its position in the vocabulary list
        assert ids == [len(SPECIAL_TOKENS) + CHARACTERS.index(c) for c in text]
        assert tok.decode(ids) == text


def test_unknown_characters_map_to_unk():
    tok = build_tokenizer()
    assert tok("a\u00e9b", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id


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
