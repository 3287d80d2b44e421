"""Generated rows in each dataset's exact hub schema, and writers for every on-disk layout.

For tests, demos and smoke runs without the real data: the text is made up here from templates
and random numbers (no dataset text), but columns, types and split names are the hub's, so the
rows go through exactly the loaders, templates and metrics that real copies do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "synthetic_rows", "write_dataset"]

FORMATS = ("jsonl", "json", "parquet", "save_to_disk")
_NAMES = ("Ada", "Bo", "Cy", "Dee", "Eli", "Fay")
_THINGS = ("apples", "pens", "stamps", "shells", "coins", "cards")


def _gsm8k(rng: random.Random, i: int) -> dict[str, Any]:
    who, what = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b, k = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 5)
    total = (a + b) * k
    return {
        "question": f"{who} has {a} {what} and gets {b} more, then makes it {k} times as many. "
        f"How many {what} does {who} have?",
        "answer": f"{who} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {what}.\n"
        f"Then {a + b} * {k} = <<{a + b}*{k}={total}>>{total}.\n#### {total}",
    }


def _svamp(rng: random.Random, i: int) -> dict[str, Any]:
    who, what = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(5, 90), rng.randint(1, 4)
    return {
        "ID": f"gen-{i}",
        "Body": f"{who} had {a} {what}. {who} gave away {b} of them.",
        "Question": f"How many {what} does {who} have left?",
        "Equation": f"( {float(a)} - {float(b)} )",
        "Answer": float(a - b),
        "Type": "Subtraction",
    }


def _mbpp(rng: random.Random, i: int) -> dict[str, Any]:
    k = rng.randint(1, 9)
    xs = [rng.randint(-20, 20) for _ in range(3)]
    return {
        "task_id": 601 + i,
        "text": f"Write a function to add {k} to a number.",
        "code": f"def add_{k}(x):\r\n    return x + {k}",
        "test_list": [f"assert add_{k}({x}) == {x + k}" for x in xs],
        "test_setup_code": "",
        "challenge_test_list": [],
    }


def _arc(rng: random.Random, i: int) -> dict[str, Any]:
    n = rng.choice((3, 4, 4, 5))
    values = rng.sample(range(1, 99), n)
    labels = [str(j + 1) for j in range(n)] if rng.random() < 0.2 else list("ABCDE"[:n])
    gold = values.index(max(values))
    return {
        "id": f"Gen_{i}",
        "question": f"Which of these numbers is the largest (item {i})?",
        "choices": {"text": [f"the number {v}" for v in values], "label": labels},
        "answerKey": labels[gold],
    }


def _hellaswag(rng: random.Random, i: int) -> dict[str, Any]:
    who, what = rng.choice(_NAMES), rng.choice(_THINGS)
    ctx_a = f"{who} sorts a box of {what} on a table."
    ctx_b = f"then {who}"
    endings = [
        f"puts the {what} into {j + 2} neat rows [title] and smiles."
        if j == 0
        else f"throws the {what} {rng.choice(('away', 'upward', 'outside'))} number {j}."
        for j in range(4)
    ]
    order = list(range(4))
    rng.shuffle(order)
    return {
        "ind": i,
        "activity_label": "Sorting things",
        "ctx_a": ctx_a,
        "ctx_b": ctx_b,
        "ctx": f"{ctx_a} {ctx_b}",
        "endings": [endings[j] for j in order],
        "source_id": f"gen~{i}",
        "split": "val",
        "split_type": "indomain",
        "label": str(order.index(0)),
    }


_MAKERS = {
    "gsm8k": _gsm8k,
    "svamp": _svamp,
    "mbpp": _mbpp,
    "arc_easy": _arc,
    "arc_challenge": _arc,
    "hellaswag": _hellaswag,
}


def synthetic_rows(name: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` made-up rows of dataset `name` in its hub schema (deterministic in `seed`)."""
    if name not in _MAKERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(_MAKERS)}")
    rng = random.Random(f"{seed}|{name}")
    return [_MAKERS[name](rng, i) for i in range(n)]


def write_dataset(
    root: str | Path,
    name: str,
    splits: dict[str, Sequence[dict[str, Any]]],
    fmt: str = "jsonl",
) -> Path:
    """Write `splits` as `root/name/` in layout `fmt` (jsonl, json, parquet, save_to_disk)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    if fmt in ("parquet", "save_to_disk"):
        import datasets

        dd = datasets.DatasetDict(
            {s: datasets.Dataset.from_list(list(r)) for s, r in splits.items()}
        )
        if fmt == "save_to_disk":
            dd.save_to_disk(str(folder))
        else:
            for split, ds in dd.items():
                ds.to_parquet(str(folder / f"{split}.parquet"))
        return folder
    for split, rows in splits.items():
        path = folder / f"{split}.{fmt}"
        if fmt == "jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            text = json.dumps(list(rows), ensure_ascii=False)
        path.write_text(text, encoding="utf-8")
    return folder
