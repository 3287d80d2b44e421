"""Run configuration: one dataclass base for the settings every run shares, presets, TOML.

:class:`RunConfig` declares what the training engine reads (length, optimizer, schedule, cadence,
early stopping, grokking detection, checkpoints, resume); :class:`TrainConfig` (the curriculum)
and :class:`GrokConfig` (modular arithmetic) add their task's fields and restate only the
defaults they change. Each field carries its command-line help in ``metadata``, and the CLI's
flag table is generated from the fields (``--name-with-dashes``, plus any old spelling kept as
an alias), so a setting has one name everywhere: dataclass, TOML key and flag.

Precedence is ``preset < TOML file < command-line flags``: a preset gives every field a value,
a ``--config FILE.toml`` overrides the keys it names (top-level keys, spelled like the fields),
and flags override both. :func:`cognate_train.validation.validate` then checks the result before
any work starts; a bad value raises :class:`ConfigError` naming the field, which the CLI turns
into a one-line error with exit status 2.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .coercion import coerce
from .presets import GROK_PRESETS, TRAIN_PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

OPTIMIZERS: tuple[str, ...] = ("mugrokfast", "adamw", "muon", "grokfast-adamw")
LOG_BACKENDS: tuple[str, ...] = ("wandb", "tensorboard")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
LOSS_ON: tuple[str, ...] = ("answers", "all")
GROKFAST_FILTERS: tuple[str, ...] = ("ema", "ma", "dual", "none")
GROKFAST_PLACES: tuple[str, ...] = ("grad", "update")
# optimizers without a Grokfast filter: --grokfast / --grokfast-warmup-steps given with them
# would be ignored, so build_config refuses them
UNFILTERED: tuple[str, ...] = ("adamw", "muon")

__all__ = ["GROK_PRESETS", "TRAIN_PRESETS", "ConfigError", "GrokConfig", "TrainConfig"]


class ConfigError(ValueError):
    """A bad flag, config file or output directory; the message names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def opt(default: Any, help: str = "", *, flag: bool | str = True, aliases: tuple = (), **kw):
    """A config field with its flag's help. ``flag``: False for no flag, a string for a flag
    spelled otherwise; ``aliases``: old field names still accepted as flags and TOML keys."""
    value = {"default_factory": lambda: list(default)} if isinstance(default, list) else {}
    value = value or {"default": default}
    return field(**value, metadata={"help": help, "flag": flag, "aliases": aliases, **kw})


