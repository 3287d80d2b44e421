"""Grokking speed on the Grokfast paper's own task, x*y mod 97, and Power et al.'s x+y, x-y, x/y.

Replicates the task of the Grokfast reference (ironjr/grokfast, ``main.py``) so that its
published step counts can be checked here, then runs every optimizer in the same invocation:

- data: all equations ``x * y = r (mod 97)`` with x in [0, 97), y in [1, 97) (9312 rows), tokens
  ``x op y = r`` (op = 98, eq = 97), a random 50/50 train/val split; ``--operation add|sub|div``
  takes the same rows and split with ``r = x + y``, ``x - y`` or ``x * y^-1 (mod 97)`` (Power et
  al.'s operations; y >= 1 keeps division defined and the split identical);
- model: the reference's 2-layer decoder, width 128, 4 heads, learned positions, sequence-first
  layout, and its block exactly as written there: ``x = ln_1(x); x = x + attn(x); x = x + mlp(ln_2(x))``
  (the first residual adds to the *normalised* input, a quirk kept on purpose);
- training: cross-entropy on the answer token only (last position), batch 512, lr 1e-3,
  betas (0.9, 0.98), LambdaLR warmup ``min(1, step / 10)`` (so the first update has lr 0), the train
  set reshuffled every epoch (10 steps), val accuracy measured after every epoch, i.e. every 10 steps.

With the same seed the RNG is consumed in the reference's order (seed -> model init -> split ->
one permutation per epoch), so a run here follows the reference run bit for bit on the same
machine. Step counts are optimizer steps done before the evaluation (10, 20, ...).

On CPU, ``torch.set_flush_denormal(True)`` is set: weight decay drives many weights towards
zero and denormal floats made a long AdamW run here 20x slower per epoch without it.

Usage::

    python benchmarks/grokking.py --optimizer adamw,mugrokfast --seeds 0,1,2 --max-steps 3000 \
        --out benchmarks/results/grokking.json
    python benchmarks/grokking.py --plot a.json b.json --plot-out both.png   # merge + plot only

Peers (``benchmarks/peers.py``: ``torch-muon``, ``kozistr-muon``, ``heavyball-muon``,
``kozistr-grokfastadamw``, ``lucidrains-grokfastadamw``) are taken by name like ours; one whose
package is not installed (the optional ``peers`` group) is skipped with a note, recorded in the
JSON under ``skipped``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

P = 97
# Power et al.'s binary operations mod p, on x in [0, p), y in [1, p) (y^-1 = y^(p-2) mod p).
OPERATIONS = {
    "add": ("x+y", lambda x, y, p: (x + y) % p),
    "sub": ("x-y", lambda x, y, p: (x - y) % p),
    "mul": ("x*y", lambda x, y, p: x * y % p),
    "div": ("x/y", lambda x, y, p: x * torch.tensor([pow(int(v), p - 2, p) for v in y]) % p),
}
TASK: dict[str, Any] = {
    "name": "x*y mod 97 (Grokfast reference task)",
    "p": P,
    "equations": "x in [0, 97), y in [1, 97): 9312 rows, tokens [x, op, y, eq, r]",
    "split": "random 50% train (4656) / 50% val (4656), torch.randperm after model init",
    "model": "2-layer decoder, width 128, 4 heads, MLP 4x, GELU, learned positions, pre-LN "
    "(reference block: residual from ln_1(x)), head without bias, 99 tokens",
    "loss": "cross-entropy on the answer (last position)",
    "batch_size": 512,
    "lr": 1e-3,
    "betas": [0.9, 0.98],
    "warmup": "LambdaLR min(1, step/10): 10-step linear warmup, first update at lr 0",
    "eval_every_steps": 10,
    "step_count": "optimizer steps done before the evaluation (10, 20, ...)",
    "train_acc": "running accuracy over the epoch's training batches (as the reference)",
    "cpu_flush_denormal": True,
}


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    """The reference's causal block (its residual quirk included, see the module docstring)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        # Creation order fixes the RNG draws: keep it identical to the reference.
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, D)
        t = x.shape[0]
        mask = torch.triu(torch.full((t, t), -math.inf, device=x.device, dtype=x.dtype), 1)
        x = self.ln_1(x)
        x = x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Decoder(nn.Module):
    def __init__(
        self,
        dim: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        n_tokens: int = P + 2,
        seq_len: int = 5,
    ) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(n_tokens, dim)
        self.position_embeddings = nn.Embedding(seq_len, dim)
        self.layers = nn.ModuleList(Block(dim, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_tokens, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B) token ids -> (T, B, V)
        pos = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)  # (T, 1)
        h = self.token_embeddings(x) + self.position_embeddings(pos)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h))


