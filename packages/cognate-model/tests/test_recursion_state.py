"""Fixed-scale recursion, the explicit recursion state, test-time depth and compute-saving halting,
each against an independent reference (float64 RMS, a deeper run, the all-positions run)."""

import pytest
import torch
from cognate_model import recursion
from cognate_model.heads import halting_steps
from cognate_model.recursion import TRMRecursion, gathers_as_rows


def _ids(batch=3, seq=30):
    return torch.randint(0, 256, (batch, seq))


def _spread_halting(model):
    """Halting probabilities spread over (0, 1)."""
    with torch.no_grad():
        model.recursion.act_head.proj.bias.fill_(0.0)
        model.recursion.act_head.proj.weight.mul_(30.0)


def test_every_cycle_state_has_rms_one_whatever_the_input_scale():
    """TRM's post-norm residuals: y_c and z_c have RMS 1 per position at every cycle, even when
    the features come in 100x too large (pre-norm residual sums grew ~3.7x per cycle)."""
    torch.manual_seed(0)
    rec = TRMRecursion(32, 4, 64, 1e-6, 0.0, 4, 2, "per_cycle", True).double()
    x = 100 * torch.randn(2, 10, 32, dtype=torch.float64)
    mask = torch.ones(1, 1, 10, 10, dtype=torch.bool).tril()
    cos, sin = torch.ones(10, 8, dtype=torch.float64), torch.zeros(10, 8, dtype=torch.float64)
    out = rec(x, mask, cos, sin)
    for y in out.ys[1:]:
        rms = y.pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-6)
    z = out.state[1]
    rms = z.pow(2).mean(-1).sqrt()  # 1 / sqrt(1 + eps): atol 1e-6 with eps 1e-6
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-6)


def test_recursion_state_is_the_detached_final_pair(make_tiny):
    model = make_tiny().train()
    out = model(_ids(), output_hidden_states=True)
    y, z = out.recursion_state
    assert not y.requires_grad and not z.requires_grad
    torch.testing.assert_close(y, out.recursion_states[-1].detach(), rtol=0, atol=0)
    assert z.shape == y.shape == (3, 30, model.config.d_model)


