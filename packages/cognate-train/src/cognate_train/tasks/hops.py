"""Pointer chasing: follow k links of a letter map, the family that needs k sequential lookups.

The prompt states a map over 5 distinct letters (drawn from a-h) as 5 two-letter facts, `Xy` =
"x points to y": the source in upper case, the target in lower case. Every letter of the map is
the source of exactly one fact and points to one of the other four (no self-links); the facts
come in random order, without separators. Then `?<START><k>=` asks for the letter k = 1..4 links
on from START, in lower case:

    'GcHcDaAcCd?C2=' -> 'a'        C -> d (fact 'Cd'), then D -> a (fact 'Da')

Why this shape (the recursion benchmark of issue 10 uses it):
- The answer is one token, and getting it needs k lookups composed in order: the letter to
  look up at hop i is the answer of hop i - 1. There is no parallel shortcut such as "the end of
  the chain" (every letter is a source, so no letter stands out as a sink); a model with a fixed
  number of attention steps per answer token can only follow as many links as it has steps.
- Compact enough for the answer position's window: `<bos>` + the prompt is 15 tokens, within
  `WINDOW` = 16, the sliding window of cognate-tiny: the position that predicts the answer (the
  final '=') sees every fact in one attention step.
- The case marks each letter's role, so a fact's target position learns its source from its
  left neighbour alone, and a lookup of x matches only the position after the upper-case X
  (an earlier design with lower-case facts separated by spaces, 'ab cd ...', was not learnt by
  either model at the benchmark's 1800 steps: benchmarks/results/recursion_hops_pure_*).

`hop_count(prompt)` reads k back from a prompt (the benchmark reports CE and exact match per k);
`no_lookup_guess(prompt)` is the answer of a rule that follows no link (the letter that is most
often a target): the exact match a model gets without doing any lookup.
"""

from __future__ import annotations

import random
from collections import Counter

ALPHABET = "abcdefgh"  # the map's letters are 5 of these 8
N_LETTERS = 5
MAX_HOPS = 4
WINDOW = 16  # <bos> + the prompt fits the 16-token window of cognate-tiny


def hops(rng: random.Random) -> tuple[str, str]:
    """A 5-letter map as facts 'Xy' (x -> y), then '?<START><k>=' -> the letter k links on."""
    letters = rng.sample(ALPHABET, N_LETTERS)  # random order = fact order
    link = {s: rng.choice([t for t in letters if t != s]) for s in letters}
    start, k = rng.choice(letters), rng.randint(1, MAX_HOPS)
    node = start
    for _ in range(k):
        node = link[node]
    facts = "".join(s.upper() + link[s] for s in letters)
    return f"{facts}?{start.upper()}{k}=", node


def hop_count(prompt: str) -> int:
    """k, the number of links a `hops` prompt asks to follow ('...?A3=' -> 3)."""
    if len(prompt) < 4 or prompt[-4] != "?" or prompt[-1] != "=" or not prompt[-2].isdigit():
        raise ValueError(f"not a hops prompt (expected it to end in '?<LETTER><k>='): {prompt!r}")
    return int(prompt[-2])


def no_lookup_guess(prompt: str) -> str:
    """The letter that is the target of the most facts (ties: alphabetical), whatever the start
    and k: a baseline that follows no link."""
    hop_count(prompt)  # the same shape check
    targets = Counter(prompt[1:-4:2])
    return min(targets, key=lambda t: (-targets[t], t))
