"""TRM recursive refinement on top of the backbone features.

One tiny network (`RecursionBlock`: cross-attention to the features, then a SwiGLU MLP, each a
post-norm residual) is reused for every update, as in TRM (Jolicoeur-Martineau 2025):

    (y_0, z_0) = (x, x), or the `state` passed in     x: the (gated) backbone features (B, T, D)
    for cycle c = 1..C:
        repeat n times:  z = net(z + y, attend to x)     latent update, sees features <= t
        y = net(y + z)                                    answer update (no feature access)
        p_c = ACT(z);   score y_c through the LM head (deep supervision)

Fixed scale: every residual add is followed by a weightless RMS norm, h = norm(h + f(h)), as
in TRM's block, so y_c and z_c have RMS 1 at every cycle: the state cannot outgrow the
updates from cycle to cycle. (With pre-norm residuals the state's RMS grew ~3.7x
per cycle and each cycle's relative update shrank ~4x: later cycles stopped changing the
answer: the audit of the trained quick models in issue 10.)

Causality: the cross-attention uses the same sliding-window causal mask as the backbone (query
t sees features s with t - window < s <= t), and everything else is per position, so no
refinement step sees a later token. Refined positions do not attend to each other's latents:
a position's (y, z) after any cycle is a function of its own (y_0, z_0) and of the feature
keys/values in its window. Keys/values of x are projected once and reused by all C * n
latent updates (and, decoding, held in the cache's `recursion` window).

Gradients (`gradient`, the config's `recursion_gradient`):
- "per_cycle" (default): every cycle runs with gradient, starting from a detached (y, z) after
  the first, so cycle c's supervision trains one refinement step (TRM's deep supervision,
  folded into one optimizer step); backward runs through one cycle at a time.
- "all_cycles": no detach: backward runs through every cycle, so a later cycle's CE also
  trains what the earlier cycles hand on in (y, z) (the reasoning specialization: with it,
  and no weight on y_0, each cycle lowered val CE, `benchmarks/results/recursion_gradient.md`).
  Activation memory grows with C * (n + 1) block calls.
- "last_cycle": TRM's deep recursion: cycles 1..C-1 under `torch.no_grad`, only the last with
  gradient; the intermediate supervision terms are then measured but carry no gradient.

ACT at inference (`halt_threshold` set): a position whose halting probability exceeds the
threshold keeps its y and z from then on and leaves the computation: each later cycle gathers
the still-active positions and updates only them, so the cycles' cost falls with the number
of active positions. They run as B rows of M (the most any row has), one SDPA call over the
dense mask's rows, or (one long sequence: `gathers_as_rows`) each as its own row of one
query that attends only to its own window of keys (`attention.positions_attention`). Where
gathering costs more than it saves (`gather_pays`), and under torch.compile/export (no
data-dependent shapes), every position is computed and the halted ones are frozen instead;
the results are the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import (
    _WIDE,
    Attention,
    KeyWindows,
    Positions,
    RMSNorm,
    SwiGLU,
    WindowMask,
    residual_dropout,
)
from .cache import WindowKV
from .configuration_cognate import GRADIENT_MODES
from .heads import ACTHead


def fixed_scale(h: Tensor, eps: float) -> Tensor:
    """h / rms(h) over the last dim (no weight: the scale stays 1), in float32 or wider."""
    if h.dtype in _WIDE:  # nothing to cast (a decoding step calls this 2 C n + C times)
        return F.rms_norm(h, (h.shape[-1],), eps=eps)
    return F.rms_norm(h.float(), (h.shape[-1],), eps=eps).to(h.dtype)


class RecursionBlock(GradientCheckpointingLayer):
    """net(h, x): h = norm(h + XAttn(h, x)) (if x given), then h = norm(h + MLP(h)).

    Post-norm residuals with a weightless RMS norm, as TRM's block: the output has RMS 1
    whatever the input's scale. A `GradientCheckpointingLayer` (each of the C * (n + 1) calls
    is recomputed in backward when checkpointing is on); the feature keys/values come as
    separate positional tensors so that reentrant checkpointing tracks their gradients.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.kv_norm = RMSNorm(d_model, eps=eps)
        self.attn = Attention(d_model, n_heads, dropout)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)
        self.eps = eps

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
            attended = self.attn(h, mask, cos, sin, kv=(k, v))
            h = fixed_scale(h + residual_dropout(self.drop, attended), self.eps)
        return fixed_scale(h + residual_dropout(self.drop, self.mlp(h)), self.eps)


@dataclass
class RecursionOutput:
    """ys: [y_0, ..., y_C] each (B, T, D); halt_logits: (C, B, T) or None without ACT;
    state: the final (y_C, z_C), detached (what `recursion_state` continues from)."""

    ys: list[Tensor]
    halt_logits: Tensor | None
    state: tuple[Tensor, Tensor]


