"""Evaluation decoding speed: `exact_match` / `generate_answers` with the KV cache vs without.

`cognate_train.evaluation` decodes greedily with the model's cache (one prefill per batch of
equal-length prompts, then one token per step); `use_cache=False` re-runs the whole sequence
at every step (the path before the cache, kept as the reference). This times both through the
public functions on validation prompts of every curriculum family (what a full-curriculum
evaluation scores), at the default evaluation batch size (64): `exact_match` at its default
budgets (answer tokens + 1) and `generate_answers` with exactly N new tokens (N = 8, 32, 64
by default; an untrained model emits no `<eos>`, so every row decodes its whole budget). Models: randomly initialised Cognate presets with a
specialization (default `cognate-tiny` and `cognate-small`, `reasoning`: what `cognate-train
train` evaluates). Untrained, ACT never halts early, so every token runs all cycles.

Runs are interleaved (every setting cached then uncached, the order flipped every rep), after
one warm-up of each; the median of `--reps` per setting and the median of the per-rep ratios
uncached / cached are reported, and the two paths' answers are checked to be identical.

    uv run python benchmarks/eval_decoding.py --out benchmarks/results/eval_decoding.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_train import evaluation
from cognate_train.data import make_split
from cognate_train.tasks import FAMILIES
from cognate_train.tokenizer import build_tokenizer


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """The public functions with the cache off (their `_greedy` called with use_cache=False)."""
    greedy = evaluation._greedy
    evaluation._greedy = functools.partial(greedy, use_cache=False)
    try:
        yield
    finally:
        evaluation._greedy = greedy


def model_for(preset: str, specialization: str, vocab: int) -> CognateForCausalLM:
    torch.manual_seed(0)
    config = CognateConfig.from_preset(preset, specialization, vocab_size=vocab)
    return CognateForCausalLM(config).eval()


def settings(args: argparse.Namespace, model: Any, tok: Any, examples: list) -> dict[str, Any]:
    """name -> a call returning what it computed (to compare the two paths)."""
    bs = args.batch_size
    prompts = [ex.prompt for ex in examples]
    out: dict[str, Callable[[], Any]] = {
        "exact_match": lambda: evaluation.exact_match(model, tok, examples, bs),
    }
    for n in args.new_tokens:
        out[f"generate_{n}"] = lambda n=n: evaluation.generate_answers(
            model, tok, prompts, max_new_tokens=n, batch_size=bs
        )
    return out


def timed(fn: Callable[[], Any], cache: bool) -> tuple[float, Any]:
    with contextlib.nullcontext() if cache else uncached():
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result


def run_model(args: argparse.Namespace, preset: str, tok: Any, examples: list) -> list[dict]:
    model = model_for(preset, args.specialization, len(tok))
    calls = settings(args, model, tok, examples)
    for cache in (True, False):  # warm-up: one short call each
        timed(lambda: evaluation.generate_answers(model, tok, ["1+1="], 2), cache)
    times: dict[tuple[str, bool], list[float]] = {(k, c): [] for k in calls for c in (1, 0)}
    same: dict[str, bool] = dict.fromkeys(calls, True)
    for rep in range(args.reps):
        for name, fn in calls.items():
            results = {}
            for cache in (True, False) if rep % 2 == 0 else (False, True):
                seconds, results[cache] = timed(fn, cache)
                times[(name, int(cache))].append(seconds)
            same[name] &= results[True] == results[False]
        print(f"[{preset}] rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    rows = []
    for name in calls:
        c, u = times[(name, 1)], times[(name, 0)]
        rows.append(
            {
                "preset": preset,
                "setting": name,
                "cached_s": statistics.median(c),
                "uncached_s": statistics.median(u),
                "speedup": statistics.median(b / a for a, b in zip(c, u, strict=True)),
                "cached_all": c,
                "uncached_all": u,
                "same_output": same[name],
            }
        )
    return rows


def write(args: argparse.Namespace, rows: list[dict], meta: dict[str, Any]) -> None:
    out = Path(args.out)
    result = {**meta, "rows": rows}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    md = [
        "# Evaluation decoding: KV cache vs full re-run (CPU)",
        "",
        f"- command: `{meta['command']}`",
        f"- date (UTC): {meta['date']}; wall {meta['wall_s']:.1f} s",
        f"- machine: {meta['machine']}; commit {meta['commit']}",
        f"- load average before/after: {meta['load_average_before_after']}",
        f"- settings: {json.dumps(meta['settings'])}",
        "- speed-up: median over reps of uncached / cached wall time of the same call",
        "",
        "| preset | call | cached s | uncached s | speed-up | same answers |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['preset']} | {r['setting']} | {r['cached_s']:.3f} | {r['uncached_s']:.3f} "
            f"| {r['speedup']:.2f}x | {r['same_output']} |"
        )
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["cognate-tiny", "cognate-small"])
    p.add_argument("--specialization", default="reasoning")
    p.add_argument("--new-tokens", nargs="+", type=int, default=[8, 32, 64])
    p.add_argument("--n-val", type=int, default=4, help="validation prompts per family")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/eval_decoding.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok = build_tokenizer()
    _, examples = make_split(list(FAMILIES), n_train=0, n_val=args.n_val, seed=0)
    lengths = [
        len(ids) for ids in tok([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    ]
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    start, load_before = time.perf_counter(), os.getloadavg()
    rows = [row for preset in args.presets for row in run_model(args, preset, tok, examples)]
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "wall_s": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
        "load_average_before_after": [load_before, os.getloadavg()],
        "commit": commit,
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "families": list(FAMILIES),
            "prompts": len(examples),
            "prompt_tokens_min_max": [min(lengths), max(lengths)],
            "distinct_prompt_lengths": len(set(lengths)),
        },
    }
    write(args, rows, meta)
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
