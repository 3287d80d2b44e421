"""``torchrun ... ddp_probe.py PROBE_DIR <cognate-train args>``: the CLI (as ``-m cognate_train``)
with records per rank written to ``PROBE_DIR/rank{r}.pt`` for test_distributed.py: the rows of
every micro-batch the rank trained on and its torch RNG state, per step; the validation prompts
its evaluations scored; its final parameters, and the task's evaluation of them (sharded and
reduced across the ranks)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from cognate_train import distributed as dist
from cognate_train import engine, evaluation
from cognate_train.cli import main

SEEN: list[list[tuple[int, ...]]] = []
RNG: list[torch.Tensor] = []
EVALUATED: list[str] = []
_train_step, _finish = engine.Engine.train_step, engine.Engine.finish
_val_loss_sums = evaluation.val_loss_sums


def rows_of(batch) -> torch.Tensor:
    """A micro-batch's token rows (a curriculum dict, or grok's tensor of equations)."""
    return batch["input_ids"] if isinstance(batch, dict) else batch


def train_step(self, batches):
    SEEN.append([tuple(r.tolist()) for mb in dist.shard(batches) for r in rows_of(mb)])
    RNG.append(torch.get_rng_state())
    return _train_step(self, batches)


def val_loss_sums(model, tokenizer, examples, *args, **kwargs):
    EVALUATED.extend(ex.prompt for ex in examples)
    return _val_loss_sums(model, tokenizer, examples, *args, **kwargs)


def finish(self):
    _finish(self)
    params = {k: v.detach().clone() for k, v in self.task.model.state_dict().items()}
    EVALUATED.clear()
    record = {
        "seen": SEEN,
        "rng": RNG,
        "params": params,
        "eval": self.task.evaluate(),  # every rank joins: the reduction is collective
        "evaluated": list(EVALUATED),
        "world_size": dist.world_size(),
    }
    torch.save(record, Path(sys.argv[1]) / f"rank{dist.rank()}.pt")


if __name__ == "__main__":
    engine.Engine.train_step, engine.Engine.finish = train_step, finish
    evaluation.val_loss_sums = val_loss_sums
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    raise SystemExit(main(sys.argv[2:]))
