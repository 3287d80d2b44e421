"""``torchrun ... ddp_probe.py PROBE_DIR <cognate-train args>``: the CLI (as ``-m cognate_train``)
with two records per rank written to ``PROBE_DIR/rank{r}.pt`` for test_distributed.py: the
token rows of every micro-batch the rank trained on, per step, and its final parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from cognate_train import distributed as dist
from cognate_train import engine
from cognate_train.cli import main

SEEN: list[list[tuple[int, ...]]] = []
_train_step, _finish = engine.Engine.train_step, engine.Engine.finish


def train_step(self, batches):
    rows = [tuple(r.tolist()) for mb in dist.shard(batches) for r in mb["input_ids"]]
    SEEN.append(rows)
    return _train_step(self, batches)


def finish(self):
    _finish(self)
    params = {k: v.detach().clone() for k, v in self.task.model.state_dict().items()}
    record = {"seen": SEEN, "params": params, "world_size": dist.world_size()}
    torch.save(record, Path(sys.argv[1]) / f"rank{dist.rank()}.pt")


if __name__ == "__main__":
    engine.Engine.train_step, engine.Engine.finish = train_step, finish
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    raise SystemExit(main(sys.argv[2:]))
