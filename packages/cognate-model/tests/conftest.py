from collections.abc import Callable

import pytest
import torch
from cognate_model import CognateConfig, CognateForCausalLM


def _tiny_model(**overrides) -> CognateForCausalLM:
    """A tiny model in eval mode, weights perturbed away from their init (tied init values
    such as the zero/constant biases would hide bugs)."""
    torch.manual_seed(0)
    model = CognateForCausalLM(CognateConfig.from_preset("cognate-tiny", **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def make_tiny() -> Callable[..., CognateForCausalLM]:
    return _tiny_model


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, single-threaded: these tensors are tiny, and on a loaded 2-core machine
    intra-op threads contend (100x slower matmuls measured). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
