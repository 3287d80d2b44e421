"""Long-range recall: no memory vs the EMA memory vs Titans' neural memory, and their cost.

Task (synthetic, generated here). A sequence is P key-value pairs, then a stream of
distractor tokens, then the P keys again in a random order, each after a query marker:

    k1 v1 k2 v2 ... kP vP | d d d ... d (gap tokens) | Q ki vi  Q kj vj ...

and the model must produce each value after its key. Keys are distinct within a sequence,
values are drawn independently, so guessing scores 1 / n_values (chance). Only the answer
tokens carry a label. The gap is measured in units of the attention reach
R = window_size x n_layers: at gap >= R the first query is at least R tokens after the last
pair, so stacked sliding-window attention alone cannot see the answer (the recursion's
cross-attention adds one more window; 1x is therefore the edge case, 4x and 16x are well
beyond). Training draws one gap per batch, log-uniform in [R/2, 16R]; evaluation runs at 1x,
4x and 16x on held-out sequences.

Models: the same small Cognate model with (a) no long-term memory, (b) the EMA memory after
the backbone (`ltm_type="ema"`) and (c) Titans' neural memory in MAG form in the last layer
(`ltm_type="titans"`). Parameter counts are equalised: (a) gets a wider SwiGLU and (b) a
wider memory stream, chosen to land closest to (c)'s count.

Cost: forward + backward time of the three at seq 512, 1024, 2048 and 4096 (interleaved,
median of --reps; the ratios are medians of per-repetition ratios), the memory branch alone, and the activation memory saved for backward
(bytes of the distinct tensors autograd keeps; deterministic, unlike RSS on a shared machine).

    OMP_NUM_THREADS=1 uv run python benchmarks/long_recall.py --out benchmarks/results/long_recall.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_model.configuration_cognate import PRESETS
from cognate_model.memory import MemoryAsGate
from cognate_model.titans import NeuralMemory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_speed import interleaved_runs, machine, paired_ratio, train_step_fn  # noqa: E402

KINDS = ("none", "ema", "titans", "titans_noconv")  # the last: an ablation, not run by default
DEFAULT_KINDS = KINDS[:3]
IGNORE = -100


@dataclass(frozen=True)
class RecallTask:
    """Token ids: 0 the query marker, then keys, values, distractors."""

    n_pairs: int = 4
    n_keys: int = 32
    n_values: int = 16
    n_distractors: int = 64

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_keys + self.n_values + self.n_distractors

    @property
    def first_value(self) -> int:
        return 1 + self.n_keys

    def batch(self, gen: torch.Generator, size: int, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), each (size, 2P + gap + 3P); labels -100 except the answers."""
        P = self.n_pairs
        keys = torch.rand(size, self.n_keys, generator=gen).argsort(1)[:, :P] + 1
        values = torch.randint(0, self.n_values, (size, P), generator=gen) + self.first_value
        first_distractor = self.first_value + self.n_values
        stream = torch.randint(0, self.n_distractors, (size, gap), generator=gen)
        order = torch.rand(size, P, generator=gen).argsort(1)
        qk, qv = keys.gather(1, order), values.gather(1, order)
        queries = torch.stack((torch.zeros_like(qk), qk, qv), -1).flatten(1)
        pairs = torch.stack((keys, values), -1).flatten(1)
        ids = torch.cat((pairs, stream + first_distractor, queries), 1)
        labels = torch.full_like(ids, IGNORE)
        labels[:, -3 * P + 2 :: 3] = qv
        return ids, labels


def base_config(task: RecallTask, args: argparse.Namespace, **overrides: Any) -> CognateConfig:
    """The small model every variant shares (tiny preset, one cheap refinement cycle)."""
    values = dict(
        vocab_size=task.vocab_size,
        max_seq_len=max(4096, 2 + 16 * args.window * args.layers + 8 * task.n_pairs),
        n_layers=args.layers,
        window_size=args.window,
        ltm_chunk_size=args.chunk,
        trm_cycles=1,
        trm_micro_steps=1,
        use_act=False,
    )
    values.update(overrides)
    return CognateConfig.from_preset(args.preset, **values)


def n_params(config: CognateConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in CognateForCausalLM(config).parameters())


