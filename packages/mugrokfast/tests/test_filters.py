"""Filters against a direct implementation of the Grokfast paper's Algorithms 1 and 2."""

from __future__ import annotations

import copy

import pytest
import torch
from mugrokfast import gradfilter_ema, gradfilter_ma, grokfast_filter
from torch import nn

from .conftest import grad_stream


# ---- the paper's formulas, written out directly --------------------------------------------
def paper_ema(stream, alpha, lamb):
    """Alg. 2: h_1 = g_1 then h = alpha h + (1 - alpha) g; output g + lamb h."""
    h, out = None, []
    for g in stream:
        h = g.clone() if h is None else h
        h = h * alpha + g * (1 - alpha)
        out.append(g + h * lamb)
    return out


def paper_ma(stream, window, lamb, warmup=True, kind="mean"):
    """Alg. 1: keep the last `window` grads; output g + lamb * mean (only once full if warmup)."""
    hist, out = [], []
    for g in stream:
        hist = (hist + [g.clone()])[-window:]
        if warmup and len(hist) < window:
            out.append(g.clone())
            continue
        s = torch.stack(hist).double().sum(0)
        avg = s / len(hist) if kind == "mean" else s
        out.append((g.double() + avg * lamb).float())
    return out


def _model_stream(model, stream, fn, **kw):
    """Feed each step's grads through the functional filter, collect the filtered grads."""
    state, outs = None, []
    for grads in stream:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        state = fn(model, state, **kw)
        outs.append([p.grad.clone() for p in model.parameters()])
    return outs, state


def _two_param_model():
    return nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2, bias=False))


def test_gradfilter_ema_matches_paper_bit_for_bit():
    model = _two_param_model()
    shapes = [p.shape for p in model.parameters()]
    stream = grad_stream(shapes, 12)
    outs, state = _model_stream(model, stream, gradfilter_ema, alpha=0.9, lamb=2.0)
    for k in range(len(shapes)):
        ref = paper_ema([s[k] for s in stream], 0.9, 2.0)
        for t in range(len(stream)):
            assert torch.equal(outs[t][k], ref[t])
    assert isinstance(state, dict) and set(state) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("kind", ["mean", "sum"])
def test_gradfilter_ma_matches_paper(warmup, kind):
    model = _two_param_model()
    shapes = [p.shape for p in model.parameters()]
    stream = grad_stream(shapes, 11)
    outs, state = _model_stream(
        model, stream, gradfilter_ma, window_size=4, lamb=5.0, filter_type=kind, warmup=warmup
    )
    for k in range(len(shapes)):
        ref = paper_ma([s[k] for s in stream], 4, 5.0, warmup, kind)
        for t in range(len(stream)):
            torch.testing.assert_close(outs[t][k], ref[t], rtol=1e-6, atol=1e-6)
    assert all(len(d) == 4 and d.maxlen == 4 for d in state.values())


def test_gradfilter_ma_trigger_disables_amplification():
    model = _two_param_model()
    stream = grad_stream([p.shape for p in model.parameters()], 6)
    outs, _ = _model_stream(model, stream, gradfilter_ma, window_size=2, trigger=True)
    for t in range(6):
        for k in range(3):
            assert torch.equal(outs[t][k], stream[t][k])


def test_state_never_aliases_grad():
    """zero_grad(set_to_none=False) + accumulation must not change the stored history."""
    model = nn.Linear(3, 3, bias=False)
    model.weight.grad = torch.ones(3, 3)
    ema = gradfilter_ema(model, None, alpha=0.5, lamb=1.0)
    ma = gradfilter_ma(model, None, window_size=3)  # window not full: grad untouched
    saved_ema, saved_ma = ema["weight"].clone(), ma["weight"][0].clone()
    model.weight.grad.zero_()
    model.weight.grad.add_(7.0)
    assert torch.equal(ema["weight"], saved_ema)
    assert torch.equal(ma["weight"][0], saved_ma)


