"""Registry of the built-in task families, one module per group.

Stages run foundation -> reasoning -> advanced: each family names the first stage that trains
on it, and a stage trains on its own families plus all earlier ones.
"""

from __future__ import annotations

from . import arithmetic, hops, language, memory, sequence
from .base import TaskFamily

STAGES: tuple[str, ...] = ("foundation", "reasoning", "advanced")

_F = TaskFamily
FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        # foundation: read the prompt back, simple facts about it, one-step small sums
        _F("copy", "foundation", sequence.copy_task, "copy 3-8 letters"),
        _F("reverse", "foundation", sequence.reverse_task, "reverse 3-8 letters"),
        _F("arith_add", "foundation", arithmetic.add_small, "add two 1-2 digit numbers"),
        _F("compare", "foundation", arithmetic.compare, "max of 2-4 numbers"),
        _F("parity", "foundation", sequence.parity_task, "parity of 4-14 bits"),
        _F("count", "foundation", sequence.count_task, "count one letter"),
        # reasoning: global comparisons, borrow/sign, products, remainders, recall
        _F("sort", "reasoning", sequence.sort_task, "sort 3-9 digits or letters"),
        _F("arith_sub", "reasoning", arithmetic.subtract, "subtract 1-3 digit numbers"),
        _F("arith_mul", "reasoning", arithmetic.multiply, "1-3 digits times 1 digit"),
        _F("mod_arith", "reasoning", arithmetic.modular, "(a+b)%m or (a*b)%m"),
        _F("recall", "reasoning", memory.recall, "recall 1 of 2-4 key=value facts"),
        # advanced: long carries, multi-step, text, long-context recall, pointer chasing
        _F("arith_add_long", "advanced", arithmetic.add_long, "add two 3-5 digit numbers"),
        _F("arith_chain", "advanced", arithmetic.chain, "3-4 terms of + and -"),
        _F("word_problem", "advanced", language.word_problem, "one-step word problem"),
        _F("recall_long", "advanced", memory.recall_long, "recall 1 of 6-10 facts"),
        _F("hops", "advanced", hops.hops, "follow 1-4 links of a 5-letter map"),
    )
}

__all__ = ["FAMILIES", "STAGES", "TaskFamily"]
