"""Hugging Face glue: `CognateModel` (backbone + memory) and `CognateForCausalLM` (+ TRM + heads).

Data flow and shapes (B batch, T tokens, D = d_model, Cm = d_memory, C = trm_cycles, V vocab):

    input_ids (B, T)  (or inputs_embeds (B, T, D))
      -> token embedding                                         (B, T, D)
      -> n_layers x [sliding-window self-attention, SwiGLU]      (B, T, D)   rotary positions
         ltm_type "titans": in the mag_layers, attention output * sigmoid(RMSNorm(M(h)))
         with M Titans' neural memory read on the block's input h (`titans.MAGBlock`)
      -> RMSNorm -> y
      -> ltm_type "ema": m = scan(W_down y) (B, T, Cm), M = W_up m; MAG gate  (B, T, D)
      -> TRM recursion: y_0..y_C                                  C+1 x (B, T, D)
      -> LM head on each y_c (RMSNorm, Linear D->V, tied to the embedding if asked)
    logits = LM(y_C) (B, T, V); loss = deep supervision + ACT + gate entropy terms

Incremental decoding: a `CognateCache` (`cache.py`) carries, per backbone layer, the keys and
values of the last window_size - 1 positions, the LTM state(s) and the recursion's feature
keys/values; a step then reads only its new tokens and gives the logits of a full forward.
Without a cache every call recomputes from the tokens it is given. The model stores nothing
between calls: the cache and `memory_state` are passed in and returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .attention import Attention, Block, RMSNorm, WindowMask, residual_dropout, rotary_cos_sin
from .cache import CognateCache
from .configuration_cognate import CognateConfig
from .heads import (
    IGNORE_INDEX,
    HaltingLinear,
    act_losses,
    expected_steps,
    halting_steps,
    masked_mean,
    masked_std,
    token_cross_entropy,
)
from .heads import (
    shift_labels as shift_targets,
)
from .memory import LongTermMemory, MemoryAsGate, binary_entropy
from .recursion import RecursionOutput, TRMRecursion
from .titans import MAGBlock, NeuralMemory, TitansState

logger = logging.get_logger(__name__)


@dataclass
class CognateModelOutput(ModelOutput):
    """Backbone output: features (B, T, D), the LTM's final state, gate and memory streams.

    hidden_states (with output_hidden_states): the embeddings and each layer's output, the last
    one after the final norm (n_layers + 1 tensors, as in LlamaModel); past_key_values: the
    cache, when one was used.
    """

    last_hidden_state: Tensor | None = None
    past_key_values: CognateCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    memory_state: Tensor | tuple[TitansState, ...] | None = None
    gate: Tensor | None = None
    memory: Tensor | None = None
    memory_diagnostics: dict[str, Tensor] | None = None


@dataclass
class CognateCausalLMOutput(ModelOutput):
    """What `CognateForCausalLM.forward` returns.

    loss: the training objective (deep supervision CE + ACT + gate terms), with labels.
    logits: (B, T, V) from the final answer y_C (with ACT halting at inference: per-token),
    only the last `logits_to_keep` positions when asked.
    past_key_values: the `CognateCache` (with use_cache), to pass to the next call.
    hidden_states (with output_hidden_states): the backbone's per-layer states, as in HF models
    (embeddings, layer 1..n_layers-1 outputs, final-norm output: n_layers + 1 tensors).
    recursion_states (with output_hidden_states): the recursion's answers (y_0, ..., y_C).
    lm_loss: next-token CE of `logits` alone (what perplexity and validation should use).
    cycle_losses: (C+1,) CE of y_0..y_C. act_steps: (B, T) cycles each token used.
    halt_probs: (C, B, T) halting probability of each token after each cycle.
    act_steps_mean / act_steps_std: over real (non-padding) tokens. ponder_cost: mean expected
    cycles. ltm_gate_mean: mean g (ema: weight of the attention path, 1 - g is memory usage;
    titans: the gate sigmoid(RMSNorm(M)) on the attention output). memory_norm: mean L2 norm
    of m_t (ema) or Frobenius norm of the memory weights read (titans). ltm_surprise (titans):
    the associative loss ||W k - v||^2, mean over tokens and MAG layers.
    memory_state: (B, Cm) final LTM state (ema), or one `TitansState` per MAG layer (titans).
    recursion_state: the final (y_C, z_C), each (B, T, D), detached: pass it back as
    `recursion_state` to continue refining the same positions (TRM's carry across deep-
    supervision steps).
    metrics: floats keyed "act/...", "ltm/...", "trm/..." for the trainer's logs, copied from
    the device on first read (a plain forward that does not read them does not sync).
    With `return_metrics=False` (as `generate` calls it) the diagnostic fields act_steps ...
    ltm_surprise and metrics stay None: none of their work is done.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: CognateCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    recursion_states: tuple[Tensor, ...] | None = None
    lm_loss: Tensor | None = None
    cycle_losses: Tensor | None = None
    act_steps: Tensor | None = None
    halt_probs: Tensor | None = None
    act_steps_mean: Tensor | None = None
    act_steps_std: Tensor | None = None
    ponder_cost: Tensor | None = None
    ltm_gate_mean: Tensor | None = None
    memory_norm: Tensor | None = None
    ltm_surprise: Tensor | None = None
    memory_state: Tensor | tuple[TitansState, ...] | None = None
    recursion_state: tuple[Tensor, Tensor] | None = None
    metrics: dict[str, float] | None = None


