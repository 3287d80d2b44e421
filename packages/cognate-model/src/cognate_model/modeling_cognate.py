"""Hugging Face glue: `CognateModel` (backbone + memory) and `CognateForCausalLM` (+ TRM + heads).

Data flow and shapes (B batch, T tokens, D = d_model, Cm = d_memory, C = trm_cycles, V vocab):

    input_ids (B, T)
      -> token embedding                                         (B, T, D)
      -> n_layers x [sliding-window self-attention, SwiGLU]      (B, T, D)   rotary positions
      -> RMSNorm -> y
      -> LTM: m = scan(W_down y) (B, T, Cm), M = W_up m; MAG gate  (B, T, D)  [use_ltm]
      -> TRM recursion: y_0..y_C                                  C+1 x (B, T, D)
      -> LM head on each y_c (RMSNorm, Linear D->V, tied to the embedding if asked)
    logits = LM(y_C) (B, T, V); loss = deep supervision + ACT + gate entropy terms

There is no KV cache: the model is stateless, every call recomputes from the tokens it is
given (generation passes the whole prefix each step). The one explicit carry is the LTM's
`memory_state` (B, Cm): pass it in to continue a stream, read the new one from the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from .attention import Block, RMSNorm, rotary_cos_sin, sliding_window_mask
from .configuration_cognate import CognateConfig
from .heads import (
    IGNORE_INDEX,
    HaltingLinear,
    act_losses,
    expected_steps,
    halting_steps,
    masked_mean,
    masked_std,
    shift_labels,
    token_cross_entropy,
)
from .memory import LongTermMemory, MemoryAsGate, binary_entropy
from .recursion import TRMRecursion


@dataclass
class CognateModelOutput(ModelOutput):
    """Backbone output: features (B, T, D), the LTM's final state, gate and memory streams."""

    last_hidden_state: Tensor | None = None
    memory_state: Tensor | None = None
    gate: Tensor | None = None
    memory: Tensor | None = None


@dataclass
class CognateCausalLMOutput(ModelOutput):
    """What `CognateForCausalLM.forward` returns.

    loss: the training objective (deep supervision CE + ACT + gate terms), with labels.
    logits: (B, T, V) from the final answer y_C (with ACT halting at inference: per-token).
    lm_loss: next-token CE of `logits` alone (what perplexity and validation should use).
    cycle_losses: (C+1,) CE of y_0..y_C. act_steps: (B, T) cycles each token used.
    halt_probs: (C, B, T) halting probability of each token after each cycle.
    act_steps_mean / act_steps_std: over real (non-padding) tokens. ponder_cost: mean expected
    cycles. ltm_gate_mean: mean g (weight of the attention path; 1 - g is memory usage).
    memory_norm: mean L2 norm of m_t. memory_state: (B, Cm) final LTM state.
    hidden_states (with output_hidden_states): the recursion's answers (y_0, ..., y_C).
    metrics: plain floats keyed "act/...", "ltm/...", "trm/..." for the trainer's logs.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    lm_loss: Tensor | None = None
    cycle_losses: Tensor | None = None
    act_steps: Tensor | None = None
    halt_probs: Tensor | None = None
    act_steps_mean: Tensor | None = None
    act_steps_std: Tensor | None = None
    ponder_cost: Tensor | None = None
    ltm_gate_mean: Tensor | None = None
    memory_norm: Tensor | None = None
    memory_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    metrics: dict[str, float] | None = None


class CognatePreTrainedModel(PreTrainedModel):
    config_class = CognateConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["Block", "RecursionBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, 0.02) linears/embeddings, ones for norms (the HF defaults), plus ours:
        LTM decays spread over time scales, ACT bias at -2 (start by refining), output
        projections of residual branches scaled by 1/sqrt(2 * n_layers) (GPT-2)."""
        # Only modules owning parameters directly get here (HF skips pure containers in custom
        # code), hence the markers on the Linear layers themselves.
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, LongTermMemory):
            init.copy_(module.decay_logit, module.initial_decay_logit())
        elif isinstance(module, HaltingLinear):
            init.constant_(module.bias, HaltingLinear.INIT_BIAS)
        elif getattr(module, "is_residual_output", False):
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))


