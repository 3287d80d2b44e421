"""Titans' neural memory against a token-by-token float64 reference, causality, purity,
streaming, padding and gradients.

The reference walks each row's real tokens one at a time and applies the rule as the paper
states it: when a chunk of C tokens is complete, one step of gradient descent with momentum and
forgetting on the chunk's mean loss ||W k - v||^2, the gradient taken by autograd at the
weights the chunk started from; every token then reads W q.
"""

import pytest
import torch
import torch.nn.functional as F
from cognate_model.titans import (
    MemoryGate,
    NeuralMemory,
    TitansState,
    chunk_recurrence,
    fused_chunk_recurrence,
)

D, H, HD = 12, 3, 4


def _memory(chunk: int = 4) -> NeuralMemory:
    mem = NeuralMemory(D, H, HD, chunk_size=chunk).double()
    with torch.no_grad():  # away from the init (W_0 = 0, identical heads hide bugs)
        for p in mem.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mem


def _heads(t: torch.Tensor) -> torch.Tensor:
    return t.view(*t.shape[:-1], H, HD)


def _qkv(
    mem: NeuralMemory, x: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (l2-normalised) and v per token (B, T, H, HD): the projections, then the causal
    depthwise filter over each row's own real tokens, as a loop (padding skipped, zeros
    before the row's first token)."""
    B, T, _ = x.shape
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    weights = (mem.q_proj.weight, mem.k_proj.weight, mem.v_proj.weight)
    proj = torch.cat([x @ w.T for w in weights], -1)
    K = mem.conv_size
    rows = []
    for b in range(B):
        stream = [t for t in range(T) if mask[b, t]]
        row = [torch.zeros_like(proj[b, 0])] * T
        for r, t in enumerate(stream):  # tap i weighs the real token K-1-i places back
            taps = [(i, r - (K - 1 - i)) for i in range(K) if r - (K - 1 - i) >= 0]
            row[t] = sum(mem.conv[:, i] * proj[b, stream[j]] for i, j in taps)
        rows.append(torch.stack(row))
    q, k, v = (_heads(t) for t in torch.stack(rows).chunk(3, -1))
    return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v


def reference(
    mem: NeuralMemory, x: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, surprise, memory_norm, final W) by a loop over tokens, float64."""
    C = mem.chunk_size
    B, T, _ = x.shape
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    q, k, v = _qkv(mem, x, mask)
    out = torch.zeros(B, T, H, HD, dtype=x.dtype)
    surprise = torch.zeros(B, T, dtype=x.dtype)
    norm = torch.zeros(B, T, dtype=x.dtype)
    finals = []
    for b in range(B):
        w = mem.initial_memory.detach().clone()
        s = torch.zeros_like(w)
        chunk = []
        for t in range(T):
            if not mask[b, t]:
                continue
            chunk.append(t)
            surprise[b, t] = (
                ((torch.einsum("hij,hj->hi", w, k[b, t]) - v[b, t]) ** 2).sum(-1).mean()
            )
            if len(chunk) == C:
                logits = mem.rates(x[b, chunk].mean(0)).view(3, H, 1, 1)
                theta, eta, alpha = torch.sigmoid(logits)
                leaf = w.clone().requires_grad_(True)
                loss = (
                    torch.stack(
                        [
                            ((torch.einsum("hij,hj->hi", leaf, k[b, i]) - v[b, i]) ** 2).sum(-1)
                            for i in chunk
                        ]
                    )
                    .mean(0)
                    .sum()
                )  # heads are independent: the sum's gradient is each head's
                (grad,) = torch.autograd.grad(loss, leaf)
                s = eta * s - theta * grad
                w = (1 - alpha) * w + s
                chunk = []
            out[b, t] = torch.einsum("hij,hj->hi", w, q[b, t])
            norm[b, t] = torch.linalg.matrix_norm(w).mean()
        finals.append(w)
    out = out.flatten(-2) @ mem.o_proj.weight.T
    return out, surprise, norm, torch.stack(finals)


@pytest.mark.parametrize("T", [1, 3, 4, 5, 17, 24])
@pytest.mark.parametrize("chunk", [1, 4, 5])
def test_matches_token_by_token_reference(T, chunk):
    mem = _memory(chunk)
    x = torch.randn(2, T, D, dtype=torch.float64)
    out, state, diag = mem(x)
    ref, surprise, norm, w = reference(mem, x)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(diag["surprise"], surprise.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(diag["memory_norm"], norm.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.weights, w.detach(), rtol=1e-10, atol=1e-12)
    assert state.pending_count.tolist() == [T % chunk] * 2


def test_padding_anywhere_matches_reference_and_reads_zero():
    mem = _memory(4)
    x = torch.randn(3, 15, D, dtype=torch.float64)
    mask = torch.ones(3, 15, dtype=torch.long)
    mask[0, :5] = 0  # left
    mask[1, 9:] = 0  # right
    mask[2, [2, 3, 7, 11]] = 0  # middle
    out, _, diag = mem(x, attention_mask=mask)
    ref, surprise, _, _ = reference(mem, x, mask)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(diag["surprise"], surprise.detach(), rtol=1e-10, atol=1e-12)
    assert out[mask == 0].abs().max() == 0


@pytest.mark.parametrize("chunk", [1, 4])
def test_later_tokens_do_not_change_earlier_outputs(chunk):
    mem = _memory(chunk)
    x = torch.randn(2, 21, D, dtype=torch.float64)
    out, _, diag = mem(x)
    for cut in (1, 4, 7, 8, 20):
        x2 = x.clone()
        x2[:, cut:] = torch.randn_like(x2[:, cut:])
        out2, _, diag2 = mem(x2)
        torch.testing.assert_close(out2[:, :cut], out[:, :cut], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            diag2["surprise"][:, :cut], diag["surprise"][:, :cut], rtol=0, atol=1e-12
        )
        assert (out2[:, cut:] - out[:, cut:]).abs().max() > 1e-6  # later ones do change


def test_a_chunks_last_token_reads_its_own_chunk():
    """Position t reads everything written at <= t once its chunk is complete: the last
    token of a chunk depends on the chunk, the others not yet on their own chunk. (The
    filter set to the identity, so that a token's query does not carry its neighbours.)"""
    mem = _memory(4)
    with torch.no_grad():
        mem.conv.zero_()
        mem.conv[:, -1] = 1.0
    x = torch.randn(1, 12, D, dtype=torch.float64)
    out = mem(x)[0]
    x2 = x.clone()
    x2[:, 5] += 1.0  # a token of the second chunk (slots 4..7)
    out2 = mem(x2)[0]
    diff = (out2 - out).abs().amax(-1)[0]
    assert diff[:5].max() == 0 and diff[6].max() == 0  # 5 itself differs through its query
    assert diff[7] > 1e-6 and diff[8:].min() > 1e-6


def test_row_alone_equals_row_in_batch():
    mem = _memory(4)
    x = torch.randn(4, 19, D, dtype=torch.float64)
    mask = torch.ones(4, 19, dtype=torch.long)
    mask[1, :6] = 0
    mask[3, 10:] = 0
    out, state, _ = mem(x, attention_mask=mask)
    for i in range(4):
        alone, s, _ = mem(x[i : i + 1], attention_mask=mask[i : i + 1])
        torch.testing.assert_close(alone, out[i : i + 1], rtol=0, atol=1e-12)
        for a, b in zip(s, state, strict=True):
            torch.testing.assert_close(a, b[i : i + 1], rtol=0, atol=1e-12)


def _assert_states_close(a: TitansState, b: TitansState) -> None:
    for name, u, w in zip(TitansState._fields, a, b, strict=True):
        torch.testing.assert_close(u, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("splits", [[1], [3], [4], [5, 9], [8, 9, 10], list(range(1, 23))])
def test_streaming_state_in_out_equals_one_pass(splits):
    mem = _memory(4)
    x = torch.randn(2, 23, D, dtype=torch.float64)
    full, full_state, full_diag = mem(x)
    outs, surprises, state = [], [], None
    for lo, hi in zip([0, *splits], [*splits, 23], strict=True):
        out, state, diag = mem(x[:, lo:hi], state=state)
        outs.append(out)
        surprises.append(diag["surprise"])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat(surprises, 1), full_diag["surprise"])
    _assert_states_close(state, full_state)


def test_streaming_rows_at_different_chunk_offsets_with_left_padding():
    """Generation: rows of different prompt lengths (left padded) then one token at a time."""
    mem = _memory(4)
    x = torch.randn(2, 14, D, dtype=torch.float64)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[0, :3] = 0  # row 0 has 11 real tokens, row 1 has 14
    full, full_state, _ = mem(x, attention_mask=mask)
    out, state, _ = mem(x[:, :6], attention_mask=mask[:, :6])
    assert state.pending_count.tolist() == [3, 2]
    steps = [out]
    for t in range(6, 14):
        o, state, _ = mem(x[:, t : t + 1], attention_mask=mask[:, t : t + 1], state=state)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-12)
    _assert_states_close(state, full_state)
    # and each row matches its unpadded self
    alone = mem(x[:1, 3:])[0]
    torch.testing.assert_close(full[:1, 3:], alone, rtol=0, atol=1e-12)


def test_a_row_without_real_tokens_keeps_its_state():
    mem = _memory(4)
    _, state, _ = mem(torch.randn(2, 6, D, dtype=torch.float64))
    out, kept, _ = mem(
        torch.randn(2, 5, D, dtype=torch.float64),
        attention_mask=torch.zeros(2, 5, dtype=torch.long),
        state=state,
    )
    assert out.abs().max() == 0
    _assert_states_close(kept, state)


def test_gradients_reach_every_parameter_and_match_the_reference():
    mem = _memory(4)
    x = torch.randn(2, 13, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 13, D, dtype=torch.float64)
    (mem(x)[0] * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in mem.named_parameters()}
    gx = x.grad.clone()
    for name, g in grads.items():
        assert g.abs().max() > 0, f"no gradient reaches {name}"
    mem.zero_grad()
    x.grad = None
    ref = reference_with_grad(mem, x)
    (ref * w).sum().backward()
    for n, p in mem.named_parameters():
        if n == "initial_memory":
            continue  # the reference starts from a detached copy
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-8, atol=1e-10, msg=n)
    torch.testing.assert_close(gx, x.grad, rtol=1e-8, atol=1e-10)


