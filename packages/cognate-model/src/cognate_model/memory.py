"""Titans-MAG long-term memory: a decaying memory stream, its parallel scan, and the gate.

The memory is the linear recurrence, per channel c of a d_memory-wide stream u = W_down x:

    m_t = a * m_{t-1} + (1 - a) * u_t,      a = sigmoid(decay_logit)   (learned, per channel)

With a near 1 it remembers for ~1/(1-a) steps, far beyond the attention window. It is
computed for all t at once by `linear_scan` (a chunked scan built on matrix products; no
Python loop over positions), stably for any length: every factor it exponentiates is a
multiple of log a <= 0, so nothing overflows, and log a = logsigmoid(decay_logit) keeps full
relative precision when a is within 1e-7 of 1.

Padding (attention_mask == 0) contributes no input. Left padding (generation) and right
padding (batching) are therefore exact: the state is 0 before the first real token, an
incoming `memory_state` is folded in at the first real token, and the returned state is the
one after the last real token. (Padding in the middle of a row would let the state decay
across the gap.)

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

from .attention import RMSNorm


def linear_scan(
    log_a: Tensor, b: Tensor, chunk_size: int = 64, pad_to: int | None = None
) -> Tensor:
    """Solve h_t = a * h_{t-1} + b_t, h_{-1} = 0, for all t at once (a constant per channel).

    log_a: (C,) log-decays (<= 0); b: (B, T, C). Returns h: (B, T, C) in b's dtype, with
    autocast off (the decays need at least float32).

    Chunked scan. Inside a chunk of L = `chunk_size` steps the solution is a matrix product with
    the per-channel Toeplitz matrix W[t, s] = a^(t-s) (s <= t, else 0): one batched matmul over
    channels. The chunk-end states obey the same recurrence with decay a^L, which this function
    solves with one (T/L x T/L) Toeplitz product of powers of a^L (recursively, T / L steps,
    then T / L^2, ..., only past 512 chunks); each position then adds its chunk's incoming
    state times a^(t+1). Exponents (t - s) log a and L log a are <= 0, so nothing overflows
    for any length or decay, and a within 1e-7 of 1 keeps full precision when log a comes from
    `logsigmoid`. Work O(B T C (L + T/L)), one code path for every T up to 512 L.
    pad_to: scan a zero-padded input of that length (>= T) instead, so the program's shapes do
    not depend on T (torch.export with a dynamic length cannot prove ceil(T/L) * L arithmetic).
    """
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")
    if log_a.dim() != 1 or b.dim() != 3 or b.shape[-1] != log_a.shape[0]:
        raise ValueError(
            f"log_a must be (C,) and b (B, T, C), got {tuple(log_a.shape)} and {tuple(b.shape)}"
        )
    T = b.shape[1]
    if pad_to is not None:  # a fixed length: no shape arithmetic on T (torch.export)
        b = F.pad(b, (0, 0, 0, -(-pad_to // chunk_size) * chunk_size - T))
    with torch.autocast(b.device.type, enabled=False):
        return _chunked_scan(log_a.to(b.dtype), b, chunk_size)[:, :T]


# Chunk counts up to this use one (n x n) matrix product for the chunk-end states; beyond it
# (T > 512 * chunk_size) those states are scanned recursively. One branch, taken on the length
# alone, so a traced program (torch.export with a dynamic length) has no length-specific guard.
_DIRECT_CHUNKS = 512


def _decay_toeplitz(log_a: Tensor, n: int, stride: int = 1) -> Tensor:
    """(C, n, n): W[t, s] = a^(stride * (t - s)) for s <= t, else 0 (exponents <= 0)."""
    steps = torch.arange(n, device=log_a.device, dtype=log_a.dtype)
    lag = steps[:, None] - steps[None, :]  # t - s
    w = torch.exp(lag.clamp_min(0)[None] * (stride * log_a)[:, None, None])
    return w * (lag >= 0).to(log_a.dtype)


def _chunked_scan(log_a: Tensor, b: Tensor, L: int) -> Tensor:
    bsz, T, C = b.shape
    b = F.pad(b, (0, 0, 0, (-T) % L))  # trailing zero inputs change nothing before them
    n = b.shape[1] // L
    chunks = b.view(bsz, n, L, C).permute(3, 2, 0, 1).reshape(C, L, bsz * n)
    local = torch.bmm(_decay_toeplitz(log_a, L), chunks)  # (C, L, B n): each chunk from 0
    local = local.view(C, L, bsz, n).permute(2, 3, 1, 0)  # (B, n, L, C)
    last = local[:, :, -1].contiguous()  # (B, n, C): each chunk's end state, from 0
    if n > _DIRECT_CHUNKS:  # the chunk ends obey the same recurrence with decay a^L
        ends = _chunked_scan(log_a * L, last, L)
    else:
        ends = torch.bmm(_decay_toeplitz(log_a, n, L), last.permute(2, 1, 0).reshape(C, n, bsz))
        ends = ends.view(C, n, bsz).permute(2, 1, 0)  # (B, n, C)
    incoming = F.pad(ends[:, :-1], (0, 0, 1, 0))  # state entering chunk k
    rise = torch.exp((torch.arange(L, device=b.device, dtype=b.dtype) + 1)[:, None] * log_a)
    h = local + rise * incoming[:, :, None, :]  # + a^(t+1) * incoming, t within the chunk
    return h.reshape(bsz, n * L, C)[:, :T]


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


def _first_real(attention_mask: Tensor | None, like: Tensor) -> Tensor:
    """(B, T) one-hot of each row's first real position (position 0 without a mask)."""
    T = like.shape[1]
    pos = torch.arange(T, device=like.device)
    if attention_mask is None:
        return (pos == 0).to(like.dtype).expand(like.shape[0], T)
    first = attention_mask.to(torch.int8).argmax(dim=1)  # argmax returns the first 1
    return (pos[None] == first[:, None]).to(like.dtype)


