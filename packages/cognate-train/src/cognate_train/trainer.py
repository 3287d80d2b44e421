"""The Phase 1 trainer: one specialised Cognate model on the built-in curriculum.

One optimizer step (see DESIGN.md, "Data flow of one training step")::

    grad_accum micro-batches -> model(input_ids, attention_mask, labels).loss / grad_accum -> backward
    -> clip_grad_norm_ (norm logged; a non-finite loss or norm skips the step: grads zeroed,
       optimizer and Grokfast filter untouched, counted; max_nonfinite in a row stops the run)
    -> optimizer.step() -> weight EMA update -> scheduler.step()
    every eval_every steps and at the end: val loss + exact-match accuracy per family
    -> early stopping / GrokkingDetector -> metrics -> checkpoint (atomic)

Determinism and resume: the model is initialised from ``seed``; batches come from
``CurriculumDataset``, a pure function of (seed, stage, epoch, position); dropout draws from the
torch RNG, whose state is checkpointed. A run killed at any point and restarted with the same
command therefore re-runs exactly the steps after its last checkpoint and ends with the same
weights as an uninterrupted run (tested bit-exactly on CPU).

Deep supervision (``supervision_steps`` N > 1): TRM trains each batch with up to 16 consecutive
optimizer steps, carrying its detached answer/latent (y, z) from one to the next. The Cognate
model's forward is pure (it carries no state between calls, by design), so here each batch is
used for N consecutive optimizer steps, each with a fresh forward through all of the model's
recursion cycles (which already carry (y, z) internally with their own deep-supervision loss
terms). A new batch is drawn every N steps; ``max_steps`` counts optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoints as ck
from .config import ConfigError, TrainConfig, compat_fingerprint, to_dict
from .detector import GrokkingDetector
from .metrics import MetricsLogger
from .optim import (
    boost_on_grokking,
    build_optimizer,
    build_scheduler,
    grokfast_lambda,
    set_grokfast_lambda,
)

STAGE_NAMES = ("foundation", "reasoning", "advanced")


class TrainingStopped(RuntimeError):
    """The run stopped on a runtime problem (e.g. too many non-finite steps); exit status 1."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name} does not exist ({torch.cuda.device_count()} GPUs)")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the block with ``n`` intra-op threads (0: unchanged), then restore the old count."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def setup_device(device: torch.device) -> None:
    if device.type == "cpu":
        # Denormal floats (|x| < 1e-38) appear in slowly decaying optimizer/filter state late in
        # long runs and make CPU arithmetic up to ~20x slower. Flushing them to zero ran the
        # reference grokking run in 405 s instead of 880 s with identical milestones (measured on
        # this project's 2-core CPU, see shared/REFERENCES.md); it never changes a result that
        # matters at float32 precision.
        torch.set_flush_denormal(True)


def build_model(
    model_preset: str, specialization: str, tokenizer: Any, max_len: int
) -> torch.nn.Module:
    """A fresh ``CognateForCausalLM`` sized by ``model_preset`` with the tokenizer's vocabulary."""
    from cognate_model import CognateConfig, CognateForCausalLM

    overrides: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    from cognate_model.configuration_cognate import PRESETS

    if PRESETS[model_preset]["max_seq_len"] < max_len:
        overrides["max_seq_len"] = max_len
    config = CognateConfig.from_preset(model_preset, specialization, **overrides)
    return CognateForCausalLM(config)


def stage_at(step: int, total_steps: int, fractions: list[float]) -> str:
    """The curriculum stage of optimizer step ``step``: stage i covers a ``fractions[i]`` share."""
    total = sum(fractions)
    bound = 0.0
    for name, frac in zip(STAGE_NAMES, fractions, strict=True):
        bound += frac / total * total_steps
        if step < bound - 1e-9:
            return name
    return STAGE_NAMES[max(i for i, f in enumerate(fractions) if f > 0)]