def make_data(p: int = P, operation: str = "mul") -> torch.Tensor:
    """All equations ``[x, op, y, eq, x (op) y mod p]`` as a (5, N) tensor (sequence-first)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; choose from {list(OPERATIONS)}")
    x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    eq, op = torch.full_like(x, p), torch.full_like(x, p + 1)
    return torch.stack([x, op, y, eq, OPERATIONS[operation][1](x, y, p)])


# ----------------------------------------------------------------------------- optimizers
def hidden_matrices(model: Decoder) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split into (hidden matrices -> Muon, the rest -> AdamW).

    Hidden matrices: attention in/out projections and MLP weights. Embeddings, the output head,
    LayerNorm gains and all biases go to AdamW (the usual Muon recipe).
    """
    muon: list[nn.Parameter] = []
    for block in model.layers:
        muon += [block.attn.in_proj_weight, block.attn.out_proj.weight]
        muon += [block.mlp[0].weight, block.mlp[2].weight]
    ids = {id(p) for p in muon}
    return muon, [p for p in model.parameters() if id(p) not in ids]


def _muon_groups(model: Decoder, hp: dict[str, Any]) -> list[dict[str, Any]]:
    muon, rest = hidden_matrices(model)
    g_muon: dict[str, Any] = {"params": muon, "use_muon": True}
    if hp.get("muon_weight_decay") is not None:  # None: the same weight_decay as AdamW
        g_muon["weight_decay"] = hp["muon_weight_decay"]
    g_rest: dict[str, Any] = {"params": rest, "use_muon": False}
    if hp.get("adamw_lamb") is not None:  # None: the same grokfast_lambda as the Muon groups
        g_rest["grokfast_lambda"] = hp["adamw_lamb"]
    return [g_muon, g_rest]


