"""``cognate-train grok``: modular arithmetic until grokking is detected and converged.

The task is the Grokfast reference's (``x op y = r (mod p)``, x*y mod 97 by default, 50 % of the
table for training), and so is the model's shape: a 2-layer pre-LayerNorm decoder, width 128,
4 heads, learned positions, loss on the last position only. We use that decoder rather than a
tiny Cognate model on purpose: it is the setting in which Grokfast's and Muon's grokking
speed-ups were reported, so results can be set beside theirs, and no ACT/memory machinery blurs
what the optimizer does. (It is a clean pre-LN block; the exact replica of the reference, its
residual quirk included, is ``benchmarks/grokking.py``.) Every linear layer is an ``nn.Linear``,
so ``mugrokfast.param_groups`` routes the hidden matrices to Muon.

Measured with the defaults (MuGrokfast, weight decay 1.0, seed 0, this project's CPU): grokking
detected at step 230, 95 % val accuracy at step 370, converged (and stopped) at step 460.

Each step draws ``batch_size`` training equations without replacement from a seeded generator
(its state is checkpointed). Every ``eval_every`` steps the full train and val sets are scored;
the ``GrokkingDetector`` turns the two accuracy curves into events (``grokking``: the delayed
val jump, after which Grokfast's lambda is multiplied by ``lambda_boost``; ``converged``: the
train/val gap stayed small for ``grok_patience`` evaluations, which ends the run).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints as ck
from .config import GrokConfig, compat_fingerprint, to_dict
from .detector import GrokkingDetector
from .metrics import MetricsLogger, read_metrics
from .optim import boost_on_grokking, build_optimizer, grokfast_lambda, set_grokfast_lambda
from .trainer import TrainingStopped, current_lrs, resolve_device, setup_device


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # 3 x (B, T, D)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GrokDecoder(nn.Module):
    """The Grokfast reference's decoder shape: embeddings, n pre-LN blocks, final LN, head."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        seq_len: int = 4,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V)."""
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