@dataclass
class RunConfig:
    """What the training engine reads; shared by ``train`` and ``grok``."""

    preset: str = opt("quick", flag=False)
    output_dir: str = opt("runs/quick", "where metrics, checkpoints, plots and summary go")
    max_steps: int = opt(300, "optimizer steps to train")
    batch_size: int = opt(32, "examples per micro-batch (per process under torchrun)")
    grad_accum: int = opt(
        1,
        "micro-batches per optimizer step and process; the global batch is "
        "batch_size x grad_accum x world_size (torchrun's --nproc-per-node x --nnodes)",
    )
    optimizer: str = opt("mugrokfast", choices=OPTIMIZERS)
    lr: float = opt(1e-3, "AdamW learning rate (peak)")
    muon_lr: float = opt(0.02, "Muon learning rate (mugrokfast, muon)")
    weight_decay: float = opt(0.01, "decoupled weight decay")
    betas: list[float] = opt([0.9, 0.98], "Adam betas, two comma-separated numbers")
    grokfast: str = opt(
        "ema",
        "Grokfast filter of mugrokfast and grokfast-adamw: ema (g + lambda ema(g)), ma "
        "(g + 5 x the mean of the last 100 gradients, once 100 are in), dual (both terms) or "
        "none (no filter: mugrokfast is then muon)",
        choices=GROKFAST_FILTERS,
    )
    grokfast_warmup_steps: int = opt(
        0, "steps during which the Grokfast filter state is updated but not applied"
    )
    grokfast_place: str = opt(
        "grad",
        "where mugrokfast's EMA acts in the Muon groups: grad (the raw gradient, the paper's "
        "filter) or update (Muon's orthogonalised update, lambda a relative weight; needs "
        "--grokfast ema; AdamW groups filter the gradient either way)",
        choices=GROKFAST_PLACES,
    )
    grokfast_alpha: float = opt(0.98, "EMA decay of the Grokfast filter")
    grokfast_lambda: float = opt(0.1, "Grokfast amplification (ema, dual: of the EMA term)")
    lambda_boost: float = opt(1.5, "lambda multiplier once grokking is detected")
    grad_clip: float = opt(1.0, "max grad norm (0: no clipping)")
    warmup_steps: int = opt(20, "linear warmup steps")
    min_lr_ratio: float = opt(0.1, "lr at the end of the cosine decay / peak (1: constant)")
    ema_decay: float = opt(0.0, "weight EMA used for evaluation and final/ (0: off)")
    early_stopping_patience: int = opt(0, "evaluations without improvement (0: off)")
    early_stopping_min_delta: float = opt(
        0.0, "improvement in val loss that resets early stopping", aliases=("min_delta",)
    )
    grokking_aware: bool = opt(
        False, "track train/val accuracy, boost lambda on grokking, stop on convergence"
    )
    grok_window: int = opt(3, "detector: evaluations in the reference window")
    grok_gap_threshold: float = opt(0.05, "detector: train-val gap threshold")
    grok_jump_threshold: float = opt(0.10, "detector: val accuracy jump")
    grok_patience: int = opt(3, "detector: small-gap evals for convergence")
    stop_on_convergence: bool = opt(
        True, "keep training after convergence until max-steps", flag="--no-stop"
    )
    max_nonfinite: int = opt(5, "non-finite steps in a row that stop the run")
    eval_every: int = opt(100, "steps between evaluations")
    log_every: int = opt(10, "steps between metric records")
    checkpoint_every: int = opt(100, "steps between checkpoints")
    keep_last: int = opt(2, "step checkpoints to keep")
    resume: str = opt("auto", "auto, never or a checkpoint PATH", metavar="{auto,never,PATH}")
    override: bool = opt(False, "on resume, train on with settings that differ from the checkpoint")
    seed: int = opt(0, "seed of the model, the data order and every RNG")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    threads: int = opt(0, "CPU intra-op threads (0: torch's default)")
    log: list[str] = opt([], "extra metric sinks, comma-separated: wandb, tensorboard")

    NO_FLAGS: ClassVar[tuple[str, ...]] = ()


@dataclass
class TrainConfig(RunConfig):
    """One ``cognate-train train`` run on the built-in curriculum (one or all specializations)."""

    specialization: str = opt("all", "reasoning, memory, speed or all (one after another)")
    model_preset: str = opt("cognate-tiny", "cognate-tiny, cognate-small or cognate-25m")
    epochs: float = opt(0.0, "epochs over the train split (overrides max-steps when > 0)")
    max_len: int = opt(64, "longest training row in tokens")
    n_train: int = opt(400, "training examples per task family")
    n_val: int = opt(16, "validation examples per task family")
    stage_fractions: list[float] = opt(
        [0.3, 0.3, 0.4], "shares of foundation, reasoning, advanced (comma-separated)"
    )
    # TRM's deep supervision: each batch is used for this many consecutive optimizer steps
    steps_per_batch: int = opt(
        1, "optimizer steps per batch (deep supervision)", aliases=("supervision_steps",)
    )
    supervision_early_exit: bool = opt(
        False, "deep supervision: leave a batch early once the halting head says it is done"
    )
    precision: str = opt("auto", "auto (bf16 on CUDA), fp32 or bf16")
    qk_clip: float = opt(
        0.0,
        "QK-clip (MuonClip): after each optimizer step, every attention head whose largest "
        "pre-softmax logit S in that step exceeded TAU has its W_q and W_k rows multiplied by "
        "sqrt(TAU / S), which caps its logits on those inputs at TAU (0: off)",
        metavar="TAU",
    )
    samples: int = opt(3, "sample generations per model in the report")
    eval_batch_size: int = opt(64, "batch size of evaluation")
    # real data (cognate_train.realdata): used when data is not "curriculum"
    data: str = opt(
        "curriculum",
        "curriculum (generated), seeds (the six datasets, 3 stages) or names, comma-separated, "
        "of gsm8k, svamp, mbpp, arc_easy, arc_challenge, hellaswag (one stage)",
        metavar="{curriculum,seeds,NAME[,NAME...]}",
    )
    data_dir: str = opt(
        "",
        "DIR/<name>/: a save_to_disk DatasetDict or <split>.parquet|.jsonl|.json in the hub "
        "schema (empty: the local Hugging Face cache, offline)",
        metavar="DIR",
    )
    tokenizer: str = opt(
        "train",
        "real data: train a byte-level BPE on the training text, or a local tokenizer folder",
        metavar="{train,PATH}",
    )
    vocab_size: int = opt(32768, "real data: vocabulary size of the trained BPE")
    loss_on: str = opt(
        "answers", "real data: loss on answer tokens only, or on all tokens", choices=LOSS_ON
    )
    skip_bad_rows: bool = opt(
        False, "real data: skip rows that do not fit their dataset's template (counted)"
    )
    cache_dir: str = opt(
        "",
        "real data: preprocessing cache (empty: $COGNATE_TRAIN_CACHE or ~/.cache/cognate-train)",
        metavar="DIR",
    )


