"""Causal sliding-window attention, rotary positions and the SwiGLU block of the backbone.

Sliding-window attention is the Titans "short-term memory": position t attends to keys
s with t - window < s <= t, so its cost is O(T * window) in the limit and it never sees the
future. The long-term memory (`memory.py`) supplies what falls out of the window.

One mask (True = may attend) is described per forward (`WindowMask`) and shared by every
attention layer, the backbone's self-attention and the recursion's cross-attention alike:

    allowed[b, t, s] = (s <= t) and (t - s < window) and (key s is not padding or s == t)

Over more new tokens than the window, attention runs blocked (`local_window_attention`):
queries in blocks of `window` attend to their own and the previous block's keys, so time and
memory grow as T * window, and the dense (T, T) mask is never built. Up to one window of new
tokens (decoding steps) it runs on the dense mask, which is then at most window x 2 window.

The diagonal is always allowed so that a padding query (left padding under `generate`) still
has one key and `scaled_dot_product_attention` never produces NaN; real tokens never see
padding because padding keys are masked for every other query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class WindowMask:
    """The sliding-window mask of one forward, as its parts (see `sliding_window_mask`).

    seq_len new queries after `past_len` held keys; key_real: (B, past_len + seq_len) 0/1
    flags of the keys (None: no padding). `dense()` builds (and keeps) the boolean tensor;
    `blocked` says whether `Attention` uses `local_window_attention` instead.
    """

    seq_len: int
    window: int
    key_real: Tensor | None = None
    past_len: int = 0
    device: torch.device | None = None
    _dense: Tensor | None = field(default=None, repr=False)

    @property
    def blocked(self) -> bool:
        # Never under torch.export: a branch on a dynamic length would pin the exported
        # program to one side of it, and the blocked reshapes tie the length to the window
        # (the exported program runs the dense mask, exact for every length).
        return not torch.compiler.is_exporting() and self.seq_len > self.window

    def dense(self) -> Tensor:
        if self._dense is None:
            self._dense = sliding_window_mask(
                self.seq_len, self.window, self.key_real, self.device, self.past_len
            )
        return self._dense


@dataclass
class Positions:
    """Queries at N single positions (b[i], t[i]) of a forward's layout, each a batch row of
    one query: q is (N, H, 1, hd) while the keys stay (B, H, S, hd) under `mask`, the
    forward's own mask (`WindowMask`, dense, or None). Halting's gathered cycles use it
    (`window_attention` then costs O(N * window), not O(B * T * window)).
    """

    mask: Tensor | WindowMask | None
    b: Tensor
    t: Tensor
    seq_len: int
    # `KeyWindows.build(k, v, mask, seq_len)` of these keys, when kept across calls
    windows: KeyWindows | None = None

    def dense(self) -> Tensor | None:
        """(N, 1, 1, S): each query's row of the dense mask (None: every key allowed)."""
        m = self.mask.dense() if isinstance(self.mask, WindowMask) else self.mask
        if m is None:
            return None
        rows = self.b if m.shape[0] > 1 else torch.zeros_like(self.b)
        return m[rows, 0, self.t][:, None, None, :]


def _key_blocks(t: Tensor, window: int, left: int, right: int, dim: int) -> Tensor:
    """Pad `t` along `dim` (left, right), then cut it into overlapping spans of 2 windows
    starting every window: (..., L, ...) -> (..., n, ..., 2 window) (unfold puts it last)."""
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [left, right]
    return F.pad(t, pad).unfold(dim, 2 * window, window)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | WindowMask | Positions | None,
    dropout_p: float = 0.0,
    persistent: Tensor | None = None,
) -> Tensor:
    """SDPA over the sliding window: blocked for a long `WindowMask`, else on the dense mask;
    for `Positions` queries, over their own windows of keys (`positions_attention`).

    persistent: (2, H, N, hd) key/value slots every query sees besides its window (Titans'
    persistent memory), or None. Returns (B, H, T, hd).
    """
    if isinstance(mask, Positions):
        return positions_attention(q, k, v, mask, dropout_p, persistent)
    if isinstance(mask, WindowMask) and mask.blocked:
        return local_window_attention(q, k, v, mask, dropout_p, persistent)
    dense = mask.dense() if isinstance(mask, WindowMask) else mask
    if persistent is not None:
        k, v, dense = with_persistent(k, v, dense, persistent)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, dropout_p=dropout_p)


