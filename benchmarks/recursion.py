"""Does the TRM recursion refine, and does ACT halting save compute? (issue 10)

Trains Cognate models with the `quick` recipe (cognate-tiny, MuGrokfast lr 3e-3 / muon_lr 0.01,
batch 32, warmup + cosine, grad clip 1) on the curriculum's task families, mixed (no stage
schedule), then measures on the validation split:

- per cycle c = 0..K (K = trm_cycles + extra, test-time depth): answer-token CE and exact match,
  overall, on the families that need several steps (multi-digit addition, sorting, chains:
  `MULTI_STEP`) and on `hops` (pointer chasing, k = 1..4 links: several lookups per answer
  token), the latter also per hop count k;
  the per-cycle state RMS of y and z, the relative update ||y_c - y_{c-1}|| / ||y_{c-1}||, and
  the share of answer predictions that change at cycle c;
- ACT (with `--act`): halting on vs off at inference, batch 1 and 32: mean cycles, wall time
  of the forward, of the recursion alone, of cached decoding and of the recursion's share of
  that decoding (interleaved, repeated), exact match; with `--act-pack K` also at batch 32 on
  rows of up to K prompts back to back (longer sequences, where a cycle's arithmetic
  outweighs its per-op overhead).

`--families a,b` trains and scores on those families only (default: all; `--families hops` is
the pure pointer-chasing run).

`--models DIR` keeps the trained models: a variant found there is loaded instead of trained
(so a timing can be repeated without retraining; the result says so).

Exact match here is teacher-forced: every answer token and the final <eos> are the argmax given
the true prefix. That is the same verdict as greedy decoding (if every step's argmax is right,
greedy reproduces the answer; if greedy is right, each step saw the true prefix), and the script
checks it against `cognate_train.evaluation.exact_match` for the final cycle of each model.

Variants (`--variants`): reasoning, speed, memory (the specializations), no_recursion (the
reasoning config with 1 cycle x 1 micro step: the same parameters, no recursion), and two
design probes on the reasoning config: reasoning_prenorm (the earlier pre-norm recursion
block, h + f(norm h), for the before/after scale figures) and reasoning_latent_attn (the latent
update also attends causally to the other positions' latents: does it help?), and variants
for the cycle-CE goal: reasoning_last_cycle (TRM's deep recursion: cycles 1..C-1 without grad,
CE on the last cycle only), reasoning_rising (supervision weights 0, 1, 2, 4, 8 for y0..y4),
reasoning_per_cycle (every cycle from a detached (y, z), the default supervision weights:
the reasoning specialization before 2026-12-01), reasoning_full_grad(_rising)
(`recursion_gradient="all_cycles"`: backward through every cycle), reasoning_y0 (the
reasoning specialization with weight 0.5 on y0) and three probes with TRM's input injection
(reasoning_inject, reasoning_inject_full_grad(_rising): z = net(z + y + x)).

    uv run python benchmarks/recursion.py --steps 900 --extra-cycles 4 \\
        --variants reasoning,no_recursion,reasoning_prenorm,reasoning_latent_attn,speed \\
        --act speed --out benchmarks/results/recursion.json
    uv run python benchmarks/recursion.py --variants reasoning --steps 1800 --families hops \\
        --n-train 20000 --n-val 256 --models /tmp/hops --out /tmp/hops/reasoning.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cognate_model import CognateConfig, CognateForCausalLM  # noqa: E402
from cognate_model.attention import Attention, RMSNorm  # noqa: E402
from cognate_model.recursion import RecursionBlock, fixed_scale  # noqa: E402
from grokking import machine_info  # noqa: E402

MULTI_STEP = ("arith_add_long", "sort", "arith_chain")
HOPS = "hops"  # reported on its own (and per hop count): not part of MULTI_STEP, so the
# multi-step figures stay comparable with the runs made before the family existed
RISING = [0, 1, 2, 4, 8]  # deep-supervision weights for y0..y4 that double with the cycle
# the reasoning specialization until 2026-12-01: 4 cycles, each from a detached (y, z), the
# default weights 0.33 .. 1 (the earlier runs' `reasoning`; the probes below start from it)
BEFORE = {"trm_cycles": 4, "recursion_gradient": "per_cycle", "deep_supervision_weights": None}
FULL = {**BEFORE, "recursion_gradient": "all_cycles"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "reasoning": ("reasoning", {}),
    "speed": ("speed", {}),
    "memory": ("memory", {}),
    "no_recursion": (
        "reasoning",
        {"trm_cycles": 1, "trm_micro_steps": 1, "deep_supervision_weights": None},
    ),
    "reasoning_prenorm": ("reasoning", BEFORE),
    "reasoning_latent_attn": ("reasoning", BEFORE),
    # what makes later cycles lower val CE? (the cycle-CE goal of issue 10)
    "reasoning_per_cycle": ("reasoning", BEFORE),
    # TRM's deep recursion: cycles 1..C-1 without grad, the last with grad and the only CE term
    "reasoning_last_cycle": (
        "reasoning",
        {**BEFORE, "recursion_gradient": "last_cycle", "deep_supervision_weights": [0, 0, 0, 0, 1]},
    ),
    "reasoning_rising": ("reasoning", {**BEFORE, "deep_supervision_weights": RISING}),
    # backward through every cycle: later cycles' CE also trains what earlier ones hand on
    "reasoning_full_grad": ("reasoning", FULL),
    "reasoning_full_grad_rising": ("reasoning", {**FULL, "deep_supervision_weights": RISING}),
    # the reasoning specialization with some weight on y0 (does the backbone learn sooner?)
    "reasoning_y0": ("reasoning", {"deep_supervision_weights": [0.5, 1, 2, 4]}),
    # TRM's input injection, z = net(z + y + x, attend to x) (`inject_input`)
    "reasoning_inject": ("reasoning", BEFORE),
    "reasoning_inject_full_grad": ("reasoning", FULL),
    "reasoning_inject_full_grad_rising": (
        "reasoning",
        {**FULL, "deep_supervision_weights": RISING},
    ),
}


class PreNormBlock(RecursionBlock):
    """The recursion block before issue 10: pre-norm residuals, h + f(norm h), no output norm."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float) -> None:
        super().__init__(d_model, n_heads, d_ff, eps, 0.0)
        self.attn_norm = RMSNorm(d_model, eps=eps)
        self.mlp_norm = RMSNorm(d_model, eps=eps)

    def forward(self, h, k=None, v=None, mask=None, cos=None, sin=None):  # noqa: ANN001, ANN201
        if k is not None:
            h = h + self.attn(self.attn_norm(h), mask, cos, sin, kv=(k, v))
        return h + self.mlp(self.mlp_norm(h))


