"""Cache-blocked element-wise updates for CPU tensors.

An optimizer update is a chain of element-wise operations (AdamW: eight; Muon's momentum and
Nesterov step: three, plus the Grokfast terms), each a pass over parameter-sized tensors. On a
CPU these passes are bound by memory bandwidth, and a tensor larger than the cache (an embedding
of 10-40M entries) comes from DRAM again for every operation. Running the whole chain on one
block of ``BLOCK`` elements at a time keeps the block's tensors in cache between operations, so
each tensor crosses the memory bus about once per step. The operations and their order per
element are unchanged, so the numbers are those of the unblocked chain (block starts are
multiples of the SIMD width, so every element takes the same vector or scalar code path).

Measured with ``benchmarks/optimizer_step.py --no-ns`` (one thread, the step without
Newton-Schulz): ``MuGrokfast(grokfast=None)`` at its defaults took 0.85x / 0.83x the time of
torch's Muon + foreach AdamW on the cognate-25m / GPT-2-small shapes.
Not used under ``torch.compile`` (inductor fuses the chain itself; a Python loop over blocks
would be unrolled into the graph) nor off the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

# elements per block: 512 KiB of float32 per tensor, a few tensors per block stay in L2/L3
BLOCK = 1 << 17


def blockable(tensors: Sequence[Tensor]) -> bool:
    """Whether :func:`blocks` may split ``tensors``: contiguous CPU tensors, not compiling."""
    return not torch.compiler.is_compiling() and all(
        t.device.type == "cpu" and t.is_contiguous() for t in tensors
    )


def blocks(tensors: Sequence[Tensor], scratch: torch.dtype | None = None) -> Iterator[list[Tensor]]:
    """Yield ``[t[s:s+BLOCK] for t in tensors]`` (flat views) for ``s = 0, BLOCK, ...``.

    The tensors must hold the same number of elements; when they are not :func:`blockable`
    the tensors themselves are yielded once. With ``scratch`` (a dtype) each list ends with a
    buffer of that dtype and the block's shape, one allocation reused by every block.
    """
    t = tensors[0]
    if not blockable(tensors):
        buf = [] if scratch is None else [torch.empty(t.shape, dtype=scratch, device=t.device)]
        yield [*tensors, *buf]
        return
    flat = [t.view(-1) for t in tensors]
    n = t.numel()
    one = None if scratch is None else torch.empty(min(n, BLOCK), dtype=scratch)
    for s in range(0, n, BLOCK):
        views = [f[s : s + BLOCK] for f in flat]
        yield views if one is None else [*views, one[: views[0].numel()]]
