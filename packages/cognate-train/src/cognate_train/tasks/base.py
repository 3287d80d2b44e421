"""The task-family record shared by every generator module."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Generator = Callable[[random.Random], tuple[str, str]]


@dataclass(frozen=True)
class TaskFamily:
    """One generated task family.

    `generate(rng) -> (prompt, answer)` is a pure function of the `random.Random` it is given (no
    global state), so a family's examples are fixed by the seed of that rng. `stage` is the first
    curriculum stage that trains on the family; later stages keep it.
    """

    name: str
    stage: str
    generate: Generator
    description: str
