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

`CurriculumDataset` API (a simplification of an iterator interface, on purpose): `next_batch(stage)`
returns the next batch and advances the position of that stage; `batches(stage)` is an infinite
generator over `next_batch` that never reads ahead, so `state_dict()` taken between two batches
resumes exactly there.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .tasks import FAMILIES, STAGES

__all__ = [
    "STAGES",
    "CurriculumDataset",
    "Example",
    "all_families",
    "encode",
    "example_length",
    "families_for_stage",
    "make_split",
    "read_examples",
    "split_by_stage",
    "write_examples",
]

IGNORE_INDEX = -100


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


class CurriculumDataset:
    """Deterministic, resumable stream of encoded training batches for each curriculum stage.

    Each stage has its own position (epoch, batch index). Epoch e of stage s visits the stage's
    examples in the order of a permutation drawn from `Random(f"{seed}|{s}|{e}")`, in batches of
    `batch_size`; the last incomplete batch of an epoch is dropped so every batch has the same size
    (the next epoch's shuffle covers those examples). Because the order is a function of (seed,
    stage, epoch) alone, the state is three integers per stage and resuming is exact.

    `next_batch(stage)` / `batches(stage)` return dicts of tensors only (`encode`'s output).
    """

    def __init__(
        self,
        tokenizer: Any,
        train_examples: dict[str, list[Example]],
        batch_size: int,
        max_len: int,
        seed: int,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not train_examples:
            raise ValueError("train_examples must map at least one stage to examples")
        for stage, examples in train_examples.items():
            _check_stage(stage)
            if len(examples) < batch_size:
                raise ValueError(
                    f"train_examples[{stage!r}] has {len(examples)} examples, fewer than "
                    f"batch_size={batch_size}"
                )
        self.tokenizer = tokenizer
        self.examples = {s: list(ex) for s, ex in train_examples.items()}
        self.batch_size = batch_size
        self.max_len = max_len
        self.seed = seed
        self.stage: str | None = None
        self._pos: dict[str, list[int]] = {s: [0, 0] for s in self.examples}  # [epoch, batch]
        self._order_cache: dict[str, tuple[int, list[int]]] = {}

    def steps_per_epoch(self, stage: str) -> int:
        """Batches in one epoch of `stage` (incomplete last batch dropped)."""
        return len(self._examples_of(stage)) // self.batch_size

    def epoch(self, stage: str) -> int:
        """Completed epochs of `stage` so far."""
        self._examples_of(stage)
        return self._pos[stage][0]

    def _examples_of(self, stage: str) -> list[Example]:
        _check_stage(stage)
        if stage not in self.examples:
            raise ValueError(
                f"stage {stage!r} has no training examples; have {list(self.examples)}"
            )
        return self.examples[stage]

    def _order(self, stage: str, epoch: int) -> list[int]:
        cached = self._order_cache.get(stage)
        if cached is None or cached[0] != epoch:
            order = list(range(len(self.examples[stage])))
            random.Random(f"{self.seed}|{stage}|{epoch}").shuffle(order)
            cached = (epoch, order)
            self._order_cache[stage] = cached
        return cached[1]

    def next_batch(self, stage: str) -> dict[str, torch.Tensor]:
        """The next batch of `stage`; advances that stage's position (and rolls to a new epoch)."""
        examples = self._examples_of(stage)
        epoch, index = self._pos[stage]
        if index >= self.steps_per_epoch(stage):
            epoch, index = epoch + 1, 0
        order = self._order(stage, epoch)
        chosen = [
            examples[i] for i in order[index * self.batch_size : (index + 1) * self.batch_size]
        ]
        batch = encode(self.tokenizer, chosen, self.max_len)
        self._pos[stage] = [epoch, index + 1]
        self.stage = stage
        return batch

    def batches(self, stage: str) -> Iterator[dict[str, torch.Tensor]]:
        """Infinite stream of `next_batch(stage)` (no read-ahead, so state_dict stays exact)."""
        self._examples_of(stage)
        while True:
            yield self.next_batch(stage)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: current stage with its epoch/position, and every stage's."""
        current = self.stage
        epoch, position = self._pos[current] if current is not None else (0, 0)
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "stage": current,
            "epoch": epoch,
            "position": position,
            "positions": {s: {"epoch": e, "position": p} for s, (e, p) in self._pos.items()},
            "sizes": {s: len(ex) for s, ex in self.examples.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by `state_dict`; the data set-up must be the same one."""
        try:
            seed, batch_size, sizes = state["seed"], state["batch_size"], state["sizes"]
            positions = state["positions"]
            stage = state["stage"]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"state is not a CurriculumDataset state_dict (missing {exc})"
            ) from exc
        mine = {s: len(ex) for s, ex in self.examples.items()}
        if seed != self.seed or batch_size != self.batch_size or dict(sizes) != mine:
            raise ValueError(
                "state was saved for different data (seed, batch_size or example counts differ: "
                f"saved seed={seed} batch_size={batch_size} sizes={dict(sizes)}, "
                f"now seed={self.seed} batch_size={self.batch_size} sizes={mine})"
            )
        new_pos: dict[str, list[int]] = {}
        for s in self.examples:
            entry = positions.get(s, {"epoch": 0, "position": 0})
            e, p = int(entry["epoch"]), int(entry["position"])
            if e < 0 or not 0 <= p <= self.steps_per_epoch(s):
                raise ValueError(f"state positions[{s!r}] out of range: {entry}")
            new_pos[s] = [e, p]
        if stage is not None:
            self._examples_of(stage)
        self._pos = new_pos
        self.stage = stage
