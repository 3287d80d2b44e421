"""Titans-MAG long-term memory: a decaying memory stream, its parallel scan, and the gate.

The memory is the linear recurrence, per channel c of a d_memory-wide stream u = W_down x:

    m_t = a_t * m_{t-1} + (1 - a_t) * u_t,      a = sigmoid(decay_logit)   (learned, per channel)

With a near 1 it remembers for ~1/(1-a) steps, far beyond the attention window. It is
computed for all t at once by `linear_scan` (no Python loop over positions), exactly and
stably for any length: every factor it exponentiates is a sum of log-decays over a span,
which is <= 0, so nothing overflows, and log a = logsigmoid(decay_logit) keeps full relative
precision when a is within 1e-7 of 1. Padding positions (attention_mask == 0) use a_t = 1 and
contribute nothing, so the state passes through them unchanged.

The memory is pure: each call starts from zero (or from the `memory_state` passed in) and
returns its final state; nothing is stored on the module.

Where it sits: once, after the backbone's last block (as the seed design did), reading the
contextualised features. One scan per forward keeps its cost small next to N attention
layers (the benchmark's LTM on/off ratio), and the TRM recursion then reads the gated,
memory-augmented features through its cross-attention, so long-range context reaches every
refinement step.

The MAG gate blends the attention path y and the memory path M = W_up m per channel:

    g = sigmoid(W_g [y; M] + b_g),     out = g * y + (1 - g) * M

and the regulariser ln 2 - H(g) (H the binary entropy, averaged over tokens and channels) keeps
g away from 0/1 early in training; it is >= 0 and 0 at g = 1/2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _scan_block(log_a: Tensor, b: Tensor) -> Tensor:
    """Dense scan of short sequences: h_t = sum_{s<=t} exp(sum_{s<j<=t} log a_j) b_s.

    log_a, b: (N, L, C). Builds the (N, L, L, C) matrix of span decays; the upper triangle is
    set to -inf before exp, and every kept exponent is <= 0.
    """
    cum = torch.cumsum(log_a, dim=1)  # (N, L, C)
    span = cum[:, :, None, :] - cum[:, None, :, :]  # (N, t, s, C) = A_t - A_s
    L = log_a.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=log_a.device).tril()
    span = span.masked_fill(~causal[None, :, :, None], float("-inf"))
    return torch.einsum("ntsc,nsc->ntc", torch.exp(span), b)


def linear_scan(log_a: Tensor, b: Tensor, chunk_size: int = 32) -> Tensor:
    """Solve h_t = exp(log_a_t) * h_{t-1} + b_t, h_{-1} = 0, for all t in parallel.

    log_a, b: (B, T, C) (log_a may be broadcast from (1, 1, C) etc.). Returns h: (B, T, C).

    Two-level (recursive) chunked scan: inside chunks of `chunk_size` the dense span-decay form
    (`_scan_block`); the chunk boundary states obey the same recurrence with the chunk's total
    decay and end state, solved by recursion on a T/chunk_size long sequence; each position then
    adds its chunk's incoming state times its decay from the chunk start. Work is
    O(B * T * C * chunk_size), depth is O(log T / log chunk_size) Python-level recursion levels,
    independent of the decay values.
    """
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")
    log_a, b = torch.broadcast_tensors(log_a, b)
    bsz, T, C = b.shape
    if T <= chunk_size:
        return _scan_block(log_a, b)
    n = -(-T // chunk_size)
    pad = n * chunk_size - T
    if pad:  # identity steps: a = 1 (log 0), b = 0
        log_a = F.pad(log_a, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
    la = log_a.reshape(bsz, n, chunk_size, C)
    local = _scan_block(la.reshape(bsz * n, chunk_size, C), b.reshape(bsz * n, chunk_size, C))
    local = local.view(bsz, n, chunk_size, C)  # states inside each chunk, starting from 0
    cum = torch.cumsum(la, dim=2)  # (B, n, L, C) decay from the chunk start
    carry = linear_scan(cum[:, :, -1], local[:, :, -1], chunk_size)  # (B, n, C) chunk-end states
    incoming = F.pad(carry[:, :-1], (0, 0, 1, 0))  # state entering chunk k
    h = local + torch.exp(cum) * incoming[:, :, None, :]
    return h.reshape(bsz, n * chunk_size, C)[:, :T]


def linear_scan_reference(a: Tensor, x: Tensor, state: Tensor | None = None) -> Tensor:
    """The per-timestep loop m_t = a m_{t-1} + (1 - a) x_t, as the seed design wrote it.

    a: (C,) decays; x: (B, T, C); state: (B, C) or None. Only for tests and benchmarks.
    """
    m = torch.zeros_like(x[:, 0]) if state is None else state
    out = []
    for t in range(x.shape[1]):
        m = a * m + (1 - a) * x[:, t]
        out.append(m)
    return torch.stack(out, dim=1)


class LongTermMemory(nn.Module):
    """Down-project, decay-scan, up-project: the memory stream of Titans MAG."""

    def __init__(
        self,
        d_model: int,
        d_memory: int,
        decay_min: float = 0.5,
        decay_max: float = 0.999,
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, d_memory, bias=False)
        self.up = nn.Linear(d_memory, d_model, bias=False)
        self.decay_logit = nn.Parameter(torch.empty(d_memory))
        self.decay_min, self.decay_max, self.chunk_size = decay_min, decay_max, chunk_size
        self.reset_decay()

    @torch.no_grad()
    def initial_decay_logit(self) -> Tensor:
        """Time scales 1/(1-a) spread geometrically from 1/(1-decay_min) to 1/(1-decay_max)."""
        n = self.decay_logit.numel()
        lo, hi = math.log(1 / (1 - self.decay_min)), math.log(1 / (1 - self.decay_max))
        tau = torch.exp(torch.linspace(lo, hi, n, dtype=torch.float64))
        a = 1 - 1 / tau
        return torch.logit(a).to(torch.float32)

    @torch.no_grad()
    def reset_decay(self) -> None:
        self.decay_logit.copy_(self.initial_decay_logit())

    def decay(self) -> Tensor:
        """a = sigmoid(decay_logit), (d_memory,)."""
        return torch.sigmoid(self.decay_logit)

    def forward(
        self, x: Tensor, attention_mask: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, T, d_model) -> (M (B, T, d_model), m (B, T, d_memory), final state (B, d_memory)).

        The scan runs in float32 or wider whatever the autocast dtype: decays near 1 need it.
        """
        scan_dtype = torch.promote_types(x.dtype, torch.float32)
        u = self.down(x).to(scan_dtype)  # (B, T, Cm)
        logit = self.decay_logit.to(scan_dtype)
        log_a = F.logsigmoid(logit).expand_as(u)  # log a
        b = torch.sigmoid(-logit) * u  # (1 - a) u
        if attention_mask is not None:  # padding: a = 1, no input
            keep = attention_mask.to(u.dtype)[..., None]
            log_a = log_a * keep
            b = b * keep
        if state is not None:  # fold the incoming state into the first step: h_0 = a_0 s + b_0
            first = b[:, :1] + torch.exp(log_a[:, :1]) * state.to(scan_dtype)[:, None, :]
            b = torch.cat((first, b[:, 1:]), dim=1)
        m = linear_scan(log_a, b, self.chunk_size)
        return self.up(m.to(x.dtype)), m, m[:, -1]


