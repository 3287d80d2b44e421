"""The built-in curriculum: generated examples, splits, encoding and a resumable batch stream.

Everything is generated from seeds (no network): each family in `cognate_train.tasks` is a pure
function of a `random.Random`. A split draws examples per family from `Random(f"{seed}|{family}")`,
deduplicates them by prompt, gives the first `n_val` distinct prompts to validation and the next
`n_train` to training, so validation never shares a prompt with training and does not change when
`n_train` does.

Stages are cumulative (foundation -> reasoning -> advanced): `families_for_stage("reasoning")` is
the foundation families plus the reasoning ones.

`encode` builds `<bos> prompt answer <eos>` rows with labels only on `answer <eos>`; the model
shifts labels internally (HF convention: logits at t predict labels at t+1), so the loss is the
cross-entropy of the answer given the prompt:  L = -1/|A| * sum_{t in A} log p(x_t | x_<t).

The curriculum's stages over a run and its resumable batch stream are in `cognate_train.curriculum`
(re-exported here).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from cognate_model.heads import IGNORE_INDEX  # label of positions the loss ignores

from .tasks import FAMILIES, STAGES

__all__ = [
    "IGNORE_INDEX",
    "STAGES",
    "CurriculumDataset",
    "Example",
    "all_families",
    "encode",
    "example_length",
    "families_for_stage",
    "make_split",
    "read_examples",
    "active_stages",
    "split_by_stage",
    "stage_at",
    "write_examples",
]


@dataclass(frozen=True)
class Example:
    """One task instance: the model sees `prompt` and must produce exactly `answer`."""

    family: str
    prompt: str
    answer: str


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")


def families_for_stage(stage: str) -> list[str]:
    """Families trained in `stage`: its own plus every earlier stage's (cumulative curriculum)."""
    _check_stage(stage)
    allowed = STAGES[: STAGES.index(stage) + 1]
    return [name for name, fam in FAMILIES.items() if fam.stage in allowed]


def all_families() -> list[str]:
    """Every built-in family, in curriculum order."""
    return list(FAMILIES)


def example_length(prompt: str, answer: str) -> int:
    """Tokens of `<bos> prompt answer <eos>` under the character-level tokenizer."""
    return len(prompt) + len(answer) + 2


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def make_split(
    families: Sequence[str],
    n_train: int,
    n_val: int,
    seed: int,
    max_len: int | None = None,
) -> tuple[list[Example], list[Example]]:
    """Generate `n_train` training and `n_val` validation examples PER FAMILY.

    Deterministic in `seed`; validation prompts never occur in training (deduplicated by prompt).
    With `max_len`, examples longer than `max_len` tokens (`example_length`) are skipped, so every
    returned example fits an encoder of that length. Raises ValueError for an unknown family, bad
    counts, or a family that cannot produce enough distinct prompts (the error names the family).
    """
    families = list(families)
    if not families:
        raise ValueError("families must name at least one family")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families: unknown {unknown}; known: {all_families()}")
    if len(set(families)) != len(families):
        raise ValueError(f"families has duplicates: {families}")
    n_train, n_val = _check_count("n_train", n_train), _check_count("n_val", n_val)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if max_len is not None and (
        isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 3
    ):
        raise ValueError(f"max_len must be an int >= 3 or None, got {max_len!r}")

    train: list[Example] = []
    val: list[Example] = []
    for name in families:
        generate = FAMILIES[name].generate
        rng = random.Random(f"{seed}|{name}")
        need = n_train + n_val
        seen: set[str] = set()
        drawn: list[Example] = []
        # give up when the family looks exhausted: too many draws in all, or in a row rejected
        budget, stall_limit, stall, draws = 50 * need + 1000, 2000 + 2 * need, 0, 0
        while len(drawn) < need and draws < budget and stall < stall_limit:
            draws += 1
            prompt, answer = generate(rng)
            if prompt in seen or (max_len is not None and example_length(prompt, answer) > max_len):
                stall += 1
                continue
            stall = 0
            seen.add(prompt)
            drawn.append(Example(name, prompt, answer))
        if len(drawn) < need:
            raise ValueError(
                f"family {name!r}: only {len(drawn)} distinct prompts (max_len={max_len}) after "
                f"{draws} draws, need n_train + n_val = {need}; lower n_train/n_val or raise max_len"
            )
        val.extend(drawn[:n_val])
        train.extend(drawn[n_val:])
    return train, val


def split_by_stage(train: Sequence[Example]) -> dict[str, list[Example]]:
    """Per-stage training sets from one pool: stage s gets the examples of `families_for_stage(s)`."""
    allowed = {s: set(families_for_stage(s)) for s in STAGES}
    return {s: [ex for ex in train if ex.family in allowed[s]] for s in STAGES}


def write_examples(path: str | Path, examples: Sequence[Example]) -> None:
    """Write examples as JSON Lines, one `{"family", "prompt", "answer"}` object a line."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")


def read_examples(path: str | Path) -> list[Example]:
    """Read examples written by `write_examples` (or by hand), validating every row.

    A bad row raises ValueError naming the file and line: not JSON, not an object, a missing
    or non-string field, unknown fields, or an empty prompt. Blank lines are skipped.
    """
    fields = {"family", "prompt", "answer"}
    examples = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read examples ({exc})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or set(row) != fields:
            raise ValueError(
                f"{path}:{n}: expected an object with exactly the keys {sorted(fields)}"
            )
        bad = [k for k in sorted(fields) if not isinstance(row[k], str)]
        if bad:
            raise ValueError(f"{path}:{n}: {bad[0]} must be a string")
        if not row["prompt"]:
            raise ValueError(f"{path}:{n}: prompt must not be empty")
        examples.append(Example(row["family"], row["prompt"], row["answer"]))
    return examples


def _special_id(tokenizer: Any, attr: str) -> int:
    value = getattr(tokenizer, attr, None)
    if value is None:
        raise ValueError(f"tokenizer has no {attr}; use cognate_train.tokenizer.build_tokenizer()")
    return int(value)


def encode(tokenizer: Any, examples: Sequence[Example], max_len: int) -> dict[str, torch.Tensor]:
    """Encode training rows `<bos> prompt answer <eos>`, right-padded to the longest row.

    Returns `input_ids` (B, T) long, `attention_mask` (B, T) long (1 on real tokens) and `labels`
    (B, T) long: the token id on `answer <eos>` positions and -100 (ignored by cross-entropy) on
    `<bos> prompt` and on padding. T = longest row <= max_len. A row longer than `max_len` raises
    ValueError rather than being truncated (truncation would cut the answer and corrupt labels).
    """
    if not examples:
        raise ValueError("examples must not be empty")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    bos, eos, pad = (
        _special_id(tokenizer, a) for a in ("bos_token_id", "eos_token_id", "pad_token_id")
    )
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    answers = tokenizer([ex.answer for ex in examples], add_special_tokens=False)["input_ids"]
    rows, label_rows = [], []
    for ex, p, a in zip(examples, prompts, answers, strict=True):
        ids = [bos, *p, *a, eos]
        if len(ids) > max_len:
            raise ValueError(
                f"max_len={max_len} is shorter than example {ex!r} ({len(ids)} tokens)"
            )
        rows.append(ids)
        label_rows.append([IGNORE_INDEX] * (1 + len(p)) + [*a, eos])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


from .curriculum import CurriculumDataset, active_stages, stage_at  # noqa: E402
