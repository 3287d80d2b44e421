"""The training engine: one loop that every task (curriculum, grokking, ...) runs.

A task supplies its model, its batches, the loss of one micro-batch, its evaluation and its data
position (:class:`Task`); the engine owns the rest. One optimizer step::

    task.batches(step) -> micro-batches; per micro-batch: task.loss(mb) / n -> backward
    -> clip_grad_norm_ (norm logged; a non-finite loss or norm skips the step: grads zeroed,
       optimizer, Grokfast filter and weight EMA untouched, counted; max_nonfinite in a row
       stop the run) -> optimizer.step() -> weight EMA update -> scheduler.step()
    every log_every steps: the window's mean loss, grad norm, tokens/s, lr -> metrics
    every eval_every steps and at the end: task.evaluate() (on the EMA weights)
    -> best/, early stopping, GrokkingDetector (lambda boost, convergence) -> metrics
    every checkpoint_every steps, at a stop and at the end: an atomic checkpoint

Determinism and resume: everything random is seeded, and a checkpoint holds model, optimizer,
scheduler, RNG states, EMA, detector, counters and the task's data position, so a run killed at
any point and restarted with the same command re-runs exactly the steps after its last
checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import checkpoints as ck
from . import distributed as dist
from .config import RunConfig, to_dict
from .detector import GrokkingDetector
from .ema import WeightEMA, maybe_swapped_in
from .metrics import MetricsLogger, NullMetrics, StepWindow
from .optim import (
    boost_on_grokking,
    build_optimizer,
    build_scheduler,
    current_lrs,
    grokfast_lambda,
)
from .progress import Progress, RunPlan
from .qk_clip import QKClip
from .runtime import cpu_threads, denormals_flushed, resolve_device
from .signals import Interrupted, StopSignals
from .state import Checkpointer, TrainState
from .task import Task


class TrainingStopped(RuntimeError):
    """The run stopped on a runtime problem (e.g. too many non-finite steps); exit status 1."""


def run(
    cfg: RunConfig,
    out_dir: str | Path,
    make_task: Callable[[torch.device], Task],
    log=None,
    plan: RunPlan | None = None,
) -> dict[str, Any]:
    """Build the task on the configured device and train it; returns the run's summary."""
    with cpu_threads(cfg.threads):
        device = dist.init(resolve_device(cfg.device))
        with denormals_flushed(device):
            return Engine(make_task(device), cfg, out_dir, log, plan).train()


