"""``cognate-train grok``: modular arithmetic until grokking is detected and converged.

The task is the Grokfast reference's (``x op y = r (mod p)``, x*y mod 97 by default, 50 % of the
table for training) on its decoder (:mod:`cognate_train.grok_model`). :class:`GrokTask` gives
the engine batches of ``batch_size`` training equations drawn without replacement from a seeded
generator (its state is checkpointed), the cross-entropy of the answer token, and an evaluation
that scores the full train and val sets; the engine's ``GrokkingDetector`` turns the two accuracy
curves into events (``grokking``: the delayed val jump, after which Grokfast's lambda is
multiplied by ``lambda_boost``; ``converged``: the train/val gap stayed small for
``grok_patience`` evaluations, which ends the run). Measured results are in the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import checkpoints as ck
from . import distributed as dist
from .config import GrokConfig, compat_fingerprint
from .engine import Engine, run
from .grok_data import modular_dataset, vocab_size
from .grok_model import GrokDecoder, score
from .runtime import seed_everything

__all__ = ["GrokDecoder", "GrokTask", "run_grok", "score"]


class GrokTask:
    """Modular arithmetic as the engine's :class:`~cognate_train.engine.Task`."""

    name = "grok"
    save_best = False

    def __init__(self, cfg: GrokConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.fingerprint = compat_fingerprint(cfg, None)
        self.total_steps = cfg.max_steps
        self.console_every = cfg.eval_every * 10
        train, val = modular_dataset(cfg.p, cfg.op, cfg.train_fraction, cfg.seed)
        self.train_rows, self.val_rows = train.to(device), val.to(device)
        seed_everything(cfg.seed)
        self.model = GrokDecoder(vocab_size(cfg.p), cfg.d_model, cfg.n_layers, cfg.n_heads)
        self.model.to(device)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def describe(self) -> str:
        cfg = self.cfg
        return (
            f"[grok] x{cfg.op}y mod {cfg.p}: {self.train_rows.shape[0]} train / "
            f"{self.val_rows.shape[0]} val equations, optimizer {cfg.optimizer}, "
            f"up to {cfg.max_steps} steps"
        )

    def batches(self, step: int) -> list[torch.Tensor]:
        # micro-batches of all ranks (the engine shards them) cut from one permutation, so
        # they are disjoint when they fit in the training set (a new permutation when not)
        n = self.train_rows.shape[0]
        size, m = min(self.cfg.batch_size, n), dist.micro_batches(self.cfg.grad_accum)
        perms = [torch.randperm(n, generator=self.generator) for _ in range(-(-size * m // n))]
        order = torch.cat(perms)
        draws = [order[k * size : (k + 1) * size] for k in range(m)]
        return [self.train_rows[idx.to(self.device)] for idx in draws]

    def loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, int, dict[str, float]]:
        logits = self.model(rows[:, :4])[:, -1, :]
        return F.cross_entropy(logits, rows[:, 4]), rows[:, :4].numel(), {}

    def log_extras(self, step: int) -> dict[str, float]:
        return {}

    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy on the full train and val sets; under torchrun each rank scores
        every ``world_size``-th equation and the sums are reduced."""
        sums = {}
        for split, rows in (("train", self.train_rows), ("val", self.val_rows)):
            part = dist.shard(rows)
            loss, acc = score(self.model, part) if len(part) else (0.0, 0.0)
            sums[f"{split}/accuracy"] = [acc * len(part), len(part)]
            sums[f"{split}/loss"] = [loss * len(part), len(part)]
        means = dist.reduced_means(sums)
        return {
            "train/accuracy": means["train/accuracy"],
            "val/accuracy": means["val/accuracy"],
            "train/eval_loss": means["train/loss"],
            "val/loss": means["val/loss"],
        }

    def save_weights(self, directory: Path) -> None:
        ck.save_weights(self.model, directory)

    def state_dict(self) -> dict[str, Any]:
        return {"batch_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        self.generator.set_state(state["batch_rng"])

    def summary(self, engine: Engine, records: list[dict[str, Any]]) -> dict[str, Any]:
        evals = [r for r in records if isinstance(r.get("val/accuracy"), float)]
        to_95 = next((r["step"] for r in evals if r["val/accuracy"] >= 0.95), None)
        task = f"x{self.cfg.op}y mod {self.cfg.p}"
        return {"title": task, "task": task, "steps_to_95_val_acc": to_95}


def run_grok(cfg: GrokConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train until grokking converges (or max_steps); returns the summary written to disk."""
    return run(cfg, cfg.output_dir, lambda device: GrokTask(cfg, device), log)
