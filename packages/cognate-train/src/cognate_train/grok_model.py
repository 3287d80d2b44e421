"""The grokking experiment's model: the Grokfast reference's decoder shape.

A 2-layer pre-LayerNorm decoder, width 128, 4 heads, learned positions, read at the last
position. This decoder rather than a tiny Cognate model, on purpose: it is the setting in which
Grokfast's and Muon's grokking speed-ups were reported, so results can be set beside theirs, and
no ACT/memory machinery blurs what the optimizer does. (It is a clean pre-LN block; the exact
replica of the reference, its residual quirk included, is ``benchmarks/grokking.py``.) Every
linear layer is an ``nn.Linear``, so ``mugrokfast.param_groups`` routes the hidden matrices to
Muon.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # 3 x (B, T, D)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GrokDecoder(nn.Module):
    """Embeddings, n pre-LN blocks, final LN, head."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        seq_len: int = 4,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V)."""
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


@torch.no_grad()
def score(model: nn.Module, rows: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(mean CE loss, accuracy) of predicting r = rows[:, 4] from rows[:, :4]."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, rows.shape[0], chunk):
        part = rows[i : i + chunk]
        logits = model(part[:, :4])[:, -1, :]
        loss += F.cross_entropy(logits, part[:, 4], reduction="sum").item()
        correct += int((logits.argmax(-1) == part[:, 4]).sum())
    model.train()
    return loss / rows.shape[0], correct / rows.shape[0]
