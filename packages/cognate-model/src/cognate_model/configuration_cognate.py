"""Configuration of the Cognate model (TRM recursion on a Titans-MAG backbone).

`CognateConfig` is a Hugging Face `PretrainedConfig`: it saves to / loads from `config.json`,
and `AutoConfig` knows it once `cognate_model` is imported. Every value is validated on
construction; a bad value raises `ValueError` naming the field.

Presets (`CognateConfig.from_preset`) fix the sizes; the three specializations change only
behaviour knobs (recursion depth, halting, the kind of long-term memory), never the code:

- ``reasoning``: cycles trained to refine (backward through every cycle, deep-supervision
  weights 0, 1, 2, 4 for y0..y3), a stricter halting threshold, light ponder cost;
- ``memory``: Titans' neural memory (``ltm_type="titans"``, MAG in the last layer) instead of
  the EMA memory: it measured better on long-range recall (benchmarks/long_recall.py);
- ``speed``: fewer cycles and micro steps, an eager halting threshold, a heavier ponder cost,
  so it spends fewer cycles per token on average.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, ClassVar

from transformers import PretrainedConfig

LTM_TYPES = ("ema", "titans")
GRADIENT_MODES = ("per_cycle", "all_cycles", "last_cycle")  # recursion_gradient's values

# The default deep-supervision weights for y0..y3 (3 cycles), from the original design.
DEFAULT_SUPERVISION_WEIGHTS: tuple[float, ...] = (0.33, 0.5, 0.75, 1.0)

PRESETS: dict[str, dict[str, Any]] = {
    # For tests: tens of thousands of parameters, runs in milliseconds.
    "cognate-tiny": dict(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=128,
        max_seq_len=256,
        window_size=16,
        d_memory=16,
        ltm_chunk_size=8,
    ),
    # CPU-trainable in minutes (~1.7M parameters with a 4096 vocabulary).
    "cognate-small": dict(
        vocab_size=4096,
        d_model=128,
        n_layers=4,
        n_heads=4,
        d_ff=384,
        max_seq_len=512,
        window_size=128,
        d_memory=64,
    ),
    # The original design's size: ~25M parameters, GPU-sized training.
    "cognate-25m": dict(
        vocab_size=32768,
        d_model=320,
        n_layers=8,
        n_heads=5,
        d_ff=1280,
        max_seq_len=1024,
        window_size=256,
        d_memory=160,
    ),
}

SPECIALIZATIONS: dict[str, dict[str, Any]] = {
    # backward through every cycle and no weight on y0, so each cycle is trained to improve
    # on the one before (benchmarks/results/recursion_gradient*.md: each of the 3 cycles lowered
    # val CE on 5 of 5 seeds; with 4 the fourth was flat)
    "reasoning": dict(
        trm_cycles=3,
        trm_micro_steps=2,
        recursion_gradient="all_cycles",
        deep_supervision_weights=[0.0, 1.0, 2.0, 4.0],
        act_threshold=0.6,
        ponder_weight=0.005,
    ),
    "memory": dict(
        trm_cycles=3,
        trm_micro_steps=2,
        ltm_type="titans",  # benchmarks/results/long_recall.md: titans recalls, ema does not
    ),
    "speed": dict(
        trm_cycles=2,
        trm_micro_steps=1,
        act_threshold=0.4,
        ponder_weight=0.05,
    ),
}


def _interpolated_supervision_weights(cycles: int) -> tuple[float, ...]:
    """Deep-supervision weights for y0..y_cycles.

    The default curve (0.33, 0.5, 0.75, 1.0) is defined for 3 cycles; for another count it is
    sampled piecewise-linearly at c / cycles, so y0 always weighs 0.33 and the final answer 1.0.
    """
    if cycles == len(DEFAULT_SUPERVISION_WEIGHTS) - 1:
        return DEFAULT_SUPERVISION_WEIGHTS
    n = len(DEFAULT_SUPERVISION_WEIGHTS) - 1
    out = []
    for c in range(cycles + 1):
        pos = c / cycles * n
        i = min(int(math.floor(pos)), n - 1)
        frac = pos - i
        w = DEFAULT_SUPERVISION_WEIGHTS[i] * (1 - frac) + DEFAULT_SUPERVISION_WEIGHTS[i + 1] * frac
        out.append(round(w, 6))
    return tuple(out)


class CognateConfig(PretrainedConfig):
    """Hyperparameters of `CognateForCausalLM`.

    Architecture:
        vocab_size, d_model, n_layers, n_heads, d_ff (SwiGLU hidden width), max_seq_len (longest
        input accepted), window_size (sliding-window attention: position t sees t-window+1..t),
        rope_theta, rms_norm_eps, dropout, initializer_range, tie_word_embeddings.
    Long-term memory (Titans MAG):
        use_ltm, ltm_type ("ema": the decaying memory stream after the backbone, blended by a
        gate; "titans": Titans' neural memory gating the attention of the layers in
        mag_layers).
        ema: d_memory (width of the decaying memory stream), ltm_decay_min / ltm_decay_max
        (initial per-channel decays a, spread geometrically in time scale 1/(1-a)),
        ltm_chunk_size (block length of the parallel scan; a speed knob, not a semantic one),
        gate_entropy_weight (weight of ln2 - H(g), which keeps the gate from saturating early).
        titans: mag_layers (indices of the backbone layers with a memory branch; None: the
        last), ltm_chunk_size (tokens per memory update: each chunk is one gradient step, and
        the tokens of an incomplete chunk are read only once it completes, so it must not
        exceed window_size), persistent_memory_tokens (the paper's persistent memory: that
        many learned key/value slots per head in the attention of each MAG layer, seen by
        every query besides its window; 0, the default, for none), ltm_conv_size (taps of the
        depthwise causal convolution after the memory's q/k/v projections; 1 for none).
    TRM recursion:
        trm_cycles, trm_micro_steps, recursion_gradient ("per_cycle": every cycle runs with
        gradient from a detached (y, z), so each deep-supervision term trains its own cycle;
        "all_cycles": backward through every cycle, so later cycles' terms also train what the
        earlier ones hand on; "last_cycle": TRM's deep recursion, all but the last cycle under
        no_grad), deep_supervision_weights (one per answer y0..y_cycles; None picks the default
        curve), normalised to sum to 1 in the loss. (`detach_between_cycles`, its name before
        2026-12-01, is still read: True is "per_cycle", False "last_cycle".)
    ACT halting:
        use_act, act_threshold (a token halts at the first cycle whose halting probability
        exceeds it; at inference its y and z freeze there), act_loss_weight (BCE of the halting
        logit against "this cycle's argmax already equals the label"), ponder_weight (on the
        expected number of cycles / trm_cycles), act_diversity_weight and act_diversity_target
        (hinge max(0, target - Var_tokens(p)) from the original design).
    Generation:
        use_cache (a forward outside training returns a `CognateCache` for the next step).
    """

    model_type: ClassVar[str] = "cognate"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "intermediate_size": "d_ff",
        "max_position_embeddings": "max_seq_len",
        "sliding_window": "window_size",
    }
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    vocab_size: int = 32768
    d_model: int = 320
    n_layers: int = 8
    n_heads: int = 5
    d_ff: int = 1280
    max_seq_len: int = 1024
    window_size: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    use_ltm: bool = True
    ltm_type: str = "ema"
    mag_layers: list[int] | None = None
    persistent_memory_tokens: int = 0
    ltm_conv_size: int = 4
    d_memory: int = 160
    ltm_decay_min: float = 0.5
    ltm_decay_max: float = 0.999
    ltm_chunk_size: int = 64
    gate_entropy_weight: float = 0.01

    trm_cycles: int = 3
    trm_micro_steps: int = 2
    recursion_gradient: str = "per_cycle"
    deep_supervision_weights: list[float] | None = None

    use_act: bool = True
    act_threshold: float = 0.5
    act_loss_weight: float = 0.1
    ponder_weight: float = 0.01
    act_diversity_weight: float = 0.01
    act_diversity_target: float = 0.1

    specialization: str | None = None
    preset: str | None = None

    use_cache: bool = True

    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        legacy = kwargs.pop("detach_between_cycles", None)
        if legacy is not None:  # configs saved before recursion_gradient replaced it
            warnings.warn(
                "detach_between_cycles is deprecated: use recursion_gradient "
                f"({'per_cycle' if legacy else 'last_cycle'!r} for {legacy!r})",
                FutureWarning,
                stacklevel=2,
            )
            self.recursion_gradient = "per_cycle" if legacy else "last_cycle"
        super().__post_init__(**kwargs)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid field."""
        positive_ints = (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "max_seq_len",
            "window_size",
            "d_memory",
            "ltm_chunk_size",
            "ltm_conv_size",
            "trm_cycles",
            "trm_micro_steps",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ltm_chunk_size < 2:
            raise ValueError(f"ltm_chunk_size must be >= 2, got {self.ltm_chunk_size!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"d_model / n_heads must be even for rotary embeddings, got "
                f"{self.d_model // self.n_heads} (d_model={self.d_model}, n_heads={self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 < self.ltm_decay_min <= self.ltm_decay_max < 1.0:
            raise ValueError(
                "ltm_decay_min and ltm_decay_max must satisfy 0 < ltm_decay_min <= ltm_decay_max "
                f"< 1, got ltm_decay_min={self.ltm_decay_min!r}, ltm_decay_max={self.ltm_decay_max!r}"
            )
        if self.recursion_gradient not in GRADIENT_MODES:
            raise ValueError(
                f"recursion_gradient must be one of {list(GRADIENT_MODES)}, "
                f"got {self.recursion_gradient!r}"
            )
        if not 0.0 < self.act_threshold < 1.0:
            raise ValueError(f"act_threshold must be in (0, 1), got {self.act_threshold!r}")
        for name in (
            "gate_entropy_weight",
            "act_loss_weight",
            "ponder_weight",
            "act_diversity_weight",
            "act_diversity_target",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        w = self.deep_supervision_weights
        if w is not None:
            w = list(w)
            if len(w) != self.trm_cycles + 1:
                raise ValueError(
                    f"deep_supervision_weights needs trm_cycles + 1 = {self.trm_cycles + 1} "
                    f"entries (y0..y{self.trm_cycles}), got {len(w)}"
                )
            if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(
                    f"deep_supervision_weights must be finite, >= 0 and not all 0, got {w!r}"
                )
            self.deep_supervision_weights = [float(x) for x in w]
        if self.specialization is not None and self.specialization not in SPECIALIZATIONS:
            raise ValueError(
                f"specialization must be one of {sorted(SPECIALIZATIONS)} or None, "
                f"got {self.specialization!r}"
            )
        self._validate_titans()

    def _validate_titans(self) -> None:
        if self.ltm_type not in LTM_TYPES:
            raise ValueError(f"ltm_type must be one of {list(LTM_TYPES)}, got {self.ltm_type!r}")
        if self.mag_layers is not None:
            layers = list(self.mag_layers)
            if (
                not layers
                or any(isinstance(i, bool) or not isinstance(i, int) for i in layers)
                or any(not 0 <= i < self.n_layers for i in layers)
                or len(set(layers)) != len(layers)
            ):
                raise ValueError(
                    f"mag_layers must be distinct layer indices in [0, n_layers={self.n_layers}), "
                    f"or None, got {self.mag_layers!r}"
                )
            self.mag_layers = sorted(layers)
        n = self.persistent_memory_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"persistent_memory_tokens must be an integer >= 0, got {n!r}")
        if n and not self.memory_layers():
            raise ValueError(
                f"persistent_memory_tokens ({n}) needs ltm_type='titans' with use_ltm: the "
                "persistent slots live in the attention of the MAG layers"
            )
        if self.use_ltm and self.ltm_type == "titans" and self.ltm_chunk_size > self.window_size:
            raise ValueError(
                f"ltm_chunk_size ({self.ltm_chunk_size}) must not exceed window_size "
                f"({self.window_size}) with ltm_type='titans': the tokens of an incomplete chunk "
                "are visible only through attention"
            )

    def memory_layers(self) -> tuple[int, ...]:
        """The backbone layers with a Titans memory branch (none unless ltm_type='titans')."""
        if not (self.use_ltm and self.ltm_type == "titans"):
            return ()
        return tuple(self.mag_layers) if self.mag_layers is not None else (self.n_layers - 1,)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def supervision_weights(self, cycles: int | None = None) -> tuple[float, ...]:
        """The weights of y0..y_cycles, normalised to sum to 1 (so the loss is a weighted CE).

        cycles: the cycles run (default trm_cycles); when deep_supervision_weights does not have
        cycles + 1 entries (test-time depth), the default curve sampled for that count.
        """
        cycles = self.trm_cycles if cycles is None else cycles
        w = self.deep_supervision_weights
        if w is None or len(w) != cycles + 1:
            w = _interpolated_supervision_weights(cycles)
        total = float(sum(w))
        return tuple(float(x) / total for x in w)

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(
        cls, name: str, specialization: str | None = None, **overrides: Any
    ) -> CognateConfig:
        """Build a config from a named size preset and an optional specialization.

        `overrides` win over both (e.g. ``vocab_size=len(tokenizer)``). Presets:
        ``cognate-tiny`` (tests), ``cognate-small`` (CPU training), ``cognate-25m`` (20-30M).
        """
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        if specialization is not None and specialization not in SPECIALIZATIONS:
            raise ValueError(
                f"specialization must be one of {sorted(SPECIALIZATIONS)} or None, "
                f"got {specialization!r}"
            )
        values = copy.deepcopy(PRESETS[name])
        if specialization is not None:
            spec = dict(SPECIALIZATIONS[specialization])
            values.update(spec)
        values.update(overrides)
        return cls(preset=name, specialization=specialization, **values)


__all__ = ["CognateConfig", "PRESETS", "SPECIALIZATIONS", "DEFAULT_SUPERVISION_WEIGHTS"]
