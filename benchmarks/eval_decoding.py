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
uncached / cached are reported, and the paths' answers are checked to be identical.

`--realdata` times the real-data metrics' generation instead (`realdata.greedy_generate`, which
gsm8k / svamp exact match and mbpp pass@1 use, with `max_len` = the model's `max_seq_len`) on
--n-val synthetic prompts per generating dataset, tokenised by a BPE trained on other synthetic
rows: cached, uncached, and the right-padded full re-run that `greedy_generate` was before it
shared the cached decoding (mixed-length batches, so larger ones than the cached path's
equal-length groups). The synthetic prompts take few distinct lengths; `--spread` gives
nearly every prompt its own (filler words in front): the bad case for the cached path's
grouping, closer to real prompts, whose lengths spread widely.

    uv run python benchmarks/eval_decoding.py --out benchmarks/results/eval_decoding.json
    uv run python benchmarks/eval_decoding.py --realdata --presets cognate-tiny \
        --out benchmarks/results/eval_decoding_realdata.json
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
from cognate_train.realdata.generation import greedy_generate
from cognate_train.realdata.metrics import pad_id, right_pad
from cognate_train.realdata.synthetic import synthetic_rows
from cognate_train.realdata.templates import TEMPLATES
from cognate_train.realdata.tokenizer import train_bpe
from cognate_train.tasks import FAMILIES
from cognate_train.tokenizer import build_tokenizer

REALDATA = ("gsm8k", "svamp", "mbpp")  # the datasets whose metrics generate


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """The public functions with the cache off (their `_greedy` called with use_cache=False)."""
    greedy = evaluation._greedy
    evaluation._greedy = functools.partial(greedy, use_cache=False)
    try:
        yield
    finally:
        evaluation._greedy = greedy


