"""Speed of the Cognate model on CPU: LTM cost, tokens/s per preset, parallel scan vs loop.

Four measurements, each timed interleaved (A, B, A, B, ...) and reported as the median of
``--reps`` after one warm-up, in one process:

1. ``ltm``: forward+backward (training loss incl. deep supervision and ACT) at seq ``--seq``
   with the LTM on vs off, same preset otherwise. Goal from the issue: on/off <= 1.25.
2. ``presets``: tokens/s of each preset: eval forward (no_grad, ACT halting on) and a train
   step (forward + backward + AdamW step).
3. ``scan``: `linear_scan` (chunked parallel scan) vs the seed design's per-timestep Python
   loop (`linear_scan_reference`), forward and forward+backward, at several lengths.
4. ``act`` (optional, ``--act-steps N``): train the tiny preset's "reasoning" and "speed"
   specializations for N AdamW steps on a synthetic task (random tokens followed by their
   copy: the copied half is predictable, the first half is not) and report the mean number
   of refinement cycles each uses at inference.

    OMP_NUM_THREADS=1 python benchmarks/model_speed.py --out benchmarks/results/model_speed.json

The machine is shared: the load average before and after is recorded next to the figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from cognate_model import CognateConfig, CognateForCausalLM, linear_scan, linear_scan_reference


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_runs(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds of every run of each fn: warm-up once, then A, B, A, B, ... `reps` times (run i
    of A and run i of B are neighbours in time: their ratio is a paired measurement)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_timed(fn))
    return times


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds of each fn, warm-up once, then run A, B, A, B, ... `reps` times."""
    return {k: statistics.median(v) for k, v in interleaved_runs(fns, reps).items()}


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repetitions of num's time / den's time in the same repetition."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def train_step_fn(model: CognateForCausalLM, ids: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, return_metrics=False).loss.backward()

    return step


