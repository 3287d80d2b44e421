"""Does the optimizer train a real model better? The Cognate quick model on the curriculum.

Each run is one ``cognate-train train --preset quick`` model (one specialization, default
``reasoning``: the TRM-refined 0.14M-parameter Cognate), trained from the same seed with a
different ``--optimizer``. For a given seed every optimizer sees the identical stream of
batches, so "after the same number of steps" is "after the same number of tokens"; the script
checks that and records ``train/tokens`` at every evaluation. Reported per run: val loss (mean
cross-entropy per answer token) and exact-match accuracy (greedy answer == expected, over the
built-in task families: 15 in the committed runs, 16 since `hops` was added) at each evaluation and at the end, and the tokens needed to first reach
``--target-loss``.

    uv run python benchmarks/lm.py --optimizer adamw,muon,grokfast-adamw,mugrokfast \\
        --seeds 1,2,3 --jobs 2 --out benchmarks/results/lm.json

An optimizer spec may carry overrides of the run's config fields (``TrainConfig`` names), which
is how the tuning sweep was run: ``--optimizer adamw:lr=0.01,muon:muon_lr=0.02``. Each spec is
a separate row, labelled as written. ``mugrokfast`` takes ``grokfast_place`` too (``grad``, the
default, or ``update``: ``MuGrokfast(grokfast_place="update")``, the EMA on Muon's
orthogonalised update): ``--optimizer mugrokfast:grokfast_place=update:grokfast_lambda=0.5``.

Benchmark-side optimizers (not ``cognate-train`` choices) run through the same trainer: the
config is the ``muon`` run's, and the optimizer is swapped for one built over the same routing
(``mugrokfast.param_groups``: hidden matrices vs the rest) and scheduled like the others.
``muon-slow`` is the filter study's ``SlowMuon`` (``filter_study.py``; its fields ``lamb``,
``place``, ``relative``, ``alpha``, ``adamw_lamb``, ``warmup_steps``, e.g.
``muon-slow:place=update:relative=1:lamb=0.5``); the peers (``peers.py``, e.g. ``torch-muon``)
take their ``peers.PEERS`` fields. These runs keep no optimizer state in their checkpoints (the
benchmark never resumes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from grokking import machine_info  # noqa: E402  (same machine record as grokking.py)

# The trainer's own optimizers, then the benchmark-side ones (built here, see the docstring).
TRAINER_OPTIMIZERS = ("adamw", "muon", "grokfast-adamw", "mugrokfast")
OPTIMIZERS = (*TRAINER_OPTIMIZERS, "muon-slow", *peers.PEERS)

# Each optimizer's own settings, chosen on seed 0 only (results/lm_sweep.json); the reported
# runs use other seeds. Everything else is the quick preset (lr schedule, batch 32, 900 steps,
# weight decay 0.01, grad clip 1.0, betas (0.9, 0.98), Grokfast alpha 0.98).
DEFAULT_HP: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 3e-3},  # of 1e-3, 3e-3, 1e-2
    "muon": {"lr": 3e-3, "muon_lr": 0.02},  # of muon_lr 0.005, 0.01, 0.02
    "grokfast-adamw": {"lr": 3e-3, "grokfast_lambda": 0.5},  # of lambda 0.1, 0.5, 2
    # of muon_lr 0.005, 0.01, 0.02 (lambda 0.1), then lambda 0.1, 0.5, 1 (muon_lr 0.01)
    "mugrokfast": {"lr": 3e-3, "muon_lr": 0.01, "grokfast_lambda": 0.5},
    # not tuned here: mugrokfast's settings with the filter study's pick on the grokking task
    # (the amplifier on the orthogonalised update, relative weight 0.5)
    "muon-slow": {
        "lr": 3e-3,
        "muon_lr": 0.01,
        "alpha": 0.98,
        "lamb": 0.5,
        "place": "update",
        "relative": 1,
        "warmup_steps": 0,
        "adamw_lamb": 0.5,
    },
    # the peers at their libraries' documented defaults (peers.PEERS)
    **{name: dict(e["hp"]) for name, e in peers.PEERS.items()},
}
# fields a spec may override (the optimizer's own knobs; the task stays fixed)
HP_FIELDS = (
    *("lr", "muon_lr", "weight_decay", "grokfast_alpha", "grokfast_lambda", "grokfast_place"),
    "grad_clip",
)
# fields whose value is a word, kept as a string (the rest are numbers)
STRING_FIELDS = ("place", "grokfast_place")
# the TrainConfig fields a benchmark-side optimizer takes from its hp (the rest is the builder's)
CONFIG_FIELDS = ("lr", "muon_lr", "weight_decay", "grad_clip")


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"muon:muon_lr=0.02"`` -> (label, optimizer name, hp with the defaults filled in)."""
    name, *pairs = spec.split(":")
    if name not in OPTIMIZERS:
        raise ValueError(
            f"--optimizer {spec!r}: unknown optimizer {name!r} ({', '.join(OPTIMIZERS)})"
        )
    hp = dict(DEFAULT_HP[name])
    fields = HP_FIELDS if name in TRAINER_OPTIMIZERS else (*CONFIG_FIELDS, *hp)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(
                f"--optimizer {spec!r}: expected NAME:FIELD=VALUE with FIELD one of "
                f"{', '.join(dict.fromkeys(fields))}"
            )
        if key in STRING_FIELDS:
            hp[key] = value
            continue
        try:
            hp[key] = float(value)
        except ValueError:
            raise ValueError(
                f"--optimizer {spec!r}: {key} must be a number, got {value!r}"
            ) from None
    return spec, name, hp


