"""Metrics against direct computations: lm-eval multiple choice, final-number exact match,
answer loss, greedy generation, and mbpp execution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_train.realdata.metrics import (
    answer_loss,
    choice_loglikelihoods,
    choice_metrics,
    code_pass_at_1,
    evaluate_records,
    extract_final_number,
    greedy_generate,
    number_exact_match,
    numbers_equal,
    run_program,
)
from cognate_train.realdata.synthetic import synthetic_rows
from cognate_train.realdata.templates import TEMPLATES, Record
from cognate_train.realdata.tokenizer import train_bpe
from cognate_train.tokenizer import build_tokenizer

# one intra-op thread: on a shared 2-core machine more threads only contend (and slow it ~10x)
pytestmark = pytest.mark.usefixtures("single_thread")


def _records(name, n, seed=0):
    return [TEMPLATES[name].build(r) for r in synthetic_rows(name, n, seed)]


@pytest.fixture(scope="module")
def bpe():
    texts = [r.prompt + r.answer for n in TEMPLATES for r in _records(n, 30)]
    return train_bpe(texts, 320)


@pytest.fixture(scope="module")
def tiny(bpe):
    torch.manual_seed(0)
    cfg = CognateConfig.from_preset(
        "cognate-tiny",
        vocab_size=len(bpe),
        max_seq_len=512,
        bos_token_id=bpe.bos_token_id,
        eos_token_id=bpe.eos_token_id,
        pad_token_id=bpe.pad_token_id,
    )
    return CognateForCausalLM(cfg).eval()


def test_extract_final_number():
    assert extract_final_number("so 3 + 4 = 7\n#### 1,207 apples") == "1207"
    assert extract_final_number("first 3 then -4.5 done") == "-4.5"  # no ####: the last number
    assert extract_final_number("#### \n then 12") == "12"
    assert extract_final_number("no digits") is None
    assert numbers_equal("18.0", "18") and numbers_equal("1,000", "1000")
    assert not numbers_equal(None, "1") and not numbers_equal("17", "18")


def _direct_ll(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """log p of the last n_cont tokens of ids given the rest: one unpadded row, float64 sums."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
    logp = logits.log_softmax(-1)[-n_cont:]
    target = torch.tensor(ids[-n_cont:])
    return float(logp[torch.arange(n_cont), target].sum()), bool((logp.argmax(-1) == target).all())


@pytest.mark.parametrize("name", ["arc_easy", "hellaswag"])
def test_choice_scorer_equals_a_direct_computation(tiny, bpe, name):
    records = _records(name, 6, seed=3)
    got = choice_loglikelihoods(tiny, bpe, records, batch_size=5, max_len=512)
    direct = []
    for r in records:
        ctx = bpe(r.prompt, add_special_tokens=False)["input_ids"]
        row = []
        for c in r.choices:
            whole = bpe(r.prompt + " " + c, add_special_tokens=False)["input_ids"]
            assert whole[: len(ctx)] == ctx  # the space starts a new pre-token in byte-level BPE
            row.append(_direct_ll(tiny, [bpe.bos_token_id, *whole], len(whole) - len(ctx)))
        direct.append(row)
    for g_row, d_row in zip(got, direct, strict=True):
        for (g, g_greedy), (d, d_greedy) in zip(g_row, d_row, strict=True):
            assert g == pytest.approx(d, abs=1e-4) and g_greedy == d_greedy
    # acc / acc_norm by lm-eval's formula, with numpy's argmax, on the direct numbers
    acc = np.mean(
        [np.argmax([v for v, _ in d]) == r.gold for d, r in zip(direct, records, strict=True)]
    )
    norm = np.mean(
        [
            np.argmax(np.array([v for v, _ in d]) / np.array([float(len(c)) for c in r.choices]))
            == r.gold
            for d, r in zip(direct, records, strict=True)
        ]
    )
    metrics = choice_metrics(records, got)
    assert metrics["acc"] == pytest.approx(acc) and metrics["acc_norm"] == pytest.approx(norm)
    assert metrics["n"] == 6


