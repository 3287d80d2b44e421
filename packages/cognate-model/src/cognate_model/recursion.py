"""TRM recursive refinement on top of the backbone features.

One tiny network (`RecursionBlock`: cross-attention to the features, then a SwiGLU MLP, both
pre-norm residual) is reused for every update, as in TRM (Jolicoeur-Martineau 2025):

    y_0 = z_0 = x                                   x: the (gated) backbone features (B, T, D)
    for cycle c = 1..C:
        repeat n times:  z = net(z + y, attend to x)     latent update, sees features <= t
        y = net(y + z)                                    answer update (no feature access)
        p_c = ACT(z);   score y_c through the LM head (deep supervision)

Causality: the cross-attention uses the same sliding-window causal mask as the backbone (query
t sees features s with t - window < s <= t), and everything else is per position, so no
refinement step sees a later token. Keys/values of x are projected once and reused by all
C * n latent updates.

Gradients (`detach_between_cycles`):
- True (default): every cycle runs with gradient, starting from a detached (y, z) after the
  first, so cycle c's supervision trains one refinement step (TRM's deep supervision, folded
  into one optimizer step); memory grows with C, not with C * n through one graph.
- False: TRM's deep recursion: cycles 1..C-1 under `torch.no_grad`, only the last with
  gradient; the intermediate supervision terms are then measured but carry no gradient.

ACT at inference (`halt=True`): a token whose halting probability exceeds the threshold keeps
its y and z from then on, so later cycles do not change its prediction; when every token has
halted the loop stops early.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention, RMSNorm, SwiGLU, WindowMask
from .cache import WindowKV
from .heads import ACTHead


class RecursionBlock(GradientCheckpointingLayer):
    """net(h, x) = h' with h' = h + XAttn(norm h, x) (if x given), then h' + MLP(norm h').

    A `GradientCheckpointingLayer` (each of the C * (n + 1) calls is recomputed in backward when
    checkpointing is on); the feature keys/values come as separate positional tensors so that
    reentrant checkpointing tracks their gradients.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.kv_norm = RMSNorm(d_model, eps=eps)
        self.attn_norm = RMSNorm(d_model, eps=eps)
        self.attn = Attention(d_model, n_heads, dropout)
        self.mlp_norm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def project_features(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        return self.attn.project_kv(self.kv_norm(x), cos, sin)

    def forward(
        self,
        h: Tensor,
        k: Tensor | None = None,
        v: Tensor | None = None,
        mask: Tensor | WindowMask | None = None,
        cos: Tensor | None = None,
        sin: Tensor | None = None,
    ) -> Tensor:
        if k is not None:
            h = h + self.drop(self.attn(self.attn_norm(h), mask, cos, sin, kv=(k, v)))
        return h + self.drop(self.mlp(self.mlp_norm(h)))


@dataclass
class RecursionOutput:
    """ys: [y_0, ..., y_C] each (B, T, D); halt_logits: (C, B, T) or None without ACT."""

    ys: list[Tensor]
    halt_logits: Tensor | None


class TRMRecursion(nn.Module):
    """The refinement loop: `cycles` x (`micro_steps` latent updates + 1 answer update)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        eps: float,
        dropout: float,
        cycles: int,
        micro_steps: int,
        detach_between_cycles: bool,
        use_act: bool,
    ) -> None:
        super().__init__()
        self.block = RecursionBlock(d_model, n_heads, d_ff, eps, dropout)
        self.act_head = ACTHead(d_model, eps) if use_act else None
        self.cycles = cycles
        self.micro_steps = micro_steps
        self.detach_between_cycles = detach_between_cycles

    def forward(
        self,
        x: Tensor,
        mask: Tensor | WindowMask,
        cos: Tensor,
        sin: Tensor,
        halt_threshold: float | None = None,
        cache: WindowKV | None = None,
    ) -> RecursionOutput:
        """x: (B, T, D) features. `halt_threshold` set: freeze tokens once p > threshold.

        cache: the window of past feature keys/values (decoding); the new ones are appended,
        and `mask` must cover the cached keys too. Per-position updates need nothing else.
        """
        kv = self.block.project_features(x, cos, sin)
        if cache is not None:
            kv = cache.update(*kv)
        y, z = x, x
        ys, logits = [y], []
        halted = None
        for c in range(self.cycles):
            last = c == self.cycles - 1
            if c > 0 and self.detach_between_cycles:
                y, z = y.detach(), z.detach()
            no_grad = not self.detach_between_cycles and not last
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                z_new = z
                for _ in range(self.micro_steps):
                    z_new = self.block(z_new + y, *kv, mask, cos, sin)
                y_new = self.block(y + z_new)
                logit = self.act_head(z_new) if self.act_head is not None else None
            if halt_threshold is not None and logit is not None:
                if halted is None:
                    halted = torch.zeros_like(logit, dtype=torch.bool)
                keep = halted[..., None]
                y_new = torch.where(keep, y, y_new)
                z_new = torch.where(keep, z, z_new)
                logit = torch.where(halted, logits[-1], logit) if logits else logit
                halted = halted | (torch.sigmoid(logit) > halt_threshold)
            y, z = y_new, z_new
            ys.append(y)
            if logit is not None:
                logits.append(logit)
            if (
                halted is not None
                and not last
                and not torch.compiler.is_compiling()
                and bool(halted.all())
            ):
                # Every token has halted: the remaining cycles would change nothing.
                remaining = self.cycles - 1 - c
                ys.extend([y] * remaining)
                logits.extend([logit] * remaining)
                break
        halt_logits = torch.stack(logits) if logits else None
        return RecursionOutput(ys=ys, halt_logits=halt_logits)


__all__ = ["RecursionBlock", "RecursionOutput", "TRMRecursion"]
