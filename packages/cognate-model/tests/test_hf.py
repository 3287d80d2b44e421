"""Hugging Face integration: Auto classes, safetensors round trip, generate()."""

import json

import pytest
import torch
from cognate_model import CognateConfig, CognateForCausalLM, CognateModel
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM


def test_auto_classes_are_registered_on_import():
    config = AutoConfig.for_model("cognate", vocab_size=100, d_model=32, n_heads=2, d_memory=8)
    assert isinstance(config, CognateConfig)
    assert isinstance(AutoModelForCausalLM.from_config(config), CognateForCausalLM)
    assert isinstance(AutoModel.from_config(config), CognateModel)


def test_standard_attribute_names_map_to_ours():
    config = CognateConfig.from_preset("cognate-tiny")
    assert config.num_hidden_layers == config.n_layers
    assert config.hidden_size == config.d_model
    assert config.num_attention_heads == config.n_heads
    assert config.max_position_embeddings == config.max_seq_len
    config.num_hidden_layers = 5
    assert config.n_layers == 5


@pytest.mark.parametrize("ltm_type", ["ema", "titans"])
@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_round_trip(tmp_path, make_tiny, tied, ltm_type):
    model = make_tiny(tie_word_embeddings=tied, ltm_type=ltm_type)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "cognate" and saved["tie_word_embeddings"] is tied
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is CognateForCausalLM
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) is tied
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # including the perturbed ACT bias, decays
    ids = torch.randint(0, 256, (2, 30))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    a, b = loaded.config.to_dict(), model.config.to_dict()
    a.pop("_name_or_path"), b.pop("_name_or_path")
    assert a == b


def _manual_greedy(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat((ids, nxt), 1)
    return ids


def test_generate_greedy_equals_manual_argmax_loop(make_tiny):
    model = make_tiny()
    prompt = torch.randint(0, 256, (3, 7))
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False
    )
    assert torch.equal(out, _manual_greedy(model, prompt, 9))


def test_generate_left_padded_batch_equals_each_row_alone(make_tiny):
    model = make_tiny().double()
    a, b = torch.randint(1, 256, (1, 4)), torch.randint(1, 256, (1, 8))
    batch = torch.cat((torch.cat((torch.zeros(1, 4, dtype=torch.long), a), 1), b))
    mask = (torch.arange(8) >= torch.tensor([[4], [0]])).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(out[0, 4:], _manual_greedy(model, a, 6)[0])
    assert torch.equal(out[1], _manual_greedy(model, b, 6)[0])


def test_generate_sampling_equals_manual_multinomial_loop(make_tiny):
    model = make_tiny()
    prompt = torch.randint(0, 256, (2, 5))
    torch.manual_seed(123)
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=8,
        do_sample=True,
        top_k=None,
        top_p=None,
        temperature=0.7,
    )
    torch.manual_seed(123)
    ids = prompt
    for _ in range(8):
        probs = torch.softmax(model(ids).logits[:, -1] / 0.7, -1)
        ids = torch.cat((ids, torch.multinomial(probs, 1)), 1)
    assert torch.equal(out, ids)


def test_memory_state_continues_the_stream(make_tiny):
    """The model's returned state is the LTM's, and passing it in changes only what the LTM
    feeds (a zero state is the same as none)."""
    model = make_tiny()
    ids = torch.randint(0, 256, (2, 12))
    first = model(ids)
    assert first.memory_state.shape == (2, model.config.d_memory)
    zero = model(ids, memory_state=torch.zeros(2, model.config.d_memory))
    torch.testing.assert_close(zero.logits, first.logits, rtol=0, atol=1e-6)
    carried = model(ids, memory_state=first.memory_state)
    assert (carried.logits - first.logits).abs().max() > 1e-6


def test_all_ignored_labels_give_a_finite_loss(make_tiny):
    model = make_tiny().train()
    ids = torch.randint(0, 256, (2, 10))
    out = model(ids, labels=torch.full_like(ids, -100))
    assert torch.isfinite(out.loss) and out.lm_loss.item() == 0.0
    out.loss.backward()


def test_input_validation(make_tiny):
    model = make_tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="memory_state"):
        model(torch.zeros(2, 5, dtype=torch.long), memory_state=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="unexpected"):
        model(torch.zeros(1, 5, dtype=torch.long), bogus=1)