def test_late_gradient_starts_its_own_filter():
    """The reference raises KeyError when a param gets its first grad after the first call."""
    model = _two_param_model()
    a, b = model[0].weight, model[1].weight
    a.grad = torch.ones_like(a)
    ema = gradfilter_ema(model, None, alpha=0.5, lamb=1.0)
    ma = gradfilter_ma(model, None, window_size=2, lamb=1.0)
    assert "1.weight" not in ema
    b.grad = torch.full_like(b, 2.0)
    a.grad = torch.ones_like(a)
    ema = gradfilter_ema(model, ema, alpha=0.5, lamb=1.0)
    torch.testing.assert_close(b.grad, torch.full_like(b, 4.0))  # h = g: g + 1 * g
    b.grad = torch.full_like(b, 2.0)
    a.grad = torch.ones_like(a)
    ma = gradfilter_ma(model, ma, window_size=2, lamb=1.0)
    assert len(ma["1.weight"]) == 1 and torch.equal(b.grad, torch.full_like(b, 2.0))


@pytest.mark.parametrize("bad", [dict(alpha=1.5), dict(alpha=-0.1)])
def test_gradfilter_ema_bad_args(bad):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="alpha"):
        gradfilter_ema(model, None, **bad)


def test_gradfilter_ma_bad_args():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="window_size"):
        gradfilter_ma(model, None, window_size=0)
    with pytest.raises(ValueError, match="filter_type"):
        gradfilter_ma(model, None, filter_type="median")


# ---- the optimizer core (ring buffer) -------------------------------------------------------
def _core(stream, **kw):
    states = [{} for _ in stream[0]]
    return [grokfast_filter(list(g), states, **kw) for g in stream], states


SHAPES = [(4, 3), (5,), (2, 3, 2)]


def test_core_ema_equals_paper_to_rounding():
    """The core computes h.lerp_(g, 1-alpha) and g + lamb*h as one add (two passes, for speed):
    the paper's maths, rounded differently from its alpha*h + (1-alpha)*g, so a few fp32 ulp."""
    stream = grad_stream(SHAPES, 10)
    outs, _ = _core(stream, filter="ema", alpha=0.95, lamb=1.5, window=3, ma_lamb=0.0)
    for k in range(len(SHAPES)):
        for t, ref in enumerate(paper_ema([s[k] for s in stream], 0.95, 1.5)):
            torch.testing.assert_close(outs[t][k], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["ema", "ma", "dual"])
def test_core_inplace_equals_out_of_place(mode):
    """inplace=True (what the Grokfast wrapper uses) writes the very same numbers into grads."""
    stream = grad_stream(SHAPES, 8)
    kw = dict(filter=mode, alpha=0.9, lamb=2.0, window=3, ma_lamb=5.0, warmup_steps=1)
    outs, states = _core(copy.deepcopy(stream), **kw)
    in_states = [{} for _ in SHAPES]
    for t, g in enumerate(copy.deepcopy(stream)):
        res = grokfast_filter(g, in_states, inplace=True, **kw)
        assert all(r is x for r, x in zip(res, g, strict=True))  # no new tensors
        assert all(torch.equal(a, b) for a, b in zip(g, outs[t], strict=True))
    for a, b in zip(states, in_states, strict=True):  # the filter state saw the raw gradients
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_core_ma_ring_buffer_equals_window_mean(window):
    """Several wraps of the ring buffer (incl. the periodic re-sum) against the plain mean."""
    stream = grad_stream(SHAPES, 4 * window + 3)
    outs, states = _core(stream, filter="ma", alpha=0.9, lamb=0.0, window=window, ma_lamb=3.0)
    for k in range(len(SHAPES)):
        for t, ref in enumerate(paper_ma([s[k] for s in stream], window, 3.0)):
            torch.testing.assert_close(outs[t][k], ref, rtol=1e-6, atol=1e-6)
    assert states[0]["grokfast_ma_buffer"].shape == (window, 4, 3)


def test_core_dual_is_sum_of_both_from_raw_gradient():
    stream = grad_stream(SHAPES, 9)
    outs, _ = _core(stream, filter="dual", alpha=0.9, lamb=2.0, window=3, ma_lamb=5.0)
    for k in range(len(SHAPES)):
        raw = [s[k] for s in stream]
        ema = paper_ema(raw, 0.9, 2.0)
        ma = paper_ma(raw, 3, 5.0)
        for t in range(len(raw)):
            expect = raw[t] + (ema[t] - raw[t]) + (ma[t] - raw[t])
            torch.testing.assert_close(outs[t][k], expect, rtol=1e-5, atol=1e-5)


