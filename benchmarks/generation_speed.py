"""Generation speed: Cognate with its cache, without, and a same-shape Llama with its cache.

For every model (``cognate-tiny``, ``cognate-25m`` and a ``LlamaForCausalLM`` of the same
width, depth, heads, SwiGLU width and vocabulary), batch (1, 8) and number of new tokens
(32, 128, 256, 1024, from a 32-token prompt), `generate()` runs greedily with exactly that
many new tokens (no EOS). Runs are interleaved (every setting once, then again, ...) and the
median of ``--reps`` is reported, after one warm-up of each model. Figures:

- tokens/s = batch * new tokens / wall time of the whole `generate()` call (prefill included);
- ms/token = wall time / new tokens (one decoding step for the whole batch);
- flatness = ms/token at 1024 / ms/token at 32 (goal <= 1.3 with the cache);
- Cognate cached / Llama tokens/s at 256 new tokens (goal >= 1 / 1.5).

Where the gap to Llama comes from: the step split times one cached decoding step of
Cognate's backbone alone (embedding, blocks, norm, LTM + gate, LM head: what a Llama-like
model does), the full step (plus the TRM recursion: trm_cycles x (micro_steps + 1) block
calls and the ACT head) and the Llama's step, called directly (no `generate`), interleaved,
at each batch size (``--split-steps``, ``--split-reps``); and counts the work of one step
(multiply-adds with `FlopCounterMode`, block calls with a hook on the recursion's block).

Uncached Cognate re-reads the whole prefix every step: its cost grows with length; the slow
settings are skipped by ``--skip-uncached`` (see its default). Each model is warmed up with
one short generate; the timed runs are not.

    OMP_NUM_THREADS=1 python benchmarks/generation_speed.py \
        --out benchmarks/results/generation_speed.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from cognate_model import CognateCache, CognateConfig, CognateForCausalLM
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

PROMPT = 32


def cognate(preset: str, max_len: int) -> CognateForCausalLM:
    torch.manual_seed(0)
    config = CognateConfig.from_preset(preset, max_seq_len=max_len)
    return CognateForCausalLM(config).eval()


def llama_like(config: CognateConfig) -> LlamaForCausalLM:
    """A LlamaForCausalLM with Cognate's backbone shape (full attention, its DynamicCache)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len,
        tie_word_embeddings=True,
        rms_norm_eps=config.rms_norm_eps,
    )
    return LlamaForCausalLM(cfg).eval()


def generate_fn(model: Any, batch: int, new: int, use_cache: bool) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(batch * 10_000 + new)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT), generator=gen)

    @torch.no_grad()
    def run() -> None:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert out.shape == (batch, PROMPT + new)

    return run


def backbone_step(model: CognateForCausalLM, ids: torch.Tensor, cache: CognateCache) -> None:
    """What a Llama-like model does: embedding, blocks, norm (+ LTM and gate), LM head."""
    y = model.model(ids, past_key_values=cache).last_hidden_state
    model.lm_logits(y[:, -1:])


def step_split(
    model: CognateForCausalLM, llama: LlamaForCausalLM, batch: int, steps: int, reps: int
) -> dict[str, float]:
    """ms per cached decoding step after a 32-token prompt, interleaved: Cognate's backbone +
    LM head alone ("backbone"), the full model ("full": + the TRM recursion and ACT head), and
    the same-shape Llama ("llama"), all called directly (no `generate` around them)."""
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT + steps))

    @torch.no_grad()
    def decode(kind: str) -> None:
        cache = DynamicCache() if kind == "llama" else CognateCache(model.config)
        for t in range(PROMPT, PROMPT + steps):
            chunk = ids[:, :PROMPT] if t == PROMPT else ids[:, t - 1 : t]
            if kind == "llama":
                llama(chunk, past_key_values=cache, use_cache=True, logits_to_keep=1)
            elif kind == "full":
                model(chunk, past_key_values=cache, return_metrics=False, logits_to_keep=1)
            else:
                backbone_step(model, chunk, cache)

    kinds = ("full", "backbone", "llama")
    times = interleaved({k: (lambda k=k: decode(k)) for k in kinds}, reps)
    return {k: 1000 * v / steps for k, v in times.items()}


