"""One documented template per dataset: a hub row -> prompt, answer and what its metric needs.

Training sees `<bos> prompt answer <eos>`; evaluation gives the model `<bos> prompt`. The
multiple-choice prompts and choices are lm-evaluation-harness's (its arc_easy, arc_challenge and
hellaswag tasks), so acc/acc_norm are comparable with its numbers; a choice is scored as the
continuation `" " + choice` (lm-eval's target delimiter).

| dataset | prompt | answer (training target) | metric |
|---|---|---|---|
| gsm8k | `Question: {question}\\nAnswer:` | `" " + answer` (worked solution ending `#### N`) | exact match of the final number |
| svamp | `Question: {Body} {Question}\\nAnswer:` | `" {Equation}\\n#### {Answer}"` | exact match of the final number |
| mbpp | `Task: {text}\\nTests:\\n{test_list, one a line}\\nCode:\\n` | `code + "\\n"` | loss; pass@1 when executed |
| arc_easy, arc_challenge | `Question: {question}\\nAnswer:` | `" " + choices.text[gold]` | acc, acc_norm over `choices.text` |
| hellaswag | `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())` | `" " + ending[gold]` | acc, acc_norm over `preprocess(endings)` |

(gold: the position of `answerKey` in `choices.label` for ARC, `int(label)` for hellaswag;
`preprocess` is lm-eval's hellaswag clean-up: strip, " [title]" -> ". ", drop "[...]", collapse
double spaces. svamp's `Answer` float is written without a trailing ".0". mbpp's code has its
Windows line ends turned into "\\n".)

A row that does not fit its template (a missing field value of the wrong type, an answer key
that is not one of the labels, a gsm8k answer without `#### N`) raises `RowError`; `build_records`
names dataset, file and row (1-based, in file order) and either stops or, with `skip_bad_rows`,
skips and counts it. A column missing from the whole split is a schema error, never skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .sources import DataError

__all__ = [
    "TEMPLATES",
    "TEMPLATE_VERSION",
    "Record",
    "RowError",
    "Template",
    "build_records",
    "check_columns",
    "format_number",
    "hellaswag_preprocess",
]

# bump when a template's text changes: the preprocessing cache key includes it
TEMPLATE_VERSION = 1
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


class RowError(ValueError):
    """One row does not fit its dataset's template (the caller adds dataset, file and row)."""


@dataclass(frozen=True)
class Record:
    """One templated example: what training and every metric need."""

    dataset: str
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()  # multiple choice: continuations without the " " delimiter
    gold: int = -1  # index of the right choice
    target: str = ""  # gsm8k/svamp: the reference final number
    tests: tuple[str, ...] = ()  # mbpp: assert statements
    setup: str = ""  # mbpp: test_setup_code


@dataclass(frozen=True)
class Template:
    """How one dataset's hub rows become `Record`s; `kind` picks the metric family."""

    name: str
    kind: str  # "number" | "choice" | "code"
    columns: tuple[str, ...]
    build: Callable[[Mapping[str, Any]], Record] = field(repr=False)