class LazyMetrics(dict):
    """A dict of float diagnostics that copies its 0-d tensors to the host on first read.

    One device-to-host transfer for all of them, and none for a forward whose metrics nobody
    reads (generation, evaluation loops, HF's Trainer). Behaves as a plain dict once read.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self._pending: dict[str, Tensor] | None = tensors

    def _load(self) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        if pending:
            values = torch.stack([v.float().reshape(()) for v in pending.values()]).tolist()
            dict.update(self, zip(pending, values, strict=True))

    def __getitem__(self, key: str) -> float:
        self._load()
        return dict.__getitem__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def __contains__(self, key: object) -> bool:
        self._load()
        return dict.__contains__(self, key)

    def __eq__(self, other: object) -> bool:
        self._load()
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._load()
        return dict.__repr__(self)

    def keys(self):  # noqa: ANN201 (dict views)
        self._load()
        return dict.keys(self)

    def values(self):  # noqa: ANN201
        self._load()
        return dict.values(self)

    def items(self):  # noqa: ANN201
        self._load()
        return dict.items(self)

    def get(self, key: str, default: object = None) -> object:
        self._load()
        return dict.get(self, key, default)

    def copy(self) -> dict[str, float]:
        self._load()
        return dict(dict.items(self))

    def __reduce__(self) -> tuple:
        return dict, (self.copy(),)


class CognatePreTrainedModel(PreTrainedModel):
    config_class = CognateConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
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
        elif isinstance(module, NeuralMemory):  # an empty memory, rates at their start values
            init.zeros_(module.initial_memory)
            init.copy_(module.rates.bias, module.initial_rates_bias())
            init.copy_(module.conv, module.initial_conv())
        elif isinstance(module, Attention) and module.persistent is not None:
            init.normal_(module.persistent, mean=0.0, std=std)
        elif isinstance(module, HaltingLinear):
            init.constant_(module.bias, HaltingLinear.INIT_BIAS)
        elif getattr(module, "is_residual_output", False):
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))


@dataclass
class AttentionInputs:
    """What every attention layer of one forward shares: the sliding-window mask over
    (held + new) keys (None when it allows everything: one new token, no padding), the rotary
    tables of the new positions, and the new tokens' 0/1 mask."""

    mask: WindowMask | None
    cos: Tensor
    sin: Tensor
    new_mask: Tensor | None

    def __iter__(self) -> Iterator[Tensor | WindowMask]:  # `mask, cos, sin = attention_inputs`
        return iter((self.mask, self.cos, self.sin))


