"""Exact-match accuracy by greedy generation, and answer-only validation loss.

Works with any causal LM called as `model(input_ids=..., attention_mask=...)` that returns logits
(an object with `.logits`, a tuple whose first item is the logits, or the logits tensor itself),
so a Hugging Face model, the Cognate model or a test double all evaluate the same way.

Batching without padding, on purpose: prompts are grouped by token length, so no batch holds
padding and every row is decoded exactly as it would be alone. Left padding would shift the
positions of a model that takes positions from the index rather than the mask, and that would
make the measured accuracy depend on the batch composition.

Greedy decoding uses the model's KV cache when its forward names `past_key_values` and
`use_cache` and returns a cache (HF models; Cognate's `CognateCache`, which carries the window's
keys/values, the recursion's feature keys/values and the memory state, so ACT halting and the
memory decode exactly as in a full forward): one prefill of each batch's prompts, then one
forward per new token over that token alone. A model without one (a test double, a wrapper whose
forward takes only **kwargs, a model that returns no cache) re-runs the whole sequence at every
step instead: the same tokens at O(T^2) work. That full re-run is also `_greedy(...,
use_cache=False)`, the reference the tests compare the cached path with. One difference: a
forward holds at most the model's own limit of positions (Cognate's `max_seq_len`), and the
cached path only needs the prompt to fit, so answers may run past it where the model allows.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, Example, encode
from .progress import eval_bar

__all__ = [
    "exact_match",
    "exact_match_counts",
    "generate_answers",
    "logits_of",
    "val_loss",
    "val_loss_sums",
]


def logits_of(output: Any) -> torch.Tensor:
    """The (B, T, V) logits from a model output (`.logits`, a tuple's first item, or a tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model output has no logits tensor: {type(output).__name__}")
    return logits


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class EvalMode:
    """Put the model in eval mode for the block and restore its previous mode afterwards."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.was_training = bool(getattr(model, "training", False))

    def __enter__(self) -> None:
        if hasattr(self.model, "eval"):
            self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.was_training and hasattr(self.model, "train"):
            self.model.train()


def _takes_cache(model: Any) -> bool:
    """Whether `model`'s forward names `past_key_values` and `use_cache` (HF causal LMs do)."""
    try:
        params = inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        return False
    return "past_key_values" in params and "use_cache" in params


def _decode(model: Any, ids: torch.Tensor, steps: int, eos: int, use_cache: bool) -> torch.Tensor:
    """Greedy tokens (B, n <= steps) after the unpadded prompts `ids` (B, T); stops early once
    every row has produced `eos`.

    With `use_cache` (the caller checked `_takes_cache`) and a model that returns a cache
    (`past_key_values`), one prefill of the prompts, then one forward per new token over that
    token alone (its work does not grow with a re-read prefix: O(T^2) overall without the
    cache). The cached calls pass no attention mask (nothing is padded; an all-ones mask would
    make Cognate track padding flags for nothing). Otherwise (or when the model returns no
    cache) every step re-runs the whole sequence with an all-ones mask: the reference the
    cached path is tested against.
    """
    cached = use_cache
    if cached:
        out = model(input_ids=ids, use_cache=True)
        cached = getattr(out, "past_key_values", None) is not None
    else:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    new: list[torch.Tensor] = []
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for step in range(steps):
        nxt = logits_of(out)[:, -1, :].argmax(dim=-1)  # (B,)
        new.append(nxt)
        done |= nxt == eos
        if step == steps - 1 or bool(done.all()):
            break
        if cached:
            out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
        else:
            seq = torch.cat([ids, torch.stack(new, dim=1)], dim=1)
            out = model(input_ids=seq, attention_mask=torch.ones_like(seq))
    return torch.stack(new, dim=1)


def _greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    budgets: Sequence[int],
    batch_size: int,
    device: str | torch.device,
    use_cache: bool = True,
    max_prompt_tokens: int | None = None,
) -> list[tuple[list[int], bool]]:
    """Greedy decoding of `<bos> prompt` for each prompt: (new token ids before `<eos>`, stopped).

    Prompts are grouped by token length (no padding) and, inside a group, by budget, so a batch
    runs only as many steps as its largest budget needs; a batch also stops once every row has
    produced `<eos>`. Each row gets at least its own budget of new tokens. Decoding uses the
    model's KV cache where it has one (see `_decode`; `use_cache=False`: the full re-run).
    `max_prompt_tokens` keeps only each prompt's last tokens (a left cut, before grouping; the
    real-data metrics' `greedy_generate` uses it).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("tokenizer needs bos_token_id and eos_token_id")
    use_cache = use_cache and _takes_cache(model)  # once, not per batch
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    if max_prompt_tokens is not None:
        keep = _check_positive("max_prompt_tokens", max_prompt_tokens)
        encoded = [ids[-keep:] for ids in encoded]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    results: list[tuple[list[int], bool]] = [([], False)] * len(encoded)
    with EvalMode(model), eval_bar(len(encoded), "generate") as bar:
        for indices in groups.values():
            indices = sorted(indices, key=lambda i: budgets[i])
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                ids = torch.tensor(
                    [[bos, *encoded[i]] for i in chunk], dtype=torch.long, device=device
                )
                steps = max(budgets[i] for i in chunk)
                out = _decode(model, ids, steps, eos, use_cache)
                for row, i in enumerate(chunk):
                    new = out[row].tolist()
                    stopped = eos in new
                    results[i] = (new[: new.index(eos)] if stopped else new, stopped)
                bar.update(len(chunk))
    return results


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[str]:
    """Greedy continuations of `<bos> prompt`, cut at the first `<eos>`, decoded to text.

    One prefill of the prompts, then one cached step per new token (the model's KV cache;
    a model without one re-runs the whole sequence each step, with the same result), appending
    the argmax of the last position's logits, for at most `max_new_tokens` steps. Special
    tokens other than the stopping `<eos>` are decoded literally (e.g. "<pad>"), so they can
    never make a wrong answer look right. Results come back in the order of `prompts`.
    """
    _check_positive("max_new_tokens", max_new_tokens)
    _check_positive("batch_size", batch_size)
    out = _greedy(model, tokenizer, prompts, [max_new_tokens] * len(prompts), batch_size, device)
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids, _ in out]


@torch.no_grad()
def exact_match(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Fraction of examples whose greedy answer equals `answer` exactly, overall and per family.

    accuracy = (1/N) * sum_i [model emits answer_i and then <eos>]. By default each example may
    generate len(answer_i tokens) + 1 tokens: enough for the answer and its `<eos>`, and a
    generation that has not stopped by then cannot be right, so a larger budget would change no
    verdict (it would only cost time). `max_new_tokens` sets one budget for all instead. Returns
    {"accuracy": ..., "accuracy/<family>": ... for each family present, "n": N}.
    """
    if not examples:
        raise ValueError("examples must not be empty")
    counts = exact_match_counts(model, tokenizer, examples, batch_size, max_new_tokens, device)
    result: dict[str, float] = {k: c / n for k, (c, n) in counts.items()}
    result["n"] = len(examples)
    return result