class LatentAttnBlock(RecursionBlock):
    """The latent update also attends causally (same window) to the other positions' latents:
    h = norm(h + SelfAttn(h)) first. Not cacheable as is (a cached step would need every cycle's
    latent keys/values): a probe of whether it is worth that."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float) -> None:
        super().__init__(d_model, n_heads, d_ff, eps, 0.0)
        self.self_attn = Attention(d_model, n_heads)

    def forward(self, h, k=None, v=None, mask=None, cos=None, sin=None):  # noqa: ANN001, ANN201
        if k is not None:
            h = fixed_scale(h + self.self_attn(h, mask, cos, sin), self.eps)
        return super().forward(h, k, v, mask, cos, sin)


def build(variant: str, vocab: int, tokenizer: Any, seed: int) -> CognateForCausalLM:
    spec, overrides = VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = CognateConfig.from_preset(
        "cognate-tiny",
        spec,
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    model = CognateForCausalLM(cfg)
    dims = (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.rms_norm_eps)
    if variant == "reasoning_prenorm":
        model.recursion.block = PreNormBlock(*dims)
    elif variant == "reasoning_latent_attn":
        model.recursion.block = LatentAttnBlock(*dims)
        # halted positions cannot leave the computation when the others attend to them:
        # inference halting runs every cycle for every position in this probe
        no_gathering(model.recursion)
    if variant.startswith("reasoning_inject"):
        inject_input(model.recursion)
    return model


def inject_input(rec: Any) -> None:
    """TRM's input injection on `rec`: the latent update also reads the position's own
    features, z = net(z + y + x, attend to x). Inference halting then runs every cycle for
    every position (the patched cycle reads x whole)."""
    forward = rec.forward

    def forward_keeping_x(x, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        rec._x = x
        return forward(x, *args, **kwargs)

    def cycle(y, z, f):  # noqa: ANN001, ANN202
        for _ in range(rec.micro_steps):
            z = rec.block(z + y + rec._x, f.k, f.v, f.mask, f.cos, f.sin)
        y = rec.block(y + z)
        return y, z, rec.act_head(z) if rec.act_head is not None else None

    rec.forward, rec.cycle = forward_keeping_x, cycle
    no_gathering(rec)


def no_gathering(rec: Any) -> None:
    """Inference halting on `rec` runs every cycle for every position (outputs as without
    halting): for probes whose cycles cannot run on gathered positions alone."""
    rec._halting = lambda y, z, f, cycles, *_: rec._all_cycles(y, z, f, cycles)


def train_config() -> Any:
    from cognate_train.config import TrainConfig
    from cognate_train.presets import TRAIN_PRESETS

    cfg = TrainConfig()
    for key, value in TRAIN_PRESETS["quick"].items():
        setattr(cfg, key, value)
    return cfg


def recipe() -> str:
    """The training recipe in words, read off `train_config` (the quick preset's optimizer:
    MuGrokfast with its filter off since 2026-11-30 18:01 UTC, `--optimizer muon`)."""
    c = train_config()
    return (
        f"quick ({c.optimizer} lr {c.lr:g} muon_lr {c.muon_lr:g}, batch {c.batch_size}, "
        f"max_len {c.max_len}), the families below mixed"
    )


def train(model: CognateForCausalLM, tokenizer: Any, train_ex: list, steps: int, seed: int):
    """The quick recipe on shuffled mixed-family batches; returns the wall time in seconds."""
    from cognate_train.data import encode
    from cognate_train.optim import build_optimizer, build_scheduler

    cfg = train_config()
    opt = build_optimizer(cfg.optimizer, model, cfg)
    sched = build_scheduler(opt, cfg.warmup_steps, steps, cfg.min_lr_ratio)
    rng = random.Random(seed)
    order: list = []
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        if len(order) < cfg.batch_size:
            order = list(train_ex)
            rng.shuffle(order)
        batch = encode(tokenizer, order[: cfg.batch_size], cfg.max_len)
        order = order[cfg.batch_size :]
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    model.eval()
    return time.perf_counter() - t0


def _row_keys(example: Any) -> tuple[str, ...]:
    """The groups an example is scored in: its family, and for hops also 'hops_k<k>'."""
    if example.family != HOPS:
        return (example.family,)
    from cognate_train.tasks.hops import hop_count

    return (example.family, f"{HOPS}_k{hop_count(example.prompt)}")


def val_batches(tokenizer: Any, val: list, max_len: int, size: int = 64) -> list[dict]:
    from cognate_train.data import encode

    out = []
    for i in range(0, len(val), size):
        chunk = val[i : i + size]
        out.append(
            {
                "families": [e.family for e in chunk],
                "keys": [_row_keys(e) for e in chunk],
                **encode(tokenizer, chunk, max_len),
            }
        )
    return out


def _record_z(model: CognateForCausalLM) -> tuple[list, Any]:
    """Wrap the recursion's cycle to record each cycle's z; returns (list, undo)."""
    zs: list = []
    rec = model.recursion
    original = rec.cycle

    def cycle(y, z, f):  # noqa: ANN001, ANN202
        y, z, logit = original(y, z, f)
        zs.append(z)
        return y, z, logit

    rec.cycle = cycle
    return zs, lambda: setattr(rec, "cycle", original)


def _targets(batch: dict) -> torch.Tensor:
    from cognate_model.heads import shift_labels

    return shift_labels(batch["labels"])


def _batch_cycle_stats(model: CognateForCausalLM, batch: dict, cycles: int) -> list[dict]:
    """Per cycle c = 0..cycles: sums over this batch (CE, answer tokens, exact matches per family,
    state RMS, relative update, changed predictions)."""
    import torch.nn.functional as F

    zs, undo = _record_z(model)
    try:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            act_halting=False,
            trm_cycles=cycles,
            output_hidden_states=True,
            use_cache=False,
        )
    finally:
        undo()
    targets = _targets(batch)
    valid, real = targets != -100, batch["attention_mask"].bool()
    stats, prev_y, prev_pred = [], None, None
    for c, y in enumerate(out.recursion_states):
        logits = model.lm_logits(y).float()
        ce = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
        pred = logits.argmax(-1)
        ok = ((pred == targets) | ~valid).all(1)
        z = y if c == 0 else zs[c - 1]
        s = {
            "ce_sum": float(ce[valid].sum()),
            "tokens": int(valid.sum()),
            "ok": ok.tolist(),
            "families": batch["families"],
            "keys": batch["keys"],
            "ce_rows": (ce * valid).sum(1).tolist(),
            "tok_rows": valid.sum(1).tolist(),
            "rms_y": float(y[real].pow(2).mean(-1).sqrt().sum()),
            "rms_z": float(z[real].pow(2).mean(-1).sqrt().sum()),
            "positions": int(real.sum()),
            "rel_update": 0.0,
            "changed": 0,
        }
        if prev_y is not None:
            rel = (y - prev_y).norm(dim=-1) / prev_y.norm(dim=-1).clamp_min(1e-12)
            s["rel_update"] = float(rel[real].sum())
            s["changed"] = int((pred != prev_pred)[valid].sum())
        stats.append(s)
        prev_y, prev_pred = y, pred
    return stats


def _group_scores(parts: list[dict]) -> tuple[dict, dict]:
    """Per group (family, or hops_k<k>): the rows' exact-match verdicts, [CE sum, tokens]."""
    fam_ok: dict[str, list[int]] = {}
    fam_ce: dict[str, list[float]] = {}
    for p in parts:
        for keys, ok, ce, n in zip(p["keys"], p["ok"], p["ce_rows"], p["tok_rows"], strict=True):
            for f in keys:
                fam_ok.setdefault(f, []).append(int(ok))
                fam_ce.setdefault(f, [0.0, 0])
                fam_ce[f][0] += ce
                fam_ce[f][1] += n
    return fam_ok, fam_ce


