"""The field's metrics for the six datasets, for any causal LM that returns logits.

- gsm8k, svamp: greedy generation from `<bos> prompt`, then exact match of the final number:
  the number after the last `####` if the generation has one (gsm8k's answer format, and the
  svamp template's), else the last number in it (lm-eval's "flexible extract"); numbers compare
  by value after dropping thousands commas ("1,000" == "1000", "18.0" == "18").
- arc_easy, arc_challenge, hellaswag: lm-evaluation-harness's multiple choice. For each choice
  c_i the continuation `" " + c_i` is scored by its summed log-likelihood given the context,
  ll_i = sum_t log p(cont_t | <bos> context cont_<t), with lm-eval's token split (encode
  context+continuation as a whole; the continuation is what follows the context's own
  encoding; trailing context spaces move to the continuation) and its left truncation to the
  model's length. acc = [argmax_i ll_i == gold]; acc_norm = [argmax_i ll_i / len(c_i) == gold],
  len in characters of the choice text without the delimiter, exactly lm-eval's
  `completion_len`; ties go to the first choice (numpy's argmax). Never free generation.
- mbpp: `loss`, the mean cross-entropy per answer token of the reference code given the prompt;
  `pass@1` only with execution enabled: each greedy program runs with the row's setup code and
  asserts in its own subprocess, with a wall-time, CPU-time, memory and file-size limit. The
  subprocess is a resource limit, not a security sandbox: enable execution only for code you
  are willing to run.

Scoring (choices, loss) batches pad on the right: in a causal model a position never sees
later ones, so padding after a row's last real token cannot change that row's logits (the tests
check batched results against one-row computations). Generation batches equal-length prompts
without padding and decodes with the model's KV cache (`generation`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX
from ..evaluation import EvalMode, logits_of
from .execution import run_program
from .generation import greedy_generate
from .packing import TokenizedSplit
from .templates import TEMPLATES, Record

__all__ = [
    "answer_loss",
    "answer_loss_sums",
    "choice_loglikelihoods",
    "choice_metrics",
    "choice_requests",
    "code_pass_at_1",
    "evaluate_records",
    "extract_final_number",
    "greedy_generate",
    "number_exact_match",
    "numbers_equal",
    "run_program",
    "split_answer_loss",
    "split_examples",
]


def right_pad(rows: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[torch.Tensor, ...]:
    """(ids, mask), each (B, longest row): the rows padded on the right with `pad`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, else its `<eos>` id."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
DEFAULT_NEW_TOKENS = {"gsm8k": 256, "svamp": 48, "mbpp": 256}


def extract_final_number(text: str) -> str | None:
    """The number after the last `####` if any, else the last number in `text` (commas dropped)."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])
        if found:
            return found[0].replace(",", "")
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def numbers_equal(predicted: str | None, target: str) -> bool:
    """Same value: "18" == "18.0"; None (no number generated) never matches."""
    if predicted is None:
        return False
    try:
        a, b = float(predicted.replace(",", "")), float(target.replace(",", ""))
    except ValueError:
        return False
    return math.isfinite(a) and a == b


def number_exact_match(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    device: Any = "cpu",
    max_len: int | None = None,
) -> dict[str, Any]:
    """{"exact_match": fraction of records whose generated final number equals the target}."""
    outs = greedy_generate(
        model, tokenizer, [r.prompt for r in records], max_new_tokens, batch_size, device, max_len
    )
    hits = [
        numbers_equal(extract_final_number(o), r.target) for o, r in zip(outs, records, strict=True)
    ]
    return {"exact_match": sum(hits) / len(records), "n": len(records)}


def choice_requests(
    tokenizer: Any, record: Record, delimiter: str = " "
) -> list[tuple[list[int], list[int]]]:
    """(context ids with `<bos>`, continuation ids) for each choice, split as lm-eval splits."""
    out = []
    for choice in record.choices:
        context, continuation = record.prompt, delimiter + choice
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"{record.dataset}: choice {choice!r} encodes to no tokens")
        out.append(([tokenizer.bos_token_id, *ctx], cont))
    return out


@torch.no_grad()
def choice_loglikelihoods(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    batch_size: int = 32,
    device: Any = "cpu",
    max_len: int = 1024,
) -> list[list[tuple[float, bool]]]:
    """(summed log-likelihood, is_greedy) of every choice of every record.

    Input = (context + continuation)[-(max_len + 1):][:-1], as lm-eval truncates; the
    continuation's log-probabilities are read at the last len(continuation) positions.
    """
    requests = [(ri, req) for ri, r in enumerate(records) for req in choice_requests(tokenizer, r)]
    results: list[tuple[float, bool]] = []
    pad = pad_id(tokenizer)
    with EvalMode(model):
        for start in range(0, len(requests), batch_size):
            chunk = [req for _, req in requests[start : start + batch_size]]
            inputs = [(ctx + cont)[-(max_len + 1) :][:-1] for ctx, cont in chunk]
            ids, mask = right_pad(inputs, pad, device)
            logp = F.log_softmax(logits_of(model(input_ids=ids, attention_mask=mask)).float(), -1)
            for row, ((_, cont), inp) in enumerate(zip(chunk, inputs, strict=True)):
                n = len(cont)
                pos = logp[row, len(inp) - n : len(inp)]  # (n, V) predicts the continuation
                target = torch.tensor(cont, device=pos.device)
                ll = pos.gather(1, target[:, None]).sum().item()
                greedy = bool((pos.argmax(-1) == target).all())
                results.append((ll, greedy))
    out: list[list[tuple[float, bool]]] = [[] for _ in records]
    for (ri, _), res in zip(requests, results, strict=True):
        out[ri].append(res)
    return out


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def choice_metrics(
    records: Sequence[Record], lls: Sequence[Sequence[tuple[float, bool]]]
) -> dict[str, Any]:
    """acc and acc_norm (log-likelihood per character of the choice), lm-eval's definitions."""
    acc = acc_norm = 0
    for record, scores in zip(records, lls, strict=True):
        values = [s for s, _ in scores]
        normed = [v / float(len(c) or 1) for v, c in zip(values, record.choices, strict=True)]
        acc += int(_argmax(values) == record.gold)
        acc_norm += int(_argmax(normed) == record.gold)
    return {"acc": acc / len(records), "acc_norm": acc_norm / len(records), "n": len(records)}


