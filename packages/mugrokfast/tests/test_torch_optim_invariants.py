"""The generic invariants of PyTorch's optimizer test suite, for every mugrokfast optimizer.

Modelled on torch's ``test/test_optim.py`` (``TestOptimRenewed``) and
``torch/testing/_internal/common_optimizers.py``: a table of optimizers (``OptimInfo``, like
torch's ``OptimizerInfo``), each with the constructor inputs to try (``OptimizerInput``), looped
over by the same tests. What torch's own ``Muon`` lacks is left out here too: ``maximize`` (no
such argument) and zero-size matrices (torch's divides by zero; ours skips them, see
``test_zero_size_matrices_are_skipped``).
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from mugrokfast import Grokfast, MuGrokfast, Muon
from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from .conftest import TinyLM, lm_loss


@dataclass
class OptimInfo:
    """One optimizer under test: how to build it and which inputs to try (torch's
    ``OptimizerInfo`` + ``optim_inputs_func``)."""

    name: str
    make: Callable[..., Optimizer]  # make(params, **kwargs)
    inputs: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    matrices_only: bool = False  # Muon: 2-D parameters only

    def __str__(self) -> str:
        return self.name


def _mugrokfast(mode: str | None) -> Callable[..., Optimizer]:
    return lambda params, **kw: MuGrokfast(params, grokfast=mode, grokfast_window=2, **kw)


def _wrapped(base: type[Optimizer], mode: str, **base_kw: Any) -> Callable[..., Optimizer]:
    return lambda params, **kw: Grokfast(base(params, **(base_kw | kw)), filter=mode, window_size=2)


MUON_INPUTS = [
    {},
    {"lr": 0.01},
    {"lr": torch.tensor(0.001)},
    {"weight_decay": 0.2},
    {"momentum": 0.8},
    {"nesterov": False},
    {"ns_steps": 6},
    {"ns_coefficients": (3.4, -4.7, 2.0)},
    {"adjust_lr_fn": "match_rms_adamw"},
    {"adjust_lr_fn": "spectral_unclamped"},
    {"ns_dtype": torch.float32},
]
MUGROKFAST_INPUTS = [
    {},
    {"lr": 0.01, "muon_lr": 0.05},
    {"lr": torch.tensor(0.001)},
    {"weight_decay": 0.2},
    {"betas": (0.8, 0.9), "momentum": 0.8},
    {"nesterov": False},
    {"foreach": True},
    {"adjust_lr_fn": "match_rms_adamw"},
    {"grokfast_warmup_steps": 2},
    {"ns_dtype": torch.float32},
]
ADAMW_INPUTS = [{}, {"lr": 0.01}, {"lr": torch.tensor(0.001)}, {"weight_decay": 0.2},
                {"foreach": True}]  # fmt: skip

OPTIMS = [
    OptimInfo("Muon", Muon, MUON_INPUTS, matrices_only=True),
    *(OptimInfo(f"MuGrokfast({m})", _mugrokfast(m), MUGROKFAST_INPUTS)
      for m in (None, "ema", "ma", "dual")),
    OptimInfo("Grokfast(AdamW,ema)", _wrapped(torch.optim.AdamW, "ema"), ADAMW_INPUTS),
    OptimInfo("Grokfast(AdamW,dual)", _wrapped(torch.optim.AdamW, "dual"), ADAMW_INPUTS),
    OptimInfo("Grokfast(SGD,ma)", _wrapped(torch.optim.SGD, "ma", lr=1e-4, momentum=0.9),
              [{}, {"nesterov": True}]),
]  # fmt: skip
ALL_INPUTS = [
    pytest.param(info, kw, id=f"{info}-{kw}".replace(" ", ""))
    for info in OPTIMS
    for kw in info.inputs
]
DEFAULT_INPUT = [pytest.param(info, {}, id=str(info)) for info in OPTIMS]


def _params(info: OptimInfo, dtype=torch.float32, seed: int = 0) -> list[nn.Parameter]:
    """w1 (10x5), w2 (5x5) and, where vectors are allowed, a bias (10)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(10, 5), (5, 5)] + ([] if info.matrices_only else [(10,)])
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _loss(params: list[torch.Tensor], seed: int = 0) -> torch.Tensor:
    x = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=params[0].dtype)
    out = params[0] @ (params[1] @ x)
    if len(params) > 2:
        out = out + params[2]
    return out.pow(2).sum()


def _set_grads(params: list[torch.Tensor], seed: int) -> None:
    for p in params:
        p.grad = None
    _loss(params, seed).backward()