@torch.no_grad()
def exact_match_counts(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """The [correct, examples] pairs behind :func:`exact_match` ("accuracy" and
    "accuracy/<family>"): sums, so the counts of disjoint shards (data-parallel ranks) add up
    to the whole set's. No examples: {}."""
    _check_positive("batch_size", batch_size)
    if max_new_tokens is None:
        answers = [ex.answer for ex in examples]
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
        budgets = [len(a) + 1 for a in answer_ids]
    else:
        budgets = [_check_positive("max_new_tokens", max_new_tokens)] * len(examples)
    outputs = _greedy(model, tokenizer, [ex.prompt for ex in examples], budgets, batch_size, device)
    tallies: dict[str, list[float]] = defaultdict(lambda: [0, 0])
    for ex, (ids, stopped) in zip(examples, outputs, strict=True):
        tally = tallies[ex.family]
        tally[0] += int(stopped and tokenizer.decode(ids, skip_special_tokens=False) == ex.answer)
        tally[1] += 1
    if not examples:
        return {}
    total = [sum(c for c, _ in tallies.values()), len(examples)]
    return {"accuracy": total, **{f"accuracy/{f}": t for f, t in tallies.items()}}


@torch.no_grad()
def val_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 64,
    max_len: int = 128,
    device: str | torch.device = "cpu",
) -> float:
    """Mean cross-entropy per answer token (answer and `<eos>`), computed from the logits.

    L = -(1/|A|) * sum over answer positions t of log softmax(logits_{t-1})[x_t], pooled over all
    examples (token-weighted). Computed here rather than taken from `output.loss`, because a model
    may add auxiliary terms (deep supervision, ACT ponder cost) to its training loss.
    """
    if not examples:
        raise ValueError("examples must not be empty")
    total, count = val_loss_sums(model, tokenizer, examples, batch_size, max_len, device)
    return total / count


@torch.no_grad()
def val_loss_sums(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 64,
    max_len: int = 128,
    device: str | torch.device = "cpu",
) -> list[float]:
    """[summed cross-entropy, answer tokens] behind :func:`val_loss` ([0, 0] for no examples):
    the sums of disjoint shards add up to the whole set's."""
    _check_positive("batch_size", batch_size)
    total, count = 0.0, 0
    with EvalMode(model), eval_bar(len(examples), "val loss") as bar:
        for start in range(0, len(examples), batch_size):
            batch = encode(tokenizer, examples[start : start + batch_size], max_len)
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            logits = logits_of(model(input_ids=ids, attention_mask=mask)).float()
            shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
            total += F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((shift_labels != IGNORE_INDEX).sum())
            bar.update(len(ids))
    return [total, count]
