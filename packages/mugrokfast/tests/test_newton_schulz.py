"""Newton-Schulz against float64 SVD algebra, torch's own implementation and its band."""

from __future__ import annotations

import pytest
import torch
from mugrokfast import default_ns_dtype, zeropower_via_newtonschulz
from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

ABC = (3.4445, -4.7750, 2.0315)


def quintic(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = ABC
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def svd_reference(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """NS acts on singular values only: U f^steps(S / ||G||_F) V^T, computed in float64."""
    G = G.double()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    S = quintic(S / G.norm(dim=(-2, -1), keepdim=True).squeeze(-1), steps)
    return U @ torch.diag_embed(S) @ Vh


@pytest.mark.parametrize("shape", [(16, 16), (24, 8), (8, 24), (3, 10, 6), (2, 2, 5, 7)])
def test_matches_float64_svd_algebra(shape):
    G = torch.randn(shape, dtype=torch.float64)
    ref = svd_reference(G)
    out64 = zeropower_via_newtonschulz(G, dtype=torch.float64)
    torch.testing.assert_close(out64, ref, rtol=0, atol=1e-10)
    out32 = zeropower_via_newtonschulz(G.float(), dtype=torch.float32)
    assert out32.dtype == torch.float32 and out32.shape == G.shape
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=1e-5)
    out16 = zeropower_via_newtonschulz(G.float(), dtype=torch.bfloat16)
    assert (out16.double() - ref).norm() / ref.norm() < 6e-2  # bf16: 8 mantissa bits


@pytest.mark.parametrize("dtype,slack", [(torch.float32, 1e-4), (torch.bfloat16, 0.06)])
@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (40, 40)])
def test_singular_values_land_in_the_quintic_band(shape, dtype, slack):
    """Scalar map f^5 sends [0.002, 1] into [0.68, 1.21]; check the matrices do the same."""
    x = torch.linspace(0.002, 1, 100_001, dtype=torch.float64)
    y = quintic(x)
    lo, hi = y.min().item(), y.max().item()
    assert 0.5 < lo < 0.7 and 1.15 < hi < 1.25  # the band of the coefficients themselves
    U, _, Vh = torch.linalg.svd(torch.randn(shape, dtype=torch.float64), full_matrices=False)
    S = torch.linspace(0.05, 1.0, min(shape), dtype=torch.float64)  # condition number 20
    G = (U @ torch.diag(S) @ Vh).float()
    assert (S.min() / S.norm()) > 0.002
    sv = torch.linalg.svdvals(zeropower_via_newtonschulz(G, dtype=dtype).double())
    assert sv.min() >= lo - slack and sv.max() <= hi + slack


def test_batched_equals_one_by_one_and_transposes_tall():
    G = torch.randn(5, 12, 4)
    batched = zeropower_via_newtonschulz(G)
    single = torch.stack([zeropower_via_newtonschulz(g) for g in G])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    # tall input: same as orthogonalising the transpose and transposing back
    torch.testing.assert_close(zeropower_via_newtonschulz(G[0]),
                               zeropower_via_newtonschulz(G[0].T).T)  # fmt: skip


@pytest.mark.parametrize("shape", [(32, 16), (16, 32), (20, 20)])
def test_bf16_is_bit_identical_to_torch_muon_ns(shape):
    G = torch.randn(shape)
    ours = zeropower_via_newtonschulz(G, dtype=torch.bfloat16)
    assert torch.equal(ours, torch_ns(G, ABC, 5, 1e-7))
    batch = torch.randn(3, *shape)
    ours_b = zeropower_via_newtonschulz(batch, dtype=torch.bfloat16)
    assert torch.equal(ours_b, torch.stack([torch_ns(g, ABC, 5, 1e-7) for g in batch]))


def test_zero_matrix_and_defaults(monkeypatch):
    """bf16 on CUDA and on CPUs that multiply bf16 natively (measured faster there), fp32 on
    CPUs that emulate bf16 (measured slower there); see default_ns_dtype's docstring."""
    import mugrokfast.newton_schulz as ns

    assert torch.equal(zeropower_via_newtonschulz(torch.zeros(4, 6)), torch.zeros(4, 6))
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert ns.CPU_NATIVE_BF16 == native
    assert default_ns_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    assert default_ns_dtype("cuda") == torch.bfloat16
    assert zeropower_via_newtonschulz(torch.randn(3, 3)).dtype == default_ns_dtype("cpu")
    monkeypatch.setattr(ns, "CPU_NATIVE_BF16", False)  # an emulating CPU
    assert default_ns_dtype("cpu") == torch.float32
    assert zeropower_via_newtonschulz(torch.randn(3, 3)).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(G=torch.randn(4)), "G"),
        (dict(G=torch.randn(3, 3), steps=-1), "steps"),
        (dict(G=torch.randn(3, 3), coefficients=(1.0, 2.0)), "coefficients"),
        (dict(G=torch.randn(3, 3), eps=0.0), "eps"),
        (dict(G=torch.randn(3, 3, dtype=torch.complex64)), "complex"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zeropower_via_newtonschulz(**kwargs)
