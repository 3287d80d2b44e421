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
def _seed():
    torch.manual_seed(0)