# Each entry: hyperparameters (overridable with --hp) and a builder (model, hp) -> optimizer.
# Builders import mugrokfast lazily so the torch-only baselines run without it.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    # The paper's baseline: Adam without weight decay (the x50 in its README is against this).
    "adam": {"hp": {"weight_decay": 0.0}, "kind": "torch Adam"},
    # Power et al.'s setting and the honest baseline.
    "adamw": {"hp": {"weight_decay": 1.0}, "kind": "torch AdamW"},
    # The paper's Grokfast settings: torch Adam with *coupled* L2 weight decay (its main.py uses
    # optimizer=Adam by default) behind the Grokfast filter.
    "grokfast-ema": {
        "hp": {"weight_decay": 0.005, "alpha": 0.98, "lamb": 2.0},
        "kind": "mugrokfast.Grokfast(filter='ema') around torch Adam (L2 weight decay)",
    },
    "grokfast-ma": {
        "hp": {"weight_decay": 0.01, "window_size": 100, "lamb": 5.0},
        "kind": "mugrokfast.Grokfast(filter='ma') around torch Adam (L2 weight decay)",
    },
    # Grokfast EMA in front of the good baseline.
    "grokfast-adamw": {
        "hp": {"weight_decay": 1.0, "alpha": 0.98, "lamb": 2.0},
        "kind": "mugrokfast.Grokfast(filter='ema') around torch AdamW",
    },
    # Muon on hidden matrices + AdamW on the rest, no filter: the same settings as mugrokfast.
    "muon": {
        "hp": {
            "lr": 1e-3,
            "weight_decay": 1.0,
            "muon_lr": 0.03,
            "muon_weight_decay": None,
            "adjust_lr_fn": None,
        },
        "kind": "mugrokfast.MuGrokfast(grokfast=None)",
    },
    # Our defaults for this task, chosen by benchmarks/grokking_sweep.py on seeds 0-2 only
    # (results/grokking_sweep.json): MuGrokfast's defaults but muon_lr 0.03 (library: 0.02),
    # weight_decay 1.0 on both Muon and AdamW groups (library: 0.01), grokfast_lambda 1.0.
    "mugrokfast": {
        "hp": {
            "lr": 1e-3,
            "weight_decay": 1.0,
            "muon_lr": 0.03,
            "muon_weight_decay": None,
            "adjust_lr_fn": None,
            "grokfast": "ema",
            "alpha": 0.98,
            "lamb": 1.0,
            "window": 100,
            "ma_lamb": 5.0,
            "warmup_steps": 0,
            "place": "grad",
            "adamw_lamb": None,  # the AdamW groups' grokfast_lambda; None: the same as lamb
        },
        "kind": "mugrokfast.MuGrokfast",
    },
    # The library's named preset, as it stands when the script runs (its kwargs are recorded).
    "mugrokfast-preset": {
        "hp": {"preset": "grokking"},
        "kind": "mugrokfast.MuGrokfast.from_preset(preset, same param groups as mugrokfast)",
    },
    # The filter study (benchmarks/filter_study.py): Muon with the EMA amplifier at `place`
    # ("grad" = today's MuGrokfast, "momentum", "update"), absolute or relative lambda.
    "muon-slow": {
        "hp": {
            "lr": 1e-3,
            "weight_decay": 1.0,
            "muon_lr": 0.03,
            "alpha": 0.98,
            "lamb": 1.0,
            "place": "grad",
            "relative": 0,
            "warmup_steps": 0,
            "adamw_lamb": 1.0,
        },
        "kind": "filter_study.SlowMuon (hidden matrices) + MuGrokfast AdamW groups (EMA filter)",
    },
    # Maintained peers at their documented defaults (benchmarks/peers.py).
    **{name: {"hp": dict(e["hp"]), "kind": e["kind"]} for name, e in peers.PEERS.items()},
}


# hp fields added after results were written, with the value that reproduces those runs (so
# --reuse still finds them): mugrokfast's "place" (grokfast_place) arrived with "grad", its
# "adamw_lamb" (a per-group grokfast_lambda for the AdamW groups) with None.
ADDED_HP: dict[str, dict[str, Any]] = {"mugrokfast": {"place": "grad", "adamw_lamb": None}}


