"""The run figures quoted in the READMEs are those of the committed result files.

``benchmarks/readme_figures.py`` regenerates both (it re-runs the README's commands); this test
only reads: every generated block must equal its rendering from ``benchmarks/results/``, every
inline ``<!--fig ...-->VALUE<!--/fig-->`` must hold the figure it names.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _module():
    spec = importlib.util.spec_from_file_location(
        "readme_figures", ROOT / "benchmarks" / "readme_figures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


figs = _module()


@pytest.mark.parametrize("readme", figs.READMES)
def test_quoted_figures_match_the_committed_results(readme):
    assert figs.mismatches((ROOT / readme).read_text()) == []


def test_the_readmes_hold_marks_at_all():
    text = "".join((ROOT / r).read_text() for r in figs.READMES)
    names = {m[1] for m in figs.BLOCK.findall(text)}
    assert names == {"readme_train", "readme_grok", "readme_first_hour"}


def test_a_drifted_figure_or_block_is_reported(tmp_path, monkeypatch):
    summary = {"task": "x*y mod 97", "optimizer": "mugrokfast", "steps": 300, "time_s": 90.0}
    summary.update(stop_reason="grokking_converged", grokking_step=150, converged_step=300)
    summary.update(steps_to_95_val_acc=250, final={"train/accuracy": 1.0, "val/accuracy": 0.99})
    result = {"command": "uv run cognate-train grok  (x)", "date": "2026-11-30 12:00 UTC"}
    result.update(git_commit="0123456789ab", wall_s=95.0, summary=summary)
    result.update(machine={"cpu_count": 2}, load_average_before_after=[1.0, 1.0])
    monkeypatch.setattr(figs, "RESULTS", tmp_path)
    (tmp_path / "readme_grok.json").write_text(json.dumps(result))
    steps = result["summary"]["steps"]
    good = f"ran <!--fig readme_grok:steps:d-->{steps}<!--/fig--> steps"
    assert figs.mismatches(good) == []
    bad = good.replace(f"-->{steps}<", f"-->{steps + 1}<")
    assert len(figs.mismatches(bad)) == 1
    assert figs.rewrite(bad) == good  # `write` puts the committed figure back
    block = "<!-- generated: readme_grok -->\n" + figs.render_block("readme_grok")
    assert figs.mismatches(block + "<!-- /generated -->") == []
    stale = block.replace(f" {steps} steps", f" {steps + 1} steps")
    assert len(figs.mismatches(stale + "<!-- /generated -->")) == 1
