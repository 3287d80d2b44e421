"""Per-head max pre-softmax logits (for QK-clip): against a float64 reference, and recorded by
every `Attention` of the model (backbone and the recursion's cross-attention) without changing
its output."""

import math

import pytest
import torch
from cognate_model.attention import (
    Attention,
    apply_rotary,
    max_logits_per_head,
    sliding_window_mask,
)


def reference_max(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max over (b, t, s allowed) of q.k / sqrt(d), naively in float64 with the full matrix."""
    q, k = q.double(), k.double()
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    allowed = mask.expand_as(scores)
    return scores.masked_fill(~allowed, -math.inf).amax(dim=(0, 2, 3))


@pytest.mark.parametrize("past_len", [0, 5])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_max_logits_match_float64_reference(past_len, chunk):
    b, h, t, d = 3, 4, 11, 8
    q = torch.randn(b, h, t, d) * 3
    k = torch.randn(b, h, past_len + t, d) * 3
    pad = torch.ones(b, past_len + t, dtype=torch.long)
    pad[0, :4] = 0  # left padding (generation)
    pad[1, -3:] = 0  # right padding (batching)
    mask = sliding_window_mask(t, 4, pad, past_len=past_len)
    got = max_logits_per_head(q, k, mask, chunk=chunk)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_max(q, k, mask), rtol=1e-6, atol=1e-5)
    # the masked-out keys matter: the unmasked max is larger here
    everything = max_logits_per_head(q, k, None)
    assert (everything >= got).all() and (everything > got).any()


def test_max_logits_bf16_inputs_are_computed_wider():
    q, k = torch.randn(2, 2, 9, 16).bfloat16() * 4, torch.randn(2, 2, 9, 16).bfloat16() * 4
    mask = sliding_window_mask(9, 9)
    got = max_logits_per_head(q, k, mask, chunk=4)
    torch.testing.assert_close(got.double(), reference_max(q, k, mask), rtol=1e-6, atol=1e-5)


def _capture_inputs(model):
    """Forward pre-hooks on every Attention: the (x, mask, cos, sin, kv) of each call."""
    calls: dict[str, list] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, Attention):

            def hook(m, args, kwargs, name=name):
                x, mask, cos, sin = args[:4]
                calls.setdefault(name, []).append((x, mask, cos, sin, kwargs.get("kv")))

            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


def _reference_from_call(attn: Attention, x, mask, cos, sin, kv) -> torch.Tensor:
    """The module's q and k recomputed in float64 from its weights, then `reference_max`."""
    w = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj")}
    heads = lambda y: y.view(*y.shape[:2], attn.n_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    q = apply_rotary(heads(x.double() @ w["q_proj"].T), cos.double(), sin.double())
    k = (
        kv[0].double()
        if kv is not None
        else apply_rotary(heads(x.double() @ w["k_proj"].T), cos.double(), sin.double())
    )
    return reference_max(q, k, mask)


@pytest.mark.parametrize("ltm_type", ["ema", "titans"])
def test_model_records_every_attention_and_output_is_unchanged(make_tiny, ltm_type):
    model = make_tiny(ltm_type=ltm_type, use_act=True)
    ids = torch.randint(0, 256, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, -5:] = 0
    plain = model(ids, attention_mask=mask, use_cache=False).logits
    attns = {n: m for n, m in model.named_modules() if isinstance(m, Attention)}
    assert any(n.startswith("recursion") for n in attns)  # the cross-attention is one of them
    for m in attns.values():
        m.record_max_logits = True
    calls, handles = _capture_inputs(model)
    recorded = model(ids, attention_mask=mask, use_cache=False).logits
    for hnd in handles:
        hnd.remove()
    assert torch.equal(plain, recorded)
    for name, m in attns.items():
        refs = torch.stack([_reference_from_call(m, *c) for c in calls[name]])
        torch.testing.assert_close(m.max_logits.double(), refs.amax(0), rtol=1e-5, atol=1e-5)
    cross = next(n for n in attns if n.startswith("recursion"))
    assert len(calls[cross]) == model.config.trm_cycles * model.config.trm_micro_steps
    for m in attns.values():
        m.reset_max_logits()
        assert m.max_logits is None


def test_recording_is_off_by_default(make_tiny):
    model = make_tiny()
    model(torch.randint(0, 256, (1, 8)))
    assert all(m.max_logits is None for m in model.modules() if isinstance(m, Attention))