@dataclass
class _Features:
    """What a cycle reads besides (y, z): feature keys/values (B, H, S, hd), the mask
    (B or 1, 1, T, S), a `WindowMask`, `Positions` or None, and the queries' rotary tables."""

    k: Tensor
    v: Tensor
    mask: Tensor | WindowMask | Positions | None
    cos: Tensor
    sin: Tensor
    _windows: KeyWindows | None = field(default=None, repr=False)

    def at(self, idx: Tensor, T: int) -> _Features:
        """The features of N single positions idx = b * T + t, each its own batch row of one
        query: the keys/values stay whole, the mask becomes `Positions` (each query then
        attends to its own window of keys alone), rotary tables (N, 1, 1, hd)."""
        b = idx // T
        t = idx - b * T  # (cheaper than idx % T)
        if self._windows is None and isinstance(self.mask, WindowMask):
            self._windows = KeyWindows.build(self.k, self.v, self.mask, T)  # once per forward
        mask = Positions(self.mask, b, t, T, self._windows)
        cos, sin = (_rotary_at(table, idx, t) for table in (self.cos, self.sin))
        return _Features(self.k, self.v, mask, cos, sin)

    def in_rows(self, a: _Active) -> _Features:
        """The features of the active positions laid out as `a`'s B rows of M (`_Active.rows`):
        the keys/values stay whole, the mask keeps the slots' rows (B, 1, M, S) of the dense
        one (or None), the rotary tables theirs (B, 1, M, hd)."""
        m = self.mask.dense() if isinstance(self.mask, WindowMask) else self.mask
        mask = None if m is None else _slot_rows(m, a)
        cos, sin = (_slot_rows(table, a) for table in (self.cos, self.sin))
        return _Features(self.k, self.v, mask, cos, sin)


def _slot_rows(table: Tensor, a: _Active) -> Tensor:
    """A per-position table, (T, X) or (B or 1, 1, T, X) (rotary, dense mask), at the slots of
    `a`: (B, 1, M, X)."""
    if table.dim() == 4 and table.shape[0] > 1:
        rows = table.flatten(0, 2).index_select(0, a.src)
    else:
        rows = table.reshape(-1, table.shape[-1]).index_select(0, a.pos)
    return rows.view(a.batch, 1, a.width, table.shape[-1])


def _rotary_at(table: Tensor, idx: Tensor, t: Tensor) -> Tensor:
    """(T, hd) or (B, 1, T, hd) rotary table -> (N, 1, 1, hd) at positions idx = b * T + t."""
    rows = table.index_select(0, t) if table.dim() == 2 else table.flatten(0, 2)[idx]
    return rows[:, None, None, :]


