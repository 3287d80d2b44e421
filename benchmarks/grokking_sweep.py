"""A small hyperparameter sweep for ``mugrokfast`` on the grokking task (tuning seeds only).

Each ``--config`` is ``LABEL:FIELD=VALUE,FIELD=VALUE`` over the fields of
``grokking.OPTIMIZERS[--optimizer]["hp"]``; every config runs on every ``--seeds`` seed (tuning
seeds: 0, 1, 2; the committed figures in ``results/grokking.json`` use other seeds). Results are
appended to ``--out`` (one record per config and seed set, with the command that made it), so a
sweep can go in stages: screen on seed 0, then confirm the best on seeds 0-2.

    python benchmarks/grokking_sweep.py --seeds 0 --max-steps 1200 --stop-at 0.95 \
        --config "base:" --config "mlr05:muon_lr=0.05" --out benchmarks/results/grokking_sweep.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grokking  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", default="mugrokfast", choices=list(grokking.OPTIMIZERS))
    ap.add_argument("--config", action="append", required=True, help="LABEL:FIELD=VALUE,...")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--operation", default="mul", choices=list(grokking.OPERATIONS))
    ap.add_argument("--max-steps", type=int, default=1200)
    ap.add_argument("--stop-at", type=float, default=0.95)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/grokking_sweep.json")
    args = ap.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    base = grokking.OPTIMIZERS[args.optimizer]["hp"]
    configs = []
    for spec in args.config:
        label, _, fields = spec.partition(":")
        items = [f"{args.optimizer}.{kv}" for kv in fields.split(",") if kv]
        over = grokking.parse_hp(items).get(args.optimizer, {})
        configs.append((label, {**base, **over}, over))
    jobs = [
        (args.optimizer, s, hp, args.max_steps, args.stop_at, 1, "cpu", 0, None, args.operation)
        for _, hp, _ in configs
        for s in seeds
    ]
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
        runs = []
        for r in pool.imap(grokking._run_job, jobs):
            if "error" in r:
                print(f"  seed {r['seed']}: ERROR {r['error']}", flush=True)
            print(f"  seed {r['seed']}: {r['steps_to_95']} ({r['wall_s']:.0f} s)", flush=True)
            runs.append(r)

    record = {"entries": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            record = json.load(f)
    record.setdefault("task", grokking.TASK)
    record.setdefault("optimizer", args.optimizer)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cmd = "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))
    for i, (label, hp, over) in enumerate(configs):
        rs = runs[i * len(seeds) : (i + 1) * len(seeds)]
        steps = [r["steps_to_95"] for r in rs]
        entry = {
            "label": label,
            "operation": args.operation,
            "overrides": over,
            "hp": hp,
            "seeds": seeds,
            "steps_to_95": steps,
            "median_steps_to_95": grokking.median_or_none(steps),
            "max_steps": args.max_steps,
            "wall_s": [r["wall_s"] for r in rs],
            "command": cmd,
            "load_average_1_5_15_end": list(os.getloadavg()),
            "date": stamp,
            "torch": grokking.torch.__version__,
        }
        record["entries"].append(entry)
        print(f"{label:24s} {over} -> {steps} median {entry['median_steps_to_95']}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
