"""The parameter counts the READMEs quote for models trained on the curriculum."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_train.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[3]


def _params(preset: str, specialization: str, vocab: int) -> int:
    cfg = CognateConfig.from_preset(preset, specialization, vocab_size=vocab)
    with torch.device("meta"):
        return sum(p.numel() for p in CognateForCausalLM(cfg).parameters())


@pytest.mark.parametrize(
    "preset, specialization",
    [("cognate-25m", "reasoning"), ("cognate-25m", "memory"), ("cognate-tiny", "reasoning"),
     ("cognate-tiny", "memory")],
)  # fmt: skip
def test_readmes_quote_the_curriculum_models_sizes(preset, specialization):
    n = _params(preset, specialization, len(build_tokenizer()))
    for readme in ("packages/cognate-train/README.md", "packages/cognate-model/README.md"):
        assert f"{n:,}" in (ROOT / readme).read_text(), (readme, preset, specialization, n)


def test_the_25m_figure_is_the_design_vocabulary():
    # the READMEs' "25.5M" is cognate-25m at its own 32768-id vocabulary
    assert round(_params("cognate-25m", "reasoning", 32768) / 1e6, 1) == 25.5
