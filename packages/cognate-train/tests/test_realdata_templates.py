"""Each template against hand-written expected text, and each dataset's malformed rows."""

from __future__ import annotations

import pytest
from cognate_train.realdata.sources import DataError
from cognate_train.realdata.templates import (
    TEMPLATES,
    RowError,
    build_records,
    check_columns,
    format_number,
    hellaswag_preprocess,
)


def test_gsm8k():
    row = {
        "question": "Ann has 3 hats and buys 1,200 more?",
        "answer": "3 + 1200 = 1203\n#### 1,203",
    }
    r = TEMPLATES["gsm8k"].build(row)
    assert r.prompt == "Question: Ann has 3 hats and buys 1,200 more?\nAnswer:"
    assert r.answer == " 3 + 1200 = 1203\n#### 1,203"
    assert r.target == "1203"


def test_svamp_number_formatting():
    row = {
        "Body": " Ann had 7 cats. ",
        "Question": "How many now? ",
        "Equation": "( 7.0 - 2.5 )",
        "Answer": 4.5,
        "Type": "Subtraction",
        "ID": "x",
    }
    r = TEMPLATES["svamp"].build(row)
    assert r.prompt == "Question: Ann had 7 cats. How many now?\nAnswer:"
    assert r.answer == " ( 7.0 - 2.5 )\n#### 4.5" and r.target == "4.5"
    assert TEMPLATES["svamp"].build({**row, "Answer": 12.0}).target == "12"
    assert [format_number(v) for v in (5.0, 2.5, -3.0, 1e6)] == ["5", "2.5", "-3", "1000000"]


def test_mbpp():
    row = {
        "task_id": 1,
        "text": "Write a function f.",
        "code": "def f():\r\n    return 1\r\n",
        "test_list": ["assert f() == 1", "assert f() != 2"],
        "test_setup_code": "import math",
        "challenge_test_list": [],
    }
    r = TEMPLATES["mbpp"].build(row)
    assert (
        r.prompt == "Task: Write a function f.\nTests:\nassert f() == 1\nassert f() != 2\nCode:\n"
    )
    assert r.answer == "def f():\n    return 1\n"
    assert r.tests == ("assert f() == 1", "assert f() != 2") and r.setup == "import math"


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge"])
def test_arc(name):
    row = {
        "id": "q1",
        "question": "Which is wet?",
        "choices": {"text": ["sand", "water", "dust"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    }
    r = TEMPLATES[name].build(row)
    assert r.prompt == "Question: Which is wet?\nAnswer:"
    assert r.choices == ("sand", "water", "dust") and r.gold == 1 and r.answer == " water"
    assert r.dataset == name


def test_hellaswag_is_lm_evals_preprocessing():
    row = {
        "ind": 1,
        "activity_label": "Cooking",
        "ctx_a": "A man cuts onions.",
        "ctx_b": "he [header] then",
        "ctx": "unused",
        "source_id": "s",
        "split": "val",
        "split_type": "indomain",
        "label": "1",
        "endings": [" fries them [title] fast.", "sings  loudly."],
    }
    r = TEMPLATES["hellaswag"].build(row)
    assert r.prompt == "Cooking: A man cuts onions. He then"
    assert r.choices == ("fries them. fast.", "sings loudly.") and r.gold == 1
    assert r.answer == " sings loudly."
    assert hellaswag_preprocess("  a [title] b [x]c  ") == "a. b c"


BAD_ROWS = [
    ("gsm8k", {"question": "q?", "answer": "no number line"}, "####"),
    ("gsm8k", {"question": 3, "answer": "#### 3"}, "question must be a string"),
    ("svamp", {"Body": "b", "Question": "q", "Equation": "e", "Answer": "lots"}, "not a number"),
    ("svamp", {"Body": "b", "Question": "q", "Equation": "e", "Answer": float("nan")}, "finite"),
    ("mbpp", {"text": "t", "code": "c", "test_list": "assert 1"}, "list of strings"),
    ("mbpp", {"text": "t", "code": "c", "test_list": []}, "at least 1"),
    (
        "arc_easy",
        {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
        "not one of the labels",
    ),
    (
        "arc_challenge",
        {"question": "q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"},
        "at least 2",
    ),
    ("arc_challenge", {"question": "q", "choices": ["a", "b"], "answerKey": "A"}, "struct"),
    (
        "hellaswag",
        {"activity_label": "x", "ctx_a": "a", "ctx_b": "b", "endings": ["1", "2"], "label": ""},
        "unlabelled",
    ),
    (
        "hellaswag",
        {"activity_label": "x", "ctx_a": "a", "ctx_b": "b", "endings": ["1", "2"], "label": "2"},
        "out of range",
    ),
]


@pytest.mark.parametrize(("name", "row", "problem"), BAD_ROWS)
def test_bad_rows(name, row, problem):
    with pytest.raises(RowError, match=problem):
        TEMPLATES[name].build(row)
    good = {"gsm8k": {"question": "q", "answer": "#### 1"}}.get(name)
    rows = [row] if good is None else [good, row]
    with pytest.raises(DataError) as err:
        build_records(name, rows, "f.jsonl")
    msg = str(err.value)
    assert msg.startswith(f"{name}: f.jsonl: row {len(rows)}: ") and problem in msg
    assert "\n" not in msg


def test_check_columns_names_the_missing_one():
    with pytest.raises(DataError) as err:
        check_columns("hellaswag", ["ctx_a", "ctx_b", "endings", "label"], "v.parquet")
    assert str(err.value).startswith("hellaswag: v.parquet: missing column 'activity_label'")