@dataclass
class GrokConfig(RunConfig):
    """``cognate-train grok``: modular arithmetic until grokking is detected and converged.

    Task and model follow the Grokfast reference: p 97, x*y, 50 % train, a 2-layer width-128
    decoder, batch 512, 10-step warmup then a constant lr, no clipping. The optimizer settings
    are mugrokfast's tuned ``grokking`` preset (``mugrokfast.PRESETS["grokking"]``: AdamW lr
    3e-3, betas (0.9, 0.98), weight decay 0.7, Muon lr 0.06, no Grokfast filter; a test keeps
    the two equal), so the default optimizer is ``muon``. ``--optimizer mugrokfast`` adds the
    paper's EMA filter (alpha 0.98, lambda 1.0) and the lambda boost on grokking; measured, it
    does not reach 95% val sooner than plain Muon on this task. The reference's own recipe
    (Adam with coupled L2 decay 0.005, lambda 2.0) has no equivalent among the decoupled-decay
    choices.
    """

    p: int = opt(97, "the prime modulus")
    op: str = opt("*", "one of * + - /")
    train_fraction: float = opt(0.5, "share of the table used for training")
    d_model: int = opt(128, "model width")
    n_layers: int = opt(2, "decoder blocks")
    n_heads: int = opt(4, "attention heads")
    # the defaults of shared fields that grok changes
    preset: str = "grok"
    output_dir: str = "runs/grok"
    max_steps: int = 3000
    batch_size: int = 512
    optimizer: str = "muon"
    lr: float = 3e-3
    weight_decay: float = 0.7
    muon_lr: float = 0.06
    grokfast_lambda: float = 1.0
    warmup_steps: int = 10
    min_lr_ratio: float = 1.0
    grad_clip: float = 0.0
    grokking_aware: bool = True
    # 20 evals x 10 steps: the val rise of a Grokfast run (~2 % per 10 steps) has to clear
    # jump_threshold against the mean of the window, which lags it by ~10 evals
    grok_window: int = 20
    grok_patience: int = 10
    eval_every: int = 10
    checkpoint_every: int = 500

    NO_FLAGS: ClassVar[tuple[str, ...]] = ("grokking_aware",)