def with_persistent(
    k: Tensor, v: Tensor, allowed: Tensor | None, persistent: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Prepend N persistent key/value slots (2, H, N, hd) to k, v (B, H, ..., L, hd), visible
    to every query: the mask (..., Tq, L) gets N leading allowed columns (True in a boolean
    mask, 0 in an additive one; None, "every key allowed", stays None)."""
    H, N, hd = persistent.shape[1:]
    lead = [1] * (k.dim() - 4)  # the blocked path's block dimension
    pk, pv = (p.view(1, H, *lead, N, hd).to(k.dtype) for p in persistent)
    k = torch.cat((pk.expand(*k.shape[:-2], N, hd), k), -2)
    v = torch.cat((pv.expand(*v.shape[:-2], N, hd), v), -2)
    if allowed is not None:
        fill = allowed.new_ones if allowed.dtype == torch.bool else allowed.new_zeros
        allowed = torch.cat((fill(*allowed.shape[:-1], N), allowed), -1)
    return k, v, allowed


def local_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: WindowMask,
    dropout_p: float = 0.0,
    persistent: Tensor | None = None,
) -> Tensor:
    """Sliding-window attention in blocks, equal to SDPA over `mask.dense()`.

    q: (B, H, T, hd) at key positions P..P+T-1; k, v: (B, H, P + T, hd). Query block j
    (new tokens jW..jW+W-1, W = window) can only see keys from (jW - W, jW + W), i.e. its own
    and the previous block: each block is one SDPA call of W queries over 2W keys (batched
    over blocks), with the band, padding and diagonal rules of the dense mask.
    """
    T = q.shape[2]
    n = -(-T // mask.window)
    qb = F.pad(q, (0, 0, 0, n * mask.window - T)).unflatten(2, (n, mask.window))
    kb, vb, allowed = window_blocks(k, v, mask, T)
    if persistent is not None:
        kb, vb, allowed = with_persistent(kb, vb, allowed, persistent)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed, dropout_p=dropout_p)
    return out.flatten(2, 3)[:, :, :T]


def window_blocks(k: Tensor, v: Tensor, mask: WindowMask, T: int) -> tuple[Tensor, Tensor, Tensor]:
    """The key/value spans of the T new queries' blocks of W: kb, vb (B, H, n, 2W, hd) (views
    where possible) and the allowed mask (B or 1, 1, n, W, 2W)."""
    W = mask.window
    P = k.shape[-2] - T
    drop = max(0, P - (W - 1))  # keys no new query can see
    k, v = k[..., drop:, :], v[..., drop:, :]
    n = -(-T // W)
    left, right = W - (P - drop), n * W - T
    kb = _key_blocks(k, W, left, right, 2).transpose(-1, -2)  # (B, H, n, 2W, hd)
    vb = _key_blocks(v, W, left, right, 2).transpose(-1, -2)
    real = torch.ones(1, k.shape[-2], dtype=torch.bool, device=k.device)
    if mask.key_real is not None:
        real = mask.key_real[:, drop:].to(device=k.device, dtype=torch.bool)
    flags = _key_blocks(real, W, left, right, 1)  # (B or 1, n, 2W); padded positions False
    r = torch.arange(W, device=k.device)[:, None]
    c = torch.arange(2 * W, device=k.device)[None, :]
    band, diag = (c > r) & (c <= r + W), c == r + W  # key c sits at dist r + W - c
    return kb, vb, band & (flags[:, None, :, None, :] | diag)


@dataclass
class KeyWindows:
    """Each of a forward's T new queries' own span of W = window keys, the only ones it may
    see, gathered per query by `at`: query t's key w is key index P + t - (W - 1) + w.

    k, v: (B * S, H, hd), one row per key position with all its heads (a view of the
    projected keys, laid out (B, S, H, hd): one gather moves H * hd values); a span slot
    before the first key reads key 0 instead, masked out. bias: (B or 1, T, W), the dense
    mask's row of query t over its span as an additive mask (0 allowed, -inf not: SDPA takes
    it as is). offsets: (W,) the span's key indices relative to its query, P - (W - 1) + w.
    """

    k: Tensor
    v: Tensor
    bias: Tensor
    offsets: Tensor
    keys: int  # S, keys per row

    @classmethod
    def build(cls, k: Tensor, v: Tensor, mask: WindowMask, T: int) -> KeyWindows:
        B, H, S, hd = k.shape
        offsets = torch.arange(S - T - (mask.window - 1), S - T + 1, device=k.device)
        span = torch.arange(T, device=k.device)[:, None] + offsets  # (T, W) key indices
        allowed = (span >= 0)[None]
        if mask.key_real is not None:
            real = mask.key_real.to(device=k.device, dtype=torch.bool)
            allowed = allowed & real[:, span.clamp_min(0)]  # (B, T, W)
        allowed[..., -1] = True  # the query's own key (a padding query still sees itself)
        bias = torch.zeros(allowed.shape, dtype=k.dtype, device=k.device)
        bias.masked_fill_(~allowed, float("-inf"))
        k, v = (x.transpose(1, 2).reshape(B * S, H, hd) for x in (k, v))
        return cls(k, v, bias, offsets, S)

    def at(self, b: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The spans of N queries at (b[i], t[i]): keys, values (N, H, W, hd) (one row gather
        each, viewed head-major) and their additive mask (N, 1, 1, W)."""
        W = self.offsets.shape[0]
        rows = ((t[:, None] + self.offsets).clamp_min(0) + (b * self.keys)[:, None]).flatten()
        k, v = (
            x.index_select(0, rows).unflatten(0, (-1, W)).transpose(1, 2) for x in (self.k, self.v)
        )
        if self.bias.shape[0] > 1:
            bias = self.bias.flatten(0, 1).index_select(0, b * self.bias.shape[1] + t)
        else:
            bias = self.bias[0].index_select(0, t)
        return k, v, bias[:, None, None]


