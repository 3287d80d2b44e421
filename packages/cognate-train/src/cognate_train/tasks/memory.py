"""Recall of a fact stated earlier in the context: the memory family.

The prompt lists `key=value` facts (distinct single-letter keys, one-digit values) and then asks for
one key: 'k=7 a=3 m=9 ?a=' -> '3'. `recall` has 2-4 facts; `recall_long` has 6-10, so the asked fact
sits among more distractors and further from the question: the long-term-memory stress test.
"""

from __future__ import annotations

import random
import string


def _recall(rng: random.Random, min_facts: int, max_facts: int) -> tuple[str, str]:
    keys = rng.sample(string.ascii_lowercase, rng.randint(min_facts, max_facts))
    values = [rng.randint(0, 9) for _ in keys]
    asked = rng.randrange(len(keys))
    facts = " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return f"{facts} ?{keys[asked]}=", str(values[asked])


def recall(rng: random.Random) -> tuple[str, str]:
    """2-4 facts, then a question about one of them."""
    return _recall(rng, 2, 4)


def recall_long(rng: random.Random) -> tuple[str, str]:
    """6-10 facts (more distractors, longer context), then a question about one of them."""
    return _recall(rng, 6, 10)
