"""Titans' neural long-term memory (Behrouz et al. 2024): a linear map per head that learns at
test time, by gradient descent with momentum and forgetting on an associative loss.

Per head h (H heads of width d) the memory is a matrix W (d x d) mapping keys to values:

    q_t = l2norm(conv(W_q x)_t),  k_t = l2norm(conv(W_k x)_t),  v_t = conv(W_v x)_t
    loss_t(W) = ||W k_t - v_t||^2                                        associative loss
    retrieval: o_t = W q_t,  out_t = W_o [o_t over heads]

conv: a depthwise causal convolution of K = `conv_size` taps along the row's real tokens (the
paper's architectural detail; K = 1 is none). It lets the key written at a token carry the
token before it, which a key -> value binding needs: the value follows its key.

The sequence is cut into chunks of C = `chunk_size` real tokens. Chunk n is one step of
gradient descent with momentum and weight decay on its mean loss, the gradient ("surprise")
taken against the weights at the chunk's start, as in the paper's chunked (mini-batch) form:

    G_n = grad_W mean_{t in n} loss_t(W_{n-1}) = (2/C) (W_{n-1} sum_t k_t k_t^T - sum_t v_t k_t^T)
    S_n = eta_n S_{n-1} - theta_n G_n                  momentum (the "surprise" state)
    W_n = (1 - alpha_n) W_{n-1} + S_n                  forgetting

with theta_n (learning rate, in (0, 1)), eta_n (momentum) and alpha_n (forgetting) input-
dependent and constant within the chunk: sigmoids of a linear map of the chunk's mean input,
per head. theta < 1 keeps the step stable: the mean-loss Hessian 2 mean(k k^T) has eigenvalues
<= 2 because the keys have unit norm.

Why a loop over chunks (and no associative scan): G_n depends on W_{n-1}, so chunk n's update
needs every earlier chunk's result; the recurrence is linear in (W, S) but its transition
multiplies W by the matrix (1 - alpha) I - 2 theta mean(k k^T), so a parallel scan would
compose 2d x 2d matrices (O(d) more work than the update itself, times log(T/C) levels).
benchmarks/titans_recurrence.py measures such a scan (it agrees to fp32 rounding) at 5x to 60x
the forward + backward time of this loop on the CPU (16 to 512 chunks, head width 16 and
32). Everything per token (projections, the chunks' sums of k k^T and v k^T, the rates,
retrieval, the diagnostics) is computed for all positions at once. The loop itself runs
outside autograd with a hand-written backward (`fused_chunk_recurrence`: W and S side by side
as one linear recurrence, one batched matmul per chunk each way; the gradients that need no
loop are batched after it), equal to autograd through the plain loop (`chunk_recurrence`, the
reference) in float64.

Causality. Position t reads the memory after the last chunk that is complete at t (its own
chunk included when t is that chunk's last token; lucidrains/titans-pytorch shifts retrieval
by one position for the same effect): o_t = W_{m(t)} q_t with m(t) = floor((p_t + 1) / C),
p_t the token's position in the stream. Writes of the current, incomplete chunk are not yet
readable; with C <= the attention window, sliding-window attention covers them. A chunk's
rates use the mean of its own inputs, which is causal because they act only once the chunk is
complete.

Streaming and padding. Chunks are counted in each row's own stream of real tokens: padding
(attention_mask 0) takes no slot, so left padding, right padding and padding in the middle
change nothing for the real tokens, and padding positions read zeros. The state
(`TitansState`: W and S at the start of the pending chunk, plus the pending chunk's sums of
k k^T, v k^T and x and its token count, and the convolution's input history, the last K-1
tokens' projections) is passed in and returned explicitly, so two calls
with the state passed equal one call for any split. Nothing is stored on the module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Block, RMSNorm, WindowMask, residual_dropout
from .cache import WindowKV


class TitansState(NamedTuple):
    """The memory between calls, per batch row b and head h (d = head width, D = d_model).

    weights, momentum: (B, H, d, d): W and S at the start of the pending chunk.
    pending_kk, pending_vk: (B, H, d, d): sum k k^T and sum v k^T over the pending chunk.
    pending_x: (B, D): sum of the pending chunk's inputs. pending_count: (B,) int64, 0..C-1.
    conv_tail: (B, K-1, 3 H d): the q/k/v projections of the row's last K-1 real tokens (the
    causal convolution's input history; zeros before the stream starts).
    """

    weights: Tensor
    momentum: Tensor
    pending_kk: Tensor
    pending_vk: Tensor
    pending_x: Tensor
    pending_count: Tensor
    conv_tail: Tensor


class _Slots(NamedTuple):
    """Where this call's tokens land in its chunk grid (`dest` None: slot t = token t)."""

    dest: Tensor | None  # (B, T) slot of each token; padding -> n_slots (a dropped slot)
    end: Tensor  # (B,) one past each row's last slot
    n_slots: int  # a multiple of the chunk size
    n_full: int  # chunks complete in every row


