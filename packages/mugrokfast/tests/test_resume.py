"""Resume: k steps, state_dict -> torch.save/load(weights_only) -> fresh objects -> continue.

Must be bit-identical to never stopping, including the MA ring buffer mid-window (and a bf16
history, which Optimizer.load_state_dict would otherwise cast to the param dtype)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from mugrokfast import Grokfast, MuGrokfast, Muon, param_groups

from .conftest import TinyLM, lm_loss

TOTAL, STOP = 9, 5  # with window 4 the stop is mid-window in the second cycle


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _make(kind, model, kw):
    if kind == "mugrokfast":
        opt = MuGrokfast(param_groups(model), **kw)
    elif kind == "muon":
        opt = Muon([p for p in model.parameters() if p.ndim >= 2], lr=0.02)
    else:
        opt = Grokfast(torch.optim.AdamW(model.parameters(), lr=1e-3), **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return opt, sched


def _train(model, opt, sched, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        lm_loss(model, t).backward()
        opt.step()
        sched.step()


CASES = [
    ("mugrokfast", dict(grokfast=None)),
    ("mugrokfast", dict(grokfast="ema", grokfast_warmup_steps=2)),
    ("mugrokfast", dict(grokfast="ema", grokfast_place="update", grokfast_warmup_steps=2)),
    ("mugrokfast", dict(grokfast="ma", grokfast_window=4)),
    ("mugrokfast", dict(grokfast="dual", grokfast_window=4)),
    ("mugrokfast", dict(grokfast="ma", grokfast_window=4, grokfast_history_dtype=torch.bfloat16)),
    ("muon", {}),
    ("grokfast", dict(filter="ema")),
    ("grokfast", dict(filter="dual", window_size=4, history_dtype=torch.bfloat16)),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_resume_is_bit_identical(kind, kw):
    model = TinyLM()
    resumed_model = copy.deepcopy(model)

    opt, sched = _make(kind, model, kw)
    _train(model, opt, sched, TOTAL)

    opt1, sched1 = _make(kind, resumed_model, kw)
    _train(resumed_model, opt1, sched1, STOP)
    ckpt = _roundtrip(
        {
            "model": resumed_model.state_dict(),
            "opt": opt1.state_dict(),
            "sched": sched1.state_dict(),
        }
    )
    fresh = TinyLM()
    fresh.load_state_dict(ckpt["model"])
    opt2, sched2 = _make(kind, fresh, kw)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    _train(fresh, opt2, sched2, TOTAL - STOP, start=STOP)

    for (n, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), n
    final, final2 = opt.state_dict(), opt2.state_dict()
    for k, st in final["state"].items():
        for key, v in st.items():
            w = final2["state"][k][key]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if torch.is_tensor(v) else v == w
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


def test_mid_window_state_is_in_optimizer_state():
    model = TinyLM()
    opt, sched = _make("mugrokfast", model, dict(grokfast="ma", grokfast_window=4))
    _train(model, opt, sched, 6)
    st = opt.state[model.fc1.weight]
    assert st["grokfast_ma_count"] == 4 and st["grokfast_ma_index"] == 2
    torch.testing.assert_close(st["grokfast_ma_sum"], st["grokfast_ma_buffer"].sum(0))
