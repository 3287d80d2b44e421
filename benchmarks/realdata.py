"""A short CPU run on local copies of the six Phase 1 datasets: tokens/s, val loss, metrics.

Runs the two commands a user runs, as subprocesses with one torch thread, and records what they
report:

    cognate-train train --data seeds --data-dir DIR --tokenizer train --vocab-size V ... \\
        --output-dir OUT
    cognate-train eval --checkpoint OUT/final --data gsm8k,svamp,mbpp,arc_easy,arc_challenge,\\
        hellaswag --data-dir DIR --json [--limit N]

tokens/s is the mean of the run's logged `tokens_per_s` (real tokens: packed rows hold no
padding; evaluation time excluded), val loss is the final evaluation's answer-token
cross-entropy on the examples held back from the training splits, and the per-dataset metrics
are the eval command's, on each held-out split (test, else validation). Chance levels are
recorded next to the multiple-choice accuracies (1 / number of choices, averaged over the rows).

    uv run python benchmarks/realdata.py --data-dir /path/to/six --out benchmarks/results/realdata_seeds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grokking import machine_info  # noqa: E402  (same machine record as the other benchmarks)

NAMES = ("gsm8k", "svamp", "mbpp", "arc_easy", "arc_challenge", "hellaswag")


def train_args(a: argparse.Namespace, out: Path) -> list[str]:
    return [
        "train",
        "--data", "seeds",
        "--data-dir", str(a.data_dir),
        "--tokenizer", "train",
        "--vocab-size", str(a.vocab_size),
        "--specialization", a.specialization,
        "--model-preset", a.model_preset,
        "--max-steps", str(a.max_steps),
        "--batch-size", str(a.batch_size),
        "--max-len", str(a.max_len),
        "--n-val", str(a.n_val),
        "--lr", str(a.lr),
        "--muon-lr", str(a.muon_lr),
        "--warmup-steps", str(max(1, a.max_steps // 20)),
        "--eval-every", str(a.max_steps),
        "--checkpoint-every", str(a.max_steps),
        "--log-every", "10",
        "--samples", "0",
        "--threads", "1",
        "--seed", str(a.seed),
        "--output-dir", str(out),
        "--resume", "never",
    ]  # fmt: skip


def eval_args(a: argparse.Namespace, out: Path) -> list[str]:
    args = ["eval", "--checkpoint", str(out / "final"), "--data", ",".join(NAMES)]
    args += ["--data-dir", str(a.data_dir), "--json"]
    if a.limit:
        args += ["--limit", str(a.limit)]
    if a.max_new_tokens:
        args += ["--max-new-tokens", str(a.max_new_tokens)]
    return args


def run_cli(args: list[str]) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cognate_train", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"cognate-train {args[0]} failed with status {proc.returncode}")
    return proc.stdout, seconds


def chance(a: argparse.Namespace) -> dict[str, float]:
    """Expected acc of a uniform guess: mean over the evaluated rows of 1 / number of choices."""
    from cognate_train.realdata.pipeline import load_records

    out = {}
    for name in ("arc_easy", "arc_challenge", "hellaswag"):
        records = load_records(name, None, data_dir=a.data_dir).records
        records = records[: a.limit] if a.limit else records
        out[name] = sum(1 / len(r.choices) for r in records) / len(records)
    return out


def markdown(result: dict[str, Any]) -> str:
    t, e = result["train"], result["eval"]
    lines = [
        "# Real data: a short CPU run on the six Phase 1 datasets",
        "",
        f"- command: `{result['command']}`",
        f"- train: `cognate-train {' '.join(result['train_command'])}`",
        f"- eval: `cognate-train {' '.join(result['eval_command'])}`",
        f"- date (UTC): {result['date']}",
        f"- machine: {result['machine'].get('cpu', '?')}, {result['machine']['cpu_count']} "
        f"logical CPUs, 1 torch thread; load average before/after {result['load_before']} / "
        f"{result['load_after']} (a shared machine)",
        f"- model: {t['model_preset']} ({t['n_params']:,} parameters with a "
        f"{t['vocab']}-token BPE), {t['steps']} steps of {t['batch_size']} packed rows x "
        f"{t['max_len']} tokens ({t['tokens_seen']:,} tokens), {t['time_s']:.0f} s of training",
        "",
        "| figure | value |",
        "|---|---|",
        f"| training tokens/s (mean of the logged windows) | {t['tokens_per_s']:,.0f} |",
        f"| final train loss | {t['train_loss']:.3f} |",
        f"| val loss (answer tokens, held-back training rows) | {t['val_loss']:.3f} |",
        "",
        "| dataset | split | rows | metric | value | chance | answer-token loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in NAMES:
        m = e[name]
        if "acc" in m:
            metric = f"acc {m['acc']:.3f} / acc_norm {m['acc_norm']:.3f}"
            ch = f"{result['chance'][name]:.3f}"
            lines.append(
                f"| {name} | {m['split']} | {m['n']} | acc / acc_norm | "
                f"{m['acc']:.3f} / {m['acc_norm']:.3f} | {ch} | {m['loss']:.3f} |"
            )
            continue
        if "exact_match" in m:
            metric, value = "exact match", f"{m['exact_match']:.3f}"
        elif "pass@1" in m:
            metric, value = "pass@1", f"{m['pass@1']:.3f}"
        else:
            metric, value = "loss only (pass@1 needs --execute-code)", "-"
        lines.append(
            f"| {name} | {m['split']} | {m['n']} | {metric} | {value} | - | {m['loss']:.3f} |"
        )
    lines += ["", result.get("note", ""), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/realdata_seeds"))
    p.add_argument("--run-dir", type=Path, default=None, help="default: a fresh temp dir")
    p.add_argument("--model-preset", default="cognate-tiny")
    p.add_argument("--specialization", default="reasoning")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--muon-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    a = p.parse_args()
    import tempfile

    run_dir = a.run_dir or Path(tempfile.mkdtemp(prefix="realdata-bench-"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    targs = train_args(a, run_dir)
    _, train_s = run_cli(targs)
    # one specialization: its outputs are the output directory itself
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").open()]
    tps = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    eargs = eval_args(a, run_dir)
    out, eval_s = run_cli(eargs)
    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(1, "cpu"),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "train_command": targs,
        "eval_command": eargs,
        "train": {
            "model_preset": a.model_preset,
            "n_params": summary["n_params"],
            "vocab": summary["data"]["tokenizer_vocab"],
            "steps": summary["steps"],
            "batch_size": a.batch_size,
            "max_len": a.max_len,
            "tokens_seen": summary["tokens_seen"],
            "time_s": summary["time_s"],
            "wall_s": round(train_s, 1),
            "tokens_per_s": sum(tps) / len(tps),
            "train_loss": losses[-1],
            "val_loss": summary["final"]["val/loss"],
            "final": summary["final"],
            "data": summary["data"],
        },
        "eval": json.loads(out)["datasets"],
        "eval_wall_s": round(eval_s, 1),
        "chance": chance(a),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    a.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
