"""distributed=True: Newton-Schulz split over 2 gloo ranks equals the single-process step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mugrokfast import MuGrokfast, Muon

from . import dist_worker as w

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is unavailable"
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    script = Path(__file__).with_name("dist_worker.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(w.WORLD)]


def _single_process() -> dict:
    """The reference: one process, distributed=False, fed the averaged gradients."""
    params_a, params_b, params_c = w.make_params(), w.make_params(), w.make_params()
    mgf, muon = w.make_optimizers(params_a, params_b, distributed=False)
    upd = w.make_update_optimizer(params_c, distributed=False)
    for step in range(w.STEPS):
        local = [w.local_grads(r, step) for r in range(w.WORLD)]
        grads = [(a + b) / w.WORLD for a, b in zip(*local, strict=True)]
        for p, g in zip(params_a, grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(params_b[:-2], grads[:-2], strict=True):
            p.grad = g.clone()
        for p, g in zip(params_c, grads, strict=True):
            p.grad = g.clone()
        mgf.step()
        muon.step()
        upd.step()
    return {
        "params_a": params_a,
        "params_b": params_b,
        "params_c": params_c,
        "state_a": mgf.state_dict(),
        "state_c": upd.state_dict(),
    }


def _assert_states_equal(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _assert_states_equal(a[k], b[k])
        elif isinstance(a[k], list) and a[k] and isinstance(a[k][0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(a[k], b[k], strict=True)), k
        else:
            assert a[k] == b[k], k


def test_distributed_step_equals_single_process_step(ranks):
    ref = _single_process()
    for rank in ranks:
        for key in ("params_a", "params_b", "params_c"):
            for p, q in zip(rank[key], ref[key], strict=True):
                assert torch.equal(p, q.detach())
        _assert_states_equal(rank["state_a"], ref["state_a"])
        _assert_states_equal(rank["state_c"], ref["state_c"])  # grokfast_place="update"


def test_parameters_and_filter_state_identical_on_both_ranks(ranks):
    r0, r1 = ranks
    for key in ("params_a", "params_b", "params_c"):
        assert all(torch.equal(p, q) for p, q in zip(r0[key], r1[key], strict=True))
    _assert_states_equal(r0["state_a"], r1["state_a"])  # momentum, EMA h, MA ring, steps
    _assert_states_equal(r0["state_b"], r1["state_b"])
    _assert_states_equal(r0["state_c"], r1["state_c"])  # the EMA of the updates too
    ema = [s["grokfast_ema"] for s in r0["state_a"]["state"].values() if "grokfast_ema" in s]
    assert ema, "the dual filter's EMA state is in the compared state dict"
    h = [s for s in r0["state_c"]["state"].values() if "grokfast_update_ema" in s]
    assert len(h) == 6, "the update EMA of every non-empty matrix is in the compared state"


def test_each_rank_orthogonalises_only_its_share(ranks):
    # per optimizer per step: 6 non-empty matrices (the (0, 4) one is skipped) for each of the
    # two MuGrokfast and for Muon; dealt round-robin across 2 ranks -> 3 + 3 each
    calls = [r["ns_calls"] for r in ranks]
    assert sum(calls) == 3 * 6 * w.STEPS
    assert calls[0] == calls[1]


@pytest.mark.parametrize("key", ["dtensor_error", "dtensor_error_muon"])
def test_dtensor_parameters_raise_a_clear_error(ranks, key):
    for rank in ranks:  # MuGrokfast (work split) and Muon (local), on both ranks
        msg = rank[key]
        assert "FSDP2/DTensor" in msg and "whole" in msg


def test_dtensor_parameters_in_an_adamw_group_step_like_plain_tensors(ranks):
    for rank in ranks:  # FSDP2 shards in AdamW groups work: elementwise on each shard
        got, ref = rank["dtensor_adamw"]
        assert torch.equal(got, ref)


def test_distributed_without_a_process_group_is_a_local_step():
    params, ref = w.make_params(), w.make_params()
    a, b = Muon(params[:5], distributed=True), Muon(ref[:5])
    for p, q, g in zip(params[:5], ref[:5], w.local_grads(0, 0)[:5], strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    a.step()
    b.step()
    assert all(torch.equal(p, q) for p, q in zip(params, ref, strict=True))


@pytest.mark.parametrize("cls", [Muon, MuGrokfast])
def test_bad_distributed_value_is_refused(cls):
    with pytest.raises(ValueError, match="distributed must be a bool or a"):
        cls([torch.zeros(2, 2, requires_grad=True)], distributed="yes")
