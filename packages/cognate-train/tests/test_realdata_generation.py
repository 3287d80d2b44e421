"""`greedy_generate` (the real-data metrics' generation, decoded with the model's KV cache)
against the full re-run it replaced, written out here one prompt at a time."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_train.realdata.generation import greedy_generate
from cognate_train.realdata.synthetic import synthetic_rows
from cognate_train.realdata.templates import TEMPLATES
from cognate_train.realdata.tokenizer import train_bpe

pytestmark = pytest.mark.usefixtures("single_thread")

NEW = 10  # new tokens per prompt
MAX_LEN = 30  # with NEW: prompts keep their last 30 - 10 - 1 = 19 tokens


def _prompts() -> list[str]:
    """Prompts of many token lengths, three of one length (a group split over two batches of 2),
    several longer than the `MAX_LEN` cut and several shorter."""
    svamp = [TEMPLATES["svamp"].build(r).prompt for r in synthetic_rows("svamp", 3, 0)]
    return [
        "Question: 56 + 78",
        svamp[0],
        "Q",
        "Question: 45 + 67",
        "Question: a b c",
        svamp[1],
        "Question: 89 + 10",
        "Task: add two numbers\nCode:\n",
        svamp[2],
    ]


@pytest.fixture(scope="module")
def bpe():
    records = [TEMPLATES[n].build(r) for n in TEMPLATES for r in synthetic_rows(n, 30, 0)]
    return train_bpe([r.prompt + r.answer for r in records], 320)


def _model(tok, specialization: str) -> CognateForCausalLM:
    """cognate-tiny in float64 (no near-tie argmax flips between the two paths), weights moved
    off their init; the ACT head scaled so that tokens halt after different cycles. Untied
    output head: with tied embeddings a random model repeats its last token whatever came
    before, and the continuations would not depend on the prompt or its cut."""
    torch.manual_seed(0)
    cfg = CognateConfig.from_preset(
        "cognate-tiny", specialization, vocab_size=len(tok), tie_word_embeddings=False
    )
    model = CognateForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if model.recursion.act_head is not None:
            model.recursion.act_head.proj.bias.fill_(0.0)
            model.recursion.act_head.proj.weight.mul_(30.0)
    return model


def _rerun(model, tok, prompt: str, n: int, max_len: int | None = None) -> tuple[list[int], str]:
    """The algorithm before the cache, for one prompt: the whole sequence through the model at
    every step, argmax of the last position, until `<eos>` (not kept) or `n` tokens."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if max_len is not None:  # the left cut: <bos>, prompt and n new tokens fit max_len
        ids = ids[-max(1, max_len - n - 1) :]
    seq, new = [tok.bos_token_id, *ids], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([seq + new]), use_cache=False).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return new, tok.decode(new, skip_special_tokens=False)


def _widths(model, call):
    """`call()`'s result and the input width of every forward it ran."""
    widths = []
    handle = model.register_forward_hook(
        lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        return call(), widths
    finally:
        handle.remove()


@pytest.mark.parametrize("specialization", ["reasoning", "memory", "speed"])
def test_cached_generation_equals_the_full_rerun(bpe, specialization, stop_at):
    model = _model(bpe, specialization)
    prompts = _prompts()
    lengths = [len(ids) for ids in bpe(prompts, add_special_tokens=False)["input_ids"]]
    counts = Counter(lengths)
    assert max(counts.values()) == 3 and len(counts) >= 6  # one group of 3, many lengths
    assert sum(n > MAX_LEN - NEW - 1 for n in lengths) >= 2 and min(lengths) == 1

    def run(tok, max_len=None):
        return greedy_generate(model, tok, prompts, NEW, batch_size=2, max_len=max_len)

    got, widths = _widths(model, lambda: run(bpe))
    reference = [_rerun(model, bpe, p, NEW) for p in prompts]
    assert got == [text for _, text in reference]
    # one prefill per batch (groups of equal length, at most 2 rows), then one token per step
    assert sum(w > 1 for w in widths) == sum(-(-c // 2) for c in counts.values())
    assert set(widths) - {1} == {n + 1 for n in counts}

    cut = run(bpe, MAX_LEN)
    assert cut == [_rerun(model, bpe, p, NEW, MAX_LEN)[1] for p in prompts]
    assert sum(a != b for a, b in zip(cut, got, strict=True)) >= 2  # the cut mattered

    # an <eos> the model emits: rows stop early, at different steps
    eos = Counter(t for ids, _ in reference for t in ids).most_common(1)[0][0]
    stop = stop_at(bpe, eos)
    stopped = [_rerun(model, stop, p, NEW, MAX_LEN) for p in prompts]
    assert run(stop, MAX_LEN) == [text for _, text in stopped]
    assert 0 < sum(len(ids) < NEW for ids, _ in stopped) < len(prompts)


def test_a_model_without_a_cache_rereads_the_whole_sequence(bpe, no_cache_models):
    model = _model(bpe, "speed")
    prompts = _prompts()
    reference = [_rerun(model, bpe, p, NEW, MAX_LEN)[1] for p in prompts]
    wrapped = no_cache_models["no_cache_args"](
        model
    ).eval()  # (a wrapper in training mode would go back to it)
    assert greedy_generate(wrapped, bpe, prompts, NEW, batch_size=2, max_len=MAX_LEN) == reference
    assert min(wrapped.widths) > 1 and max(wrapped.widths) == MAX_LEN - 1


def test_bad_budgets(bpe):
    model = _model(bpe, "speed")
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, bpe, ["Q"], 0)
    with pytest.raises(ValueError, match="batch_size"):
        greedy_generate(model, bpe, ["Q"], 4, batch_size=0)