def answer_loss(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    batch_size: int = 16,
    device: Any = "cpu",
    max_len: int = 1024,
) -> float:
    """Mean cross-entropy per answer token (answer and `<eos>`) given `<bos> prompt`, pooled.

    A row longer than `max_len` loses prompt tokens from the left (the answer is kept whole as
    long as it fits; otherwise its end is cut).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompts = tokenizer([r.prompt for r in records], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r.answer for r in records], add_special_tokens=False)["input_ids"]
    examples = [
        ([bos, *p, *a, eos], [False] * (1 + len(p)) + [True] * (len(a) + 1))
        for p, a in zip(prompts, answers, strict=True)
    ]
    total, count = answer_loss_sums(model, examples, pad_id(tokenizer), batch_size, device, max_len)
    return total / count


def split_answer_loss(
    model: Any,
    split: TokenizedSplit,
    pad_id: int,
    batch_size: int = 16,
    device: Any = "cpu",
    max_len: int = 1024,
) -> float:
    """`answer_loss` of a tokenised split (the trainer's held-back validation examples)."""
    examples = split_examples(split)
    total, count = answer_loss_sums(model, examples, pad_id, batch_size, device, max_len)
    return total / count


def split_examples(split: TokenizedSplit) -> list[tuple[list[int], list[bool]]]:
    """(token ids, answer mask) of each example of a tokenised split."""
    bounds = split.offsets.tolist()
    return [
        (split.ids[a:b].tolist(), split.answer[a:b].tolist())
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


@torch.no_grad()
def answer_loss_sums(
    model: Any,
    examples: Sequence[tuple[list[int], list[bool]]],
    pad: int,
    batch_size: int,
    device: Any,
    max_len: int,
) -> list[float]:
    """[summed cross-entropy, answer tokens] of (ids, answer mask) examples ([0, 0] for none):
    the sums of disjoint shards (data-parallel ranks) add up to the whole set's."""
    rows, labels = [], []
    for ids, mask in examples:
        lab = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        if len(ids) > max_len:
            cut = min(len(ids) - max_len, mask.index(True) if True in mask else len(ids))
            ids, lab = ids[cut:][:max_len], lab[cut:][:max_len]
        rows.append(ids)
        labels.append(lab)
    total, count = 0.0, 0
    with EvalMode(model):
        for start in range(0, len(rows), batch_size):
            ids, mask = right_pad(rows[start : start + batch_size], pad, device)
            lab, _ = right_pad(labels[start : start + batch_size], IGNORE_INDEX, device)
            logits = logits_of(model(input_ids=ids, attention_mask=mask)).float()
            total += F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                lab[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((lab[:, 1:] != IGNORE_INDEX).sum())
    return [total, count]


def code_pass_at_1(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    device: Any = "cpu",
    max_len: int | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> dict[str, Any]:
    """pass@1 with greedy decoding: the fraction of generated programs passing all their tests."""
    outs = greedy_generate(
        model, tokenizer, [r.prompt for r in records], max_new_tokens, batch_size, device, max_len
    )
    passed = 0
    for code, r in zip(outs, records, strict=True):
        program = "\n".join([r.setup, code, *r.tests, ""])
        passed += int(run_program(program, timeout_s, memory_mb)[0])
    return {"pass@1": passed / len(records), "n": len(records)}


def evaluate_records(
    name: str,
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    execute_code: bool = False,
    batch_size: int = 16,
    device: Any = "cpu",
    max_len: int = 1024,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """The dataset's metrics: number tasks exact_match, choice tasks acc/acc_norm, mbpp pass@1
    (only with `execute_code`); every dataset also gets `loss` (answer tokens given prompt)."""
    if not records:
        raise ValueError(f"{name}: no records to evaluate")
    kind = TEMPLATES[name].kind
    new = max_new_tokens or DEFAULT_NEW_TOKENS.get(name, 256)
    out: dict[str, Any] = {
        "loss": answer_loss(model, tokenizer, records, batch_size, device, max_len)
    }
    if kind == "number":
        out.update(number_exact_match(model, tokenizer, records, new, batch_size, device, max_len))
    elif kind == "choice":
        lls = choice_loglikelihoods(model, tokenizer, records, batch_size, device, max_len)
        out.update(choice_metrics(records, lls))
    elif execute_code:
        out.update(code_pass_at_1(model, tokenizer, records, new, batch_size, device, max_len))
    out["n"] = len(records)
    return out
