"""Step cost of the optimizers: time per ``step()`` and state memory, as ratios in one run.

Parameters are random tensors with the shapes (and the Muon/AdamW routing) of a real model,
with fixed random gradients; only ``optimizer.step()`` is timed. Shape sets:

- ``cognate-25m``: the parameters of ``CognateForCausalLM(CognateConfig.from_preset("cognate-25m"))``
  (built on the meta device, routed with ``mugrokfast.param_groups``); if ``cognate_model`` cannot
  be imported, a documented stand-in list (see ``COGNATE_25M_FALLBACK``).
- ``gpt2-small``: GPT-2 small's shapes (vocab 50257 x 768 tied embedding, 1024 x 768 positions,
  per layer: qkv 2304 x 768, proj 768 x 768, fc 3072 x 768, fc-proj 768 x 3072, LayerNorms and
  biases), ``--gpt2-layers`` layers (12 in GPT-2 small; fewer on a CPU, where Newton-Schulz on 48
  matrices takes tens of seconds per step: the per-layer cost is the same).

Comparisons (each a ratio against its baseline, timed interleaved, median of ``--reps``):

1. ``MuGrokfast`` (grokfast None / ema / ma / dual) vs ``torch.optim.Muon`` (hidden matrices) +
   ``torch.optim.AdamW(foreach=True)`` (the rest), same lr and wd. "defaults" rows pass no
   ``ns_dtype`` and no ``foreach`` (what a user gets: MuGrokfast picks them per device);
   "tuned" rows pass torch's choices (``ns_dtype=torch.bfloat16, foreach=True``). MA with
   ``--ma-window`` (memory: window x numel floats).
2. ``Grokfast(AdamW, "ema")`` vs the reference style (a dict of EMA tensors updated per parameter
   before ``AdamW.step()``, as in ironjr/grokfast's ``gradfilter_ema``), on every parameter.
3. MA step time at windows 10, 100, 200: ``Grokfast(AdamW, "ma")`` (ring buffer + running sum) and
   the reference style (a deque re-summed every step), on the first hidden matrices only, up to
   ``--ma-params`` parameters (a full 25M model at window 200 would need 20 GB).

    python benchmarks/optimizer_step.py --out benchmarks/results/optimizer_step.json

``--peers``: comparison 1 also times the maintained peers of ``benchmarks/peers.py`` at their
documented defaults (extra rows, same interleaving; absent packages are skipped with a note).
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import mugrokfast
import torch

Shape = tuple[tuple[int, ...], bool]  # (shape, use_muon)

# Stand-in for the Cognate 25M model when cognate_model is not importable: a tied 32768 x 320
# embedding and 8 blocks of attention (q, k, v, o: 320 x 320) + SwiGLU MLP (1280 x 320 twice,
# 320 x 1280) with two RMSNorm gains, plus a final norm.
COGNATE_25M_FALLBACK: list[Shape] = (
    [((32768, 320), False)]
    + [((320, 320), True)] * 4 * 8
    + [((1280, 320), True), ((1280, 320), True), ((320, 1280), True)] * 8
    + [((320,), False)] * (2 * 8 + 1)
)


def cognate_shapes() -> tuple[list[Shape], str]:
    try:
        from cognate_model import CognateConfig, CognateForCausalLM

        with torch.device("meta"):
            model = CognateForCausalLM(CognateConfig.from_preset("cognate-25m"))
        shapes: list[Shape] = []
        for group in mugrokfast.param_groups(model):
            shapes += [(tuple(p.shape), bool(group["use_muon"])) for p in group["params"]]
        return (
            shapes,
            "CognateForCausalLM(CognateConfig.from_preset('cognate-25m')), mugrokfast.param_groups",
        )
    except Exception as exc:  # the model package may be missing or mid-change
        return COGNATE_25M_FALLBACK, f"fallback shape list ({type(exc).__name__}: {exc})"


def gpt2_shapes(n_layers: int) -> list[Shape]:
    d, v = 768, 50257
    layer = [
        ((d,), False), ((d,), False),  # ln_1
        ((3 * d, d), True), ((3 * d,), False),  # qkv
        ((d, d), True), ((d,), False),  # attn proj
        ((d,), False), ((d,), False),  # ln_2
        ((4 * d, d), True), ((4 * d,), False),  # fc
        ((d, 4 * d), True), ((d,), False),  # fc proj
    ]  # fmt: skip
    return [((v, d), False), ((1024, d), False)] + layer * n_layers + [((d,), False)] * 2


def make_params(
    shapes: list[Shape], seed: int = 0, device: str = "cpu"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same numbers on any device
    muon, rest = [], []
    for shape, use_muon in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=g) * 1e-3).to(device)
        (muon if use_muon else rest).append(p)
    return muon, rest


# ----------------------------------------------------------------------------- steppers
LR, MUON_LR, WD, BETAS = 1e-3, 0.02, 0.01, (0.9, 0.95)


class Stepper:
    """Something with ``step()`` and a list of optimizers whose state we measure; ``before`` /
    ``after`` run around every step, untimed (a peer's gradient bookkeeping, see peer_makers)."""

    def __init__(
        self,
        step: Callable[[], None],
        opts: list[Any],
        extra_state: Any = None,
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        self.step, self.opts, self.extra_state = step, opts, extra_state
        self.before, self.after = before, after

    def timed_step(self, sync: Callable[[], None] = lambda: None) -> float:
        """One step; returns its seconds (``before`` / ``after`` not counted). ``sync`` waits
        for the device (``torch.cuda.synchronize``): the clock reads bracket finished work."""
        if self.before is not None:
            self.before()
        sync()
        t0 = time.perf_counter()
        self.step()
        sync()
        dt = time.perf_counter() - t0
        if self.after is not None:
            self.after()
        return dt


def torch_muon_adamw(muon: list, rest: list) -> Stepper:
    m = torch.optim.Muon(muon, lr=MUON_LR, weight_decay=WD)
    a = torch.optim.AdamW(rest, lr=LR, betas=BETAS, weight_decay=WD, foreach=True)

    def step() -> None:
        m.step()
        a.step()

    return Stepper(step, [m, a])


# the "tuned" setting: what torch's pair does (bf16 Newton-Schulz, foreach AdamW); the
# "defaults" rows pass neither, so they measure what MuGrokfast picks by itself
TUNED = dict(ns_dtype=torch.bfloat16, foreach=True)


def mugrokfast_stepper(
    muon: list, rest: list, grokfast: str | None, window: int, **overrides: Any
) -> Stepper:
    """MuGrokfast at the benchmark's numbers; ``overrides`` (e.g. ``TUNED``) are passed on."""
    opt = mugrokfast.MuGrokfast(
        [{"params": muon, "use_muon": True}, {"params": rest, "use_muon": False}],
        lr=LR, betas=BETAS, weight_decay=WD, muon_lr=MUON_LR,
        grokfast=grokfast, grokfast_window=window, **overrides,
    )  # fmt: skip
    return Stepper(opt.step, [opt])


def peer_makers(muon: list, rest: list) -> dict[str, Callable[[], Stepper]]:
    """``--peers``: each installed peer at its documented defaults (benchmarks/peers.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers

    # Some peers change p.grad: the GrokFastAdamW ones and kozistr's Muon filter or scale it in
    # place, heavyball sets it to None after its step. Each peer therefore steps on its own copy
    # of the fixed gradients (refilled before every step), and the shared ones are put back
    # after it, so no optimizer sees another's leftovers; neither is timed.
    params = muon + rest
    fixed = [p.grad for p in params]

    def make(name: str) -> Stepper:
        opt = peers.build_peer(name, muon, rest, dict(peers.PEERS[name]["hp"]))
        own = [g.clone() for g in fixed]

        def before() -> None:
            for p, g, mine in zip(params, fixed, own, strict=True):
                p.grad = mine.copy_(g)

        def after() -> None:
            for p, g in zip(params, fixed, strict=True):
                p.grad = g

        return Stepper(opt.step, peers.sub_optimizers(opt), None, before, after)

    for note in filter(None, map(peers.missing, peers.PEERS)):
        print(note, flush=True)
    return {f"peer {n}": (lambda n=n: make(n)) for n in peers.PEERS if not peers.missing(n)}


def adamw(params: list) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WD, foreach=True)


def plain_stepper(opt: torch.optim.Optimizer) -> Stepper:
    return Stepper(opt.step, [opt])


def wrapper_stepper(params: list, filt: str, window: int = 100) -> Stepper:
    opt = mugrokfast.Grokfast(adamw(params), filter=filt, window_size=window)
    return Stepper(opt.step, [opt])


def reference_ema_stepper(params: list, alpha: float = 0.98, lamb: float = 2.0) -> Stepper:
    """The reference's gradfilter_ema, over a list instead of named_parameters (same work)."""
    base = adamw(params)
    grads: dict[int, torch.Tensor] = {}
    raw = {id(p): p.grad for p in params}

    def step() -> None:
        for p in params:
            p.grad = raw[id(p)]  # the benchmark's fixed gradient (the reference rewrites p.grad)
            h = grads.get(id(p))
            h = p.grad.detach() if h is None else h
            grads[id(p)] = h * alpha + p.grad.detach() * (1 - alpha)
            p.grad = p.grad + grads[id(p)] * lamb
        base.step()

    return Stepper(step, [base], grads)


def reference_ma_stepper(params: list, window: int, lamb: float = 5.0) -> Stepper:
    """The reference's gradfilter_ma: a deque of past gradients, re-summed every step."""
    base = adamw(params)
    hist: dict[int, collections.deque] = {id(p): collections.deque(maxlen=window) for p in params}
    raw = {id(p): p.grad for p in params}

    def step() -> None:
        for p in params:
            p.grad = raw[id(p)]
            # the reference appends p.grad itself; the clone stands for the fresh grad tensor
            # a real backward pass allocates every step
            hist[id(p)].append(p.grad.detach().clone())
            if len(hist[id(p)]) == window:
                p.grad = p.grad + sum(hist[id(p)]) / window * lamb
        base.step()

    return Stepper(step, [base], hist)


# ----------------------------------------------------------------------------- measuring
def tensor_bytes(obj: Any, seen: set[int]) -> int:
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen or obj.device.type == "meta":
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, collections.deque)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def state_mb(s: Stepper) -> float:
    seen: set[int] = set()
    total = 0
    for opt in s.opts:
        total += tensor_bytes(opt.state, seen)
        base = getattr(opt, "base_optimizer", None)
        if base is not None:
            total += tensor_bytes(base.state, seen)
    total += tensor_bytes(s.extra_state, seen)
    return total / 2**20


def time_steppers(
    makers: dict[str, Callable[[], Stepper]],
    reps: int,
    steps: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """Build each stepper, warm it up, then time ``steps`` steps per rep, interleaved."""
    steppers = {}
    out: dict[str, dict[str, Any]] = {}
    for name, make in makers.items():
        s = make()
        for _ in range(warmup):
            s.timed_step(sync)
        steppers[name] = s
        out[name] = {"state_mb": round(state_mb(s), 2), "times_ms": []}
    names = list(steppers)
    for rep in range(reps):
        # rotate the order each repetition so no config always follows the same neighbour
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            s = steppers[name]
            elapsed = sum(s.timed_step(sync) for _ in range(steps))
            out[name]["times_ms"].append(elapsed / steps * 1e3)
    for v in out.values():
        v["median_ms"] = round(statistics.median(v["times_ms"]), 3)
        v["times_ms"] = [round(t, 3) for t in v["times_ms"]]
    steppers.clear()
    gc.collect()
    return out


def add_ratios(res: dict[str, dict[str, Any]], base: str) -> None:
    for v in res.values():
        v["ratio_vs_" + base] = round(v["median_ms"] / res[base]["median_ms"], 3)
        v["extra_state_mb_vs_" + base] = round(v["state_mb"] - res[base]["state_mb"], 2)


def unbatched(s: Stepper) -> Stepper:
    """The stepper with each matrix in its own Newton-Schulz call, as on the CPU (off the CPU
    same-shaped matrices share one batched call, see ``mugrokfast.muon._shape_batches``): the
    measurement behind that choice."""
    import mugrokfast.muon as mm

    batched = mm._shape_batches

    def one_each(params: list, grads: list) -> dict[tuple, list[int]]:
        # keys stay (shape, dtype, device)-like triples: the dtype slot made unique per matrix
        return {
            (flat, (dtype, i), dev): [i]
            for (flat, dtype, dev), idx in batched(params, grads).items()
            for i in idx
        }

    def step() -> None:
        mm._shape_batches = one_each
        try:
            s.step()
        finally:
            mm._shape_batches = batched

    return Stepper(step, s.opts)


def accelerator_makers(muon: list, rest: list, w: int) -> dict[str, Callable[[], Stepper]]:
    """Rows only off the CPU: the two per-device choices of the defaults, each against its
    alternative (fp32 Newton-Schulz; one NS call per matrix instead of batched)."""
    return {
        "MuGrokfast(None) ns fp32": lambda: mugrokfast_stepper(
            muon, rest, None, w, ns_dtype=torch.float32
        ),
        "MuGrokfast(None) unbatched NS": lambda: unbatched(mugrokfast_stepper(muon, rest, None, w)),
        "MuGrokfast(ema) unbatched NS": lambda: unbatched(mugrokfast_stepper(muon, rest, "ema", w)),
    }


def bench_shape_set(name: str, shapes: list[Shape], args: argparse.Namespace) -> dict[str, Any]:
    muon, rest = make_params(shapes, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    n_muon, n_rest = sum(p.numel() for p in muon), sum(p.numel() for p in rest)
    print(
        f"[{name}] {len(muon)} Muon matrices ({n_muon / 1e6:.2f}M), {len(rest)} AdamW params "
        f"({n_rest / 1e6:.2f}M)",
        flush=True,
    )
    w = args.ma_window
    makers = {
        "torch Muon+AdamW": lambda: torch_muon_adamw(muon, rest),
        "MuGrokfast(None)": lambda: mugrokfast_stepper(muon, rest, None, w),
        "MuGrokfast(ema)": lambda: mugrokfast_stepper(muon, rest, "ema", w),
        "MuGrokfast(None) tuned": lambda: mugrokfast_stepper(muon, rest, None, w, **TUNED),
        "MuGrokfast(ema) tuned": lambda: mugrokfast_stepper(muon, rest, "ema", w, **TUNED),
        f"MuGrokfast(ma, w={w})": lambda: mugrokfast_stepper(muon, rest, "ma", w),
        f"MuGrokfast(dual, w={w})": lambda: mugrokfast_stepper(muon, rest, "dual", w),
    }
    if args.device != "cpu":
        makers.update(accelerator_makers(muon, rest, w))
    if args.peers:
        makers.update(peer_makers(muon, rest))
    # MA/dual amplify only once the window is full: warm up past it.
    muon_res = time_steppers(makers, args.reps, args.steps, warmup=w + 1, sync=sync)
    add_ratios(muon_res, "torch Muon+AdamW")
    print_table(muon_res)

    params = muon + rest
    wrap_res = time_steppers(
        {
            "AdamW": lambda: plain_stepper(adamw(params)),
            "reference-style EMA + AdamW": lambda: reference_ema_stepper(params),
            "Grokfast(AdamW, ema)": lambda: wrapper_stepper(params, "ema"),
        },
        args.reps, args.steps * 3, warmup=2, sync=sync,
    )  # fmt: skip
    add_ratios(wrap_res, "reference-style EMA + AdamW")
    print_table(wrap_res)

    sub, n_sub = [], 0
    for p in muon:  # hidden matrices, in model order, up to --ma-params parameters
        if n_sub >= args.ma_params:
            break
        sub.append(p)
        n_sub += p.numel()
    ma_makers: dict[str, Callable[[], Stepper]] = {}
    for win in (10, 100, 200):
        ma_makers[f"Grokfast(AdamW, ma, w={win})"] = lambda win=win: wrapper_stepper(sub, "ma", win)
    for win in (10, 100, 200):
        ma_makers[f"reference-style MA w={win}"] = lambda win=win: reference_ma_stepper(sub, win)
    ma_res = time_steppers(ma_makers, args.reps, args.steps * 3, warmup=201, sync=sync)
    add_ratios(ma_res, "Grokfast(AdamW, ma, w=10)")
    print_table(ma_res)
    return {
        "n_muon_params": n_muon,
        "n_adamw_params": n_rest,
        "n_tensors": len(shapes),
        "ma_subset": {"n_tensors": len(sub), "n_params": sum(p.numel() for p in sub)},
        "muon_vs_torch": muon_res,
        "wrapper_vs_reference": wrap_res,
        "ma_window": ma_res,
    }


def print_table(res: dict[str, dict[str, Any]]) -> None:
    for name, v in res.items():
        ratio = next((v[k] for k in v if k.startswith("ratio_vs_")), None)
        print(
            f"  {name:34s} {v['median_ms']:10.2f} ms  x{ratio}  state {v['state_mb']:.1f} MB",
            flush=True,
        )


def goals(sets: dict[str, Any], window: int) -> dict[str, Any]:
    out = {}
    key = "ratio_vs_torch Muon+AdamW"
    for name, r in sets.items():
        m = r["muon_vs_torch"]
        ema, none = m["MuGrokfast(ema)"][key], m["MuGrokfast(None)"][key]
        wrap = r["wrapper_vs_reference"]["Grokfast(AdamW, ema)"][
            "ratio_vs_reference-style EMA + AdamW"
        ]
        ma = r["ma_window"]["Grokfast(AdamW, ma, w=200)"]["ratio_vs_Grokfast(AdamW, ma, w=10)"]
        out[name] = {
            "MuGrokfast(ema) defaults / torch Muon+AdamW": ema,
            "goal <= 1.10": ema <= 1.10,
            "MuGrokfast(None) defaults / torch Muon+AdamW": none,
            "goal <= 1.02": none <= 1.02,
            "MuGrokfast(ema) tuned / torch Muon+AdamW": m["MuGrokfast(ema) tuned"][key],
            "MuGrokfast(None) tuned / torch Muon+AdamW": m["MuGrokfast(None) tuned"][key],
            "Grokfast wrapper / reference style": wrap,
            "goal <= 1.0": wrap <= 1.0,
            "MA w=200 / w=10": ma,
            "goal <= 1.6": ma <= 1.6,
        }
    return out


def skip_newton_schulz() -> None:
    """--no-ns: Newton-Schulz becomes the cast to bf16 in torch.optim.Muon and in mugrokfast."""
    import mugrokfast.muon
    import torch.optim._muon

    torch.optim._muon._zeropower_via_newtonschulz = lambda G, *a, **k: G.to(  # type: ignore
        torch.bfloat16, copy=True
    )
    mugrokfast.muon.newtonschulz_ = lambda X, *a, **k: X  # type: ignore  # X: already bf16


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"


def defaults_text(device: str) -> str:
    ns = mugrokfast.default_ns_dtype(device)
    if device == "cpu":
        return (
            f"no ns_dtype, no foreach: ns_dtype=None -> {ns} on this CPU, foreach=None -> the "
            "cache-blocked CPU AdamW loop (mugrokfast._blocked)"
        )
    return (
        f"no ns_dtype, no foreach: ns_dtype=None -> {ns} on {device}, foreach=None -> torch's "
        "default AdamW path there; same-shaped matrices share one batched Newton-Schulz call"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="cognate-25m,gpt2-small", help="comma list of shape sets")
    ap.add_argument("--gpt2-layers", type=int, default=2, help="GPT-2 small has 12")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed repetition")
    ap.add_argument("--ma-window", type=int, default=10, help="MA window for the MuGrokfast rows")
    ap.add_argument(
        "--ma-params",
        type=float,
        default=1e6,
        help="parameters (first hidden matrices) in the MA-window test",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:N]; off the CPU every step is bracketed by a device synchronize, and "
        "rows for the per-device choices of the defaults are added (fp32 NS, unbatched NS)",
    )
    ap.add_argument(
        "--no-ns",
        action="store_true",
        help="replace Newton-Schulz by a bf16 cast in torch's Muon and MuGrokfast alike, to time "
        "the rest of the step (the part in which they differ) with less noise",
    )
    ap.add_argument(
        "--peers", action="store_true", help="add the peers' rows (benchmarks/peers.py)"
    )
    ap.add_argument("--out", default=None, help="JSON (a .md table is written next to it)")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print(f"error: --device {args.device}: only cpu, or cuda with a GPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.no_ns:
        skip_newton_schulz()

    load_before = os.getloadavg()
    sets: dict[str, Any] = {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name == "cognate-25m":
            shapes, source = cognate_shapes()
        elif name == "tiny":  # a smoke test of this script, seconds
            shapes, source = (
                [((64, 32), False), ((32, 32), True), ((64, 32), True), ((32,), False)],
                "tiny smoke-test set",
            )
        elif name == "gpt2-small":
            shapes, source = (
                gpt2_shapes(args.gpt2_layers),
                f"GPT-2 small shapes, {args.gpt2_layers} layers",
            )
        else:
            print(f"error: --sets: unknown shape set {name!r}", file=sys.stderr)
            return 2
        sets[name] = {"source": source, **bench_shape_set(name, shapes, args)}
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_native_bf16_matmul": mugrokfast.newton_schulz.CPU_NATIVE_BF16,
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "device": device_name(args.device),
        },
        "settings": {
            "lr": LR,
            "muon_lr": MUON_LR,
            "weight_decay": WD,
            "betas": BETAS,
            "torch": "torch.optim.Muon (bf16 Newton-Schulz, its only choice) + "
            "torch.optim.AdamW(foreach=True)",
            "MuGrokfast defaults": defaults_text(args.device),
            "MuGrokfast tuned": "ns_dtype=torch.bfloat16, foreach=True (torch's foreach AdamW "
            "for unfiltered tensors; filtered CPU tensors always take the blocked loop)",
            "reps": args.reps,
            "steps_per_rep": args.steps,
            "ma_window": args.ma_window,
            "newton_schulz": "skipped (--no-ns: a bf16 cast instead, for both)"
            if args.no_ns
            else "run",
            "timing": "median over reps of the mean step time; configs interleaved within a "
            "rep, the order rotated by one each rep",
        },  # fmt: skip
        "goals": goals(sets, args.ma_window),
        "sets": sets,
    }
    print(json.dumps(result["goals"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        md = os.path.splitext(args.out)[0] + ".md"
        with open(md, "w") as f:
            f.write(markdown(result))
        print(f"wrote {args.out} and {md}")
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Optimizer step cost",
        "",
        f"`{result['command']}`  ",
        f"{result['date']}, torch {result['torch']}, {result['machine']['platform']}, "
        f"{result['machine']['threads']} thread(s), device {result['machine']['device']}, "
        f"CPU ({result['machine']['cpu']}, native bf16 "
        f"matmul: {result['machine']['cpu_native_bf16_matmul']}; 1-min load average before / "
        f"after: {result['machine']['load_average_1min_before_after']}). Median of "
        f"{result['settings']['reps']} interleaved repetitions (order rotated each repetition) "
        f"of {result['settings']['steps_per_rep']} step(s). Newton-Schulz: "
        f"{result['settings']['newton_schulz']}.",
        "",
        f"torch: {result['settings']['torch']}. MuGrokfast defaults: "
        f"{result['settings']['MuGrokfast defaults']}. MuGrokfast tuned: "
        f"{result['settings']['MuGrokfast tuned']}. Other MuGrokfast rows: defaults.",
        "",
    ]
    for name, r in result["sets"].items():
        lines += [
            f"## {name}",
            "",
            f"Shapes: {r['source']}; {r['n_muon_params'] / 1e6:.2f}M Muon "
            f"params, {r['n_adamw_params'] / 1e6:.2f}M AdamW params.",
            "",
        ]
        for key in ("muon_vs_torch", "wrapper_vs_reference", "ma_window"):
            res = r[key]
            ratio_key = next(k for k in next(iter(res.values())) if k.startswith("ratio_vs_"))
            lines += [
                f"| optimizer | step ms | {ratio_key.replace('_', ' ')} | state MB |",
                "|---|---:|---:|---:|",
            ]
            for opt, v in res.items():
                lines.append(
                    f"| {opt} | {v['median_ms']:.2f} | {v[ratio_key]:.3f} | {v['state_mb']:.1f} |"
                )
            lines.append("")
    lines += ["## Goals", "", "```", json.dumps(result["goals"], indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