def reference_with_grad(mem: NeuralMemory, x: torch.Tensor) -> torch.Tensor:
    """The reference keeping its graph: the memory's second-order path (the gradient's own
    dependence on k, v and W) must be differentiated the same way."""
    C, (B, T, _) = mem.chunk_size, x.shape
    q, k, v = _qkv(mem, x)
    rows = []
    for b in range(B):
        w = mem.initial_memory.detach().clone()
        s = torch.zeros_like(w)
        outs = []
        for t in range(T):
            if (t + 1) % C == 0:
                chunk = list(range(t + 1 - C, t + 1))
                theta, eta, alpha = torch.sigmoid(mem.rates(x[b, chunk].mean(0)).view(3, H, 1, 1))
                resid = torch.einsum("hij,chj->chi", w, k[b, chunk]) - v[b, chunk]
                grad = 2 * torch.einsum("chi,chj->hij", resid, k[b, chunk]) / C  # d/dW mean loss
                s = eta * s - theta * grad
                w = (1 - alpha) * w + s
            outs.append(torch.einsum("hij,hj->hi", w, q[b, t]))
        rows.append(torch.stack(outs))
    return torch.stack(rows).flatten(-2) @ mem.o_proj.weight.T


def test_initial_memory_gets_its_gradient():
    mem = _memory(4)
    x = torch.randn(1, 9, D, dtype=torch.float64)
    eps = 1e-6
    direction = torch.randn_like(mem.initial_memory)
    (mem(x)[0].sum()).backward()
    analytic = (mem.initial_memory.grad * direction).sum()
    with torch.no_grad():
        mem.initial_memory.add_(eps * direction)
        plus = mem(x)[0].sum()
        mem.initial_memory.sub_(2 * eps * direction)
        minus = mem(x)[0].sum()
    torch.testing.assert_close(analytic, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-9)


