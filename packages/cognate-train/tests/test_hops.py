"""The `hops` family (pointer chasing): the map's shape, the window bound, k, determinism.

Its answers are checked against an independent walk of the parsed facts in test_data.py
(`CHECKERS["hops"]`); here: the properties the recursion benchmark relies on.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from cognate_train.data import encode, example_length, make_split
from cognate_train.tasks import FAMILIES
from cognate_train.tasks.hops import (
    ALPHABET,
    MAX_HOPS,
    N_LETTERS,
    WINDOW,
    hop_count,
    hops,
    no_lookup_guess,
)
from cognate_train.tokenizer import build_tokenizer

PROMPT = re.compile(r"((?:[A-Z][a-z])+)\?([A-Z])(\d)=")


def _facts(prompt: str) -> list[str]:
    m = PROMPT.fullmatch(prompt)
    assert m, prompt
    return [m[1][i : i + 2] for i in range(0, len(m[1]), 2)]


def _draw(n: int = 2000, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [hops(rng) for _ in range(n)]


def test_the_docstring_example():
    from cognate_train.tasks import hops as module

    assert "'GcHcDaAcCd?C2=' -> 'a'" in module.__doc__
    link = {f[0].lower(): f[1] for f in _facts("GcHcDaAcCd?C2=")}
    assert link[link["c"]] == "a"


def test_registered_in_the_advanced_stage():
    fam = FAMILIES["hops"]
    assert (fam.stage, fam.generate) == ("advanced", hops)


def test_the_map_is_a_function_of_distinct_letters_without_self_links():
    for prompt, answer in _draw():
        facts = _facts(prompt)
        sources = [f[0].lower() for f in facts]
        assert len(facts) == N_LETTERS and len(set(sources)) == N_LETTERS
        assert set(sources) <= set(ALPHABET)
        # every target is itself a source (no sink: the chain never ends), never the same letter
        assert all(f[1] in sources and f[1] != f[0].lower() for f in facts)
        assert prompt[-3].lower() in sources and answer in sources and len(answer) == 1


def test_prompt_and_bos_fit_the_window_of_cognate_tiny():
    from cognate_model import CognateConfig

    assert CognateConfig.from_preset("cognate-tiny", "reasoning").window_size == WINDOW
    tok = build_tokenizer()
    for prompt, answer in _draw(500):
        # the answer is predicted at the last prompt token: <bos> + prompt = its window at most
        assert 1 + len(tok(prompt, add_special_tokens=False)["input_ids"]) <= WINDOW
        assert example_length(prompt, answer) == len(prompt) + 3  # <bos> prompt answer <eos>


def test_every_hop_count_is_drawn_and_read_back():
    counts = Counter(hop_count(p) for p, _ in _draw())
    assert set(counts) == set(range(1, MAX_HOPS + 1))
    assert min(counts.values()) > 2000 / MAX_HOPS * 0.8  # roughly uniform
    assert hop_count("AbBa?A3=") == 3


@pytest.mark.parametrize("prompt", ["copy abc:", "AbBa?A=", "", "AbBa?Ax="])
def test_hop_count_rejects_other_prompts(prompt):
    with pytest.raises(ValueError, match="not a hops prompt"):
        hop_count(prompt)


def test_deterministic_per_seed_and_distinct_across_seeds():
    assert _draw(50, seed=3) == _draw(50, seed=3)
    assert _draw(50, seed=3) != _draw(50, seed=4)
    a, _ = make_split(["hops"], n_train=300, n_val=50, seed=5)
    b, _ = make_split(["hops"], n_train=300, n_val=50, seed=5)
    assert a == b and len({ex.prompt for ex in a}) == 300


def test_encodes_with_the_answer_as_the_only_label():
    tok = build_tokenizer()
    train, _ = make_split(["hops"], n_train=8, n_val=0, seed=0)
    batch = encode(tok, train, 64)
    for row, ex in zip(batch["labels"], train, strict=True):
        labelled = [int(t) for t in row if t != -100]
        assert tok.decode(labelled) == ex.answer + tok.eos_token


def test_the_no_lookup_guess_is_the_most_frequent_target():
    # an independent count over the parsed facts; ties go to the alphabetically first letter
    for prompt, _ in _draw(300, seed=2):
        targets = [f[1] for f in _facts(prompt)]
        top = max(targets.count(t) for t in targets)
        assert no_lookup_guess(prompt) == sorted(t for t in targets if targets.count(t) == top)[0]
    assert no_lookup_guess("GcHcDaAcCd?C2=") == "c"
    with pytest.raises(ValueError, match="not a hops prompt"):
        no_lookup_guess("copy abc:")
