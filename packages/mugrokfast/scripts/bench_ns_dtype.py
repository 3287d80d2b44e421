"""Newton-Schulz on CPU: float32 vs bfloat16 speed and accuracy (how ns_dtype=None was chosen).

Shapes: the hidden matrices of cognate-25m (320x320, 1280x320, 320x1280) and GPT-2 small
(768x768, 2304x768, 3072x768), plus square sizes. On a CPU with native bf16 matmul
(AVX512-BF16 / AMX) bf16 is the faster one and the default; elsewhere fp32.

Usage: uv run python packages/mugrokfast/scripts/bench_ns_dtype.py [--threads 1]
Accuracy: relative Frobenius error of the 5-step quintic against the same iteration in float64.
Speed: median of --repeats calls after one warm-up, single process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import mugrokfast
import torch
from mugrokfast import zeropower_via_newtonschulz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    lines: list[str] = []

    def emit(line: str) -> None:  # print, and keep for --out
        lines.append(line)
        print(line, flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    emit(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads}")  # fmt: skip
    emit("| shape | dtype | ms / call | rel. error vs fp64 |")
    emit("|---|---|---|---|")
    emit(f"native bf16 matmul: {mugrokfast.newton_schulz.CPU_NATIVE_BF16}, "
          f"default_ns_dtype('cpu') = {mugrokfast.default_ns_dtype('cpu')}")  # fmt: skip
    for shape in [(320, 320), (1280, 320), (320, 1280), (768, 768), (2304, 768), (3072, 768),
                  (1024, 1024)]:  # fmt: skip
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
            emit(f"| {shape[0]}x{shape[1]} | {name} | {1e3 * statistics.median(times):.1f} "
                  f"| {err:.1e} |")  # fmt: skip

    if args.out:
        import datetime
        import sys

        head = [f"`python {' '.join(sys.argv)}`, "
                f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}", ""]  # fmt: skip
        with open(args.out, "w") as f:
            f.write("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
