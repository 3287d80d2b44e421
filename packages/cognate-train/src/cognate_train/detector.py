"""Grokking detection from train/validation accuracy curves.

Grokking (Power et al. 2022) is a delayed jump in validation accuracy long after the training
accuracy has saturated: the model first memorises (train high, val low), then generalises. The
detector watches the accuracies at each evaluation and reports two events:

* ``grokking``: validation accuracy jumps: ``val_t - mean(val over the last window_size evals)
  >= jump_threshold`` while the model was memorising, i.e. the mean train/val gap over that
  window was at least ``gap_threshold``. Requiring the prior gap is what keeps an ordinary run,
  where train and val rise together, from raising a false alarm; comparing with the window mean
  instead of the last value keeps one noisy evaluation from doing so.
* ``converged``: after grokking, ``|train_t - val_t| < gap_threshold`` for ``patience``
  consecutive evaluations.

The trainer reacts to ``grokking`` by boosting the Grokfast lambda (``lambda_boost``) and may stop
on ``converged``. All state is plain lists and numbers, so :meth:`state_dict` goes into a JSON
checkpoint file as is.
"""

from __future__ import annotations

from typing import Any


class GrokkingDetector:
    """Detect the memorisation -> generalisation jump and the convergence after it.

    Args:
        window_size: evaluations averaged as the "before" reference (>= 1).
        gap_threshold: train - val accuracy gap that counts as memorising before the jump, and
            below which the curves count as converged after it (in (0, 1)).
        jump_threshold: rise of val accuracy over its recent mean that counts as the jump.
        patience: consecutive small-gap evaluations after the jump that count as converged.
    """

    def __init__(
        self,
        window_size: int = 5,
        gap_threshold: float = 0.05,
        jump_threshold: float = 0.10,
        patience: int = 10,
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not 0 < gap_threshold < 1:
            raise ValueError(f"gap_threshold must be in (0, 1), got {gap_threshold}")
        if not 0 < jump_threshold < 1:
            raise ValueError(f"jump_threshold must be in (0, 1), got {jump_threshold}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.window_size = window_size
        self.gap_threshold = gap_threshold
        self.jump_threshold = jump_threshold
        self.patience = patience
        self.train_history: list[float] = []
        self.val_history: list[float] = []
        self.grokking_step: int | None = None
        self.converged_step: int | None = None
        self.small_gap_count = 0

    @property
    def detected(self) -> bool:
        return self.grokking_step is not None

    @property
    def converged(self) -> bool:
        return self.converged_step is not None

    def update(self, step: int, train_acc: float, val_acc: float) -> list[dict[str, Any]]:
        """Record one evaluation; return the events it triggers (possibly none)."""
        events: list[dict[str, Any]] = []
        gap = train_acc - val_acc
        if not self.detected and self.val_history:
            prev_val = self.val_history[-self.window_size :]
            prev_train = self.train_history[-self.window_size :]
            mean_val = sum(prev_val) / len(prev_val)
            mean_gap = sum(prev_train) / len(prev_train) - mean_val
            jump = val_acc - mean_val
            if jump >= self.jump_threshold and mean_gap >= self.gap_threshold:
                self.grokking_step = step
                events.append(
                    dict(
                        event="grokking",
                        step=step,
                        train_acc=train_acc,
                        val_acc=val_acc,
                        jump=jump,
                        gap_before=mean_gap,
                    )
                )
        if self.detected and not self.converged:
            self.small_gap_count = self.small_gap_count + 1 if abs(gap) < self.gap_threshold else 0
            if self.small_gap_count >= self.patience:
                self.converged_step = step
                events.append(
                    dict(
                        event="converged", step=step, train_acc=train_acc, val_acc=val_acc, gap=gap
                    )
                )
        self.train_history.append(float(train_acc))
        self.val_history.append(float(val_acc))
        # only the window is ever read back: keep the state small
        del self.train_history[: -self.window_size]
        del self.val_history[: -self.window_size]
        return events

    def metrics(self) -> dict[str, float]:
        gap = (self.train_history[-1] - self.val_history[-1]) if self.val_history else 0.0
        return {
            "grokking/detected": float(self.detected),
            "grokking/converged": float(self.converged),
            "grokking/gap": gap,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "window_size": self.window_size,
            "gap_threshold": self.gap_threshold,
            "jump_threshold": self.jump_threshold,
            "patience": self.patience,
            "train_history": list(self.train_history),
            "val_history": list(self.val_history),
            "grokking_step": self.grokking_step,
            "converged_step": self.converged_step,
            "small_gap_count": self.small_gap_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_history = [float(x) for x in state["train_history"]]
        self.val_history = [float(x) for x in state["val_history"]]
        self.grokking_step = state["grokking_step"]
        self.converged_step = state["converged_step"]
        self.small_gap_count = int(state["small_gap_count"])