def _hops_row(fam_ok: dict, fam_ce: dict) -> dict | None:
    """CE and exact match on hops, overall and per hop count k (None without hops)."""
    if HOPS not in fam_ok:
        return None

    def score(key: str) -> dict:
        ok, (ce, n) = fam_ok[key], fam_ce[key]
        return {"ce": round(ce / n, 5), "exact_match": round(sum(ok) / len(ok), 4), "n": len(ok)}

    ks = sorted(int(k.removeprefix(f"{HOPS}_k")) for k in fam_ok if k.startswith(f"{HOPS}_k"))
    return {**score(HOPS), "by_k": {str(k): score(f"{HOPS}_k{k}") for k in ks}}


def no_lookup_baseline(val: list) -> dict | None:
    """Exact match on the hops validation prompts, overall and per k, of a rule that follows no
    link (`cognate_train.tasks.hops.no_lookup_guess`): what a model gets from the facts'
    statistics alone. None without hops."""
    from cognate_train.tasks.hops import hop_count, no_lookup_guess

    rows = [(hop_count(e.prompt), no_lookup_guess(e.prompt) == e.answer) for e in val
            if e.family == HOPS]  # fmt: skip
    if not rows:
        return None
    by_k = {k: [ok for kk, ok in rows if kk == k] for k in sorted({k for k, _ in rows})}
    return {
        "exact_match": round(sum(ok for _, ok in rows) / len(rows), 4),
        "by_k": {str(k): round(sum(v) / len(v), 4) for k, v in by_k.items()},
    }