class Unigram(torch.nn.Module):
    """Every position predicts the same fixed distribution: ll(text) = sum of per-char logps."""

    def __init__(self, logp: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logp", logp)

    def forward(self, input_ids, attention_mask=None):
        return self.logp.expand(*input_ids.shape, -1).clone()


def test_acc_norm_divides_by_the_choice_character_length():
    tok = build_tokenizer()  # one token per character
    logp = torch.full((len(tok),), -20.0)
    vocab = tok.get_vocab()
    for ch, lp in {" ": -0.1, "a": -3.0, "b": -0.5, "c": -2.0}.items():
        logp[vocab[ch]] = lp
    model = Unigram(logp.log_softmax(-1))
    lp = {ch: float(model.logp[vocab[ch]]) for ch in " abc"}
    records = [
        Record("arc_easy", "Q:", " a", choices=("a", "bbbbbb"), gold=0),  # short wins raw
        Record("arc_easy", "Q:", " bbbbbb", choices=("a", "bbbbbb"), gold=1),  # long wins norm
        Record("arc_easy", "Q: ", " c", choices=("cc", "c"), gold=1),  # trailing context space
    ]
    lls = choice_loglikelihoods(model, tok, records, batch_size=2)
    for r, row in zip(records, lls, strict=True):
        spaces = 1 + len(r.prompt) - len(r.prompt.rstrip())  # lm-eval moves them to the choice
        for c, (ll, _) in zip(r.choices, row, strict=True):
            expected = spaces * lp[" "] + sum(lp[ch] for ch in c)
            assert ll == pytest.approx(expected, abs=1e-5)
    # by hand (lp: " " -0.629, a -3.529, b -1.029, c -2.529):
    # raw sums   a -4.157 > bbbbbb -6.800          |  "  cc" -6.315 < "  c" -3.786
    # per char   a -4.157 < bbbbbb -6.800/6 = -1.133 |  cc -6.315/2 = -3.158 > c -3.786
    m = choice_metrics(records, lls)
    assert m["acc"] == pytest.approx(2 / 3) and m["acc_norm"] == pytest.approx(1 / 3)
    preds = [int(np.argmax([v for v, _ in row])) for row in lls]
    norms = [
        int(np.argmax([v / len(c) for (v, _), c in zip(row, r.choices, strict=True)]))
        for row, r in zip(lls, records, strict=True)
    ]
    assert preds == [0, 0, 1] and norms == [1, 1, 0]


def _greedy_reference(model, tok, prompt, n):
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    start = len(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tok.eos_token_id:
                break
    new = ids[start:]
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=False)


def test_batched_greedy_equals_one_row_at_a_time(tiny, bpe):
    prompts = [r.prompt for r in _records("svamp", 5)] + ["Q", "Question: a b c"]
    got = greedy_generate(tiny, bpe, prompts, max_new_tokens=12, batch_size=4)
    assert got == [_greedy_reference(tiny, bpe, p, 12) for p in prompts]


def test_answer_loss_equals_a_direct_computation(tiny, bpe):
    records = _records("mbpp", 5)
    got = answer_loss(tiny, bpe, records, batch_size=3, max_len=512)
    total, count = 0.0, 0
    for r in records:
        p = bpe(r.prompt, add_special_tokens=False)["input_ids"]
        a = bpe(r.answer, add_special_tokens=False)["input_ids"] + [bpe.eos_token_id]
        with torch.no_grad():
            logits = tiny(input_ids=torch.tensor([[bpe.bos_token_id, *p, *a]])).logits[0].double()
        logp = F.log_softmax(logits, -1)
        for k, t in enumerate(a):
            total -= float(logp[len(p) + k, t])  # position len(p)+k predicts answer token k
            count += 1
    assert got == pytest.approx(total / count, rel=1e-5)


class Scripted(torch.nn.Module):
    """Predicts, after any prefix of one of `sequences`, that sequence's next token (else eos)."""

    def __init__(self, tok, sequences: list[list[int]]) -> None:
        super().__init__()
        self.vocab, self.eos = len(tok), tok.eos_token_id
        self.next = {tuple(s[:t]): s[t] for s in sequences for t in range(1, len(s))}

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                logits[b, t, self.next.get(tuple(row[: t + 1]), self.eos)] = 1.0
        return logits


def _script(tok, records, answers):
    seqs = []
    for r, a in zip(records, answers, strict=True):
        ids = tok(r.prompt, add_special_tokens=False)["input_ids"]
        ans = tok(a, add_special_tokens=False)["input_ids"]
        seqs.append([tok.bos_token_id, *ids, *ans, tok.eos_token_id])
    return Scripted(tok, seqs)


@pytest.mark.parametrize("name", ["gsm8k", "svamp"])
def test_number_exact_match_counts_right_final_numbers(bpe, name):
    records = _records(name, 4)
    answers = [r.answer for r in records]
    answers[1] = answers[1].rsplit("####", 1)[0] + "#### 99999"  # wrong final number
    answers[2] = " the answer is " + records[2].target + ".0"  # no ####: last number, by value
    answers[3] = ""  # nothing generated
    got = number_exact_match(_script(bpe, records, answers), bpe, records, max_new_tokens=200)
    assert got == {"exact_match": 0.5, "n": 4}


def test_run_program_outcomes():
    assert run_program("assert sum([1, 2]) == 3\n") == (True, "passed")
    ok, why = run_program("assert 1 == 2\n")
    assert not ok and "AssertionError" in why
    ok, why = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert not ok and "timed out" in why
    ok, why = run_program("x = bytearray(2_000_000_000)\n", memory_mb=256)
    assert not ok and "MemoryError" in why
    ok, why = run_program("import os\nprint(os.getcwd())\nraise SystemExit(3)\n")
    assert not ok and why == "exit status 3"


def test_mbpp_pass_at_1_runs_each_program_against_its_tests(bpe):
    records = _records("mbpp", 4)
    answers = [r.answer for r in records]
    answers[1] = answers[1].replace("return x +", "return x -")  # wrong
    answers[2] = "def f(:\n"  # syntax error
    model = _script(bpe, records, answers)
    got = code_pass_at_1(model, bpe, records, max_new_tokens=64, timeout_s=5.0)
    assert got == {"pass@1": 0.5, "n": 4}
    # without execution mbpp reports only the loss
    plain = evaluate_records("mbpp", model, bpe, records, max_len=512)
    assert set(plain) == {"loss", "n"} and math.isfinite(plain["loss"])
    run = evaluate_records(
        "mbpp", model, bpe, records, execute_code=True, max_len=512, max_new_tokens=64
    )
    assert run["pass@1"] == 0.5


def test_evaluate_records_picks_the_metric_family(tiny, bpe):
    mc = evaluate_records("arc_challenge", tiny, bpe, _records("arc_challenge", 3), max_len=512)
    assert set(mc) == {"loss", "acc", "acc_norm", "n"}
    num = evaluate_records("svamp", tiny, bpe, _records("svamp", 2), max_len=512, max_new_tokens=4)
    assert set(num) == {"loss", "exact_match", "n"}
