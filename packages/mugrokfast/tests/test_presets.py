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
    assert all(g["grokfast"] == "ema" and g["grokfast_lambda"] == 0.02 for g in opt.param_groups)
    assert opt.preset.name == "phase1" and opt.preset.grad_clip == 1.0


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