def current_lrs(optimizer: Any) -> dict[str, float]:
    """``lr`` (the AdamW groups') and, when Muon is in use, ``lr/muon``."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        key = "lr/muon" if group.get("use_muon") else "lr"
        out.setdefault(key, float(group["lr"]))
    if "lr" not in out:
        out["lr"] = out["lr/muon"]
    return out


def model_aux_metrics(output: Any) -> dict[str, float]:
    """Auxiliary scalars a model reports (ACT halting, LTM gate, ...), e.g. ``act/steps_mean``."""
    found = getattr(output, "metrics", None)
    if not isinstance(found, dict):
        return {}
    out = {}
    for key, value in found.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key if "/" in key else f"model/{key}"] = float(value)
    return out


class WeightEMA:
    """Exponential moving average of the weights, used for evaluation and ``final/``:
    ``w_ema <- d * w_ema + (1 - d) * w`` after every optimizer step (TRM uses d = 0.999)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(backup)


@dataclass
class TrainState:
    """Everything besides model/optimizer/scheduler that a resumed run needs."""

    step: int = 0
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    elapsed_s: float = 0.0
    tokens_seen: int = 0  # non-padding tokens of the batches behind the optimizer steps taken
    last_eval_step: int = -1
    last_eval: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


class Trainer:
    """Trains one specialization into ``out_dir`` (the DESIGN.md output layout)."""

    def __init__(
        self,
        cfg: TrainConfig,
        specialization: str,
        out_dir: str | Path,
        *,
        model_factory: Callable[[Any], torch.nn.Module] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = specialization
        self.out = Path(out_dir)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.model_factory = model_factory
        self.fingerprint = compat_fingerprint(cfg, specialization)

    # ------------------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
        from .data import CurriculumDataset, make_split, split_by_stage
        from .tokenizer import build_tokenizer

        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        setup_device(self.device)
        self.amp = cfg.precision == "bf16" or (
            cfg.precision == "auto" and self.device.type == "cuda"
        )
        self.tokenizer = build_tokenizer()
        active = [s for s, f in zip(STAGE_NAMES, cfg.stage_fractions, strict=True) if f > 0]
        from .data import families_for_stage

        families = families_for_stage(active[-1])
        try:
            train, self.val_examples = make_split(
                families, cfg.n_train, cfg.n_val, cfg.seed, cfg.max_len
            )
        except ValueError as exc:
            raise ConfigError(f"n-train/n-val/max-len: {exc}") from None
        by_stage = {s: ex for s, ex in split_by_stage(train).items() if s in active}
        # the train-accuracy probe for the grokking detector: as many train as val examples
        per_family: dict[str, int] = {}
        self.train_probe = []
        for ex in train:
            if per_family.get(ex.family, 0) < cfg.n_val:
                per_family[ex.family] = per_family.get(ex.family, 0) + 1
                self.train_probe.append(ex)
        try:
            self.dataset = CurriculumDataset(
                self.tokenizer, by_stage, cfg.batch_size, cfg.max_len, cfg.seed
            )
        except ValueError as exc:
            raise ConfigError(f"batch-size: {exc}") from None
        if cfg.epochs > 0:
            per_epoch = (
                self.dataset.steps_per_epoch(active[-1]) // cfg.grad_accum * cfg.supervision_steps
            )
            self.total_steps = max(1, int(round(cfg.epochs * max(1, per_epoch))))
        else:
            self.total_steps = cfg.max_steps

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if self.model_factory is not None:
            self.model = self.model_factory(self.tokenizer)
        else:
            self.model = build_model(cfg.model_preset, self.spec, self.tokenizer, cfg.max_len)
        self.model.to(self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = build_optimizer(cfg.optimizer, self.model, cfg)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio
        )
        self.base_lambda = grokfast_lambda(self.optimizer)
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.detector = GrokkingDetector(
            cfg.grok_window, cfg.grok_gap_threshold, cfg.grok_jump_threshold, cfg.grok_patience
        )
        self.state = TrainState()
        self.ckpt = ck.CheckpointManager(self.out, cfg.keep_last, self.fingerprint)
        self.current_batches: list[dict[str, torch.Tensor]] = []
        self.data_at_draw: dict[str, Any] = self.dataset.state_dict()
        self.draw_stage = STAGE_NAMES[0]

    # ------------------------------------------------------------------------ checkpoints

    def _write_checkpoint(self, directory: Path, full: bool, use_ema: bool = False) -> None:
        if use_ema and self.ema is not None:
            with self.ema.swapped_in(self.model):
                ck.save_weights(self.model, directory)
        else:
            ck.save_weights(self.model, directory)
        self.tokenizer.save_pretrained(directory)
        trainer_state = {
            "step": self.state.step,
            "specialization": self.spec,
            "config": to_dict(self.cfg),
            "total_steps": self.total_steps,
            "best_val_loss": self.state.best_val_loss
            if math.isfinite(self.state.best_val_loss)
            else None,
            "evals_without_improvement": self.state.evals_without_improvement,
            "nonfinite_total": self.state.nonfinite_total,
            "nonfinite_streak": self.state.nonfinite_streak,
            "elapsed_s": self.state.elapsed_s + (time.perf_counter() - self._t0),
            "tokens_seen": self.state.tokens_seen,
            "last_eval_step": self.state.last_eval_step,
            "last_eval": self.state.last_eval,
            "events": self.state.events,
            "stop_reason": self.state.stop_reason,
            "grokfast_lambda": grokfast_lambda(self.optimizer),
            "detector": self.detector.state_dict(),
            "data": self.dataset.state_dict(),
            "data_at_draw": self.data_at_draw,
            "draw_stage": self.draw_stage,
            "python_rng": list(random.getstate()),
        }
        ck.save_json(directory / "trainer_state.json", trainer_state)
        if not full:
            return
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.ema is not None:
            state["ema"] = self.ema.shadow
        ck.save_torch_state(directory, state)

    def save_checkpoint(self) -> Path:
        return self.ckpt.save(self.state.step, lambda d: self._write_checkpoint(d, full=True))

    def _load_checkpoint(self, path: Path) -> None:
        try:
            self._load_checkpoint_unchecked(path)
        except (KeyError, ValueError, RuntimeError) as exc:
            if isinstance(exc, (ConfigError, ck.CheckpointError)):
                raise
            raise ck.CheckpointError(f"checkpoint {path} cannot be resumed here: {exc}") from None

    def _load_checkpoint_unchecked(self, path: Path) -> None:
        ck.load_weights(self.model, path)
        ts = ck.load_json(path / "trainer_state.json")
        state = ck.load_torch_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ConfigError(f"ema-decay: checkpoint {path} was written without a weight EMA")
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        if ts.get("grokfast_lambda") is not None:
            set_grokfast_lambda(self.optimizer, ts["grokfast_lambda"])
        self.detector.load_state_dict(ts["detector"])
        self.state = TrainState(
            step=ts["step"],
            best_val_loss=ts["best_val_loss"] if ts["best_val_loss"] is not None else math.inf,
            evals_without_improvement=ts["evals_without_improvement"],
            nonfinite_total=ts["nonfinite_total"],
            nonfinite_streak=ts["nonfinite_streak"],
            elapsed_s=ts["elapsed_s"],
            tokens_seen=ts.get("tokens_seen", 0),
            last_eval_step=ts["last_eval_step"],
            last_eval=ts["last_eval"],
            events=ts["events"],
            stop_reason=ts.get("stop_reason"),
        )
        sup = self.cfg.supervision_steps
        self.data_at_draw = ts["data_at_draw"]
        if self.state.step % sup != 0:
            # mid-way through a batch's supervision steps: redraw that batch
            self.dataset.load_state_dict(ts["data_at_draw"])
            self.draw_stage = ts["draw_stage"]
            self.current_batches = self._draw(self.draw_stage)
        self.dataset.load_state_dict(ts["data"])
        version, internal, gauss = ts["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def _resume(self) -> int | None:
        """Load the checkpoint ``--resume`` asks for; returns its step (None: fresh start)."""
        cfg = self.cfg
        if cfg.resume == "never":
            existing = self.ckpt.any_checkpoint()
            if existing is not None:
                raise ConfigError(
                    f"resume: output dir {self.out} already holds checkpoints ({existing.name}); "
                    "use --resume auto to continue that run or choose another --output-dir"
                )
            return None
        if cfg.resume == "auto":
            path = self.ckpt.latest_intact(lambda m: self.log(f"warning: {m}"))
            if path is None:
                return None
        else:
            path = Path(cfg.resume)
            ck.verify(path)
        self.ckpt.check_compatible(path)
        self._load_checkpoint(path)
        self.log(f"[{self.spec}] resumed from {path} (step {self.state.step})")
        return self.state.step

    # ---------------------------------------------------------------------------- training

    def _draw(self, stage: str) -> list[dict[str, torch.Tensor]]:
        return [self.dataset.next_batch(stage) for _ in range(self.cfg.grad_accum)]

    def _autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over ``batches`` (the micro-batches of one accumulation)."""
        cfg = self.cfg
        self.model.train()
        loss_sum, tokens, finite = 0.0, 0, True
        aux: dict[str, float] = {}
        for mb in batches:
            mb = {k: v.to(self.device) for k, v in mb.items()}
            with self._autocast():
                out = self.model(
                    input_ids=mb["input_ids"],
                    attention_mask=mb["attention_mask"],
                    labels=mb["labels"],
                )
            loss = out.loss.float() / len(batches)
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            loss_sum += loss.item()
            tokens += int(mb["attention_mask"].sum())
            for k, v in model_aux_metrics(out).items():
                aux[k] = aux.get(k, 0.0) + v / len(batches)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if (finite and params)
            else math.nan
        )
        if finite and math.isfinite(grad_norm):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.state.nonfinite_streak = 0
            skipped = False
        else:
            # never let a nan/inf reach the optimizer or the Grokfast filter state
            self.state.nonfinite_total += 1
            self.state.nonfinite_streak += 1
            skipped = True
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # a skipped first step makes LambdaLR warn about the call order; the schedule is
            # indexed by step on purpose, skipped or not
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        return {
            "loss": loss_sum if finite else math.nan,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "skipped": skipped,
            **aux,
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        from .evaluation import exact_match, val_loss

        cfg = self.cfg
        ctx = self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext()
        with ctx, self._autocast():
            result = {
                "val/loss": val_loss(
                    self.model,
                    self.tokenizer,
                    self.val_examples,
                    cfg.eval_batch_size,
                    cfg.max_len,
                    self.device,
                )
            }
            em = exact_match(
                self.model,
                self.tokenizer,
                self.val_examples,
                cfg.eval_batch_size,
                device=self.device,
            )
            result.update({f"val/{k}": v for k, v in em.items() if k != "n"})
            if cfg.grokking_aware:
                tr = exact_match(
                    self.model,
                    self.tokenizer,
                    self.train_probe,
                    cfg.eval_batch_size,
                    device=self.device,
                )
                result["train/accuracy"] = tr["accuracy"]
        return result

    def _eval_record(self, result: dict[str, float]) -> dict[str, Any]:
        """The metrics.jsonl record of an evaluation at the current step."""
        return {
            "step": self.state.step,
            "train/tokens": self.state.tokens_seen,
            **result,
            **self.detector.metrics(),
        }

    def _after_eval(self, result: dict[str, float], metrics: MetricsLogger) -> bool:
        """Best checkpoint, early stopping and grokking detection; returns True to stop."""
        cfg, st = self.cfg, self.state
        st.last_eval_step, st.last_eval = st.step, dict(result)
        stop = False
        if result["val/loss"] < st.best_val_loss - cfg.early_stopping_min_delta:
            st.best_val_loss = result["val/loss"]
            st.evals_without_improvement = 0
            self.ckpt.save_named(
                "best", st.step, lambda d: self._write_checkpoint(d, full=False, use_ema=True)
            )
        else:
            st.evals_without_improvement += 1
            if (
                cfg.early_stopping_patience
                and st.evals_without_improvement >= cfg.early_stopping_patience
            ):
                st.stop_reason = "early_stopping"
                self.log(
                    f"[{self.spec}] early stopping at step {st.step}: val loss has not improved by "
                    f"{cfg.early_stopping_min_delta} for {st.evals_without_improvement} evaluations"
                )
                stop = True
        if cfg.grokking_aware:
            for ev in self.detector.update(
                st.step, result["train/accuracy"], result["val/accuracy"]
            ):
                st.events.append(ev)
                metrics.log({"step": st.step, f"grokking/event/{ev['event']}": 1.0})
                if ev["event"] == "grokking":
                    msg = boost_on_grokking(
                        self.optimizer, cfg.lambda_boost, st.step, ev["val_acc"]
                    )
                    self.log(f"[{self.spec}] {msg}")
                if ev["event"] == "converged":
                    st.stop_reason = "grokking_converged"
                    self.log(f"[{self.spec}] grokking converged at step {st.step}")
                    stop = True
        return stop

    def run(self) -> dict[str, Any]:
        """Train (resuming if asked), evaluate, checkpoint, plot; returns the summary."""
        with cpu_threads(self.cfg.threads):
            return self._run()

    def _run(self) -> dict[str, Any]:
        self._t0 = time.perf_counter()
        self._setup()
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt.cleanup_partial()
        resumed = self._resume()
        metrics = MetricsLogger(
            self.out,
            [b for b in cfg.log if b in ("wandb", "tensorboard")],
            f"{cfg.preset}-{self.spec}",
            to_dict(cfg),
            resume_step=resumed,
        )
        self.log(
            f"[{self.spec}] {cfg.model_preset} ({self.n_params / 1e6:.2f}M params), "
            f"optimizer {cfg.optimizer}, {self.total_steps} steps, device {self.device}"
        )
        progress = _Progress(self.total_steps, self.state.step, self.spec, self.log)
        window: dict[str, float] = {}
        t_window = time.perf_counter()
        sup = cfg.supervision_steps
        try:
            # a run that stopped early (and was killed before final/) stays stopped on resume
            while self.state.step < self.total_steps and self.state.stop_reason is None:
                stage = stage_at(self.state.step, self.total_steps, cfg.stage_fractions)
                if self.state.step % sup == 0 or not self.current_batches:
                    self.data_at_draw = self.dataset.state_dict()
                    self.draw_stage = stage
                    self.current_batches = self._draw(stage)
                res = self.train_step(self.current_batches)
                self.state.step += 1
                step = self.state.step
                if res["skipped"]:
                    self.log(
                        f"[{self.spec}] step {step}: non-finite loss or grad norm "
                        f"(loss {res['loss']}, norm {res['grad_norm']}); step skipped "
                        f"({self.state.nonfinite_streak} in a row)"
                    )
                    metrics.log({"step": step, "skipped_steps": self.state.nonfinite_total})
                    if self.state.nonfinite_streak >= cfg.max_nonfinite:
                        self.state.stop_reason = "nonfinite"
                        raise TrainingStopped(
                            f"[{self.spec}] stopped at step {step}: {self.state.nonfinite_streak} "
                            "non-finite steps in a row; lower --lr or check the data"
                        )
                else:
                    self.state.tokens_seen += res["tokens"]
                    for k, v in res.items():
                        if k != "skipped":
                            window[k] = window.get(k, 0.0) + v
                    window["n"] = window.get("n", 0.0) + 1
                progress.update(step, res["loss"])
                if step % cfg.log_every == 0 or step == self.total_steps:
                    if window.get("n"):
                        n = window.pop("n")
                        dt = max(1e-9, time.perf_counter() - t_window)
                        loss = window.pop("loss") / n
                        record = {
                            "step": step,
                            "train/loss": loss,
                            "train/perplexity": math.exp(min(loss, 50.0)),
                            **current_lrs(self.optimizer),
                            "grad_norm": window.pop("grad_norm") / n,
                            "tokens_per_s": window.pop("tokens") / dt,
                            "train/tokens": self.state.tokens_seen,
                            "curriculum/stage": STAGE_NAMES.index(stage),
                            "skipped_steps": self.state.nonfinite_total,
                            **{k: v / n for k, v in window.items()},
                        }
                        lam = grokfast_lambda(self.optimizer)
                        if lam is not None:
                            record["grokfast/lambda"] = lam
                        metrics.log(record)
                        progress.post(record)
                    window, t_window = {}, time.perf_counter()
                stop = False
                t_pause = time.perf_counter()
                if step % cfg.eval_every == 0 or step == self.total_steps:
                    result = self.evaluate()
                    stop = self._after_eval(result, metrics)
                    metrics.log(self._eval_record(result))
                    progress.message(_format_eval(self.spec, step, result))
                if step % cfg.checkpoint_every == 0 or step == self.total_steps or stop:
                    self.save_checkpoint()
                t_window += time.perf_counter() - t_pause  # tokens/s counts training time only
                if stop:
                    break
            progress.close()
            if self.state.last_eval_step != self.state.step:
                result = self.evaluate()
                self._after_eval(result, metrics)
                metrics.log(self._eval_record(result))
                self.save_checkpoint()
            if self.state.stop_reason is None:
                self.state.stop_reason = "max_steps"
            self.ckpt.save_named(
                "final",
                self.state.step,
                lambda d: self._write_checkpoint(d, full=False, use_ema=True),
            )
        finally:
            progress.close()
            metrics.close()
        return self._finish()

    # ------------------------------------------------------------------------------ outputs

    def _finish(self) -> dict[str, Any]:
        from .evaluation import generate_answers
        from .metrics import read_metrics
        from .plots import plot_run

        st = self.state
        elapsed = st.elapsed_s + (time.perf_counter() - self._t0)
        samples = []
        if self.cfg.samples:
            seen, chosen = set(), []
            for ex in self.val_examples:
                if ex.family not in seen:
                    seen.add(ex.family)
                    chosen.append(ex)
            chosen = chosen[: self.cfg.samples]
            ctx = (
                self.ema.swapped_in(self.model)
                if self.ema is not None
                else contextlib.nullcontext()
            )
            with ctx, self._autocast():
                outs = generate_answers(
                    self.model,
                    self.tokenizer,
                    [e.prompt for e in chosen],
                    max_new_tokens=16,
                    device=self.device,
                )
            samples = [
                {"family": e.family, "prompt": e.prompt, "expected": e.answer, "generated": o}
                for e, o in zip(chosen, outs, strict=True)
            ]
        records = read_metrics(self.out / "metrics.jsonl")
        act = [r["act/steps_mean"] for r in records if "act/steps_mean" in r]
        plots = plot_run(
            records,
            self.out / "plots",
            grokking_step=self.detector.grokking_step,
            title=f"{self.cfg.preset} / {self.spec}",
        )
        summary = {
            "specialization": self.spec,
            "model_preset": self.cfg.model_preset,
            "optimizer": self.cfg.optimizer,
            "n_params": self.n_params,
            "steps": st.step,
            "total_steps": self.total_steps,
            "stop_reason": st.stop_reason,
            "time_s": round(elapsed, 2),
            "tokens_seen": st.tokens_seen,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "device": str(self.device),
            "final": st.last_eval,
            "best_val_loss": st.best_val_loss if math.isfinite(st.best_val_loss) else None,
            "act_cycles_mean": (sum(act[-5:]) / len(act[-5:])) if act else None,
            "skipped_steps": st.nonfinite_total,
            "grokking_step": self.detector.grokking_step,
            "grokking_converged_step": self.detector.converged_step,
            "events": st.events,
            "samples": samples,
            "plots": [str(p) for p in plots],
            "output_dir": str(self.out),
        }
        ck.save_json(self.out / "summary.json", summary)
        return summary


def _format_eval(spec: str, step: int, result: dict[str, float]) -> str:
    fams = ", ".join(
        f"{k.split('/', 2)[2]} {v:.2f}" for k, v in result.items() if k.startswith("val/accuracy/")
    )
    extra = f", train acc {result['train/accuracy']:.3f}" if "train/accuracy" in result else ""
    return (
        f"[{spec}] eval step {step}: val loss {result['val/loss']:.4f}, "
        f"exact match {result['val/accuracy']:.3f}{extra} ({fams})"
    )


class _Progress:
    """tqdm bar (steps, loss, tokens/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, initial: int, spec: str, log: Callable[[str], None]) -> None:
        self.spec, self.log, self.total = spec, log, total
        self.bar = None
        self.t0, self.s0 = time.perf_counter(), initial
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=spec, unit="step", dynamic_ncols=True
            )

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def post(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['train/loss']:.3f}",
                tok_s=f"{record['tokens_per_s']:.0f}",
                refresh=False,
            )
            return
        step = record["step"]
        rate = (step - self.s0) / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        self.log(
            f"[{self.spec}] step {step}/{self.total} loss {record['train/loss']:.4f} "
            f"lr {record['lr']:.2e} grad_norm {record['grad_norm']:.3f} "
            f"tok/s {record['tokens_per_s']:.0f} eta {eta:.0f}s"
        )

    def message(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