def test_core_warmup_updates_state_without_amplifying():
    stream = grad_stream(SHAPES, 8)
    outs, _ = _core(stream, filter="ema", alpha=0.9, lamb=2.0, window=3, ma_lamb=0.0,
                    warmup_steps=3)  # fmt: skip
    for k in range(len(SHAPES)):
        ref = paper_ema([s[k] for s in stream], 0.9, 2.0)
        for t in range(8):
            if t < 3:  # warmup: the raw gradient itself
                assert torch.equal(outs[t][k], stream[t][k])
            else:  # the paper's filter up to rounding (see test_core_ema_equals_paper_to_rounding)
                torch.testing.assert_close(outs[t][k], ref[t], rtol=1e-6, atol=1e-6)


def test_core_does_not_modify_inputs_and_bf16_history_is_close():
    stream = grad_stream(SHAPES, 7)
    copies = copy.deepcopy(stream)
    outs, states = _core(stream, filter="ma", alpha=0.9, lamb=0.0, window=3, ma_lamb=5.0,
                         history_dtype=torch.bfloat16)  # fmt: skip
    assert all(
        torch.equal(a, b)
        for s, c in zip(stream, copies, strict=True)
        for a, b in zip(s, c, strict=True)
    )
    assert states[0]["grokfast_ma_buffer"].dtype == torch.bfloat16
    assert states[0]["grokfast_ma_sum"].dtype == torch.float32
    for k in range(len(SHAPES)):
        for t, ref in enumerate(paper_ma([s[k] for s in stream], 3, 5.0)):
            # bf16 keeps 8 mantissa bits: the mean is within ~2^-8 relative of the fp32 one
            torch.testing.assert_close(outs[t][k], ref, rtol=2e-2, atol=3e-2)


def test_gradfilter_ma_is_bit_identical_to_a_plain_python_mean():
    """The reference computes sum(list) / len(list) in the gradient dtype; so do we."""
    model = _two_param_model()
    shapes = [p.shape for p in model.parameters()]
    stream = grad_stream(shapes, 9)
    outs, _ = _model_stream(model, stream, gradfilter_ma, window_size=3, lamb=5.0)
    for k in range(len(shapes)):
        for t in range(len(stream)):
            window = [s[k] for s in stream[max(0, t - 2) : t + 1]]
            g = stream[t][k]
            expect = g + (sum(window) / len(window)) * 5.0 if len(window) == 3 else g
            assert torch.equal(outs[t][k], expect)


def test_running_sum_is_resynced_from_the_buffer_every_window():
    """Drift guard: right after each wrap the running sum IS the buffer's sum (bitwise)."""
    window = 4
    stream = [[g * 1e4] for (g,) in grad_stream([(64,)], 6 * window + 1)]
    states = [{}]
    for t, grads in enumerate(stream, start=1):
        grokfast_filter(grads, states, filter="ma", alpha=0.5, lamb=0.0, window=window, ma_lamb=1.0)
        st = states[0]
        if t % window == 0:
            assert st["grokfast_ma_index"] == 0
            assert torch.equal(st["grokfast_ma_sum"], st["grokfast_ma_buffer"].sum(0))
        else:  # in between: the add/sub running sum, equal up to rounding (values ~1e4)
            torch.testing.assert_close(
                st["grokfast_ma_sum"], st["grokfast_ma_buffer"].sum(0), rtol=1e-4, atol=1e-2
            )


def _elements_touched(fn) -> int:
    """Total numel of every aten op's outputs while fn runs (a machine-independent work count)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(o, torch.Tensor):
                    Count.total += o.numel()
            return out

    with Count():
        fn()
    return Count.total


def test_ma_step_work_does_not_grow_with_the_window():
    """O(1) per step: a (non-wrapping) MA step touches the same elements for window 8 or 128."""
    work = {}
    for window in (8, 128):
        states = [{}]
        kw = dict(filter="ma", alpha=0.5, lamb=0.0, window=window, ma_lamb=1.0)
        for (g,) in grad_stream([(32, 16)], window + 1):  # full, index 1: next step won't wrap
            grokfast_filter([g], states, **kw)
        g = torch.randn(32, 16)
        work[window] = _elements_touched(lambda: grokfast_filter([g], states, **kw))  # noqa: B023
    assert work[8] == work[128] > 0