class CognateModel(CognatePreTrainedModel):
    """Embedding, sliding-window blocks, final norm and (optionally) the LTM + MAG gate."""

    def __init__(self, config: CognateConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        block = (config.d_model, config.n_heads, config.d_ff, config.rms_norm_eps, config.dropout)
        self.layers = nn.ModuleList(
            MAGBlock(
                *block,
                config.ltm_chunk_size,
                config.persistent_memory_tokens,
                config.ltm_conv_size,
            )
            if i in config.memory_layers()
            else Block(*block)
            for i in range(config.n_layers)
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
                config.max_seq_len,
            )
            if config.use_ltm and config.ltm_type == "ema"
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def attention_inputs(
        self,
        seq_len: int,
        attention_mask: Tensor | None,
        device: torch.device,
        dtype: torch.dtype,
        cache: CognateCache | None = None,
        position_ids: Tensor | None = None,
    ) -> AttentionInputs:
        """The shared mask and rotary tables of one forward over `seq_len` new tokens.

        attention_mask: (B, T), or (B, seen + T) with a cache (HF's convention: the whole
        sequence so far); only its last T columns are read. With a cache this advances it.
        position_ids: rotary positions (B, T) or (T,); default seen..seen+T-1. They only set the
        rotary phases (relative, so a per-row offset changes nothing); which keys a query sees
        follows the sequence order (the causal sliding window and the padding mask).
        """
        new_mask = None if attention_mask is None else attention_mask[:, -seq_len:]
        start, held, key_mask = 0, 0, new_mask
        if cache is not None:
            start, held, key_mask = cache.step(new_mask, seq_len)
        mask = None  # one token, no padding: it sees every held key (at most window - 1)
        if seq_len > 1 or key_mask is not None:
            mask = WindowMask(seq_len, self.config.window_size, key_mask, held, device)
        positions = position_ids
        if positions is None:
            positions = torch.arange(start, start + seq_len, device=device) if start else seq_len
        elif positions.dim() == 2 and positions.shape[0] == 1:
            positions = positions[0]
        cos, sin = rotary_cos_sin(
            positions, self.config.head_dim, self.config.rope_theta, device, dtype
        )
        return AttentionInputs(mask, cos, sin, new_mask)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        memory_state: Tensor | tuple[TitansState, ...] | None = None,
        attention_inputs: AttentionInputs | None = None,
        inputs_embeds: Tensor | None = None,
        past_key_values: CognateCache | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool | None = None,
        memory_diagnostics: bool = True,
        **kwargs: object,
    ) -> CognateModelOutput:
        """Backbone + memory over the new tokens. memory_state: (B, d_memory) (ema) or one
        `TitansState` per MAG layer (titans) to continue a stream (a cache's own state wins
        once it has one). attention_inputs: precomputed by `CognateForCausalLM` so that the
        recursion shares them. memory_diagnostics False: the titans diagnostics are not
        computed (`memory_diagnostics` comes back empty)."""
        _reject_unknown(kwargs)
        x = _embeddings(self.embed_tokens, input_ids, inputs_embeds, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        cache = past_key_values
        attn = attention_inputs or self.attention_inputs(
            x.shape[1], attention_mask, x.device, x.dtype, cache, position_ids
        )
        x = residual_dropout(self.drop, x)
        hidden: list[Tensor] = []
        states = self._titans_states(memory_state, cache)
        new_states: list[TitansState] = []
        diagnostics: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden.append(x)
            kv = None if cache is None else cache.layers[i]
            if not isinstance(layer, MAGBlock):
                x = layer(x, attn.mask, attn.cos, attn.sin, cache=kv)
                continue
            j = len(new_states)
            x, state, diag = layer(
                x,
                attn.mask,
                attn.cos,
                attn.sin,
                cache=kv,
                memory_mask=attn.new_mask,
                memory_state=states[j],
                diagnostics=memory_diagnostics,
            )
            new_states.append(state)
            diagnostics.update({f"{k}/layer{i}": v for k, v in diag.items()})
            if cache is not None:
                cache.titans[j].state = state
        x = self.norm(x)
        out = CognateModelOutput(past_key_values=cache)
        if new_states:
            out.memory_state, out.memory_diagnostics = tuple(new_states), diagnostics
        if output_hidden_states:
            out.hidden_states = (*hidden, x)
        if self.memory is not None:
            if cache is not None and cache.memory.state is not None:
                memory_state = cache.memory.state
            x, aux, out.memory_state = self.memory(x, attn.new_mask, memory_state)
            out.gate, out.memory = aux["gate"], aux["memory"]
            if cache is not None:
                cache.memory.state = out.memory_state
        out.last_hidden_state = x
        return out

    def _titans_states(
        self, memory_state: object, cache: CognateCache | None
    ) -> list[TitansState | None]:
        """Each MAG layer's incoming state: the cache's once it has one, else memory_state."""
        n = len(self.config.memory_layers())
        if n == 0:
            return []
        if cache is not None and cache.titans[0].state is not None:
            return [part.state for part in cache.titans]
        if memory_state is None:
            return [None] * n
        if not isinstance(memory_state, (tuple, list)) or len(memory_state) != n:
            raise ValueError(
                f"memory_state must be a tuple of {n} TitansState (one per MAG layer, "
                f"mag_layers={list(self.config.memory_layers())}) with ltm_type='titans', "
                f"got {type(memory_state).__name__}"
            )
        return [TitansState(*s) for s in memory_state]


# Arguments of the HF causal-LM call that Cognate accepts and ignores: `cache_position` (the
# cache knows its position).
_IGNORED_KWARGS = {"cache_position"}


def _reject_unknown(kwargs: dict[str, object]) -> None:
    if kwargs.get("output_attentions"):
        raise ValueError(
            "output_attentions=True is not supported: attention runs in "
            "scaled_dot_product_attention, which returns no weights"
        )
    unexpected = set(kwargs) - _IGNORED_KWARGS - {"output_attentions"}
    if unexpected:
        raise TypeError(f"unexpected arguments to forward: {sorted(unexpected)}")


def _embeddings(
    embed: nn.Embedding,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    config: CognateConfig,
) -> Tensor:
    """(B, T, D) from exactly one of input_ids (B, T) or inputs_embeds (B, T, D)."""
    source = _check_source(input_ids, inputs_embeds, config)
    return embed(source) if input_ids is not None else source


def _check_source(
    input_ids: Tensor | None, inputs_embeds: Tensor | None, config: CognateConfig
) -> Tensor:
    """The one given input, validated: shape, and at most max_seq_len positions per call."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None and input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
    if inputs_embeds is not None and (
        inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.d_model
    ):
        raise ValueError(
            f"inputs_embeds must be (batch, seq_len, d_model={config.d_model}), "
            f"got shape {tuple(inputs_embeds.shape)}"
        )
    seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    if seq_len > config.max_seq_len:
        raise ValueError(
            f"{seq_len} positions in one forward, more than max_seq_len={config.max_seq_len}; "
            "longer sequences decode in steps with a cache (use_cache=True / past_key_values)"
        )
    return input_ids if input_ids is not None else inputs_embeds


def _check_recursion(
    state: tuple[Tensor, Tensor] | None, cycles: int | None, shape: tuple[int, int, int]
) -> None:
    if cycles is not None and (
        isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1
    ):
        raise ValueError(f"trm_cycles must be a positive integer, got {cycles!r}")
    if state is None:
        return
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"recursion_state must be a pair (y, z), got {type(state).__name__}")
    for name, t in zip("yz", state, strict=True):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"recursion_state {name} must be (batch, seq_len, d_model) = {shape}, got {got}"
            )


def _check_shapes(
    batch: int,
    seq_len: int,
    seen: int,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    position_ids: Tensor | None,
) -> None:
    shape = (batch, seq_len)
    allowed = (shape, (batch, seen + seq_len))  # a list: symbolic sizes (export) do not hash
    if attention_mask is not None and tuple(attention_mask.shape) not in allowed:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {shape}"
            + (f" or cover the cached positions too {(batch, seen + seq_len)}" if seen else "")
            + f", got {tuple(attention_mask.shape)}"
        )
    if labels is not None and tuple(labels.shape) != shape:
        raise ValueError(
            f"labels must have the shape of input_ids {shape}, got {tuple(labels.shape)}"
        )
    if position_ids is not None and (position_ids.shape[-1] != seq_len or position_ids.dim() > 2):
        raise ValueError(
            f"position_ids must be (batch, seq_len) or (seq_len,) with seq_len={seq_len}, "
            f"got {tuple(position_ids.shape)}"
        )


class CognateForCausalLM(CognatePreTrainedModel, GenerationMixin):
    """Cognate: TRM recursive refinement with ACT halting on a Titans-MAG backbone."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # The memory state cannot be rolled back (`CognateCache.crop`): transformers then refuses
    # assisted / speculative generation with a clear error instead of failing midway.
    _is_stateful = True

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
            config.recursion_gradient,
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
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        memory_state: Tensor | tuple[TitansState, ...] | None = None,
        recursion_state: tuple[Tensor, Tensor] | None = None,
        trm_cycles: int | None = None,
        act_halting: bool | None = None,
        return_metrics: bool = True,
        output_hidden_states: bool | None = None,
        position_ids: Tensor | None = None,
        past_key_values: CognateCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        shift_labels: Tensor | None = None,
        num_items_in_batch: Tensor | int | None = None,
        **kwargs: object,
    ) -> CognateCausalLMOutput | tuple:
        """Next-token logits, and with `labels` the full training loss.

        input_ids, attention_mask, labels: (B, T) (labels as input_ids, -100 ignored; the
        model shifts them; or `shift_labels`, already shifted). inputs_embeds: (B, T, D)
        instead of input_ids. memory_state: the LTM state to continue from ((B, d_memory)
        for ema, a tuple of `TitansState` per MAG layer for titans).
        recursion_state: (y, z), each (B, T, D), to start the refinement from instead of
        (x, x) (a previous output's `recursion_state`, for the same positions).
        trm_cycles: refinement cycles for this call (default config.trm_cycles, read at each
        call; more than trained at test time: the deep-supervision weights are then the default
        curve for that count).
        past_key_values / use_cache: a `CognateCache` to continue from / to return (default:
        config.use_cache outside training and torch.export); a step then reads only its new
        tokens.
        act_halting: freeze halted tokens (default: `use_act and not self.training`).
        return_metrics: fill the diagnostic fields (act_steps ... ltm_surprise) and `metrics`
        (read lazily: no device sync unless read); False skips them (generate does).
        logits_to_keep: int k > 0 keeps the last k positions' logits (0: all), or an index
        tensor. num_items_in_batch: the target count of the whole (accumulated) batch: the
        loss is then this micro-batch's share of the batch mean (HF Trainer passes it).
        """
        _reject_unknown(kwargs)
        cfg = self.config
        past_key_values = self._resolve_cache(past_key_values, use_cache)
        source = _check_source(input_ids, inputs_embeds, cfg)
        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        _check_shapes(*source.shape[:2], seen, attention_mask, labels, position_ids)
        _check_recursion(recursion_state, trm_cycles, (*source.shape[:2], cfg.d_model))
        if act_halting is None:
            act_halting = cfg.use_act and not self.training
        if output_hidden_states is None:
            output_hidden_states = cfg.output_hidden_states
        dtype = self._compute_dtype(source, inputs_embeds)
        attn = self.model.attention_inputs(
            source.shape[1], attention_mask, source.device, dtype, past_key_values, position_ids
        )
        base = self.model(
            input_ids,
            attention_mask,
            memory_state,
            attention_inputs=attn,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            output_hidden_states=output_hidden_states,
            memory_diagnostics=return_metrics,
        )
        rec = self.recursion(
            base.last_hidden_state,
            *attn,
            halt_threshold=cfg.act_threshold if (act_halting and cfg.use_act) else None,
            cache=None if past_key_values is None else past_key_values.recursion,
            state=recursion_state,
            cycles=trm_cycles if trm_cycles is not None else cfg.trm_cycles,
            real=attn.new_mask,
        )
        out, terms, real = self._outputs(
            base, rec, attn.new_mask, labels, shift_labels, num_items_in_batch, logits_to_keep
        )
        out.past_key_values, out.recursion_state = past_key_values, rec.state
        if output_hidden_states:
            out.hidden_states, out.recursion_states = base.hidden_states, tuple(rec.ys)
        if return_metrics:
            self._diagnostics(out, base, rec, terms, real)
            out.metrics = _collect_metrics(out, terms, rec.halt_logits, real)
        return_dict = return_dict if return_dict is not None else cfg.return_dict
        if return_dict:
            return out
        return tuple(v for f in fields(out) if (v := getattr(out, f.name)) is not None)

    def _checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def _resolve_cache(
        self, past_key_values: CognateCache | None, use_cache: bool | None
    ) -> CognateCache | None:
        """The cache this call reads and fills, or None: `use_cache` (default: config.use_cache
        outside training and torch.export; True whenever a cache is passed); off under gradient
        checkpointing in training."""
        if use_cache is None:
            default = (
                self.config.use_cache and not self.training and not torch.compiler.is_exporting()
            )
            use_cache = past_key_values is not None or default
        if use_cache and self.training and self._checkpointing():
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing: off")
            use_cache = False
        if not use_cache:
            return None
        if past_key_values is None:
            return CognateCache(self.config)
        if not isinstance(past_key_values, CognateCache):
            raise ValueError(
                f"past_key_values must be a CognateCache, got {type(past_key_values).__name__}"
            )
        return past_key_values

    def _compute_dtype(self, source: Tensor, inputs_embeds: Tensor | None) -> torch.dtype:
        """The activations' dtype: autocast's when on, else the embeddings' (or inputs_embeds')."""
        if torch.is_autocast_enabled(source.device.type):
            return torch.get_autocast_dtype(source.device.type)
        if inputs_embeds is not None:
            return inputs_embeds.dtype
        return self.model.embed_tokens.weight.dtype

    def _outputs(
        self,
        base: CognateModelOutput,
        rec: RecursionOutput,
        attention_mask: Tensor | None,
        labels: Tensor | None,
        targets: Tensor | None,
        num_items_in_batch: Tensor | int | None,
        logits_to_keep: int | Tensor,
    ) -> tuple[CognateCausalLMOutput, dict[str, Tensor], Tensor]:
        """Logits and loss; also the loss parts and the (B, T) real-token mask."""
        y = rec.ys[-1]
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        need_all = labels is not None or targets is not None
        logits = self.lm_logits(y if need_all else y[:, keep])
        real = (
            attention_mask.to(torch.bool)
            if attention_mask is not None
            else torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        )
        out = CognateCausalLMOutput(logits=logits, memory_state=base.memory_state)
        terms: dict[str, Tensor] = {}
        if need_all:
            if targets is None:
                targets = shift_targets(labels)
            out.loss, out.cycle_losses, terms = self._loss(
                rec.ys,
                logits,
                rec.halt_logits,
                base.gate,
                targets,
                attention_mask,
                real,
                num_items_in_batch,
            )
            out.lm_loss = out.cycle_losses[-1]
            out.logits = logits[:, keep]
        return out, terms, real

    def _diagnostics(
        self,
        out: CognateCausalLMOutput,
        base: CognateModelOutput,
        rec: RecursionOutput,
        terms: dict[str, Tensor],
        real: Tensor,
    ) -> None:
        """The per-call diagnostic fields (ACT steps, halting, gate, memory norm), as tensors
        (no host sync); `terms` gains the titans per-layer means."""
        cfg = self.config
        if rec.halt_logits is not None:
            halt = rec.halt_logits.detach()
            steps = halting_steps(halt, cfg.act_threshold)
            out.act_steps = steps
            out.halt_probs = torch.sigmoid(halt)
            out.act_steps_mean = masked_mean(steps.float(), real)
            out.act_steps_std = masked_std(steps.float(), real)
            out.ponder_cost = masked_mean(expected_steps(halt), real)
        if base.gate is not None:
            out.ltm_gate_mean = masked_mean(base.gate.detach().float(), real[..., None])
            out.memory_norm = masked_mean(base.memory.detach().norm(dim=-1), real)
        if base.memory_diagnostics is not None:
            terms.update(_titans_terms(base.memory_diagnostics, real))
            for field, name in (("ltm_gate_mean", "gate_mean"), ("memory_norm", "memory_norm")):
                per_layer = [v for k, v in terms.items() if k.startswith(f"ltm/{name}/")]
                setattr(out, field, torch.stack(per_layer).mean())
            out.ltm_surprise = torch.stack(
                [v for k, v in terms.items() if k.startswith("ltm/surprise/")]
            ).mean()

    def _loss(
        self,
        ys: list[Tensor],
        logits: Tensor,
        halt_logits: Tensor | None,
        gate: Tensor | None,
        targets: Tensor,
        attention_mask: Tensor | None,
        real: Tensor,
        num_items_in_batch: Tensor | int | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """loss = sum_c w_c CE(y_c) + ACT terms + gate entropy term; also per-cycle CE, parts.

        targets: (B, T), position t's target (labels shifted), -100 ignored.
        w: `supervision_weights()` (sum 1). ACT: act_loss_weight * BCE(p_c, [argmax_c ==
        target]) + ponder_weight * E[steps] / C + act_diversity_weight * diversity.
        Gate: gate_entropy_weight * (ln 2 - H(g)).
        With `num_items_in_batch` = N (targets in the whole accumulated batch), CE terms are
        sums / N and the mean-type terms are weighted by n / N (n: this micro-batch's targets),
        so summing the micro-batch losses gives the batch's token-weighted loss.
        """
        cfg = self.config
        if attention_mask is not None:  # neither the position nor its target is padding
            pad = ~(attention_mask.bool() & (shift_targets(attention_mask) == 1))
            targets = targets.masked_fill(pad, IGNORE_INDEX)
        valid = targets != IGNORE_INDEX
        denom, share = None, 1.0
        if num_items_in_batch is not None:
            denom = torch.as_tensor(num_items_in_batch, device=logits.device).clamp_min(1)
            share = valid.sum() / denom
        cycle_ce, correct = [], []
        for c, y in enumerate(ys):
            cycle_logits = logits if c == len(ys) - 1 else self.lm_logits(y)
            cycle_ce.append(token_cross_entropy(cycle_logits, targets, denom))
            if c > 0 and halt_logits is not None:
                correct.append(cycle_logits.detach().argmax(-1) == targets)
        weights = cfg.supervision_weights(len(ys) - 1)
        loss = sum(w * ce for w, ce in zip(weights, cycle_ce, strict=True))
        terms = {"trm/deep_supervision": loss}
        if halt_logits is not None:
            act = act_losses(halt_logits, torch.stack(correct), valid, cfg.act_diversity_target)
            loss = loss + share * (
                cfg.act_loss_weight * act["bce"]
                + cfg.ponder_weight * act["ponder"]
                + cfg.act_diversity_weight * act["diversity"]
            )
            terms.update({f"act/{k}": v for k, v in act.items()})
            terms["act/accuracy_final"] = masked_mean(correct[-1].float(), valid)
        if gate is not None:
            entropy = masked_mean(binary_entropy(gate), real[..., None])
            loss = loss + share * cfg.gate_entropy_weight * (math.log(2) - entropy)
            terms["ltm/gate_entropy"] = entropy
        return loss, torch.stack(cycle_ce), terms

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        past_key_values: CognateCache | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: object,
    ) -> dict[str, object]:
        """HF's default (slices to the new tokens when a cache is carried, passes model kwargs
        such as memory_state and output_hidden_states through), with metrics off.

        With a cache, an all-ones attention mask is dropped (the same result, and a step then
        builds no mask): checked once on the first call of a `generate` (one host sync), then
        each later step's mask is generate's previous one plus a 1 for the token it appended,
        so it is all ones exactly when the cache holds no padding.
        """
        if isinstance(past_key_values, CognateCache) and attention_mask is not None:
            first = kwargs.get("is_first_iteration") or past_key_values.get_seq_length() == 0
            unpadded = bool(attention_mask.all()) if first else past_key_values.padding.real is None
            attention_mask = None if unpadded else attention_mask
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        inputs["return_metrics"] = False
        return inputs

    def _prepare_cache_for_generation(
        self,
        generation_config: GenerationConfig,
        model_kwargs: dict,
        *args: object,
        **kwargs: object,
    ) -> None:
        """generate() carries a `CognateCache` (one passed in, or a new one) unless use_cache=False."""
        cache = model_kwargs.get("past_key_values")
        if cache is not None:
            if not isinstance(cache, CognateCache):
                raise ValueError(
                    f"past_key_values must be a CognateCache, got {type(cache).__name__}"
                )
            cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        model_kwargs["past_key_values"] = CognateCache(self.config)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # ours, built above
        return False