@torch.no_grad()
def step_work(model: CognateForCausalLM, llama: LlamaForCausalLM) -> dict[str, Any]:
    """Multiply-adds of one cached decoding step (batch 1, after 32 tokens; FlopCounterMode:
    matmuls and attention) and the number of block calls, for the backbone (+ LM head), the
    full Cognate step and the Llama step."""
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT + 1))
    cognate_cache, llama_cache = CognateCache(model.config), DynamicCache()
    model(ids[:, :PROMPT], past_key_values=cognate_cache, return_metrics=False)
    llama(ids[:, :PROMPT], past_key_values=llama_cache, use_cache=True)
    calls = {"n": 0}
    hook = model.recursion.block.register_forward_pre_hook(
        lambda *_: calls.__setitem__("n", calls["n"] + 1)
    )
    macs = {}
    for kind, run in (
        ("full", lambda: model(ids[:, PROMPT:], past_key_values=copy.deepcopy(cognate_cache))),
        ("backbone", lambda: backbone_step(model, ids[:, PROMPT:], copy.deepcopy(cognate_cache))),
        ("llama", lambda: llama(ids[:, PROMPT:], past_key_values=llama_cache, use_cache=True)),
    ):
        with FlopCounterMode(display=False) as counter:
            run()
        macs[kind] = counter.get_total_flops() // 2
    hook.remove()
    cfg = model.config
    return {
        "macs_per_token": macs,
        "block_calls": {"backbone": cfg.n_layers, "recursion": calls["n"], "llama": cfg.n_layers},
        "trm_cycles": cfg.trm_cycles,
        "trm_micro_steps": cfg.trm_micro_steps,
    }