class Engine:
    """Trains one task into ``out_dir``: the loop, its bookkeeping and its outputs."""

    def __init__(
        self, task: Task, cfg: RunConfig, out_dir: str | Path, log=None, plan: RunPlan | None = None
    ) -> None:
        self.task, self.cfg, self.out, self.plan = task, cfg, Path(out_dir), plan
        self.log: Callable[[str], None] = log or (lambda m: print(m, file=sys.stderr, flush=True))
        if not dist.is_writer():  # under torchrun rank 0 speaks for the run
            self.log = lambda m: None
        dist.seed_this_rank(cfg.seed)  # the model is built (same on all ranks); dropout differs
        self.ddp = dist.Ddp(task)
        self.optimizer = build_optimizer(cfg.optimizer, task.model, cfg)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.warmup_steps, task.total_steps, cfg.min_lr_ratio
        )
        self.ema = WeightEMA(task.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        # train runs have --qk-clip; grok's decoder has fused q/k/v and records nothing
        self.qk_clip = QKClip(task.model, getattr(cfg, "qk_clip", 0.0))
        self.max_logit: float | None = None
        self.detector = GrokkingDetector(
            cfg.grok_window, cfg.grok_gap_threshold, cfg.grok_jump_threshold, cfg.grok_patience
        )
        self.state = TrainState()
        manager = ck.CheckpointManager(self.out, cfg.keep_last, task.fingerprint)
        self.checkpointer = Checkpointer(self, manager)
        self.window = StepWindow()

    # ------------------------------------------------------------------------------ the loop

    def train(self) -> dict[str, Any]:
        """Resume if asked, train until done or stopped, write final/; returns the summary."""
        with StopSignals() as signals:
            self.setup()
            received = 0
            try:
                signals.check()
                while self.should_train():
                    result = self.train_step(self.task.batches(self.state.step))
                    self.state.step += 1
                    self.after_step(result)
                    if self.should_log():
                        self.log_window()
                    stop = False
                    with self.window.paused():
                        if self.should_eval():
                            stop = self.evaluate_and_react()
                        if self.should_checkpoint(stop):
                            self.checkpointer.save()
                    # under torchrun the ranks stop together, at the same step
                    received = dist.agree_max(signals.received or 0, self.task.device)
                    if stop or received:
                        break
                if not dist.active():
                    received = signals.received
                if received:
                    self.stop_on_signal(received)
                self.finish()
                if self.plan is not None:
                    self.plan.finished.append(time.perf_counter() - self.t0)
            finally:
                self.progress.close()
                self.metrics.close()
        return self.summary()

    def stop_on_signal(self, signum: int) -> None:
        """The step in flight is done: checkpoint it (unless just done) and stop."""
        step = self.state.step
        saved = self.checkpointer.has(step) or self.checkpointer.save() is not None
        where = f"checkpoint step {step} written" if saved else "no checkpoint written"
        raise Interrupted(
            f"[{self.task.name}] stopped by {signal.Signals(signum).name} at step {step}, "
            f"{where}; run the same command to resume",
            signum,
        )

    def setup(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
        if dist.is_writer():
            self.out.mkdir(parents=True, exist_ok=True)
            self.checkpointer.manager.cleanup_partial()
        dist.barrier()  # the other ranks read the checkpoints once rank 0 has tidied them
        resumed = self.checkpointer.resume(lambda m: self.log(f"warning: {m}"))
        # time before this point (imports, set-up, loading) is not training time
        self.checkpointer.t0 = self.t0 = time.perf_counter()
        self.metrics = (MetricsLogger if dist.is_writer() else NullMetrics)(
            self.out,
            [b for b in self.cfg.log if b in ("wandb", "tensorboard")],
            f"{self.cfg.preset}-{self.task.name}",
            to_dict(self.cfg),
            resume_step=resumed,
        )
        self.log(self.task.describe())
        self.progress = Progress(
            self.task.total_steps,
            self.state.step,
            self.task.name,
            self.log,
            self.task.console_every,
            self.plan,
        )
        self.window.reset()

    def should_train(self) -> bool:
        # a run that stopped early (and was killed before final/) stays stopped on resume
        return self.state.step < self.task.total_steps and self.state.stop_reason is None

    def should_log(self, step: int | None = None) -> bool:
        step = self.state.step if step is None else step
        return step % self.cfg.log_every == 0 or step == self.task.total_steps

    def should_eval(self) -> bool:
        step = self.state.step
        return step % self.cfg.eval_every == 0 or step == self.task.total_steps

    def should_checkpoint(self, stop: bool) -> bool:
        step = self.state.step
        return step % self.cfg.checkpoint_every == 0 or step == self.task.total_steps or stop

    # ----------------------------------------------------------------------------- one step

    def train_step(self, batches: list[Any]) -> dict[str, Any]:
        """One optimizer step over ``batches`` (the micro-batches of one accumulation)."""
        model = self.task.model
        model.train()
        batches = dist.shard(batches)  # this rank's micro-batches of the global step
        loss_sum, tokens, finite = 0.0, 0, True
        aux: dict[str, float] = {}
        self.qk_clip.begin(log_step=self.should_log(self.state.step + 1))
        with self.ddp.training():
            for k, mb in enumerate(batches):
                with self.ddp.micro_step(last=k == len(batches) - 1):
                    loss, n_tokens, metrics = self.task.loss(mb)
                    loss = loss.float() / len(batches)
                    if not torch.isfinite(loss):
                        finite = False
                        if not dist.active():
                            break
                        # under DDP every rank must join every all-reduce: the nan gradients
                        # make the grad norm non-finite on all ranks, which skips the step
                    loss.backward()
                loss_sum += loss.item()
                tokens += n_tokens
                for k, v in metrics.items():
                    aux[k] = aux.get(k, 0.0) + v / len(batches)
        loss_sum, tokens_all = dist.sum_floats([loss_sum, tokens], self.task.device)
        loss_sum, tokens = loss_sum / dist.world_size(), int(tokens_all)
        finite = finite and math.isfinite(loss_sum)
        params = [p for p in model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = math.nan
        if finite and params:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        skipped = not (finite and math.isfinite(grad_norm))
        if not skipped:  # never let a nan/inf reach the optimizer, the filter or the EMA
            self.optimizer.step()
        self.max_logit = self.qk_clip.end(stepped=not skipped)  # QK-clip after the step
        if not skipped:
            if self.ema is not None:
                self.ema.update(model)
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if skipped else 0
        self.state.nonfinite_total += int(skipped)
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # a skipped first step makes LambdaLR warn about the call order; the schedule is
            # indexed by step on purpose, skipped or not
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        loss_out = loss_sum if finite else math.nan
        return {
            "loss": loss_out,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "skipped": skipped,
            **aux,
        }

    def after_step(self, result: dict[str, Any]) -> None:
        st, name = self.state, self.task.name
        if result.pop("skipped"):
            self.log(
                f"[{name}] step {st.step}: non-finite loss or grad norm (loss {result['loss']}, "
                f"norm {result['grad_norm']}); step skipped ({st.nonfinite_streak} in a row)"
            )
            self.metrics.log({"step": st.step, "skipped_steps": st.nonfinite_total})
            if st.nonfinite_streak >= self.cfg.max_nonfinite:
                st.stop_reason = "nonfinite"
                raise TrainingStopped(
                    f"[{name}] stopped at step {st.step}: {st.nonfinite_streak} non-finite steps "
                    "in a row; lower --lr or check the data"
                )
        else:
            st.tokens_seen += result["tokens"]
            self.window.add(result)
        self.progress.update(st.step)

    def log_window(self) -> None:
        means = self.window.means()
        if means is not None:
            step = self.state.step
            record = {
                "step": step,
                "train/loss": means.pop("train/loss"),
                "train/perplexity": means.pop("train/perplexity"),
                **current_lrs(self.optimizer),
                "grad_norm": means.pop("grad_norm"),
                "tokens_per_s": means.pop("tokens_per_s"),
                "train/tokens": self.state.tokens_seen,
                **self.task.log_extras(step - 1),
                "skipped_steps": self.state.nonfinite_total,
                **means,
            }
            lam = grokfast_lambda(self.optimizer)
            if lam is not None:
                record["grokfast/lambda"] = lam
            if self.max_logit is not None:  # the window's last step, before its clip
                record["attn/max_logit"] = self.max_logit
            self.metrics.log(record)
            self.progress.post(record)
        self.window.reset()

    # ----------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's evaluation on the EMA weights; under torchrun every rank scores its shard
        and gets the reduced (identical) figures."""
        with maybe_swapped_in(self.ema, self.task.model):
            return self.task.evaluate()

    def evaluate_and_react(self) -> bool:
        """Evaluate, then best/, early stopping and grokking detection; True to stop."""
        st = self.state
        result = self.evaluate()
        st.last_eval_step, st.last_eval = st.step, dict(result)
        stop = self.early_stopping(result["val/loss"])
        if self.cfg.grokking_aware:
            stop = self.detect_grokking(result) or stop
        self.metrics.log(
            {"step": st.step, "train/tokens": st.tokens_seen, **result, **self.detector.metrics()}
        )
        self.progress.evaluation(st.step, result)
        return stop

    def early_stopping(self, val_loss: float) -> bool:
        cfg, st = self.cfg, self.state
        if val_loss < st.best_val_loss - cfg.early_stopping_min_delta:
            st.best_val_loss = val_loss
            st.evals_without_improvement = 0
            if self.task.save_best:
                self.checkpointer.save_named("best")
            return False
        st.evals_without_improvement += 1
        patience = cfg.early_stopping_patience
        if not patience or st.evals_without_improvement < patience:
            return False
        st.stop_reason = "early_stopping"
        self.progress.message(
            f"[{self.task.name}] early stopping at step {st.step}: val loss has not improved by "
            f"{cfg.early_stopping_min_delta} for {st.evals_without_improvement} evaluations"
        )
        return True

    def detect_grokking(self, result: dict[str, float]) -> bool:
        st, stop = self.state, False
        train_acc, val_acc = result["train/accuracy"], result["val/accuracy"]
        for ev in self.detector.update(st.step, train_acc, val_acc):
            st.events.append(ev)
            self.metrics.log({"step": st.step, f"grokking/event/{ev['event']}": 1.0})
            if ev["event"] == "grokking":
                msg = boost_on_grokking(self.optimizer, self.cfg.lambda_boost, st.step, val_acc)
                self.progress.message(f"[{self.task.name}] {msg}")
            elif ev["event"] == "converged":
                self.progress.message(
                    f"[{self.task.name}] grokking converged at step {st.step} "
                    f"(train acc {train_acc:.3f}, val acc {val_acc:.3f})"
                )
                if self.cfg.stop_on_convergence:
                    st.stop_reason, stop = "grokking_converged", True
        return stop

    # ------------------------------------------------------------------------------ the end

    def finish(self) -> None:
        """A last evaluation and checkpoint where the loop did not end on them, then final/."""
        st = self.state
        self.progress.close()
        evaluated = st.last_eval_step != st.step
        if evaluated:
            self.log(f"[{self.task.name}] final evaluation at step {st.step} ...")
            self.evaluate_and_react()
        if evaluated or not self.checkpointer.has(st.step):
            self.checkpointer.save()
        if st.nonfinite_streak:
            st.stop_reason = "nonfinite"
            raise TrainingStopped(
                f"[{self.task.name}] ended at step {st.step} with its last {st.nonfinite_streak} "
                "steps skipped as non-finite; not a clean finish, final/ not written"
            )
        if st.stop_reason is None:
            st.stop_reason = "max_steps"
        if self.checkpointer.save_named("final") is None:
            raise TrainingStopped(
                f"[{self.task.name}] ended at step {st.step} with non-finite weights; "
                "final/ not written"
            )

    def summary(self) -> dict[str, Any]:
        from .report import summarize

        if not dist.is_writer():
            return {"world_size": dist.world_size()}
        return summarize(self)
