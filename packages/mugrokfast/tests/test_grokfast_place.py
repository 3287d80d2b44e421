"""grokfast_place="update": the EMA on Muon's orthogonalised update, against the formula.

The reference below is written from the formulas of the MuGrokfast docstring, in float64, one
matrix at a time: Muon (momentum, Nesterov, Newton-Schulz, decoupled weight decay, lr scaled by
``sqrt(max(1, rows/cols))``) with Grokfast's EMA either on the raw gradient (``"grad"``, the
paper's filter) or on the orthogonalised update ``o`` with a relative weight (``"update"``)::

    h <- alpha*h + (1-alpha)*o   (h starts at the first o)
    a  = o + lamb * (|o| / |h|) * h
    o <- a * |o| / |a|
"""

from __future__ import annotations

import copy
import io
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from mugrokfast import MuGrokfast, zeropower_via_newtonschulz
from torch import nn

# two (8, 6) matrices batched together, a non-square (6, 8), a conv kernel, a tall (10, 3)
SHAPES = [(8, 6), (8, 6), (6, 8), (4, 3, 2), (10, 3)]
VECTOR = (5,)  # an AdamW parameter: keeps the gradient filter whatever the place
HP = dict(lr=2e-3, betas=(0.9, 0.98), weight_decay=0.1, muon_lr=0.03, momentum=0.9)
STEPS = 6


def _stream(steps: int = STEPS, seed: int = 0) -> list[list[torch.Tensor]]:
    """Gradients with a slow drifting part, so that the EMA matters."""
    g = torch.Generator().manual_seed(seed)
    slow = [torch.randn(s, generator=g, dtype=torch.float64) for s in [*SHAPES, VECTOR]]
    return [
        [0.5 * s + torch.randn(s.shape, generator=g, dtype=torch.float64) for s in slow]
        for _ in range(steps)
    ]


def _start(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in [*SHAPES, VECTOR]]


def _reference(start, stream, place, alpha, lamb, warmup=0):
    """The Muon matrices of SHAPES after the stream, from the formulas (float64)."""
    lr, wd, mu = HP["muon_lr"], HP["weight_decay"], HP["momentum"]
    params = [p.clone() for p in start[: len(SHAPES)]]
    bufs = [torch.zeros_like(p) for p in params]
    slow: list[torch.Tensor | None] = [None] * len(params)
    for t, grads in enumerate(stream, start=1):
        for k, p in enumerate(params):
            g = grads[k]
            if place == "grad":  # the paper's EMA on the raw gradient
                slow[k] = g.clone() if slow[k] is None else alpha * slow[k] + (1 - alpha) * g
                if t > warmup:
                    g = g + lamb * slow[k]
            bufs[k] = mu * bufs[k] + (1 - mu) * g
            u = (1 - mu) * g + mu * bufs[k]  # Nesterov
            flat = u.reshape(p.shape[0], -1)
            o = zeropower_via_newtonschulz(flat, dtype=torch.float64).reshape(p.shape)
            if place == "update":
                slow[k] = o.clone() if slow[k] is None else alpha * slow[k] + (1 - alpha) * o
                if t > warmup and lamb != 0:
                    a = o + lamb * (o.norm() / slow[k].norm()) * slow[k]
                    o = a * (o.norm() / a.norm())
            scale = lr * math.sqrt(max(1.0, flat.shape[0] / flat.shape[1]))
            p.mul_(1 - lr * wd).sub_(scale * o)
    return params


def _ours(start, stream, **kw):
    """MuGrokfast in float64 over the stream; returns its parameters and itself."""
    params = [nn.Parameter(p.clone()) for p in start]
    opt = _make(params, **kw)
    _run(params, opt, stream)
    return params, opt


def _make(params, **kw):
    groups = [
        {"params": params[: len(SHAPES)], "use_muon": True},
        {"params": params[len(SHAPES) :], "use_muon": False},
    ]
    return MuGrokfast(groups, **(HP | {"ns_dtype": torch.float64, "grokfast": "ema"} | kw))


def _run(params, opt, stream):
    for grads in stream:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()


def _close(ours, ref):
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        # the library's EMA is h.lerp_(o, 1 - alpha), the reference alpha*h + (1-alpha)*o:
        # float64 rounding apart
        torch.testing.assert_close(a.detach(), b, rtol=1e-11, atol=1e-12, msg=f"matrix {k}")