def interleaved(
    fns: dict[str, Callable[[], Any]],
    reps: int,
    warm_up: bool = True,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Median seconds of each fn, run A, B, C, A, B, C, ... (after one warm-up each if asked).

    progress: called with the medians so far after every timed run (partial results)."""
    for fn in fns.values() if warm_up else ():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
            if progress is not None:
                progress({k: statistics.median(v) for k, v in times.items() if v})
    return {k: statistics.median(v) for k, v in times.items()}


def settings(args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """name -> run, for every (model, mode, batch, new tokens) not skipped."""
    max_len = PROMPT + max(args.new)
    fns: dict[str, Callable[[], None]] = {}
    for preset in args.presets:
        model = cognate(preset, max_len)
        llama = llama_like(model.config)
        for warm_up in (generate_fn(model, 1, 8, True), generate_fn(model, 1, 8, False)):
            warm_up()
        generate_fn(llama, 1, 8, True)()
        for batch in args.batch:
            for new in args.new:
                if f"{preset}:{batch}:{new}" in args.skip:
                    continue
                fns[f"{preset}|cognate cached|{batch}|{new}"] = generate_fn(model, batch, new, True)
                if f"{preset}:{batch}:{new}" not in args.skip_uncached:
                    fns[f"{preset}|cognate uncached|{batch}|{new}"] = generate_fn(
                        model, batch, new, False
                    )
                fns[f"{preset}|llama cached|{batch}|{new}"] = generate_fn(llama, batch, new, True)
    return fns


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| preset | model | batch | new tokens | seconds | tokens/s | ms/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['model']} | {r['batch']} | {r['new']} | {r['seconds']:.2f} "
            f"| {r['tokens_per_s']:.1f} | {r['ms_per_token']:.2f} |"
        )
    return lines


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flatness (ms/token 1024 vs 32) and Cognate cached / Llama at 256, per preset and batch."""
    by = {(r["preset"], r["model"], r["batch"], r["new"]): r for r in rows}
    out: dict[str, Any] = {}
    for preset, model, batch, _ in by:
        key = f"{preset}|{model}|{batch}"
        lo, hi = by.get((preset, model, batch, 32)), by.get((preset, model, batch, 1024))
        if lo and hi:
            out.setdefault(key, {})["flatness_1024_vs_32"] = hi["ms_per_token"] / lo["ms_per_token"]
        ours, ref = (
            by.get((preset, model, batch, 256)),
            by.get((preset, "llama cached", batch, 256)),
        )
        if ours and ref and model != "llama cached":
            out.setdefault(key, {})["tokens_per_s_vs_llama_256"] = (
                ours["tokens_per_s"] / ref["tokens_per_s"]
            )
    return out


def to_rows(medians: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for name, seconds in medians.items():
        preset, model, batch, new = name.split("|")
        batch, new = int(batch), int(new)
        rows.append(
            dict(
                preset=preset,
                model=model,
                batch=batch,
                new=new,
                seconds=seconds,
                tokens_per_s=batch * new / seconds,
                ms_per_token=1000 * seconds / new,
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["cognate-tiny", "cognate-25m"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--new", nargs="+", type=int, default=[32, 128, 256, 1024])
    p.add_argument(
        "--skip-uncached",
        nargs="*",
        default=[
            "cognate-tiny:8:1024",
            "cognate-25m:1:1024",
            "cognate-25m:8:128",
            "cognate-25m:8:256",
            "cognate-25m:8:1024",
        ],
        help="PRESET:BATCH:NEW settings not run without the cache (minutes each)",
    )
    p.add_argument("--skip", nargs="*", default=[], help="PRESET:BATCH:NEW settings not run at all")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--split-steps", type=int, default=256)
    p.add_argument("--split-reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/generation_speed.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = _dt.datetime.now(_dt.UTC)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def partial(medians: dict[str, float]) -> None:
        out.with_suffix(".partial.json").write_text(json.dumps(to_rows(medians), indent=1))

    split, work = {}, {}
    for preset in args.presets:
        model = cognate(preset, PROMPT + args.split_steps)
        llama = llama_like(model.config)
        work[preset] = step_work(model, llama)
        for batch in args.batch:
            split[f"{preset}|{batch}"] = step_split(
                model, llama, batch, args.split_steps, args.split_reps
            )
    print("step split (ms):", split, "work:", work, flush=True)
    medians = interleaved(settings(args), args.reps, warm_up=False, progress=partial)
    rows = to_rows(medians)
    result = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "date_utc": started.strftime("%Y-%m-%d %H:%M"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_before_after": [load_before, os.getloadavg()],
        "settings": vars(args) | {"prompt_tokens": PROMPT, "greedy": True},
        "rows": rows,
        "summary": summarise(rows),
        "step_split_ms": split,
        "step_work": work,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    md = [
        "# Generation speed (CPU)",
        "",
        f"- command: `{result['command']}`",
        f"- date (UTC): {result['date_utc']}; wall {result['wall_seconds']} s",
        f"- machine: {result['machine']}, torch {torch.__version__}, {args.threads} thread(s)",
        f"- load average before/after: {result['load_average_before_after']}",
        f"- prompt {PROMPT} tokens, greedy, exactly N new tokens; median of {args.reps} "
        "interleaved runs; uncached skipped: " + (", ".join(args.skip_uncached) or "none"),
        "",
        *table(rows),
        "",
        "## Summary",
        "",
        "```",
        json.dumps(result["summary"], indent=2),
        "```",
        "",
        f"## One cached step, {args.split_steps} steps after a {PROMPT}-token prompt (ms, "
        f"median of {args.split_reps} interleaved; key preset|batch)",
        "",
        "```",
        json.dumps(split, indent=2),
        "```",
        "",
        "## Work of one cached step (batch 1): multiply-adds and block calls",
        "",
        "```",
        json.dumps(work, indent=2),
        "```",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