def bench_ltm(preset: str, batch: int, seq: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    on = CognateForCausalLM(CognateConfig.from_preset(preset, max_seq_len=max(seq, 512))).train()
    torch.manual_seed(0)
    off = CognateForCausalLM(
        CognateConfig.from_preset(preset, use_ltm=False, max_seq_len=max(seq, 512))
    ).train()
    ids = torch.randint(0, on.config.vocab_size, (batch, seq))
    features = torch.randn(batch, seq, on.config.d_model, requires_grad=True)

    def memory_alone() -> None:  # the LTM + gate branch by itself, forward + backward
        out, _, _ = on.model.memory(features)
        out.sum().backward()

    t = interleaved(
        {
            "ltm_on": train_step_fn(on, ids),
            "ltm_off": train_step_fn(off, ids),
            "memory_alone": memory_alone,
        },
        reps,
    )
    return {
        "preset": preset,
        "batch": batch,
        "seq": seq,
        "seconds_fwd_bwd_ltm_on": t["ltm_on"],
        "seconds_fwd_bwd_ltm_off": t["ltm_off"],
        "ratio_on_over_off": t["ltm_on"] / t["ltm_off"],
        "seconds_memory_branch_fwd_bwd": t["memory_alone"],
        "memory_branch_share_of_step": t["memory_alone"] / t["ltm_on"],
        "params_on": sum(p.numel() for p in on.parameters()),
        "params_off": sum(p.numel() for p in off.parameters()),
    }


def bench_preset(preset: str, batch: int, seq: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    config = CognateConfig.from_preset(preset, max_seq_len=max(seq, 512))
    model = CognateForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(ids, return_metrics=False, use_cache=False)  # as before the cache

    def train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids, return_metrics=False).loss.backward()
        opt.step()

    t = interleaved({"forward": forward, "train_step": train}, reps)
    tokens = batch * seq
    return {
        "preset": preset,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "seq": seq,
        "forward_seconds": t["forward"],
        "forward_tokens_per_s": tokens / t["forward"],
        "train_step_seconds": t["train_step"],
        "train_tokens_per_s": tokens / t["train_step"],
    }


def bench_scan(batch: int, seq: int, channels: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    logit = torch.randn(channels, requires_grad=True)
    x = torch.randn(batch, seq, channels, requires_grad=True)

    def parallel(backward: bool) -> Callable[[], None]:
        def run() -> None:
            a = torch.sigmoid(logit)
            h = linear_scan(torch.log(a), (1 - a) * x, 64)
            if backward:
                h.sum().backward()

        return run

    def loop(backward: bool) -> Callable[[], None]:
        def run() -> None:
            h = linear_scan_reference(torch.sigmoid(logit), x)
            if backward:
                h.sum().backward()

        return run

    with torch.no_grad():
        fwd = interleaved({"parallel": parallel(False), "loop": loop(False)}, reps)
    both = interleaved({"parallel": parallel(True), "loop": loop(True)}, reps)
    return {
        "batch": batch,
        "seq": seq,
        "channels": channels,
        "forward_parallel_s": fwd["parallel"],
        "forward_loop_s": fwd["loop"],
        "forward_speedup": fwd["loop"] / fwd["parallel"],
        "fwd_bwd_parallel_s": both["parallel"],
        "fwd_bwd_loop_s": both["loop"],
        "fwd_bwd_speedup": both["loop"] / both["parallel"],
    }


def copy_batch(batch: int, half: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    first = torch.randint(1, vocab, (batch, half), generator=gen)
    return torch.cat((first, first), 1)


def bench_act(steps: int, batch: int, half: int) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": steps, "batch": batch, "seq": 2 * half}
    for spec in ("reasoning", "speed"):
        torch.manual_seed(0)
        config = CognateConfig.from_preset("cognate-tiny", spec)
        model = CognateForCausalLM(config).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            ids = copy_batch(batch, half, config.vocab_size, gen)
            opt.zero_grad(set_to_none=True)
            model(ids, labels=ids, return_metrics=False).loss.backward()
            opt.step()
        model.eval()
        ids = copy_batch(64, half, config.vocab_size, torch.Generator().manual_seed(1))
        with torch.no_grad():
            res = model(ids, labels=ids)
        steps_tok = res.act_steps.float()
        out[spec] = {
            "trm_cycles": config.trm_cycles,
            "act_threshold": config.act_threshold,
            "ponder_weight": config.ponder_weight,
            "act_steps_mean": res.act_steps_mean.item(),
            "act_steps_std": res.act_steps_std.item(),
            "act_steps_mean_first_half": steps_tok[:, :half].mean().item(),
            "act_steps_mean_copied_half": steps_tok[:, half:].mean().item(),
            "lm_loss": res.lm_loss.item(),
            "accuracy_copied_half": (
                (res.logits[:, half - 1 : -1].argmax(-1) == ids[:, half:]).float().mean().item()
            ),
        }
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Cognate model speed (CPU)",
        "",
        f"- command: `{result['command']}`",
        f"- date (UTC): {result['date']}",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
        f"with {m['torch_threads']} thread(s), Python {m['python']}",
        f"- load average before/after: {result['loadavg_before']} / {result['loadavg_after']} "
        "(a shared machine: other jobs ran at the same time; ratios from interleaved runs are "
        "more trustworthy than absolute times)",
        f"- median of {result['reps']} interleaved repetitions after one warm-up",
        "",
        "## LTM cost: forward+backward, LTM on vs off",
        "",
        "| preset | batch x seq | LTM on (s) | LTM off (s) | on / off | LTM branch alone (s) "
        "| branch / step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["ltm"]:
        lines.append(
            f"| {r['preset']} | {r['batch']} x {r['seq']} | {r['seconds_fwd_bwd_ltm_on']:.3f} | "
            f"{r['seconds_fwd_bwd_ltm_off']:.3f} | {r['ratio_on_over_off']:.3f} | "
            f"{r['seconds_memory_branch_fwd_bwd']:.3f} | "
            f"{100 * r['memory_branch_share_of_step']:.1f}% |"
        )
    lines += [
        "",
        "Goal: on / off <= 1.25. The branch-alone column times the LTM + MAG gate module by "
        "itself (forward + backward on random features of the backbone's shape); it is less "
        "exposed to noise from other jobs than the difference of two full steps.",
        "",
        "## Tokens per second by preset",
        "",
        "| preset | params | batch x seq | forward tok/s | train step tok/s |",
        "|---|---|---|---|---|",
    ]
    for r in result["presets"]:
        lines.append(
            f"| {r['preset']} | {r['params']:,} | {r['batch']} x {r['seq']} | "
            f"{r['forward_tokens_per_s']:,.0f} | {r['train_tokens_per_s']:,.0f} |"
        )
    lines += [
        "",
        "Forward: eval mode, no_grad, ACT halting on. Train step: loss (deep supervision over "
        "every cycle + ACT + gate terms), backward, AdamW step.",
        "",
        "## Parallel scan vs the per-timestep Python loop",
        "",
        "| batch x seq x channels | fwd parallel (ms) | fwd loop (ms) | speed-up | "
        "fwd+bwd parallel (ms) | fwd+bwd loop (ms) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["scan"]:
        lines.append(
            f"| {r['batch']} x {r['seq']} x {r['channels']} | {1e3 * r['forward_parallel_s']:.2f} "
            f"| {1e3 * r['forward_loop_s']:.2f} | {r['forward_speedup']:.1f}x | "
            f"{1e3 * r['fwd_bwd_parallel_s']:.2f} | {1e3 * r['fwd_bwd_loop_s']:.2f} | "
            f"{r['fwd_bwd_speedup']:.1f}x |"
        )
    if result.get("act"):
        a = result["act"]
        lines += [
            "",
            f"## ACT cycles after {a['steps']} training steps (cognate-tiny, copy task, "
            f"batch {a['batch']} x seq {a['seq']})",
            "",
            "| specialization | max cycles | threshold | ponder weight | mean cycles (std) | "
            "first half | copied half | copied-half accuracy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for spec in ("reasoning", "speed"):
            r = a[spec]
            lines.append(
                f"| {spec} | {r['trm_cycles']} | {r['act_threshold']} | {r['ponder_weight']} | "
                f"{r['act_steps_mean']:.2f} ({r['act_steps_std']:.2f}) | "
                f"{r['act_steps_mean_first_half']:.2f} | {r['act_steps_mean_copied_half']:.2f} | "
                f"{r['accuracy_copied_half']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/model_speed.json")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--with-25m", action="store_true", help="also time cognate-25m (slow on CPU)")
    p.add_argument("--act-steps", type=int, default=0, help="train steps for the ACT comparison")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = p.parse_args(argv)
    if args.reps < 1 or args.threads < 1 or args.seq < 2 or args.act_steps < 0:
        print("error: --reps, --threads, --seq and --act-steps must be positive", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    result: dict[str, Any] = {
        "command": "python " + " ".join([os.path.relpath(__file__), *(argv or sys.argv[1:])]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "reps": args.reps,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    seq = 64 if args.quick else args.seq
    ltm_runs = [("cognate-tiny", 2)] if args.quick else [("cognate-small", 4)]
    preset_runs = [("cognate-tiny", 8), ("cognate-small", 4)]
    if args.with_25m and not args.quick:
        ltm_runs.append(("cognate-25m", 1))
        preset_runs.append(("cognate-25m", 1))
    result["ltm"] = []
    for preset, batch in ltm_runs:
        result["ltm"].append(bench_ltm(preset, batch, seq, args.reps))
        print(json.dumps(result["ltm"][-1]), flush=True)
    result["presets"] = []
    for preset, batch in preset_runs:
        result["presets"].append(bench_preset(preset, batch, seq, args.reps))
        print(json.dumps(result["presets"][-1]), flush=True)
    scan_sizes = [(2, 64, 16)] if args.quick else [(8, 512, 64), (8, 2048, 64), (4, 512, 160)]
    result["scan"] = []
    for b, t, c in scan_sizes:
        result["scan"].append(bench_scan(b, t, c, args.reps))
        print(json.dumps(result["scan"][-1]), flush=True)
    if args.act_steps:
        result["act"] = bench_act(args.act_steps, batch=16, half=16)
        print(json.dumps(result["act"]), flush=True)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(result))
    print(f"wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