@pytest.mark.parametrize("batched", [False, True], ids=["per-matrix", "batched-ns"])
@pytest.mark.parametrize("warmup", [0, 2])
@pytest.mark.parametrize("lamb", [0.5, 2.0])
def test_update_place_equals_the_formula(lamb, warmup, batched, monkeypatch):
    import mugrokfast.muon as muon_mod

    monkeypatch.setattr(muon_mod, "BATCH_ON_CPU", batched)  # the (8, 6) pair in one NS call
    start, stream = _start(), _stream()
    ours, opt = _ours(
        start, stream, grokfast_place="update", grokfast_alpha=0.9, grokfast_lambda=lamb,
        grokfast_warmup_steps=warmup,
    )  # fmt: skip
    _close(ours[: len(SHAPES)], _reference(start, stream, "update", 0.9, lamb, warmup))
    # and the filter changes the run: without it (lamb 0) the matrices end elsewhere
    plain = _reference(start, stream, "update", 0.9, 0.0)
    assert all(not torch.allclose(a, b) for a, b in zip(ours, plain, strict=False))
    for p in ours[: len(SHAPES)]:
        st = opt.state[p]
        assert st["grokfast_step"] == STEPS and "grokfast_ema" not in st
        assert st["grokfast_update_ema"].dtype == p.dtype


def test_update_place_keeps_the_step_size_of_muon():
    """|o| after the filter is |o| before it: the filter tilts the direction only. Two copies
    of one run take their third step with the filter's lambda and with lambda 0 (h updated,
    nothing added): the steps differ, their norms agree."""
    start, stream = _start(), _stream(steps=3)
    params, opt = _ours(start, stream[:2], grokfast_place="update", grokfast_lambda=1.0,
                        grokfast_alpha=0.5)  # fmt: skip
    before = [p.detach().clone() for p in params]
    other_params = copy.deepcopy(params)
    other = _make(other_params, grokfast_place="update", grokfast_alpha=0.5)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))  # not shared tensors
    other.set_grokfast_lambda(0.0)
    _run(params, opt, stream[2:])
    _run(other_params, other, stream[2:])
    decay = 1 - HP["muon_lr"] * HP["weight_decay"]
    for f, p, b in zip(params, other_params, before[: len(SHAPES)], strict=False):
        step_f, step_p = f.detach() - b * decay, p.detach() - b * decay
        assert not torch.allclose(step_f, step_p)
        torch.testing.assert_close(step_f.norm(), step_p.norm(), rtol=1e-9, atol=0)


def test_grad_place_is_the_papers_filter_and_the_default():
    start, stream = _start(), _stream()
    explicit, _ = _ours(start, stream, grokfast_place="grad", grokfast_alpha=0.9)
    default, _ = _ours(start, stream, grokfast_alpha=0.9)
    assert all(torch.equal(a, b) for a, b in zip(explicit, default, strict=True))
    ref = _reference(start, stream, "grad", 0.9, 2.0)  # MuGrokfast's default lambda
    _close(explicit[: len(SHAPES)], ref)


def test_adamw_groups_keep_the_gradient_filter():
    start, stream = _start(), _stream()
    upd, opt = _ours(start, stream, grokfast_place="update")
    grad, _ = _ours(start, stream, grokfast_place="grad")
    assert torch.equal(upd[-1], grad[-1])  # the vector: AdamW on the EMA-filtered gradient
    assert "grokfast_ema" in opt.state[upd[-1]]


def test_update_place_with_no_filter_is_plain_muon():
    start, stream = _start(), _stream()
    off, opt = _ours(start, stream, grokfast_place="update", grokfast=None)
    none, _ = _ours(start, stream, grokfast=None)
    assert all(torch.equal(a, b) for a, b in zip(off, none, strict=True))
    assert all(not any(k.startswith("grokfast") for k in st) for st in opt.state.values())