@pytest.mark.parametrize("cycles", [1, 3])
def test_continuing_from_the_state_equals_a_deeper_run(make_tiny, cycles):
    """Carrying (y, z) into a second call = one call with twice the cycles (no halting)."""
    model = make_tiny(trm_cycles=cycles).double()
    ids = _ids()
    first = model(ids, act_halting=False)
    second = model(ids, act_halting=False, recursion_state=first.recursion_state)
    deep = model(ids, act_halting=False, trm_cycles=2 * cycles, output_hidden_states=True)
    torch.testing.assert_close(second.logits, deep.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(second.recursion_state[1], deep.recursion_state[1])
    mid = model.lm_logits(deep.recursion_states[cycles])
    torch.testing.assert_close(first.logits, mid, rtol=0, atol=1e-10)


def test_test_time_depth_extends_the_trained_cycles(make_tiny):
    """trm_cycles=C+3 runs C+3 cycles whose first C answers are the default run's."""
    model = make_tiny().double()
    ids = _ids()
    c = model.config.trm_cycles
    base = model(ids, act_halting=False, output_hidden_states=True, labels=ids)
    deep = model(ids, act_halting=False, output_hidden_states=True, labels=ids, trm_cycles=c + 3)
    assert len(deep.recursion_states) == c + 4 and deep.cycle_losses.shape == (c + 4,)
    assert deep.halt_probs.shape[0] == c + 3
    for a, b in zip(base.recursion_states, deep.recursion_states, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(deep.cycle_losses[: c + 1], base.cycle_losses)
    torch.testing.assert_close(deep.lm_loss, deep.cycle_losses[-1])


def test_bad_recursion_arguments_raise(make_tiny):
    model = make_tiny()
    ids = _ids()
    with pytest.raises(ValueError, match="trm_cycles must be a positive integer"):
        model(ids, trm_cycles=0)
    y = torch.zeros(3, 29, model.config.d_model)
    with pytest.raises(ValueError, match=r"recursion_state y must be \(batch, seq_len, d_model\)"):
        model(ids, recursion_state=(y, y))
    with pytest.raises(ValueError, match="recursion_state must be a pair"):
        model(ids, recursion_state=y)


def _halting_setup(make_tiny, **overrides):
    """A model whose tokens halt at several different cycles, and the free run's reference."""
    model = make_tiny(trm_cycles=4, **overrides).double()
    _spread_halting(model)
    return model


def _active_reference(free, steps, model):
    """Logits of each token at its halting cycle, from the run without halting."""
    per_cycle = torch.stack([model.lm_logits(y) for y in free.recursion_states[1:]])
    index = (steps - 1)[None, ..., None].expand(1, -1, -1, per_cycle.shape[-1])
    return per_cycle.gather(0, index)[0]


def _force_gather(monkeypatch, gather: bool) -> None:
    """Make every halting cycle gather (True) or compute all and freeze (False)."""
    monkeypatch.setattr(recursion, "gather_pays", lambda *args: gather)


def _block_shapes(model, ids, **kwargs) -> tuple[list, object]:
    """Run `model(ids, act_halting=True, **kwargs)` recording the (rows, positions) of each
    recursion block call; returns (that list, the output)."""
    shapes = []
    hook = model.recursion.block.register_forward_pre_hook(
        lambda m, args: shapes.append(tuple(args[0].shape[:2]))
    )
    try:
        out = model(ids, act_halting=True, **kwargs)
    finally:
        hook.remove()
    return shapes, out


@pytest.mark.parametrize(("batch", "seq"), [(4, 40), (1, 40), (4, 80), (1, 80)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("gather", [True, False])
def test_gathered_active_update_equals_the_full_update(
    make_tiny, monkeypatch, padded, gather, batch, seq
):
    """Halted positions leave the computation (or, not gathered, are computed and frozen); the
    active ones get exactly the update the all-positions run gives them (left padding,
    per-row rotary positions included). The active positions run as B rows of the most any
    row has (batch 1: one row of N), or (one sequence of more than 64 keys) each its own
    row of one query. The first cycle computes every position; padding halts after it."""
    model = _halting_setup(make_tiny)
    _force_gather(monkeypatch, gather)
    ids = _ids(batch, seq)
    kwargs = {}
    real = torch.ones(batch, seq, dtype=torch.bool)
    if padded:
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[-1, :17] = 0
        if batch > 1:
            mask[1, :9] = 0
        kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_min(0)}
        real = mask.bool()
    free = model(ids, act_halting=False, output_hidden_states=True, **kwargs)
    threshold = free.halt_probs.flatten().quantile(0.6).item()
    model.config.act_threshold = threshold
    shapes, halting = _block_shapes(model, ids, **kwargs)
    steps = halting_steps(free.halt_probs.logit(), threshold)
    assert len(steps[real].unique()) >= 3, "need tokens halting at several cycles"
    assert torch.equal(halting.act_steps[real], steps[real])
    torch.testing.assert_close(
        halting.logits[real], _active_reference(free, steps, model)[real], rtol=0, atol=1e-10
    )
    per_cycle = model.config.trm_micro_steps + 1
    assert shapes[:per_cycle] == [(batch, seq)] * per_cycle
    assert len(shapes) > per_cycle
    assert shapes[per_cycle] == _layout((steps > 1) & real, gather)


def _layout(active: torch.Tensor, gather: bool) -> tuple[int, int]:
    """(rows, positions) of a halting cycle's block calls over the `active` (B, T) positions
    (`gather`: what `gather_pays` is forced to say): all of them; B rows of the most any row
    has; or N rows of one query."""
    batch, seq = active.shape
    if bool(active.all()) or not gather:
        return (batch, seq)
    if gathers_as_rows(batch, seq):
        return (batch, int(active.sum(1).max()))
    return (int(active.sum()), 1)


@pytest.mark.parametrize(("batch", "seq"), [(4, 40), (1, 80)])
def test_each_cycle_computes_only_the_active_positions(make_tiny, monkeypatch, batch, seq):
    """Each block call of cycle c sees exactly the positions not yet halted, counted from the
    free run's halting steps: as B rows of the most any row has (the others' spare slots are
    computed and dropped), or (one sequence of more than 64 keys) N rows of one query."""
    model = _halting_setup(make_tiny)
    _force_gather(monkeypatch, True)
    ids = _ids(batch, seq)
    free = model(ids, act_halting=False)
    threshold = free.halt_probs.flatten().quantile(0.5).item()
    model.config.act_threshold = threshold
    steps = halting_steps(free.halt_probs.logit(), threshold)
    shapes, _ = _block_shapes(model, ids)
    per_cycle = model.config.trm_micro_steps + 1
    expected = [(batch, seq)] * per_cycle
    for c in range(1, 4):
        active = steps > c  # not halted after cycle c
        if not active.any():
            break
        rows = (int(active.sum()), 1)
        if gathers_as_rows(batch, seq):
            rows = (batch, int(active.sum(1).max()))
        expected += [rows] * per_cycle
    assert shapes == expected
    assert expected[-1][0] * expected[-1][1] < batch * seq


@pytest.mark.parametrize(
    ("batch", "seq", "halted", "gathers"),
    [
        (1, 16, 0.8, False),
        (8, 16, 0.8, False),
        (32, 16, 0.5, False),
        (1, 40, 0.2, True),
        (8, 40, 0.8, True),
        (8, 40, 0.02, False),
        (1, 80, 0.2, False),
        (8, 80, 0.8, True),
        (1, 80, 0.8, True),
    ],
)
def test_gathers_only_where_it_pays(make_tiny, batch, seq, halted, gathers):
    """The default rule (`gather_pays`): beyond one window (16) of new tokens a cycle gathers
    the active positions as B rows of the most any row has unless some row has them all;
    within one window only with at least 128 slots left out; a single sequence of more than
    64 keys (one-query rows) only with most positions halted."""
    model = _halting_setup(make_tiny)
    ids = _ids(batch, seq)
    free = model(ids, act_halting=False)
    # the share `halted` of the positions halts after cycle 1
    model.config.act_threshold = free.halt_probs[0].flatten().quantile(1 - halted).item()
    shapes, _ = _block_shapes(model, ids)
    per_cycle = model.config.trm_micro_steps + 1
    assert (shapes[per_cycle] != (batch, seq)) == gathers


def test_compiled_path_freezes_instead_and_agrees(make_tiny, monkeypatch):
    """Under torch.compile/export (no data-dependent shapes) halted positions are computed and
    frozen: the same logits and halting as the gathering path."""
    model = _halting_setup(make_tiny)
    ids = _ids(2, 40)
    model.config.act_threshold = 0.5
    gathered = model(ids)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    frozen = model(ids)
    torch.testing.assert_close(frozen.logits, gathered.logits, rtol=0, atol=1e-10)
    assert torch.equal(frozen.act_steps, gathered.act_steps)
    torch.testing.assert_close(frozen.halt_probs, gathered.halt_probs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gather", [None, True])
def test_cached_decoding_at_test_time_depth_equals_a_full_forward(make_tiny, monkeypatch, gather):
    """trm_cycles beyond training through the cache (prefill + one token a step, halting on
    with tokens halting at several cycles) = the full forward at that depth; generate() takes
    it as a model kwarg. gather=True: every halting cycle gathers (the steps' queries then
    read their spans across the held keys), None: the default rule."""
    from cognate_model import CognateCache

    model = _halting_setup(make_tiny)
    if gather:
        _force_gather(monkeypatch, True)
    model.config.act_threshold = 0.5
    ids = _ids(2, 30)
    full = model(ids, use_cache=False, trm_cycles=7)
    cache, logits = CognateCache(model.config), []
    for t0, t1 in [(0, 12), *((t, t + 1) for t in range(12, 30))]:
        logits.append(model(ids[:, t0:t1], past_key_values=cache, trm_cycles=7).logits)
    torch.testing.assert_close(torch.cat(logits, 1), full.logits, rtol=0, atol=1e-10)
    assert full.halt_probs.shape[0] == 7 and len(full.act_steps.unique()) >= 2
    out = model.generate(ids[:, :5], max_new_tokens=4, do_sample=False, trm_cycles=7)
    ref = ids[:, :5]
    for _ in range(4):
        nxt = model(ref, use_cache=False, trm_cycles=7).logits[:, -1].argmax(-1, keepdim=True)
        ref = torch.cat((ref, nxt), 1)
    assert torch.equal(out, ref)


def _rms(h, eps):
    return h / (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _cross_attention(attn, h, feats, mask):
    """Softmax attention of h's queries over feats' keys/values, written out (no rotary)."""
    B, T, D = h.shape
    H, hd = attn.n_heads, attn.head_dim
    q = (h @ attn.q_proj.weight.T).view(B, T, H, hd).transpose(1, 2)
    k = (feats @ attn.k_proj.weight.T).view(B, -1, H, hd).transpose(1, 2)
    v = (feats @ attn.v_proj.weight.T).view(B, -1, H, hd).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / hd**0.5
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(B, T, D) @ attn.o_proj.weight.T


def test_cycles_follow_the_recursion_pseudocode():
    """ys against the loop written out in float64: (y, z) = (x, x); per cycle n times
    z = net(z + y, attend to x), then y = net(y + z); net: post-norm residuals with a
    weightless RMS norm (the attention's keys/values from the RMS-normed, weighted features)."""
    torch.manual_seed(0)
    D, T, eps, n, C = 32, 9, 1e-6, 2, 3
    rec = TRMRecursion(D, 4, 64, eps, 0.0, C, n, "per_cycle", False).double()
    with torch.no_grad():
        rec.block.kv_norm.weight.uniform_(0.5, 1.5)
    blk = rec.block
    x = torch.randn(2, T, D, dtype=torch.float64)
    mask = torch.ones(1, 1, T, T, dtype=torch.bool).tril().triu(-3)  # a window of 4
    cos, sin = torch.ones(T, 8, dtype=torch.float64), torch.zeros(T, 8, dtype=torch.float64)
    feats = _rms(x, eps) * blk.kv_norm.weight

    def net(h, attend):
        if attend:
            h = _rms(h + _cross_attention(blk.attn, h, feats, mask), eps)
        return _rms(h + blk.mlp(h), eps)

    y, z, want = x, x, [x]
    for _ in range(C):
        for _ in range(n):
            z = net(z + y, attend=True)
        y = net(y + z, attend=False)
        want.append(y)
    with torch.no_grad():
        got = rec(x, mask, cos, sin)
    assert len(got.ys) == C + 1
    for a, b in zip(got.ys, want, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.state[1], z.detach(), rtol=1e-10, atol=1e-10)
