"""Presets: the documented numbers, overrides, and unknown names."""

from __future__ import annotations

import pytest
import torch
from mugrokfast import PRESETS, MuGrokfast, param_groups

from .conftest import TinyLM


def test_phase1_preset_values():
    model = TinyLM()
    opt = MuGrokfast.from_preset("phase1", param_groups(model))
    muon_g, adam_g = opt.param_groups
    assert adam_g["lr"] == 5e-4 and muon_g["lr"] == 5e-3
    assert all(g["grokfast"] is None for g in opt.param_groups)  # measured: no gain over Muon
    assert opt.preset.name == "phase1" and opt.preset.grad_clip == 1.0


def test_task_presets_train_as_plain_muon_unless_the_filter_is_asked_for():
    """phase1 and grokking are Muon + AdamW: after a step their weights equal those of
    MuGrokfast(grokfast=None) at the same numbers, and grokfast='ema' turns the filter back on."""
    for name in ("phase1", "grokking"):
        models = [TinyLM() for _ in range(3)]
        for m in models[1:]:
            m.load_state_dict(models[0].state_dict())
        kw = {k: v for k, v in PRESETS[name].kwargs.items() if k != "grokfast"}
        opts = [
            MuGrokfast.from_preset(name, param_groups(models[0])),
            MuGrokfast(param_groups(models[1]), grokfast=None, **kw),
            MuGrokfast.from_preset(name, param_groups(models[2]), grokfast="ema"),
        ]
        x = torch.randint(0, 13, (4, 8))
        for _ in range(2):
            for m, opt in zip(models, opts, strict=True):
                opt.zero_grad()
                m(x).float().pow(2).mean().backward()
                opt.step()
        same, filtered = [
            [torch.equal(a, b) for a, b in zip(models[0].parameters(), m.parameters(), strict=True)]
            for m in models[1:]
        ]
        assert all(same), name
        assert not all(filtered), name


def test_overrides_win_and_every_preset_builds():
    model = TinyLM()
    opt = MuGrokfast.from_preset("phase1", param_groups(model), grokfast_lambda=0.1, muon_lr=1e-2)
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["grokfast_lambda"] == 0.1
    for name in PRESETS:
        assert isinstance(MuGrokfast.from_preset(name, model.parameters()), torch.optim.Optimizer)
    assert {"default", "phase1", "grokking"} <= set(PRESETS)


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="phase1"):
        MuGrokfast.from_preset("phase9", TinyLM().parameters())
