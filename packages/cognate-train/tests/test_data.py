"""The generated curriculum: stages, splits, answers, encoding and the resumable batch stream."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from cognate_train.data import (
    STAGES,
    CurriculumDataset,
    Example,
    all_families,
    encode,
    example_length,
    families_for_stage,
    make_split,
    read_examples,
    split_by_stage,
    write_examples,
)
from cognate_train.tokenizer import build_tokenizer

# ---------------------------------------------------------------- independent answer checkers


def _arith(prompt: str) -> str:
    expr = prompt.removesuffix("=")
    assert re.fullmatch(r"[0-9+\-*%()]+", expr), prompt
    return str(eval(expr))  # the character set above admits only integer arithmetic


def _recall(prompt: str) -> str:
    facts, question = prompt.rsplit(" ?", 1)
    table = dict(f.split("=") for f in facts.split())
    assert len(table) == len(facts.split())  # keys are distinct, so the question is unambiguous
    return table[question.removesuffix("=")]


def _hops(prompt: str) -> str:
    """Parse 'Xy' facts (x -> y) then '?<START><k>=' and walk the links one at a time."""
    m = re.fullmatch(r"((?:[A-Z][a-z])+)\?([A-Z])(\d)=", prompt)
    assert m, prompt
    pairs = [m[1][i : i + 2] for i in range(0, len(m[1]), 2)]
    link = {p[0].lower(): p[1] for p in pairs}
    assert len(link) == len(pairs)  # one fact per source: the walk is unambiguous
    node = m[2].lower()
    for _ in range(int(m[3])):
        node = link[node]
    return node


def _word(prompt: str) -> str:
    m = re.fullmatch(r"\w+ has (\d+) boxes of (\d+) \w+\. How many\?", prompt)
    if m:
        return str(int(m[1]) * int(m[2]))
    m = re.fullmatch(
        r"\w+ has (\d+) \w+ and (buys|finds|loses|gives away) (\d+)\. How many\?", prompt
    )
    assert m, prompt
    sign = 1 if m[2] in ("buys", "finds") else -1
    return str(int(m[1]) + sign * int(m[3]))


def _between(prompt: str, head: str) -> str:
    assert prompt.startswith(head) and prompt.endswith(":"), prompt
    return prompt[len(head) : -1]


CHECKERS = {
    "copy": lambda p: _between(p, "copy "),
    "reverse": lambda p: "".join(reversed(_between(p, "rev "))),
    "arith_add": _arith,
    "compare": lambda p: str(max(int(v) for v in _between(p, "max ").split())),
    "parity": lambda p: "1" if _between(p, "parity ").count("1") % 2 else "0",
    "count": lambda p: str(sum(c == p.split()[1] for c in _between(p, "count ").split()[2])),
    "sort": lambda p: "".join(sorted(_between(p, "sort "))),
    "arith_sub": _arith,
    "arith_mul": _arith,
    "mod_arith": _arith,
    "recall": _recall,
    "arith_add_long": _arith,
    "arith_chain": _arith,
    "word_problem": _word,
    "recall_long": _recall,
    "hops": _hops,
}


def test_every_family_has_an_independent_checker():
    assert set(CHECKERS) == set(all_families())


@pytest.mark.parametrize("family", all_families())
def test_answers_are_correct(family):
    train, val = make_split([family], n_train=400, n_val=100, seed=3)
    for ex in train + val:
        assert ex.family == family
        assert CHECKERS[family](ex.prompt) == ex.answer, ex


def test_sequences_are_short():
    # most sequences under ~48 tokens so a small CPU model learns in minutes
    train, _ = make_split(all_families(), n_train=200, n_val=0, seed=0)
    lengths = sorted(example_length(ex.prompt, ex.answer) for ex in train)
    assert lengths[int(0.9 * len(lengths))] <= 48
    assert max(lengths) <= 64


# ---------------------------------------------------------------- stages


def test_stages_are_cumulative_and_grow():
    assert STAGES == ("foundation", "reasoning", "advanced")
    sets = [families_for_stage(s) for s in STAGES]
    for smaller, larger in zip(sets, sets[1:], strict=False):
        assert set(smaller) < set(larger)
    assert sets[-1] == all_families()
    assert {"copy", "arith_add", "recall", "mod_arith", "word_problem", "sort"} <= set(
        all_families()
    )


def test_unknown_stage_raises():
    with pytest.raises(ValueError, match="stage"):
        families_for_stage("expert")


# ---------------------------------------------------------------- splits


def test_split_is_deterministic_disjoint_and_sized():
    fams = families_for_stage("reasoning")
    train, val = make_split(fams, n_train=300, n_val=50, seed=11)
    train2, val2 = make_split(fams, n_train=300, n_val=50, seed=11)
    assert train == train2 and val == val2
    for fam in fams:
        tr = [ex.prompt for ex in train if ex.family == fam]
        va = [ex.prompt for ex in val if ex.family == fam]
        assert len(tr) == 300 and len(va) == 50
        assert len(set(tr)) == 300 and len(set(va)) == 50
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in val}
    other, _ = make_split(fams, n_train=300, n_val=50, seed=12)
    assert other != train


def test_validation_does_not_depend_on_train_size():
    _, val_small = make_split(["arith_add", "recall"], n_train=10, n_val=40, seed=2)
    train_big, val_big = make_split(["arith_add", "recall"], n_train=900, n_val=40, seed=2)
    assert val_small == val_big
    assert not {ex.prompt for ex in train_big} & {ex.prompt for ex in val_big}


def test_a_family_gets_the_same_examples_whatever_else_is_in_the_split():
    # adding a family to a stage must not reshuffle the data of the others
    alone_train, alone_val = make_split(["recall"], n_train=30, n_val=10, seed=9)
    mixed_train, mixed_val = make_split(["sort", "recall", "copy"], n_train=30, n_val=10, seed=9)
    assert [ex for ex in mixed_train if ex.family == "recall"] == alone_train
    assert [ex for ex in mixed_val if ex.family == "recall"] == alone_val


def test_max_len_bounds_every_example():
    train, val = make_split(
        ["recall_long", "word_problem"], n_train=200, n_val=20, seed=0, max_len=40
    )
    assert all(example_length(ex.prompt, ex.answer) <= 40 for ex in train + val)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"families": ["nope"]}, "families"),
        ({"families": []}, "families"),
        ({"families": ["copy", "copy"]}, "families"),
        ({"n_train": -1}, "n_train"),
        ({"n_val": 1.5}, "n_val"),
        ({"seed": None}, "seed"),
        ({"max_len": 2}, "max_len"),
        ({"families": ["copy"], "max_len": 8}, "copy"),  # shortest copy example has 14 tokens
        # 'parity bbbb:' + answer fits 15 tokens only with 4 bits: 16 distinct prompts < 30 asked
        ({"families": ["parity"], "n_train": 25, "max_len": 15}, "parity"),
    ],
)
def test_make_split_rejects_bad_input(kwargs, name):
    args = {"families": ["copy"], "n_train": 5, "n_val": 5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=name):
        make_split(**args)


# ---------------------------------------------------------------- encoding


def test_encode_masks_prompt_and_padding():
    tok = build_tokenizer()
    examples = [
        Example("x", "12+35=", "47"),
        Example("x", "copy abcdefg:", "abcdefg"),
        Example("x", "a", ""),
    ]
    batch = encode(tok, examples, max_len=32)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.dtype == mask.dtype == labels.dtype == torch.long
    assert ids.shape == mask.shape == labels.shape == (3, 2 + len("copy abcdefg:abcdefg"))
    for row, ex in enumerate(examples):
        n_prompt, n = 1 + len(ex.prompt), 2 + len(ex.prompt) + len(ex.answer)
        assert ids[row, 0] == tok.bos_token_id and ids[row, n - 1] == tok.eos_token_id
        assert tok.decode(ids[row, 1:n_prompt].tolist()) == ex.prompt
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert (ids[row, n:] == tok.pad_token_id).all()
        assert (labels[row, :n_prompt] == -100).all() and (labels[row, n:] == -100).all()
        # loss only on the answer and the <eos> that ends it
        assert labels[row, n_prompt:n].tolist() == ids[row, n_prompt:n].tolist()
        assert tok.decode(labels[row, n_prompt : n - 1].tolist()) == ex.answer


def test_encode_rejects_rows_longer_than_max_len():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match="max_len"):
        encode(tok, [Example("x", "12+35=", "47")], max_len=9)  # needs 10
    assert encode(tok, [Example("x", "12+35=", "47")], max_len=10)["input_ids"].shape == (1, 10)
    with pytest.raises(ValueError, match="examples"):
        encode(tok, [], max_len=10)


# ---------------------------------------------------------------- curriculum stream


def _dataset(batch_size: int = 8, seed: int = 0) -> CurriculumDataset:
    train, _ = make_split(all_families(), n_train=6, n_val=2, seed=1, max_len=48)
    return CurriculumDataset(build_tokenizer(), split_by_stage(train), batch_size, 48, seed)


def _take(ds: CurriculumDataset, plan: list[tuple[str, int]]) -> list[dict[str, torch.Tensor]]:
    return [ds.next_batch(stage) for stage, n in plan for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_split_by_stage_follows_families_for_stage():
    train, _ = make_split(all_families(), n_train=3, n_val=0, seed=0)
    by_stage = split_by_stage(train)
    for stage in STAGES:
        assert {ex.family for ex in by_stage[stage]} == set(families_for_stage(stage))


def test_resume_mid_stream_gives_the_same_batches():
    plan_before = [
        ("foundation", 6),
        ("reasoning", 2),
    ]  # 36 foundation rows / 8 = 4 steps: crosses an epoch
    plan_after = [("reasoning", 9), ("foundation", 3), ("advanced", 4)]
    full = _dataset()
    _take(full, plan_before)
    expected = _take(full, plan_after)

    first = _dataset()
    _take(first, plan_before)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = _dataset()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    assert _same(_take(resumed, plan_after), expected)


def test_iterator_matches_next_batch_and_state_is_exact():
    a, b = _dataset(), _dataset()
    it = a.batches("advanced")
    got = [next(it) for _ in range(5)]
    assert _same(got, _take(b, [("advanced", 5)]))
    assert a.state_dict() == b.state_dict()
    assert a.state_dict()["stage"] == "advanced" and a.state_dict()["position"] == 5


def test_each_epoch_is_a_permutation_and_epochs_differ():
    ds = _dataset(batch_size=6)
    n = len(ds.examples["foundation"])  # 36 = 6 full batches
    steps = ds.steps_per_epoch("foundation")
    assert steps == n // 6
    tok = build_tokenizer()

    def rows(batches):
        return [
            tok.decode(r.tolist(), skip_special_tokens=True)
            for b in batches
            for r in b["input_ids"]
        ]

    epoch0 = rows(_take(ds, [("foundation", steps)]))
    epoch1 = rows(_take(ds, [("foundation", steps)]))
    expected = sorted(ex.prompt + ex.answer for ex in ds.examples["foundation"])
    assert sorted(epoch0) == expected and sorted(epoch1) == expected
    assert epoch0 != epoch1
    assert ds.epoch("foundation") == 1


def test_seed_changes_the_order():
    a = _take(_dataset(seed=0), [("foundation", 2)])
    b = _take(_dataset(seed=1), [("foundation", 2)])
    assert not _same(a, b)


def test_curriculum_dataset_rejects_bad_input():
    tok = build_tokenizer()
    train, _ = make_split(["copy"], n_train=4, n_val=0, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        CurriculumDataset(tok, {"foundation": train}, 0, 48, 0)
    with pytest.raises(ValueError, match="batch_size"):
        CurriculumDataset(tok, {"foundation": train}, 5, 48, 0)  # fewer examples than a batch
    with pytest.raises(ValueError, match="stage"):
        CurriculumDataset(tok, {"expert": train}, 2, 48, 0)
    ds = CurriculumDataset(tok, {"foundation": train}, 2, 48, 0)
    with pytest.raises(ValueError, match="reasoning"):
        ds.next_batch("reasoning")
    other = CurriculumDataset(tok, {"foundation": train}, 2, 48, seed=1)
    with pytest.raises(ValueError, match="state"):
        ds.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="state"):
        ds.load_state_dict({"seed": 0})


def test_batches_are_reproducible_given_rng_free_generators():
    # generators are pure functions of the rng they get: same seed, same stream, whatever else ran
    from cognate_train.tasks import FAMILIES

    for fam in FAMILIES.values():
        r1, r2 = random.Random(7), random.Random(7)
        random.seed(123)  # global state must not matter
        first = [fam.generate(r1) for _ in range(20)]
        random.seed(999)
        assert first == [fam.generate(r2) for _ in range(20)]


# ---------------------------------------------------------------- JSON Lines files


def test_examples_round_trip_through_jsonl(tmp_path):
    train, val = make_split(["word_problem", "recall"], n_train=20, n_val=5, seed=0)
    write_examples(tmp_path / "train.jsonl", train + val)
    assert read_examples(tmp_path / "train.jsonl") == train + val


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: not valid JSON"),
        ('["copy", "a", "b"]', ":2: expected an object"),
        ('{"family": "copy", "prompt": "a"}', ":2: expected an object"),
        ('{"family": "copy", "prompt": "a", "answer": 3}', ":2: answer must be a string"),
        ('{"family": "copy", "prompt": "", "answer": "x"}', ":2: prompt must not be empty"),
    ],
)
def test_read_examples_names_the_bad_row(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"family": "copy", "prompt": "copy ab:", "answer": "ab"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_examples(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_examples(tmp_path / "missing.jsonl")
