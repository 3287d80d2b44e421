"""Grokfast(base_optimizer): the paper's filter in front of any torch optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from mugrokfast import Grokfast, gradfilter_ema, gradfilter_ma
from torch.optim import Optimizer

from .conftest import TinyLM, lm_loss


def _run_wrapper(model, steps, base_cls=torch.optim.AdamW, **kw):
    opt = Grokfast(base_cls(model.parameters(), lr=1e-2), **kw)
    for t in range(steps):
        opt.zero_grad()
        lm_loss(model, t).backward()
        opt.step()
    return opt


def _run_functional(model, steps, fn, base_cls=torch.optim.AdamW, **kw):
    opt = base_cls(model.parameters(), lr=1e-2)
    state = None
    for t in range(steps):
        opt.zero_grad()
        lm_loss(model, t).backward()
        state = fn(model, state, **kw)
        opt.step()


@pytest.mark.parametrize("base_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_ema_equals_functional_filter_then_base(base_cls):
    model = TinyLM()
    ref = copy.deepcopy(model)
    _run_wrapper(model, 5, base_cls, filter="ema", alpha=0.9, lamb=2.0)
    _run_functional(ref, 5, gradfilter_ema, base_cls, alpha=0.9, lamb=2.0)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        # the wrapper's filter uses a faster lerp form of the EMA: equal up to fp32 rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ma_equals_functional_filter_then_base():
    model = TinyLM()
    ref = copy.deepcopy(model)
    _run_wrapper(model, 8, filter="ma", window_size=3, ma_lamb=5.0)
    _run_functional(ref, 8, gradfilter_ma, window_size=3, lamb=5.0)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_none_filter_is_the_base_optimizer():
    model = TinyLM()
    ref = copy.deepcopy(model)
    _run_wrapper(model, 3, filter=None)
    _run_functional(ref, 3, lambda m, s: s)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters(), strict=True))


def test_behaves_as_an_optimizer_for_schedulers():
    model = TinyLM()
    base = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt = Grokfast(base)
    assert isinstance(opt, Optimizer)
    assert opt.param_groups is base.param_groups
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for t in range(2):
        opt.zero_grad()
        lm_loss(model, t).backward()
        opt.step()
        sched.step()
    expected = 0.1 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 4)).item()) / 2
    assert base.param_groups[0]["lr"] == pytest.approx(expected)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert len(opt.state) == len(list(model.parameters()))  # the filter's own state
    assert (
        "exp_avg" in base.state[model.fc1.weight] and "exp_avg" not in opt.state[model.fc1.weight]
    )


def test_add_param_group_and_set_lambda_reach_the_base():
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))
    base = torch.optim.SGD([a], lr=0.1)
    opt = Grokfast(base, filter="ma", window_size=2)
    opt.add_param_group({"params": [b], "grokfast_window": 5})
    assert len(base.param_groups) == 2 and base.param_groups[1]["grokfast_window"] == 5
    opt.set_grokfast_lambda(0.25)
    assert all(g["grokfast_ma_lambda"] == 0.25 for g in base.param_groups)


def test_grad_scaler_unscales_before_filtering():
    model = TinyLM()
    plain = copy.deepcopy(model)
    opt = Grokfast(torch.optim.AdamW(model.parameters(), lr=1e-2), filter="dual", window_size=2)
    ref = Grokfast(torch.optim.AdamW(plain.parameters(), lr=1e-2), filter="dual", window_size=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for t in range(4):
        opt.zero_grad()
        scaler.scale(lm_loss(model, t)).backward()
        scaler.step(opt)  # unscales the grads of opt.param_groups, then opt.step()
        scaler.update()
        ref.zero_grad()
        lm_loss(plain, t).backward()
        ref.step()
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(filter="median"), "filter"),
        (dict(alpha=1.2), "alpha"),
        (dict(lamb=-1.0), "lamb"),
        (dict(window_size=0), "window_size"),
        (dict(ma_lamb=-1.0), "ma_lamb"),
        (dict(warmup_steps=-3), "warmup_steps"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.1)
    with pytest.raises(ValueError, match=match):
        Grokfast(base, **kwargs)


def test_base_must_be_an_optimizer():
    with pytest.raises(ValueError, match="base_optimizer"):
        Grokfast([torch.nn.Parameter(torch.randn(2))])
    # (issue 13: this used to assert a ValueError naming state_dict; a plain base-optimizer
    # checkpoint now loads, the filter starting fresh: see test_torch_optim_invariants.py)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.1, momentum=0.9)
    plain.param_groups[0]["params"][0].grad = torch.ones(2)
    plain.step()
    opt = Grokfast(torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.5, momentum=0.9))
    opt.load_state_dict(plain.state_dict())
    p = opt.param_groups[0]["params"][0]
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["grokfast"] == "ema"
    assert torch.equal(opt.base_optimizer.state[p]["momentum_buffer"], torch.ones(2))
    assert len(opt.state) == 0  # no filter state: it starts at the next step