def test_float32_and_bf16_autocast_stay_close_to_float64():
    mem = _memory(4)
    x = torch.randn(2, 40, D, dtype=torch.float64)
    ref = mem(x)[0]
    mem32 = mem.float()
    out32 = mem32(x.float())[0]
    assert (out32.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16, state, _ = mem32(x.float())
    assert state.weights.dtype == torch.float32  # the memory itself is kept in float32
    assert (out16.double() - ref).abs().max() <= 5e-2 * ref.abs().max()


def test_initial_rates():
    mem = NeuralMemory(D, H, HD, init_lr=0.3, init_momentum=0.8, init_forget=0.05)
    with torch.no_grad():
        mem.rates.weight.zero_()
    rates = torch.sigmoid(mem.rates(torch.randn(D))).view(3, H)
    torch.testing.assert_close(rates, torch.tensor([[0.3] * H, [0.8] * H, [0.05] * H]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="chunk_size"):
        NeuralMemory(D, H, HD, chunk_size=0)
    with pytest.raises(ValueError, match="init_forget"):
        NeuralMemory(D, H, HD, init_forget=1.0)
    mem = _memory(4)
    state = mem.initial_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="weights"):
        mem(torch.randn(3, 5, D, dtype=torch.float64), state=state)
    with pytest.raises(ValueError, match="pending_count"):
        mem(
            torch.randn(2, 5, D, dtype=torch.float64),
            state=state._replace(pending_count=state.pending_count.float()),
        )


def test_memory_gate_formula():
    gate = MemoryGate(D, H, chunk_size=4, eps=1e-6).double()
    with torch.no_grad():
        for p in gate.parameters():
            p.add_(0.3 * torch.randn_like(p))
    h, y = torch.randn(2, 9, D, dtype=torch.float64), torch.randn(2, 9, D, dtype=torch.float64)
    out, _, diag = gate(h, y)
    mem = gate.memory(h)[0]
    rms = mem / mem.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * gate.norm.weight
    torch.testing.assert_close(out, y * torch.sigmoid(rms))
    torch.testing.assert_close(diag["gate"], torch.sigmoid(rms))


def test_model_with_titans_trains_every_parameter_and_logs_per_layer(make_tiny):
    model = make_tiny(ltm_type="titans", mag_layers=[0, 1]).train()
    ids = torch.randint(0, 256, (2, 30))
    out = model(ids, labels=ids)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    metrics = dict(out.metrics)
    for i in (0, 1):
        for key in ("surprise", "gate_mean", "memory_norm"):
            assert f"ltm/{key}/layer{i}" in metrics
    layers = [metrics[f"ltm/gate_mean/layer{i}"] for i in (0, 1)]
    assert metrics["ltm/gate_mean"] == pytest.approx(sum(layers) / 2, rel=1e-6)
    assert "ltm/usage" not in metrics and "ltm/gate_entropy" not in metrics  # ema-only terms
    assert len(out.memory_state) == 2 and all(isinstance(s, TitansState) for s in out.memory_state)


def test_model_memory_state_continues_the_stream(make_tiny):
    """memory_state returned by one call seeds the next (exact continuation is what the
    streaming and cache tests check); an EMA-shaped state is rejected by name."""
    model = make_tiny(ltm_type="titans")
    ids = torch.randint(0, 256, (2, 20))
    first = model(ids, use_cache=False)
    fresh = model(ids, use_cache=False).logits
    carried = model(ids, memory_state=first.memory_state, use_cache=False).logits
    assert (carried - fresh).abs().max() > 1e-6
    with pytest.raises(ValueError, match="memory_state"):
        model(ids, memory_state=torch.zeros(2, 16), use_cache=False)


def test_model_diagnostics_are_each_layers_own_over_real_tokens(make_tiny):
    """The logged ltm/*/layer{i} are the MAG layer's memory diagnostics (whose per-token values
    the reference tests above pin down) averaged over real tokens only: recomputed here from the
    inputs the layer received, with left padding that must not count."""
    model = make_tiny(ltm_type="titans", mag_layers=[0, 1])
    ids = torch.randint(0, 256, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    seen = {}
    hooks = [
        layer.ltm.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, args))
        for i, layer in enumerate(model.model.layers)
    ]
    out = model(ids, attention_mask=mask, use_cache=False)
    for h in hooks:
        h.remove()
    real = mask.bool()
    metrics = dict(out.metrics)
    for i, layer in enumerate(model.model.layers):
        h, _, memory_mask, state, _ = seen[i]
        retrieved, _, diag = layer.ltm.memory(h, memory_mask, state)
        gate = torch.sigmoid(layer.ltm.norm(retrieved))
        want = {
            "surprise": diag["surprise"][real].mean(),
            "gate_mean": gate[real].mean(),
            "memory_norm": diag["memory_norm"][real].mean(),
        }
        for key, value in want.items():
            assert metrics[f"ltm/{key}/layer{i}"] == pytest.approx(value.item(), rel=1e-5), key
    per_layer = [metrics[f"ltm/surprise/layer{i}"] for i in (0, 1)]
    assert out.ltm_surprise.item() == pytest.approx(sum(per_layer) / 2, rel=1e-5)
    assert metrics["ltm/surprise"] == pytest.approx(sum(per_layer) / 2, rel=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_recurrence_equals_the_autograd_loop(masked):
    """`fused_chunk_recurrence` (hand-written backward) against `chunk_recurrence` (autograd
    through the plain loop), float64: every W_j, S_n, and the gradients of all inputs, with
    rows that have not completed their last chunks when masked."""
    B, n, d = 3, 7, 4
    torch.manual_seed(1)

    def leaf(*shape, positive=False):
        t = torch.rand(*shape, dtype=torch.float64) if positive else torch.randn(*shape).double()
        return t.requires_grad_(True)

    inputs = [leaf(B, H, d, d), leaf(B, H, d, d), leaf(B, H, n, d, d), leaf(B, H, n, d, d)]
    inputs += [leaf(B, H, n, 1, 1, positive=True) for _ in range(3)]
    complete = None
    if masked:
        complete = torch.ones(B, 1, n, 1, 1, dtype=torch.bool)
        complete[0, :, 5:] = False
        complete[2, :, 2:] = False
    g_w = torch.randn(B, H, n + 1, d, d, dtype=torch.float64)
    g_s = torch.randn(B, H, d, d, dtype=torch.float64)
    ws, s = fused_chunk_recurrence(*inputs, complete)
    ref_ws, ref_s = chunk_recurrence(*inputs, complete)
    ref_ws = torch.stack(ref_ws, 2)
    torch.testing.assert_close(ws, ref_ws, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, ref_s, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((ws * g_w).sum() + (s * g_s).sum(), inputs)
    want = torch.autograd.grad((ref_ws * g_w).sum() + (ref_s * g_s).sum(), inputs)
    for name, a, b in zip(("w", "s", "kk", "vk", "lr", "eta", "keep"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_conv_size_one_reads_each_token_alone():
    mem = NeuralMemory(D, H, HD, chunk_size=4, conv_size=1).double()
    with torch.no_grad():
        for p in mem.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 11, D, dtype=torch.float64)
    out, state, _ = mem(x)
    torch.testing.assert_close(out, reference(mem, x)[0].detach(), rtol=1e-10, atol=1e-12)
    assert state.conv_tail.shape == (2, 0, 3 * H * HD)
    with pytest.raises(ValueError, match="conv_size"):
        NeuralMemory(D, H, HD, conv_size=0)


def test_no_diagnostics_without_metrics_and_the_same_outputs(make_tiny, monkeypatch):
    """`return_metrics=False` skips the titans diagnostics (their function is never called)
    and changes neither the logits, the loss, its gradients nor the memory state."""
    import cognate_model.titans as titans_module

    model = make_tiny(ltm_type="titans", mag_layers=[0, 1]).train()
    ids = torch.randint(0, 256, (2, 30))

    def run(metrics: bool):
        model.zero_grad()
        out = model(ids, labels=ids, use_cache=False, return_metrics=metrics)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    with_metrics, grads = run(True)
    assert with_metrics.ltm_surprise is not None

    def refuse(*args, **kwargs):
        raise AssertionError("diagnostics computed without metrics")

    monkeypatch.setattr(titans_module, "_diagnostics", refuse)
    plain, plain_grads = run(False)
    assert plain.ltm_surprise is None and plain.metrics is None
    torch.testing.assert_close(plain.logits, with_metrics.logits, rtol=0, atol=0)
    torch.testing.assert_close(plain.loss, with_metrics.loss, rtol=0, atol=0)
    for n, g in grads.items():
        torch.testing.assert_close(plain_grads[n], g, rtol=0, atol=0, msg=n)
    for a, b in zip(plain.memory_state, with_metrics.memory_state, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    base = model.model(ids, memory_diagnostics=False)
    assert base.memory_diagnostics == {}
