"""Exact match against models whose outputs we control, and answer-only validation loss."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from cognate_train.data import Example, encode, make_split
from cognate_train.evaluation import (
    exact_match,
    exact_match_counts,
    generate_answers,
    val_loss,
    val_loss_sums,
)
from cognate_train.tokenizer import build_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel


class ScriptedLM(torch.nn.Module):
    """A fake causal LM that spells `script[prompt]` after `<bos> prompt`, then `tail` tokens.

    Its logits are one-hot on the scripted next token, so greedy decoding reproduces the script
    exactly: the expected accuracy is known in advance.
    """

    def __init__(self, tokenizer, script: dict[str, str], tail: str = "<eos>") -> None:
        super().__init__()
        self.tok, self.script, self.tail = tokenizer, script, tail
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(tuple(input_ids.shape))
        vocab = len(self.tok)
        logits = torch.zeros(*input_ids.shape, vocab)
        for row, ids in enumerate(input_ids.tolist()):
            assert ids[0] == self.tok.bos_token_id
            text = self.tok.decode(ids[1:])
            prompt = max((p for p in self.script if text.startswith(p)), key=len)
            produced = text[len(prompt) :]
            target = self.tok(self.script[prompt], add_special_tokens=False)["input_ids"]
            target += self.tok(self.tail, add_special_tokens=False)["input_ids"] * 50
            n_done = len(self.tok(produced, add_special_tokens=False)["input_ids"])
            logits[row, -1, target[n_done]] = 10.0
        return SimpleNamespace(logits=logits)


def _examples() -> list[Example]:
    train, _ = make_split(["arith_add", "recall", "copy"], n_train=12, n_val=0, seed=4)
    return train


def test_exact_match_against_a_known_answer_per_family():
    tok = build_tokenizer()
    examples = _examples()
    script = {}
    for i, ex in enumerate(examples):
        if ex.family == "arith_add":
            script[ex.prompt] = ex.answer  # always right
        elif ex.family == "recall":
            script[ex.prompt] = ex.answer + "0"  # always wrong: one digit too many
        else:
            script[ex.prompt] = ex.answer if i % 3 == 0 else ex.answer[:-1]  # right 1 time in 3
    expected_copy = sum(script[e.prompt] == e.answer for e in examples if e.family == "copy") / 12
    result = exact_match(ScriptedLM(tok, script), tok, examples, batch_size=5)
    assert result["accuracy/arith_add"] == 1.0
    assert result["accuracy/recall"] == 0.0
    assert result["accuracy/copy"] == pytest.approx(expected_copy) and 0 < expected_copy < 1
    assert result["accuracy"] == pytest.approx((12 + 0 + 12 * expected_copy) / 36)
    assert result["n"] == 36


def test_shard_sums_add_up_to_the_whole_set():
    # what a data-parallel evaluation reduces: the sums of disjoint shards (every 2nd example)
    tok = build_tokenizer()
    examples = _examples()
    script = {ex.prompt: ex.answer if i % 3 else ex.answer + "0" for i, ex in enumerate(examples)}
    lm = ScriptedLM(tok, script)
    whole = exact_match(lm, tok, examples, batch_size=5)
    parts = [exact_match_counts(lm, tok, examples[r::2], batch_size=5) for r in range(2)]
    for key in ("accuracy", "accuracy/copy", "accuracy/recall", "accuracy/arith_add"):
        correct = sum(p[key][0] for p in parts)
        assert correct / sum(p[key][1] for p in parts) == pytest.approx(whole[key])
    assert exact_match_counts(lm, tok, [], batch_size=5) == {}
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    )
    sums = [val_loss_sums(model, tok, examples[r::2], 5, 64) for r in range(2)]
    total, count = (sum(s[i] for s in sums) for i in (0, 1))
    assert total / count == pytest.approx(val_loss(model, tok, examples, 5, 64), rel=1e-5)
    assert val_loss_sums(model, tok, [], 5, 64) == [0, 0]


def test_answer_must_end_with_eos():
    tok = build_tokenizer()
    examples = _examples()
    script = {ex.prompt: ex.answer for ex in examples}
    # right characters but never stops: continues with "x", or with padding, instead of <eos>
    assert exact_match(ScriptedLM(tok, script, tail="x"), tok, examples)["accuracy"] == 0.0
    assert exact_match(ScriptedLM(tok, script, tail="<pad>"), tok, examples)["accuracy"] == 0.0
    assert exact_match(ScriptedLM(tok, script), tok, examples)["accuracy"] == 1.0


def test_batches_hold_no_padding_and_results_keep_order():
    tok = build_tokenizer()
    examples = _examples()
    script = {ex.prompt: ex.answer[::-1] for ex in examples}
    model = ScriptedLM(tok, script)
    outputs = generate_answers(
        model, tok, [ex.prompt for ex in examples], max_new_tokens=12, batch_size=4
    )
    assert outputs == [script[ex.prompt] for ex in examples]
    assert all(b <= 4 for b, _ in model.calls)


def test_greedy_decoding_matches_hf_generate_and_is_batch_invariant():
    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    model.train()  # exact_match must switch to eval (dropout off) and restore the mode
    examples = _examples()[::9]  # 4 prompts, one or two per family
    prompts = [ex.prompt for ex in examples]
    ours = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=64)
    assert model.training
    assert generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=1) == ours
    model.eval()
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor(
            [[tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]]
        )
        ref = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=0,
        )
        new = ref[0, ids.shape[1] :].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert got == tok.decode(new, skip_special_tokens=False)


def test_val_loss_is_the_token_mean_cross_entropy_on_answers():
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    )
    examples = _examples()
    # reference 1: one batch holding everything -> HF's own shifted loss over the labels
    batch = encode(tok, examples, max_len=64)
    model.eval()
    with torch.no_grad():
        hf_loss = model(**batch).loss.item()
    assert val_loss(model, tok, examples, batch_size=len(examples), max_len=64) == pytest.approx(
        hf_loss, rel=1e-5
    )
    # reference 2: many batches -> still token-weighted, computed example by example
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            b = encode(tok, [ex], max_len=64)
            logits = model(input_ids=b["input_ids"]).logits[0, :-1]
            lab = b["labels"][0, 1:]
            keep = lab != -100
            total += F.cross_entropy(logits[keep], lab[keep], reduction="sum").item()
            count += int(keep.sum())
    assert val_loss(model, tok, examples, batch_size=5, max_len=64) == pytest.approx(
        total / count, rel=1e-5
    )


def test_bad_input():
    tok = build_tokenizer()
    model = ScriptedLM(tok, {})
    with pytest.raises(ValueError, match="examples"):
        exact_match(model, tok, [])
    with pytest.raises(ValueError, match="batch_size"):
        exact_match(model, tok, _examples(), batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_answers(model, tok, ["1+1="], max_new_tokens=0)
    with pytest.raises(ValueError, match="examples"):
        val_loss(model, tok, [], 4, 32)


def test_verdicts_do_not_depend_on_the_token_budget():
    tok = build_tokenizer()
    examples = _examples()
    script = {}
    for i, ex in enumerate(examples):
        # right; right then a stray character; a prefix; something much longer than the answer
        script[ex.prompt] = [ex.answer, ex.answer + "7", ex.answer[:1], ex.answer * 4][i % 4]
    expected = sum(script[ex.prompt] == ex.answer for ex in examples) / len(examples)
    default = exact_match(ScriptedLM(tok, script), tok, examples)
    generous = exact_match(ScriptedLM(tok, script), tok, examples, max_new_tokens=40)
    assert default == generous
    assert default["accuracy"] == pytest.approx(expected)


def test_an_answer_cut_off_by_the_budget_is_not_counted():
    tok = build_tokenizer()
    ex = Example("copy", "copy abc:", "abc")
    model = ScriptedLM(tok, {ex.prompt: "abc"})
    assert exact_match(model, tok, [ex], max_new_tokens=3)["accuracy"] == 0.0  # no room for <eos>
    assert exact_match(model, tok, [ex], max_new_tokens=4)["accuracy"] == 1.0
    assert generate_answers(model, tok, [ex.prompt], max_new_tokens=3) == ["abc"]


def test_cognate_model_decodes_the_same_alone_or_batched():
    from cognate_model import CognateConfig, CognateForCausalLM

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = CognateForCausalLM(CognateConfig.from_preset("cognate-tiny", vocab_size=len(tok)))
    prompts = [ex.prompt for ex in _examples()[::9]]  # 4 prompts over 3 families
    batched = generate_answers(model, tok, prompts, max_new_tokens=2, batch_size=64)
    assert generate_answers(model, tok, prompts, max_new_tokens=2, batch_size=1) == batched


def _tiny_cognate(tok, specialization: str | None, **overrides):
    """cognate-tiny in float64 (no near-tie argmax can flip between the paths), weights perturbed
    off their init; the ACT head scaled so that tokens halt after different cycles."""
    from cognate_model import CognateConfig, CognateForCausalLM

    torch.manual_seed(0)
    cfg = CognateConfig.from_preset(
        "cognate-tiny", specialization, vocab_size=len(tok), **overrides
    )
    model = CognateForCausalLM(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if model.recursion.act_head is not None:
            model.recursion.act_head.proj.bias.fill_(0.0)
            model.recursion.act_head.proj.weight.mul_(30.0)
    return model


def _greedy_logged(model, tok, prompts, budgets, use_cache):
    """`_greedy`'s result, and every forward's (last-position logits, ACT steps, input width)."""
    from cognate_train.evaluation import _greedy

    log = []

    def hook(module, args, kwargs, out):
        steps = None if out.act_steps is None else out.act_steps[:, -1]
        log.append((out.logits[:, -1], steps, kwargs["input_ids"].shape[1]))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        return _greedy(model, tok, prompts, budgets, 4, "cpu", use_cache=use_cache), log
    finally:
        handle.remove()


@pytest.mark.parametrize("specialization", [None, "reasoning", "memory", "speed"])
def test_cached_greedy_equals_the_full_rerun_for_cognate(specialization, single_thread, stop_at):
    # prompts of 4..19 tokens, several per length (batches of up to 4 rows), budgets 3..12 new
    # tokens: decoding crosses the tiny preset's 16-token window and its titans chunks of 8
    tok = build_tokenizer()
    prompts = [ex.prompt for ex in _examples()[::2]]
    budgets = [3 + 3 * (i % 4) for i in range(len(prompts))]
    model = _tiny_cognate(tok, specialization)
    cached, log = _greedy_logged(model, tok, prompts, budgets, use_cache=True)
    full, ref = _greedy_logged(model, tok, prompts, budgets, use_cache=False)
    assert cached == full
    assert len(log) == len(ref)
    for (logits, steps, width), (ref_logits, ref_steps, ref_width) in zip(log, ref, strict=True):
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-10)
        if ref_steps is not None:  # ACT at inference: the same halting cycle per token
            assert torch.equal(steps, ref_steps)
        assert width == 1 or width == ref_width  # a cached step reads only its new token
    lengths = Counter(len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"])
    assert max(lengths.values()) > 1 and len(lengths) > 3  # batches > 1, several lengths
    batches = sum(-(-n // 4) for n in lengths.values())
    assert sum(width > 1 for *_, width in log) == batches  # one prefill per batch
    if model.config.use_act:  # the halting really varies, so it is exercised
        assert len(torch.unique(torch.cat([s for _, s, _ in log]))) > 1
    # with an <eos> the model emits: rows stop at different steps, batches end early
    eos = torch.mode(torch.tensor([t for ids, _ in full for t in ids])).values.item()
    stop_tok = stop_at(tok, eos)
    stopped, _ = _greedy_logged(model, stop_tok, prompts, budgets, use_cache=True)
    assert stopped == _greedy_logged(model, stop_tok, prompts, budgets, use_cache=False)[0]
    assert 0 < sum(s for _, s in stopped) < len(prompts)


@pytest.mark.parametrize("wrapper", ["no_cache_args", "returns_no_cache"])
def test_a_model_without_a_cache_falls_back_to_the_full_rerun(
    wrapper, no_cache_models, single_thread
):
    from cognate_train.evaluation import _greedy

    tok = build_tokenizer()
    prompts = [ex.prompt for ex in _examples()[::3]]
    model = _tiny_cognate(tok, "speed")
    reference = _greedy(model, tok, prompts, [6] * len(prompts), 4, "cpu", use_cache=False)
    wrapped = no_cache_models[wrapper](model)
    assert _greedy(wrapped, tok, prompts, [6] * len(prompts), 4, "cpu") == reference
    # every call re-reads the whole sequence: per batch (length groups in order of appearance,
    # up to 4 rows), widths <bos> + prompt, then one more per step, 6 calls (no row stops)
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    expected = []
    for n in dict.fromkeys(lengths):
        for _ in range(-(-lengths.count(n) // 4)):
            expected += [n + 1 + k for k in range(6)]
    assert wrapped.widths == expected


def test_cached_answers_may_run_past_max_seq_len(single_thread):
    # one forward holds at most max_seq_len positions: the full re-run stops there with the
    # model's error, the cached decoding goes on and equals the re-run of a model with a larger
    # limit and the same weights
    from cognate_train.evaluation import _greedy

    tok = build_tokenizer()
    prompts = ["copy abcdef:", "copy abcdefg:"]
    short = _tiny_cognate(tok, "speed", max_seq_len=24)
    wide = _tiny_cognate(tok, "speed", max_seq_len=64)
    wide.load_state_dict(short.state_dict())
    cached = _greedy(short, tok, prompts, [20, 20], 4, "cpu")
    assert cached == _greedy(wide, tok, prompts, [20, 20], 4, "cpu", use_cache=False)
    assert [len(ids) for ids, _ in cached] == [20, 20]  # 1 + 12 or 13 + 20 > 24 positions
    with pytest.raises(ValueError, match="max_seq_len=24"):
        _greedy(short, tok, prompts, [20, 20], 4, "cpu", use_cache=False)
