"""The transformers causal-LM contract, ported from transformers' common model tests.

`CognateModelTester` plays the role of the `*ModelTester` classes of transformers' test suite
(it builds a small config and inputs); the test class below follows `ModelTesterMixin` /
`GenerationTesterMixin`: each test checks one piece of the contract against an independent
reference (a second forward computed another way, transformers' own loss, HF's helpers).
"""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.nn.functional as F
from cognate_model import CognateConfig, CognateForCausalLM, CognateModel
from cognate_model.modeling_cognate import LazyMetrics


class CognateModelTester:
    """Builds a tiny config and random inputs, like transformers' LlamaModelTester."""

    def __init__(
        self,
        batch_size: int = 3,
        seq_length: int = 11,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 37,
        window_size: int = 6,
    ) -> None:
        self.batch_size, self.seq_length = batch_size, seq_length
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size, self.window_size = intermediate_size, window_size

    def get_config(self, **overrides: object) -> CognateConfig:
        values = dict(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            n_layers=self.num_hidden_layers,
            n_heads=self.num_attention_heads,
            d_ff=self.intermediate_size,
            max_seq_len=64,
            window_size=self.window_size,
            d_memory=8,
            ltm_chunk_size=4,
            trm_cycles=2,
            trm_micro_steps=1,
            pad_token_id=0,
        )
        return CognateConfig(**(values | overrides))

    def prepare_config_and_inputs(self) -> tuple[CognateConfig, torch.Tensor, torch.Tensor]:
        input_ids = torch.randint(1, self.vocab_size, (self.batch_size, self.seq_length))
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :3] = 0  # one left-padded row
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self) -> tuple[CognateConfig, dict]:
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}

    def create_model(self, config: CognateConfig, cls: type = CognateForCausalLM):
        torch.manual_seed(0)
        model = cls(config).eval()
        with torch.no_grad():  # away from init (zero/constant biases would hide bugs)
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return model


@pytest.fixture
def tester() -> CognateModelTester:
    return CognateModelTester()


