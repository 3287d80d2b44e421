"""Property tests: random shapes (1-D, 2-D tall/wide/square, 4-D) and hyperparameters."""

from __future__ import annotations

import copy
import io

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mugrokfast import MuGrokfast, zeropower_via_newtonschulz

from .test_filters import paper_ema, paper_ma

SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

dims = st.integers(1, 9)
shapes = st.one_of(
    st.tuples(dims),  # vector -> AdamW
    st.tuples(dims, dims),  # tall, wide or square matrix -> Muon
    st.tuples(dims, dims, st.integers(1, 3), st.integers(1, 3)),  # conv kernel -> Muon
)
hparams = st.fixed_dictionaries(
    {
        "lr": st.floats(1e-4, 1e-1),
        "muon_lr": st.floats(1e-4, 1e-1),
        "weight_decay": st.floats(0.0, 0.2),
        "momentum": st.floats(0.0, 0.99),
        "nesterov": st.booleans(),
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.999)),
        "grokfast": st.sampled_from([None, "ema", "ma", "dual"]),
        "grokfast_alpha": st.floats(0.0, 0.99),
        "grokfast_lambda": st.floats(0.0, 5.0),
        "grokfast_window": st.integers(1, 4),
        "grokfast_ma_lambda": st.floats(0.0, 5.0),
        "grokfast_warmup_steps": st.integers(0, 2),
    }
)


def _grads(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _expected_filtered(raw, hp):
    mode, warm = hp["grokfast"], hp["grokfast_warmup_steps"]
    if mode is None:
        return raw
    ema = paper_ema(raw, hp["grokfast_alpha"], hp["grokfast_lambda"])
    ma = paper_ma(raw, hp["grokfast_window"], hp["grokfast_ma_lambda"])
    out = []
    for t, g in enumerate(raw):
        extra = torch.zeros_like(g)
        if t >= warm:
            if mode in ("ema", "dual"):
                extra += ema[t] - g
            if mode in ("ma", "dual"):
                extra += ma[t] - g
        out.append(g + extra)
    return out


@SETTINGS
@given(shape=shapes, hp=hparams, seed=st.integers(0, 2**16))
def test_matches_paper_filter_then_torch_optimizer(shape, hp, seed):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape))
    ref = torch.nn.Parameter(
        p.detach().clone().reshape(shape[0], -1) if p.ndim > 1 else p.detach().clone()
    )
    opt = MuGrokfast([p], ns_dtype=torch.bfloat16, **hp)
    if p.ndim >= 2:
        ref_opt = torch.optim.Muon([ref], lr=hp["muon_lr"], weight_decay=hp["weight_decay"],
                                   momentum=hp["momentum"], nesterov=hp["nesterov"])  # fmt: skip
    else:
        ref_opt = torch.optim.AdamW([ref], lr=hp["lr"], betas=hp["betas"],
                                    weight_decay=hp["weight_decay"])  # fmt: skip
    raw = _grads(shape, 4, seed)
    for g, fg in zip(raw, _expected_filtered(raw, hp), strict=True):
        p.grad = g.clone()
        opt.step()
        ref.grad = fg.reshape(ref.shape)
        ref_opt.step()
    # No filter: the same operations. EMA (lerp form) and MA (another summation order) round
    # differently from the paper's formula, by ulps that bf16 Newton-Schulz may amplify.
    tol = 0 if hp["grokfast"] is None else 2e-2
    torch.testing.assert_close(p.detach().reshape(ref.shape), ref.detach(), rtol=tol, atol=tol)


@SETTINGS
@given(shape=shapes, hp=hparams, stop=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_resume_anywhere_is_bit_identical(shape, hp, stop, seed):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape))
    q = torch.nn.Parameter(p.detach().clone())
    raw = _grads(shape, 6, seed)
    opt = MuGrokfast([p], **hp)
    for g in raw:
        p.grad = g.clone()
        opt.step()
    opt_q = MuGrokfast([q], **hp)
    for g in raw[:stop]:
        q.grad = g.clone()
        opt_q.step()
    buf = io.BytesIO()
    torch.save(copy.deepcopy(opt_q.state_dict()), buf)
    buf.seek(0)
    fresh = torch.nn.Parameter(q.detach().clone())
    opt_f = MuGrokfast([fresh], **hp)
    opt_f.load_state_dict(torch.load(buf, weights_only=True))
    for g in raw[stop:]:
        fresh.grad = g.clone()
        opt_f.step()
    assert torch.equal(p, fresh)


@SETTINGS
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    scale=st.floats(1e-3, 1e3),
)
def test_newton_schulz_is_scale_invariant_and_transpose_equivariant(lead, rows, cols, scale):
    G = torch.randn(*lead, rows, cols, dtype=torch.float64)
    out = zeropower_via_newtonschulz(G, dtype=torch.float64)
    assert out.shape == G.shape and out.dtype == torch.float64
    torch.testing.assert_close(zeropower_via_newtonschulz(G * scale, dtype=torch.float64), out)
    torch.testing.assert_close(zeropower_via_newtonschulz(G.mT, dtype=torch.float64), out.mT)
    # spectral norm never exceeds the quintic's maximum over [0, 1] (about 1.21)
    assert torch.linalg.matrix_norm(out, ord=2).max() <= 1.21