def _slots(attention_mask: Tensor | None, offset: Tensor | None, T: int, C: int) -> _Slots:
    """Slot of token t = the row's pending count + the number of real tokens before t."""
    if attention_mask is None and offset is None:
        n_slots = max(C, math.ceil(T / C) * C)
        return _Slots(None, torch.full((1,), T, dtype=torch.long), n_slots, T // C)
    batch = (attention_mask if attention_mask is not None else offset[:, None]).shape[0]
    device = (attention_mask if attention_mask is not None else offset).device
    real = (
        torch.ones(batch, T, dtype=torch.bool, device=device)
        if attention_mask is None
        else attention_mask.to(torch.bool)
    )
    offset = torch.zeros(batch, dtype=torch.long, device=device) if offset is None else offset
    end = offset + real.sum(1)
    lo, hi = torch.stack((end.min(), end.max())).tolist()
    n_slots = max(C, math.ceil(hi / C) * C)
    rank = real.long().cumsum(1) - 1
    dest = torch.where(real, offset[:, None] + rank, n_slots)
    return _Slots(dest, end, n_slots, lo // C)


def _to_slots(t: Tensor, slots: _Slots) -> Tensor:
    """(B, T, F) -> (B, n_slots, F); empty slots are zero."""
    if slots.dest is None:
        return F.pad(t, (0, 0, 0, slots.n_slots - t.shape[1]))
    out = t.new_zeros(t.shape[0], slots.n_slots + 1, t.shape[-1])
    out = out.scatter_add(1, slots.dest[..., None].expand_as(t), t)
    return out[:, : slots.n_slots]


def _from_slots(t: Tensor, slots: _Slots, T: int) -> Tensor:
    """(B, n_slots, F) -> (B, T, F); padding positions get zeros."""
    if slots.dest is None:
        return t[:, :T]
    t = F.pad(t, (0, 0, 0, 1))
    return t.gather(1, slots.dest[..., None].expand(-1, -1, t.shape[-1]))


class NeuralMemory(nn.Module):
    """Titans' neural memory: per-head linear associative memory updated by its surprise.

    forward(x (B, T, D), attention_mask (B, T) | None, state | None)
      -> (out (B, T, D), new state, diagnostics {"surprise": (B, T), "memory_norm": (B, T)}).
    surprise: loss_t at the weights the token's chunk starts from, mean over heads.
    memory_norm: Frobenius norm of the W the token reads, mean over heads. Both detached;
    0 at padding.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        chunk_size: int = 16,
        init_lr: float = 0.5,
        init_momentum: float = 0.5,
        init_forget: float = 0.01,
        conv_size: int = 4,
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if conv_size < 1:
            raise ValueError(f"conv_size must be >= 1, got {conv_size}")
        for name, p in (("init_lr", init_lr), ("init_momentum", init_momentum)):
            if not 0.0 < p < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {p}")
        if not 0.0 < init_forget < 1.0:
            raise ValueError(f"init_forget must be in (0, 1), got {init_forget}")
        self.n_heads, self.head_dim, self.chunk_size = n_heads, head_dim, chunk_size
        self.conv_size = conv_size
        self.init_rates = (init_lr, init_momentum, init_forget)
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        self.rates = nn.Linear(d_model, 3 * n_heads)  # logits of theta, eta, alpha per head
        self.initial_memory = nn.Parameter(torch.zeros(n_heads, head_dim, head_dim))
        # depthwise causal convolution over time after the q/k/v projections (the paper's
        # architectural detail): k and v of a token can carry the tokens just before it
        self.conv = nn.Parameter(torch.empty(3 * inner, conv_size))
        self.reset_rates()
        self.reset_conv()

    @torch.no_grad()
    def initial_rates_bias(self) -> Tensor:
        """Bias of `rates` so that theta, eta, alpha start at (init_lr, init_momentum, init_forget)."""
        logits = [math.log(p / (1 - p)) for p in self.init_rates]
        return torch.tensor(logits).repeat_interleave(self.n_heads)

    @torch.no_grad()
    def reset_rates(self) -> None:
        self.rates.bias.copy_(self.initial_rates_bias())

    @torch.no_grad()
    def initial_conv(self, generator: torch.Generator | None = None) -> Tensor:
        """The identity filter (weight 1 on the token itself) plus N(0, 0.1) on every tap, so
        the memory starts close to reading each token alone but the earlier taps get distinct
        gradients from the start."""
        w = 0.1 * torch.randn(self.conv.shape, generator=generator, dtype=self.conv.dtype)
        w[:, -1] += 1.0
        return w.to(self.conv.device)

    @torch.no_grad()
    def reset_conv(self) -> None:
        self.conv.copy_(self.initial_conv())

    def initial_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> TitansState:
        """The learned initial W (shared by all rows), zero momentum, no pending tokens."""
        dtype = dtype or self.initial_memory.dtype
        w = self.initial_memory.to(device=device, dtype=dtype)
        zeros = torch.zeros(batch, *w.shape, device=device, dtype=dtype)
        return TitansState(
            w.expand(batch, *w.shape),
            zeros,
            zeros,
            zeros,
            torch.zeros(batch, self.rates.in_features, device=device, dtype=dtype),
            torch.zeros(batch, dtype=torch.long, device=device),
            torch.zeros(batch, self.conv_size - 1, self.conv.shape[0], device=device, dtype=dtype),
        )

    def _check_state(self, state: TitansState, batch: int) -> None:
        H, d, D = self.n_heads, self.head_dim, self.rates.in_features
        tail = (batch, self.conv_size - 1, 3 * H * d)
        want = ((batch, H, d, d),) * 4 + ((batch, D), (batch,), tail)
        for name, t, shape in zip(TitansState._fields, state, want, strict=True):
            if tuple(t.shape) != shape:
                raise ValueError(f"state.{name} must have shape {shape}, got {tuple(t.shape)}")
        if state.pending_count.dtype != torch.long:
            raise ValueError(f"state.pending_count must be int64, got {state.pending_count.dtype}")

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.n_heads, self.head_dim))  # (..., D') -> (..., H, d)

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        state: TitansState | None = None,
        diagnostics: bool = True,
    ) -> tuple[Tensor, TitansState, dict[str, Tensor]]:
        """diagnostics False: the dict is empty and none of its work is done."""
        B, T, _ = x.shape
        C, H = self.chunk_size, self.n_heads
        work = torch.promote_types(x.dtype, torch.float32)  # the updates need >= float32
        if state is not None:
            self._check_state(state, B)
        slots = _slots(attention_mask, None if state is None else state.pending_count, T, C)
        if state is None:
            state = self.initial_state(B, x.device, work)
        state = TitansState(*(s.to(work) if s.is_floating_point() else s for s in state))

        proj = torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), -1).to(work)
        offset = state.pending_count.to(x.device)
        qkv, conv_tail = self._causal_conv(_to_slots(proj, slots), state.conv_tail, offset, slots)
        q, k, v = (self._heads(t) for t in qkv.chunk(3, dim=-1))  # (B, S, H, d), S = n_slots
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        xs = _to_slots(x.to(work), slots)  # (B, S, D)
        n = slots.n_slots // C

        kc, vc = k.unflatten(1, (n, C)), v.unflatten(1, (n, C))  # (B, n, C, H, d)
        kk = torch.einsum("bnchi,bnchj->bhnij", kc, kc)
        vk = torch.einsum("bnchi,bnchj->bhnij", vc, kc)
        x_sum = xs.unflatten(1, (n, C)).sum(2)  # (B, n, D)
        kk, vk, x_sum = _add_pending(kk, vk, x_sum, state)
        rates = torch.sigmoid(self.rates(x_sum.to(x.dtype) / C).to(work))  # (B, n, 3H)
        theta, eta, alpha = rates.view(B, n, 3, H, 1, 1).permute(2, 0, 3, 1, 4, 5)  # (B,H,n,1,1)
        complete = torch.arange(1, n + 1, device=x.device) * C <= slots.end[:, None].to(x.device)
        weights, s = fused_chunk_recurrence(  # weights: W_0..W_n (B, H, n+1, d, d)
            state.weights,
            state.momentum,
            kk,
            vk,
            (2.0 / C) * theta,
            eta,
            1 - alpha,
            None if slots.n_full == n else complete.expand(B, n)[:, None, :, None, None],
        )

        # retrieval: slot p reads W_{floor((p+1)/C)}: shift by one, group into chunks of C
        qg = F.pad(q, (0, 0, 0, 0, 1, C - 1)).unflatten(1, (n + 1, C))  # (B, n+1, C, H, d)
        o = torch.einsum("bhgij,bgchj->bgchi", weights, qg).flatten(1, 2)[:, 1 : n * C + 1]
        out = self.o_proj(_from_slots(o.flatten(-2), slots, T).to(x.dtype))
        end = slots.end.to(x.device)
        new_state = _final_state(weights[:, :, -1], s, kk, vk, x_sum, end, C, conv_tail)
        if not diagnostics:
            return out, new_state, {}
        with torch.no_grad():
            diag = _diagnostics(weights, kc, vc, C)  # (B, S, 2)
        surprise, norm = _from_slots(diag, slots, T).unbind(-1)
        return out, new_state, {"surprise": surprise, "memory_norm": norm}

    def _causal_conv(
        self, proj: Tensor, tail: Tensor, offset: Tensor, slots: _Slots
    ) -> tuple[Tensor, Tensor]:
        """Depthwise causal convolution along each row's stream of real tokens.

        proj: (B, S, F) projections in slots (slot p holds stream position p; slots before
        the row's `offset` and from its end on are empty); tail: (B, K-1, F) the stream's
        K-1 inputs before `offset`. Returns (out (B, S, F), zero in empty slots; the new
        tail, the inputs of stream positions end-K+1..end-1).
        """
        K, (B, S, width) = self.conv_size, proj.shape
        offset = offset.expand(B)
        lag = torch.arange(K - 1, device=proj.device)
        padded = F.pad(proj, (0, 0, K - 1, 0))  # slot p at p + K - 1; empty slots are zero
        padded = padded.scatter(1, (offset[:, None] + lag)[..., None].expand(-1, -1, width), tail)
        weight = self.conv.to(proj.dtype)[:, None, :]  # (F, 1, K): one filter per channel
        out = F.conv1d(padded.transpose(1, 2), weight, groups=width).transpose(1, 2)
        p = torch.arange(S, device=proj.device)
        end = slots.end.to(proj.device).expand(B)
        real = (p >= offset[:, None]) & (p < end[:, None])
        new_tail = padded.gather(1, (end[:, None] + lag)[..., None].expand(-1, -1, width))
        return out * real[..., None], new_tail


def chunk_recurrence(
    w: Tensor,
    s: Tensor,
    kk: Tensor,
    vk: Tensor,
    lr: Tensor,
    eta: Tensor,
    keep: Tensor,
    complete: Tensor | None = None,
    n_full: int = 0,
) -> tuple[list[Tensor], Tensor]:
    """The chunk recurrence, one step per chunk j (j = 1..n):

        S_j = eta_j S_{j-1} + lr_j (sum v k^T - W_{j-1} sum k k^T)      (lr = 2 theta / C)
        W_j = keep_j W_{j-1} + S_j                                      (keep = 1 - alpha)

    i.e. S_j = eta_j S_{j-1} - theta_j G_j with G_j the mean-loss gradient at W_{j-1}.
    w, s: (B, H, d, d); kk, vk: (B, H, n, d, d); lr, eta, keep: (B, H, n, 1, 1).
    complete: (B, 1, n, 1, 1) bool, False where a row has not completed chunk j (W and S
    then stay); None or the first `n_full` chunks: complete in every row.
    Returns ([W_0, ..., W_n], S_n).
    """
    read = [w]
    # unbind once: indexing inside the loop would make backward O(n^2) (a full-size zero
    # gradient per selected chunk)
    per_chunk = [t.unbind(2) for t in (kk, vk, lr, eta, keep)]
    done = complete.unbind(2) if complete is not None else [None] * kk.shape[2]
    for j, (kk_j, vk_j, lr_j, eta_j, keep_j) in enumerate(zip(*per_chunk, strict=True)):
        s_new = eta_j * s + lr_j * (vk_j - w @ kk_j)
        w_new = keep_j * w + s_new
        if done[j] is None or j < n_full:
            w, s = w_new, s_new
        else:
            w, s = torch.where(done[j], w_new, w), torch.where(done[j], s_new, s)
        read.append(w)
    return read, s


def _trace(t: Tensor) -> Tensor:
    return t.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum((-1, -2), keepdim=True)


class _FusedRecurrence(torch.autograd.Function):
    """The chunk recurrence as one linear recurrence on Z = [W | S] (d x 2d):

        Z_j = Z_{j-1} M_j + b_j,   M_j = [[A, B], [C, D]],   b_j = [a lr vk | lr vk]
        A = keep I - a lr kk,  B = -lr kk,  C = a eta I,  D = eta I

    (the S column is S_j = eta S_{j-1} + lr (vk - W_{j-1} kk); the W column is
    W_j = keep W_{j-1} + a S_j expanded; a = `add`, 1 when None). One batched matmul per
    chunk each way, outside autograd; M and b are built here and their gradients mapped back
    to kk, vk, lr, eta, keep in a few batched ops after the loop. Chunk-major tensors:
    z0 (X, d, 2d) with X = B H; kk, vk (n, X, d, d); lr, eta, keep, add (n, X, 1, 1).
    Returns Z_0..Z_n (n+1, X, d, 2d). Backward: dZ_j = g_j + dZ_{j+1} M_{j+1}^T,
    dM_j = Z_{j-1}^T dZ_j, db_j = dZ_j.
    """

    @staticmethod
    def forward(ctx, z0, kk, vk, lr, eta, keep, add):  # noqa: ANN001, ANN205
        (n, X, d, _), a = kk.shape, (1.0 if add is None else add)
        # written in place (out=): these are the largest tensors of the branch
        m = kk.new_zeros(n, X, 2 * d, 2 * d)
        torch.mul(kk, -lr, out=m[..., :d, d:])
        torch.mul(m[..., :d, d:], a, out=m[..., :d, :d])
        m[..., :d, :d].diagonal(dim1=-2, dim2=-1).add_(keep[..., 0])
        m[..., d:, :d].diagonal(dim1=-2, dim2=-1).copy_((a * eta)[..., 0].expand(n, X, d))
        m[..., d:, d:].diagonal(dim1=-2, dim2=-1).copy_(eta[..., 0].expand(n, X, d))
        b = vk.new_empty(n, X, d, 2 * d)
        torch.mul(vk, lr, out=b[..., d:])
        torch.mul(b[..., d:], a, out=b[..., :d])
        zs = torch.cat((z0[None], z0.new_empty(n, *z0.shape)))
        z_l = zs.unbind(0)  # views: the loop writes through them
        for j, (m_j, b_j) in enumerate(zip(m.unbind(0), b.unbind(0), strict=True)):
            torch.baddbmm(b_j, z_l[j], m_j, out=z_l[j + 1])
        ctx.save_for_backward(zs, m, kk, vk, lr, add)
        return zs

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        zs, m, kk, vk, lr, add = ctx.saved_tensors
        (n, _, d, _), a = kk.shape, (1.0 if add is None else add)
        g = g.contiguous()
        dz = torch.empty_like(zs)  # dz[j]: total gradient of Z_j
        dz_l, g_l, m_t = dz.unbind(0), g.unbind(0), m.transpose(-1, -2).unbind(0)
        dz_l[n].copy_(g_l[n])
        for j in range(n - 1, -1, -1):
            torch.baddbmm(g_l[j], dz_l[j + 1], m_t[j], out=dz_l[j])
        db = dz[1:]
        db_w, db_s = db[..., :d], db[..., d:]
        # dM_j = Z_{j-1}^T db_j; of its blocks only A and B are full matrices: C and D are
        # scalar multiples of I, whose gradients are traces, tr(S^T db_w) = <S, db_w>
        d_ab = zs[:-1, ..., :d].transpose(-1, -2) @ db  # (n, X, d, 2d): [dA | dB]
        d_a, d_b, s_prev = d_ab[..., :d], d_ab[..., d:], zs[:-1, ..., d:]
        # kk enters as -lr (a dA + dB), vk as lr (a db_w + db_s), eta as a C + D
        t, u = d_a * a + d_b, db_w * a + db_s
        d_lr = _dot(vk, u) - _dot(kk, t)
        d_eta = _dot(s_prev, u)
        return dz[0], t.mul_(-lr), u.mul_(lr), d_lr, d_eta, _trace(d_a), None


def fused_chunk_recurrence(
    w: Tensor,
    s: Tensor,
    kk: Tensor,
    vk: Tensor,
    lr: Tensor,
    eta: Tensor,
    keep: Tensor,
    complete: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`chunk_recurrence`'s results, (W_0..W_n stacked (B, H, n+1, d, d), S_n), by
    `_FusedRecurrence`. An incomplete chunk j (complete False) leaves W and S as they are:
    eta -> 1, lr -> 0, keep -> 1 and S not added, so one loop body serves every row."""
    B, H, n, d, _ = kk.shape
    add = None
    if complete is not None:
        add = complete.to(kk.dtype).expand(B, H, n, 1, 1)
        lr, eta, keep = lr * add, eta * add + (1 - add), keep * add + (1 - add)

    def chunk_major(t: Tensor | None) -> Tensor | None:  # (B, H, n, ...) -> (n, B H, ...)
        if t is None:
            return None
        return t.expand(B, H, n, *t.shape[3:]).permute(2, 0, 1, 3, 4).flatten(1, 2).contiguous()

    z0 = torch.cat((w.expand(B, H, d, d), s.expand(B, H, d, d)), -1).reshape(B * H, d, 2 * d)
    args = [chunk_major(t) for t in (kk, vk, lr, eta, keep, add)]
    zs = _FusedRecurrence.apply(z0, *args)
    zs = zs.view(n + 1, B, H, d, 2 * d).permute(1, 2, 0, 3, 4)  # (B, H, n+1, d, 2d)
    return zs[..., :d], zs[:, :, -1, :, d:]


def _add_pending(
    kk: Tensor, vk: Tensor, x_sum: Tensor, state: TitansState
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold the pending chunk's sums (from earlier calls) into this call's first chunk."""
    kk = torch.cat((kk[:, :, :1] + state.pending_kk[:, :, None], kk[:, :, 1:]), 2)
    vk = torch.cat((vk[:, :, :1] + state.pending_vk[:, :, None], vk[:, :, 1:]), 2)
    x_sum = torch.cat((x_sum[:, :1] + state.pending_x[:, None], x_sum[:, 1:]), 1)
    return kk, vk, x_sum


def _final_state(
    w: Tensor,
    s: Tensor,
    kk: Tensor,
    vk: Tensor,
    x_sum: Tensor,
    end: Tensor,
    C: int,
    conv_tail: Tensor,
) -> TitansState:
    """W and S after the complete chunks, and the sums of each row's incomplete last chunk."""
    B, n = w.shape[0], kk.shape[2]
    end = end.expand(B)
    count = end % C
    idx = (end // C).clamp(max=n - 1)
    rows = torch.arange(B, device=end.device)
    has = (count > 0).to(kk.dtype)
    return TitansState(
        w,
        s,
        kk[rows, :, idx] * has[:, None, None, None],
        vk[rows, :, idx] * has[:, None, None, None],
        x_sum[rows, idx] * has[:, None],
        count,
        conv_tail,
    )


def _diagnostics(weights: Tensor, kc: Tensor, vc: Tensor, C: int) -> Tensor:
    """Per slot: (surprise, norm of the W read), each the mean over heads. (B, S, 2)."""
    n = kc.shape[1]
    pred = torch.einsum("bhnij,bnchj->bnchi", weights[:, :, :n], kc)
    surprise = (pred - vc).pow(2).sum(-1).mean(-1).flatten(1)  # (B, S)
    norms = torch.linalg.matrix_norm(weights).mean(1)  # (B, n+1)
    slot = torch.arange(1, n * C + 1, device=kc.device) // C  # slot p reads W_{(p+1)//C}
    return torch.stack((surprise, norms[:, slot]), -1)


class MemoryGate(nn.Module):
    """MAG (memory as a gate): the attention branch's output y, gated by the memory branch
    read on the same input h:  out = y * sigmoid(RMSNorm(M(h))), per token and channel.

    The gate is the paper's y (x) M(x) with the non-linearity the paper names (normalise, then
    sigmoid); the normalisation keeps the gate's input at unit scale whatever the memory's
    norm, so the gate neither saturates as W grows nor vanishes while it is empty.
    """

    def __init__(
        self, d_model: int, n_heads: int, chunk_size: int, eps: float, conv_size: int = 4
    ) -> None:
        super().__init__()
        head_dim = d_model // n_heads
        self.memory = NeuralMemory(d_model, n_heads, head_dim, chunk_size, conv_size=conv_size)
        self.norm = RMSNorm(d_model, eps=eps)

    def forward(
        self,
        h: Tensor,
        y: Tensor,
        attention_mask: Tensor | None = None,
        state: TitansState | None = None,
        diagnostics: bool = True,
    ) -> tuple[Tensor, TitansState, dict[str, Tensor]]:
        """h: the block's normalised input (B, T, D), y: its attention output (B, T, D)."""
        mem, state, diag = self.memory(h, attention_mask, state, diagnostics)
        gate = torch.sigmoid(self.norm(mem))
        return y * gate, state, ({**diag, "gate": gate.detach()} if diagnostics else {})


class MAGBlock(Block):
    """A backbone block with Titans' memory beside its attention (MAG, memory as a gate):

        h = RMSNorm(x);  x = x + Attn(h) * sigmoid(RMSNorm(M(h)));  x = x + SwiGLU(RMSNorm x)

    Both branches read the same input h, as in the paper's MAG figure: sliding-window
    attention is the precise short-term memory, the neural memory the fading long-term one.
    n_persistent > 0 adds the paper's persistent memory: that many learned key/value slots
    per head which every query of this attention sees besides its window (data-independent,
    so a cached step needs nothing more). forward returns (x, the memory's new state, its
    diagnostics).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        eps: float,
        dropout: float,
        chunk_size: int,
        n_persistent: int = 0,
        conv_size: int = 4,
    ) -> None:
        super().__init__(d_model, n_heads, d_ff, eps, dropout, n_persistent)
        self.ltm = MemoryGate(d_model, n_heads, chunk_size, eps, conv_size)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        mask: Tensor | WindowMask,
        cos: Tensor,
        sin: Tensor,
        cache: WindowKV | None = None,
        memory_mask: Tensor | None = None,
        memory_state: TitansState | None = None,
        diagnostics: bool = True,
    ) -> tuple[Tensor, TitansState, dict[str, Tensor]]:
        """memory_mask: the new tokens' (B, T) 0/1 mask; memory_state: this layer's state;
        diagnostics False: no memory diagnostics (an empty dict)."""
        h = self.attn_norm(x)
        y = self.attn(h, mask, cos, sin, cache=cache)
        y, state, diag = self.ltm(h, y, memory_mask, memory_state, diagnostics)
        x = x + residual_dropout(self.drop, y)
        return x + residual_dropout(self.drop, self.mlp(self.mlp_norm(x))), state, diag


__all__ = [
    "MAGBlock",
    "MemoryGate",
    "NeuralMemory",
    "TitansState",
    "chunk_recurrence",
    "fused_chunk_recurrence",
]