def positions_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Positions,
    dropout_p: float = 0.0,
    persistent: Tensor | None = None,
) -> Tensor:
    """Attention of N single queries q (N, H, 1, hd) at positions (pos.b, pos.t) over the
    forward's keys k, v (B, H, S, hd): (N, H, 1, hd), equal to running every position and
    keeping these.

    Under a `WindowMask` each query gathers its own span of W keys (`KeyWindows`) and
    attends to them alone, one SDPA call of N single-query rows: the cost follows the number
    of queries. With a dense mask or none (decoding a token without padding) the queries are
    scattered into the full (B, H, T, hd) layout and attend as usual.
    """
    m = pos.mask
    if not isinstance(m, WindowMask):
        B, H, _, hd = k.shape
        full = q.new_zeros(B, H, pos.seq_len, hd)
        full[pos.b, :, pos.t] = q[:, :, 0]
        return window_attention(full, k, v, m, dropout_p, persistent)[pos.b, :, pos.t, None]
    windows = pos.windows or KeyWindows.build(k, v, m, pos.seq_len)
    kq, vq, bias = windows.at(pos.b, pos.t)
    if persistent is not None:
        kq, vq, bias = with_persistent(kq, vq, bias, persistent)
    return F.scaled_dot_product_attention(q, kq, vq, attn_mask=bias, dropout_p=dropout_p)


