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
* Evaluation is split too: each rank scores every ``world_size``-th example (:func:`shard`) and
  keeps (sum, count) pairs (loss x tokens, correct answers, examples); :func:`reduce_sums` adds
  them up over the ranks, in rank order on every rank, so all ranks hold the same figures (equal
  to a single process's up to float rounding) and take the same decisions (early stopping,
  grokking boost).
* Random draws (dropout): the model is initialised from the run's seed on every rank (DDP
  checks the ranks agree), then each rank other than 0 reseeds its RNGs with
  :func:`rank_seed` (seed, rank), so the ranks draw different dropout masks; rank 0 keeps the
  stream a single process has. Checkpoints hold every rank's RNG state (:func:`gather`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import math
import os
import random
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


def shard(items: Any) -> Any:
    """This rank's part of a sequence (a global step's micro-batches, evaluation examples, rows
    of a tensor): every ``world_size``-th item from its rank on."""
    return items[rank() :: world_size()]


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The RNG seed of ``rank`` in a run seeded with ``seed``: a 63-bit hash of (seed, rank,
    step), distinct per rank and the same in every run with this seed. ``step`` > 0 reseeds a
    rank that resumes a checkpoint holding no RNG state for it (written by fewer ranks)."""
    digest = hashlib.sha256(f"cognate-train|{seed}|rank{rank}|step{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_this_rank(seed: int, step: int = 0) -> None:
    """Reseed torch's (CPU and CUDA) and Python's RNGs of a rank other than 0 with
    :func:`rank_seed`, so the ranks do not draw the same dropout masks; rank 0 (and a single
    process) keeps the stream that ``seed`` started."""
    if rank() != 0:
        s = rank_seed(seed, rank(), step)
        torch.manual_seed(s)
        random.seed(s)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, this rank's CUDA device, Python) for a checkpoint."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal)]}
    state["python"].append(gauss)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_sums(sums: dict[str, list[float]]) -> dict[str, list[float]]:
    """Element-wise totals of every rank's named sums (e.g. ``{"val/loss": [loss x tokens,
    tokens]}``; a name some ranks lack counts as zeros there), added in rank order, so every
    rank gets the same floats."""
    total: dict[str, list[float]] = {}
    for part in gather(sums):
        for key, values in part.items():
            acc = total.setdefault(key, [0.0] * len(values))
            total[key] = [a + float(v) for a, v in zip(acc, values, strict=True)]
    return total


def reduced_means(sums: dict[str, list[float]]) -> dict[str, float]:
    """``sum / count`` of each ``[sum, count]`` pair after :func:`reduce_sums` (nan for 0)."""
    return {k: s / c if c else math.nan for k, (s, c) in reduce_sums(sums).items()}


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
