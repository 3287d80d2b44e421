"""Early smoke-level checks of the public API (deeper tests live in the other files)."""

import cognate_model
import torch
from cognate_model import CognateConfig, CognateForCausalLM
from transformers import AutoConfig, AutoModelForCausalLM


def test_auto_classes_know_cognate(tmp_path, make_tiny):
    model = make_tiny()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CognateConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CognateForCausalLM)
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, 256, (2, 24))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert cognate_model.__version__


def test_forward_returns_loss_logits_and_metrics(make_tiny):
    model = make_tiny().train()
    ids = torch.randint(0, 256, (2, 24))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 24, 256)
    assert out.cycle_losses.shape == (model.config.trm_cycles + 1,)
    assert torch.isfinite(out.loss)
    for key in (
        "act/steps_mean",
        "act/ponder_cost",
        "ltm/gate_mean",
        "ltm/memory_norm",
        "trm/lm_loss",
    ):
        assert isinstance(out.metrics[key], float)