def build_optimizer(name: str, model: Decoder, hp: dict[str, Any]) -> torch.optim.Optimizer:
    if name in peers.PEERS:
        return peers.build_peer(name, *hidden_matrices(model), hp)
    if name == "muon-slow":
        import filter_study

        return filter_study.build(*hidden_matrices(model), hp)
    betas = (0.9, 0.98)
    lr = hp.get("lr", 1e-3)
    if name == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=lr, betas=betas, weight_decay=hp["weight_decay"]
        )
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=lr, betas=betas, weight_decay=hp["weight_decay"]
        )

    import mugrokfast

    if name in ("grokfast-ema", "grokfast-ma", "grokfast-adamw"):
        base_cls = torch.optim.AdamW if name == "grokfast-adamw" else torch.optim.Adam
        base = base_cls(model.parameters(), lr=lr, betas=betas, weight_decay=hp["weight_decay"])
        if name == "grokfast-ma":
            return mugrokfast.Grokfast(
                base, filter="ma", window_size=hp["window_size"], ma_lamb=hp["lamb"]
            )
        return mugrokfast.Grokfast(base, filter="ema", alpha=hp["alpha"], lamb=hp["lamb"])
    if name == "mugrokfast-preset":
        return mugrokfast.MuGrokfast.from_preset(hp["preset"], _muon_groups(model, hp))
    if name in ("muon", "mugrokfast"):
        filt = hp.get("grokfast") if name == "mugrokfast" else None
        return mugrokfast.MuGrokfast(
            _muon_groups(model, hp),
            lr=lr,
            betas=betas,
            weight_decay=hp["weight_decay"],
            muon_lr=hp["muon_lr"],
            adjust_lr_fn=hp.get("adjust_lr_fn"),
            grokfast=filt,
            grokfast_alpha=hp.get("alpha", 0.98),
            grokfast_lambda=hp.get("lamb", 2.0),
            grokfast_window=hp.get("window", 100),
            grokfast_ma_lambda=hp.get("ma_lamb", 5.0),
            grokfast_warmup_steps=hp.get("warmup_steps", 0),
            grokfast_place=hp.get("place", "grad"),
        )
    raise ValueError(f"unknown optimizer {name!r}")


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer state tensors (the wrapper's own state included)."""
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [o.state for o in peers.sub_optimizers(opt)]
    inner = getattr(opt, "optimizer", None) or getattr(opt, "base_optimizer", None)
    if inner is not None:
        stack.append(inner.state)
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)) or type(obj).__name__ == "deque":
            stack.extend(obj)
    return total


# ----------------------------------------------------------------------------- one run
def milestone(curve: list[list[float]], col: int, level: float) -> int | None:
    for row in curve:
        if row[col] >= level:
            return int(row[0])
    return None


def train_run(
    name: str,
    seed: int,
    hp: dict[str, Any],
    max_steps: int,
    stop_at: float | None = None,
    threads: int = 1,
    device: str = "cpu",
    log_every: int = 0,
    time_limit: float | None = None,
    operation: str = "mul",
) -> dict[str, Any]:
    """Train one (optimizer, seed) run; return the run record of the JSON schema."""
    torch.set_num_threads(threads)
    if device == "cpu":
        torch.set_flush_denormal(True)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = Decoder().to(dev)
    data = make_data(operation=operation)
    train_idx, val_idx = torch.randperm(data.shape[1]).split(data.shape[1] // 2)
    train_data, val_data = data[:, train_idx].to(dev), data[:, val_idx].to(dev)
    opt = build_optimizer(name, model, hp)
    # one warmup schedule per torch optimizer inside (a peer may pair two)
    scheds = [
        torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 if s > 10 else s / 10)
        for o in peers.sub_optimizers(opt)
    ]
    batch = TASK["batch_size"]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    curve: list[list[float]] = []  # [step, train_acc, val_acc, train_loss, val_loss]
    step, t0, stop_reason = 0, time.perf_counter(), "max_steps"
    n_train, n_val = train_data.shape[1], val_data.shape[1]
    while step < max_steps:
        train_data = train_data[:, torch.randperm(n_train).to(dev)]
        model.train()
        loss_sum = acc_sum = 0.0
        for chunk in torch.split(train_data, batch, dim=1):
            logits = model(chunk[:-1])[-1]
            loss = F.cross_entropy(logits, chunk[-1])
            model.zero_grad()
            loss.backward()
            opt.step()
            for sched in scheds:
                sched.step()
            step += 1
            loss_sum += loss.item() * chunk.shape[1]
            acc_sum += (logits.argmax(-1) == chunk[-1]).float().sum().item()
        model.eval()
        v_loss = v_acc = 0.0
        with torch.no_grad():
            for chunk in torch.split(val_data, batch, dim=1):
                logits = model(chunk[:-1])[-1]
                v_loss += F.cross_entropy(logits, chunk[-1]).item() * chunk.shape[1]
                v_acc += (logits.argmax(-1) == chunk[-1]).float().sum().item()
        row = [step, acc_sum / n_train, v_acc / n_val, loss_sum / n_train, v_loss / n_val]
        curve.append([row[0]] + [round(v, 5) for v in row[1:]])
        if not all(math.isfinite(v) for v in row[3:]):
            stop_reason = "non_finite_loss"
            break
        if log_every and step % log_every < 10:
            print(f"[{name} s{seed}] step {step} train {row[1]:.3f} val {row[2]:.3f}", flush=True)
        if stop_at is not None and row[1] >= stop_at and row[2] >= stop_at:
            stop_reason = "stop_at"
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            stop_reason = "time_limit"
            break
    wall = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:  # ru_maxrss is in KiB on Linux; this is a fresh process per run (see main)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "optimizer": name,
        "seed": seed,
        "operation": operation,
        "hp": hp,
        "steps_to_95": milestone(curve, 2, 0.95),
        "steps_to_99": milestone(curve, 2, 0.99),
        "train_steps_to_99": milestone(curve, 1, 0.99),
        "steps_run": step,
        "stop_reason": stop_reason,
        "final_val_acc": curve[-1][2] if curve else None,
        "wall_s": round(wall, 2),
        "s_per_step": round(wall / max(step, 1), 5),
        "peak_mem_mb": round(peak, 1),
        "optimizer_state_mb": round(state_bytes(opt) / 2**20, 3),
        "curve_columns": ["step", "train_acc", "val_acc", "train_loss", "val_loss"],
        "curve": curve,
    }