def rotary_cos_sin(
    seq_len: int | Tensor,
    head_dim: int,
    theta: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """cos/sin tables for rotary embeddings, computed on the fly (no buffers, no length limit).

    `seq_len` an int: positions 0..T-1, tables (T, head_dim). Or a tensor of positions:
    (T,) -> (T, head_dim), (B, T) -> (B, 1, T, head_dim) (per-row `position_ids`).
    Rotary encodes position by rotating each pair (x_i, x_{i+d/2}) by angle t * theta^(-2i/d),
    so q_t . k_s depends on t - s only: padding on the left does not change real tokens' scores.
    The tables are laid out for `apply_rotary` (built once per forward, read by every attention
    call): cos = [cos, cos] and sin = [-sin, sin] over the two halves of head_dim.
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
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), -1).to(dtype), torch.cat((-sin, sin), -1).to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, head_dim) by position: [x1, x2] -> [x1 cos - x2 sin, x1 sin + x2 cos].

    With `rotary_cos_sin`'s tables that is x * cos + [x2, x1] * sin: four element-wise ops
    (a decoding step applies rotary ~2 n_layers + C * n + 1 times), the same values bit for
    bit (x1 cos + x2 (-sin) rounds as x1 cos - x2 sin).
    """
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


_WIDE = (torch.float32, torch.float64)


def residual_dropout(drop: nn.Dropout, x: Tensor) -> Tensor:
    """drop(x), with no module call (and no aten op) where it is the identity: in eval or at
    p = 0 (a decoding step passes ~4 n_layers + 2 C (n + 1) residual branches through it)."""
    return drop(x) if drop.training and drop.p > 0 else x


class RMSNorm(nn.RMSNorm):
    """x / rms(x) * weight, computed in float32 or wider (bf16 autocast inputs included),
    returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in _WIDE and self.weight is not None and self.weight.dtype == x.dtype:
            return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)  # nothing to cast
        work = torch.promote_types(x.dtype, torch.float32)
        weight = self.weight.to(work) if self.weight is not None else None
        return F.rms_norm(x.to(work), self.normalized_shape, weight, self.eps).to(x.dtype)


@torch.no_grad()
@torch.compiler.disable
def max_logits_per_head(q: Tensor, k: Tensor, mask: Tensor | None, chunk: int = 64) -> Tensor:
    """The largest pre-softmax logit per head, max over batch, queries and allowed keys: (H,).

    logit[b, h, t, s] = q[b, h, t] . k[b, h, s] / sqrt(head_dim), SDPA's default scale, over
    the (t, s) that `mask` (True = may attend; (1 | B, 1, T, S), or None for all) allows.
    q: (B, H, T, hd), k: (B, H, S, hd). For QK-clip (MuonClip) and the `attn/max_logit`
    diagnostic. Computed in float32 (or wider) a block of `chunk` queries at a time, and only
    over the key columns that block may see, so a sliding window costs O(T * (window + chunk))
    per head and the (T, S) score matrix is never held whole. Every query counts, a padding
    query's allowed keys included: the mask alone decides, as in SDPA.
    """
    work = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5
    best = torch.full((q.shape[1],), float("-inf"), device=q.device, dtype=work)
    for i in range(0, q.shape[2], chunk):
        m = None if mask is None else mask[..., i : i + chunk, :]  # (1|B, 1, c, S)
        lo, hi = 0, k.shape[2]
        if m is not None:
            cols = m.flatten(0, -2).any(0).nonzero()  # key columns this block may see
            if cols.numel() == 0:
                continue
            lo, hi = int(cols[0]), int(cols[-1]) + 1
            m = m[..., lo:hi]
        scores = q[:, :, i : i + chunk].to(work) @ k[:, :, lo:hi].to(work).transpose(-1, -2)
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        best = torch.maximum(best, (scores * scale).amax(dim=(0, 2, 3)))
    return best


class Attention(nn.Module):
    """Multi-head attention over the shared sliding-window mask, via SDPA.

    Used as self-attention in the backbone (`kv` from the same stream) and as the recursion's
    cross-attention (queries from the latent z, keys/values from the backbone features, which
    `project_kv` computes once per forward and every recursion step reuses).

    QK-clip support: while `record_max_logits` is True, each forward folds its per-head max
    pre-softmax logit (`max_logits_per_head`) into `max_logits` ((H,), a running max over the
    calls since the last `reset_max_logits()`; the recursion calls its cross-attention several
    times per forward). A diagnostic beside the computation: it never changes the output.
    Logits are bilinear in the q/k projections (rotary is a rotation), so rescaling rows of
    `q_proj.weight` / `k_proj.weight` per head rescales that head's logits.
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, n_persistent: int = 0
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj.is_residual_output = True  # init scaled down, see _init_weights
        self.dropout = dropout
        # Titans' persistent memory: learned keys/values (not rotated: they have no position)
        # that every query sees besides its window; None when n_persistent is 0.
        self.persistent = (
            nn.Parameter(torch.zeros(2, n_heads, n_persistent, self.head_dim))
            if n_persistent
            else None
        )
        self.record_max_logits = False
        self.max_logits: Tensor | None = None

    def reset_max_logits(self) -> None:
        self.max_logits = None

    def _record(self, q: Tensor, k: Tensor, mask: Tensor | WindowMask | None) -> None:
        # The window's logits only (persistent slots are not q_proj/k_proj products of tokens).
        dense = mask.dense() if isinstance(mask, (WindowMask, Positions)) else mask
        if isinstance(mask, Positions):  # (N, H, 1, hd) queries over their rows' keys
            k = k[mask.b]
        new = max_logits_per_head(q.detach(), k.detach(), dense)
        self.max_logits = new if self.max_logits is None else torch.maximum(self.max_logits, new)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape  # (B, T, D) -> (B, H, T, hd)
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (rotated) and values, each (B, H, T, head_dim)."""
        return apply_rotary(self._heads(self.k_proj(x)), cos, sin), self._heads(self.v_proj(x))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | WindowMask | Positions | None,
        cos: Tensor,
        sin: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
        cache: WindowKV | None = None,
    ) -> Tensor:
        """x: (B, T, D) queries; kv: precomputed keys/values, or None for self-attention.

        mask: a `WindowMask` (blocked attention over long inputs) or a dense boolean mask.
        cache: this layer's window of past keys/values; the new ones are appended to it and
        the mask must then cover the cached keys too (`sliding_window_mask(..., past_len)`).
        """
        b, t, d = x.shape
        q = apply_rotary(self._heads(self.q_proj(x)), cos, sin)
        k, v = kv if kv is not None else self.project_kv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        if self.record_max_logits:
            self._record(q, k, mask)
        dropout_p = self.dropout if self.training else 0.0
        out = window_attention(q, k, v, mask, dropout_p, self.persistent)  # (B, H, T, hd)
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

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        eps: float,
        dropout: float,
        n_persistent: int = 0,
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, eps=eps)
        self.attn = Attention(d_model, n_heads, dropout, n_persistent)
        self.mlp_norm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | WindowMask,
        cos: Tensor,
        sin: Tensor,
        cache: WindowKV | None = None,
    ) -> Tensor:
        x = x + residual_dropout(
            self.drop, self.attn(self.attn_norm(x), mask, cos, sin, cache=cache)
        )
        return x + residual_dropout(self.drop, self.mlp(self.mlp_norm(x)))


__all__ = [
    "Attention",
    "Block",
    "KeyWindows",
    "Positions",
    "RMSNorm",
    "SwiGLU",
    "WindowMask",
    "apply_rotary",
    "local_window_attention",
    "max_logits_per_head",
    "window_attention",
    "with_persistent",
    "residual_dropout",
    "rotary_cos_sin",
    "sliding_window_mask",
]