def tokens_to_loss(curve: list[list[float]], target: float) -> float | None:
    """Tokens at which val loss first reaches ``target``, linearly interpolated between the two
    evaluations around the crossing (None: never reached). Curve rows: step, tokens, loss, acc."""
    prev = None
    for row in curve:
        if row[2] <= target:
            if prev is None or prev[2] == row[2]:
                return float(row[1])
            frac = (prev[2] - target) / (prev[2] - row[2])
            return float(prev[1] + frac * (row[1] - prev[1]))
        prev = row
    return None


def run_config(name: str, hp: dict[str, Any], seed: int, args: dict[str, Any], out: Path):
    """The TrainConfig of one run: the quick preset plus this benchmark's flags (validated: a
    bad value raises cognate_train's ConfigError naming it)."""
    from cognate_model.configuration_cognate import PRESETS
    from cognate_train.config import ConfigError, build_config

    if args["model_preset"] not in PRESETS:
        raise ConfigError(
            f"model-preset: unknown {args['model_preset']!r} (choose from {', '.join(PRESETS)})"
        )
    if name not in TRAINER_OPTIMIZERS:  # the muon run's config; the optimizer is swapped
        hp = {k: v for k, v in hp.items() if k in CONFIG_FIELDS}
        name = "muon"
    flags = dict(
        specialization=args["specialization"],
        model_preset=args["model_preset"],
        optimizer=name,
        seed=seed,
        max_steps=args["max_steps"],
        eval_every=args["eval_every"],
        log_every=args["eval_every"],
        checkpoint_every=args["max_steps"],
        output_dir=str(out),
        resume="never",
        samples=0,
        threads=args["threads"],
        device=args["device"],
        **hp,
    )
    return build_config("train", "quick", None, flags)


class _Swapped(torch.optim.Optimizer):
    """A benchmark-side optimizer as the trainer sees one: the inner optimizers' param groups
    (shared, so the trainer's LR schedule sets their lr), step, zero_grad; no state saved."""

    def __init__(self, inner: Any) -> None:  # no super().__init__: the groups are the inner ones
        self.inner = inner
        self.param_groups = [g for o in peers.sub_optimizers(inner) for g in o.param_groups]
        self.defaults, self.state = {}, {}

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.inner.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"state": {}, "param_groups": []}


