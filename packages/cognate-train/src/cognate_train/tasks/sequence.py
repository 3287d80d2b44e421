"""Symbol-manipulation families: copy, reverse, sort, count, parity.

They need no arithmetic, only attention to the prompt, so they make the foundation stage (copy,
reverse, count, parity) and the first step up (sort needs a global comparison).
"""

from __future__ import annotations

import random
import string

LETTERS = string.ascii_lowercase


def _letters(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def copy_task(rng: random.Random) -> tuple[str, str]:
    """'copy qwer:' -> 'qwer' (3-8 letters)."""
    s = _letters(rng, 3, 8)
    return f"copy {s}:", s


def reverse_task(rng: random.Random) -> tuple[str, str]:
    """'rev qwer:' -> 'rewq' (3-8 letters)."""
    s = _letters(rng, 3, 8)
    return f"rev {s}:", s[::-1]


def sort_task(rng: random.Random) -> tuple[str, str]:
    """'sort 5183:' -> '1358': digits (or letters, half the time) in ascending order, 3-9 symbols."""
    alphabet = string.digits if rng.random() < 0.5 else LETTERS[:12]
    s = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 9)))
    return f"sort {s}:", "".join(sorted(s))


def count_task(rng: random.Random) -> tuple[str, str]:
    """'count b in abbcab:' -> '3': occurrences of one letter in 4-14 letters over a 4-letter alphabet."""
    alphabet = rng.sample(LETTERS, 4)
    s = "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 14)))
    target = rng.choice(alphabet)
    return f"count {target} in {s}:", str(s.count(target))


def parity_task(rng: random.Random) -> tuple[str, str]:
    """'parity 10110:' -> '1': number of ones mod 2, for 4-14 bits."""
    bits = "".join(rng.choice("01") for _ in range(rng.randint(4, 14)))
    return f"parity {bits}:", str(bits.count("1") % 2)