def _run_job(job: tuple) -> dict[str, Any]:
    """One run in a worker process; a failure becomes a record with ``error`` (not a lost sweep)."""
    try:
        return train_run(*job)
    except Exception as exc:  # reported in the JSON and on stdout, never silently dropped
        name, seed = job[0], job[1]
        return {"optimizer": name, "seed": seed, "hp": job[2], "error": repr(exc),
                "steps_to_95": None, "steps_to_99": None, "train_steps_to_99": None,
                "steps_run": 0, "stop_reason": "error", "wall_s": 0.0, "s_per_step": 0.0,
                "peak_mem_mb": None, "curve": []}  # fmt: skip


# ----------------------------------------------------------------------------- results
def median_or_none(xs: list[int | None]) -> float | None:
    """Median where an unreached milestone counts as +inf (None if the median is unreached)."""
    vals = sorted(math.inf if x is None else x for x in xs)
    if not vals:
        return None
    m = statistics.median(vals)
    return None if math.isinf(m) else m


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["optimizer"], []).append(r)
    out: dict[str, Any] = {}
    for name, rs in by.items():
        out[name] = {
            "seeds": [r["seed"] for r in rs],
            "steps_to_95": [r["steps_to_95"] for r in rs],
            "median_steps_to_95": median_or_none([r["steps_to_95"] for r in rs]),
            "median_steps_to_99": median_or_none([r["steps_to_99"] for r in rs]),
            "median_train_steps_to_99": median_or_none([r["train_steps_to_99"] for r in rs]),
            "median_wall_s": statistics.median(r["wall_s"] for r in rs),
            "median_s_per_step": statistics.median(r["s_per_step"] for r in rs),
        }
    for base in ("adam", "adamw"):
        b = out.get(base, {}).get("median_steps_to_95")
        for s in out.values():
            m = s["median_steps_to_95"]
            s[f"speedup_vs_{base}"] = round(b / m, 3) if b and m else None
    return out


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"{'optimizer':16s} {'steps_to_95 (seeds)':28s} {'median95':>8s} {'median99':>8s} "
        f"{'x adam':>7s} {'x adamw':>7s}"
    )
    for name, s in summary.items():
        print(
            f"{name:16s} {str(s['steps_to_95']):28s} {str(s['median_steps_to_95']):>8s} "
            f"{str(s['median_steps_to_99']):>8s} {str(s.get('speedup_vs_adam')):>7s} "
            f"{str(s.get('speedup_vs_adamw')):>7s}"
        )


