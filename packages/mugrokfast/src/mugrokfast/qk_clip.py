"""QK-clip, the "Clip" of MuonClip (Kimi K2): cap attention logits by rescaling W_q and W_k.

For head h the pre-softmax logits are ``s_ij = (W_q^h x_i) . (W_k^h x_j) * scale``, bilinear in
(W_q^h, W_k^h). If the largest logit seen in the last forward pass, ``S_h``, exceeds ``tau``,
multiplying both W_q^h and W_k^h by ``sqrt(tau / S_h)`` multiplies every logit of that head by
``tau / S_h``: the same inputs now give at most ``tau``. Heads under the bound are untouched.
Call it after ``optimizer.step()`` with the per-head max logits your attention recorded in that
step's forward pass (Kimi K2's order): the bound is then exact for the weights the logits were
measured with and holds up to the optimizer step's own change. A per-head linear map applied to q
and k after the projections (rotary embeddings) keeps the logits bilinear, so the rescale still
works; ``S_h`` must include the attention's scale (``1/sqrt(head_dim)`` for SDPA's default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def qk_clip_(
    q_weight: Tensor,
    k_weight: Tensor,
    max_logits: Tensor | Sequence[float],
    n_heads: int,
    tau: float = 100.0,
) -> Tensor:
    """Rescale, in place, the rows of heads whose max logit exceeds ``tau``.

    Args:
        q_weight: ``(n_heads * head_dim, d_model)``, rows grouped by head (nn.Linear layout).
        k_weight: ``(n_kv_heads * head_dim, d_model)``. With grouped-query attention
            (``n_kv_heads < n_heads``) a K head is shared by several query heads, so it is left
            alone and each clipped query head takes the whole factor ``tau / S_h``.
        max_logits: ``(n_heads,)`` largest pre-softmax logit per head, scale included; a
            value <= ``tau`` (a negative one too) leaves its head untouched.
        n_heads: number of query heads.
        tau: the logit cap (K2: 100).

    Returns the per-head logit factors ``min(1, tau / S_h)`` that were applied.
    """
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int (got {n_heads!r})")
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (got {tau!r})")
    if q_weight.ndim != 2 or q_weight.shape[0] % n_heads:
        raise ValueError(
            f"q_weight: expected (n_heads*head_dim, d_model) with n_heads={n_heads}, "
            f"got {tuple(q_weight.shape)}"
        )
    head_dim = q_weight.shape[0] // n_heads
    if k_weight.ndim != 2 or k_weight.shape[0] % head_dim or k_weight.shape[1] != q_weight.shape[1]:
        raise ValueError(
            f"k_weight: expected (n_kv_heads*{head_dim}, {q_weight.shape[1]}), "
            f"got {tuple(k_weight.shape)}"
        )
    n_kv = k_weight.shape[0] // head_dim
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(f"k_weight: {n_kv} kv heads do not divide n_heads={n_heads}")
    S = torch.as_tensor(max_logits, dtype=torch.float32, device=q_weight.device).flatten()
    if S.numel() != n_heads:
        raise ValueError(f"max_logits: expected {n_heads} values, got {S.numel()}")
    factor = torch.where(S > tau, tau / S, torch.ones_like(S))  # logit factor per q head
    if n_kv == n_heads:  # MuonClip: split the factor evenly between W_q and W_k
        q_factor = kv_factor = factor.sqrt()
    else:  # shared K heads stay; the query heads take the whole factor
        q_factor, kv_factor = factor, None
    q_weight.view(n_heads, head_dim, -1).mul_(q_factor.to(q_weight.dtype).view(-1, 1, 1))
    if kv_factor is not None:
        k_weight.view(n_kv, head_dim, -1).mul_(kv_factor.to(k_weight.dtype).view(-1, 1, 1))
    return factor
