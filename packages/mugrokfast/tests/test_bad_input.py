"""Bad hyperparameters and inputs fail at construction with a ValueError naming the argument
(issue 18 item 8): non-finite and absurd values, wrong types, zero-size matrices, MA windows
whose history cannot fit in memory."""

from __future__ import annotations

import math

import pytest
import torch
from mugrokfast import Grokfast, MuGrokfast, Muon
from mugrokfast.filters import device_memory_bytes, ma_history_bytes
from torch import nn

from .conftest import TinyLM, lm_loss

INF = math.inf
BAD_MUGROKFAST = [
    (dict(lr=INF), "lr"),
    (dict(lr=math.nan), "lr"),
    (dict(lr=1e300), "lr"),
    (dict(lr="0.01"), "lr"),
    (dict(lr=None), "lr"),
    (dict(muon_lr=INF), "muon_lr"),
    (dict(muon_lr=0.0), "muon_lr"),
    (dict(muon_lr=1e300), "muon_lr"),
    (dict(weight_decay=INF), "weight_decay"),
    (dict(weight_decay=1e300), "weight_decay"),
    (dict(eps=INF), "eps"),
    (dict(eps=math.nan), "eps"),
    (dict(betas=0.9), "betas"),
    (dict(betas=(0.9,)), "betas"),
    (dict(betas=("0.9", 0.99)), "betas"),
    (dict(momentum=math.nan), "momentum"),
    (dict(grokfast_lambda=INF), "grokfast_lambda"),
    (dict(grokfast_lambda=1e300), "grokfast_lambda"),
    (dict(grokfast_ma_lambda=INF), "grokfast_ma_lambda"),
    (dict(grokfast_alpha=math.nan), "grokfast_alpha"),
    (dict(grokfast_window=1e9), "grokfast_window"),
    (dict(ns_eps=INF), "ns_eps"),
    (dict(ns_coefficients=(3.4, INF, 2.0)), "ns_coefficients"),
]


@pytest.mark.parametrize("kwargs,match", BAD_MUGROKFAST, ids=str)
def test_mugrokfast_refuses_non_finite_absurd_and_mistyped_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MuGrokfast(TinyLM().parameters(), **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(lr=INF), "lr"), (dict(lr=1e300), "lr"), (dict(lr="0.01"), "lr"),
     (dict(weight_decay=INF), "weight_decay"), (dict(eps=INF), "eps"),
     (dict(momentum="0.9"), "momentum")],
    ids=str,
)  # fmt: skip
def test_muon_refuses_them_too(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([nn.Parameter(torch.randn(3, 3))], **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(lamb=INF), "lamb"), (dict(ma_lamb=1e300), "ma_lamb"), (dict(alpha="0.9"), "alpha"),
     (dict(window_size=1e9), "window_size")],
    ids=str,
)  # fmt: skip
def test_wrapper_refuses_them_too(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Grokfast(torch.optim.AdamW(TinyLM().parameters()), **kwargs)


def test_muon_lr_zero_is_refused_but_lr_zero_is_torchs_legal_value():
    with pytest.raises(ValueError, match="muon_lr"):
        MuGrokfast(TinyLM().parameters(), muon_lr=0)
    MuGrokfast(TinyLM().parameters(), lr=0.0)  # as torch.optim.AdamW(lr=0) is legal
    Muon([nn.Parameter(torch.randn(3, 3))], lr=0.0)


def test_largest_sensible_values_still_train_finitely():
    model = TinyLM()
    opt = MuGrokfast(model.parameters(), lr=1.0, muon_lr=1.0, grokfast_lambda=100.0)
    lm_loss(model, 0).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ma_memory_is_stated_and_an_impossible_window_is_refused_before_any_step():
    model = TinyLM()
    n = sum(p.numel() for p in model.parameters())
    # window x numel x 4 bytes of history + one fp32 running sum per parameter
    assert ma_history_bytes(list(model.parameters()), 10) == n * (10 * 4 + 4)
    assert ma_history_bytes(list(model.parameters()), 10, torch.bfloat16) == n * (10 * 2 + 4)
    have = device_memory_bytes(torch.device("cpu"))
    assert have is not None and have > 2**28
    window = have // (4 * n) + 1  # just over the machine's RAM
    need = ma_history_bytes(list(model.parameters()), window)
    for make in (
        lambda: MuGrokfast(model.parameters(), grokfast="ma", grokfast_window=window),
        lambda: MuGrokfast(model.parameters(), grokfast="dual", grokfast_window=window),
    ):
        with pytest.raises(ValueError, match=rf"grokfast_window={window}: .* {need} bytes"):
            make()
    with pytest.raises(ValueError, match=rf"window_size={window}: .* {need} bytes"):
        Grokfast(torch.optim.AdamW(model.parameters()), filter="ma", window_size=window)
    # the EMA filter keeps no window: the same window is fine there
    MuGrokfast(model.parameters(), grokfast="ema", grokfast_window=window)
    # a refused add_param_group leaves the optimizer as it was
    opt = MuGrokfast([model.fc1.weight], grokfast="ma", grokfast_window=4)
    too_big = have // (4 * model.fc2.weight.numel()) + 1
    with pytest.raises(ValueError, match="grokfast_window"):
        opt.add_param_group({"params": [model.fc2.weight], "grokfast_window": too_big})
    assert len(opt.param_groups) == 1


def test_zero_size_matrices_train_alongside_others():
    """No ZeroDivisionError (torch's Muon has one on (n, 0)); the rest trains as without them."""
    model = TinyLM()
    ref = TinyLM()
    ref.load_state_dict(model.state_dict())
    empty = [nn.Parameter(torch.zeros(0, 4)), nn.Parameter(torch.zeros(4, 0))]
    opt = MuGrokfast([*model.parameters(), *empty], grokfast="dual", grokfast_window=2)
    ref_opt = MuGrokfast(ref.parameters(), grokfast="dual", grokfast_window=2)
    for t in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            lm_loss(m, t).backward()
        for p in empty:
            p.grad = torch.zeros_like(p)
        opt.step()
        ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters(), strict=True))
