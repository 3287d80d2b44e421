"""Shared helpers for the cognate-train core tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

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


class StopAt:
    """A tokenizer with another `<eos>` (a token the model under test emits often, so that rows
    stop at different steps and a batch can end before its budget)."""

    def __init__(self, tok, eos: int) -> None:
        self.tok, self.bos_token_id, self.eos_token_id = tok, tok.bos_token_id, eos

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tok.decode(*args, **kwargs)


class NoCacheArgs(torch.nn.Module):
    """A model whose forward takes no cache arguments at all; `widths` records each call's
    sequence length."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.widths = inner, []

    def forward(self, input_ids, attention_mask=None):
        self.widths.append(input_ids.shape[1])
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


class ReturnsNoCache(NoCacheArgs):
    """A model that takes `past_key_values` / `use_cache` but returns no cache."""

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None):
        assert past_key_values is None
        return SimpleNamespace(logits=super().forward(input_ids, attention_mask).logits)


@pytest.fixture(scope="session")
def stop_at():
    """``stop_at(tokenizer, eos)``: `StopAt`, the tokenizer with another `<eos>`."""
    return StopAt


@pytest.fixture(scope="session")
def no_cache_models():
    """The generation test doubles by name: `NoCacheArgs`, `ReturnsNoCache`."""
    return {"no_cache_args": NoCacheArgs, "returns_no_cache": ReturnsNoCache}