def _text(row: Mapping[str, Any], key: str, allow_empty: bool = False) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise RowError(f"{key} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(f"{key} is empty")
    return value


def _texts(row: Mapping[str, Any], key: str, minimum: int = 1) -> list[str]:
    value = row.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RowError(f"{key} must be a list of strings")
    if len(value) < minimum:
        raise RowError(f"{key} has {len(value)} items, need at least {minimum}")
    return list(value)


def format_number(value: float) -> str:
    """A number as its final-answer text: 5.0 -> "5", 2.5 -> "2.5", 1e6 -> "1000000"."""
    if value == int(value):
        return str(int(value))
    return repr(float(value))


def _gsm8k(row: Mapping[str, Any]) -> Record:
    question, answer = _text(row, "question"), _text(row, "answer")
    found = _FINAL.findall(answer)
    if not found:
        raise RowError("answer has no final '#### N' line")
    target = found[-1].replace(",", "")
    return Record("gsm8k", f"Question: {question}\nAnswer:", f" {answer}", target=target)


def _svamp(row: Mapping[str, Any]) -> Record:
    body, question = _text(row, "Body"), _text(row, "Question")
    equation = _text(row, "Equation")
    value = row.get("Answer")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RowError(f"Answer {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError(f"Answer must be a finite number, got {value!r}")
    number = format_number(float(value))
    prompt = f"Question: {body.strip()} {question.strip()}\nAnswer:"
    return Record("svamp", prompt, f" {equation.strip()}\n#### {number}", target=number)


def _mbpp(row: Mapping[str, Any]) -> Record:
    text, code = _text(row, "text"), _text(row, "code")
    tests = _texts(row, "test_list")
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise RowError("test_setup_code must be a string")
    code = code.replace("\r\n", "\n").strip("\n")
    prompt = f"Task: {text.strip()}\nTests:\n" + "\n".join(tests) + "\nCode:\n"
    return Record("mbpp", prompt, code + "\n", tests=tuple(tests), setup=setup)


def _arc(name: str) -> Callable[[Mapping[str, Any]], Record]:
    def build(row: Mapping[str, Any]) -> Record:
        question = _text(row, "question")
        choices = row.get("choices")
        if not isinstance(choices, Mapping):
            raise RowError("choices must be a struct with text and label lists")
        texts, labels = _texts(choices, "text", 2), _texts(choices, "label", 2)
        if len(texts) != len(labels):
            raise RowError(f"choices has {len(texts)} texts but {len(labels)} labels")
        key = _text(row, "answerKey")
        if key not in labels:
            raise RowError(f"answerKey {key!r} is not one of the labels {labels}")
        gold = labels.index(key)
        return Record(
            name,
            f"Question: {question}\nAnswer:",
            f" {texts[gold]}",
            choices=tuple(texts),
            gold=gold,
        )

    return build


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's hellaswag clean-up of WikiHow artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: Mapping[str, Any]) -> Record:
    label = row.get("activity_label")
    ctx_a, ctx_b = _text(row, "ctx_a", True), _text(row, "ctx_b", True)
    if not isinstance(label, str):
        raise RowError("activity_label must be a string")
    endings = _texts(row, "endings", 2)
    raw = row.get("label")
    try:
        gold = int(raw)  # the hub stores it as a string ("" on the unlabelled test split)
    except (TypeError, ValueError):
        raise RowError(f"label {raw!r} is not an integer (unlabelled test split?)") from None
    if not 0 <= gold < len(endings):
        raise RowError(f"label {gold} is out of range for {len(endings)} endings")
    query = hellaswag_preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize())
    choices = tuple(hellaswag_preprocess(e) for e in endings)
    return Record("hellaswag", query, f" {choices[gold]}", choices=choices, gold=gold)


TEMPLATES: dict[str, Template] = {
    "gsm8k": Template("gsm8k", "number", ("question", "answer"), _gsm8k),
    "svamp": Template("svamp", "number", ("Body", "Question", "Equation", "Answer"), _svamp),
    "mbpp": Template("mbpp", "code", ("text", "code", "test_list"), _mbpp),
    "arc_easy": Template(
        "arc_easy", "choice", ("question", "choices", "answerKey"), _arc("arc_easy")
    ),
    "arc_challenge": Template(
        "arc_challenge", "choice", ("question", "choices", "answerKey"), _arc("arc_challenge")
    ),
    "hellaswag": Template(
        "hellaswag",
        "choice",
        ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
        _hellaswag,
    ),
}


def check_columns(name: str, columns: Iterable[str], where: str) -> None:
    """Raise DataError when the split at `where` lacks a column the template reads."""
    have = set(columns)
    missing = [c for c in TEMPLATES[name].columns if c not in have]
    if missing:
        raise DataError(
            f"{name}: {where}: missing column {missing[0]!r} (has {', '.join(sorted(have))}); "
            f"expected the hub schema with {', '.join(TEMPLATES[name].columns)}"
        )


def build_records(
    name: str,
    rows: Iterable[Mapping[str, Any]],
    where: str,
    skip_bad_rows: bool = False,
) -> tuple[list[Record], list[str]]:
    """Template every row: (records, one message per skipped row).

    Without `skip_bad_rows` the first bad row raises DataError "NAME: FILE: row N: problem";
    with it, bad rows are left out and their messages returned. An empty result is an error
    either way (an empty split, or every row bad).
    """
    build = TEMPLATES[name].build
    records: list[Record] = []
    skipped: list[str] = []
    for n, row in enumerate(rows, start=1):
        try:
            records.append(build(row))
        except RowError as exc:
            message = f"{name}: {where}: row {n}: {exc}"
            if not skip_bad_rows:
                raise DataError(message + " (--skip-bad-rows skips such rows)") from None
            skipped.append(message)
    if not records:
        what = "every row is bad" if skipped else "the split is empty"
        raise DataError(f"{name}: {where}: no usable rows ({what})")
    return records, skipped
