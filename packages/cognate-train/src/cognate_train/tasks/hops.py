"""Pointer chasing: follow k links of a letter map, the family that needs k sequential lookups.

The prompt states a map over 4 distinct letters as 4 two-letter facts, `xy` = "x points to y"
(every letter of the map is the source of exactly one fact, and points to one of the other three:
no self-links), in random order and separated by spaces, then asks where k = 1..4 hops from
a letter lead:

    'ls sg gl ql?g2=' -> 's'        g -> l (fact 'gl'), then l -> s (fact 'ls')

Why this shape (the recursion benchmark of issue 10 uses it):
- The answer is one token, and getting it needs k lookups composed in order: the letter to
  look up at hop i is the answer of hop i - 1. There is no parallel shortcut such as "the end of
  the chain" (every letter is a source, so no letter stands out as a sink); a model with a fixed
  number of attention steps per answer token can only follow as many links as it has steps.
- Compact enough for the answer position's window: facts are 2 letters plus a separator, so
  `<bos>` + the prompt is at most `WINDOW` = 16 tokens, the sliding window of cognate-tiny:
  the position that predicts the answer (the final '=') sees every fact in one attention step.
- The space marks which letter of a pair is the source (the one after a space, or first),
  which a position learns from its left neighbour alone.

`hop_count(prompt)` reads k back from a prompt (the benchmark reports CE and exact match per k).
"""

from __future__ import annotations

import random

ALPHABET = "abcdefgh"  # the map's letters are 4 of these 8
N_LETTERS = 4
MAX_HOPS = 4
WINDOW = 16  # <bos> + the longest prompt fits the 16-token window of cognate-tiny


def hops(rng: random.Random) -> tuple[str, str]:
    """A 4-letter map as facts 'xy' (x -> y), then '?<start><k>=' -> the letter k links on."""
    letters = rng.sample(ALPHABET, N_LETTERS)  # random order = fact order
    link = {s: rng.choice([t for t in letters if t != s]) for s in letters}
    start, k = rng.choice(letters), rng.randint(1, MAX_HOPS)
    node = start
    for _ in range(k):
        node = link[node]
    facts = " ".join(s + link[s] for s in letters)
    return f"{facts}?{start}{k}=", node


def hop_count(prompt: str) -> int:
    """k, the number of links a `hops` prompt asks to follow ('...?a3=' -> 3)."""
    if len(prompt) < 4 or prompt[-4] != "?" or prompt[-1] != "=" or not prompt[-2].isdigit():
        raise ValueError(f"not a hops prompt (expected it to end in '?<letter><k>='): {prompt!r}")
    return int(prompt[-2])
