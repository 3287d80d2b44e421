"""What the plots draw: one colour per family with the legend beside the axes; Grokfast
lambda's boost drawn at the step whose evaluation detected grokking."""

from __future__ import annotations

import cognate_train.plots as plots
import pytest
from cognate_train.tasks import FAMILIES
from matplotlib.colors import to_rgba


@pytest.fixture
def figures(monkeypatch):
    kept = {}

    def keep(fig, path):
        fig.canvas.draw()
        kept[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _records(families, steps=(100, 200, 300)):
    records = []
    for i, s in enumerate(steps):
        records.append({"step": s, "train/loss": 2.0 - i * 0.1, "lr": 1e-3, "lr/muon": 0.02})
        ev = {"step": s, "val/loss": 2.0, "val/accuracy": 0.1 * i}
        ev.update({f"val/accuracy/{f}": 0.05 * i for f in families})
        records.append(ev)
    return records


def test_every_family_has_its_own_colour_and_the_legend_is_outside(tmp_path, figures):
    families = sorted(FAMILIES)
    assert len(families) == 16
    plots.plot_run(_records(families), tmp_path)
    ax = figures["accuracy.png"].axes[0]
    lines = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
    family_colors = [tuple(lines[f]) for f in families]
    assert len(set(family_colors)) == len(families)
    overall = {to_rgba(lines["val accuracy"]), to_rgba("tab:blue")}  # val and train lines
    assert not {to_rgba(c) for c in family_colors} & overall
    renderer = figures["accuracy.png"].canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert legend_box.x0 >= ax.get_window_extent(renderer).x1


def test_lambda_boost_is_drawn_at_the_detecting_evaluation(tmp_path, figures):
    # records every 10 steps; the evaluation of step 30 detects grokking and boosts lambda,
    # after step 30's training record was logged (so that record still holds the old lambda)
    records = [
        {"step": s, "lr": 1e-3, "grokfast/lambda": 1.0 if s <= 30 else 1.5}
        for s in range(10, 70, 10)
    ]
    plots.plot_run(records, tmp_path, grokking_step=30)
    ax2 = figures["lr.png"].axes[1]
    (line,) = [ln for ln in ax2.get_lines() if ln.get_label() == "Grokfast lambda"]
    xy = line.get_path().vertices
    rises = [xy[i][0] for i in range(1, len(xy)) if xy[i][1] > xy[i - 1][1]]
    assert rises == [30]
