"""A run's state and how it goes into a checkpoint and comes back.

A checkpoint directory holds the task's weights (``model.safetensors``; a ``save_pretrained``
directory with the tokenizer for the curriculum), ``trainer_state.json`` (:class:`TrainState`
whole, the config, the grokking detector, the Grokfast lambda, Python's RNG) and, in step
checkpoints only, ``state.pt`` (optimizer, scheduler, torch RNGs, the weight EMA and the task's
data position; tensors and plain containers, loaded with ``torch.load(weights_only=True)``).
Restoring all of it makes a resumed run take exactly the steps an uninterrupted one would.

Nothing non-finite is ever written: a checkpoint whose weights, EMA or optimizer state hold a
nan or inf is refused (:meth:`Checkpointer.save` returns None and says so), so rotation never
pushes out the newest finite checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoints as ck
from . import distributed as dist
from .config import ConfigError, to_dict
from .optim import build_optimizer, build_scheduler, grokfast_lambda, set_grokfast_lambda

RUN_LENGTH = frozenset({"max_steps", "epochs"})  # settings that change the schedule's length

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class TrainState:
    """Everything besides model, optimizer and scheduler that a resumed run needs."""

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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["best_val_loss"] = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        return out

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        """The state saved by :meth:`to_dict`; a missing or mistyped field raises ValueError."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in saved:
                raise ValueError(f"trainer_state.json has no '{f.name}'")
            v = saved[f.name]
            if f.name == "best_val_loss" and v is None:
                v = math.inf
            if not _is_a(v, hints[f.name]):
                raise ValueError(f"trainer_state.json: '{f.name}' has the wrong type ({v!r})")
            values[f.name] = float(v) if hints[f.name] is float else v
        return cls(**values)


