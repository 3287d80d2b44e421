"""The end of a run: its ``summary.json`` (:func:`summarize`) and the report, one table per
model, sample generations, where the plots are.

Every figure in the report is read from the run's own ``summary.json`` (measured at the final
evaluation); nothing is estimated.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import save_json
from .metrics import read_metrics

if TYPE_CHECKING:
    from .engine import Engine


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def model_table(summary: dict[str, Any]) -> str:
    final = summary.get("final", {})
    rows = [
        ("val loss", _fmt(final.get("val/loss"), ".4f")),
        (
            # real data mixes exact match (gsm8k, svamp) and multiple-choice acc (arc, hellaswag)
            "accuracy (mean of datasets)" if "data" in summary else "exact match (all families)",
            _fmt(final.get("val/accuracy")),
        ),
    ]
    for key in sorted(k for k in final if k.startswith("val/accuracy/")):
        rows.append((f"  {key.split('/', 2)[2]}", _fmt(final[key])))
    rows += [
        # training batches, where every cycle is computed: the depth ACT would stop at
        ("ACT halting cycle (train)", _fmt(summary.get("act_cycles_mean"), ".2f")),
        ("steps", f"{summary['steps']} ({summary['stop_reason']})"),
        ("time", f"{summary['time_s']:.1f} s"),
        ("params", f"{summary['n_params'] / 1e6:.2f}M"),
    ]
    if summary.get("skipped_steps"):
        rows.append(("skipped (non-finite) steps", str(summary["skipped_steps"])))
    if summary.get("grokking_step") is not None:
        rows.append(("grokking detected at step", str(summary["grokking_step"])))
    width = max(len(k) for k, _ in rows)
    head = (
        f"{summary['specialization']} ({summary['model_preset']}, {summary['optimizer']}, "
        f"{summary['device']})"
    )
    lines = [head, "-" * len(head)]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def render(summaries: list[dict[str, Any]], root: str | Path) -> str:
    """The whole report as text (also written to ``report.md`` by the CLI)."""
    out = ["# cognate-train report", ""]
    for s in summaries:
        out.append("```")
        out.append(model_table(s))
        out.append("```")
        if s.get("samples"):
            out.append("Sample generations (validation prompts, greedy):")
            for smp in s["samples"]:
                mark = "ok" if smp["generated"] == smp["expected"] else "wrong"
                prompt = smp["prompt"].replace("\n", " / ")
                out.append(
                    f"- [{smp['family']}] `{prompt}` -> `{smp['generated']}` "
                    f"(expected `{smp['expected']}`, {mark})"
                )
        out.append(f"Plots: {Path(s['output_dir']) / 'plots'}/{{loss,accuracy,lr}}.png")
        out.append("")
    if len(summaries) > 1:
        out.append("| model | val loss | exact match | ACT halting cycle (train) | time (s) |")
        out.append("|---|---|---|---|---|")
        for s in summaries:
            f = s.get("final", {})
            out.append(
                f"| {s['specialization']} | {_fmt(f.get('val/loss'), '.4f')} | "
                f"{_fmt(f.get('val/accuracy'))} | {_fmt(s.get('act_cycles_mean'), '.2f')} | "
                f"{s['time_s']:.1f} |"
            )
        out.append("")
    out.append(f"Outputs: {root}")
    return "\n".join(out)


def summarize(engine: Engine) -> dict[str, Any]:
    """The run's ``summary.json`` (also returned): the engine's figures, the task's, plots."""
    from .distributed import world_size
    from .plots import plot_run

    st, task = engine.state, engine.task
    records = read_metrics(engine.out / "metrics.jsonl")
    task_fields = task.summary(engine, records)
    plots = plot_run(
        records,
        engine.out / "plots",
        grokking_step=engine.detector.grokking_step,
        converged_step=engine.detector.converged_step,
        title=task_fields.pop("title"),
    )
    summary = {
        **task_fields,
        "optimizer": engine.cfg.optimizer,
        "n_params": sum(p.numel() for p in task.model.parameters()),
        "steps": st.step,
        "total_steps": task.total_steps,
        "stop_reason": st.stop_reason,
        "time_s": round(st.elapsed_s + (time.perf_counter() - engine.t0), 2),
        "tokens_seen": st.tokens_seen,
        "world_size": world_size(),
        "device": str(task.device),
        "final": st.last_eval,
        "best_val_loss": st.best_val_loss if math.isfinite(st.best_val_loss) else None,
        "skipped_steps": st.nonfinite_total,
        "grokking_step": engine.detector.grokking_step,
        "converged_step": engine.detector.converged_step,
        "events": st.events,
        "plots": [str(p) for p in plots],
        "output_dir": str(engine.out),
    }
    save_json(engine.out / "summary.json", summary)
    return summary
