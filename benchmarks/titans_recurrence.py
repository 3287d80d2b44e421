"""Titans' chunk recurrence: the library's loop over chunks vs an exact parallel scan.

The recurrence (`cognate_model.titans.chunk_recurrence`) is affine in the state X = [W, S]
(d x 2d) with a matrix transition, because each chunk's gradient is taken at the weights the
chunk starts from:

    X_j = X_{j-1} T_j + U_j,   T_j = [[keep I - lr kk, -lr kk], [eta I, eta I]],  U_j = lr [vk, vk]

so a parallel (Hillis-Steele) associative scan over the affine maps (T, U) computes it in
log2(n) levels of batched 2d x 2d matmuls. This script checks that both agree and times
forward + backward of each (interleaved, median), to justify the loop the library uses.

    OMP_NUM_THREADS=1 uv run python benchmarks/titans_recurrence.py \
        --out benchmarks/results/titans_recurrence.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from cognate_model.titans import chunk_recurrence
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_speed import interleaved, machine  # noqa: E402


def scan_recurrence(
    w: Tensor, s: Tensor, kk: Tensor, vk: Tensor, lr: Tensor, eta: Tensor, keep: Tensor
) -> Tensor:
    """W_1..W_n (B, H, n, d, d) by an inclusive associative scan over (T_j, U_j)."""
    d, n = kk.shape[-1], kk.shape[2]
    eye = torch.eye(d, dtype=kk.dtype).expand_as(kk)
    top = torch.cat((keep * eye - lr * kk, -lr * kk), -1)
    bottom = torch.cat((eta * eye, eta * eye), -1)
    T, U = torch.cat((top, bottom), -2), torch.cat((lr * vk, lr * vk), -1)
    step = 1
    while step < n:  # (T, U)_j <- (T, U)_{j-step} then (T, U)_j
        U = torch.cat((U[:, :, :step], U[:, :, :-step] @ T[:, :, step:] + U[:, :, step:]), 2)
        T = torch.cat((T[:, :, :step], T[:, :, :-step] @ T[:, :, step:]), 2)
        step *= 2
    X = torch.cat((w, s), -1)[:, :, None] @ T + U
    return X[..., :d]


def inputs(batch: int, heads: int, d: int, n: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    k = torch.nn.functional.normalize(torch.randn(batch, heads, n, 8, d, generator=g), dim=-1)
    kk = k.transpose(-1, -2) @ k / 8  # mean k k^T of 8 unit keys
    vk = torch.randn(batch, heads, n, d, d, generator=g) * 0.1
    lr = torch.rand(batch, heads, n, 1, 1, generator=g)  # 2 theta with theta in (0, 0.5)
    eta = torch.rand(batch, heads, n, 1, 1, generator=g) * 0.9
    keep = 1 - torch.rand(batch, heads, n, 1, 1, generator=g) * 0.1
    w = torch.randn(batch, heads, d, d, generator=g) * 0.1
    leaves = [t.requires_grad_(True) for t in (kk, vk, lr, eta, keep)]
    return (w, torch.zeros_like(w), *leaves)


def fwd_bwd(fn: Callable[[], Tensor]) -> Callable[[], None]:
    def run() -> None:
        fn().sum().backward()

    return run


def bench(batch: int, heads: int, d: int, n: int, reps: int) -> dict[str, Any]:
    args = inputs(batch, heads, d, n)
    loop = lambda: torch.stack(chunk_recurrence(*args)[0][1:], 2)  # noqa: E731
    scan = lambda: scan_recurrence(*args)  # noqa: E731
    with torch.no_grad():
        diff = (loop() - scan()).abs().max().item()
    t = interleaved({"loop": fwd_bwd(loop), "scan": fwd_bwd(scan)}, reps)
    row = {"batch": batch, "heads": heads, "head_dim": d, "chunks": n, "max_abs_diff": diff}
    row.update({"loop_s": t["loop"], "scan_s": t["scan"], "scan_over_loop": t["scan"] / t["loop"]})
    print(row, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/titans_recurrence.json")
    p.add_argument("--chunks", default="16,64,256,512")
    p.add_argument("--head-dims", default="16,32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [
        bench(args.batch, args.heads, d, n, args.reps)
        for d in map(int, args.head_dims.split(","))
        for n in map(int, args.chunks.split(","))
    ]
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "rows": rows,
    }
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
