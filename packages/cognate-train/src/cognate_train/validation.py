"""Every check of a run's settings, before any work starts: :func:`validate` (the values) and
:func:`preflight` (what needs imports or the file system: packages, device, output directory).

A failed check raises :class:`~cognate_train.config.ConfigError` whose message starts with the
field's flag name; the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .config import (
    GROKFAST_FILTERS,
    GROKFAST_PLACES,
    LOG_BACKENDS,
    OPTIMIZERS,
    PRECISIONS,
    ConfigError,
    GrokConfig,
    RunConfig,
    TrainConfig,
    flag_label,
)

# beyond these a run cannot mean it: the first step would overflow or never end
MAX_LR = 100.0
MAX_EPOCHS = 1e6
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _check(cfg: RunConfig, cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{flag_label(type(cfg), name)}: {msg}", field=name)


def _finite(cfg: RunConfig, names: tuple[str, ...], lo: float = 0.0) -> None:
    for name in names:
        v = getattr(cfg, name)
        _check(cfg, math.isfinite(v) and v >= lo, name, f"must be a finite number >= {lo}, got {v}")


def _validate_run(cfg: RunConfig) -> None:
    c = lambda cond, name, msg: _check(cfg, cond, name, msg)  # noqa: E731
    c(cfg.max_steps >= 0, "max_steps", f"must be >= 0, got {cfg.max_steps}")
    c(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    c(cfg.grad_accum >= 1, "grad_accum", f"must be >= 1, got {cfg.grad_accum}")
    c(cfg.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    for name in ("lr", "muon_lr"):
        v = getattr(cfg, name)
        c(math.isfinite(v) and 0 < v <= MAX_LR, name, f"must be in (0, {MAX_LR:g}], got {v}")
    _finite(cfg, ("weight_decay", "grokfast_lambda", "grad_clip", "early_stopping_min_delta"))
    c(
        len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
        "betas",
        f"must be two numbers in [0, 1), got {cfg.betas}",
    )
    c(0 <= cfg.grokfast_alpha < 1, "grokfast_alpha", "must be in [0, 1)")
    c(
        cfg.grokfast in GROKFAST_FILTERS,
        "grokfast",
        f"must be one of {', '.join(GROKFAST_FILTERS)}, got {cfg.grokfast!r}",
    )
    c(cfg.grokfast_warmup_steps >= 0, "grokfast_warmup_steps", "must be >= 0")
    _validate_place(cfg)
    c(1 <= cfg.lambda_boost < math.inf, "lambda_boost", "must be >= 1 (1 disables the boost)")
    c(cfg.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    c(0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
    c(0 <= cfg.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 disables it)")
    c(cfg.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
    c(cfg.grok_window >= 1, "grok_window", "must be >= 1")
    c(cfg.grok_patience >= 1, "grok_patience", "must be >= 1")
    c(0 < cfg.grok_gap_threshold < 1, "grok_gap_threshold", "must be in (0, 1)")
    c(0 < cfg.grok_jump_threshold < 1, "grok_jump_threshold", "must be in (0, 1)")
    c(cfg.max_nonfinite >= 1, "max_nonfinite", "must be >= 1")
    c(cfg.threads >= 0, "threads", f"must be >= 0 (0: torch's default), got {cfg.threads}")
    for name in ("eval_every", "log_every", "checkpoint_every", "keep_last"):
        c(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}")
    lo, hi = SEED_RANGE
    c(lo <= cfg.seed <= hi, "seed", f"must be in [-2**63, 2**64 - 1], got {cfg.seed}")
    c(bool(cfg.output_dir), "output_dir", "must not be empty")
    c(
        cfg.device in ("auto", "cpu", "cuda")
        or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()),
        "device",
        f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}",
    )
    for backend in cfg.log:
        c(
            backend in LOG_BACKENDS or backend in ("jsonl", "none"),
            "log",
            f"unknown backend {backend!r} (jsonl is always written; extras: wandb, tensorboard)",
        )
    c(bool(cfg.resume), "resume", "must be auto, never or a checkpoint path")
    if cfg.resume not in ("auto", "never"):
        c(Path(cfg.resume).is_dir(), "resume", f"no such checkpoint directory: {cfg.resume}")
    if cfg.grokking_aware and cfg.early_stopping_patience:
        raise ConfigError(
            "early-stopping-patience: grokking-aware mode runs without early stopping; set it to 0"
        )


def _validate_place(cfg: RunConfig) -> None:
    """``grokfast_place="update"`` filters Muon's orthogonalised update with the EMA filter:
    only ``mugrokfast`` has that update (``grokfast-adamw`` wraps AdamW, ``muon`` and ``adamw``
    have no filter), and only ``ema`` has a place (the MA and dual filters stay on the
    gradient). Refused rather than ignored."""
    c = lambda cond, msg: _check(cfg, cond, "grokfast_place", msg)  # noqa: E731
    place = cfg.grokfast_place
    c(place in GROKFAST_PLACES, f"must be one of {', '.join(GROKFAST_PLACES)}, got {place!r}")
    if place == "grad":
        return
    c(
        cfg.optimizer == "mugrokfast",
        f"update needs --optimizer mugrokfast (it filters Muon's orthogonalised update, "
        f"which optimizer {cfg.optimizer} does not have)",
    )
    c(cfg.grokfast == "ema", f"update takes --grokfast ema only, got {cfg.grokfast}")


def _validate_grok(cfg: GrokConfig) -> None:
    c = lambda cond, name, msg: _check(cfg, cond, name, msg)  # noqa: E731
    c(cfg.op in ("*", "+", "-", "/"), "op", f"must be one of * + - /, got {cfg.op!r}")
    c(cfg.p >= 3, "p", f"must be a prime >= 3, got {cfg.p}")
    c(is_prime(cfg.p), "p", f"{cfg.p} is not prime")
    c(0 < cfg.train_fraction < 1, "train_fraction", "must be in (0, 1)")
    c(cfg.max_steps >= 1, "max_steps", "must be >= 1")
    c(cfg.d_model >= 1 and cfg.n_layers >= 1, "d_model", "model sizes must be >= 1")
    c(cfg.n_heads >= 1 and cfg.d_model % cfg.n_heads == 0, "n_heads", "must divide d-model")


def _validate_train(cfg: TrainConfig) -> None:
    from cognate_model.configuration_cognate import PRESETS, SPECIALIZATIONS

    c = lambda cond, name, msg: _check(cfg, cond, name, msg)  # noqa: E731
    c(
        cfg.specialization in (*SPECIALIZATIONS, "all"),
        "specialization",
        f"must be one of {', '.join(SPECIALIZATIONS)}, all; got {cfg.specialization!r}",
    )
    c(
        cfg.model_preset in PRESETS,
        "model_preset",
        f"unknown {cfg.model_preset!r} (choose from {', '.join(PRESETS)})",
    )
    c(0 <= cfg.epochs <= MAX_EPOCHS, "epochs", f"must be in [0, {MAX_EPOCHS:g}], got {cfg.epochs}")
    c(cfg.max_steps > 0 or cfg.epochs > 0, "max_steps", "set max-steps or epochs above 0")
    c(cfg.max_len >= 8, "max_len", f"must be >= 8, got {cfg.max_len}")
    c(cfg.n_train >= 1, "n_train", "must be >= 1")
    c(cfg.n_val >= 1, "n_val", "must be >= 1")
    c(
        len(cfg.stage_fractions) == 3
        and all(0 <= f < math.inf for f in cfg.stage_fractions)
        and sum(cfg.stage_fractions) > 0,
        "stage_fractions",
        "must be three non-negative numbers (foundation, reasoning, advanced) with a positive sum",
    )
    c(cfg.steps_per_batch >= 1, "steps_per_batch", "must be >= 1")
    c(
        math.isfinite(cfg.qk_clip) and cfg.qk_clip >= 0,
        "qk_clip",
        f"must be a finite logit cap > 0 (0: off), got {cfg.qk_clip}",
    )
    c(cfg.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
    c(cfg.samples >= 0, "samples", "must be >= 0")
    c(cfg.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
    if cfg.data != "curriculum":
        _validate_real_data(cfg)


def _validate_real_data(cfg: TrainConfig) -> None:
    from .config import LOSS_ON
    from .realdata.setup import parse_data

    c = lambda cond, name, msg: _check(cfg, cond, name, msg)  # noqa: E731
    try:
        parse_data(cfg.data)
    except ValueError as exc:
        c(False, "data", str(exc).removeprefix("--data "))
    c(cfg.loss_on in LOSS_ON, "loss_on", f"must be one of {', '.join(LOSS_ON)}")
    c(cfg.vocab_size >= 259, "vocab_size", f"must be >= 259 (256 bytes + 3), got {cfg.vocab_size}")
    c(cfg.tokenizer != "", "tokenizer", "must be train or a tokenizer folder")


def validate(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad field."""
    _validate_run(cfg)
    if isinstance(cfg, GrokConfig):
        _validate_grok(cfg)
    elif isinstance(cfg, TrainConfig):
        _validate_train(cfg)


def check_output_dir(path: str | Path) -> None:
    """The output directory is (or can be made) a writable directory."""
    out = Path(path)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"output-dir: {probe} exists and is not a directory", field="output_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "read-only file system or no write permission"
        raise ConfigError(f"output-dir: cannot write to {probe} ({why})", field="output_dir")


def preflight(cfg: RunConfig) -> None:
    """Output dir, optimizer package, metric sinks and device, checked before any work."""
    from .metrics import check_backends
    from .runtime import resolve_device

    check_output_dir(cfg.output_dir)
    if isinstance(cfg, TrainConfig) and cfg.data != "curriculum":
        if cfg.data_dir and not Path(cfg.data_dir).is_dir():
            raise ConfigError(f"data-dir: {cfg.data_dir} is not a directory", field="data_dir")
        if cfg.tokenizer != "train" and not Path(cfg.tokenizer).is_dir():
            raise ConfigError(
                f"tokenizer: {cfg.tokenizer} is not a directory (use train or a tokenizer folder)",
                field="tokenizer",
            )
    if cfg.optimizer != "adamw":
        try:
            import mugrokfast  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"optimizer: {cfg.optimizer} needs mugrokfast ({exc})") from None
    check_backends(cfg.log)
    resolve_device(cfg.device)
