"""Modular-arithmetic data for the grokking experiment, checked against plain Python integers."""

from __future__ import annotations

import pytest
import torch
from cognate_train.grok_data import (
    eq_token_id,
    modular_dataset,
    modular_examples,
    modular_table,
    op_token_id,
    vocab_size,
)


def _rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in t.tolist()}


def test_reference_size_for_multiplication_mod_97():
    # Grokfast reference: x in [0, 97), y in [1, 97) -> 97 * 96 = 9312 equations, half for training
    train, val = modular_dataset(97, "*", 0.5, seed=0)
    assert train.shape == (4656, 5) and val.shape == (4656, 5)
    assert train.dtype == torch.long
    assert len(_rows(train) | _rows(val)) == 9312
    assert not _rows(train) & _rows(val)
    ys = torch.cat([train, val])[:, 2]
    assert int(ys.min()) == 1 and int(ys.max()) == 96


@pytest.mark.parametrize(
    ("op", "y_from", "check"),
    [
        ("*", 1, lambda x, y, r, p: r == (x * y) % p),
        ("+", 0, lambda x, y, r, p: r == (x + y) % p),
        ("-", 0, lambda x, y, r, p: (r + y) % p == x and 0 <= r < p),
        ("/", 1, lambda x, y, r, p: (r * y) % p == x),
    ],
)
def test_every_label_is_right(op, y_from, check):
    p = 13
    table = modular_table(p, op)
    pairs = {(x, y) for x, _, y, _, _ in table.tolist()}
    assert pairs == {(x, y) for x in range(p) for y in range(y_from, p)}
    for x, o, y, e, r in table.tolist():
        assert o == op_token_id(p) == p and e == eq_token_id(p) == p + 1
        assert check(x, y, r, p)
    assert int(table.max()) < vocab_size(p)


def test_split_is_a_deterministic_partition():
    a_train, a_val = modular_dataset(31, "+", 0.3, seed=5)
    b_train, b_val = modular_dataset(31, "+", 0.3, seed=5)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert a_train.shape[0] == int(0.3 * 31 * 31)
    assert _rows(a_train) | _rows(a_val) == _rows(modular_table(31, "+"))
    c_train, _ = modular_dataset(31, "+", 0.3, seed=6)
    assert not torch.equal(a_train, c_train)


def test_text_examples_match_the_token_split():
    train, val = modular_dataset(11, "-", 0.5, seed=1)
    ex_train, ex_val = modular_examples(11, "-", 0.5, seed=1)
    assert len(ex_train) == train.shape[0] and len(ex_val) == val.shape[0]
    for (x, _, y, _, r), ex in zip(train.tolist(), ex_train, strict=True):
        assert (ex.family, ex.prompt, ex.answer) == ("grok", f"{x}-{y}=", str(r))
        assert int(ex.answer) == (x - y) % 11


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"p": 1}, "p"),
        ({"p": 91}, "p"),  # 7 * 13: not prime
        ({"p": 97.0}, "p"),
        ({"op": "^"}, "op"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"train_fraction": -0.5}, "train_fraction"),
        ({"p": 2, "train_fraction": 0.4}, "train_fraction"),  # 2 equations: floor(0.8) = 0 train
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        modular_dataset(**kwargs)
