"""CUDA: same algorithm as on CPU (bf16 NS by default there), resume bit-identical.

Skipped on machines without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch
from mugrokfast import MuGrokfast, param_groups

from .conftest import COMPILED_ATOL, TinyLM, lm_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        lm_loss(model, t).backward()
        opt.step()


def _matches_cpu_and_resumes(kw):
    """Train a TinyLM 5 steps on CPU and on CUDA with MuGrokfast(**kw): the parameters agree;
    then 3 more CUDA steps equal a fresh optimizer resumed from the state dict, bit for bit.
    Returns fc1.weight's optimizer state on CUDA (for the caller's dtype/device checks)."""
    cpu = TinyLM()
    gpu = copy.deepcopy(cpu).cuda()
    _train(cpu, MuGrokfast(param_groups(cpu), **kw), 5)
    opt = MuGrokfast(param_groups(gpu), **kw)
    _train(gpu, opt, 5)
    for a, b in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-3)
    state = dict(opt.state[gpu.fc1.weight])
    resumed = copy.deepcopy(gpu)
    sd = copy.deepcopy(opt.state_dict())
    _train(gpu, opt, 3, start=5)
    opt2 = MuGrokfast(param_groups(resumed), **kw)
    opt2.load_state_dict(sd)
    _train(resumed, opt2, 3, start=5)
    assert all(
        torch.equal(a, b) for a, b in zip(gpu.parameters(), resumed.parameters(), strict=True)
    )
    return state


@cuda
def test_cuda_matches_cpu_and_resumes_bit_identically():
    kw = dict(grokfast="dual", grokfast_window=3, grokfast_history_dtype=torch.bfloat16,
              ns_dtype=torch.float32)  # fmt: skip
    state = _matches_cpu_and_resumes(kw)
    assert state["grokfast_ma_buffer"].dtype == torch.bfloat16


@cuda
def test_update_place_on_cuda_matches_cpu_and_resumes_bit_identically():
    """grokfast_place="update" with same-shaped matrices batched on CUDA (one at a time on CPU)."""
    kw = dict(grokfast="ema", grokfast_place="update", grokfast_lambda=0.5, ns_dtype=torch.float32)
    state = _matches_cpu_and_resumes(kw)
    assert state["grokfast_update_ema"].is_cuda


@cuda
def test_default_ns_dtype_on_cuda_is_bf16_and_close_to_fp32():
    model = TinyLM().cuda()
    ref = copy.deepcopy(model)
    _train(model, MuGrokfast(param_groups(model), grokfast=None), 3)
    _train(ref, MuGrokfast(param_groups(ref), grokfast=None, ns_dtype=torch.float32), 3)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@cuda
@pytest.mark.parametrize("ns_dtype", [None, torch.float32], ids=["bf16-default", "fp32"])
@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("grokfast", [None, "ema", "dual", "ema-update"])
def test_compiled_step_on_cuda_has_no_graph_break_and_eagers_numbers(grokfast, backend, ns_dtype):
    """torch.compile(opt.step, fullgraph=True) raises on any graph break; the numbers are
    eager's (inductor told to round bf16 as eager does: see test_compiled_step_inductor in
    test_torch_optim_invariants.py for why its default differs; COMPILED_ATOL in conftest.py
    for older torch)."""
    torch._dynamo.reset()
    eager_model = TinyLM().cuda()
    model = copy.deepcopy(eager_model)
    kw = dict(grokfast=grokfast, grokfast_window=2, ns_dtype=ns_dtype)
    if grokfast == "ema-update":  # the EMA on the orthogonalised update
        kw |= dict(grokfast="ema", grokfast_place="update")
    eager = MuGrokfast(param_groups(eager_model), **kw)
    opt = MuGrokfast(param_groups(model), **kw)
    step = torch.compile(opt.step, backend=backend, fullgraph=True)
    with torch._inductor.config.patch(emulate_precision_casts=True):
        for t in range(3):
            for m, o, s in ((eager_model, eager, eager.step), (model, opt, step)):
                o.zero_grad()
                lm_loss(m, t).backward()
                s()
    atol = 1e-5 if ns_dtype == torch.float32 else COMPILED_ATOL
    for a, b in zip(eager_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)
