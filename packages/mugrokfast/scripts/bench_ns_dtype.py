"""Newton-Schulz on CPU: float32 vs bfloat16 speed and accuracy (why ns_dtype=None is fp32 here).

Usage: uv run python packages/mugrokfast/scripts/bench_ns_dtype.py [--threads 1]
Accuracy: relative Frobenius error of the 5-step quintic against the same iteration in float64.
Speed: median of --repeats calls after one warm-up, single process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from mugrokfast import zeropower_via_newtonschulz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads}")  # fmt: skip
    print("| shape | dtype | ms / call | rel. error vs fp64 |")
    print("|---|---|---|---|")
    for shape in [(256, 256), (512, 512), (512, 2048), (1024, 1024)]:
        G = torch.randn(shape)
        ref = zeropower_via_newtonschulz(G.double(), dtype=torch.float64)
        for dtype in (torch.float32, torch.bfloat16):
            zeropower_via_newtonschulz(G, dtype=dtype)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = zeropower_via_newtonschulz(G, dtype=dtype)
                times.append(time.perf_counter() - t0)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            name = str(dtype).removeprefix("torch.")
            print(f"| {shape[0]}x{shape[1]} | {name} | {1e3 * statistics.median(times):.1f} "
                  f"| {err:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
