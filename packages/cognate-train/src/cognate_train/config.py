"""Run configuration: dataclasses, presets, TOML loading and up-front validation.

Precedence is ``preset < TOML file < command-line flags``: a preset gives every field a value,
a ``--config FILE.toml`` overrides the keys it names (top-level keys, spelled exactly like the
fields below), and flags override both. Everything is validated before any work starts; a bad
value raises :class:`ConfigError` whose message names the field, and the CLI turns it into a
one-line error with exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SPECIALIZATIONS: tuple[str, ...] = ("reasoning", "memory", "speed")
OPTIMIZERS: tuple[str, ...] = ("mugrokfast", "adamw", "muon", "grokfast-adamw")
LOG_BACKENDS: tuple[str, ...] = ("wandb", "tensorboard")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A bad flag, config file or output directory; the message names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class TrainConfig:
    """Everything one ``cognate-train train`` run needs (one run may train several models)."""

    preset: str = "quick"
    specialization: str = "all"  # reasoning | memory | speed | all (one after another)
    model_preset: str = "cognate-tiny"  # a CognateConfig.from_preset name
    output_dir: str = "runs/quick"
    # length: max_steps optimizer steps, or, when epochs > 0, epochs over the full train split
    max_steps: int = 300
    epochs: float = 0.0
    batch_size: int = 32
    grad_accum: int = 1
    max_len: int = 64
    # data: examples per task family
    n_train: int = 400
    n_val: int = 16
    stage_fractions: list[float] = field(default_factory=lambda: [0.3, 0.3, 0.4])
    # optimizer
    optimizer: str = "mugrokfast"
    lr: float = 1e-3
    muon_lr: float = 0.02
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grokfast_alpha: float = 0.98
    grokfast_lambda: float = 0.1
    lambda_boost: float = 1.5
    grad_clip: float = 1.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    # training modes
    supervision_steps: int = 1
    ema_decay: float = 0.0  # 0 disables the weight EMA
    early_stopping_patience: int = 0  # evaluations without improvement; 0 disables
    early_stopping_min_delta: float = 0.0
    grokking_aware: bool = False
    grok_window: int = 3
    grok_gap_threshold: float = 0.05
    grok_jump_threshold: float = 0.10
    grok_patience: int = 3
    max_nonfinite: int = 5  # consecutive skipped (non-finite) steps before the run stops
    # bookkeeping
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    keep_last: int = 2
    resume: str = "auto"  # auto | never | PATH
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    threads: int = 0  # CPU intra-op threads for the run; 0 keeps torch's default
    log: list[str] = field(default_factory=list)  # extra sinks: wandb, tensorboard
    samples: int = 3  # sample generations per model in the report
    eval_batch_size: int = 64


@dataclass
class GrokConfig:
    """``cognate-train grok``: the modular-arithmetic grokking experiment.

    Task and model follow the Grokfast reference (ironjr/grokfast): p 97, x*y, 50 % train, a
    2-layer width-128 decoder, lr 1e-3, betas (0.9, 0.98), batch 512, 10-step warmup, Grokfast-EMA
    alpha 0.98 lambda 2.0. The optimizer is this project's MuGrokfast with weight decay 1.0
    (Power et al.'s decay): measured here, val accuracy 95 % at step 370, converged at 460
    (seed 0). The reference's own recipe (Adam with coupled L2 decay 0.005) has no equivalent among
    the decoupled-decay choices; ``--optimizer grokfast-adamw`` keeps ``--weight-decay 1.0``.
    """

    preset: str = "grok"
    output_dir: str = "runs/grok"
    op: str = "*"
    p: int = 97
    train_fraction: float = 0.5
    max_steps: int = 3000
    batch_size: int = 512
    optimizer: str = "mugrokfast"
    lr: float = 1e-3
    muon_lr: float = 0.02
    weight_decay: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grokfast_alpha: float = 0.98
    grokfast_lambda: float = 2.0
    lambda_boost: float = 1.5
    warmup_steps: int = 10
    grad_clip: float = 0.0  # 0 disables clipping (the reference does not clip)
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    # 20 evals x 10 steps: the val rise of a Grokfast run (~2 % per 10 steps) has to clear
    # jump_threshold against the mean of the window, which lags it by ~10 evals
    grok_window: int = 20
    grok_gap_threshold: float = 0.05
    grok_jump_threshold: float = 0.10
    grok_patience: int = 10
    stop_on_convergence: bool = True
    max_nonfinite: int = 5
    eval_every: int = 10
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 2
    resume: str = "auto"
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    log: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# presets

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a CPU: used by the tests (one small model, a few dozen steps)
    "smoke": dict(
        specialization="reasoning",
        model_preset="cognate-tiny",
        output_dir="runs/smoke",
        max_steps=24,
        batch_size=8,
        max_len=48,
        n_train=40,
        n_val=4,
        eval_every=12,
        log_every=4,
        checkpoint_every=8,
        keep_last=2,
        warmup_steps=4,
        samples=2,
        eval_batch_size=32,
        threads=1,
    ),
    # a few CPU minutes for all three specializations: the README's main command
    "quick": dict(
        specialization="all",
        model_preset="cognate-tiny",
        output_dir="runs/quick",
        max_steps=900,
        batch_size=32,
        max_len=64,
        n_train=400,
        n_val=32,
        # measured on the speed model, 900 steps, seed 0 (val answer loss / exact match):
        # muon_lr 0.03 -> 1.27 / 0.15, 0.01 -> 0.88 / 0.27, 0.005 -> 1.04 / 0.24; AdamW lr 3e-3
        # beats 1e-3 (0.93 / 0.27) and 1e-2 (with muon_lr 0.1: 1.89 / 0.09 after 600 steps)
        lr=3e-3,
        muon_lr=0.01,
        eval_every=300,
        checkpoint_every=300,
        # a 0.14M-parameter model gains nothing from intra-op threads, and on a busy machine
        # spinning OpenMP threads cost 20x the CPU time: measured 2381 CPU-s for the three
        # models with torch's default (2 threads) vs 122 CPU-s with one, same machine and load
        threads=1,
    ),
    # the seeds' Phase 1 run: 25M models, curriculum over 10 epochs, GPU-sized
    "phase1": dict(
        specialization="all",
        model_preset="cognate-25m",
        output_dir="runs/phase1",
        max_steps=0,
        epochs=10.0,
        batch_size=16,
        grad_accum=4,
        max_len=256,
        n_train=4000,
        n_val=100,
        stage_fractions=[0.3, 0.3, 0.4],
        lr=5e-4,
        muon_lr=5e-3,
        grokfast_lambda=0.02,
        grad_clip=1.0,
        warmup_steps=500,
        min_lr_ratio=0.01,
        early_stopping_patience=3,
        early_stopping_min_delta=0.01,
        eval_every=1000,
        log_every=50,
        checkpoint_every=1000,
        keep_last=3,
        ema_decay=0.999,
        eval_batch_size=128,
    ),
}

GROK_PRESETS: dict[str, dict[str, Any]] = {
    "grok": {},
    # seconds: a tiny prime and model for the tests; not expected to grok in 60 steps
    "smoke": dict(
        output_dir="runs/grok-smoke",
        p=11,
        max_steps=60,
        batch_size=32,
        d_model=32,
        n_heads=2,
        eval_every=5,
        checkpoint_every=20,
    ),
}


# ---------------------------------------------------------------------------------------------
# building a config: preset < TOML < flags


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls_name: str, name: str, value: Any, tp: Any, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{name}' must be {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, str) and inner is str:
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {inner.__name__}")
        return [_coerce(cls_name, name, v, inner, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation on {cls_name}.{name}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"unsupported annotation on {cls_name}.{name}: {tp}")


def _apply(cfg: Any, values: dict[str, Any], source: str) -> None:
    types_ = _field_types(type(cfg))
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f"{source}: unknown key '{key}'")
        setattr(cfg, key, _coerce(type(cfg).__name__, key, value, types_[key], source))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are field names (a ``[train]`` or ``[grok]``
    table is flattened, so one file can hold both)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {p}")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {p}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--config {p}: cannot read: {exc.strerror}") from None
    return data


def build_config(
    kind: str, preset: str | None, toml_path: str | None, flags: dict[str, Any]
) -> TrainConfig | GrokConfig:
    """Build and validate a config for ``kind`` ("train" or "grok")."""
    cls, presets = (TrainConfig, TRAIN_PRESETS) if kind == "train" else (GrokConfig, GROK_PRESETS)
    toml_values: dict[str, Any] = {}
    if toml_path is not None:
        raw = load_toml(toml_path)
        for key, value in raw.items():
            if isinstance(value, dict):
                if key in ("train", "grok"):
                    if key == kind:
                        toml_values.update(value)
                    continue
                raise ConfigError(f"--config {toml_path}: unknown table [{key}]")
            toml_values[key] = value
    name = preset or toml_values.get("preset") or cls().preset
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(
            f"--preset: unknown preset {name!r} (choose from {', '.join(sorted(presets))})"
        )
    cfg = cls()
    _apply(cfg, presets[name], f"preset {name}")
    cfg.preset = name
    toml_values.pop("preset", None)
    if toml_path is not None:
        _apply(cfg, toml_values, f"--config {toml_path}")
    flag_values = {k: v for k, v in flags.items() if v is not None}
    _apply(cfg, flag_values, "flag")
    if isinstance(cfg, TrainConfig):
        # the run's length is whichever of max_steps / epochs was set last (flags > file > preset)
        for level in (flag_values, toml_values):
            if "max_steps" in level and "epochs" not in level:
                cfg.epochs = 0.0
                break
            if "epochs" in level:
                break
    try:
        validate(cfg)
    except ConfigError as exc:
        if toml_path is not None and exc.field in toml_values and exc.field not in flag_values:
            raise ConfigError(f"--config {toml_path}: {exc}", field=exc.field) from None
        raise
    return cfg


# ---------------------------------------------------------------------------------------------
# validation


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name.replace('_', '-')}: {msg}", field=name)


def _validate_common(cfg: TrainConfig | GrokConfig) -> None:
    _check(cfg.max_steps >= 0, "max_steps", f"must be >= 0, got {cfg.max_steps}")
    _check(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    _check(cfg.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    for name in ("lr", "muon_lr"):
        v = getattr(cfg, name)
        _check(math.isfinite(v) and v > 0, name, f"must be a positive number, got {v}")
    _check(cfg.weight_decay >= 0, "weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    _check(
        len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
        "betas",
        f"must be two numbers in [0, 1), got {cfg.betas}",
    )
    _check(0 <= cfg.grokfast_alpha < 1, "grokfast_alpha", "must be in [0, 1)")
    _check(cfg.grokfast_lambda >= 0, "grokfast_lambda", "must be >= 0")
    _check(cfg.lambda_boost >= 1, "lambda_boost", "must be >= 1 (1 disables the boost)")
    _check(cfg.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
    _check(cfg.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    _check(cfg.grok_window >= 1, "grok_window", "must be >= 1")
    _check(cfg.grok_patience >= 1, "grok_patience", "must be >= 1")
    _check(0 < cfg.grok_gap_threshold < 1, "grok_gap_threshold", "must be in (0, 1)")
    _check(0 < cfg.grok_jump_threshold < 1, "grok_jump_threshold", "must be in (0, 1)")
    _check(cfg.max_nonfinite >= 1, "max_nonfinite", "must be >= 1")
    _check(cfg.threads >= 0, "threads", f"must be >= 0 (0: torch's default), got {cfg.threads}")
    for name in ("eval_every", "log_every", "checkpoint_every", "keep_last"):
        _check(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}")
    _check(bool(cfg.output_dir), "output_dir", "must not be empty")
    _check(
        cfg.device == "auto"
        or cfg.device == "cpu"
        or cfg.device == "cuda"
        or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()),
        "device",
        f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}",
    )
    for backend in cfg.log:
        _check(
            backend in LOG_BACKENDS or backend in ("jsonl", "none"),
            "log",
            f"unknown backend {backend!r} (jsonl is always written; extras: wandb, tensorboard)",
        )
    _check(bool(cfg.resume), "resume", "must be auto, never or a checkpoint path")
    if cfg.resume not in ("auto", "never"):
        _check(Path(cfg.resume).is_dir(), "resume", f"no such checkpoint directory: {cfg.resume}")


def validate(cfg: TrainConfig | GrokConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad field."""
    _validate_common(cfg)
    if isinstance(cfg, GrokConfig):
        _check(cfg.op in ("*", "+", "-", "/"), "op", f"must be one of * + - /, got {cfg.op!r}")
        _check(cfg.p >= 3, "p", f"must be a prime >= 3, got {cfg.p}")
        _check(
            all(cfg.p % d for d in range(2, math.isqrt(cfg.p) + 1)), "p", f"{cfg.p} is not prime"
        )
        _check(0 < cfg.train_fraction < 1, "train_fraction", "must be in (0, 1)")
        _check(cfg.max_steps >= 1, "max_steps", "must be >= 1")
        _check(cfg.d_model >= 1 and cfg.n_layers >= 1, "d_model", "model sizes must be >= 1")
        _check(
            cfg.n_heads >= 1 and cfg.d_model % cfg.n_heads == 0, "n_heads", "must divide d-model"
        )
        return
    _check(
        cfg.specialization in (*SPECIALIZATIONS, "all"),
        "specialization",
        f"must be one of {', '.join(SPECIALIZATIONS)}, all; got {cfg.specialization!r}",
    )
    _check(cfg.epochs >= 0 and math.isfinite(cfg.epochs), "epochs", "must be >= 0")
    _check(cfg.max_steps > 0 or cfg.epochs > 0, "max_steps", "set max-steps or epochs above 0")
    _check(cfg.grad_accum >= 1, "grad_accum", f"must be >= 1, got {cfg.grad_accum}")
    _check(cfg.max_len >= 8, "max_len", f"must be >= 8, got {cfg.max_len}")
    _check(cfg.n_train >= 1, "n_train", "must be >= 1")
    _check(cfg.n_val >= 1, "n_val", "must be >= 1")
    _check(
        len(cfg.stage_fractions) == 3
        and all(f >= 0 for f in cfg.stage_fractions)
        and sum(cfg.stage_fractions) > 0,
        "stage_fractions",
        "must be three non-negative numbers (foundation, reasoning, advanced) with a positive sum",
    )
    _check(0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    _check(cfg.supervision_steps >= 1, "supervision_steps", "must be >= 1")
    _check(0 <= cfg.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 disables it)")
    _check(cfg.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
    _check(cfg.early_stopping_min_delta >= 0, "early_stopping_min_delta", "must be >= 0")
    _check(cfg.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    _check(cfg.samples >= 0, "samples", "must be >= 0")
    _check(cfg.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
    if cfg.grokking_aware and cfg.early_stopping_patience:
        raise ConfigError(
            "early-stopping-patience: grokking-aware mode runs without early stopping; set it to 0"
        )


def to_dict(cfg: TrainConfig | GrokConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def specializations(cfg: TrainConfig) -> list[str]:
    return list(SPECIALIZATIONS) if cfg.specialization == "all" else [cfg.specialization]


# fields whose change makes existing checkpoints of an output directory unusable
COMPAT_FIELDS_TRAIN = (
    "model_preset",
    "optimizer",
    "max_len",
    "seed",
    "n_train",
    "n_val",
    "batch_size",
)
COMPAT_FIELDS_GROK = (
    "p",
    "op",
    "train_fraction",
    "optimizer",
    "d_model",
    "n_layers",
    "n_heads",
    "seed",
)


def compat_fingerprint(cfg: TrainConfig | GrokConfig, specialization: str | None) -> dict[str, Any]:
    fields = COMPAT_FIELDS_GROK if isinstance(cfg, GrokConfig) else COMPAT_FIELDS_TRAIN
    out = {name: getattr(cfg, name) for name in fields}
    out["kind"] = "grok" if isinstance(cfg, GrokConfig) else "train"
    if specialization is not None:
        out["specialization"] = specialization
    return out
