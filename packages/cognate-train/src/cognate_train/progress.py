"""What a run prints while it trains: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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


class Progress:
    """tqdm bar (steps, loss, tokens/s) on a terminal; otherwise one log line per record whose
    step is a multiple of ``every`` (every record when 1)."""

    def __init__(
        self, total: int, initial: int, name: str, log: Callable[[str], None], every: int = 1
    ) -> None:
        self.name, self.log, self.total, self.every = name, log, total, every
        self.bar = None
        self.t0, self.s0 = time.perf_counter(), initial
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True
            )

    def _quiet(self, step: int) -> bool:
        return step % self.every != 0 and step != self.total

    def update(self, step: int) -> None:
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
        if self._quiet(step):
            return
        rate = (step - self.s0) / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        self.log(
            f"[{self.name}] step {step}/{self.total} loss {record['train/loss']:.4f} "
            f"lr {record['lr']:.2e} grad_norm {record['grad_norm']:.3f} "
            f"tok/s {record['tokens_per_s']:.0f} eta {eta:.0f}s"
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
