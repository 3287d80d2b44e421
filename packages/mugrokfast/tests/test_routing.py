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
    # (issue 17: this asserted 3, the output Linear on Muon; the Linear producing a plain
    # Sequential's output is now its head, on AdamW; head=[] says there is none)
    assert _ids(param_groups(mlp), True) == {id(mlp[0].weight), id(mlp[2].weight)}
    assert len(_ids(param_groups(mlp, head=[]), True)) == 3
    groups = param_groups(mlp, head="3")
    assert _ids(groups, True) == {id(mlp[0].weight), id(mlp[2].weight)}
    groups = param_groups(mlp, head=mlp[3], adamw=["0.weight"], muon=[mlp[3].weight])
    assert _ids(groups, True) == {id(mlp[2].weight), id(mlp[3].weight)}
    groups = param_groups(
        mlp, head=[], route=lambda name, p, mod: False if name == "2.weight" else None
    )
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
    groups = param_groups(m, head=[], muon_group={"weight_decay": 0.0}, adamw_group={"lr": 1e-4})
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


def test_sequential_head_found_by_structure_through_nesting_and_activations():
    """The root README's first example: a plain MLP classifier; its last Linear is the head."""
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    groups = param_groups(mlp)
    assert _ids(groups, True) == {id(mlp[0].weight)}
    assert id(mlp[2].weight) in _ids(groups, False)
    nested = nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.GELU()),
        nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 5), nn.Softmax(-1)),
    )
    assert _ids(param_groups(nested), True) == {id(nested[0][0].weight), id(nested[1][0].weight)}


def test_warns_when_no_head_can_be_found_and_not_when_told():
    class Classifier(nn.Module):  # a custom forward: module order says nothing
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.fc = nn.Linear(8, 3)

    m = Classifier()
    with pytest.warns(UserWarning, match="found no output head"):
        groups = param_groups(m)
    assert id(m.fc.weight) in _ids(groups, True)  # nothing guessed
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ids(param_groups(m, head="fc"), True) == {id(m.body.weight)}
        param_groups(m, head=[])
        param_groups(TinyLM())  # an LM: the vocabulary-sized head is found