@torch.no_grad()
def score(model: nn.Module, rows: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(mean CE loss, accuracy) of predicting r = rows[:, 4] from rows[:, :4]."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, rows.shape[0], chunk):
        part = rows[i : i + chunk]
        logits = model(part[:, :4])[:, -1, :]
        loss += F.cross_entropy(logits, part[:, 4], reduction="sum").item()
        correct += int((logits.argmax(-1) == part[:, 4]).sum())
    model.train()
    return loss / rows.shape[0], correct / rows.shape[0]


def run_grok(cfg: GrokConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train until grokking converges (or max_steps); returns the summary written to disk."""
    from .grok_data import modular_dataset, vocab_size

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    device = resolve_device(cfg.device)
    setup_device(device)
    train, val = modular_dataset(cfg.p, cfg.op, cfg.train_fraction, cfg.seed)
    train, val = train.to(device), val.to(device)
    torch.manual_seed(cfg.seed)
    model = GrokDecoder(vocab_size(cfg.p), cfg.d_model, cfg.n_layers, cfg.n_heads).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg)
    warmup = cfg.warmup_steps
    # the reference's schedule: linear warmup, then constant
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    detector = GrokkingDetector(
        cfg.grok_window, cfg.grok_gap_threshold, cfg.grok_jump_threshold, cfg.grok_patience
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    mgr = ck.CheckpointManager(out, cfg.keep_last, compat_fingerprint(cfg, None))
    st: dict[str, Any] = {
        "step": 0,
        "events": [],
        "elapsed_s": 0.0,
        "nonfinite_total": 0,
        "nonfinite_streak": 0,
        "steps_to_95": None,
        "last_eval": {},
        "last_eval_step": -1,
    }

    def writer(d: Path, full: bool = True) -> None:
        ck.save_weights(model, d)
        ts = dict(
            st,
            elapsed_s=st["elapsed_s"] + time.perf_counter() - t0,
            config=to_dict(cfg),
            detector=detector.state_dict(),
            grokfast_lambda=grokfast_lambda(optimizer),
        )
        ck.save_json(d / "trainer_state.json", ts)
        if full:
            ck.save_torch_state(
                d,
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "batch_rng": gen.get_state(),
                },
            )

    out.mkdir(parents=True, exist_ok=True)
    mgr.cleanup_partial()
    resumed = None
    if cfg.resume == "never":
        if mgr.any_checkpoint() is not None:
            from .config import ConfigError

            raise ConfigError(
                f"resume: output dir {out} already holds checkpoints; use --resume auto "
                "or another --output-dir"
            )
        path = None
    elif cfg.resume == "auto":
        path = mgr.latest_intact(lambda m: log(f"warning: {m}"))
    else:
        path = Path(cfg.resume)
        ck.verify(path)
    if path is not None:
        mgr.check_compatible(path)
        ck.load_weights(model, path)
        saved = ck.load_torch_state(path)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ts = ck.load_json(path / "trainer_state.json")
        detector.load_state_dict(ts["detector"])
        if ts.get("grokfast_lambda") is not None:
            set_grokfast_lambda(optimizer, ts["grokfast_lambda"])
        for key in st:
            st[key] = ts[key]
        torch.set_rng_state(saved["torch_rng"])
        gen.set_state(saved["batch_rng"])
        resumed = st["step"]
        log(f"[grok] resumed from {path} (step {resumed})")
    # the summary must not count this process's set-up twice after a resume
    t0 = time.perf_counter()

    metrics = MetricsLogger(
        out,
        [b for b in cfg.log if b in ("wandb", "tensorboard")],
        "grok",
        to_dict(cfg),
        resume_step=resumed,
    )
    log(
        f"[grok] x{cfg.op}y mod {cfg.p}: {train.shape[0]} train / {val.shape[0]} val equations, "
        f"optimizer {cfg.optimizer}, up to {cfg.max_steps} steps"
    )
    n_train = train.shape[0]
    batch = min(cfg.batch_size, n_train)
    # a converged run restarted before final/ was written stays stopped
    stop = detector.converged and cfg.stop_on_convergence
    try:
        while st["step"] < cfg.max_steps and not stop:
            idx = torch.randperm(n_train, generator=gen)[:batch].to(device)
            rows = train[idx]
            model.train()
            logits = model(rows[:, :4])[:, -1, :]
            loss = F.cross_entropy(logits, rows[:, 4])
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                if cfg.grad_clip > 0:
                    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                else:
                    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf))
                finite = math.isfinite(norm)
            else:
                norm = math.nan
            if finite:
                optimizer.step()
                st["nonfinite_streak"] = 0
            else:
                st["nonfinite_total"] += 1
                st["nonfinite_streak"] += 1
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            st["step"] += 1
            step = st["step"]
            if not finite:
                log(f"[grok] step {step}: non-finite loss or grad norm; step skipped")
                if st["nonfinite_streak"] >= cfg.max_nonfinite:
                    raise TrainingStopped(
                        f"[grok] stopped at step {step}: {st['nonfinite_streak']} "
                        "non-finite steps in a row; lower --lr"
                    )
            if step % cfg.log_every == 0:
                rec = {
                    "step": step,
                    "train/loss": loss.item(),
                    **current_lrs(optimizer),
                    "grad_norm": norm,
                    "skipped_steps": st["nonfinite_total"],
                }
                lam = grokfast_lambda(optimizer)
                if lam is not None:
                    rec["grokfast/lambda"] = lam
                metrics.log(rec)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                tr_loss, tr_acc = score(model, train)
                va_loss, va_acc = score(model, val)
                st["last_eval"] = {
                    "train/accuracy": tr_acc,
                    "val/accuracy": va_acc,
                    "train/eval_loss": tr_loss,
                    "val/loss": va_loss,
                }
                st["last_eval_step"] = step
                if st["steps_to_95"] is None and va_acc >= 0.95:
                    st["steps_to_95"] = step
                for ev in detector.update(step, tr_acc, va_acc):
                    st["events"].append(ev)
                    metrics.log({"step": step, f"grokking/event/{ev['event']}": 1.0})
                    if ev["event"] == "grokking":
                        log(
                            f"[grok] {boost_on_grokking(optimizer, cfg.lambda_boost, step, va_acc)}"
                        )
                    elif ev["event"] == "converged":
                        log(
                            f"[grok] converged at step {step} (train {tr_acc:.3f}, val {va_acc:.3f})"
                        )
                        stop = cfg.stop_on_convergence
                metrics.log({"step": step, **st["last_eval"], **detector.metrics()})
                if step % (cfg.eval_every * 10) == 0:
                    log(
                        f"[grok] step {step}: train acc {tr_acc:.3f}, val acc {va_acc:.3f}, "
                        f"loss {loss.item():.4f}"
                    )
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or stop:
                mgr.save(step, writer)
        if mgr.any_checkpoint() is None or not (mgr.dir / f"step-{st['step']:06d}").is_dir():
            mgr.save(st["step"], writer)
        mgr.save_named("final", st["step"], lambda d: writer(d, full=False))
    finally:
        metrics.close()

    from .plots import plot_run

    records = read_metrics(out / "metrics.jsonl")
    plots = plot_run(
        records,
        out / "plots",
        grokking_step=detector.grokking_step,
        converged_step=detector.converged_step,
        title=f"x{cfg.op}y mod {cfg.p}",
    )
    summary = {
        "task": f"x{cfg.op}y mod {cfg.p}",
        "optimizer": cfg.optimizer,
        "steps": st["step"],
        "stop_reason": "grokking_converged"
        if detector.converged and cfg.stop_on_convergence
        else "max_steps",
        "grokking_step": detector.grokking_step,
        "converged_step": detector.converged_step,
        "steps_to_95_val_acc": st["steps_to_95"],
        "final": st["last_eval"],
        "events": st["events"],
        "time_s": round(st["elapsed_s"] + time.perf_counter() - t0, 2),
        "world_size": 1,
        "device": str(device),
        "plots": [str(p) for p in plots],
        "output_dir": str(out),
    }
    ck.save_json(out / "summary.json", summary)
    return summary
