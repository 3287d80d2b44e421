"""Modular-arithmetic equations for the grokking experiment (Power et al. 2022; Grokfast).

Every equation `x op y = r (mod p)` is one row of five tokens `[x, OP, y, EQ, r]`: numbers are their
own ids 0..p-1, then `OP = p` and `EQ = p + 1` (so the vocabulary has p + 2 ids; the Grokfast
reference script uses the same two extra ids with the roles swapped, which changes nothing). The
full table is split at random into train/val by `train_fraction`; the model sees the first four
tokens and is scored on the fifth.

Ranges follow the Grokfast reference (`ironjr/grokfast`, main.py): x in [0, p) and, for `*` and
`/`, y in [1, p) (y = 0 has no inverse for `/`, and the reference drops it for `*` too), so
x*y mod 97 has 97 * 96 = 9312 equations; `+` and `-` use y in [0, p) (p * p equations).
Division is x * y^(p-2) mod p (Fermat's little theorem), which needs p prime.
"""

from __future__ import annotations

import torch

from .data import Example
from .validation import is_prime

__all__ = [
    "OPS",
    "eq_token_id",
    "modular_dataset",
    "modular_examples",
    "modular_table",
    "op_token_id",
    "vocab_size",
]

OPS: tuple[str, ...] = ("+", "-", "*", "/")
_Y_FROM_ONE = frozenset({"*", "/"})


def op_token_id(p: int) -> int:
    """Id of the operator token in `modular_dataset` rows (column 1)."""
    return p


def eq_token_id(p: int) -> int:
    """Id of the '=' token in `modular_dataset` rows (column 3)."""
    return p + 1


def vocab_size(p: int) -> int:
    """Number of ids a model needs for `modular_dataset` rows: p numbers + op + '='."""
    return p + 2


def _check(p: int, op: str, train_fraction: float | None = None, seed: int | None = None) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or not is_prime(p):
        raise ValueError(f"p must be a prime number, got {p!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    if train_fraction is not None and not (
        isinstance(train_fraction, (int, float))
        and not isinstance(train_fraction, bool)
        and 0.0 < train_fraction < 1.0
    ):
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int, got {seed!r}")


def modular_table(p: int = 97, op: str = "*") -> torch.Tensor:
    """Every equation of `op` mod p as an (N, 5) LongTensor `[x, OP, y, EQ, r]`, x-major order."""
    _check(p, op)
    x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1 if op in _Y_FROM_ONE else 0, p)).T
    if op == "+":
        r = (x + y) % p
    elif op == "-":
        r = (x - y) % p  # torch's % follows the divisor's sign, so r is in [0, p)
    elif op == "*":
        r = (x * y) % p
    else:
        inv = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])  # y^-1 = y^(p-2) mod p
        r = (x * inv[y]) % p
    return torch.stack(
        [x, torch.full_like(x, op_token_id(p)), y, torch.full_like(x, eq_token_id(p)), r], dim=1
    )


def _split_indices(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n_train = int(train_fraction * n)
    if not 1 <= n_train <= n - 1:
        raise ValueError(
            f"train_fraction={train_fraction} leaves an empty split of the {n} equations"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train], perm[n_train:]


def modular_dataset(
    p: int = 97, op: str = "*", train_fraction: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) LongTensors of shape (N_train, 5) and (N_val, 5): a random split of the table.

    N_train = floor(train_fraction * N); the split is a permutation seeded by `seed`, so it is
    deterministic and the two parts are disjoint and together cover every equation once.
    """
    _check(p, op, train_fraction, seed)
    table = modular_table(p, op)
    train_idx, val_idx = _split_indices(table.shape[0], train_fraction, seed)
    return table[train_idx], table[val_idx]


def modular_examples(
    p: int = 97, op: str = "*", train_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """The same split as `modular_dataset`, as text `Example`s ("23*45=" -> "65", family "grok").

    For training a character-level LM on the grok task and scoring it with `exact_match`.
    """
    train, val = modular_dataset(p, op, train_fraction, seed)

    def to_examples(rows: torch.Tensor) -> list[Example]:
        return [Example("grok", f"{x}{op}{y}=", str(r)) for x, _, y, _, r in rows.tolist()]

    return to_examples(train), to_examples(val)
