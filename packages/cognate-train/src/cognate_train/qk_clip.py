"""QK-clip (MuonClip, Kimi K2) in the training loop, and the ``attn/max_logit`` diagnostic.

Every attention of a Cognate model (the backbone's self-attention and the recursion's
cross-attention) can record its per-head max pre-softmax logit ``S_h = max q.k / sqrt(d)``
during the forward (``Attention.record_max_logits``). With ``--qk-clip TAU`` every training
step records them, and after ``optimizer.step()`` each head with ``S_h > TAU`` has its rows of
W_q and W_k multiplied by ``sqrt(TAU / S_h)`` (``mugrokfast.qk_clip_``), so the same inputs would
now give at most TAU. Without it only the last step of each log window records (1 forward in
``log_every`` pays the extra ``q k^T``), for the ``attn/max_logit`` metric: the largest logit
over layers and heads in that step's forward, before any clip. Under torchrun the maxima are
the max over ranks, so every rank rescales the same heads by the same factors.
"""

from __future__ import annotations

import torch
from torch import nn

from . import distributed as dist


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that can record max logits (``cognate_model.attention.Attention``), by name."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "record_max_logits")}


class QKClip:
    """Turns recording on for a step (:meth:`begin`), then clips and reports (:meth:`end`)."""

    def __init__(self, model: nn.Module, tau: float) -> None:
        if not tau >= 0:
            raise ValueError(f"qk_clip must be >= 0 (0: off), got {tau!r}")
        self.tau = tau
        self.names = list(attention_modules(model))
        self.attns = list(attention_modules(model).values())

    def begin(self, log_step: bool) -> None:
        """Before a step's forward passes: record this step if clipping, or if it is logged."""
        record = bool(self.attns) and (self.tau > 0 or log_step)
        for m in self.attns:
            m.reset_max_logits()
            m.record_max_logits = record

    def end(self, stepped: bool) -> float | None:
        """After ``optimizer.step()`` (``stepped``: it ran): clip if asked; the step's largest
        logit over every attention and head (None if nothing was recorded)."""
        from mugrokfast import qk_clip_

        recorded = [m for m in self.attns if m.max_logits is not None]
        for m in self.attns:
            m.record_max_logits = False
        if not recorded:
            return None
        maxima = dist.max_tensor_(torch.stack([m.max_logits for m in recorded]))  # (L, H)
        if self.tau > 0 and stepped:
            for m, row in zip(recorded, maxima, strict=True):
                qk_clip_(m.q_proj.weight, m.k_proj.weight, row, m.n_heads, self.tau)
        for m in recorded:
            m.reset_max_logits()
        return float(maxima.max())