def _last_real_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of each row's last real position."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.to(torch.int8).flip(1).argmax(dim=1)


class LongTermMemory(nn.Module):
    """Down-project, decay-scan, up-project: the memory stream of Titans MAG."""

    def __init__(
        self,
        d_model: int,
        d_memory: int,
        decay_min: float = 0.5,
        decay_max: float = 0.999,
        chunk_size: int = 64,
        max_len: int | None = None,
    ) -> None:
        super().__init__()
        self.max_len = max_len  # the padded scan length under torch.export
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
        if state is not None and state.shape != (x.shape[0], self.decay_logit.shape[0]):
            raise ValueError(
                f"memory_state must be (batch, d_memory) = ({x.shape[0]}, "
                f"{self.decay_logit.shape[0]}), got {tuple(state.shape)}"
            )
        scan_dtype = torch.promote_types(x.dtype, torch.float32)
        u = self.down(x).to(scan_dtype)  # (B, T, Cm)
        logit = self.decay_logit.to(scan_dtype)
        log_a = F.logsigmoid(logit)  # log a, precise near a = 1
        b = torch.sigmoid(-logit) * u  # (1 - a) u
        if attention_mask is not None:  # padding contributes no input
            b = b * attention_mask.to(scan_dtype)[..., None]
        if state is not None:  # fold the incoming state into the first real step: a s + b
            carry = torch.exp(log_a) * state.to(scan_dtype)  # (B, Cm)
            if attention_mask is None and b.shape[1] == 1:  # a decoding step: its one token
                b = b + carry[:, None, :]
            else:
                b = b + _first_real(attention_mask, b)[..., None] * carry[:, None, :]
        # One step (cached decoding): h_0 = b_0, the state already folded in; skip the scan.
        # Exported programs scan a fixed, longer-than-any-input length (see `linear_scan`).
        pad_to = self.max_len + 1 if torch.compiler.is_exporting() and self.max_len else None
        m = b if b.shape[1] == 1 else linear_scan(log_a, b, self.chunk_size, pad_to)
        final = m[:, -1]
        if attention_mask is not None:  # the state after the last real token
            last = _last_real_index(attention_mask)
            final = m.gather(1, last[:, None, None].expand(-1, 1, m.shape[-1]))[:, 0]
            none_real = ~attention_mask.bool().any(dim=1, keepdim=True)
            fallback = torch.zeros_like(final) if state is None else state.to(scan_dtype)
            final = torch.where(none_real, fallback, final)
        return self.up(m.to(x.dtype)), m, final


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
        max_len: int | None = None,
    ) -> None:
        super().__init__()
        self.ltm = LongTermMemory(d_model, d_memory, decay_min, decay_max, chunk_size, max_len)
        self.gate = MAGGate(d_model)
        self.mem_norm = RMSNorm(d_model, eps=eps)

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
