"""Optimizer and learning-rate schedule construction.

``--optimizer`` choices (for comparisons on the same run):

* ``mugrokfast``: ``mugrokfast.MuGrokfast`` over ``mugrokfast.param_groups(model)``: the Grokfast
  filter (``--grokfast``, EMA by default) on the raw gradients, then Muon for hidden matrices
  and AdamW for embeddings, the head, norms and biases. ``--grokfast-place update`` moves the
  Muon groups' EMA onto the orthogonalised update (``MuGrokfast(grokfast_place="update")``).
* ``muon``: the same routing with the filter off (``grokfast=None``).
* ``grokfast-adamw``: ``mugrokfast.Grokfast`` (the ``--grokfast`` filter) in front of
  ``torch.optim.AdamW``.
* ``adamw``: plain ``torch.optim.AdamW``.

The schedule is linear warmup then cosine decay, as a multiplier of each group's base lr (so
Muon's and AdamW's learning rates follow the same shape)::

    f(s) = (s + 1) / W                                   for s < W
    f(s) = r + (1 - r) * (1 + cos(pi * (s - W) / (S - W))) / 2   otherwise

with W warmup steps, S total steps and r the final ratio ``min_lr_ratio``. A run whose length
is changed on resume (``--override`` with a new ``--max-steps``/``--epochs``) continues from the
multiplier m0 it had reached at the resume step s0 instead of re-laying warmup and decay over
the new length (which would raise the lr of a finished run again)::

    f(s) = r + (m0 - r) * (1 + cos(pi * (s - s0) / (S - s0))) / 2    for s >= s0

so a finished run (m0 = r) goes on at the final lr.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_multiplier(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    anchor: tuple[int, float] | None = None,
) -> float:
    if anchor is not None and step >= anchor[0]:  # (s0, m0): continue from a resume
        s0, m0 = anchor
        progress = min(1.0, (step - s0) / max(1, total_steps - s0))
        return min_ratio + (m0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Any,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    anchor: tuple[int, float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    # a plain closure: LambdaLR's state_dict then stores no function state, only counters
    def fn(step: int) -> float:
        return lr_multiplier(step, warmup_steps, total_steps, min_ratio, anchor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def build_optimizer(name: str, model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` for ``model`` from a TrainConfig/GrokConfig's fields."""
    betas = tuple(cfg.betas)
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay
        )
    import mugrokfast

    flt = None if cfg.grokfast == "none" else cfg.grokfast
    if name == "grokfast-adamw":
        base = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay
        )
        return mugrokfast.Grokfast(
            base,
            filter=flt,
            alpha=cfg.grokfast_alpha,
            lamb=cfg.grokfast_lambda,
            warmup_steps=cfg.grokfast_warmup_steps,
        )
    if name in ("mugrokfast", "muon"):
        return mugrokfast.MuGrokfast(
            mugrokfast.param_groups(model),
            lr=cfg.lr,
            betas=betas,
            weight_decay=cfg.weight_decay,
            muon_lr=cfg.muon_lr,
            grokfast=flt if name == "mugrokfast" else None,
            grokfast_alpha=cfg.grokfast_alpha,
            grokfast_lambda=cfg.grokfast_lambda,
            grokfast_warmup_steps=cfg.grokfast_warmup_steps,
            # muon: no filter, so no place (validation refuses "update" with it)
            grokfast_place=cfg.grokfast_place if name == "mugrokfast" else "grad",
            distributed=True,  # under torchrun: Newton-Schulz split across ranks
        )
    raise ValueError(
        f"optimizer must be one of mugrokfast, adamw, muon, grokfast-adamw; got {name!r}"
    )


def grokfast_lambda(optimizer: Any) -> float | None:
    """The current Grokfast amplification, or None when the optimizer has no filter: the EMA
    term's lambda (ema, dual), or the MA term's (ma, its only one; what
    ``set_grokfast_lambda`` sets for "ma" groups)."""
    if hasattr(optimizer, "set_grokfast_lambda"):
        group = optimizer.param_groups[0]
        kind = group.get("grokfast", "ema")
        if kind is None:
            return None
        key = "grokfast_ma_lambda" if kind == "ma" else "grokfast_lambda"
        return float(group.get(key, 0.0))
    if hasattr(optimizer, "lamb"):
        return float(optimizer.lamb)
    return None


def set_grokfast_lambda(optimizer: Any, value: float) -> bool:
    """Set the Grokfast lambda where the optimizer has one; returns whether it did."""
    if grokfast_lambda(optimizer) is None:
        return False
    if hasattr(optimizer, "set_grokfast_lambda"):
        group = optimizer.param_groups[0]
        if group.get("grokfast") == "ma":  # its amplification is the MA term's alone
            optimizer.set_grokfast_lambda(group["grokfast_lambda"], ma_lamb=value)
        else:
            optimizer.set_grokfast_lambda(value)
    else:
        optimizer.lamb = value
    return True


def boost_on_grokking(optimizer: Any, factor: float, step: int, val_acc: float) -> str:
    """React to a detected grokking jump: multiply the Grokfast lambda by ``factor``
    (``lambda_boost``: amplify the slow gradient more once generalisation has started). Returns
    the log message."""
    msg = f"grokking detected at step {step} (val acc {val_acc:.3f})"
    old = grokfast_lambda(optimizer)
    if old is not None and set_grokfast_lambda(optimizer, old * factor):
        msg += f": Grokfast lambda {old:g} -> {old * factor:g}"
    return msg


def current_lrs(optimizer: Any) -> dict[str, float]:
    """``lr`` (the AdamW groups') and, when Muon is in use, ``lr/muon``."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        key = "lr/muon" if group.get("use_muon") else "lr"
        out.setdefault(key, float(group["lr"]))
    if "lr" not in out:
        out["lr"] = out["lr/muon"]
    return out