class CognateModel(CognatePreTrainedModel):
    """Embedding, sliding-window blocks, final norm and (optionally) the LTM + MAG gate."""

    def __init__(self, config: CognateConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, config.rms_norm_eps, config.dropout)
            for _ in range(config.n_layers)
        )
        self.norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.memory = (
            MemoryAsGate(
                config.d_model,
                config.d_memory,
                config.ltm_decay_min,
                config.ltm_decay_max,
                config.ltm_chunk_size,
                config.rms_norm_eps,
            )
            if config.use_ltm
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def attention_inputs(
        self, seq_len: int, attention_mask: Tensor | None, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The shared (mask, cos, sin) for every attention layer of one forward."""
        mask = sliding_window_mask(seq_len, self.config.window_size, attention_mask, device)
        cos, sin = rotary_cos_sin(
            seq_len, self.config.head_dim, self.config.rope_theta, device, dtype
        )
        return mask, cos, sin

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        memory_state: Tensor | None = None,
        attention_inputs: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> CognateModelOutput:
        _check_input_ids(input_ids, self.config)
        x = self.drop(self.embed_tokens(input_ids))
        mask, cos, sin = attention_inputs or self.attention_inputs(
            input_ids.shape[1], attention_mask, input_ids.device, x.dtype
        )
        for layer in self.layers:
            x = layer(x, mask, cos, sin)
        x = self.norm(x)
        if self.memory is None:
            return CognateModelOutput(last_hidden_state=x)
        x, aux, new_state = self.memory(x, attention_mask, memory_state)
        return CognateModelOutput(
            last_hidden_state=x, memory_state=new_state, gate=aux["gate"], memory=aux["memory"]
        )


def _check_input_ids(input_ids: Tensor, config: CognateConfig) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > config.max_seq_len:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} positions, more than max_seq_len="
            f"{config.max_seq_len}"
        )


class CognateForCausalLM(CognatePreTrainedModel, GenerationMixin):
    """Cognate: TRM recursive refinement with ACT halting on a Titans-MAG backbone."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CognateConfig) -> None:
        super().__init__(config)
        self.model = CognateModel(config)
        self.recursion = TRMRecursion(
            config.d_model,
            config.n_heads,
            config.d_ff,
            config.rms_norm_eps,
            config.dropout,
            config.trm_cycles,
            config.trm_micro_steps,
            config.detach_between_cycles,
            config.use_act,
        )
        self.out_norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def lm_logits(self, y: Tensor) -> Tensor:
        return self.lm_head(self.out_norm(y))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        memory_state: Tensor | None = None,
        act_halting: bool | None = None,
        return_metrics: bool = True,
        output_hidden_states: bool = False,
        **kwargs: object,
    ) -> CognateCausalLMOutput:
        """Next-token logits, and with `labels` the full training loss.

        input_ids, attention_mask, labels: (B, T) (labels as input_ids, -100 ignored; the
        model shifts them). memory_state: (B, d_memory) LTM state to continue from.
        act_halting: freeze halted tokens (default: `use_act and not self.training`).
        return_metrics: fill `metrics` with floats (one host sync); generation turns it off.
        """
        unexpected = set(kwargs) - {"use_cache", "past_key_values", "return_dict", "cache_position"}
        if unexpected:
            raise TypeError(f"unexpected arguments to forward: {sorted(unexpected)}")
        cfg = self.config
        _check_input_ids(input_ids, cfg)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        if act_halting is None:
            act_halting = cfg.use_act and not self.training
        dtype = self.model.embed_tokens.weight.dtype
        if torch.is_autocast_enabled(input_ids.device.type):
            dtype = torch.get_autocast_dtype(input_ids.device.type)
        attn = self.model.attention_inputs(
            input_ids.shape[1], attention_mask, input_ids.device, dtype
        )
        base = self.model(input_ids, attention_mask, memory_state, attention_inputs=attn)
        rec = self.recursion(
            base.last_hidden_state,
            *attn,
            halt_threshold=cfg.act_threshold if (act_halting and cfg.use_act) else None,
        )
        logits = self.lm_logits(rec.ys[-1])

        real = (
            attention_mask.to(torch.bool)
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        steps = None
        if rec.halt_logits is not None:
            steps = halting_steps(rec.halt_logits.detach(), cfg.act_threshold)
        out = CognateCausalLMOutput(logits=logits, memory_state=base.memory_state)
        if output_hidden_states:
            out.hidden_states = tuple(rec.ys)

        terms: dict[str, Tensor] = {}
        if labels is not None:
            out.loss, out.cycle_losses, terms = self._loss(
                rec.ys, logits, rec.halt_logits, base.gate, labels, attention_mask, real
            )
            out.lm_loss = out.cycle_losses[-1]

        if steps is not None:
            stepsf = steps.float()
            out.act_steps = steps
            out.halt_probs = torch.sigmoid(rec.halt_logits.detach())
            out.act_steps_mean = masked_mean(stepsf, real)
            out.act_steps_std = masked_std(stepsf, real)
            out.ponder_cost = masked_mean(expected_steps(rec.halt_logits.detach()), real)
        if base.gate is not None:
            out.ltm_gate_mean = masked_mean(base.gate.detach().float(), real[..., None])
            out.memory_norm = masked_mean(base.memory.detach().norm(dim=-1), real)
        if return_metrics:
            out.metrics = _collect_metrics(out, terms, rec.halt_logits, real)
        return out

    def _loss(
        self,
        ys: list[Tensor],
        logits: Tensor,
        halt_logits: Tensor | None,
        gate: Tensor | None,
        labels: Tensor,
        attention_mask: Tensor | None,
        real: Tensor,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """loss = sum_c w_c CE(y_c) + ACT terms + gate entropy term; also per-cycle CE, parts.

        w: `supervision_weights()` (sum 1). ACT: act_loss_weight * BCE(p_c, [argmax_c ==
        target]) + ponder_weight * E[steps] / C + act_diversity_weight * diversity.
        Gate: gate_entropy_weight * (ln 2 - H(g)).
        """
        cfg = self.config
        targets = shift_labels(labels)
        if attention_mask is not None:  # neither the position nor its target is padding
            pad = ~(attention_mask.bool() & (shift_labels(attention_mask) == 1))
            targets = targets.masked_fill(pad, IGNORE_INDEX)
        valid = targets != IGNORE_INDEX
        cycle_ce, correct = [], []
        for c, y in enumerate(ys):
            cycle_logits = logits if c == len(ys) - 1 else self.lm_logits(y)
            cycle_ce.append(token_cross_entropy(cycle_logits, targets))
            if c > 0 and halt_logits is not None:
                correct.append(cycle_logits.detach().argmax(-1) == targets)
        weights = cfg.supervision_weights()
        loss = sum(w * ce for w, ce in zip(weights, cycle_ce, strict=True))
        terms = {"trm/deep_supervision": loss}
        if halt_logits is not None:
            act = act_losses(halt_logits, torch.stack(correct), valid, cfg.act_diversity_target)
            loss = (
                loss
                + cfg.act_loss_weight * act["bce"]
                + cfg.ponder_weight * act["ponder"]
                + cfg.act_diversity_weight * act["diversity"]
            )
            terms.update({f"act/{k}": v for k, v in act.items()})
            terms["act/accuracy_final"] = masked_mean(correct[-1].float(), valid)
        if gate is not None:
            entropy = masked_mean(binary_entropy(gate), real[..., None])
            loss = loss + cfg.gate_entropy_weight * (math.log(2) - entropy)
            terms["ltm/gate_entropy"] = entropy
        return loss, torch.stack(cycle_ce), terms

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: object
    ) -> dict[str, object]:
        """No KV cache: every step re-reads the whole prefix (metrics off)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask, "return_metrics": False}

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # no KV cache to build
        return False


@torch.compiler.disable
def _collect_metrics(
    out: CognateCausalLMOutput,
    terms: dict[str, Tensor],
    halt_logits: Tensor | None,
    real: Tensor,
) -> dict[str, float]:
    """All scalar diagnostics as floats, fetched with one device-to-host copy."""
    named: dict[str, Tensor] = {k: v.detach() for k, v in terms.items()}
    if out.loss is not None:
        named["trm/lm_loss"] = out.lm_loss.detach()
        for c, ce in enumerate(out.cycle_losses.detach()):
            named[f"trm/loss_y{c}"] = ce
    if out.act_steps_mean is not None:
        named["act/steps_mean"] = out.act_steps_mean
        named["act/steps_std"] = out.act_steps_std
        named["act/ponder_cost"] = out.ponder_cost
        p = torch.sigmoid(halt_logits.detach())
        named["act/halt_prob_mean"] = masked_mean(p, real[None])
        named["act/halt_prob_std"] = masked_std(p, real[None])
    if out.ltm_gate_mean is not None:
        named["ltm/gate_mean"] = out.ltm_gate_mean
        named["ltm/usage"] = 1 - out.ltm_gate_mean
        named["ltm/memory_norm"] = out.memory_norm
    if not named:
        return {}
    values = torch.stack([v.float().reshape(()) for v in named.values()]).tolist()
    return dict(zip(named.keys(), values, strict=True))


AutoConfig.register(CognateConfig.model_type, CognateConfig, exist_ok=True)
AutoModel.register(CognateConfig, CognateModel, exist_ok=True)
AutoModelForCausalLM.register(CognateConfig, CognateForCausalLM, exist_ok=True)

__all__ = [
    "CognateCausalLMOutput",
    "CognateForCausalLM",
    "CognateModel",
    "CognateModelOutput",
    "CognatePreTrainedModel",
]