def field_meta(cls: type, name: str) -> dict[str, Any]:
    """The metadata of field ``name``, from the class in ``cls``'s MRO that declared it with
    :func:`opt` (a subclass that only changes a default keeps the base's help and aliases)."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return dict(f.metadata)
    return {}


def aliases(cls: type) -> dict[str, str]:
    """Old field name -> current name, for every renamed field of ``cls``."""
    return {
        old: f.name for f in dataclasses.fields(cls) for old in field_meta(cls, f.name)["aliases"]
    }


def flag_label(cls: type, name: str) -> str:
    """How errors name a field: its flag spelling, with the old spelling if it was renamed."""
    old = field_meta(cls, name).get("aliases", ())
    label = name.replace("_", "-")
    return f"{label} (--{old[0].replace('_', '-')})" if old else label


# ---------------------------------------------------------------------------------------------
# building a config: preset < TOML < flags


def _apply(cfg: Any, values: dict[str, Any], source: str) -> None:
    types_ = typing.get_type_hints(type(cfg))
    renamed = aliases(type(cfg))
    for key, value in values.items():
        name = renamed.get(key, key)
        if name not in types_:
            raise ConfigError(f"{source}: unknown key '{key}'")
        setattr(cfg, name, coerce(name, value, types_[name], source))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are field names (a ``[train]`` or ``[grok]``
    table is flattened, so one file can hold both)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {p}")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {p}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {p}: invalid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"--config {p}: cannot read: {exc.strerror}") from None


def _toml_values(kind: str, toml_path: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if toml_path is None:
        return values
    for key, value in load_toml(toml_path).items():
        if isinstance(value, dict):
            if key not in ("train", "grok"):
                raise ConfigError(f"--config {toml_path}: unknown table [{key}]")
            if key == kind:
                values.update(value)
            continue
        values[key] = value
    return values


def build_config(
    kind: str, preset: str | None, toml_path: str | None, flags: dict[str, Any]
) -> TrainConfig | GrokConfig:
    """Build and validate a config for ``kind`` ("train" or "grok")."""
    from .validation import validate

    cls, presets = (TrainConfig, TRAIN_PRESETS) if kind == "train" else (GrokConfig, GROK_PRESETS)
    toml_values = _toml_values(kind, toml_path)
    name = preset or toml_values.get("preset") or cls().preset
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(
            f"--preset: unknown preset {name!r} (choose from {', '.join(sorted(presets))})"
        )
    cfg = cls()
    _apply(cfg, presets[name], f"preset {name}")
    cfg.preset = name
    toml_values.pop("preset", None)
    _apply(cfg, toml_values, f"--config {toml_path}")
    flag_values = {k: v for k, v in flags.items() if v is not None}
    _apply(cfg, flag_values, "flag")
    _check_filter_given(cfg, flag_values, toml_values, toml_path)
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


def _check_filter_given(
    cfg: RunConfig, flags: dict[str, Any], toml: dict[str, Any], toml_path: str | None
) -> None:
    """Refuse Grokfast filter settings given for an optimizer without a filter."""
    if cfg.optimizer not in UNFILTERED:
        return
    for name, off in (("grokfast", "none"), ("grokfast_warmup_steps", 0)):
        source = "flag" if name in flags else f"--config {toml_path}" if name in toml else None
        if source is not None and getattr(cfg, name) != off:
            raise ConfigError(
                f"{flag_label(type(cfg), name)}: optimizer {cfg.optimizer} has no Grokfast "
                f"filter ({source}); use --optimizer mugrokfast or grokfast-adamw",
                field=name,
            )


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def specializations(cfg: TrainConfig) -> list[str]:
    """The models a train run trains, in order: one, or every Cognate specialization."""
    from cognate_model.configuration_cognate import SPECIALIZATIONS

    return list(SPECIALIZATIONS) if cfg.specialization == "all" else [cfg.specialization]


# fields whose change makes existing checkpoints of an output directory unusable
COMPAT_FIELDS_TRAIN = (
    *("model_preset", "optimizer", "max_len", "seed", "n_train", "n_val", "batch_size", "data"),
)
COMPAT_FIELDS_GROK = (
    *("p", "op", "train_fraction", "optimizer", "d_model", "n_layers", "n_heads", "seed"),
)


def compat_fingerprint(cfg: RunConfig, specialization: str | None) -> dict[str, Any]:
    fields = COMPAT_FIELDS_GROK if isinstance(cfg, GrokConfig) else COMPAT_FIELDS_TRAIN
    out = {name: getattr(cfg, name) for name in fields}
    out["kind"] = "grok" if isinstance(cfg, GrokConfig) else "train"
    if specialization is not None:
        out["specialization"] = specialization
    return out