class TestCognateModelCommon:
    """ModelTesterMixin-style checks."""

    def test_model_output_shapes(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        base = tester.create_model(config, CognateModel)(**inputs)
        assert base.last_hidden_state.shape == (3, 11, config.hidden_size)
        out = tester.create_model(config)(**inputs)
        assert out.logits.shape == (3, 11, config.vocab_size)

    def test_hidden_states_output(self, tester):
        """n_layers + 1 backbone states (embeddings ... final norm), the last one what the
        memory reads; y_0..y_C under recursion_states; config.output_hidden_states honoured."""
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        out = model(**inputs, output_hidden_states=True)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert all(h.shape == (3, 11, config.hidden_size) for h in out.hidden_states)
        emb = model.get_input_embeddings()(inputs["input_ids"])
        torch.testing.assert_close(out.hidden_states[0], emb)
        base = model.model(**inputs)  # last state: the backbone output before the memory gate
        gated, _, _ = model.model.memory(out.hidden_states[-1], inputs["attention_mask"])
        torch.testing.assert_close(gated, base.last_hidden_state)
        assert len(out.recursion_states) == config.trm_cycles + 1
        torch.testing.assert_close(out.recursion_states[0], base.last_hidden_state)
        assert model(**inputs).hidden_states is None
        model.config.output_hidden_states = True
        assert len(model(**inputs).hidden_states) == config.num_hidden_layers + 1

    def test_return_dict_false_gives_the_tuple(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        ref = model(**inputs, labels=inputs["input_ids"], use_cache=False)
        tup = model(**inputs, labels=inputs["input_ids"], use_cache=False, return_dict=False)
        assert isinstance(tup, tuple)
        torch.testing.assert_close(tup[0], ref.loss)
        torch.testing.assert_close(tup[1], ref.logits)
        model.config.return_dict = False
        assert isinstance(model(**inputs), tuple)

    def test_inputs_embeds_equal_input_ids(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        a = model(**inputs).logits
        b = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="exactly one"):
            model(input_ids=inputs["input_ids"], inputs_embeds=embeds)

    def test_position_ids_shift_nothing(self, tester):
        """Rotary is relative: any per-row offset of position_ids gives the same logits;
        HF's cumsum positions for a left-padded row equal that row alone."""
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        ref = model(**inputs).logits
        shifted = torch.arange(11)[None].repeat(3, 1) + torch.tensor([[5], [0], [123]])
        torch.testing.assert_close(
            model(**inputs, position_ids=shifted).logits, ref, rtol=0, atol=1e-5
        )
        with pytest.raises(ValueError, match="position_ids"):
            model(**inputs, position_ids=torch.arange(10))

    def test_logits_to_keep(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        full = model(**inputs).logits
        torch.testing.assert_close(model(**inputs, logits_to_keep=1).logits, full[:, -1:])
        idx = torch.tensor([0, 4, 10])
        torch.testing.assert_close(model(**inputs, logits_to_keep=idx).logits, full[:, idx])
        labels = inputs["input_ids"]
        kept = model(**inputs, labels=labels, logits_to_keep=2)
        torch.testing.assert_close(kept.loss, model(**inputs, labels=labels).loss)
        assert kept.logits.shape[1] == 2

    def test_lm_loss_matches_transformers_loss_function(self, tester):
        """The final answer's CE equals transformers' ForCausalLMLoss on the same logits."""
        from transformers.loss.loss_utils import ForCausalLMLoss

        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        labels = inputs["input_ids"].clone()
        labels[0, :4] = -100  # a padding position's prediction is never scored (ours: masked)
        out = model(**inputs, labels=labels)
        ref = ForCausalLMLoss(out.logits, labels, config.vocab_size)
        torch.testing.assert_close(out.lm_loss, ref)
        shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
        again = model(**inputs, shift_labels=shifted)  # already shifted, as HF passes it
        torch.testing.assert_close(again.loss, out.loss)

    def test_num_items_in_batch_makes_accumulation_exact(self, tester):
        """Micro-batches given num_items_in_batch = all targets sum to the full batch's loss:
        CE terms exactly, and the ACT terms (means over targets) weighted by target share.
        Off here: the diversity hinge (not a mean) and the gate term (a mean over tokens)."""
        config = tester.get_config(act_diversity_weight=0.0, gate_entropy_weight=0.0)
        model = tester.create_model(config).train()
        ids = torch.randint(1, 99, (4, 11))
        labels = ids.clone()
        labels[0, 5:] = -100  # uneven target counts between the micro-batches
        full = model(ids, labels=labels).loss
        n = (labels[:, 1:] != -100).sum()
        parts = [
            model(ids[s], labels=labels[s], num_items_in_batch=n).loss
            for s in (slice(0, 1), slice(1, 4))
        ]
        torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-6)

    def test_kwargs_contract(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        ref = model(**inputs).logits
        out = model(**inputs, cache_position=torch.arange(11), output_attentions=False)
        torch.testing.assert_close(out.logits, ref)
        with pytest.raises(ValueError, match="output_attentions"):
            model(**inputs, output_attentions=True)
        with pytest.raises(TypeError, match="unexpected"):
            model(**inputs, bogus=1)

    def test_metrics_are_lazy(self, tester):
        """No device-to-host copy until read; then the same values as the tensors."""
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        out = model(**inputs, labels=inputs["input_ids"])
        assert isinstance(out.metrics, LazyMetrics) and out.metrics._pending is not None
        assert out.metrics["act/steps_mean"] == pytest.approx(out.act_steps_mean.item())
        assert out.metrics._pending is None
        assert dict(out.metrics)["ltm/gate_mean"] == pytest.approx(out.ltm_gate_mean.item())
        assert copy.deepcopy(out.metrics) == out.metrics

    def test_batching_equivalence(self, tester):
        """Each row alone gives the batch's logits (left padding dropped)."""
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        batch = model(**inputs).logits
        for row in range(3):
            real = inputs["attention_mask"][row].bool()
            alone = model(inputs["input_ids"][row : row + 1, real]).logits[0]
            torch.testing.assert_close(batch[row, real], alone, rtol=0, atol=1e-5)

    def test_save_load_and_resize_embeddings(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            loaded = CognateForCausalLM.from_pretrained(d).eval()
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
        old, vocab = model(**inputs).logits, config.vocab_size
        model.resize_token_embeddings(vocab + 7, mean_resizing=False)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert model.config.vocab_size == vocab + 7
        new = model(**inputs).logits
        assert new.shape[-1] == vocab + 7
        torch.testing.assert_close(new[..., :vocab], old, rtol=0, atol=1e-6)

    def test_training_reaches_every_parameter(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config).train()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert missing == []


@pytest.mark.parametrize(
    "enable", ["gradient_checkpointing_enable", "activation_checkpointing_enable"]
)
def test_gradient_checkpointing_gives_the_same_gradients(tester, enable):
    # transformers renamed gradient_checkpointing_enable to activation_checkpointing_enable
    # (the old name now warns); older releases in our range have only the old name, silent
    renamed = hasattr(CognateForCausalLM, "activation_checkpointing_enable")
    if not renamed and enable.startswith("activation"):
        pytest.skip("this transformers has no activation_checkpointing_enable")
    config, inputs = tester.prepare_config_and_inputs_for_common()
    grads = []
    for checkpointing in (False, True):
        model = tester.create_model(config).train()
        if checkpointing:
            warns = renamed and enable.startswith("gradient")
            with pytest.warns(FutureWarning) if warns else _nullcontext():
                getattr(model, enable)()
            assert all(block.gradient_checkpointing for block in model.model.layers)
        out = model(**inputs, labels=inputs["input_ids"])
        assert out.past_key_values is None
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


class TestCognateGenerationCommon:
    """GenerationTesterMixin-style checks (the cache ones live in test_cache.py)."""

    def test_greedy_generate_dict_outputs(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        out = model.generate(
            **inputs,
            max_new_tokens=4,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
        )
        assert out.sequences.shape == (3, 15) and len(out.logits) == 4
        # each step's logits equal a full forward's last-position logits on that prefix
        for step, logits in enumerate(out.logits):
            prefix = out.sequences[:, : 11 + step]
            mask = F.pad(inputs["attention_mask"], (0, step), value=1)
            ref = model(prefix, attention_mask=mask, use_cache=False).logits[:, -1]
            torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)

    def test_generate_from_inputs_embeds(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        from_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        from_embeds = model.generate(
            inputs_embeds=embeds,
            attention_mask=inputs["attention_mask"],
            max_new_tokens=5,
            do_sample=False,
        )
        assert torch.equal(from_embeds, from_ids[:, 11:])  # HF returns only new tokens here

    def test_continue_from_a_returned_cache(self, tester):
        """generate(past_key_values=cache) continues where a first generate stopped."""
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config)
        first = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True
        )
        mask = F.pad(inputs["attention_mask"], (0, 3), value=1)
        more = model.generate(
            first.sequences,
            attention_mask=mask,
            past_key_values=first.past_key_values,
            max_new_tokens=4,
            do_sample=False,
        )
        straight = model.generate(**inputs, max_new_tokens=7, do_sample=False)
        assert torch.equal(more, straight)
