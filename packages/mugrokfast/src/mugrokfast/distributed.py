"""Muon's Newton-Schulz work split across data-parallel ranks.

Under DDP every rank holds the same averaged gradients, so every rank would compute the same
Newton-Schulz orthogonalisations: N-1 of N of that work is wasted. With ``distributed=True``
(:class:`mugrokfast.Muon`, :class:`mugrokfast.MuGrokfast`) the matrices are dealt out: each rank
orthogonalises its share, then ``all_gather`` hands every rank every result and all ranks apply
the same update (the design of Keller Jordan's muon.py). What stays replicated is cheap and keeps
every rank's state whole: momentum buffers and Grokfast filters are updated for all parameters on
all ranks (elementwise work), so parameters and optimizer state are identical on every rank after
each step and a rank-0 checkpoint resumes in any world size.

Requirements: every rank steps the same parameters with the same gradients (what DDP gives);
parameters are whole tensors, not FSDP2 shards (``DTensor`` parameters raise ``ValueError``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def resolve_group(distributed: Any) -> Any:
    """The process group to split Muon's work over, or ``None`` for a plain (local) step.

    ``False``: local. ``True``: the default group, when torch.distributed is initialised and has
    more than one rank (so the same script runs under ``python`` and ``torchrun``). A
    ``ProcessGroup``: that group (local when it has one rank).
    """
    if distributed is False or not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.group.WORLD if distributed is True else distributed
    return group if dist.get_world_size(group) > 1 else None


def check_distributed(distributed: Any) -> None:
    """ValueError unless ``distributed`` is a bool or a ProcessGroup."""
    if isinstance(distributed, bool):
        return
    if dist.is_available() and isinstance(distributed, dist.ProcessGroup):
        return
    raise ValueError(
        f"distributed must be a bool or a torch.distributed ProcessGroup (got {distributed!r})"
    )


def check_not_sharded(params: list[Tensor]) -> None:
    """ValueError for DTensor (FSDP2) parameters: Newton-Schulz needs whole matrices."""
    for p in params:
        if type(p).__name__ == "DTensor":
            raise ValueError(
                "Muon does not support FSDP2/DTensor parameters: Newton-Schulz needs each whole "
                f"matrix (got a DTensor of shape {tuple(p.shape)}). Use DDP (distributed=True "
                "splits the work across ranks) or route the matrix to AdamW"
            )


class Dealer:
    """Deals matrices to ranks round-robin, continuing across shape batches so that the
    leftovers of one batch go to other ranks than those of the previous one."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.next = 0

    def owners(self, n: int) -> list[int]:
        """The rank that orthogonalises each of ``n`` matrices of one batch."""
        owners = [(self.next + j) % self.world for j in range(n)]
        self.next = (self.next + n) % self.world
        return owners

    def gather(
        self, idx: list[int], owners: list[int], mine: dict[int, Tensor], empty: Tensor
    ) -> Any:
        """Yield ``(i, result)`` for every ``i`` in ``idx``: ``mine`` holds this rank's results,
        the rest arrive by ``all_gather`` in rounds of one matrix per rank (a rank without one
        in a round sends ``empty``, a zero tensor of the batch's shape and dtype)."""
        for start in range(0, len(idx), self.world):
            rnd = idx[start : start + self.world]
            own = owners[start : start + self.world]
            send = next((mine[i] for i, r in zip(rnd, own, strict=True) if r == self.rank), empty)
            out = [torch.empty_like(send) for _ in range(self.world)]
            dist.all_gather(out, send.contiguous(), group=self.group)
            for i, r in zip(rnd, own, strict=True):
                yield i, out[r]
