"""What a run prints while it trains: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def format_eval(name: str, step: int, result: dict[str, float]) -> str:
    """One line for an evaluation: val loss, exact match, train accuracy, per-family scores."""
    fams = ", ".join(
        f"{k.split('/', 2)[2]} {v:.2f}" for k, v in result.items() if k.startswith("val/accuracy/")
    )
    extra = f", train acc {result['train/accuracy']:.3f}" if "train/accuracy" in result else ""
    loss = f"val loss {result['val/loss']:.4f}, " if "val/loss" in result else ""
    return f"[{name}] eval step {step}: {loss}exact match {result['val/accuracy']:.3f}{extra}" + (
        f" ({fams})" if fams else ""
    )


def eval_bar(total: int, desc: str) -> Any:
    """A tqdm bar with rate and ETA over the ``total`` prompts of one evaluation, shown on a
    terminal only (the engine's log line reports the result either way)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="prompt",
        leave=False,
        dynamic_ncols=True,
        disable=not sys.stderr.isatty(),
    )


@dataclass
class RunPlan:
    """Where one ``train`` run is among the models it trains, for an ETA over all of them."""

    n_models: int
    finished: list[float] = field(default_factory=list)  # wall seconds of each finished model

    @property
    def index(self) -> int:
        """1-based number of the model being trained."""
        return len(self.finished) + 1

    def eta_all(self, eta: float, projected: float) -> float:
        """This model's ETA plus the models after it, each estimated at the mean wall time of
        the finished ones (at this model's ``projected`` time while none has finished)."""
        per = sum(self.finished) / len(self.finished) if self.finished else projected
        return eta + max(0, self.n_models - self.index) * per


class Progress:
    """tqdm bar (steps, loss, tokens/s) on a terminal; otherwise one log line per record whose
    step is a multiple of ``every`` (every record when 1). With a ``plan`` of several models,
    both also show which model this is and an ETA for all of them."""

    def __init__(
        self,
        total: int,
        initial: int,
        name: str,
        log: Callable[[str], None],
        every: int = 1,
        plan: RunPlan | None = None,
    ) -> None:
        self.name, self.log, self.total, self.every = name, log, total, every
        self.plan = plan if plan is not None and plan.n_models > 1 else None
        self.bar = None
        self.t0, self.s0 = time.perf_counter(), initial
        if sys.stderr.isatty():
            from tqdm import tqdm

            desc = name if self.plan is None else f"{name} {self.plan.index}/{self.plan.n_models}"
            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True
            )

    def _etas(self, step: int) -> tuple[float, float | None]:
        """(this model's ETA, all models' ETA or None) in seconds, from the rate so far."""
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        rate = (step - self.s0) / elapsed
        eta = (self.total - step) / rate if rate > 0 else 0.0
        if self.plan is None:
            return eta, None
        # a whole model at this rate (elapsed + eta would be only the part left after a resume)
        return eta, self.plan.eta_all(eta, self.total / rate if rate > 0 else 0.0)

    def _quiet(self, step: int) -> bool:
        return step % self.every != 0 and step != self.total

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def post(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if self.bar is not None:
            extra = {}
            if self.plan is not None:
                extra["all_eta"] = hms(self._etas(step)[1])
            self.bar.set_postfix(
                loss=f"{record['train/loss']:.3f}",
                tok_s=f"{record['tokens_per_s']:.0f}",
                **extra,
                refresh=False,
            )
            return
        if self._quiet(step):
            return
        eta, eta_all = self._etas(step)
        tail = ""
        if eta_all is not None:
            tail = f" (model {self.plan.index}/{self.plan.n_models}, all models ~{eta_all:.0f}s)"
        self.log(
            f"[{self.name}] step {step}/{self.total} loss {record['train/loss']:.4f} "
            f"lr {record['lr']:.2e} grad_norm {record['grad_norm']:.3f} "
            f"tok/s {record['tokens_per_s']:.0f} eta {eta:.0f}s{tail}"
        )

    def evaluation(self, step: int, result: dict[str, float]) -> None:
        if self.bar is not None or not self._quiet(step):
            self.message(format_eval(self.name, step, result))

    def message(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def hms(seconds: float | None) -> str:
    """``12m05s`` / ``1h02m05s``: a duration for people."""
    s = int(round(seconds or 0.0))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
    )