def without_cache(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with uncached():
            return fn()

    return call


@torch.no_grad()
def right_padded_generate(
    model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int, max_len: int
) -> list[str]:
    """`greedy_generate` before it shared the cached decoding (commit 1e68002), the baseline:
    prompts sorted by length and right-padded in batches, every step re-running the whole
    prefix with a per-row cursor (no cache)."""
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, pad_id(tok)
    keep = max(1, max_len - max_new_tokens - 1)
    rows = [[bos, *ids[-keep:]] for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [""] * len(rows)
    with evaluation.EvalMode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            starts = [len(rows[i]) for i in chunk]
            ids, _ = right_pad([rows[i] + [pad] * max_new_tokens for i in chunk], pad, "cpu")
            lens = torch.tensor(starts)
            mask = (torch.arange(ids.shape[1])[None] < lens[:, None]).long()
            done = torch.zeros(len(chunk), dtype=torch.bool)
            arange = torch.arange(len(chunk))
            for _ in range(max_new_tokens):
                width = int(lens.max())
                out_ = model(input_ids=ids[:, :width], attention_mask=mask[:, :width])
                nxt = evaluation.logits_of(out_)[arange, lens - 1].argmax(dim=-1)
                live = ~done
                ids[arange[live], lens[live]] = nxt[live]
                mask[arange[live], lens[live]] = 1
                lens = lens + live.long()
                done |= nxt == eos
                if bool(done.all()):
                    break
            for row, i in enumerate(chunk):
                new = ids[row, starts[row] : int(lens[row])].tolist()
                new = new[: new.index(eos)] if eos in new else new
                out[i] = tok.decode(new, skip_special_tokens=False)
    return out


def model_for(preset: str, specialization: str, vocab: int) -> CognateForCausalLM:
    torch.manual_seed(0)
    config = CognateConfig.from_preset(preset, specialization, vocab_size=vocab)
    return CognateForCausalLM(config).eval()


Variants = dict[str, Callable[[], Any]]


def settings(args: argparse.Namespace, model: Any, tok: Any, examples: list) -> dict[str, Variants]:
    """name -> {"cached": call, "uncached": call, ...}, each call returning what it computed (to
    compare the paths). With --realdata, `examples` are prompts and a third variant, "padded",
    is the right-padded re-run that `greedy_generate` was before."""
    bs = args.batch_size
    out: dict[str, Callable[[], Any]] = {}
    extra: dict[str, Variants] = {}
    if args.realdata:
        max_len = model.config.max_seq_len
        for n in args.new_tokens:
            out[f"greedy_generate_{n}"] = functools.partial(
                greedy_generate, model, tok, examples, n, bs, max_len=max_len
            )
            extra[f"greedy_generate_{n}"] = {
                "padded": functools.partial(
                    right_padded_generate, model, tok, examples, n, bs, max_len
                )
            }
    else:
        prompts = [ex.prompt for ex in examples]
        out["exact_match"] = lambda: evaluation.exact_match(model, tok, examples, bs)
        for n in args.new_tokens:
            out[f"generate_{n}"] = lambda n=n: evaluation.generate_answers(
                model, tok, prompts, max_new_tokens=n, batch_size=bs
            )
    return {
        k: {"cached": fn, "uncached": without_cache(fn), **extra.get(k, {})}
        for k, fn in out.items()
    }


def run_model(args: argparse.Namespace, preset: str, tok: Any, examples: list) -> list[dict]:
    model = model_for(preset, args.specialization, len(tok))
    calls = settings(args, model, tok, examples)
    warm = functools.partial(evaluation.generate_answers, model, tok, ["1+1="], 2)
    warm(), without_cache(warm)()  # warm-up: one short call each
    times = {(k, v): [] for k, variants in calls.items() for v in variants}
    same: dict[str, bool] = dict.fromkeys(calls, True)
    for rep in range(args.reps):
        for name, variants in calls.items():
            results = {}
            for v in list(variants) if rep % 2 == 0 else list(variants)[::-1]:
                start = time.perf_counter()
                results[v] = variants[v]()
                times[(name, v)].append(time.perf_counter() - start)
            same[name] &= all(r == results["cached"] for r in results.values())
        print(f"[{preset}] rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    rows = []
    for name, variants in calls.items():
        c = times[(name, "cached")]
        row = {"preset": preset, "setting": name, "cached_s": statistics.median(c)}
        for v in variants:
            if v != "cached":
                t = times[(name, v)]
                row[f"{v}_s"] = statistics.median(t)
                speedup = "speedup" if v == "uncached" else f"speedup_{v}"
                row[speedup] = statistics.median(b / a for a, b in zip(c, t, strict=True))
        rows.append({**row, **{f"{v}_all": times[(name, v)] for v in variants}})
        rows[-1]["same_output"] = same[name]
    return rows


def write(args: argparse.Namespace, rows: list[dict], meta: dict[str, Any]) -> None:
    out = Path(args.out)
    result = {**meta, "rows": rows}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    padded = "padded_s" in rows[0]
    md = [
        "# Evaluation decoding: KV cache vs full re-run (CPU)",
        "",
        f"- command: `{meta['command']}`",
        f"- date (UTC): {meta['date']}; wall {meta['wall_s']:.1f} s",
        f"- machine: {meta['machine']}; commit {meta['commit']}",
        f"- load average before/after: {meta['load_average_before_after']}",
        f"- settings: {json.dumps(meta['settings'])}",
        "- speed-up: median over reps of uncached / cached wall time of the same call",
    ]
    if padded:
        md.append(
            "- real-data `greedy_generate` (synthetic prompts); right-padded: the algorithm it "
            "replaced (mixed-length batches padded on the right, whole prefix re-run every step)"
        )
    head = "| preset | call | cached s | uncached s | speed-up |"
    head += " right-padded s | speed-up vs right-padded |" if padded else ""
    md += ["", head + " same answers |", "|---" * (head.count("|")) + "|"]
    for r in rows:
        line = f"| {r['preset']} | {r['setting']} | {r['cached_s']:.3f} | {r['uncached_s']:.3f} "
        line += f"| {r['speedup']:.2f}x |"
        if padded:
            line += f" {r['padded_s']:.3f} | {r['speedup_padded']:.2f}x |"
        md.append(line + f" {r['same_output']} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def curriculum_prompts(args: argparse.Namespace) -> tuple[Any, list, list[str]]:
    """The project tokenizer, --n-val validation examples per curriculum family, their prompts."""
    _, examples = make_split(list(FAMILIES), n_train=0, n_val=args.n_val, seed=0)
    return build_tokenizer(), examples, [ex.prompt for ex in examples]


def realdata_prompts(args: argparse.Namespace) -> tuple[Any, list[str], list[str]]:
    """A BPE trained on 200 synthetic rows per generating dataset, and --n-val other rows'
    prompts per dataset (made-up text in the hub schemas: `realdata.synthetic`)."""
    train = [TEMPLATES[n].build(r) for n in REALDATA for r in synthetic_rows(n, 200, seed=1)]
    tok = train_bpe([r.prompt + r.answer for r in train], args.vocab_size)
    rows = [TEMPLATES[n].build(r) for n in REALDATA for r in synthetic_rows(n, args.n_val, 0)]
    prompts = [r.prompt for r in rows]
    if args.spread:  # prompt i gets i filler words in front: few prompts share a length
        prompts = ["x " * i + p for i, p in enumerate(prompts)]
    return tok, prompts, prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["cognate-tiny", "cognate-small"])
    p.add_argument("--specialization", default="reasoning")
    p.add_argument("--new-tokens", nargs="+", type=int, default=[8, 32, 64])
    p.add_argument("--n-val", type=int, default=4, help="validation prompts per family")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--realdata",
        action="store_true",
        help="time the real-data metrics' greedy_generate on synthetic gsm8k/svamp/mbpp prompts "
        "(--n-val per dataset, a BPE of --vocab-size), also against the right-padded re-run",
    )
    p.add_argument("--vocab-size", type=int, default=1024, help="--realdata: the BPE's size")
    p.add_argument(
        "--spread",
        action="store_true",
        help="--realdata: prompt i gets i filler words, so few prompts share a length (the "
        "cached path's bad case: batches of about one row; real prompts' lengths spread widely)",
    )
    p.add_argument("--out", default="benchmarks/results/eval_decoding.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok, examples, prompts = realdata_prompts(args) if args.realdata else curriculum_prompts(args)
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
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
            "families": list(REALDATA if args.realdata else FAMILIES),
            "prompts": len(prompts),
            "prompt_tokens_min_max": [min(lengths), max(lengths)],
            "distinct_prompt_lengths": len(set(lengths)),
        },
    }
    write(args, rows, meta)
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
