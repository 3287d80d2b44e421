"""Muon step time per rank under data parallelism: Newton-Schulz split across ranks vs repeated.

Two (``--world``) CPU processes (forked, gloo, one thread each) hold the same Muon matrices and
the same averaged gradients, as under DDP, and step ``MuGrokfast`` (Muon groups only, Grokfast
EMA on) two ways, interleaved, ``--reps`` times after a warm-up:

- ``repeated``: ``distributed=False``, every rank orthogonalises every matrix (today's DDP);
- ``split``: ``distributed=True``, each rank orthogonalises its share and ``all_gather`` shares
  the results.

Each timing is one ``step()`` between two barriers, per rank; the table gives the median per
rank and the ratio split / repeated (ideal ``1 / world`` plus the all_gather). Shapes: the
attention (4 x 320 x 320) and SwiGLU (1280 x 320 twice, 320 x 1280) matrices of ``--layers``
blocks of a cognate-25m-sized model (d_model 320; per-layer cost is the same for more layers).

    OMP_NUM_THREADS=1 python benchmarks/distributed_muon.py --out benchmarks/results/distributed_muon.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mugrokfast import MuGrokfast, default_ns_dtype


def shapes(layers: int, d: int = 320) -> list[tuple[int, int]]:
    return ([(d, d)] * 4 + [(4 * d, d), (4 * d, d), (d, 4 * d)]) * layers


def make(args: argparse.Namespace, distributed: bool) -> tuple[list[torch.Tensor], MuGrokfast]:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes(args.layers)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt = MuGrokfast(
        [{"params": params, "use_muon": True}], grokfast="ema", distributed=distributed
    )
    return params, opt


def timed_step(opt: MuGrokfast) -> float:
    dist.barrier()
    t = time.perf_counter()
    opt.step()
    dist.barrier()
    return time.perf_counter() - t


def worker(rank: int, args: argparse.Namespace, rdv: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=args.world)
    runs = {"repeated": make(args, False)[1], "split": make(args, True)[1]}
    for opt in runs.values():  # warm-up (state allocation)
        timed_step(opt)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))  # interleaved, alternating
        for name in order:
            times[name].append(timed_step(runs[name]))
    Path(out, f"rank{rank}.json").write_text(json.dumps(times))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            worker, args=(args, f"{tmp}/rdv", tmp), nprocs=args.world, start_method="fork"
        )
        per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.world)]
    rows = []
    for rank, times in enumerate(per_rank):
        rep, split = statistics.median(times["repeated"]), statistics.median(times["split"])
        ratios = [s / r for s, r in zip(times["split"], times["repeated"], strict=True)]
        rows.append(
            {
                "rank": rank,
                "repeated_ms": 1e3 * rep,
                "split_ms": 1e3 * split,
                "ratio_split_over_repeated": split / rep,
                "ratio_median_of_pairs": statistics.median(ratios),
            }
        )
        print(
            f"rank {rank}: repeated {1e3 * rep:8.1f} ms  split {1e3 * split:8.1f} ms  "
            f"split/repeated {split / rep:.2f}"
        )
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/distributed_muon.py "
        + " ".join(sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": vars(args) | {"out": str(args.out), "threads_per_rank": 1, "backend": "gloo"},
        "matrices": len(shapes(args.layers)),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "usable_cpus": sorted(os.sched_getaffinity(0)),
        },
        "ns_dtype": str(default_ns_dtype("cpu")),
        "rows": rows,
        "raw_ms": per_rank,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [
        "# Distributed Muon: Newton-Schulz split across ranks vs repeated",
        "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}",
        f"- settings: {r['settings']}; {r['matrices']} matrices (d_model 320 blocks)",
        f"- machine: {r['machine']}",
        "- usable_cpus: the cores this run was pinned to; other jobs on the machine may still run",
        "  on them (the load averages say how busy it was): the two variants are interleaved in",
        "  one run so the ratio is the figure to read",
        "",
        "| rank | repeated (ms) | split (ms) | split / repeated (medians) | median of pair ratios |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['rank']} | {row['repeated_ms']:.1f} | {row['split_ms']:.1f} | "
            f"{row['ratio_split_over_repeated']:.2f} | {row['ratio_median_of_pairs']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
