"""Metric sinks: ``metrics.jsonl`` always; Weights & Biases and TensorBoard when asked.

One JSON object a line, each with ``step``. On resume the records past the checkpoint's step are
dropped (they belong to steps that are about to be re-run), so the file of a resumed run reads
like the file of a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from .config import ConfigError


def check_backends(backends: list[str]) -> None:
    """Fail up front (exit 2) when an optional sink is asked for but not installed."""
    for backend in backends:
        if backend == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "log: wandb is not installed; install the extra: "
                    "uv sync --extra wandb (pip install 'cognate-train[wandb]')"
                ) from None
        elif backend == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "log: tensorboard is not installed; install the extra: "
                    "uv sync --extra tensorboard (pip install 'cognate-train[tensorboard]')"
                ) from None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf; keep them visible as strings
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            out.append(record)  # anything else is not a record of ours: skipped, never fatal
    return out


class MetricsLogger:
    """Writes metric records to every configured sink."""

    def __init__(
        self,
        out_dir: str | Path,
        backends: list[str],
        run_name: str,
        config: dict[str, Any],
        resume_step: int | None = None,
    ) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            try:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
                os.replace(tmp, self.path)
            except OSError:
                tmp.unlink(missing_ok=True)  # a full disk: the old file stays as it was
                raise
        self._fh = self.path.open("a")
        self._wandb = None
        self._tb = None
        if "wandb" in backends:
            import wandb

            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "cognate-train"),
                name=run_name,
                dir=str(out_dir),
                config=config,
                mode=os.environ.get("WANDB_MODE", "offline"),
                resume="allow",
            )
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        step = int(record["step"])
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._fh.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


class NullMetrics:
    """The metric sinks of a rank that does not write (under torchrun, ranks other than 0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class StepWindow:
    """The per-step values between two metric records, summed, and the training time they took
    (time spent evaluating or checkpointing is left out through :meth:`paused`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t0 = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - t

    def means(self) -> dict[str, float] | None:
        """``train/loss``, ``train/perplexity``, ``grad_norm``, ``tokens_per_s`` and the mean of
        every other value; None when every step of the window was skipped."""
        if not self.n:
            return None
        sums, n = dict(self.sums), self.n
        dt = max(1e-9, time.perf_counter() - self.t0)
        loss = sums.pop("loss") / n
        return {
            "train/loss": loss,
            "train/perplexity": math.exp(min(loss, 50.0)),
            "grad_norm": sums.pop("grad_norm") / n,
            "tokens_per_s": sums.pop("tokens") / dt,
            **{k: v / n for k, v in sums.items()},
        }
