"""The ACT halting head and the loss terms: next-token CE, deep supervision, ACT, gate entropy.

Labels follow the Hugging Face causal-LM convention: `labels` is aligned with `input_ids`,
the model shifts it (position t predicts label t+1) and -100 is ignored.

ACT (adaptive computation time), per token and refinement cycle c = 1..C:

    p_c = sigmoid(w . RMSNorm(z_c) + b)                  halting probability
    steps = min{c : p_c > threshold}  (C if none)        cycles the token uses at inference
    BCE(p_c, [argmax logits_c == label])                 "this cycle is already right"
    ponder = E[steps] / C,  E[steps] = sum_{c=1..C} prod_{j<c} (1 - p_j)
    diversity = max(0, target - Var_tokens(p_c))          (averaged over cycles)

The ponder cost is the expected cycle count under the same "stop at the first halt" rule,
made differentiable by using the probabilities; the diversity hinge is the seed's fix for a
head that outputs one halting probability for every token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import _WIDE, RMSNorm

IGNORE_INDEX = -100


class HaltingLinear(nn.Linear):
    """Linear(d, 1) whose bias starts at `INIT_BIAS` (p ~ 0.12: refine first, learn to halt)."""

    INIT_BIAS = -2.0

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            nn.init.constant_(self.bias, self.INIT_BIAS)


class ACTHead(nn.Module):
    """Per-token halting logit from the latent z: Linear(RMSNorm(z)) -> (B, T)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=eps)
        self.proj = HaltingLinear(d_model, 1)

    def forward(self, z: Tensor) -> Tensor:
        logit = self.proj(self.norm(z)).squeeze(-1)
        return logit if logit.dtype in _WIDE else logit.float()


def shift_labels(labels: Tensor) -> Tensor:
    """(B, T) labels -> (B, T) targets for each position: labels[t+1], -100 at the end."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_cross_entropy(logits: Tensor, targets: Tensor, denom: Tensor | None = None) -> Tensor:
    """Mean CE over positions whose target is not -100 (0 if there are none), in >= fp32.

    denom: divide the summed CE by this instead of the count (HF's `num_items_in_batch`).
    """
    valid = targets != IGNORE_INDEX
    ce = F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return ce / (valid.sum().clamp_min(1) if denom is None else denom)


def halting_steps(halt_logits: Tensor, threshold: float) -> Tensor:
    """halt_logits (C, B, T) -> cycles used per token (B, T): first c with p_c > threshold."""
    halted = torch.sigmoid(halt_logits) > threshold  # (C, B, T)
    halted[-1] = True  # the last cycle always stops
    return halted.to(torch.int8).argmax(dim=0) + 1  # argmax returns the first max


def expected_steps(halt_logits: Tensor) -> Tensor:
    """E[steps] = sum_c prod_{j<c} (1 - p_j), per token (B, T), differentiable."""
    p = torch.sigmoid(halt_logits)  # (C, B, T)
    survive = torch.cumprod(1 - p, dim=0)  # P(not halted after c)
    return 1 + survive[:-1].sum(dim=0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask (broadcast), 0 if mask is empty."""
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp_min(1)


def masked_std(x: Tensor, mask: Tensor) -> Tensor:
    """Population standard deviation of x over mask (0 when fewer than 2 entries)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask).sqrt()


def act_losses(
    halt_logits: Tensor,
    correct: Tensor,
    valid: Tensor,
    diversity_target: float,
) -> dict[str, Tensor]:
    """The three ACT terms (unweighted).

    halt_logits: (C, B, T); correct: (C, B, T) bool, cycle c's argmax equals the target;
    valid: (B, T) bool, positions with a target. Returns bce, ponder (E[steps] / C), diversity.
    """
    cycles = halt_logits.shape[0]
    bce = F.binary_cross_entropy_with_logits(
        halt_logits, correct.to(halt_logits.dtype), reduction="none"
    )
    bce = masked_mean(bce, valid[None])
    ponder = masked_mean(expected_steps(halt_logits), valid) / cycles
    p = torch.sigmoid(halt_logits)
    variances = torch.stack([masked_std(p[c], valid) ** 2 for c in range(cycles)])
    diversity = torch.clamp(diversity_target - variances, min=0).mean()
    return {"bce": bce, "ponder": ponder, "diversity": diversity}


__all__ = [
    "ACTHead",
    "HaltingLinear",
    "IGNORE_INDEX",
    "act_losses",
    "expected_steps",
    "halting_steps",
    "masked_mean",
    "masked_std",
    "shift_labels",
    "token_cross_entropy",
]