def swap_optimizer(name: str, hp: dict[str, Any]) -> None:
    """Make the trainer (in this process) build ``name`` instead of its ``muon`` optimizer."""
    import cognate_train.engine as engine
    import filter_study
    import mugrokfast

    def build(_name: str, model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
        groups = mugrokfast.param_groups(model)
        muon = [p for g in groups if g["use_muon"] for p in g["params"]]
        rest = [p for g in groups if not g["use_muon"] for p in g["params"]]
        if name == "muon-slow":
            return _Swapped(
                filter_study.build(muon, rest, {**hp, "weight_decay": cfg.weight_decay})
            )
        return _Swapped(peers.build_peer(name, muon, rest, hp))

    engine.build_optimizer = build


def train_run(
    label: str,
    name: str,
    hp: dict[str, Any],
    seed: int,
    args: dict[str, Any],
) -> dict[str, Any]:
    """One model, in its own process, in a throwaway output dir."""
    from cognate_train.metrics import read_metrics
    from cognate_train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="lm-bench-") as tmp:
        out = Path(tmp) / "run"
        cfg = run_config(name, hp, seed, args, out)
        if name not in TRAINER_OPTIMIZERS:
            swap_optimizer(name, hp)
        t0 = time.perf_counter()
        summary = Trainer(cfg, args["specialization"], out, log=lambda m: None).run()
        wall = time.perf_counter() - t0
        records = read_metrics(out / "metrics.jsonl")
    evals = [r for r in records if "val/loss" in r]
    curve = [
        [r["step"], r["train/tokens"], round(r["val/loss"], 5), round(r["val/accuracy"], 5)]
        for r in evals
    ]
    last = evals[-1]
    families = {
        k.removeprefix("val/accuracy/"): round(v, 4)
        for k, v in last.items()
        if k.startswith("val/accuracy/")
    }
    return {
        "label": label,
        "optimizer": name,
        "seed": seed,
        "hp": hp,
        "n_params": summary["n_params"],
        "steps": summary["steps"],
        "tokens": summary["tokens_seen"],
        "final_val_loss": round(last["val/loss"], 5),
        "final_exact_match": round(last["val/accuracy"], 5),
        "best_val_loss": round(summary["best_val_loss"], 5),
        "tokens_to_target": tokens_to_loss(curve, args["target_loss"]),
        "final_family_accuracy": families,
        "skipped_steps": summary["skipped_steps"],
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "curve_columns": ["step", "tokens", "val_loss", "val_exact_match"],
        "curve": curve,
    }