def configs(task: RecallTask, args: argparse.Namespace) -> dict[str, CognateConfig]:
    """none / ema / titans at (nearly) equal parameter count: titans sets the target."""
    mag = {"mag_layers": args.mag_layers} if args.mag_layers else {}
    titans = base_config(task, args, use_ltm=True, ltm_type="titans", **mag)
    target = n_params(titans)

    def closest(make: Callable[[int], CognateConfig], lo: int) -> CognateConfig:
        """The count is affine in the width v: solve from two points, check the neighbours."""
        a, b = n_params(make(lo)), n_params(make(lo + 1))
        guess = lo + round((target - a) / (b - a))
        best = min(
            range(max(lo, guess - 1), guess + 2), key=lambda v: abs(n_params(make(v)) - target)
        )
        return make(best)

    d_ff = base_config(task, args).d_ff
    none = closest(lambda v: base_config(task, args, use_ltm=False, d_ff=v), d_ff)
    ema = closest(lambda v: base_config(task, args, use_ltm=True, ltm_type="ema", d_memory=v), 1)
    noconv = base_config(task, args, use_ltm=True, ltm_type="titans", ltm_conv_size=1, **mag)
    return {"none": none, "ema": ema, "titans": titans, "titans_noconv": noconv}


def log_uniform_gap(gen: torch.Generator, lo: float, hi: float) -> int:
    u = torch.rand((), generator=gen).item()
    return int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))


@torch.no_grad()
def accuracy(model: CognateForCausalLM, task: RecallTask, gap: int, n: int, seed: int) -> float:
    """Share of answers whose highest-scoring value token is right (argmax over values)."""
    model.eval()
    ids, labels = task.batch(torch.Generator().manual_seed(seed), n, gap)
    logits = model(ids, return_metrics=False).logits[:, :-1]
    targets = labels[:, 1:]
    answer = targets != IGNORE
    lo = task.first_value
    guess = logits[..., lo : lo + task.n_values].argmax(-1) + lo
    return (guess[answer] == targets[answer]).float().mean().item()


