"""Data-parallel training under ``torchrun``: torch.distributed + DistributedDataParallel.

``torchrun --nproc-per-node N -m cognate_train train ...`` (or ``python -m
torch.distributed.run``) starts N processes with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set;
:func:`init` joins them into a process group (``nccl`` on CUDA, ``gloo`` on CPU) and every
other function here is a no-op in a single process. How the engine uses it:

* Data: every rank draws the same *global* micro-batches, ``grad_accum x world_size`` of
  ``batch_size`` examples per optimizer step (:func:`micro_batches`), from the same seeded
  stream, and keeps every ``world_size``-th one from its rank on (:func:`shard`): the ranks see
  disjoint examples, the data position is global (one checkpoint holds it), and a checkpoint
  resumes in any world size; with the same global batch the run continues on the same data.
* Gradients: the model is wrapped in DDP for the training forward passes only (:class:`Ddp`),
  which averages gradients across ranks; accumulation micro-steps run under ``no_sync``.
  ``MuGrokfast`` splits its Newton-Schulz work across the ranks (``distributed=True``).
* Outputs: only rank 0 writes (metrics, checkpoints, best/final, plots, summary, report) and
  holds the output-directory lock; the other ranks log nothing.
* Evaluation runs on rank 0 and its result is broadcast, so every rank takes the same decisions
  (early stopping, grokking boost); the other ranks wait meanwhile.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The process group's size; before :func:`init`, what torchrun announced (1 without it)."""
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def is_writer() -> bool:
    """Whether this process writes outputs (rank 0, or a single process)."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's device: on CUDA
    ``cuda:LOCAL_RANK`` (one GPU per process). A no-op outside torchrun."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def micro_batches(grad_accum: int) -> int:
    """Micro-batches per optimizer step across all ranks: ``grad_accum x world_size``."""
    return grad_accum * world_size()


def shard(batches: list[Any]) -> list[Any]:
    """This rank's micro-batches of a global step: every ``world_size``-th from its rank on."""
    return batches[rank() :: world_size()]


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_max(value: int, device: torch.device) -> int:
    """The largest of the ranks' ``value`` (e.g. a signal one rank received), on every rank."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def max_tensor_(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max across ranks, in place (every rank ends with the same tensor)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum across ranks."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Ddp:
    """DistributedDataParallel around a task's model, swapped in for training forward passes.

    The task keeps its plain module (checkpoints, evaluation and ``save_pretrained`` see the
    usual parameter names); :meth:`training` puts the DDP wrapper in its place for one
    optimizer step, and :meth:`micro_step` runs all but the last micro-batch under ``no_sync``.
    """

    def __init__(self, task: Any) -> None:
        self.task = task
        self.module = None
        if active():
            from torch.nn.parallel import DistributedDataParallel

            ids = [task.device.index] if task.device.type == "cuda" else None
            self.module = DistributedDataParallel(task.model, device_ids=ids)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        if self.module is None:
            yield
            return
        plain, self.task.model = self.task.model, self.module
        try:
            yield
        finally:
            self.task.model = plain

    def micro_step(self, last: bool):
        """``no_sync`` for accumulation micro-steps (gradients are all-reduced on the last)."""
        if self.module is None or last:
            return contextlib.nullcontext()
        return self.module.no_sync()