def _train(opt: Optimizer, params: list[torch.Tensor], steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        _set_grads(params, t)
        opt.step()


def _all_params(opt: Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "info,kw,sched",
    [pytest.param(*p.values, None, id=p.id) for p in ALL_INPUTS]
    + [
        pytest.param(*p.values, s, id=f"{p.id}-{s}")
        for p in DEFAULT_INPUT
        for s in ("StepLR", "ReduceLROnPlateau")
    ],
)
def test_goes_right_direction(info, kw, sched):
    """torch's test_forloop_goes_right_direction (with its default scheduler inputs)."""
    params = _params(info)
    opt = info.make(params, **kw)
    scheduler = {
        None: lambda: None,
        "StepLR": lambda: torch.optim.lr_scheduler.StepLR(opt, gamma=0.9, step_size=10),
        "ReduceLROnPlateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
    }[sched]()

    def closure():
        opt.zero_grad()
        loss = _loss(params)
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        loss = opt.step(closure)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss.item())
        elif scheduler is not None:
            scheduler.step()
    assert closure().item() < initial


@pytest.mark.parametrize("info,kw", DEFAULT_INPUT)
def test_step_is_noop_when_params_have_no_grad(info, kw):
    params = _params(info)
    before = [p.detach().clone() for p in params]
    opt = info.make(params, **kw)
    for _ in range(3):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))


@pytest.mark.parametrize("info,kw", DEFAULT_INPUT)
def test_a_group_with_lr_zero_does_not_move(info, kw):
    """torch's test_param_groups_lr: per-group options are honoured."""
    params = _params(info)
    opt = info.make([{"params": params[:1], "lr": 0.0}, {"params": params[1:]}], **kw)
    before = [p.detach().clone() for p in params]
    _train(opt, params, 3)
    assert torch.equal(params[0], before[0])
    assert not torch.equal(params[1], before[1])


@pytest.mark.parametrize("info,kw", ALL_INPUTS)
def test_tensor_lr_equals_float_lr(info, kw):
    """torch's test_tensor_lr: a 0-d or 1-element tensor lr gives the float lr's updates."""
    if isinstance(kw.get("lr"), torch.Tensor) or kw.get("foreach"):
        pytest.skip("tensor lr with foreach=True is refused, as torch's AdamW refuses it")
    results = []
    for lr in (0.01, torch.tensor(0.01), torch.tensor([0.01])):
        params = _params(info)
        _train(info.make(params, **(kw | {"lr": lr})), params, 4)
        results.append(params)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- named params


@pytest.mark.parametrize("info,kw", ALL_INPUTS)
def test_named_parameters_train_and_save_like_plain_ones(info, kw):
    """Named parameters (torch >= 2.6): same updates; state_dict keyed by index with the
    names in ``param_names``, loadable into an optimizer built from plain parameters and back
    (torch's test_can_load_from_to_named_state_dict)."""
    names = ["w1", "w2", "b"]
    plain, named = _params(info), _params(info)
    opt_p = info.make(plain, **kw)
    opt_n = info.make(list(zip(names, named, strict=False)), **kw)
    _train(opt_p, plain, 3)
    _train(opt_n, named, 3)
    assert all(torch.equal(a, b) for a, b in zip(plain, named, strict=True))
    sd_p, sd_n = opt_p.state_dict(), opt_n.state_dict()
    assert sd_n["state"].keys() == sd_p["state"].keys() == set(range(len(plain)))
    for g in sd_n["param_groups"]:
        assert g["param_names"] == [names[i] for i in g["params"]]
    assert all("param_names" not in g for g in sd_p["param_groups"])
    # named -> plain and plain -> named: loads and continues identically
    opt_p2 = info.make(plain, **kw)
    opt_p2.load_state_dict(copy.deepcopy(sd_n))
    opt_n2 = info.make(list(zip(names, named, strict=False)), **kw)
    opt_n2.load_state_dict(copy.deepcopy(sd_p))
    _train(opt_p2, plain, 2, start=3)
    _train(opt_n2, named, 2, start=3)
    assert all(torch.equal(a, b) for a, b in zip(plain, named, strict=True))


