"""Muon against torch.optim.Muon: same arguments, same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from mugrokfast import Muon

from .conftest import grad_stream

SHAPES = [(8, 8), (8, 8), (12, 4), (4, 12), (8, 8)]  # same shapes share one batched NS call


def _run(opt_cls, shapes, steps=5, **kw):
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = opt_cls(params, **kw)
    for grads in grad_stream(shapes, steps, seed=3):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize(
    "adjust_lr_fn", [None, "original", "match_rms_adamw", "spectral_unclamped"]
)
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("block", [None, 32], ids=["whole-tensors", "blocks-of-32"])
def test_bit_identical_to_torch_muon_with_bf16_ns(adjust_lr_fn, nesterov, block, monkeypatch):
    import mugrokfast._blocked

    try:  # spectral_unclamped came to torch's Muon after 2.11; ours has it on every torch
        torch.optim.Muon([torch.nn.Parameter(torch.ones(2, 2))], adjust_lr_fn=adjust_lr_fn)
    except ValueError:
        pytest.skip(f"this torch's Muon has no adjust_lr_fn={adjust_lr_fn!r}")
    if block:  # the cache-blocked CPU Nesterov step, several blocks (and a tail) per matrix
        monkeypatch.setattr(mugrokfast._blocked, "BLOCK", block)
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours, opt = _run(Muon, SHAPES, ns_dtype=torch.bfloat16, **kw)
    ref, ref_opt = _run(torch.optim.Muon, SHAPES, **kw)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"])


@pytest.mark.parametrize("block", [None, 32], ids=["whole-tensors", "blocks-of-32"])
def test_fp32_ns_follows_torch_muons_recipe_exactly(block, monkeypatch):
    """ns_dtype=float32: the Nesterov update goes straight into the fp32 NS input (blocked on
    CPU); the numbers are torch.optim.Muon's per-tensor recipe with an fp32 iteration."""
    import mugrokfast._blocked
    from mugrokfast import zeropower_via_newtonschulz
    from mugrokfast.muon import adjust_lr

    if block:
        monkeypatch.setattr(mugrokfast._blocked, "BLOCK", block)
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9)
    ours, _ = _run(Muon, SHAPES, ns_dtype=torch.float32, **kw)
    torch.manual_seed(1)
    ref = [torch.randn(s) for s in SHAPES]
    bufs = [torch.zeros(s) for s in SHAPES]
    for grads in grad_stream(SHAPES, 5, seed=3):
        for p, g, buf in zip(ref, grads, bufs, strict=True):
            buf.lerp_(g, 1 - kw["momentum"])  # torch's _single_tensor_muon, fp32 NS
            update = zeropower_via_newtonschulz(g.lerp(buf, kw["momentum"]), dtype=torch.float32)
            p.mul_(1 - kw["lr"] * kw["weight_decay"])
            p.add_(update, alpha=-adjust_lr(kw["lr"], None, tuple(p.shape)))
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_default_fp32_ns_on_cpu_is_close_to_torch():
    """fp32 NS is the more accurate one; the difference is bf16 rounding of the update."""
    torch.manual_seed(1)
    start = [torch.randn(s) for s in SHAPES]
    ours, _ = _run(Muon, SHAPES, lr=0.02)
    ref, _ = _run(torch.optim.Muon, SHAPES, lr=0.02)
    for a, b, p0 in zip(ours, ref, start, strict=True):
        moved = (b - p0).norm()
        assert (a - b).norm() < 0.03 * moved


def test_conv_kernels_are_flattened_to_out_by_rest():
    """A (out, in, k, k) kernel behaves exactly as torch's Muon on its (out, in*k*k) view."""
    shape4 = (6, 3, 2, 2)
    torch.manual_seed(1)
    w4 = torch.nn.Parameter(torch.randn(shape4))
    w2 = torch.nn.Parameter(w4.detach().reshape(6, 12).clone())
    ours = Muon([w4], lr=0.05, ns_dtype=torch.bfloat16, adjust_lr_fn="match_rms_adamw")
    ref = torch.optim.Muon([w2], lr=0.05, adjust_lr_fn="match_rms_adamw")
    for (g,) in grad_stream([shape4], 4):
        w4.grad, w2.grad = g, g.reshape(6, 12)
        ours.step()
        ref.step()
    assert torch.equal(w4.detach().reshape(6, 12), w2.detach())


def test_lr_scheduler_and_closure():
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = Muon([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    sched.step()
    assert loss.item() > 0 and opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(momentum=1.0), "momentum"),
        (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
        (dict(eps=0.0), "eps"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(adjust_lr_fn="bogus"), "adjust_lr_fn"),
        (dict(ns_dtype=torch.int32), "ns_dtype"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], **kwargs)


def test_vectors_and_sparse_and_complex_are_refused():
    with pytest.raises(ValueError, match="params"):
        Muon([torch.nn.Parameter(torch.randn(3))])
    p = torch.nn.Parameter(torch.randn(3, 3))
    opt = Muon([p])
    p.grad = torch.randn(3, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    c = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    c.grad = torch.randn(3, 3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        Muon([c]).step()


def test_loads_a_torch_muon_state_dict_and_continues_identically():
    shapes = [(6, 4), (4, 6)]
    ref, ref_opt = _run(torch.optim.Muon, shapes, steps=3, lr=0.02)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt = Muon(ours, lr=0.02, ns_dtype=torch.bfloat16)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # no ns_dtype: our default fills it
    assert opt.param_groups[0]["ns_dtype"] == torch.bfloat16
    for grads in grad_stream(shapes, 3, seed=7):
        for p, q, g in zip(ours, ref, grads, strict=True):
            p.grad, q.grad = g, g.clone()
        opt.step()
        ref_opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, ref, strict=True))


def test_generator_params_and_refused_groups():
    a, b = torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(2, 4))
    opt = Muon(p for p in [a])
    assert opt.param_groups[0]["params"] == [a]
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": (p for p in [b]), "momentum": 2.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": (p for p in [b])})
    assert opt.param_groups[1]["params"] == [b]


def test_same_shaped_matrices_share_one_newton_schulz_call(monkeypatch):
    import mugrokfast.muon as muon_mod

    calls = []
    real = muon_mod.newtonschulz_  # the iteration of zeropower_via_newtonschulz

    def spy(X, *args, **kwargs):
        calls.append(tuple(X.shape))
        return real(X, *args, **kwargs)

    monkeypatch.setattr(muon_mod, "newtonschulz_", spy)
    # on CPU one matrix per call (faster there) ...
    _run(Muon, SHAPES + [(2, 2, 3, 2)], steps=1)  # the kernel flattens to (2, 12)
    assert sorted(calls) == sorted([(8, 8)] * 3 + [(12, 4), (4, 12), (2, 12)])
    # ... batched as on accelerators when asked, with the very same numbers
    calls.clear()
    monkeypatch.setattr(muon_mod, "BATCH_ON_CPU", True)
    batched, _ = _run(Muon, SHAPES + [(2, 2, 3, 2)], steps=3)
    assert sorted(calls) == sorted([(3, 8, 8), (12, 4), (4, 12), (2, 12)] * 3)
    monkeypatch.setattr(muon_mod, "BATCH_ON_CPU", False)
    single, _ = _run(Muon, SHAPES + [(2, 2, 3, 2)], steps=3)
    assert all(torch.equal(a, b) for a, b in zip(batched, single, strict=True))
