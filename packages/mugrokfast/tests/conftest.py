"""Shared helpers: tiny models and deterministic gradient streams."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# torch.compile(opt.step) vs eager after a few steps, with bf16 Newton-Schulz. Exact to fp32
# rounding on the torch the lock pins. torch 2.11 (seen on its CPU and CUDA builds) traces the
# bf16 iteration so that a rounding differs from eager's; the bf16 quintic does not converge
# but leaves singular values in a band around one, so that one ulp can move an update entry by
# a good part of lr (0.02): up to 1.2e-3 after 3 steps seen on CUDA, 9e-5 on CPU. With fp32
# Newton-Schulz the two agree to 1e-7 there too. Either way a graph break fails the compile.
COMPILED_ATOL = 1e-5 if torch.__version__ >= (2, 15) else 2e-2


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


class TinyLM(nn.Module):
    """Embedding -> 2 hidden Linears (+ a conv over time) -> norm -> head (out = vocab)."""

    def __init__(self, vocab: int = 13, d: int = 8, tie: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T) -> logits (B, T, V)
        h = self.emb(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.head(self.norm(h))


def lm_loss(model: nn.Module, seed: int, vocab: int = 13) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (4, 6), generator=g).to(next(model.parameters()).device)
    return nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(1, dims=1).flatten())


def grad_stream(shapes, steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """steps x len(shapes) random gradients with a slow drifting component (like real ones)."""
    g = torch.Generator().manual_seed(seed)
    slow = [torch.randn(s, generator=g) for s in shapes]
    return [[0.3 * s + torch.randn(s.shape, generator=g) for s in slow] for _ in range(steps)]
