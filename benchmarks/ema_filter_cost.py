"""Cost of the Grokfast EMA filter alone, several ways, on a model's parameter shapes.

The filter ``h = alpha*h + (1-alpha)*g; g' = g + lamb*h`` is two passes over memory; on CPU
what it costs depends mostly on where ``g'`` is written:

- ``grokfast_terms`` (state update only): what ``MuGrokfast`` pays before its update, which
  then adds ``lamb*h`` into a tensor it writes anyway (Muon's Nesterov step, AdamW's
  denominator);
- ``grokfast_filter(inplace=True)``: g' written into the gradients (the ``Grokfast`` wrapper);
- ``grokfast_filter()``: g' as new tensors (the standalone function's default);
- the reference style: a Python loop per tensor, as ironjr/grokfast's ``gradfilter_ema``;
- one in-place pass (``_foreach_add_``) as the floor of any filter.

    python benchmarks/ema_filter_cost.py --set cognate-25m --out benchmarks/results/ema_filter_cost.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time

import mugrokfast
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import optimizer_step  # noqa: E402

ALPHA, LAMB = 0.98, 2.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="cognate-25m", choices=["cognate-25m", "gpt2-small"])
    ap.add_argument("--gpt2-layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    if args.set == "cognate-25m":
        shapes, source = optimizer_step.cognate_shapes()
    else:
        shapes, source = (
            optimizer_step.gpt2_shapes(args.gpt2_layers),
            f"gpt2 {args.gpt2_layers} layers",
        )
    muon, rest = optimizer_step.make_params(shapes)
    grads = [p.grad for p in muon + rest]
    states: list[dict] = [{} for _ in grads]
    emas = [g.clone() for g in grads]
    ref = {i: g.clone() for i, g in enumerate(grads)}

    kw = dict(filter="ema", alpha=ALPHA, lamb=LAMB, window=100, ma_lamb=5.0)
    work = [g.clone() for g in grads]  # the in-place variants write here, not into grads

    def terms_only() -> None:
        mugrokfast.filters.grokfast_terms(grads, states, **kw)

    def inplace() -> None:
        torch._foreach_copy_(work, grads)  # timed separately below and subtracted
        mugrokfast.grokfast_filter(work, states, inplace=True, **kw)

    def copy_only() -> None:
        torch._foreach_copy_(work, grads)

    def new_tensors() -> None:
        mugrokfast.grokfast_filter(grads, states, **kw)

    def reference() -> None:
        for i, g in enumerate(grads):
            ref[i] = ref[i] * ALPHA + g * (1 - ALPHA)
            _ = g + ref[i] * LAMB

    def one_pass() -> None:
        torch._foreach_add_(work, emas, alpha=0.0)

    fns = {
        "state update only (grokfast_terms)": terms_only,
        "in place (grokfast_filter inplace=True)": inplace,
        "copy (subtracted from the in-place row)": copy_only,
        "new tensors (grokfast_filter)": new_tensors,
        "reference loop": reference,
        "one in-place pass (floor)": one_pass,
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(args.reps):  # interleaved
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t0) * 1e3)
    copy = times.pop("copy (subtracted from the in-place row)")
    key = "in place (grokfast_filter inplace=True)"
    times[key] = [t - c for t, c in zip(times[key], copy, strict=True)]
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    base = med["reference loop"]
    for k, v in med.items():
        print(f"{k:42s} {v:9.2f} ms  x{v / base:.3f} of the reference loop")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "command": "python "
                    + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "torch": torch.__version__,
                    "machine": {"cpu_count": os.cpu_count(), "threads": 1, "device": "cpu"},
                    "shapes": source,
                    "n_params": sum(g.numel() for g in grads),
                    "median_ms": med,
                    "ratio_vs_reference_loop": {k: round(v / base, 3) for k, v in med.items()},
                    "times_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
