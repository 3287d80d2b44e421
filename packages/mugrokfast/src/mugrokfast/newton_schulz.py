"""Quintic Newton-Schulz orthogonalisation (the "zeroth power" of a matrix) used by Muon.

For ``G = U S V^T`` we want ``U V^T``: the update direction with every singular value set to one.
Newton-Schulz gets there with matrix products only. Each step applies the odd polynomial

    X <- a X + b (X X^T) X + c (X X^T)^2 X

which maps every singular value ``s`` of ``X`` to ``f(s) = a s + b s^3 + c s^5`` and leaves the
singular vectors alone. The coefficients (3.4445, -4.7750, 2.0315) maximise the slope at zero, so
five steps push every not-too-small singular value into a band around one (roughly 0.7..1.2, see
the tests) instead of converging exactly; in practice that does not hurt training and it is cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
DEFAULT_NS_STEPS = 5
DEFAULT_NS_EPS = 1e-7


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except Exception:  # an older torch without the probes: assume emulated bf16
        return False


# probed once at import: default_ns_dtype runs inside step(), also under torch.compile
CPU_NATIVE_BF16 = cpu_has_native_bf16()


def default_ns_dtype(device: torch.device | str) -> torch.dtype:
    """The compute dtype ``dtype=None`` picks: bf16 where matmuls run natively in bf16, else fp32.

    * CUDA (and other accelerators): bf16. Tensor cores run bf16 GEMMs several times faster
      than fp32, and the quintic only needs ~2-3 significant digits (it does not converge to 1
      exactly anyway): what Keller Jordan's Muon and ``torch.optim.Muon`` use.
    * CPU with AVX512-BF16 or AMX: bf16, measured 2.5-5x faster than fp32 for the
      Newton-Schulz products of 320- to 768-wide models (``scripts/bench_ns_dtype.py``) and the
      same numbers as ``torch.optim.Muon`` bit for bit.
    * Other CPUs: fp32, because bf16 GEMM is emulated there and slower than fp32.

    bf16 NS is ~1000x less accurate than fp32 (relative error vs float64 ~1e-2 instead of
    ~1e-5); training does not notice, but pass ``ns_dtype=torch.float32`` for the accurate one.
    """
    if torch.device(device).type != "cpu" or CPU_NATIVE_BF16:
        return torch.bfloat16
    return torch.float32


def zeropower_via_newtonschulz(
    G: Tensor,
    steps: int = DEFAULT_NS_STEPS,
    coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
    eps: float = DEFAULT_NS_EPS,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalise ``G`` over its last two dims; leading dims are a batch.

    Steps: cast to ``dtype`` (``None``: :func:`default_ns_dtype`), work on the wide side
    (transpose when rows > cols so the Gram matrix ``X X^T`` is the small one), divide each
    matrix by its Frobenius norm (clamped below by ``eps``; the Frobenius norm bounds the spectral
    norm, so all singular values start in [0, 1]), then ``steps`` quintic iterations. Same-shaped
    matrices stacked along a leading dim go through one batched GEMM per product.

    The arithmetic is the one of ``torch.optim.Muon`` (``addmm``/``baddbmm`` with the same
    ``beta``/``alpha``), so with ``dtype=torch.bfloat16`` the result is bit-identical to torch's
    for 2-D inputs. Returns a tensor of ``G``'s shape in the compute dtype.
    """
    if G.ndim < 2:
        raise ValueError(f"G must have at least 2 dims (got shape {tuple(G.shape)})")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int (got {steps!r})")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be 3 floats (a, b, c) (got {coefficients!r})")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (got {eps!r})")
    if G.is_complex():
        raise ValueError("G must be real; complex matrices are not supported")
    dtype = default_ns_dtype(G.device) if dtype is None else dtype
    shape = G.shape
    X = G.reshape(-1, shape[-2], shape[-1]) if G.ndim > 3 else G
    return newtonschulz_(X.to(dtype=dtype, copy=True), steps, coefficients, eps).reshape(shape)


def newtonschulz_(
    X: Tensor, steps: int, coefficients: tuple[float, float, float], eps: float
) -> Tensor:
    """The iteration of :func:`zeropower_via_newtonschulz` on ``X`` (2-D, or 3-D = a batch),
    already in the compute dtype and owned by the caller: it is normalised in place (this saves
    Muon a copy: it stacks its matrices straight into the compute dtype). No validation."""
    a, b, c = coefficients
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    if X.ndim == 2:
        X.div_(X.norm().clamp(min=eps))
        for _ in range(steps):
            A = X @ X.mT
            B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
            X = torch.addmm(X, B, X, beta=a)  # a X + B X
    else:
        X.div_(X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))
        for _ in range(steps):
            A = X @ X.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    return X.mT if tall else X