def _is_a(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_a(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    return isinstance(value, typing.get_origin(tp) or tp)


def all_finite(tensors: Any) -> bool:
    """True when every floating-point tensor in a nested dict/list is finite."""
    if isinstance(tensors, torch.Tensor):
        return not tensors.is_floating_point() or bool(torch.isfinite(tensors).all())
    if isinstance(tensors, dict):
        return all(all_finite(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return all(all_finite(v) for v in tensors)
    return True


class Checkpointer:
    """Saves and restores an :class:`~cognate_train.engine.Engine`'s whole state."""

    def __init__(self, engine: Engine, manager: ck.CheckpointManager) -> None:
        self.engine = engine
        self.manager = manager
        self.t0 = time.perf_counter()  # elapsed_s counts this process's time from here

    # -- writing -----------------------------------------------------------------------------

    def _finite(self, what: str) -> bool:
        e = self.engine
        parts = [e.task.model.state_dict(), e.optimizer.state_dict()["state"]]
        if e.ema is not None:
            parts.append(e.ema.shadow)
        if all_finite(parts):
            return True
        e.log(
            f"warning: [{e.task.name}] step {e.state.step}: weights or optimizer state are not "
            f"finite; {what} not written (earlier checkpoints are kept)"
        )
        return False

    def save(self) -> Path | None:
        """``checkpoints/step-N`` with everything a resume needs; None when refused."""
        if not self._finite("checkpoint"):
            return None
        rngs = dist.gather(dist.rng_state())  # every rank's RNGs (a collective: all ranks save)
        if not dist.is_writer():  # rank 0 writes; the rest of the state is the same everywhere
            return self.manager.root
        step = self.engine.state.step
        return self.manager.save(step, lambda d: self._write(d, full=True, rngs=rngs))

    def save_named(self, name: str) -> Path | None:
        """``best/`` or ``final/``: the (EMA) weights and trainer state, no optimizer."""
        if not self._finite(f"{name}/"):
            return None
        if not dist.is_writer():
            return self.manager.root
        return self.manager.save_named(
            name, self.engine.state.step, lambda d: self._write(d, full=False)
        )

    def has(self, step: int) -> bool:
        """Whether ``checkpoints/step-<step>`` exists: rank 0's view on every rank (the others
        must not look while rank 0 may still be writing it; they would then save alone)."""
        return dist.broadcast(any(s == step for s, _ in self.manager.step_dirs()))

    def trainer_state(self) -> dict[str, Any]:
        e = self.engine
        state = e.state.to_dict()
        state["elapsed_s"] += time.perf_counter() - self.t0
        return {
            **state,
            "name": e.task.name,
            "config": to_dict(e.cfg),
            "total_steps": e.task.total_steps,
            "detector": e.detector.state_dict(),
            "grokfast_lambda": grokfast_lambda(e.optimizer),
            "python_rng": list(random.getstate()),
            "world_size": dist.world_size(),
        }

    def _write(self, directory: Path, full: bool, rngs: list[dict[str, Any]] | None = None) -> None:
        e = self.engine
        if full:
            e.task.save_weights(directory)
        else:
            from .ema import maybe_swapped_in

            with maybe_swapped_in(e.ema, e.task.model):
                e.task.save_weights(directory)
        ck.save_json(directory / "trainer_state.json", self.trainer_state())
        if not full:
            return
        state: dict[str, Any] = {
            "optimizer": e.optimizer.state_dict(),
            "scheduler": e.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "task": e.task.state_dict(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if rngs is not None and len(rngs) > 1:
            state["rank_rngs"] = rngs  # under torchrun: each rank's own, in rank order
        if e.ema is not None:
            state["ema"] = e.ema.shadow
        ck.save_torch_state(directory, state)

    # -- reading -----------------------------------------------------------------------------

    def resume(self, warn: Callable[[str], None]) -> int | None:
        """Load what ``--resume`` names (see :func:`checkpoints.resolve_resume`); returns the
        step resumed from, or None for a fresh start."""
        e = self.engine
        found = ck.resolve_resume(self.manager, e.cfg, warn)
        if found is None:
            return None
        path, changed = found
        try:
            self._load(path)
        except (ConfigError, ck.CheckpointError):
            raise
        except Exception as exc:  # damaged or foreign contents that passed the manifest
            why = f"{type(exc).__name__}: {exc}"
            raise ck.CheckpointError(f"checkpoint {path} cannot be resumed here ({why})") from None
        if changed:
            self.apply_overrides(changed)
        self.anchor_schedule()
        e.log(f"[{e.task.name}] resumed from {path} (step {e.state.step})")
        return e.state.step

    def _load(self, path: Path) -> None:
        e = self.engine
        ck.load_weights(e.task.model, path)
        ts = ck.load_json(path / "trainer_state.json")
        state = ck.load_torch_state(path)
        e.optimizer.load_state_dict(state["optimizer"])
        e.scheduler.load_state_dict(state["scheduler"])
        if e.ema is not None:
            if "ema" not in state:
                raise ConfigError(f"ema-decay: checkpoint {path} was written without a weight EMA")
            e.ema.shadow = {k: v.to(e.task.device) for k, v in state["ema"].items()}
        if ts.get("grokfast_lambda") is not None:
            set_grokfast_lambda(e.optimizer, float(ts["grokfast_lambda"]))
        e.detector.load_state_dict(ts["detector"])
        e.state = TrainState.from_dict(ts)
        e.task.load_state_dict(state["task"], e.state.step)
        self._restore_rng(state, ts)

    def _restore_rng(self, state: dict[str, Any], ts: dict[str, Any]) -> None:
        """This rank's RNG states from the checkpoint: its own when the writing run had this
        rank, rank 0's on rank 0 (a single-process checkpoint), else a fresh per-rank seed
        derived from (seed, rank, step) (a run resumed on more ranks than wrote it)."""
        rank, saved = dist.rank(), state.get("rank_rngs") or []
        if rank < len(saved):
            dist.set_rng_state(saved[rank])
        elif rank == 0:
            version, internal, gauss = ts["python_rng"]
            random.setstate((version, tuple(internal), gauss))
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:
            dist.seed_this_rank(self.engine.cfg.seed, self.engine.state.step)

    def apply_overrides(self, changed: dict[str, list[Any]]) -> None:
        """After a resume with ``--override``: the optimizer and schedule take this run's
        hyperparameters (the checkpoint's were loaded with its state), and the change is
        recorded as an ``override`` event."""
        e = self.engine
        event: dict[str, Any] = {"event": "override", "step": e.state.step, "changed": changed}
        if RUN_LENGTH & set(changed):  # continue the schedule from where it was, see optim
            group = e.optimizer.param_groups[0]
            event["lr_multiplier"] = group["lr"] / group["initial_lr"]
        fresh = build_optimizer(e.cfg.optimizer, e.task.model, e.cfg)
        base = build_scheduler(fresh, e.cfg.warmup_steps, e.task.total_steps, 1.0).base_lrs
        for group, new in zip(e.optimizer.param_groups, fresh.param_groups, strict=True):
            boosted = {"grokfast_lambda", "grokfast_ma_lambda"}
            keep = {"params", "lr"} | (boosted - set(changed))  # a boost survives
            group.update({k: v for k, v in new.items() if k not in keep})
        e.scheduler.base_lrs = list(base)
        for group, lr0, fn in zip(
            e.optimizer.param_groups, base, e.scheduler.lr_lambdas, strict=True
        ):
            group["initial_lr"] = lr0
            group["lr"] = lr0 * fn(e.scheduler.last_epoch)
        if "grokfast_lambda" in changed and e.cfg.grokfast != "ma":  # ma: not its lambda
            set_grokfast_lambda(e.optimizer, e.cfg.grokfast_lambda)
        e.state.events.append(event)
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        e.log(f"[{e.task.name}] --override: continuing with {listed}")

    def anchor_schedule(self) -> None:
        """Where the run's length was changed on resume: the lr continues from the multiplier
        it had then (recorded in the override event), not from a re-laid warmup and decay."""
        e = self.engine
        marks = [ev for ev in e.state.events if "lr_multiplier" in ev]
        if not marks:
            return
        anchor = (int(marks[-1]["step"]), float(marks[-1]["lr_multiplier"]))
        sched = build_scheduler(
            e.optimizer, e.cfg.warmup_steps, e.task.total_steps, e.cfg.min_lr_ratio, anchor
        )
        e.scheduler.lr_lambdas = sched.lr_lambdas
        for group, lr0, fn in zip(
            e.optimizer.param_groups, e.scheduler.base_lrs, e.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = lr0 * fn(e.scheduler.last_epoch)
        m = e.scheduler.lr_lambdas[0](e.scheduler.last_epoch)
        e.log(
            f"[{e.task.name}] lr schedule continues from step {anchor[0]} at {anchor[1]:.3g}x "
            f"the peak lr (now {m:.3g}x), decaying to {e.cfg.min_lr_ratio:g}x at step "
            f"{e.task.total_steps}; warmup is not repeated"
        )