def test_mugrokfast_named_groups_split_with_their_names_like_torchs_pair():
    """MuGrokfast(model.named_parameters()) = torch.optim.Muon(named matrices) +
    torch.optim.AdamW(named vectors): the same numbers and the same names per group."""
    model = TinyLM()
    ref = copy.deepcopy(model)
    named = [(n, p) for n, p in model.named_parameters() if n != "conv.weight"]
    opt = MuGrokfast(named, grokfast=None, ns_dtype=torch.bfloat16, weight_decay=0.05)
    model.conv.weight.requires_grad_(False)
    ref.conv.weight.requires_grad_(False)
    ref_named = [(n, p) for n, p in ref.named_parameters() if n != "conv.weight"]
    muon = torch.optim.Muon([(n, p) for n, p in ref_named if p.ndim >= 2], lr=0.02,
                            weight_decay=0.05)  # fmt: skip
    adamw = torch.optim.AdamW([(n, p) for n, p in ref_named if p.ndim < 2], lr=1e-3,
                              weight_decay=0.05)  # fmt: skip
    for t in range(3):
        for m in (model, ref):
            m.zero_grad()
            lm_loss(m, t).backward()
        opt.step()
        muon.step()
        adamw.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters(), strict=True))
    groups = opt.state_dict()["param_groups"]
    assert [g["param_names"] for g in groups] == [
        muon.state_dict()["param_groups"][0]["param_names"],
        adamw.state_dict()["param_groups"][0]["param_names"],
    ]


# -------------------------------------------------------------------------- state dicts


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("info,kw", ALL_INPUTS)
def test_state_dict_round_trip_is_deterministic_and_adds_no_keys(info, kw):
    """torch's test_state_dict_deterministic (+ test_save_load_equality_with_weights_only)."""
    params = _params(info)
    opt = info.make(params, **kw)
    _train(opt, params, 3)
    sd = opt.state_dict()
    twin = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = info.make(twin, **kw)
    opt2.load_state_dict(_roundtrip(sd))
    sd2 = opt2.state_dict()
    assert [g.keys() for g in sd2["param_groups"]] == [g.keys() for g in sd["param_groups"]]
    assert sd2["state"].keys() == sd["state"].keys()
    for i, st in sd["state"].items():
        assert sd2["state"][i].keys() == st.keys()
    _train(opt, params, 3, start=3)
    _train(opt2, twin, 3, start=3)
    assert all(torch.equal(a, b) for a, b in zip(params, twin, strict=True))


@pytest.mark.parametrize("info,kw", DEFAULT_INPUT)
def test_load_state_dict_casts_state_to_param_dtype(info, kw):
    """An fp32 checkpoint into an fp64 copy of the model: floating state becomes fp64 (torch's
    rule; ``step`` counters stay as saved) and training continues."""
    params = _params(info)
    opt = info.make(params, **kw)
    _train(opt, params, 3)
    wide = [nn.Parameter(p.detach().double()) for p in params]
    opt64 = info.make(wide, **kw)
    opt64.load_state_dict(opt.state_dict())
    sd = opt64.state_dict()["state"]
    floats = [v for st in sd.values() for k, v in st.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "step"]  # fmt: skip
    assert floats and all(v.dtype == torch.float64 for v in floats)
    before = [p.detach().clone() for p in wide]
    _train(opt64, wide, 2, start=3)
    assert all(p.dtype == torch.float64 and torch.isfinite(p).all() for p in wide)
    assert any(not torch.equal(a, b) for a, b in zip(wide, before, strict=True))


@pytest.mark.parametrize("info,kw", ALL_INPUTS)
def test_deepcopy_and_pickle_keep_everything(info, kw):
    """torch's test_deepcopy_copies_all_public_attrs, and the copy trains like the original."""
    params = _params(info)
    opt = info.make(params, **kw)
    _train(opt, params, 3)
    public = {k for k in vars(opt) if not k.startswith("_")}
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert {k for k in vars(clone) if not k.startswith("_")} == public
        twin = _all_params(clone)
        assert all(
            torch.equal(a, b) and a is not b for a, b in zip(_all_params(opt), twin, strict=True)
        )
        mine = [nn.Parameter(p.detach().clone()) for p in _all_params(opt)]
        ref = copy.deepcopy(opt)  # reference continuation on fresh copies
        _train(clone, twin, 2, start=3)
        _train(ref, _all_params(ref), 2, start=3)
        assert all(torch.equal(a, b) for a, b in zip(twin, _all_params(ref), strict=True))
        assert any(not torch.equal(a, b) for a, b in zip(twin, mine, strict=True))


def test_mugrokfast_preset_survives_deepcopy():
    opt = MuGrokfast.from_preset("grokking", TinyLM().parameters())
    assert copy.deepcopy(opt).preset == opt.preset


