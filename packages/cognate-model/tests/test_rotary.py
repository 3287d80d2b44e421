"""Rotary embeddings against the textbook formula, computed independently with complex numbers.

Reference (RoFormer; the half-split layout of GPT-NeoX / Llama): the pairs (x_i, x_{i+d/2}),
i < d/2, are the complex numbers x_i + j x_{i+d/2}, multiplied by exp(j t theta^(-2i/d)).
"""

import pytest
import torch
from cognate_model.attention import apply_rotary, rotary_cos_sin


def _reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    angle = positions.to(torch.float64)[..., None] * freq  # (..., T, d/2)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double()) * torch.polar(
        torch.ones_like(angle), angle
    )
    return torch.cat((z.real, z.imag), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotary_matches_the_complex_rotation(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 16, dtype=dtype)
    cos, sin = rotary_cos_sin(11, 16, 500.0, torch.device("cpu"), dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    ref = _reference(x, torch.arange(11), 500.0)
    torch.testing.assert_close(apply_rotary(x, cos, sin).double(), ref, rtol=tol, atol=tol)


def test_rotary_per_row_positions_and_relative_scores():
    """(B, T) positions rotate each row by its own phases; q_t . k_s depends on t - s only."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    cos, sin = rotary_cos_sin(positions, 8, 10000.0, torch.device("cpu"), torch.float64)
    out = apply_rotary(x, cos, sin)
    torch.testing.assert_close(out, _reference(x, positions[:, None], 10000.0))
    same = torch.randn(1, 1, 5, 8, dtype=torch.float64).expand(2, 1, 5, 8)
    rotated = apply_rotary(same, cos, sin)
    scores = rotated @ rotated.transpose(-1, -2)  # row 1 is row 0 shifted by 7 positions
    torch.testing.assert_close(scores[0], scores[1])
