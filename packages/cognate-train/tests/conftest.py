"""Shared helpers for the cognate-train core tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cognate_train.cli import main
from safetensors.torch import load_file


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.fixture(scope="session")
def same_weights():
    """``same_weights(dir_a, dir_b)``: assert two checkpoints hold bit-identical tensors."""
    return assert_same_weights


@pytest.fixture(scope="session")
def load_weights():
    return weights


@pytest.fixture(scope="session")
def single_thread():
    """Bit-exact comparisons across processes need the same intra-op thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, single_thread) -> Path:
    """One uninterrupted ``train --preset smoke`` run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    assert main(["train", "--preset", "smoke", "--output-dir", str(out)]) == 0
    return out
