"""The READMEs' run figures: re-run the documented jobs, record them, rewrite the READMEs.

    uv run python benchmarks/readme_figures.py train   # `cognate-train train` (quick), ~5-10 min
    uv run python benchmarks/readme_figures.py grok    # `cognate-train grok`, ~2-4 min
    uv run python benchmarks/readme_figures.py write   # rewrite the READMEs from the results
    uv run python benchmarks/readme_figures.py check   # what the test checks; exit 1 on a mismatch

``train`` and ``grok`` run the command exactly as a README gives it (default preset, seed 0, one
thread), in a scratch directory, and record in ``benchmarks/results/readme_<job>.json`` the
command, date, machine, load average, wall time and the run's own ``summary.json``; then they
rewrite the READMEs (``write``). Everything but the times is deterministic: the same code gives
the same losses, accuracies, ACT cycles and samples on every run.

Two kinds of marks in a README tie its text to these files:

* a generated block, ``<!-- generated: NAME -->`` ... ``<!-- /generated -->``: the text between
  is exactly ``render_block(NAME)`` (``BLOCKS`` names its result file), rewritten by ``write``;
* an inline figure, ``<!--fig readme_train:speed.val_loss:.2f-->0.87<!--/fig-->``: the text
  between is ``format(figures(results)[key], spec)``, also rewritten by ``write``.

``packages/cognate-train/tests/test_readme_figures.py`` runs ``check`` on every README, so a
quoted figure cannot drift from the committed result that backs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
READMES = ("README.md", "packages/cognate-train/README.md", "packages/cognate-model/README.md")
COMMANDS = {
    "train": ["cognate-train", "train", "--output-dir", "runs/quick"],
    "grok": ["cognate-train", "grok", "--output-dir", "runs/grok"],
}
# what the root README's first hour runs after `train`, on the speed model
FINAL = "runs/quick/speed/final"
FOLLOW_UPS = {
    "smoke": ["cognate-train", "train", "--preset", "smoke", "--output-dir", "runs/smoke"],
    "eval": ["cognate-train", "eval", "--checkpoint", FINAL],
    "generate": ["cognate-train", "generate", "--checkpoint", FINAL]
    + ["--prompt", "copy hello:", "--prompt", "rev abcdef:", "--prompt", "12+35="],
}
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- /generated -->)", re.S)
FIG = re.compile(r"(<!--fig (\w+):([\w./-]+):([^>]*?)-->)(.*?)(<!--/fig-->)")


def _machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    info["python"] = platform.python_version()
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return info


def _git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def _run(cmd: list[str], cwd: str) -> tuple[str, float]:
    """stdout and wall seconds of ``cmd``; exits naming it if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, round(time.perf_counter() - t0, 1)


def run_job(job: str) -> dict[str, Any]:
    """Run the README's command for ``job`` in a scratch directory; return its record (for
    ``train`` also the first hour's smoke run, ``eval`` and ``generate``: output and time)."""
    cmd = COMMANDS[job]
    follow: dict[str, dict[str, Any]] = {}
    commit = _git_commit()  # the code that runs (read first: the tree may move meanwhile)
    with tempfile.TemporaryDirectory(prefix=f"readme-{job}-") as tmp:
        load0 = os.getloadavg()
        _, wall = _run(cmd, tmp)
        summary = json.loads((Path(tmp) / cmd[-1] / "summary.json").read_text())
        for name, extra in FOLLOW_UPS.items() if job == "train" else ():
            stdout, seconds = _run(extra, tmp)
            follow[name] = {"command": " ".join(extra), "wall_s": seconds}
            if name != "smoke":
                follow[name]["stdout"] = stdout.replace(tmp + "/", "")
    return {
        "command": "uv run " + " ".join(cmd[:2]) + "  (as the README gives it; in a scratch dir)",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": commit,
        "machine": _machine(),
        "load_average_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "wall_s": wall,
        "summary": summary,
        **({"first_hour": follow} if follow else {}),
    }


# -------------------------------------------------------------------------------------------
# figures: flat keys over a result, for inline marks


def _model_figures(m: dict[str, Any]) -> dict[str, Any]:
    spec, final = m["specialization"], m["final"]
    out = {
        f"{spec}.val_loss": final["val/loss"],
        f"{spec}.exact_match": final["val/accuracy"],
        f"{spec}.act_cycles": m["act_cycles_mean"],
        f"{spec}.time_s": m["time_s"],
        f"{spec}.params_m": m["n_params"] / 1e6,
    }
    for key, value in final.items():
        if key.startswith("val/accuracy/"):
            out[f"{spec}.acc.{key.split('/', 2)[2]}"] = value
    return out


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """Every figure a README may quote from one result file, by flat key."""
    out: dict[str, Any] = {"wall_s": result["wall_s"], "wall_min": result["wall_s"] / 60}
    for name, run in result.get("first_hour", {}).items():
        out[f"{name}.wall_s"] = run["wall_s"]
    s = result["summary"]
    if "models" not in s:  # grok
        for key in ("steps", "grokking_step", "converged_step", "steps_to_95_val_acc"):
            out[key] = s[key]
        out["time_s"] = s["time_s"]
        out["val_acc"] = s["final"]["val/accuracy"]
        return out
    models = [_model_figures(m) for m in s["models"]]
    for m in models:
        out.update(m)
    out["model_time_s"] = sum(m["time_s"] for m in s["models"])
    for stat in ("val_loss", "exact_match", "act_cycles"):
        values = [v for m in models for k, v in m.items() if k.endswith("." + stat)]
        out[f"min.{stat}"], out[f"max.{stat}"] = min(values), max(values)
    return out


# -------------------------------------------------------------------------------------------
# generated blocks