def markdown_table(summary: dict[str, Any]) -> str:
    """The README's table: per optimizer, steps to 95% per seed, medians and speed-ups."""
    lines = [
        "| optimizer | steps to 95% (per seed) | median to 95% | median to 99% | vs adam | vs adamw |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        per = ", ".join("-" if v is None else str(v) for v in s["steps_to_95"])
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        lines.append(
            f"| `{name}` | {per} | {fmt(s['median_steps_to_95'])} | {fmt(s['median_steps_to_99'])} "
            f"| {fmt(s.get('speedup_vs_adam'))} | {fmt(s.get('speedup_vs_adamw'))} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Median val accuracy over seeds vs steps (log x), one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r["curve"]:
            by.setdefault(r["optimizer"], []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, rs in by.items():
        # A finished run holds its last value (runs stop early once train and val reach --stop-at).
        n = max(len(r["curve"]) for r in rs)
        steps = [10 * (i + 1) for i in range(n)]
        cols = [[r["curve"][min(i, len(r["curve"]) - 1)][2] for i in range(n)] for r in rs]
        med = [statistics.median(c[i] for c in cols) for i in range(n)]
        m95 = median_or_none([r["steps_to_95"] for r in rs])
        label = f"{name} (95% at {int(m95) if m95 else '-'})"
        ax.plot(steps, med, label=label)
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("val accuracy (median over seeds)")
    ax.set_title(title or "x*y mod 97, Grokfast reference task")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info(threads: int, device: str) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads_per_run": threads,
        "device": device,
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_hp(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--hp mugrokfast.muon_lr=0.05`` -> {"mugrokfast": {"muon_lr": 0.05}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        try:
            key, value = item.split("=", 1)
            name, field = key.split(".", 1)
        except ValueError:
            raise SystemExit(f"error: --hp {item!r}: expected OPTIMIZER.FIELD=VALUE") from None
        if name not in OPTIMIZERS or field not in OPTIMIZERS[name]["hp"]:
            raise SystemExit(f"error: --hp {item!r}: unknown optimizer or field")
        v: Any = value
        if value.lower() in ("none", "null"):
            v = None
        else:
            try:
                v = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                v = value
        out.setdefault(name, {})[field] = v
    return out


def describe(name: str, hp: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": OPTIMIZERS[name]["kind"], "hp": hp}
    if name == "mugrokfast-preset":
        import mugrokfast

        out["preset_kwargs"] = {
            k: repr(v) for k, v in mugrokfast.get_preset(hp["preset"]).kwargs.items()
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--optimizer",
        default="adamw,grokfast-ema,grokfast-ma,mugrokfast",
        help=f"comma list of: {','.join(OPTIMIZERS)}",
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--operation", default="mul", choices=list(OPERATIONS), help="x+y, x-y, x*y or x/y mod 97"
    )
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument(
        "--stop-at",
        type=float,
        default=None,
        help="end a run once train and val accuracy both reach this (saves CPU)",
    )
    ap.add_argument(
        "--hp",
        action="append",
        default=[],
        help="override a hyperparameter: OPTIMIZER.FIELD=VALUE (repeatable)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log-every", type=int, default=0, help="print progress every N steps")
    ap.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="end a run after this many seconds (its record says stop_reason)",
    )
    ap.add_argument("--out", default=None, help="results JSON (a PNG plot is written next to it)")
    ap.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="JSON",
        help="take identical runs (optimizer, seed, hp, stop-at, and max-steps or a stop at "
        "stop-at within both caps) from these result files instead of training them again",
    )
    ap.add_argument(
        "--plot",
        nargs="+",
        default=None,
        metavar="JSON",
        help="no training: merge these result files, print the table, plot to --plot-out",
    )
    ap.add_argument("--plot-out", default=None)
    args = ap.parse_args(argv)

    if args.plot:
        runs = []
        for path in args.plot:
            with open(path) as f:
                runs += json.load(f)["runs"]
        print_table(summarize(runs))
        print(markdown_table(summarize(runs)))
        if args.plot_out:
            plot(runs, args.plot_out)
            print(f"wrote {args.plot_out}")
        return 0

    names = [n.strip() for n in args.optimizer.split(",") if n.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        print(f"error: --optimizer: unknown {bad}; choose from {list(OPTIMIZERS)}", file=sys.stderr)
        return 2
    skipped = {n: note for n in names if n in peers.PEERS and (note := peers.missing(n))}
    for note in skipped.values():
        print(note, flush=True)
    names = [n for n in names if n not in skipped]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds {args.seeds!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    if args.max_steps < 1:
        print("error: --max-steps must be >= 1", file=sys.stderr)
        return 2
    load_start = list(os.getloadavg())
    overrides = parse_hp(args.hp)
    hps = {n: {**OPTIMIZERS[n]["hp"], **overrides.get(n, {})} for n in names}
    jobs = [
        (
            n,
            s,
            hps[n],
            args.max_steps,
            args.stop_at,
            args.threads,
            args.device,
            args.log_every,
            args.time_limit,
            args.operation,
        )
        for n in names
        for s in seeds
    ]

    # --reuse: a run with the same optimizer, seed, hyperparameters, max_steps and stop_at is
    # deterministic (same seed -> same RNG stream and arithmetic), so it is taken from an
    # earlier result file instead of being trained again; it keeps its wall time and says so.
    # The cap matters only to a run it ended: one that stopped at stop_at within both caps is
    # the same run under either (the lr schedule does not depend on max_steps).
    reused: dict[tuple, dict[str, Any]] = {}
    for path in args.reuse:
        with open(path) as f:
            old = json.load(f)
        for r in old["runs"]:
            same_cap = old.get("max_steps") == args.max_steps or (
                r.get("stop_reason") == "stop_at" and r["steps_run"] <= args.max_steps
            )
            if "error" in r or not same_cap:
                continue
            if old.get("stop_at") != args.stop_at:
                continue
            if r.get("operation", "mul") != args.operation:
                continue
            hp = ADDED_HP.get(r["optimizer"], {}) | r["hp"]  # runs written before a field existed
            key = (r["optimizer"], r["seed"], json.dumps(hp, sort_keys=True))
            reused[key] = {**r, "reused_from": {"file": path, "command": old.get("command")}}
    todo, runs = [], []
    for job in jobs:
        key = (job[0], job[1], json.dumps(job[2], sort_keys=True))
        (runs if key in reused else todo).append(reused.get(key, job))
    for r in runs:
        print(f"{r['optimizer']:16s} seed {r['seed']:3d}: reused from {r['reused_from']['file']}")

    # One fresh process per run: clean peak-memory figures and no state shared between runs.
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
        for r in pool.imap(_run_job, todo):
            if "error" in r:
                print(f"{r['optimizer']} seed {r['seed']}: ERROR {r['error']}", flush=True)
                runs.append(r)
                continue
            print(
                f"{r['optimizer']:16s} seed {r['seed']:3d}: 95% at {r['steps_to_95']}, 99% at "
                f"{r['steps_to_99']}, train 99% at {r['train_steps_to_99']}, {r['steps_run']} "
                f"steps in {r['wall_s']:.0f} s",
                flush=True,
            )
            runs.append(r)
    order = {(n, s): i for i, (n, s) in enumerate((j[0], j[1]) for j in jobs)}
    runs.sort(key=lambda r: order[(r["optimizer"], r["seed"])])
    summary = summarize(runs)
    print_table(summary)
    if args.out:
        result = {
            "task": {
                **TASK,
                "operation": args.operation,
                "equation": OPERATIONS[args.operation][0],
            },
            "skipped": skipped,
            "optimizers": {n: describe(n, hps[n]) for n in names},
            "command": "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
            "max_steps": args.max_steps,
            "stop_at": args.stop_at,
            "machine": machine_info(args.threads, args.device),
            "load_average_1_5_15": {"start": load_start, "end": list(os.getloadavg())},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "summary": summary,
            "runs": runs,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        png = os.path.splitext(args.out)[0] + ".png"
        plot(runs, png, f"{OPERATIONS[args.operation][0]} mod 97")
        print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
