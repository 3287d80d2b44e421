"""Arithmetic families with difficulty set by the number of digits.

Answers are written in plain decimal (a leading '-' for negatives), the exact form `str(int)` gives,
so exact match needs every digit and the sign right.
"""

from __future__ import annotations

import random


def _num(rng: random.Random, min_digits: int, max_digits: int) -> int:
    """A non-negative integer whose digit count is uniform in [min_digits, max_digits]."""
    digits = rng.randint(min_digits, max_digits)
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10**digits - 1)


def add_small(rng: random.Random) -> tuple[str, str]:
    """'37+5=' -> '42': 1-2 digit operands."""
    a, b = _num(rng, 1, 2), _num(rng, 1, 2)
    return f"{a}+{b}=", str(a + b)


def add_long(rng: random.Random) -> tuple[str, str]:
    """'4821+937=' -> '5758': 3-5 digit operands (long carry chains)."""
    a, b = _num(rng, 3, 5), _num(rng, 3, 5)
    return f"{a}+{b}=", str(a + b)


def subtract(rng: random.Random) -> tuple[str, str]:
    """'52-87=' -> '-35': 1-3 digit operands, result may be negative."""
    a, b = _num(rng, 1, 3), _num(rng, 1, 3)
    return f"{a}-{b}=", str(a - b)


def multiply(rng: random.Random) -> tuple[str, str]:
    """'347*8=' -> '2776': a 1-3 digit number times a 1-digit number."""
    a, b = _num(rng, 1, 3), _num(rng, 1, 1)
    return f"{a}*{b}=", str(a * b)


def modular(rng: random.Random) -> tuple[str, str]:
    """'(23+41)%7=' -> '1' or '(8*9)%5=' -> '2': sum or product of 1-2 digit numbers mod m in [2, 13]."""
    a, b, m = _num(rng, 1, 2), _num(rng, 1, 2), rng.randint(2, 13)
    if rng.random() < 0.5:
        return f"({a}+{b})%{m}=", str((a + b) % m)
    return f"({a}*{b})%{m}=", str((a * b) % m)


def compare(rng: random.Random) -> tuple[str, str]:
    """'max 37 82 5:' -> '82': the largest of 2-4 numbers of 1-3 digits."""
    nums = [_num(rng, 1, 3) for _ in range(rng.randint(2, 4))]
    return f"max {' '.join(map(str, nums))}:", str(max(nums))


def chain(rng: random.Random) -> tuple[str, str]:
    """'12+7-3+40=' -> '56': 3-4 one- or two-digit terms joined by + and -, left to right."""
    terms = [_num(rng, 1, 2) for _ in range(rng.randint(3, 4))]
    total, text = terms[0], str(terms[0])
    for t in terms[1:]:
        if rng.random() < 0.5:
            total, text = total + t, f"{text}+{t}"
        else:
            total, text = total - t, f"{text}-{t}"
    return f"{text}=", str(total)