@dataclass
class _Active:
    """The positions a gathered cycle updates, idx = b * T + t (N,), and their layout there:
    N batch rows of one query (`src` None), or B rows of M = the most active in any row
    (`rows`: the slot of the k-th active position of row b is b * M + k; a spare slot holds
    its row's position 0, computed and dropped)."""

    idx: Tensor
    src: Tensor | None = None  # (B * M,) the flat position of each slot
    pos: Tensor | None = None  # (B * M,) its position t in its row
    slot: Tensor | None = None  # (N,) the slot of each active position; None: slot i = idx[i]
    batch: int = 0
    width: int = 0

    @classmethod
    def rows(cls, active: Tensor, idx: Tensor, blocked: bool) -> _Active | None:
        """The B rows of M layout, or None where gathering them would not pay (`gather_pays`;
        blocked: the plain cycle's attention runs blocked)."""
        B, T = active.shape
        M = idx.numel() if B == 1 else int(active.sum(1).max())
        if not gather_pays(B * M, B * T, True, blocked):
            return None
        if B == 1:  # no spare slots: one row of the N positions
            return cls(idx, idx, idx, None, 1, M)
        slot = (idx // T) * M + (active.cumsum(1) - 1).flatten().index_select(0, idx)
        base = torch.arange(0, B * T, T, device=idx.device).repeat_interleave(M)
        src = base.index_copy(0, slot, idx)
        return cls(idx, src, src - base, slot, B, M)

    def take(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> the active positions in this layout: (N, 1, ...) or (B, M, ...)."""
        if self.src is None:
            return x.flatten(0, 1).index_select(0, self.idx).unsqueeze(1)
        return x.flatten(0, 1).index_select(0, self.src).unflatten(0, (self.batch, self.width))

    def put(self, x: Tensor, rows: Tensor) -> Tensor:
        """x (B, T, ...) with the active positions replaced by rows (`take`'s layout), out of
        place."""
        rows = rows.flatten(0, 1)
        if self.slot is not None:
            rows = rows.index_select(0, self.slot)
        return x.flatten(0, 1).index_copy(0, self.idx, rows).view_as(x)


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
        gradient: str,
        use_act: bool,
    ) -> None:
        super().__init__()
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
        self.block = RecursionBlock(d_model, n_heads, d_ff, eps, dropout)
        self.act_head = ACTHead(d_model, eps) if use_act else None
        self.cycles = cycles
        self.micro_steps = micro_steps
        self.gradient = gradient

    def cycle(self, y: Tensor, z: Tensor, f: _Features) -> tuple[Tensor, Tensor, Tensor | None]:
        """One refinement cycle: n latent updates, one answer update, the halting logit."""
        for _ in range(self.micro_steps):
            z = self.block(z + y, f.k, f.v, f.mask, f.cos, f.sin)
        y = self.block(y + z)
        return y, z, self.act_head(z) if self.act_head is not None else None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | WindowMask,
        cos: Tensor,
        sin: Tensor,
        halt_threshold: float | None = None,
        cache: WindowKV | None = None,
        state: tuple[Tensor, Tensor] | None = None,
        cycles: int | None = None,
        real: Tensor | None = None,
    ) -> RecursionOutput:
        """x: (B, T, D) features. `halt_threshold` set (and ACT on): halted positions freeze
        and leave the computation. state: (y, z) to start from instead of (x, x).
        cycles: how many cycles to run (default: the configured count; more at test time).
        real: (B, T) 0/1, the real (non-padding) positions; with halting on, padding halts
        after the first cycle whatever its halting probability.

        cache: the window of past feature keys/values (decoding); the new ones are appended,
        and `mask` must cover the cached keys too. Per-position updates need nothing else.
        """
        k, v = self.block.project_features(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        f = _Features(k, v, mask, cos, sin)
        y, z = (x, x) if state is None else state
        cycles = self.cycles if cycles is None else cycles
        if halt_threshold is not None and self.act_head is not None:
            ys, logits, z = self._halting(y, z, f, cycles, halt_threshold, real)
        else:
            ys, logits, z = self._all_cycles(y, z, f, cycles)
        halt_logits = torch.stack(logits) if logits else None
        return RecursionOutput(ys, halt_logits, (ys[-1].detach(), z.detach()))

    def _all_cycles(
        self, y: Tensor, z: Tensor, f: _Features, cycles: int
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Every position through every cycle (training, or inference without halting)."""
        ys, logits = [y], []
        for c in range(cycles):
            if c > 0 and self.gradient == "per_cycle":
                y, z = y.detach(), z.detach()
            no_grad = self.gradient == "last_cycle" and c < cycles - 1
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                y, z, logit = self.cycle(y, z, f)
            ys.append(y)
            if logit is not None:
                logits.append(logit)
        return ys, logits, z

    def _halting(
        self,
        y: Tensor,
        z: Tensor,
        f: _Features,
        cycles: int,
        threshold: float,
        real: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """ACT at inference: after each cycle, positions with p > threshold freeze (their later
        halting logits repeat the halting one) and later cycles skip them (`_active_cycle`),
        or, where gathering would cost more than it saves (`gather_pays`), compute every
        position and keep the halted ones as they were (`_frozen_cycle`); the same results.
        Padding (`real` 0) halts after the first cycle whatever its p (no position reads
        another's latents). The first cycle computes every position: gathered rows would be
        as wide as the longest row anyway, and deciding that would cost a host sync per call
        (per generated token, decoding)."""
        ys, logits = [y], []
        active = gathered = None  # (B, T) still refining (None: all), how a cycle gathers them
        compiling = torch.compiler.is_compiling()
        as_rows = gathers_as_rows(y.shape[0], f.k.shape[-2])
        blocked = isinstance(f.mask, WindowMask) and f.mask.blocked
        for c in range(cycles):
            if active is None:
                y, z, logit = self.cycle(y, z, f)
            elif gathered is not None:
                y, z, logit = self._active_cycle(y, z, f, gathered, logit)
            else:
                y, z, logit = self._frozen_cycle(y, z, f, active, logit)
            ys.append(y)
            logits.append(logit)
            if c == cycles - 1:
                break
            go = ~(torch.sigmoid(logit) > threshold)
            if active is None:
                active = go if real is None else go & real.bool()
            else:
                active = active & go
            if compiling:  # no data-dependent shapes: every later cycle frozen
                continue
            active, gathered, none_left = _plan(active, as_rows, blocked)
            if none_left:  # every position has halted: the remaining cycles change nothing
                ys.extend([y] * (cycles - 1 - c))
                logits.extend([logit] * (cycles - 1 - c))
                break
        return ys, logits, z

    def _frozen_cycle(
        self, y: Tensor, z: Tensor, f: _Features, active: Tensor, logit: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One cycle over every position, the halted ones (active False) kept as they were."""
        y_new, z_new, new = self.cycle(y, z, f)
        keep = ~active[..., None]
        return (
            torch.where(keep, y, y_new),
            torch.where(keep, z, z_new),
            torch.where(active, new, logit),
        )

    def _active_cycle(
        self, y: Tensor, z: Tensor, f: _Features, a: _Active, logit: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One cycle over the active positions `a` only, scattered back into y, z, logit: as B
        rows of M (`_Features.in_rows`: one SDPA call over the dense mask's rows), or each its
        own batch row of one query (`_Features.at`: each attends to its own key span)."""
        g = f.in_rows(a) if a.src is not None else f.at(a.idx, y.shape[1])
        y_a, z_a, l_a = self.cycle(a.take(y), a.take(z), g)
        return a.put(y, y_a), a.put(z, z_a), a.put(logit, l_a)


def _plan(
    active: Tensor, as_rows: bool, blocked: bool
) -> tuple[Tensor | None, _Active | None, bool]:
    """How the next halting cycle runs the `active` (B, T) positions: (active, None when all
    are; the gathered layout, None to compute every position with the rest frozen; whether
    none is left). One host sync (and, as rows, their width)."""
    if active.numel() == 1:  # one position (decoding at batch 1): it goes on or it has halted
        going = bool(active)
        return (None if going else active), None, not going
    idx = active.flatten().nonzero()[:, 0]
    if idx.numel() == 0:
        return active, None, True
    if idx.numel() == active.numel():
        return None, None, False
    if as_rows:
        return active, _Active.rows(active, idx, blocked), False
    return active, (_Active(idx) if gather_pays(idx.numel(), active.numel()) else None), False


# When a halting cycle gathers the active positions, and how (`benchmarks/results/
# act_gather_crossover.md`: the speed preset, cognate-tiny, window 16, one thread; gathered /
# plain cycle time, 90 to 25% of the positions halted).
# - As B rows of M (`_Active.rows`, `gathers_as_rows`), one 4-D SDPA call over the dense
#   mask's rows. Where the plain cycle runs blocked attention (more new tokens than the
#   window: 5-D tiles, which SDPA sends to its generic kernel) that is cheaper whatever the
#   share halted: 0.79-0.84 at 1 x 24, 0.70-0.88 at 1 x 64, 0.60-0.83 at 4 x 64, 0.36-0.78 at
#   32 x 24, 0.26-0.78 at 32 x 64, 0.24-0.74 at 32 x 256, 0.32-0.98 at 8 x 256. Within one
#   window both run one dense call: it pays only with many slots left out, 0.66 / 0.84 /
#   0.96 at 32 x 16 with 5 / 9 / 12 slots per row, 1.08 with 15 (the trained speed model's
#   batches of 32: 0.60-0.89 at 11-14 positions, 5-9 slots); below that per-op overhead
#   decides: 1.01-1.12 at 4 x 16, 1.08-1.10 at 1 x 16.
# - A single sequence of more keys: each active position its own row of one query over its
#   own key span (~25 more small ops than a plain cycle: it pays only with many positions
#   halted): 0.68 / 0.75 / 0.93 / 1.10 at 1 x 256. (Rows there: 0.85 / 0.82 / 0.91 at 90 /
#   72 / 50% halted, measured once: each query attends over all 256 keys.)
ROWS_MAX_KEYS = 64  # a single sequence
ROWS_MAX_KEYS_BATCH = 256  # a batch
ROWS_MIN_SAVED = 128  # rows within one window: slots left out
GATHER_MIN_HALTED = 32  # one-query rows: positions left out
GATHER_MAX_ACTIVE_SHARE = 0.5


def gathers_as_rows(batch: int, keys: int) -> bool:
    """Whether a gathered cycle lays the active positions out as B rows of M (`_Active.rows`)
    rather than one-query rows over their key spans (`_Features.at`)."""
    return keys <= (ROWS_MAX_KEYS if batch == 1 else ROWS_MAX_KEYS_BATCH)


def gather_pays(n_gathered: int, n_total: int, as_rows: bool = False, blocked: bool = True) -> bool:
    """Whether a cycle should compute `n_gathered` of its `n_total` positions (the active
    ones; as B rows of M, the B * M slots) instead of all of them with the halted frozen.
    as_rows: the B rows of M layout (`gathers_as_rows`); blocked: the plain cycle's
    attention runs blocked (more new tokens than the window)."""
    saved = n_total - n_gathered
    if as_rows:
        return saved > 0 if blocked else saved >= ROWS_MIN_SAVED
    return saved >= GATHER_MIN_HALTED and n_gathered <= GATHER_MAX_ACTIVE_SHARE * n_total


__all__ = [
    "RecursionBlock",
    "RecursionOutput",
    "TRMRecursion",
    "fixed_scale",
    "gather_pays",
    "gathers_as_rows",
]