def _aggregate(per_batch: list[list[dict]], trained: int) -> list[dict]:
    rows = []
    for c in range(len(per_batch[0])):
        parts = [b[c] for b in per_batch]
        tokens = sum(p["tokens"] for p in parts)
        positions = sum(p["positions"] for p in parts)
        fam_ok, fam_ce = _group_scores(parts)
        families = {f for p in parts for f in p["families"]}
        n_rows = sum(len(p["ok"]) for p in parts)
        ms = [f for f in MULTI_STEP if f in fam_ok]
        ms_ok = [o for f in ms for o in fam_ok[f]]
        rows.append(
            {
                "cycle": c,
                "test_time_extra": c > trained,
                "val_ce": round(sum(p["ce_sum"] for p in parts) / tokens, 5),
                "exact_match": round(sum(sum(fam_ok[f]) for f in families) / n_rows, 4),
                # None when the run has none of the MULTI_STEP families (e.g. --families hops)
                "multi_step_ce": round(
                    sum(fam_ce[f][0] for f in ms) / sum(fam_ce[f][1] for f in ms), 5
                )
                if ms
                else None,
                "multi_step_exact_match": round(sum(ms_ok) / len(ms_ok), 4) if ms else None,
                "hops": _hops_row(fam_ok, fam_ce),
                "family_exact_match": {
                    f: round(sum(v) / len(v), 4) for f, v in fam_ok.items() if f in families
                },
                "rms_y": round(sum(p["rms_y"] for p in parts) / positions, 4),
                "rms_z": round(sum(p["rms_z"] for p in parts) / positions, 4),
                "rel_update": round(sum(p["rel_update"] for p in parts) / positions, 5),
                "changed_predictions": round(sum(p["changed"] for p in parts) / tokens, 5),
            }
        )
    return rows


@torch.no_grad()
def cycle_metrics(model: CognateForCausalLM, batches: list[dict], extra: int) -> list[dict]:
    trained = model.config.trm_cycles
    per_batch = [_batch_cycle_stats(model, b, trained + extra) for b in batches]
    return _aggregate(per_batch, trained)


@torch.no_grad()
def teacher_forced_em(
    model: CognateForCausalLM, batches: list[dict], first: int = 0, **kwargs: Any
) -> dict:
    """Exact match (= greedy's verdict) and mean cycles per real token of the default forward
    (of the tokens at positions >= `first`)."""
    ok, steps, positions = [], 0.0, 0
    for b in batches:
        out = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False, **kwargs
        )
        targets = _targets(b)
        valid = targets != -100
        ok += ((out.logits.argmax(-1) == targets) | ~valid).all(1).tolist()
        if out.act_steps is not None:
            real = b["attention_mask"].bool()
            real[:, :first] = False
            steps += float(out.act_steps[real].float().sum())
            positions += int(real.sum())
    return {
        "exact_match": round(sum(ok) / len(ok), 4),
        "mean_cycles": round(steps / max(1, positions), 4),
    }


def _chunks(tokenizer: Any, val: list, max_len: int, size: int) -> list[dict]:
    return val_batches(tokenizer, val, max_len, size)