# -------------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("info,kw", DEFAULT_INPUT)
def test_step_hooks_fire_once_per_step_in_torchs_order(info, kw):
    """torch's test_step_all_hooks: global pre, instance pre, step, instance post, global post."""
    params = _params(info)
    opt = info.make(params, **kw)
    calls: list[str] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post")),
    ]
    try:
        _train(opt, params, 2)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global pre", "pre", "post", "global post"] * 2


@pytest.mark.parametrize("info,kw", DEFAULT_INPUT)
def test_state_dict_and_load_hooks(info, kw):
    """torch's test_state_dict_pre_hook / post_hook / load_state_dict pre / post hooks: each
    fires once, and what a hook returns is what is saved or loaded."""
    params = _params(info)
    opt = info.make(params, **kw)
    _train(opt, params, 2)
    calls: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd pre"))

    def sd_post(o, sd):
        calls.append("sd post")
        sd["param_groups"][0]["lr"] = 0.125
        return sd

    opt.register_state_dict_post_hook(sd_post)
    sd = opt.state_dict()
    assert calls == ["sd pre", "sd post"] and sd["param_groups"][0]["lr"] == 0.125

    opt2 = info.make(_params(info), **kw)

    def load_pre(o, sd):
        calls.append("load pre")
        sd["param_groups"] = copy.deepcopy(sd["param_groups"])
        sd["param_groups"][0]["lr"] = 0.25
        return sd

    opt2.register_load_state_dict_pre_hook(load_pre)
    opt2.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    opt2.load_state_dict(sd)
    assert calls == ["sd pre", "sd post", "load pre", "load post"]
    assert opt2.param_groups[0]["lr"] == 0.25


# ------------------------------------------------------------------------------- errors


def _error_cases(info: OptimInfo):
    """torch's get_error_inputs_for_all_optims (CPU), for ``info``'s constructor."""
    a, b = nn.Parameter(torch.randn(2, 2)), nn.Parameter(torch.randn(2, 2))
    return [
        (a, {}, TypeError, "iterable of Tensors or dicts"),
        ([a, a], {}, UserWarning, "duplicate parameters"),
        ({a, b}, {}, FutureWarning, "ordered collections"),
        ([{"params": {a, b}}], {}, TypeError, "ordered collections"),
        ([{"params": a}, {"params": a}], {}, ValueError, "more than one parameter group"),
        ([a], {"lr": torch.tensor([1e-3, 1e-3])}, ValueError, "Tensor lr must be 1-element"),
        ([("w", a), b], {}, ValueError, "with/without names"),
        ([{"params": [a], "lr": 1e-2}, {"params": [("w", b)]}], {}, ValueError,
         "param groups should be with/without names"),
    ]  # fmt: skip


@pytest.mark.parametrize("info", OPTIMS, ids=str)
def test_constructor_errors_match_torchs(info):
    for params, kw, error, match in _error_cases(info):
        if issubclass(error, Warning):
            with pytest.warns(error, match=match):
                info.make(params, **kw)
        else:
            with pytest.raises(error, match=match):
                info.make(params, **kw)


def test_tensor_lr_with_foreach_is_refused_at_construction():
    match = "lr as a Tensor is not supported"
    with pytest.raises(ValueError, match=match):
        MuGrokfast(TinyLM().parameters(), lr=torch.tensor(1e-3), foreach=True)
    with pytest.raises(ValueError, match=match):
        torch.optim.AdamW(TinyLM().parameters(), lr=torch.tensor(1e-3), foreach=True)


@pytest.mark.parametrize("info", OPTIMS, ids=str)
def test_complex_and_sparse_gradients_raise_clearly(info):
    c = nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    c.grad = torch.randn(3, 3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        info.make([c]).step()
    s = nn.Parameter(torch.randn(3, 3))
    s.grad = torch.randn(3, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        info.make([s]).step()


@pytest.mark.parametrize("info", [i for i in OPTIMS if "Grokfast(" not in i.name], ids=str)
def test_zero_size_matrices_are_skipped(info):
    """Skipped as torch's AdamW skips them (nothing to update); torch's Muon raises
    ZeroDivisionError on a (n, 0) matrix."""
    params = _params(info) + [nn.Parameter(torch.zeros(0, 4)), nn.Parameter(torch.zeros(4, 0))]
    opt = info.make(params)
    before = [p.detach().clone() for p in params]
    for t in range(3):
        _set_grads(params[:-2], t)
        for p in params[-2:]:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert not torch.equal(params[0], before[0])
    assert params[-2].shape == (0, 4) and params[-1].shape == (4, 0)