def test_equals_the_benchmarks_slow_muon_when_present(monkeypatch):
    """``benchmarks/filter_study.py``'s SlowMuon(place="update", relative=1), the study the
    library variant came from, where the repository's benchmarks folder is present (skipped
    elsewhere: the tests do not depend on it)."""
    folder = Path(__file__).resolve().parents[3] / "benchmarks"
    if not (folder / "filter_study.py").exists():
        pytest.skip("benchmarks/filter_study.py is not in this checkout")
    monkeypatch.syspath_prepend(str(folder))
    filter_study = pytest.importorskip("filter_study")
    import mugrokfast.newton_schulz as ns

    monkeypatch.setattr(ns, "default_ns_dtype", lambda device: torch.float64)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    start, stream = _start(), _stream()
    ours, _ = _ours(start, stream, grokfast_place="update", grokfast_alpha=0.9,
                    grokfast_lambda=0.5, grokfast_warmup_steps=1)  # fmt: skip
    mats = [nn.Parameter(p.clone()) for p in start[: len(SHAPES)]]
    slow = filter_study.SlowMuon(mats, lr=HP["muon_lr"], weight_decay=HP["weight_decay"],
                                 momentum=HP["momentum"], alpha=0.9, lamb=0.5, place="update",
                                 relative=True, warmup_steps=1)  # fmt: skip
    for grads in stream:
        for p, g in zip(mats, grads, strict=False):
            p.grad = g.clone()
        slow.step()
    # the same operations in the same order (bit for bit on the machine this was written on;
    # the library takes the norms of a contiguous copy, SlowMuon of NS's transposed output)
    _close(ours[: len(SHAPES)], [p.detach() for p in mats])


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resume_is_bit_identical(dtype):
    """N steps, state_dict -> torch.save/load -> a fresh optimizer -> the rest of the steps:
    the uninterrupted run's parameters and state, bit for bit (also fp32 with bf16 NS, where
    load_state_dict casts the state to the parameters' dtype)."""
    start = [p.to(dtype) for p in _start()]
    stream = [[g.to(dtype) for g in grads] for grads in _stream(steps=7)]
    kw = dict(grokfast_place="update", grokfast_lambda=0.5, grokfast_warmup_steps=2)
    if dtype == torch.float32:
        kw["ns_dtype"] = torch.bfloat16
    whole, opt = _ours(start, stream, **kw)
    first, opt1 = _ours(start, stream[:3], **kw)
    ckpt = _roundtrip({"params": [p.detach() for p in first], "opt": opt1.state_dict()})
    fresh = [nn.Parameter(p.clone()) for p in ckpt["params"]]
    opt2 = _make(fresh, **kw)
    opt2.load_state_dict(ckpt["opt"])
    _run(fresh, opt2, stream[3:])
    assert all(torch.equal(a, b) for a, b in zip(whole, fresh, strict=True))
    for p, q in zip(whole, fresh, strict=True):
        assert opt.state[p].keys() == opt2.state[q].keys()
        for key, v in opt.state[p].items():
            w = opt2.state[q][key]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if torch.is_tensor(v) else v == w
    h = opt2.state[fresh[0]]["grokfast_update_ema"]
    assert h.dtype == dtype and opt2.param_groups[0]["grokfast_place"] == "update"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(grokfast_place="momentum"), r"grokfast_place must be one of \('grad', 'update'\)"),
        (dict(grokfast_place=None), "grokfast_place must be one of"),
        (dict(grokfast_place="update", grokfast="ma"), 'supports grokfast="ema" only'),
        (dict(grokfast_place="update", grokfast="dual"), "got grokfast='dual'"),
    ],
)
def test_bad_place_is_refused_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MuGrokfast([nn.Parameter(torch.zeros(3, 3))], **kwargs)
    # as a per-group value too, and the refused group is not added
    opt = MuGrokfast([nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3, 3))], **kwargs})
    assert len(opt.param_groups) == 1


def test_place_is_a_per_group_option():
    start, stream = _start(), _stream()
    params = [nn.Parameter(p.clone()) for p in start]
    groups = [
        {"params": params[:2], "use_muon": True, "grokfast_place": "update"},
        {"params": params[2 : len(SHAPES)], "use_muon": True},
        {"params": params[len(SHAPES) :], "use_muon": False, "grokfast": "ma"},
    ]
    opt = MuGrokfast(groups, **HP, ns_dtype=torch.float64, grokfast="ema", grokfast_alpha=0.9)
    assert [g["grokfast_place"] for g in opt.param_groups] == ["update", "grad", "grad"]
    _run(params, opt, stream)
    upd = _reference(start, stream, "update", 0.9, 2.0)
    grad = _reference(start, stream, "grad", 0.9, 2.0)
    _close(params[: len(SHAPES)], upd[:2] + grad[2:])


def test_a_state_dict_without_the_place_loads_as_the_papers_filter():
    """A checkpoint written before grokfast_place existed: its groups get "grad"."""
    start, stream = _start(), _stream(steps=2)
    params, opt = _ours(start, stream)
    sd = copy.deepcopy(opt.state_dict())
    for g in sd["param_groups"]:
        del g["grokfast_place"]
    fresh = _make([nn.Parameter(p.detach().clone()) for p in params])
    fresh.load_state_dict(sd)
    assert [g["grokfast_place"] for g in fresh.param_groups] == ["grad", "grad"]


def test_readme_example_runs():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text().split("## Where the filter acts (`grokfast_place`)", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)[0]
    exec(compile(block, str(readme), "exec"), {"__name__": "readme"})  # asserts the loss
