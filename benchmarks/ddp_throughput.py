"""Training throughput (tokens/s) of 1 vs 2 processes on CPU, the same global batch.

Runs ``cognate-train train --preset smoke`` twice with the same global batch (8 x 2 examples per
step): one process with ``--grad-accum 2``, and ``python -m torch.distributed.run
--nproc-per-node 2`` with ``--grad-accum 1`` (DDP, gloo), one thread per process, and reads the
mean ``tokens_per_s`` of the logged windows after the first (global tokens / wall time, written
by rank 0) from each run's metrics.jsonl; ``--repeats`` interleaved runs, the median reported.

    python benchmarks/ddp_throughput.py --out benchmarks/results/ddp_throughput.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(nproc: int, steps: int, out: Path) -> dict:
    grad_accum = 2 // nproc
    args = ["train", "--preset", "smoke", "--max-steps", str(steps), "--log-every", "4"]
    args += ["--eval-every", str(steps), "--checkpoint-every", str(steps), "--samples", "0"]
    args += ["--grad-accum", str(grad_accum), "--output-dir", str(out)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [sys.executable, *(launcher if nproc > 1 else []), "-m", "cognate_train", *args]
    t = time.perf_counter()
    subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True,
                   capture_output=True)  # fmt: skip
    wall = time.perf_counter() - t
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tps = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    return {
        "processes": nproc,
        "grad_accum": grad_accum,
        "tokens_per_s": sum(tps) / len(tps),
        "windows": tps,
        "wall_s_with_startup": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    load_start = os.getloadavg()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # interleaved: 1, 2, then 2, 1, ...
            for n in (1, 2) if rep % 2 == 0 else (2, 1):
                runs[n].append(run(n, args.steps, Path(tmp, f"n{n}-{rep}")))
    rows = [
        {**runs[n][0], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs[n]),
         "each_repeat": [r["tokens_per_s"] for r in runs[n]]}
        for n in (1, 2)
    ]  # fmt: skip
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"tokens/s: 1 process {rows[0]['tokens_per_s']:.0f}, 2 processes "
          f"{rows[1]['tokens_per_s']:.0f} (x{ratio:.2f})")  # fmt: skip
    result = {
        "command": "python benchmarks/ddp_throughput.py " + " ".join(sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "steps": args.steps,
            "preset": "smoke",
            "global_batch": 16,
            "threads_per_process": 1,
            "backend": "gloo",
        },  # fmt: skip
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "usable_cpus": sorted(os.sched_getaffinity(0)),
        },  # fmt: skip
        "rows": rows,
        "ratio_2_over_1": ratio,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        md = [
            "# DDP throughput: 1 vs 2 processes (CPU, gloo)",
            "",
            f"- command: `{result['command']}`",
            f"- date: {result['date']}",
            f"- settings: {result['settings']}",
            f"- machine: {result['machine']}",
            "- usable_cpus: the cores this run was pinned to; other jobs on the machine may still",
            "  run on them (the load averages say how busy it was)",
            "",
            "| processes | grad_accum | tokens/s (median) | each repeat |",
            "|---|---|---|---|",
            *(
                f"| {r['processes']} | {r['grad_accum']} | {r['tokens_per_s']:.0f} | "
                f"{', '.join(f'{x:.0f}' for x in r['each_repeat'])} |"
                for r in rows
            ),
            "",
            f"2 processes / 1 process: x{ratio:.2f}",
        ]
        args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