def packed_chunks(
    tokenizer: Any, val: list, pack: int, size: int, max_len: int = 256
) -> list[dict]:
    """Rows of up to `pack` consecutive validation examples back to back (each `<bos> prompt
    answer <eos>`, labels on the answers; at most `max_len` tokens, the model's limit),
    right-padded, `size` rows a batch: longer sequences, where a cycle's compute outweighs its
    per-op overhead (the ACT timing's second regime)."""
    rows, group = [], []
    for ex in [*val, None]:  # greedy: up to `pack` examples within max_len
        enc = None if ex is None else val_batches(tokenizer, [ex], 64, 1)[0]
        n = 0 if enc is None else enc["input_ids"].shape[1]
        if group and (
            enc is None or len(group) == pack or sum(len(g) for g, _ in group) + n > max_len
        ):
            rows.append({"input_ids": torch.cat([g for g, _ in group]),
                         "labels": torch.cat([lab for _, lab in group])})  # fmt: skip
            group = []
        if enc is not None:
            group.append((enc["input_ids"][0], enc["labels"][0]))
    out = []
    for i in range(0, len(rows), size):
        part = rows[i : i + size]
        width = max(len(r["input_ids"]) for r in part)
        batch = {
            "input_ids": torch.full((len(part), width), tokenizer.pad_token_id),
            "attention_mask": torch.zeros(len(part), width, dtype=torch.long),
            "labels": torch.full((len(part), width), -100),
        }
        for j, r in enumerate(part):
            n = len(r["input_ids"])
            batch["input_ids"][j, :n], batch["labels"][j, :n] = r["input_ids"], r["labels"]
            batch["attention_mask"][j, :n] = 1
        out.append(batch)
    return out


def _time_forward(model: CognateForCausalLM, chunks: list[dict], halting: bool) -> float:
    t0 = time.perf_counter()
    for b in chunks:
        model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            act_halting=halting,
            use_cache=False,
            return_metrics=False,
        )
    return time.perf_counter() - t0


def _time_recursion(model: CognateForCausalLM, inputs: list[tuple], halting: bool) -> float:
    threshold = model.config.act_threshold if halting else None
    t0 = time.perf_counter()
    for x, attn in inputs:
        model.recursion(x, *attn, halt_threshold=threshold, real=attn.new_mask)
    return time.perf_counter() - t0


def _time_decode(model: CognateForCausalLM, chunks: list[dict], halting: bool) -> float:
    """Cached decoding through each chunk: a prefill of the first PREFILL tokens, then one token
    a step (what generation computes, teacher-forced)."""
    from cognate_model import CognateCache

    t0 = time.perf_counter()
    for b in chunks:
        ids, mask = b["input_ids"], b["attention_mask"]
        cache = CognateCache(model.config)
        for a, z in [(0, PREFILL), *((t, t + 1) for t in range(PREFILL, ids.shape[1]))]:
            model(
                input_ids=ids[:, a:z],
                attention_mask=mask[:, :z],
                past_key_values=cache,
                act_halting=halting,
                return_metrics=False,
            )
    return time.perf_counter() - t0


def _time_decode_recursion(model: CognateForCausalLM, chunks: list[dict], halting: bool) -> float:
    """The wall time spent inside the recursion in the one-token steps of cached decoding
    (`_time_decode`; the prefill left out): where a generated token's cycles go. At batch 1
    such a step has one position, so a halted token skips its remaining cycles outright; the
    backbone's share of a step does not change with halting and is left out (forward hooks
    around `model.recursion`)."""
    spent, start = [0.0], [None]

    def enter(_: Any, args: tuple) -> None:
        start[0] = time.perf_counter() if args[0].shape[1] == 1 else None

    def leave(*_: Any) -> None:
        if start[0] is not None:
            spent[0] += time.perf_counter() - start[0]

    hooks = (
        model.recursion.register_forward_pre_hook(enter),
        model.recursion.register_forward_hook(leave),
    )
    try:
        _time_decode(model, chunks, halting)
    finally:
        for h in hooks:
            h.remove()
    return spent[0]


PREFILL = 8
TIMERS = {
    "forward": _time_forward,
    "recursion": _time_recursion,
    "decode": _time_decode,
    "decode_recursion": _time_decode_recursion,
}


def decode_chunks(chunks: list[dict]) -> list[dict]:
    """The chunks the decoding timers run through (the first 64 examples only at batch 1)."""
    return chunks[: max(2, 64 // len(chunks[0]["input_ids"]))]


def _timings(model: CognateForCausalLM, chunks: list[dict], reps: int) -> dict[str, dict]:
    """Wall times (sorted) of `reps` interleaved repetitions, halting on and off, of: the full
    forward, the recursion alone (on precomputed features), cached decoding (`decode_chunks`)
    and the recursion's share of it."""
    inputs = []
    for b in chunks:
        ids, mask = b["input_ids"], b["attention_mask"]
        attn = model.model.attention_inputs(ids.shape[1], mask, ids.device, torch.float32)
        x = model.model(ids, mask, attention_inputs=attn).last_hidden_state
        inputs.append((x, attn))
    data = {"forward": chunks, "recursion": inputs, "decode": decode_chunks(chunks)}
    data["decode_recursion"] = data["decode"]
    times: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []} for k in TIMERS}
    for r in range(reps):
        for halting in (True, False) if r % 2 == 0 else (False, True):
            for name, fn in TIMERS.items():
                times[name][halting].append(fn(model, data[name], halting))
    return {k: {h: sorted(v) for h, v in per.items()} for k, per in times.items()}


