"""QK-clip: the max pre-softmax logit of every attention head over a training run, with and
without `--qk-clip TAU`, and what recording the logits costs.

Each run is `cognate-train train --preset quick --specialization reasoning` (the README's model:
cognate-tiny, 2 backbone layers + the recursion's cross-attention, 4 heads each) for
`--max-steps` steps with `--log-every 1`, so every step records its per-head maxima (the
same work in every run; `attn/max_logit` is then in every record). The trainer's own
`QKClip.end` is wrapped to keep the per-head maxima of each step (measured in the forward,
before that step's clip). Runs: no clip, `--qk-clip 30` (the original Phase 1 setting), and,
when this model's logits never reach 30, a lower tau (`--low-tau`, default: half the largest
logit of the unclipped run) so that the clip's effect is visible.

Cost: forward + backward of the same model and batch with recording off and on, interleaved,
median of `--reps`.

    OMP_NUM_THREADS=1 uv run python benchmarks/qk_clip.py
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from cognate_train import qk_clip as qk_mod
from cognate_train.cli import main as cli_main
from cognate_train.metrics import read_metrics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_speed import interleaved, machine  # noqa: E402


def train_argv(out: Path, steps: int, tau: float) -> list[str]:
    return [
        *("train", "--preset", "quick", "--specialization", "reasoning"),
        *("--max-steps", str(steps), "--log-every", "1", "--eval-every", str(steps)),
        *("--checkpoint-every", str(steps), "--samples", "0", "--resume", "never"),
        *("--qk-clip", str(tau), "--output-dir", str(out)),
    ]


def train_run(tau: float, steps: int, root: Path) -> dict[str, Any]:
    """One training run; its per-step, per-head maxima and final figures."""
    trace: list[dict[str, list[float]]] = []
    original = qk_mod.QKClip.end

    def end(self: qk_mod.QKClip, stepped: bool) -> float | None:
        row = {n: m.max_logits.tolist() for n, m in zip(self.names, self.attns, strict=True)}
        trace.append(row)
        return original(self, stepped)

    qk_mod.QKClip.end = end
    out = root / f"tau{tau:g}"
    argv = train_argv(out, steps, tau)
    try:
        t0 = time.perf_counter()
        if cli_main(argv) != 0:
            raise SystemExit(f"training failed: {' '.join(argv)}")
        wall = time.perf_counter() - t0
    finally:
        qk_mod.QKClip.end = original
    records = read_metrics(out / "metrics.jsonl")
    final = json.loads((out / "summary.json").read_text())["final"]
    train = [r for r in records if "attn/max_logit" in r]
    return {
        "tau": tau,
        "command": "cognate-train " + " ".join(argv).replace(str(root), "$TMP"),
        "wall_s": round(wall, 1),
        "val_loss": final.get("val/loss"),
        "val_accuracy": final.get("val/accuracy"),
        "tokens_per_s_mean": sum(r["tokens_per_s"] for r in train) / len(train),
        "metric_steps": [r["step"] for r in train],
        "metric_max_logit": [r["attn/max_logit"] for r in train],
        "per_step": trace,
        **head_table(trace, tau),
    }


def head_table(trace: list[dict[str, list[float]]], tau: float) -> dict[str, Any]:
    """Per module and head: the max over the run and the last step's; steps with a clip."""
    heads = {
        name: {
            "max_over_run": [max(step[name][h] for step in trace) for h in range(len(vals))],
            "last_step": trace[-1][name],
        }
        for name, vals in trace[0].items()
    }
    clipped = sum(1 for step in trace if tau > 0 and max(max(v) for v in step.values()) > tau)
    return {"heads": heads, "steps_with_a_clip": clipped}