def train_and_eval(
    kind: str, config: CognateConfig, task: RecallTask, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = CognateForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1000 + seed)
    reach = args.window * args.layers
    start = time.perf_counter()
    losses = []
    for step in range(args.steps):
        for group in opt.param_groups:  # linear warmup over the first 5%
            group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.steps // 20))
        gap = log_uniform_gap(gen, reach / 2, 16 * reach)
        ids, labels = task.batch(gen, args.batch, gap)
        loss = model(ids, labels=labels, return_metrics=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        model.train()
    seconds = time.perf_counter() - start
    acc = {
        f"{m}x": accuracy(model, task, m * reach, args.eval_size, 10_000 + seed)
        for m in args.multiples
    }
    tail = losses[-max(1, args.steps // 10) :]
    print(f"{kind} seed {seed}: {acc} ({seconds:.0f} s)", flush=True)
    return {
        "kind": kind,
        "seed": seed,
        "accuracy": acc,
        "final_loss": sum(tail) / len(tail),
        "loss_curve": [round(sum(c) / len(c), 4) for c in _pieces(losses, 10)],
        "memory_diagnostics": memory_diagnostics(model, task, 4 * reach, seed),
        "train_seconds": seconds,
    }


def _pieces(values: list[float], n: int) -> list[list[float]]:
    size = max(1, len(values) // n)
    return [values[i : i + size] for i in range(0, len(values), size)]


@torch.no_grad()
def memory_diagnostics(
    model: CognateForCausalLM, task: RecallTask, gap: int, seed: int
) -> dict[str, float]:
    """The model's ltm/* metrics on a held-out batch at gap 4R (titans: surprise, gate mean and
    memory norm per MAG layer; ema: gate mean, usage, memory norm); empty without memory."""
    model.eval()
    ids, _ = task.batch(torch.Generator().manual_seed(20_000 + seed), 32, gap)
    metrics = model(ids).metrics
    return {k: round(v, 5) for k, v in metrics.items() if k.startswith("ltm/")}


def saved_bytes(model: CognateForCausalLM, ids: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids, return_metrics=False).loss
    del loss
    return sum(seen.values())


def cost(cfgs: dict[str, CognateConfig], task: RecallTask, args: argparse.Namespace) -> list[dict]:
    """Every (model, sequence length) timed in one interleaved loop, so the ratios between
    models and between lengths are both paired per repetition (neighbours in time)."""
    models = {}
    for kind, config in cfgs.items():
        torch.manual_seed(0)
        models[kind] = CognateForCausalLM(config).train()
    inputs, fns = {}, {}
    for seq in args.cost_seqs:
        ids = torch.randint(0, task.vocab_size, (args.cost_batch, seq))
        feats = torch.randn(args.cost_batch, seq, cfgs["titans"].d_model, requires_grad=True)
        inputs[seq] = ids
        fns.update({f"{kind}@{seq}": train_step_fn(m, ids) for kind, m in models.items()})
        for k in ("ema", "titans"):
            fns[f"{k}_branch@{seq}"] = memory_branch(models[k], feats)
    runs = interleaved_runs(fns, args.reps)
    names = [*cfgs, "ema_branch", "titans_branch"]
    rows = []
    for n, seq in enumerate(args.cost_seqs):
        row: dict[str, Any] = {"seq": seq, "batch": args.cost_batch}
        for name in names:
            row[f"{name}_fwd_bwd_s"] = statistics.median(runs[f"{name}@{seq}"])
        for kind, model in models.items():
            row[f"{kind}_saved_bytes"] = saved_bytes(model, inputs[seq])
        for kind in ("titans", "ema"):
            row[f"{kind}_over_none"] = paired_ratio(runs, f"{kind}@{seq}", f"none@{seq}")
        if n:  # time ratio to the previous length, paired per repetition
            prev = args.cost_seqs[n - 1]
            for name in names:
                ratio = paired_ratio(runs, f"{name}@{seq}", f"{name}@{prev}")
                row[f"{name}_fwd_bwd_ratio_vs_prev_seq"] = ratio
        print(f"cost seq {seq}: {row}", flush=True)
        rows.append(row)
    return rows


def memory_branch(model: CognateForCausalLM, feats: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of the memory module alone (EMA + gate, or one Titans memory)."""
    memory = next(m for m in model.modules() if isinstance(m, (MemoryAsGate, NeuralMemory)))

    def run() -> None:
        out = memory(feats)[0]
        out.sum().backward()

    return run


def summarise(runs: list[dict[str, Any]], multiples: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        if not mine:
            continue
        table[kind] = {}
        for m in multiples:
            accs = [r["accuracy"][f"{m}x"] for r in mine]
            table[kind][f"{m}x"] = {
                "mean": statistics.mean(accs),
                "min": min(accs),
                "max": max(accs),
                "per_seed": accs,
            }
    return table


def accuracy_table(accuracy: dict[str, Any]) -> list[str]:
    if not accuracy:
        return []
    gaps = next(iter(accuracy.values()))
    lines = [
        "## Accuracy (mean over seeds, [min, max])",
        "",
        "| memory | " + " | ".join(f"gap {k}" for k in gaps) + " |",
        "|---|" + "---|" * len(gaps),
    ]
    for kind, row in accuracy.items():
        cells = [f"{c['mean']:.3f} [{c['min']:.3f}, {c['max']:.3f}]" for c in row.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    chance = result["chance"]
    lines = [
        "# Long-range recall: no memory vs EMA vs Titans (CPU)",
        "",
        f"- command: `{result['command']}`",
        f"- date (UTC): {result['date']}; total {result['total_seconds']:.0f} s",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with "
        f"{m['torch_threads']} thread(s); load average before/after "
        f"{result['loadavg_before']} / {result['loadavg_after']} (shared machine)",
        f"- task: {s['n_pairs']} key-value pairs, {s['n_keys']} keys, {s['n_values']} values "
        f"(chance {chance:.4f}), {s['n_distractors']} distractor tokens; attention reach "
        f"R = window_size x n_layers = {s['reach']}; training gap log-uniform in "
        f"[R/2, 16R], {s['steps']} AdamW steps (lr {s['lr']}, batch {s['batch']}), "
        f"seeds {s['seeds']}; evaluation on {s['eval_size']} held-out sequences per gap",
        f"- model: {s.get('preset', 'cognate-tiny')} with {s['layers']} layers, window "
        f"{s['window']}, Titans chunk {s['chunk']} (MAG in the last layer unless named)",
        "- parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in result["params"].items())
        + " (none: d_ff widened, ema: d_memory widened, to match titans)",
        "",
    ]
    lines += accuracy_table(result["accuracy"])
    if result.get("cost"):
        lines += [
            "",
            f"## Cost: forward + backward, batch {result['cost'][0]['batch']}, median of "
            f"{s['reps']} interleaved repetitions (ratios: the median of the per-repetition "
            "ratios)",
            "",
            "| seq | none (s) | ema (s) | titans (s) | titans / none | ema / none | titans "
            "branch (s) | ema branch (s) | saved for backward none / ema / titans (MiB) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["cost"]:
            mib = " / ".join(f"{r[f'{k}_saved_bytes'] / 2**20:.1f}" for k in DEFAULT_KINDS)
            lines.append(
                f"| {r['seq']} | {r['none_fwd_bwd_s']:.3f} | {r['ema_fwd_bwd_s']:.3f} | "
                f"{r['titans_fwd_bwd_s']:.3f} | {r['titans_over_none']:.2f} | "
                f"{r['ema_over_none']:.2f} | {r['titans_branch_fwd_bwd_s']:.3f} | "
                f"{r['ema_branch_fwd_bwd_s']:.3f} | {mib} |"
            )
        lines += [
            "",
            "Time ratio from the previous row to this one, paired per repetition (linear: the "
            "sequence ratio):",
            "",
            "| seq | x seq | none | ema | titans | ema branch | titans branch |",
            "|---|---|---|---|---|---|---|",
        ]
        keys = ("none", "ema", "titans", "ema_branch", "titans_branch")
        for prev, r in zip(result["cost"], result["cost"][1:], strict=False):
            cells = [f"{r[f'{k}_fwd_bwd_ratio_vs_prev_seq']:.2f}" for k in keys]
            factor = r["seq"] / prev["seq"]
            lines.append(f"| {r['seq']} | {factor:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/long_recall.json")
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--preset",
        default="cognate-tiny",
        choices=sorted(PRESETS),
        help="model preset (d_model, heads, d_ff, vocab aside)",
    )
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument(
        "--mag-layers", default="", help="titans: comma-separated MAG layers (default: the last)"
    )
    p.add_argument("--multiples", default="1,4,16")
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--cost-seqs", default="512,1024,2048,4096")
    p.add_argument("--cost-batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--skip-train", action="store_true", help="the cost measurement only")
    args = p.parse_args(argv)
    args.multiples = [int(v) for v in args.multiples.split(",")]
    args.mag_layers = [int(v) for v in args.mag_layers.split(",")] if args.mag_layers else None
    args.cost_seqs = [int(v) for v in args.cost_seqs.split(",")]
    kinds = args.kinds.split(",")
    seeds = [int(v) for v in args.seeds.split(",")]
    if any(k not in KINDS for k in kinds):
        p.error(f"--kinds must be a subset of {','.join(KINDS)}, got {args.kinds}")
    torch.set_num_threads(args.threads)
    task = RecallTask()
    start, load_before = time.perf_counter(), os.getloadavg()
    cfgs = configs(task, args)
    runs = [
        train_and_eval(kind, cfgs[kind], task, seed, args)
        for seed in ([] if args.skip_train else seeds)
        for kind in kinds
    ]
    result: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "settings": {
            **asdict(task),
            **{k: v for k, v in vars(args).items() if k != "out"},
            "reach": args.window * args.layers,
        },
        "chance": 1 / task.n_values,
        "params": {k: n_params(c) for k, c in cfgs.items()},
        "configs": {k: c.to_diff_dict() for k, c in cfgs.items()},
        "runs": runs,
        "accuracy": summarise(runs, args.multiples),
        "cost": None if args.skip_cost else cost({k: cfgs[k] for k in DEFAULT_KINDS}, task, args),
    }
    result["total_seconds"] = time.perf_counter() - start
    result["loadavg_before"] = [round(v, 2) for v in load_before]
    result["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md + ".tmp", "w") as f:
        f.write(markdown(result))
    os.replace(md + ".tmp", md)
    print(markdown(result))


if __name__ == "__main__":
    main()