@torch.no_grad()
def act_timing(model: CognateForCausalLM, chunks: list[dict], reps: int) -> dict:
    """Halting on vs off at one batch size: mean cycles, exact match, wall times and the goal:
    time(halting) <= 1.15 x (mean cycles / max cycles) x time(all cycles)."""
    times = _timings(model, chunks, reps)
    on = teacher_forced_em(model, chunks, act_halting=True)
    off = teacher_forced_em(model, chunks, act_halting=False)
    cycles = model.config.trm_cycles
    ideal = on["mean_cycles"] / cycles
    out = {
        "mean_cycles": on["mean_cycles"],
        "max_cycles": cycles,
        "ideal_ratio": round(ideal, 4),
        "exact_match_halting": on["exact_match"],
        "exact_match_all_cycles": off["exact_match"],
        "goal_accuracy_met": abs(on["exact_match"] - off["exact_match"]) <= 0.01,
    }
    # the decoding timers run through a subset: their goal uses the mean cycles of its tokens
    # after the prefill (the one-token steps)
    decoded = teacher_forced_em(model, decode_chunks(chunks), first=PREFILL, act_halting=True)[
        "mean_cycles"
    ]
    out["ideal_ratio_decoded"] = round(decoded / cycles, 4)
    for name, t in times.items():  # the goal on the medians; the minima beside them
        on_s, off_s = t[True][len(t[True]) // 2], t[False][len(t[False]) // 2]
        out[f"{name}_s"] = {"halting": round(on_s, 4), "all_cycles": round(off_s, 4)}
        out[f"{name}_ratio"] = round(on_s / off_s, 4)
        out[f"{name}_ratio_of_minima"] = round(t[True][0] / t[False][0], 4)
        target = decoded / cycles if name.startswith("decode") else ideal
        out[f"goal_{name}_met"] = on_s / off_s <= 1.15 * target
    return out


def greedy_check(model: CognateForCausalLM, tokenizer: Any, val: list, batches: list) -> dict:
    """The teacher-forced exact match of the default forward vs cognate_train's greedy one."""
    from cognate_train.evaluation import exact_match

    greedy = exact_match(model, tokenizer, val, batch_size=64)["accuracy"]
    forced = teacher_forced_em(model, batches)["exact_match"]
    return {
        "greedy": round(greedy, 4),
        "teacher_forced": forced,
        "equal": round(greedy, 4) == forced,
    }


def load_weights(model: CognateForCausalLM, saved: Path) -> None:
    """The weights `save_pretrained` wrote into `model` as `build` made it (with the probe's
    block or patch in place, which `from_pretrained` would not rebuild); eval mode."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(
        load_file(saved / "model.safetensors"), strict=False
    )
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"{saved}: weights do not fit: {missing=} {unexpected=}")
    model.tie_weights()
    model.eval()


def run_variant(name: str, args: argparse.Namespace, data: dict) -> dict:
    tok = data["tokenizer"]
    model = build(name, len(tok), tok, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    saved = Path(args.models) / name if args.models else None
    loaded = saved is not None and (saved / "train.json").exists()
    if loaded:  # trained by an earlier invocation with the same settings
        load_weights(model, saved)
        wall = json.loads((saved / "train.json").read_text())["train_wall_s"]
    else:
        wall = train(model, tok, data["train"], args.steps, args.seed)
        if saved is not None:
            model.save_pretrained(saved)
            (saved / "train.json").write_text(
                json.dumps({"train_wall_s": wall, "steps": args.steps})
            )
    result = {
        "variant": name,
        "config": {
            k: getattr(model.config, k)
            for k in ("trm_cycles", "trm_micro_steps", "act_threshold", "ltm_type")
        },
        "overrides": VARIANTS[name][1],
        "n_params": n_params,
        "train_wall_s": round(wall, 1),
        "trained_by_an_earlier_invocation": loaded,
        "cycles": cycle_metrics(model, data["val_batches"], args.extra_cycles),
        "greedy_check": greedy_check(model, tok, data["val"], data["val_batches"]),
    }
    if name in args.act:
        result["act"] = {
            str(bs): act_timing(model, _chunks(tok, data["val"], 64, bs), args.reps)
            for bs in (1, 32)
        }
        if args.act_pack > 1:  # exact match here is per packed row (every answer in it right)
            chunks = packed_chunks(tok, data["val"], args.act_pack, 32)
            result["act"][f"32_packed{args.act_pack}"] = act_timing(model, chunks, args.reps)
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}), flush=True)
    return result


def goals(results: dict[str, dict]) -> dict[str, Any]:
    """The issue's goals, read off the per-cycle rows, for `reasoning` and every variant of it
    with recursion (keys prefixed by the variant name)."""
    out: dict[str, Any] = {}
    base = results.get("no_recursion")
    for name, r in results.items():
        c = r["config"]["trm_cycles"]
        if not name.startswith("reasoning") or c < 2:
            continue
        ce = [row["val_ce"] for row in r["cycles"]]
        out[f"{name}_each_cycle_lowers_ce"] = all(ce[i + 1] < ce[i] for i in range(c))
        out[f"{name}_cycle_C_vs_1"] = round(ce[c] / ce[1] - 1, 4)
        out[f"{name}_cycle_C_5pct_below_1"] = ce[c] <= 0.95 * ce[1]
        multi = [row["multi_step_ce"] for row in r["cycles"]]
        if multi[0] is not None:  # the same on the multi-step families alone
            out[f"{name}_multi_step_each_cycle_lowers_ce"] = all(
                multi[i + 1] < multi[i] for i in range(c)
            )
            out[f"{name}_multi_step_cycle_C_vs_1"] = round(multi[c] / multi[1] - 1, 4)
        extra = r["cycles"][c + 1 :]
        if extra:
            best = min(extra, key=lambda row: row["val_ce"])
            out[f"{name}_test_time_best_extra"] = {
                "cycle": best["cycle"],
                "val_ce_delta": round(best["val_ce"] - ce[c], 5),
                "exact_match_delta": round(best["exact_match"] - r["cycles"][c]["exact_match"], 4),
            }
        if r["cycles"][c].get("hops"):
            out.update(_hops_goals(name, r, c))
        if base is None:
            continue
        a, b = r["cycles"][c], base["cycles"][1]
        if a["multi_step_ce"] is not None:
            out[f"{name}_vs_no_recursion_multi_step"] = {
                "ce": [a["multi_step_ce"], b["multi_step_ce"]],
                "exact_match": [a["multi_step_exact_match"], b["multi_step_exact_match"]],
                "beats": a["multi_step_ce"] < b["multi_step_ce"]
                and a["multi_step_exact_match"] >= b["multi_step_exact_match"],
            }
        if a.get("hops") and b.get("hops"):
            ha, hb = a["hops"], b["hops"]
            out[f"{name}_vs_no_recursion_hops"] = {
                "ce": [ha["ce"], hb["ce"]],
                "exact_match": [ha["exact_match"], hb["exact_match"]],
                "exact_match_by_k": {
                    k: [v["exact_match"], hb["by_k"][k]["exact_match"]]
                    for k, v in ha["by_k"].items()
                },
                "beats": ha["ce"] < hb["ce"] and ha["exact_match"] >= hb["exact_match"],
            }
    return out


def _hops_goals(name: str, r: dict, c: int) -> dict[str, Any]:
    """The cycle-CE goal on the hops family alone (cycles 1..C of its CE)."""
    ce = [row["hops"]["ce"] for row in r["cycles"]]
    return {
        f"{name}_hops_each_cycle_lowers_ce": all(ce[i + 1] < ce[i] for i in range(c)),
        f"{name}_hops_cycle_C_vs_1": round(ce[c] / ce[1] - 1, 4),
        f"{name}_hops_cycle_C_5pct_below_1": ce[c] <= 0.95 * ce[1],
    }


def _hops_table(cycles: list[dict]) -> list[str]:
    """The hops family per cycle: CE and exact match, overall and per hop count k."""
    if not cycles[0].get("hops"):
        return []
    ks = list(cycles[0]["hops"]["by_k"])
    n = ", ".join(f"k={k}: {cycles[0]['hops']['by_k'][k]['n']}" for k in ks)
    lines = [
        "",
        f"hops ({cycles[0]['hops']['n']} prompts; {n}):",
        "",
        "| cycle | hops CE | hops EM | " + " | ".join(f"CE k={k} | EM k={k}" for k in ks) + " |",
        "|---" * (3 + 2 * len(ks)) + "|",
    ]
    for row in cycles:
        h = row["hops"]
        per_k = " | ".join(f"{h['by_k'][k]['ce']} | {h['by_k'][k]['exact_match']}" for k in ks)
        mark = " (test-time)" if row["test_time_extra"] else ""
        lines.append(f"| {row['cycle']}{mark} | {h['ce']} | {h['exact_match']} | {per_k} |")
    return lines


def write_markdown(payload: dict, path: Path) -> None:
    lines = [
        "# Recursion and halting (issue 10)",
        "",
        *record_lines(payload, ".  "),
        f"Settings: {json.dumps(payload['settings'])}",
        "",
        *(
            [
                f"hops, exact match of a rule that follows no link: "
                f"{json.dumps(payload['hops_no_lookup_baseline'])}",
                "",
            ]
            if payload.get("hops_no_lookup_baseline")
            else []
        ),
        "## Goals",
        "",
        "```",
        json.dumps(payload["goals"], indent=1),
        "```",
    ]
    for name, r in payload["results"].items():
        lines += ["", f"## {name} ({r['n_params']} parameters, {json.dumps(r['config'])})", ""]
        if r.get("overrides"):
            lines += [f"Config overrides: `{json.dumps(r['overrides'])}`", ""]
        lines += [
            "| cycle | val CE | exact match | multi-step CE | multi-step EM | RMS y | RMS z "
            "| rel. update | changed preds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["cycles"]:
            mark = " (test-time)" if row["test_time_extra"] else ""
            lines.append(
                f"| {row['cycle']}{mark} | {row['val_ce']} | {row['exact_match']} | "
                f"{row['multi_step_ce']} | {row['multi_step_exact_match']} | {row['rms_y']} | "
                f"{row['rms_z']} | {row['rel_update']} | {row['changed_predictions']} |"
            )
        lines += _hops_table(r["cycles"])
        lines += ["", f"Greedy check: {json.dumps(r['greedy_check'])}"]
        for bs, a in r.get("act", {}).items():
            lines += ["", f"ACT at batch {bs}: `{json.dumps(a)}`"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="reasoning,no_recursion")
    p.add_argument("--act", default="", help="variants to time with halting on/off")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--extra-cycles", type=int, default=4)
    p.add_argument(
        "--families", default="", help="comma-separated task families (default: all of them)"
    )
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/recursion.json")
    p.add_argument(
        "--act-pack",
        type=int,
        default=0,
        help="also time ACT at batch 32 on rows of this many validation examples back to back",
    )
    p.add_argument(
        "--models",
        default="",
        help="folder of trained models: a variant saved there (same settings) is loaded "
        "instead of trained, else trained and saved there",
    )
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    args.act = [v for v in args.act.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(1)
    from cognate_train.data import all_families, make_split
    from cognate_train.tokenizer import build_tokenizer

    families = [f for f in args.families.split(",") if f] or all_families()
    unknown = [f for f in families if f not in all_families()]
    if unknown:
        p.error(f"--families: unknown {unknown}; known: {all_families()}")
    tok = build_tokenizer()
    load0 = os.getloadavg()
    train_ex, val = make_split(families, args.n_train, args.n_val, args.seed, 64)
    data = {
        "tokenizer": tok,
        "train": train_ex,
        "val": val,
        "val_batches": val_batches(tok, val, 64),
        "hops_baseline": no_lookup_baseline(val),
    }
    results = {v: run_variant(v, args, data) for v in args.variants}
    payload = {
        **run_record("recursion.py", argv, load0),
        "settings": {
            "model_preset": "cognate-tiny",
            "recipe": recipe(),
            "steps": args.steps,
            "n_train_per_family": args.n_train,
            "n_val_per_family": args.n_val,
            "extra_cycles": args.extra_cycles,
            "families": families,
            "multi_step_families": [f for f in MULTI_STEP if f in families],
            "seed": args.seed,
            "reps": args.reps,
            "act_pack": args.act_pack,
        },
        "hops_no_lookup_baseline": data["hops_baseline"],
        "goals": goals(results),
        "results": results,
    }
    save(payload, Path(args.out))


def run_record(script: str, argv: list[str] | None, load0: tuple[float, ...]) -> dict:
    """What every result file of these benchmarks starts with: the command (`argv`, or the
    process's own arguments when None), date, load average at start (`load0`) and now, torch
    and the machine (one thread, CPU)."""
    return {
        "command": f"uv run python benchmarks/{script} "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "machine": machine_info(1, "cpu"),
    }


def record_lines(payload: dict, end: str) -> list[str]:
    """The Markdown lines for `run_record`'s fields: the command, then date, load and torch
    (that line closed by `end`)."""
    return [
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}; load average at start {payload['loadavg_start']}, "
        f"at end {payload['loadavg_end']}; torch {payload['torch']}, 1 thread{end}",
    ]


def write_json(payload: dict, out: Path) -> None:
    """Written to a temporary name, then renamed: a failed run leaves the old file whole."""
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(out)


def save(payload: dict, out: Path) -> None:
    """JSON (`write_json`) and its Markdown next to it."""
    write_json(payload, out)
    write_markdown(payload, out.with_suffix(".md"))
    print(json.dumps(payload["goals"], indent=1))


def combine(paths: list[str], out: Path) -> None:
    """Merge runs made as separate jobs (one variant each, same settings) into one result."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    results = {k: v for part in parts for k, v in part["results"].items()}
    payload = dict(parts[0])
    payload["command"] = " && ".join(part["command"] for part in parts)
    payload["date"] = ", ".join(part["date"] for part in parts)
    payload["loadavg_start"] = [part["loadavg_start"] for part in parts]
    payload["loadavg_end"] = [part["loadavg_end"] for part in parts]
    payload["settings"] = {**parts[0]["settings"], "reps": [p["settings"]["reps"] for p in parts]}
    for name, r in results.items():
        r.setdefault("overrides", VARIANTS[name][1])  # runs before it was recorded
    for r in results.values():  # runs before the fix compared a rounded with an unrounded value
        check = r["greedy_check"]
        check["equal"] = check["greedy"] == check["teacher_forced"]
    payload["results"], payload["goals"] = results, goals(results)
    save(payload, out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--combine"]:  # --combine OUT PART.json [PART.json ...]
        combine(sys.argv[3:], Path(sys.argv[2]))
    else:
        main()
