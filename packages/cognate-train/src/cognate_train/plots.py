"""Training plots from ``metrics.jsonl`` records (matplotlib, Agg backend: no display needed).

``plot_run`` writes three PNGs into ``plots/``:

* ``loss.png``: train loss (log scale) and val loss against the step, curriculum stage changes
  shaded;
* ``accuracy.png``: val exact-match accuracy (overall and per family) and train accuracy when
  recorded, with the grokking step marked;
* ``lr.png``: the learning rate and, on a second axis, the Grokfast lambda (its boost shows as a
  step up at the grokking event).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Lay out, write and close one figure (a legend outside the axes included); return it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def family_colors(n: int) -> list[Any]:
    """``n`` distinct colours for per-family lines: tab20 without the two blues and oranges of
    the overall train and val lines (18 colours), then tab20b for any beyond."""
    cmap = plt.get_cmap("tab20")
    pool = [cmap(i) for i in range(20) if i not in (0, 1, 2, 3)]
    pool += [plt.get_cmap("tab20b")(i) for i in range(20)]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} families can be told apart, got {n}")
    return pool[:n]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _mark_grokking(ax: Any, step: int | None) -> None:
    if step is not None:
        ax.axvline(
            step, color="crimson", linestyle="--", linewidth=1.2, label=f"grokking (step {step})"
        )


def _shade_stages(ax: Any, records: list[dict[str, Any]]) -> None:
    xs, stages = _series(records, "curriculum/stage")
    first = True
    for i in range(1, len(xs)):
        if stages[i] != stages[i - 1]:
            ax.axvline(
                xs[i - 1],
                color="grey",
                linestyle=":",
                linewidth=1,
                label="curriculum stage change" if first else None,
            )
            first = False


def plot_run(
    records: list[dict[str, Any]],
    out_dir: str | Path,
    grokking_step: int | None = None,
    title: str = "",
    converged_step: int | None = None,
) -> list[Path]:
    """Write loss.png, accuracy.png and lr.png for one run; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _plot_loss(records, out / "loss.png", grokking_step, title),
        _plot_accuracy(records, out / "accuracy.png", grokking_step, converged_step, title),
        _plot_lr(records, out / "lr.png", grokking_step, title),
    ]


def _plot_loss(records: list[dict[str, Any]], path: Path, grokking_step, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    # train/loss is the model's objective (for Cognate: deep-supervision CE + ACT/gate terms);
    # val/loss is the plain cross-entropy of the final answer
    for key, label in (
        ("train/loss", "train loss (objective)"),
        ("val/loss", "val loss (answer CE)"),
    ):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(
                xs, ys, label=label, marker="o" if key.startswith("val") else None, markersize=3
            )
    _shade_stages(ax, records)
    _mark_grokking(ax, grokking_step)
    losses = [v for key in ("train/loss", "val/loss") for v in _series(records, key)[1]]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")  # grokking runs: the train loss falls by orders of magnitude
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per answer token)")
    ax.set_title(f"{title}: loss" if title else "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _plot_accuracy(
    records: list[dict[str, Any]], path: Path, grokking_step, converged_step, title: str
) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 4))
    few = False
    for key, color, size in (("train", "tab:blue", 3), ("val", "tab:orange", 4)):
        xs, ys = _series(records, f"{key}/accuracy")
        few = len(xs) <= 30  # markers keep sparse evaluations visible
        if xs:
            marker = "o" if few else None
            ax.plot(xs, ys, label=f"{key} accuracy", color=color, linewidth=2, marker=marker,
                    markersize=size)  # fmt: skip
    families = sorted({k for r in records for k in r if k.startswith("val/accuracy/")})
    for key, color in zip(families, family_colors(len(families)), strict=True):
        fx, fy = _series(records, key)
        label = key.split("/", 2)[2]
        ax.plot(fx, fy, label=label, color=color, linewidth=0.9, marker="." if few else None)
    _mark_grokking(ax, grokking_step)
    if converged_step is not None:
        ax.axvline(
            converged_step,
            color="green",
            linestyle="--",
            linewidth=1.2,
            label=f"converged (step {converged_step})",
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(f"{title}: accuracy" if title else "accuracy")
    ax.grid(alpha=0.3)
    # beside the axes, not over the lines
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def _plot_lr(records: list[dict[str, Any]], path: Path, grokking_step, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = _series(records, "lr")
    ax.plot(xs, ys, color="tab:blue", label="lr (AdamW groups)")
    mx, my = _series(records, "lr/muon")
    if mx:
        ax.plot(mx, my, color="tab:purple", linestyle="--", label="lr (Muon groups)")
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color="tab:blue")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    lx, ly = _series(records, "grokfast/lambda")
    if lx:
        ax2 = ax.twinx()
        # a record at step s holds the lambda of steps (previous record, s], so the value is
        # drawn back to the previous record ("steps-pre"): a boost at the evaluation of step g
        # (after g's record was logged) then rises at g, not at the next record
        ax2.plot(lx, ly, color="tab:red", label="Grokfast lambda", drawstyle="steps-pre")
        ax2.set_ylabel("Grokfast lambda", color="tab:red")
        ax2.set_ylim(0, max(ly) * 1.2 if max(ly) > 0 else 1)
    _mark_grokking(ax, grokking_step)
    ax.set_title(f"{title}: schedule" if title else "schedule")
    return _save(fig, path)