def reusable_runs(paths: list[str], run_args: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """(label, seed) -> run, from earlier result files whose task settings equal this one's:
    a seed fixes the run (same batches, same initialisation), so it need not be trained again.
    A label fixes the hp only together with DEFAULT_HP, so the hp is compared as well."""
    keys = ("specialization", "model_preset", "max_steps", "eval_every")
    out: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        with open(path) as f:
            old = json.load(f)
        if any(old["task"].get(k) != run_args[k] for k in keys):
            continue
        for r in old["runs"]:
            label, name, hp = parse_spec(r["label"])
            if "error" in r or r["hp"] != hp:
                continue
            src = {"file": path, "command": old.get("command")}
            tt = tokens_to_loss(r["curve"], run_args["target_loss"])  # this run's --target-loss
            out[(label, r["seed"])] = {
                **r, "tokens_to_target": tt, "reused_from": r.get("reused_from", src)
            }  # fmt: skip
    return out


def _run_job(job: tuple) -> dict[str, Any]:
    label, name, hp, seed, args = job
    try:
        return train_run(label, name, hp, seed, args)
    except Exception as exc:  # recorded in the JSON and printed, never silently dropped
        return {"label": label, "optimizer": name, "seed": seed, "hp": hp, "error": repr(exc)}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            by.setdefault(r["label"], []).append(r)
    out: dict[str, Any] = {}
    for label, rs in by.items():
        loss_m, loss_s = _mean_std([r["final_val_loss"] for r in rs])
        em_m, em_s = _mean_std([r["final_exact_match"] for r in rs])
        tt = [r["tokens_to_target"] for r in rs]
        # median with "never reached" as +inf, like grokking.py's milestones
        med = statistics.median(math.inf if t is None else t for t in tt)
        out[label] = {
            "optimizer": rs[0]["optimizer"],
            "hp": rs[0]["hp"],
            "seeds": [r["seed"] for r in rs],
            "tokens": rs[0]["tokens"],
            "final_val_loss": [r["final_val_loss"] for r in rs],
            "final_val_loss_mean": round(loss_m, 4),
            "final_val_loss_std": round(loss_s, 4),
            "final_exact_match": [r["final_exact_match"] for r in rs],
            "final_exact_match_mean": round(em_m, 4),
            "final_exact_match_std": round(em_s, 4),
            "target_loss": target,
            "tokens_to_target": tt,
            "median_tokens_to_target": None if math.isinf(med) else round(med),
            "median_wall_s": statistics.median(r["wall_s"] for r in rs),
        }
    return out


def same_tokens_check(runs: list[dict[str, Any]]) -> bool:
    """Every optimizer saw the same tokens at every evaluation, seed by seed."""
    by_seed: dict[int, set] = {}
    for r in runs:
        if "error" not in r:
            by_seed.setdefault(r["seed"], set()).add(tuple((c[0], c[1]) for c in r["curve"]))
    return all(len(v) == 1 for v in by_seed.values())


def markdown_table(summary: dict[str, Any], target: float) -> str:
    lines = [
        "| optimizer | val loss (mean ± sd) | exact match (mean ± sd) | tokens to val loss "
        f"{target:g} (median) | per seed |",
        "|---|---:|---:|---:|---|",
    ]
    for label, s in summary.items():
        per = ", ".join("never" if t is None else f"{t / 1e3:.0f}k" for t in s["tokens_to_target"])
        med = s["median_tokens_to_target"]
        lines.append(
            f"| `{label}` | {s['final_val_loss_mean']:.3f} ± {s['final_val_loss_std']:.3f} "
            f"| {s['final_exact_match_mean']:.3f} ± {s['final_exact_match_std']:.3f} "
            f"| {'never' if med is None else f'{med / 1e3:.0f}k'} | {per} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: str, target: float, title: str) -> None:
    """Val loss and exact match vs tokens: mean over seeds, shaded min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r and r["curve"]:
            by.setdefault(r["label"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, rs in by.items():
        n = min(len(r["curve"]) for r in rs)
        tokens = [statistics.fmean(r["curve"][i][1] for r in rs) / 1e6 for i in range(n)]
        for ax, col in zip(axes, (2, 3), strict=True):
            vals = [[r["curve"][i][col] for r in rs] for i in range(n)]
            (line,) = ax.plot(tokens, [statistics.fmean(v) for v in vals], marker=".", label=label)
            ax.fill_between(
                tokens, [min(v) for v in vals], [max(v) for v in vals],
                color=line.get_color(), alpha=0.15,
            )  # fmt: skip
    axes[0].axhline(target, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("val loss (answer tokens)")
    axes[1].set_ylabel("val exact match")
    for ax in axes:
        ax.set_xlabel("tokens trained on (millions)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--optimizer",
        default=",".join(TRAINER_OPTIMIZERS),
        help=f"comma list of specs NAME[:FIELD=VALUE...], NAME one of {', '.join(OPTIMIZERS)}",
    )
    ap.add_argument("--seeds", default="1,2,3", help="seed 0 was used for tuning")
    ap.add_argument("--specialization", default="reasoning", help="reasoning, memory or speed")
    ap.add_argument("--model-preset", default="cognate-tiny")
    ap.add_argument("--max-steps", type=int, default=900, help="the quick preset's length")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--target-loss", type=float, default=1.8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="results JSON (a PNG plot is written next to it)")
    ap.add_argument(
        "--plot", nargs="+", default=None, metavar="JSON",
        help="no training: merge these result files, print the table, plot to --plot-out",
    )  # fmt: skip
    ap.add_argument("--plot-out", default=None)
    ap.add_argument(
        "--reuse", nargs="*", default=[], metavar="JSON",
        help="take identical runs (label, seed, hp, task settings) from these result files "
        "instead of training them again",
    )  # fmt: skip
    args = ap.parse_args(argv)

    if args.plot:
        runs: list[dict[str, Any]] = []
        for p in args.plot:
            with open(p) as f:
                runs += json.load(f)["runs"]
        summary = summarize(runs, args.target_loss)
        print(markdown_table(summary, args.target_loss))
        if args.plot_out:
            plot(runs, args.plot_out, args.target_loss, "Cognate quick model, merged results")
            print(f"wrote {args.plot_out}")
        return 0

    try:
        specs = [parse_spec(s.strip()) for s in args.optimizer.split(",") if s.strip()]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as exc:
        msg = str(exc) if str(exc).startswith("--") else f"--seeds {args.seeds!r}: {exc}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    skipped = {name: peers.missing(name) for _, name, _ in specs if name in peers.PEERS}
    skipped = {name: note for name, note in skipped.items() if note}
    for note in skipped.values():
        print(f"note: {note}", file=sys.stderr)
    specs = [s for s in specs if s[1] not in skipped]
    if not specs:
        print("error: no optimizer left to run", file=sys.stderr)
        return 2
    for flag, value in (("--max-steps", args.max_steps), ("--eval-every", args.eval_every)):
        if value < 1:
            print(f"error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.specialization not in ("reasoning", "memory", "speed"):
        print(
            f"error: --specialization {args.specialization!r}: choose reasoning, memory or speed",
            file=sys.stderr,
        )
        return 2
    run_args = {
        k: getattr(args, k)
        for k in ("specialization", "model_preset", "max_steps", "eval_every", "threads",
                  "device", "target_loss")
    }  # fmt: skip
    jobs = [(label, name, hp, seed, run_args) for label, name, hp in specs for seed in seeds]
    from cognate_train.config import ConfigError

    for label, name, hp in specs:  # every bad value named before any training starts
        try:
            run_config(name, hp, seeds[0], run_args, Path("unused"))
        except ConfigError as exc:
            print(f"error: {exc} (in the run {label!r})", file=sys.stderr)
            return 2
    reused = reusable_runs(args.reuse, run_args)
    runs = [reused[(j[0], j[3])] for j in jobs if (j[0], j[3]) in reused]
    for r in runs:
        print(f"{r['label']:36s} seed {r['seed']}: reused from {r['reused_from']['file']}")
    todo = [j for j in jobs if (j[0], j[3]) not in reused]
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(_run_job, todo):
            if "error" in r:
                print(f"{r['label']} seed {r['seed']}: ERROR {r['error']}", flush=True)
            else:
                tt = r["tokens_to_target"]
                print(
                    f"{r['label']:36s} seed {r['seed']}: val loss {r['final_val_loss']:.3f}, "
                    f"exact match {r['final_exact_match']:.3f}, tokens to {args.target_loss:g}: "
                    f"{'never' if tt is None else f'{tt:.0f}'} ({r['wall_s']:.0f} s)",
                    flush=True,
                )
            runs.append(r)
    order = {(j[0], j[3]): i for i, j in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["label"], r["seed"])])
    summary = summarize(runs, args.target_loss)
    print(markdown_table(summary, args.target_loss))
    same = same_tokens_check(runs)
    print(f"same tokens per seed across optimizers: {same}")
    if args.out:
        from cognate_train.data import all_families

        result = {
            "task": {
                "what": "cognate-train quick preset, one specialization, built-in curriculum",
                "preset": "quick",
                "specialization": args.specialization,
                "model_preset": args.model_preset,
                "max_steps": args.max_steps,
                "eval_every": args.eval_every,
                "val": f"n_val 32 per family x {len(all_families())} families; loss = mean CE "
                "per answer token; exact match = greedy answer equals the expected one",
                "target_loss": args.target_loss,
                "tokens_to_target": "linear interpolation between the evaluations around the "
                "first crossing",
                "same_tokens_per_seed": same,
            },
            "default_hp": DEFAULT_HP,
            "skipped": skipped,
            "command": "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
            "machine": machine_info(args.threads, args.device),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "summary": summary,
            "runs": runs,
        }
        failed = any("error" in r for r in runs)
        out = os.path.splitext(args.out)[0] + ".failed.json" if failed else args.out
        if failed:  # an earlier result at --out is not replaced by a run with errors
            print(f"some runs failed: results go to {out}, {args.out} is left as it was")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, out)
        png = os.path.splitext(out)[0] + ".png"
        title = f"Cognate quick ({args.specialization}), {args.max_steps} steps, seeds {args.seeds}"
        plot(runs, png, args.target_loss, title)
        print(f"wrote {out} and {png}")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
