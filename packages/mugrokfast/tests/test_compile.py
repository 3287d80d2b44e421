"""torch.compile of the model is independent of the optimizer: same training as eager."""

from __future__ import annotations

import copy

import pytest
import torch
from mugrokfast import MuGrokfast, param_groups

from .conftest import TinyLM, lm_loss


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_model_trains_like_eager(backend):
    eager = TinyLM()
    compiled_src = copy.deepcopy(eager)
    compiled = torch.compile(compiled_src, backend=backend)
    opt_e = MuGrokfast(param_groups(eager), grokfast="dual", grokfast_window=2)
    opt_c = MuGrokfast(param_groups(compiled_src), grokfast="dual", grokfast_window=2)
    for t in range(4):
        for model, opt in ((eager, opt_e), (compiled, opt_c)):
            opt.zero_grad()
            lm_loss(model, t).backward()
            opt.step()
    for a, b in zip(eager.parameters(), compiled_src.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