class MAGGate(nn.Module):
    """g = sigmoid(W_g [y; M]); out = g * y + (1 - g) * M (per token and channel)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * d_model, d_model)

    def forward(self, y: Tensor, mem: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.sigmoid(self.proj(torch.cat((y, mem), dim=-1)))
        return g * y + (1 - g) * mem, g


def binary_entropy(p: Tensor, eps: float = 1e-6) -> Tensor:
    """H(p) = -p ln p - (1-p) ln(1-p), elementwise, in nats."""
    p = p.float().clamp(eps, 1 - eps)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class MemoryAsGate(nn.Module):
    """The LTM branch and the MAG gate over the backbone output."""

    def __init__(
        self,
        d_model: int,
        d_memory: int,
        decay_min: float,
        decay_max: float,
        chunk_size: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.ltm = LongTermMemory(d_model, d_memory, decay_min, decay_max, chunk_size)
        self.gate = MAGGate(d_model)
        self.mem_norm = nn.RMSNorm(d_model, eps=eps)

    def forward(
        self, y: Tensor, attention_mask: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """y: (B, T, D) -> (gated features (B, T, D), aux tensors, final memory state)."""
        mem, m, new_state = self.ltm(y, attention_mask, state)
        out, g = self.gate(y, self.mem_norm(mem))
        aux = {"gate": g, "memory": m}
        return out, aux, new_state


__all__ = [
    "LongTermMemory",
    "MAGGate",
    "MemoryAsGate",
    "binary_entropy",
    "linear_scan",
    "linear_scan_reference",
]
