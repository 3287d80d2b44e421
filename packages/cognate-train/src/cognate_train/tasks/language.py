"""Tiny word problems: one arithmetic step wrapped in a sentence.

'Tom has 3 apples and buys 4. How many?' -> '7'. The model has to find the numbers in the text and
pick the operation from the verb (buys/finds -> add, eats/gives away -> subtract, boxes of -> multiply).
"""

from __future__ import annotations

import random

NAMES = ("Tom", "Ann", "Bob", "Sue", "Max", "Eva", "Jim", "Liz")
THINGS = ("apples", "pens", "cards", "eggs", "coins", "books")


def word_problem(rng: random.Random) -> tuple[str, str]:
    """One of three templates (add, subtract, multiply) with small numbers; answer is the count."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        verb = rng.choice(("buys", "finds"))
        return f"{name} has {a} {thing} and {verb} {b}. How many?", str(a + b)
    if kind == 1:
        a = rng.randint(2, 30)
        b = rng.randint(1, a)
        verb = rng.choice(("loses", "gives away"))
        return f"{name} has {a} {thing} and {verb} {b}. How many?", str(a - b)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{name} has {a} boxes of {b} {thing}. How many?", str(a * b)