def record_cost(reps: int) -> dict[str, Any]:
    """Forward + backward of the quick reasoning model on one batch, recording off vs on."""
    from cognate_train.config import build_config
    from cognate_train.trainer import CurriculumTask

    cfg = build_config("train", "quick", None, {"specialization": "reasoning"})
    task = CurriculumTask(cfg, "reasoning", torch.device("cpu"))
    model, batch = task.model.train(), task.batches(0)[0]
    attns = list(qk_mod.attention_modules(model).values())

    def step(record: bool) -> None:
        for m in attns:
            m.record_max_logits, m.max_logits = record, None
        model.zero_grad(set_to_none=True)
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        out.loss.backward()

    t = interleaved({"off": lambda: step(False), "on": lambda: step(True)}, reps)
    shape = list(batch["input_ids"].shape)
    return {"batch": shape, "reps": reps, "off_s": t["off"], "on_s": t["on"],
            "ratio_on_off": t["on"] / t["off"]}  # fmt: skip


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        label = "no clip" if run["tau"] == 0 else f"--qk-clip {run['tau']:g}"
        steps = range(1, len(run["per_step"]) + 1)
        overall = [max(max(v) for v in s.values()) for s in run["per_step"]]
        (line,) = axes[0].plot(steps, overall, label=label, lw=1)
        if run["tau"] > 0:
            axes[0].axhline(run["tau"], color=line.get_color(), ls=":", lw=1)
        cross = [max(s["recursion.block.attn"]) for s in run["per_step"]]
        axes[1].plot(steps, cross, label=label, lw=1, color=line.get_color())
    axes[0].set_title("max pre-softmax logit, all layers and heads")
    axes[1].set_title("recursion cross-attention, max over heads")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("max logit (before that step's clip)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# QK-clip: max logit per head with and without `--qk-clip`",
        "",
        f"{result['date']}, `{result['command']}`; {result['machine']['cpu']}, torch "
        f"{result['machine']['torch']}, load average {result['loadavg_before']} before, "
        f"{result['loadavg_after']} after. {result['note']}",
        "",
        "| run | largest logit over the run | last step's largest | steps with a clip "
        "| val loss | val exact match | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        name = "no clip" if r["tau"] == 0 else f"`--qk-clip {r['tau']:g}`"
        top = max(max(h["max_over_run"]) for h in r["heads"].values())
        last = max(max(h["last_step"]) for h in r["heads"].values())
        lines.append(
            f"| {name} | {top:.2f} | {last:.2f} | {r['steps_with_a_clip']} | "
            f"{r['val_loss']:.4f} | {r['val_accuracy']:.3f} | {r['tokens_per_s_mean']:.0f} |"
        )
    lines += ["", "Per head (max over the run / last step):", ""]
    runs = result["runs"]
    lines.append("| attention | head | " + " | ".join(_name(r) for r in runs) + " |")
    lines.append("|---|---|" + "---|" * len(runs))
    for module, heads in runs[0]["heads"].items():
        for h in range(len(heads["max_over_run"])):
            cells = [
                f"{r['heads'][module]['max_over_run'][h]:.2f} / "
                f"{r['heads'][module]['last_step'][h]:.2f}"
                for r in runs
            ]
            lines.append(f"| `{module}` | {h} | " + " | ".join(cells) + " |")
    c = result["record_cost"]
    lines += [
        "",
        f"Recording cost (forward + backward, batch {c['batch']}, median of {c['reps']}, "
        f"interleaved): off {c['off_s'] * 1e3:.1f} ms, on {c['on_s'] * 1e3:.1f} ms, "
        f"ratio {c['ratio_on_off']:.3f}.",
        "",
        "Plot: `qk_clip.png`.",
    ]
    return "\n".join(lines) + "\n"


def _name(run: dict[str, Any]) -> str:
    return "no clip" if run["tau"] == 0 else f"tau {run['tau']:g}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/qk_clip.json")
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--tau", type=float, default=30.0)
    p.add_argument("--low-tau", default="auto", help="auto: half the unclipped run's max; none")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            train_run(0.0, args.max_steps, Path(tmp)),
            train_run(args.tau, args.max_steps, Path(tmp)),
        ]
        top = max(max(h["max_over_run"]) for h in runs[0]["heads"].values())
        note = f"The unclipped run's largest logit is {top:.2f}"
        if args.low_tau != "none" and top <= args.tau:
            low = round(top / 2, 1) if args.low_tau == "auto" else float(args.low_tau)
            runs.append(train_run(low, args.max_steps, Path(tmp)))
            note += (
                f", below tau {args.tau:g}: `--qk-clip {args.tau:g}` never fires at this size, "
                f"so a run with tau {low:g} (half of it) shows the effect."
            )
        else:
            note += "."
    result = {
        "benchmark": "qk_clip",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "uv run python benchmarks/qk_clip.py " + " ".join(argv or sys.argv[1:]),
        "settings": vars(args),
        "machine": machine(),
        "note": note,
        "runs": runs,
        "record_cost": record_cost(args.reps),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    plot(runs, out.with_suffix(".png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