def _train_block(result: dict[str, Any]) -> str:
    from cognate_train.report import model_table

    models = result["summary"]["models"]
    speed = next(m for m in models if m["specialization"] == "speed")
    lines = [
        f"`{result['command'].split('  ')[0]}` at commit {result['git_commit'][:8]}, "
        f"{result['date']}, {result['machine']['cpu_count']}-core CPU, load average "
        f"{result['load_average_before_after'][0]} at the start; abridged to the speed model "
        "and the closing table "
        "([`benchmarks/results/readme_train.json`](../../benchmarks/results/readme_train.json)):",
        "",
        "```",
        model_table(speed),
        "```",
        "Sample generations (validation prompts, greedy):",
    ]
    for smp in speed["samples"]:
        mark = "ok" if smp["generated"] == smp["expected"] else "wrong"
        lines.append(
            f"- [{smp['family']}] `{smp['prompt']}` -> `{smp['generated']}` "
            f"(expected `{smp['expected']}`, {mark})"
        )
    lines += ["", "| model | val loss | exact match | ACT halting cycle (train) | time (s) |", "|---|---|---|---|---|"]  # fmt: skip
    for m in models:
        f = m["final"]
        lines.append(
            f"| {m['specialization']} | {f['val/loss']:.4f} | {f['val/accuracy']:.3f} | "
            f"{m['act_cycles_mean']:.2f} | {m['time_s']:.1f} |"
        )
    total = result["wall_s"]
    lines += ["", f"The whole command took {int(total // 60)} min {round(total % 60)} s of wall time."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _grok_block(result: dict[str, Any]) -> str:
    s = result["summary"]
    fin = s["final"]
    return (
        f"`{result['command'].split('  ')[0]}` at commit {result['git_commit'][:8]}, "
        f"{result['date']}, load average {result['load_average_before_after'][0]} "
        "([`benchmarks/results/readme_grok.json`](../../benchmarks/results/readme_grok.json)):\n"
        "\n```\n"
        f"grok {s['task']} with {s['optimizer']}: {s['steps']} steps in {s['time_s']:.1f} s "
        f"({s['stop_reason']})\n"
        f"  final train acc {fin['train/accuracy']:.3f}, val acc {fin['val/accuracy']:.3f}\n"
        f"  grokking detected at step {s['grokking_step']}, converged at step "
        f"{s['converged_step']}, 95% val accuracy at step {s['steps_to_95_val_acc']}\n"
        "```\n"
    )


def _first_hour_block(result: dict[str, Any]) -> str:
    hour = result["first_hour"]
    speed = next(m for m in result["summary"]["models"] if m["specialization"] == "speed")
    lines = [
        f"Recorded {result['date']}: the smoke run took {hour['smoke']['wall_s']:.0f} s, the main "
        f"job {result['wall_s'] / 60:.1f} min; the speed model ended at val loss "
        f"{speed['final']['val/loss']:.3f} and {speed['final']['val/accuracy']:.1%} exact match.",
        "",
    ]
    for name in ("eval", "generate"):
        lines += [
            f"`uv run {hour[name]['command']}` ({hour[name]['wall_s']:.0f} s here, most of it "
            "importing torch and transformers):",
            "",
            "```",
            hour[name]["stdout"].rstrip("\n"),
            "```",
            "",
        ]
    return "\n".join(lines)


# block name -> (the result file it is rendered from, its renderer)
BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "readme_train": ("readme_train", _train_block),
    "readme_grok": ("readme_grok", _grok_block),
    "readme_first_hour": ("readme_train", _first_hour_block),
}


def render_block(name: str) -> str | None:
    """The text of block ``name``; None while its result file does not exist."""
    source, renderer = BLOCKS[name]
    if not (RESULTS / f"{source}.json").is_file():
        return None
    return renderer(load_result(source))


def load_result(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _figure(name: str, key: str, spec: str) -> str | None:
    if not (RESULTS / f"{name}.json").is_file():
        return None
    value = figures(load_result(name)).get(key)
    return None if value is None else format(value, spec)


def rewrite(text: str) -> str:
    """``text`` with every generated block and inline figure re-rendered from its results."""
    text = BLOCK.sub(lambda m: m[1] + (render_block(m[2]) or m[3]) + m[4], text)
    return FIG.sub(lambda m: m[1] + (_figure(m[2], m[3], m[4]) or m[5]) + m[6], text)


def mismatches(text: str) -> list[str]:
    """What in ``text`` disagrees with the committed results (empty: all figures match)."""
    problems = []
    for m in BLOCK.finditer(text):
        want = render_block(m[2])
        if want is None:  # not measured yet: fine while the block quotes nothing
            if m[3]:
                problems.append(f"generated block {m[2]}: no result file {BLOCKS[m[2]][0]}.json")
        elif m[3] != want:
            problems.append(f"generated block {m[2]} is stale (run: readme_figures.py write)")
    for m in FIG.finditer(text):
        want = _figure(m[2], m[3], m[4])
        if want is None:
            problems.append(f"{m[2]}:{m[3]}: no such figure (or no result file)")
        elif m[5] != want:
            problems.append(f"{m[2]}:{m[3]} is {want}, the README says {m[5]!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("train", "grok", "write", "check"))
    args = ap.parse_args(argv)
    if args.action in COMMANDS:
        record = run_job(args.action)
        path = RESULTS / f"readme_{args.action}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT)} ({record['wall_s']} s)")
    bad = 0
    for name in READMES:
        path = ROOT / name
        text = path.read_text()
        if args.action != "check":
            new = rewrite(text)
            if new != text:
                path.write_text(new)
                print(f"rewrote {name}")
            text = new
        for problem in mismatches(text):
            print(f"{name}: {problem}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
