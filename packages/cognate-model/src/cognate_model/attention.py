"""Causal sliding-window attention, rotary positions and the SwiGLU block of the backbone.

Sliding-window attention is the Titans "short-term memory": position t attends to keys
s with t - window < s <= t, so its cost is O(T * window) in the limit and it never sees the
future. The long-term memory (`memory.py`) supplies what falls out of the window.

One boolean mask (True = may attend) is built per forward and shared by every attention
layer, the backbone's self-attention and the recursion's cross-attention alike:

    allowed[b, t, s] = (s <= t) and (t - s < window) and (key s is not padding or s == t)

The diagonal is always allowed so that a padding query (left padding under `generate`) still
has one key and `scaled_dot_product_attention` never produces NaN; real tokens never see
padding because padding keys are masked for every other query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .cache import WindowKV


def sliding_window_mask(
    seq_len: int,
    window: int,
    attention_mask: Tensor | None = None,
    device: torch.device | None = None,
    past_len: int = 0,
) -> Tensor:
    """Boolean attention mask, True where query t may attend key s.

    Keys are the `past_len` cached positions followed by the `seq_len` new ones; query i sits at
    key index past_len + i. Returns (1, 1, T, P + T) without padding, else (B, 1, T, P + T)
    from a (B, P + T) 0/1 `attention_mask` over the keys.
    """
    q = torch.arange(seq_len, device=device) + past_len
    k = torch.arange(past_len + seq_len, device=device)
    dist = q[:, None] - k[None, :]  # t - s
    band = (dist >= 0) & (dist < window)  # (T, P + T)
    if attention_mask is None:
        return band[None, None]
    keys = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, P + T)
    diag = (dist == 0)[None, None]
    return band[None, None] & (keys | diag)


def rotary_cos_sin(
    seq_len: int | Tensor,
    head_dim: int,
    theta: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """cos/sin tables for rotary embeddings, computed on the fly (no buffers, no length limit).

    `seq_len` an int: positions 0..T-1, tables (T, head_dim/2). Or a tensor of positions:
    (T,) -> (T, head_dim/2), (B, T) -> (B, 1, T, head_dim/2) (per-row `position_ids`).
    Rotary encodes position by rotating each pair (x_i, x_{i+d/2}) by angle t * theta^(-2i/d),
    so q_t . k_s depends on t - s only: padding on the left does not change real tokens' scores.
    """
    work = torch.promote_types(dtype, torch.float32)  # float64 models get float64 angles
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=work) / head_dim))
    if isinstance(seq_len, Tensor):
        t = seq_len.to(device=device, dtype=work)
    else:  # an int (or a symbolic one under torch.export)
        t = torch.arange(seq_len, device=device, dtype=work)
    angles = t[..., None] * inv_freq  # (..., T, head_dim/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, T, head_dim/2): broadcast over heads
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, head_dim) by position: [x1, x2] -> [x1 cos - x2 sin, x1 sin + x2 cos]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


_WIDE = (torch.float32, torch.float64)


class RMSNorm(nn.RMSNorm):
    """x / rms(x) * weight, computed in float32 or wider (bf16 autocast inputs included),
    returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in _WIDE and self.weight is not None and self.weight.dtype == x.dtype:
            return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)  # nothing to cast
        work = torch.promote_types(x.dtype, torch.float32)
        weight = self.weight.to(work) if self.weight is not None else None
        return F.rms_norm(x.to(work), self.normalized_shape, weight, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention over the shared sliding-window mask, via SDPA.

    Used as self-attention in the backbone (`kv` from the same stream) and as the recursion's
    cross-attention (queries from the latent z, keys/values from the backbone features, which
    `project_kv` computes once per forward and every recursion step reuses).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj.is_residual_output = True  # init scaled down, see _init_weights
        self.dropout = dropout

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape  # (B, T, D) -> (B, H, T, hd)
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (rotated) and values, each (B, H, T, head_dim)."""
        return apply_rotary(self._heads(self.k_proj(x)), cos, sin), self._heads(self.v_proj(x))

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
        cache: WindowKV | None = None,
    ) -> Tensor:
        """x: (B, T, D) queries; kv: precomputed keys/values, or None for self-attention.

        cache: this layer's window of past keys/values; the new ones are appended to it and
        the mask must then cover the cached keys too (`sliding_window_mask(..., past_len)`).
        """
        b, t, d = x.shape
        q = apply_rotary(self._heads(self.q_proj(x)), cos, sin)
        k, v = kv if kv is not None else self.project_kv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """out = W_down(silu(W_gate x) * W_up x): the gated MLP of LLaMA-style blocks."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        self.down_proj.is_residual_output = True

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + Attn(RMSNorm x), then x + SwiGLU(RMSNorm x).

    A `GradientCheckpointingLayer`: `model.gradient_checkpointing_enable()` recomputes it in
    the backward pass (the model turns the cache off first: a replay would append twice).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, eps=eps)
        self.attn = Attention(d_model, n_heads, dropout)
        self.mlp_norm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor, cos: Tensor, sin: Tensor, cache: WindowKV | None = None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), mask, cos, sin, cache=cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


__all__ = [
    "Attention",
    "Block",
    "RMSNorm",
    "SwiGLU",
    "apply_rotary",
    "rotary_cos_sin",
    "sliding_window_mask",
]
