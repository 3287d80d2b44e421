"""Blocked sliding-window attention equals SDPA over the dense sliding-window mask.

The reference is `torch.nn.functional.scaled_dot_product_attention` with the dense boolean mask
of `sliding_window_mask` (whose semantics test_causality_purity pins down element by element),
in float64, for the outputs and their gradients; then the whole model with the blocked path
against the same model forced onto the dense mask, with padding and under the cache.
"""

import pytest
import torch
import torch.nn.functional as F
from cognate_model import CognateCache, CognateConfig
from cognate_model.attention import (
    Positions,
    WindowMask,
    local_window_attention,
    window_attention,
)


def _padding(kind: str, B: int, L: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    real = torch.ones(B, L, dtype=torch.long)
    if kind == "left":
        real[0, : L // 3] = 0
    else:  # anywhere, one row without any real key
        real = (torch.rand(B, L) > 0.4).long()
        real[-1] = 0
    return real


@pytest.mark.parametrize(
    ("T", "window", "past"),
    [(37, 8, 0), (64, 16, 0), (17, 16, 15), (40, 7, 6), (33, 5, 20), (9, 1, 0)],
)
@pytest.mark.parametrize("padding", ["none", "left", "anywhere"])
def test_blocked_equals_dense_mask_float64(T, window, past, padding):
    B, H, hd = 3, 2, 6
    q = torch.randn(B, H, T, hd, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, H, past + T, hd, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, H, past + T, hd, dtype=torch.float64, requires_grad=True)
    mask = WindowMask(T, window, _padding(padding, B, past + T), past)
    assert mask.blocked == (T > window)
    out = local_window_attention(q, k, v, mask, 0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense())
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("T", "window", "past"), [(37, 8, 0), (17, 16, 15), (33, 5, 20), (6, 16, 3), (1, 16, 15)]
)
@pytest.mark.parametrize("padding", ["none", "left", "anywhere"])
@pytest.mark.parametrize("n_persistent", [0, 3])
def test_positions_equal_the_dense_rows_and_read_only_their_windows(
    T, window, past, padding, n_persistent
):
    """N single queries at scattered positions (halting's gathered cycle) = SDPA of the full
    layout over the dense mask at those positions, persistent slots included; each reads only
    its own window of keys: keys/values outside every query's window set to NaN (which any
    computation over the full layout would carry into the output) change nothing."""
    B, H, hd = 3, 2, 6
    q = torch.randn(B, H, T, hd, dtype=torch.float64)
    k = torch.randn(B, H, past + T, hd, dtype=torch.float64)
    v = torch.randn(B, H, past + T, hd, dtype=torch.float64)
    persistent = torch.randn(2, H, n_persistent, hd, dtype=torch.float64) if n_persistent else None
    mask = WindowMask(T, window, _padding(padding, B, past + T), past)
    b, t = (torch.rand(B, T) < 0.3).nonzero(as_tuple=True)
    b, t = torch.cat((b, torch.tensor([0]))), torch.cat((t, torch.tensor([T - 1])))  # N >= 1
    ref = window_attention(q, k, v, mask.dense(), 0.0, persistent)[b, :, t]
    seen = torch.zeros(B, past + T, dtype=torch.bool)
    for bi, ti in zip(b.tolist(), t.tolist(), strict=True):
        seen[bi, max(0, past + ti - window + 1) : past + ti + 1] = True
    k, v = (x.masked_fill(~seen[:, None, :, None], float("nan")) for x in (k, v))
    out = window_attention(q[b, :, t, None], k, v, Positions(mask, b, t, T), 0.0, persistent)
    assert out.shape == (len(b), H, 1, hd)
    torch.testing.assert_close(out[:, :, 0], ref, rtol=0, atol=1e-12)


@pytest.fixture
def dense_only(monkeypatch):
    """Force every attention onto the dense mask (the reference path)."""

    def use_dense() -> None:
        monkeypatch.setattr(WindowMask, "blocked", property(lambda self: False))

    return use_dense


def _blocked_calls(monkeypatch) -> list[int]:
    """Count the calls of the blocked path (so a test knows it ran)."""
    import cognate_model.attention as attention

    calls = []
    original = attention.local_window_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "local_window_attention", counted)
    return calls


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"ltm_type": "titans", "mag_layers": [0, 1]},
        {"ltm_type": "titans", "persistent_memory_tokens": 2},
    ],
)
def test_model_blocked_equals_dense_with_padding(make_tiny, dense_only, monkeypatch, variant):
    model = make_tiny(**variant).double()
    ids = torch.randint(1, 256, (2, 70))  # window 16: five blocks
    mask = torch.ones_like(ids)
    mask[0, :11] = 0
    mask[1, 30:33] = 0
    calls = _blocked_calls(monkeypatch)
    blocked = model(ids, attention_mask=mask, use_cache=False).logits
    assert calls  # the long input took the blocked path
    dense_only()
    dense = model(ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(blocked, dense, rtol=0, atol=1e-10)


def test_cached_chunks_longer_than_the_window_equal_dense_full_forward(
    make_tiny, dense_only, monkeypatch
):
    """Prefill and later chunks over the window (blocked, with held keys) vs the dense path."""
    model = make_tiny(ltm_type="titans").double()
    ids = torch.randint(1, 256, (2, 90))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    cache, outs = CognateCache(model.config), []
    calls = _blocked_calls(monkeypatch)
    for lo, hi in ((0, 37), (37, 40), (40, 90)):
        outs.append(model(ids[:, lo:hi], attention_mask=mask[:, :hi], past_key_values=cache))
    assert calls
    dense_only()
    full = model(ids, attention_mask=mask, use_cache=False).logits
    cached = torch.cat([o.logits for o in outs], 1)
    torch.testing.assert_close(cached[0, 5:], full[0, 5:], rtol=0, atol=1e-10)
    torch.testing.assert_close(cached[1], full[1], rtol=0, atol=1e-10)


def _explicit_attention(q, k, v, allowed, pk, pv):
    """softmax(q . [pk; k] / sqrt(hd)) over the persistent slots and the allowed keys,
    written out per query (the reference for the persistent memory)."""
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    fixed = torch.einsum("bhtd,hnd->bhtn", q, pk) * scale
    weights = torch.softmax(torch.cat((fixed, scores), -1), -1)
    n = pk.shape[1]
    return torch.einsum("bhtn,hnd->bhtd", weights[..., :n], pv) + torch.einsum(
        "bhts,bhsd->bhtd", weights[..., n:], v
    )


@pytest.mark.parametrize(("T", "past"), [(5, 0), (5, 3), (40, 0), (40, 7)])
def test_persistent_slots_join_every_querys_softmax(T, past):
    B, H, hd, window, n = 2, 3, 4, 8, 3
    q = torch.randn(B, H, T, hd, dtype=torch.float64)
    k = torch.randn(B, H, past + T, hd, dtype=torch.float64)
    v = torch.randn(B, H, past + T, hd, dtype=torch.float64)
    persistent = torch.randn(2, H, n, hd, dtype=torch.float64)
    mask = WindowMask(T, window, _padding("anywhere", B, past + T), past)
    out = window_attention(q, k, v, mask, 0.0, persistent)
    ref = _explicit_attention(q, k, v, mask.dense(), *persistent)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_persistent_tokens_config_and_parameters(make_tiny):
    model = make_tiny(ltm_type="titans", mag_layers=[1], persistent_memory_tokens=4)
    layers = model.model.layers
    assert layers[0].attn.persistent is None  # only the MAG layers hold them
    assert tuple(layers[1].attn.persistent.shape) == (2, 4, 4, 16)
    with pytest.raises(ValueError, match="persistent_memory_tokens"):
        CognateConfig.from_preset("cognate-tiny", persistent_memory_tokens=2)  # ema
    with pytest.raises(ValueError, match="persistent_memory_tokens"):
        CognateConfig.from_preset("cognate-tiny", ltm_type="titans", persistent_memory_tokens=-1)


def test_persistent_tokens_cached_steps_equal_full_forward(make_tiny):
    model = make_tiny(ltm_type="titans", mag_layers=[0, 1], persistent_memory_tokens=3)
    ids = torch.randint(1, 256, (2, 60))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    full = model(ids, attention_mask=mask, use_cache=False).logits
    cache, outs, t = CognateCache(model.config), [], 0
    for n in (25, 1, 1, 5, 28):
        outs.append(
            model(ids[:, t : t + n], attention_mask=mask[:, : t + n], past_key_values=cache)
        )
        t += n
    cached = torch.cat([o.logits for o in outs], 1)
    torch.testing.assert_close(cached[0, 7:], full[0, 7:], rtol=0, atol=1e-5)
    torch.testing.assert_close(cached[1], full[1], rtol=0, atol=1e-5)


def test_persistent_tokens_change_the_output_and_get_gradients(make_tiny):
    model = make_tiny(ltm_type="titans", persistent_memory_tokens=2).train()
    ids = torch.randint(0, 256, (2, 40))
    model(ids, labels=ids).loss.backward()
    slots = model.model.layers[-1].attn.persistent
    assert slots.grad is not None and slots.grad.abs().sum() > 0