def _titans_terms(diagnostics: dict[str, Tensor], real: Tensor) -> dict[str, Tensor]:
    """Per MAG layer i, means over real tokens: ltm/surprise/layer{i} (the associative loss
    ||W k - v||^2 at the weights the token's chunk starts from), ltm/gate_mean/layer{i} (the
    gate sigmoid(RMSNorm(M)), also over channels), ltm/memory_norm/layer{i}
    (||W||_F of the weights read)."""
    terms = {}
    for key, value in diagnostics.items():
        mask = real[..., None] if value.dim() == 3 else real
        name = key.replace("gate/", "gate_mean/") if key.startswith("gate/") else key
        terms[f"ltm/{name}"] = masked_mean(value.float(), mask)
    return terms


@torch.compiler.disable
def _collect_metrics(
    out: CognateCausalLMOutput,
    terms: dict[str, Tensor],
    halt_logits: Tensor | None,
    real: Tensor,
) -> LazyMetrics:
    """All scalar diagnostics, as floats fetched with one device-to-host copy on first read."""
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
        named["ltm/memory_norm"] = out.memory_norm
        if out.ltm_surprise is None:  # ema: g weighs the attention path against the memory
            named["ltm/usage"] = 1 - out.ltm_gate_mean
        else:
            named["ltm/surprise"] = out.ltm_surprise
    return LazyMetrics(named)


AutoConfig.register(CognateConfig.model_type, CognateConfig, exist_ok=True)
AutoModel.register(CognateConfig, CognateModel, exist_ok=True)
AutoModelForCausalLM.register(CognateConfig, CognateForCausalLM, exist_ok=True)
# save_pretrained then writes `auto_map` and copies this file with its relative imports
# (configuration_cognate, attention, cache, heads, memory, recursion: only relative imports
# among them), so `trust_remote_code=True` loads without `cognate_model` installed.
CognateConfig.register_for_auto_class()
CognateModel.register_for_auto_class("AutoModel")
CognateForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "AttentionInputs",
    "CognateCausalLMOutput",
    "CognateForCausalLM",
    "CognateModel",
    "CognateModelOutput",
    "CognatePreTrainedModel",
    "LazyMetrics",
]
