"""param_groups: routing by module type, overrides, tied weights listed once."""

from __future__ import annotations

import pytest
import torch
from mugrokfast import MuGrokfast, param_groups
from torch import nn

from .conftest import TinyLM


def _ids(groups, use_muon):
    return {id(p) for g in groups if g["use_muon"] == use_muon for p in g["params"]}


def test_default_routing_by_module_type():
    m = TinyLM()
    groups = param_groups(m)
    muon, adamw = _ids(groups, True), _ids(groups, False)
    assert muon == {id(m.fc1.weight), id(m.fc2.weight), id(m.conv.weight)}
    expected_adamw = {m.emb.weight, m.head.weight, m.fc1.bias, m.fc2.bias, m.conv.bias,
                      m.norm.weight, m.norm.bias}  # fmt: skip
    assert adamw == {id(p) for p in expected_adamw}


def test_tied_head_listed_once_and_kept_on_adamw():
    m = TinyLM(tie=True)
    groups = param_groups(m)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(m.parameters()))
    assert id(m.emb.weight) in _ids(groups, False)
    MuGrokfast(groups)  # torch refuses duplicates; this must construct


def test_head_detected_by_vocab_size_even_when_registered_first():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(8, 20)
            self.tok = nn.Embedding(20, 8)
            self.mid = nn.Linear(8, 8)

    m = HeadFirst()
    groups = param_groups(m)
    assert _ids(groups, True) == {id(m.mid.weight)}


def test_explicit_head_and_overrides():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    assert len(_ids(param_groups(mlp), True)) == 3  # no embedding: nothing looks like a head
    groups = param_groups(mlp, head="3")
    assert _ids(groups, True) == {id(mlp[0].weight), id(mlp[2].weight)}
    groups = param_groups(mlp, head=mlp[3], adamw=["0.weight"], muon=[mlp[3].weight])
    assert _ids(groups, True) == {id(mlp[2].weight), id(mlp[3].weight)}
    groups = param_groups(mlp, route=lambda name, p, mod: False if name == "2.weight" else None)
    assert _ids(groups, True) == {id(mlp[0].weight), id(mlp[3].weight)}
    with pytest.raises(ValueError, match="muon"):
        param_groups(mlp, muon=["2.bias"])  # a vector cannot go to Muon


def test_custom_parameters_and_frozen_params():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.init_state = nn.Parameter(torch.zeros(4, 8))  # not a Linear: AdamW
            self.proj = nn.Linear(8, 8)
            self.frozen = nn.Linear(8, 8)
            self.frozen.requires_grad_(False)

    m = Custom()
    groups = param_groups(m, muon_group={"weight_decay": 0.0}, adamw_group={"lr": 1e-4})
    assert _ids(groups, True) == {id(m.proj.weight)}
    assert _ids(groups, False) == {id(m.init_state), id(m.proj.bias)}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["lr"] == 1e-4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head="nope"), "head"),
        (dict(muon=["nope"]), "muon"),
        (dict(adamw=["nope"]), "adamw"),
        (dict(muon=["fc1.weight"], adamw=["fc1.weight"]), "both"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        param_groups(TinyLM(), **kwargs)


def test_multihead_attention_projections_go_to_muon():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(10, 8)
            self.attn = nn.MultiheadAttention(8, 2)
            self.head = nn.Linear(8, 10, bias=False)

    m = Block()
    groups = param_groups(m)
    assert _ids(groups, True) == {id(m.attn.in_proj_weight), id(m.attn.out_proj.weight)}
    assert id(m.attn.in_proj_bias) in _ids(groups, False)


def test_vector_shaped_matrices_stay_on_adamw():
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1), nn.Linear(1, 8))
    assert _ids(param_groups(m), True) == {id(m[0].weight)}
