"""Muon: momentum SGD whose update is orthogonalised by Newton-Schulz (Keller Jordan, 2024).

Per matrix parameter ``W`` (shape A x B, fan-out x fan-in) with gradient ``G``:

    buf <- lerp(buf, G, 1 - mu)                      (= mu*buf + (1-mu)*G)
    U   <- lerp(G, buf, mu) if nesterov else buf
    O   <- NS(U)                                     (zeropower_via_newtonschulz)
    W   <- W * (1 - lr * wd)                         (decoupled weight decay, unadjusted lr)
    W   <- W - adjust(lr, A, B) * O

``adjust``: "original"/None ``sqrt(max(1, A/B))``; "match_rms_adamw" ``0.2*sqrt(max(A, B))``
(Moonlight; lets Muon reuse AdamW's lr and wd); "spectral_unclamped" ``sqrt(A/B)``. These are
the arithmetic and the arguments of ``torch.optim.Muon``; tensors with more than two dims (conv
kernels) are flattened to ``(out, -1)`` and the scale uses the flattened shape. Matrices of the
same shape are orthogonalised together in one batched call on accelerators (on CPU, where a
batched matmul is slower, one at a time; the numbers are the same).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _to_scalar

from ._blocked import blockable, blocks
from ._state import MAX_SCALE, check_int, check_number, group_params, run_closure, with_params
from .distributed import Dealer, check_distributed, check_not_sharded, resolve_group
from .filters import Terms, add_terms, add_terms_into, params_with_grad
from .newton_schulz import (
    DEFAULT_NS_COEFFICIENTS,
    DEFAULT_NS_EPS,
    DEFAULT_NS_STEPS,
    default_ns_dtype,
    newtonschulz_,
)

# Batch same-shaped matrices into one Newton-Schulz call on CPU too (tests use it to exercise
# the batched path without an accelerator; off by default because it is slower on CPU).
BATCH_ON_CPU = False

# update_filter(idx, updates) -> the updates to apply (see muon_step)
UpdateFilter = Callable[[list[int], list[Tensor]], list[Tensor]]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")
# group keys in validate_muon_args order
_ARG_KEYS = (
    "lr", "weight_decay", "momentum", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn",
    "ns_dtype",
)  # fmt: skip


_GROUP_KEYS = (*_ARG_KEYS, "nesterov")


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """Scale ``lr`` for a matrix of ``shape`` (flattened to ``(shape[0], prod(shape[1:]))``)."""
    A = shape[0]
    B = math.prod(shape[1:])
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(A, B))
    elif adjust_lr_fn == "spectral_unclamped":
        ratio = math.sqrt(A / B)
    else:
        raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS} (got {adjust_lr_fn!r})")
    return lr * ratio


def validate_muon_args(
    lr: Any,
    weight_decay: Any,
    momentum: Any,
    ns_coefficients: Any,
    eps: Any,
    ns_steps: Any,
    adjust_lr_fn: Any,
    ns_dtype: Any,
    names: tuple[str, ...] = _ARG_KEYS,
) -> None:
    """ValueError naming the offending argument (``names``: the caller's spelling).

    Numbers must be finite reals (``inf``, ``nan``, strings are refused), learning rates and
    weight decay at most :data:`~mugrokfast._state.MAX_SCALE`; ``lr`` may be a 1-element tensor.
    """
    check_number(names[0], lr, tensor_ok=True)
    check_number(names[1], weight_decay)
    check_number(names[2], momentum, 0.0, 1.0, open_high=True)
    try:
        coefficients = tuple(ns_coefficients)
    except TypeError:
        coefficients = ()
    if len(coefficients) != 3:
        raise ValueError(f"{names[3]} must be 3 floats (a, b, c) (got {ns_coefficients!r})")
    for c in coefficients:
        check_number(names[3], c, -MAX_SCALE)
    check_number(names[4], eps, 0.0, 1.0, open_low=True)
    check_int(names[5], ns_steps, 1, 100)
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"{names[6]} must be one of {ADJUST_LR_FNS} (got {adjust_lr_fn!r})")
    if ns_dtype is not None and not (
        isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point
    ):
        raise ValueError(f"{names[7]} must be None or a floating torch.dtype (got {ns_dtype!r})")


def muon_group_options(group: dict[str, Any], eps_key: str = "eps") -> dict[str, Any]:
    """The keyword arguments of :func:`muon_step` read from a param group."""
    keys = ("weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn")
    return {"lr": group["lr"], "eps": group[eps_key], "ns_dtype": group["ns_dtype"]} | {
        k: group[k] for k in keys
    }


@torch.no_grad()
def muon_step(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    adjust_lr_fn: str | None,
    ns_dtype: torch.dtype | None,
    terms: list[Terms] | None = None,
    process_group: Any = None,
    update_filter: UpdateFilter | None = None,
) -> None:
    """Functional Muon update (see the module docstring) on lists of tensors, in place.

    ``terms`` (from :func:`mugrokfast.filters.grokfast_terms`): per matrix, Grokfast terms to add
    to its gradient first. They are added into the tensor the Nesterov step writes anyway, one
    matrix at a time, so a filtered step allocates no more than an unfiltered one. Each update
    is formed right before its Newton-Schulz call (not all at once): on CPU a freed matrix-sized
    buffer is reused by the next matrix instead of faulting in fresh pages.

    ``process_group`` (a ``torch.distributed`` group, see :mod:`mugrokfast.distributed`): the
    Newton-Schulz work is split across its ranks and the results shared with ``all_gather``;
    every rank must call with the same parameters and gradients. ``None``: all work here.

    ``update_filter(idx, updates)``: maps the orthogonalised updates of the matrices ``idx``
    (contiguous, in their parameters' dtype and shape) to the updates applied instead, e.g.
    :func:`mugrokfast.filters.update_ema_`. Called with a whole batch where Newton-Schulz ran
    batched, else one matrix at a time; under ``process_group`` after the ``all_gather``, so
    every rank filters every matrix from the same inputs.
    """
    if not params:
        return
    lr = _to_scalar(lr)  # a 1-element tensor lr works as in torch.optim.Muon
    if terms is None:
        terms = [[] for _ in params]

    def direction(i: int) -> tuple[Tensor, bool]:
        return _direction(grads[i], momentum_buffers[i], terms[i], momentum, nesterov)

    batches = _shape_batches(params, grads)

    def orthogonalise(idx: list[int], flat: tuple[int, int], dtype: torch.dtype):
        """Yield chunks ``[(i, NS(update_i)), ...]`` for ``idx``: the batch at once, or one
        matrix at a time on CPU."""
        if not idx:
            return
        if len(idx) == 1 or (grads[idx[0]].device.type == "cpu" and not BATCH_ON_CPU):
            for i in idx:
                X = _ns_input(
                    grads[i], momentum_buffers[i], terms[i], momentum, nesterov, flat, dtype
                )
                yield [(i, newtonschulz_(X, ns_steps, ns_coefficients, eps))]
            return
        # stack straight into the compute dtype: one copy of the updates, not two
        X = torch.empty((len(idx), *flat), dtype=dtype, device=grads[idx[0]].device)
        torch.stack([direction(i)[0].reshape(flat) for i in idx], out=X)
        yield list(zip(idx, newtonschulz_(X, ns_steps, ns_coefficients, eps), strict=True))

    def apply(chunk: list[tuple[int, Tensor]]) -> None:
        updates = [ortho.view(params[i].shape) for i, ortho in chunk]
        if update_filter is not None:
            idx = [i for i, _ in chunk]
            updates = [_contiguous(u, params[i].dtype) for i, u in zip(idx, updates, strict=True)]
            updates = update_filter(idx, updates)
        for (i, _), update in zip(chunk, updates, strict=True):
            p = params[i]
            p.mul_(1 - lr * weight_decay)
            p.add_(update, alpha=-adjust_lr(lr, adjust_lr_fn, tuple(p.shape)))

    dealer = None if process_group is None else Dealer(process_group)
    for (flat, _, device), idx in batches.items():
        dtype = default_ns_dtype(device) if ns_dtype is None else ns_dtype
        if dealer is None:
            results = orthogonalise(idx, flat, dtype)
        else:  # NS on this rank's share; momentum of the rest still advances here
            owners = dealer.owners(len(idx))
            mine = [i for i, r in zip(idx, owners, strict=True) if r == dealer.rank]
            for i, r in zip(idx, owners, strict=True):
                if r != dealer.rank:
                    direction(i)
            done = dict(pair for chunk in orthogonalise(mine, flat, dtype) for pair in chunk)
            empty = torch.zeros(flat, dtype=dtype, device=device)
            results = ([pair] for pair in dealer.gather(idx, owners, done, empty))
        for chunk in results:
            apply(chunk)


def _contiguous(u: Tensor, dtype: torch.dtype) -> Tensor:
    """``u`` in ``dtype`` and contiguous (a copy only where needed). NS hands tall matrices back
    transposed and an all_gather may not, and a norm's rounding follows the memory layout: a
    filter must see the same bits on every rank. (``u.to(u.dtype, memory_format=...)``
    returns ``u`` itself whatever its layout, hence ``contiguous()`` there.)"""
    if u.dtype == dtype:
        return u.contiguous()
    return u.to(dtype, memory_format=torch.contiguous_format)


def _shape_batches(params: list[Tensor], grads: list[Tensor]) -> dict[tuple, list[int]]:
    """Indices of the non-empty matrices per ``((rows, cols), dtype, device)``.

    Same-shaped matrices share one NS call (one bmm per product) per batch, which saves kernel
    launches on accelerators: on an H200 the whole step costs 0.25-0.29x torch's Muon + AdamW
    pair this way, and about 1x with one call per matrix
    (benchmarks/results/optimizer_step_cuda.md). Not on CPU: there a batched bf16/fp32 bmm is
    ~10% slower than the same products one matrix at a time (one thread, cognate-25m shapes),
    and the numbers are the same either way.
    """
    batches: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if p.ndim < 2:
            raise ValueError(
                f"Muon needs parameters with >= 2 dims; got shape {tuple(p.shape)} "
                "(send vectors such as biases and norm gains to AdamW)"
            )
        if p.numel() == 0:  # nothing to update (torch's Muon divides by zero here)
            continue
        flat = (p.shape[0], math.prod(p.shape[1:]))
        batches[(flat, grads[i].dtype, grads[i].device)].append(i)
    return batches


def _direction(
    grad: Tensor, buf: Tensor, terms: Terms, momentum: float, nesterov: bool
) -> tuple[Tensor, bool]:
    """Advance the momentum; return the matrix to orthogonalise and whether it is a fresh
    tensor we may overwrite."""
    g = add_terms(grad, terms)  # g + sum(scale * term): a fresh tensor if any terms
    buf.lerp_(g, 1 - momentum)
    if not nesterov:
        return buf, False
    # overwrite g where it is ours, never the caller's gradient
    return (g.lerp_(buf, momentum) if terms else g.lerp(buf, momentum)), True


def _ns_input(
    grad: Tensor,
    buf: Tensor,
    terms: Terms,
    momentum: float,
    nesterov: bool,
    flat: tuple[int, int],
    dtype: torch.dtype,
) -> Tensor:
    """:func:`_direction` as a ``flat`` matrix in the NS compute dtype that NS may overwrite
    (it normalises its input in place); on CPU written block by block (:func:`_nesterov_into`)."""
    if nesterov and blockable([grad, buf, *(t for t, _ in terms)]):
        X = torch.empty(flat, dtype=dtype)
        _nesterov_into(X, grad, buf, terms, momentum)
        return X
    U, fresh = _direction(grad, buf, terms, momentum, nesterov)
    return U.reshape(flat).to(dtype=dtype, copy=not fresh)  # a copy unless U is ours, in dtype


def _nesterov_into(X: Tensor, grad: Tensor, buf: Tensor, terms: Terms, momentum: float) -> None:
    """Muon's momentum and Nesterov step on CPU, written into ``X`` (the compute dtype), one
    cache-sized block at a time (:mod:`mugrokfast._blocked`): ``g' = g + sum(scale * term)``,
    ``buf.lerp_(g', 1 - momentum)``, ``X = lerp(g', buf, momentum)``. The operations of
    :func:`_direction` in the same order, so the same numbers, but ``g'``,
    ``buf`` and the update stay in cache between them instead of three passes over memory."""
    same = X.dtype == grad.dtype  # fp32 NS: the update goes straight into X
    tensors = [X, grad, buf, *(t for t, _ in terms)]
    for xb, gb, bb, *tb in blocks(tensors, scratch=None if same else grad.dtype):
        u = xb if same else tb.pop()
        if terms:
            add_terms_into(u, gb, [(t, s) for t, (_, s) in zip(tb, terms, strict=True)])
            bb.lerp_(u, 1 - momentum)
            u.lerp_(bb, momentum)
        else:
            bb.lerp_(gb, 1 - momentum)
            torch.lerp(gb, bb, momentum, out=u)
        if u is not xb:
            xb.copy_(u)


class Muon(Optimizer):
    """Muon for matrix parameters; the arguments and the numbers of ``torch.optim.Muon``.

    Differences from torch's: parameters with more than two dims are accepted (flattened to
    ``(out, -1)``); zero-size matrices are skipped (torch's divides by zero); same-shaped
    matrices share one batched Newton-Schulz call (off CPU); ``ns_dtype`` picks the NS compute
    dtype (``None``: :func:`~mugrokfast.newton_schulz.default_ns_dtype`, bf16 on CUDA and on
    CPUs with native bf16 matmul, where the numbers equal torch's bit for bit; fp32 on other
    CPUs); ``distributed=True`` (or a process group) splits the Newton-Schulz work across
    data-parallel ranks (:mod:`mugrokfast.distributed`). Like torch's there is no
    ``maximize``, and complex or sparse gradients raise.
    ``params`` may be plain or named (``model.named_parameters()``). Use it for hidden matrices
    only; embeddings, the output head, gains and biases belong to AdamW (see
    :func:`mugrokfast.param_groups` and :class:`mugrokfast.MuGrokfast`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
        eps: float = DEFAULT_NS_EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
        ns_dtype: torch.dtype | None = None,
        *,
        distributed: bool | Any = False,
    ) -> None:
        validate_muon_args(
            lr, weight_decay, momentum, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype
        )
        check_distributed(distributed)
        self.distributed = distributed
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),  # validated above
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # plain or named parameters, maybe a generator: read them once, as torch does
        params, names = group_params(param_group)
        param_group = with_params(param_group, params, names)
        g = self.defaults | param_group  # validate before torch stores the group
        validate_muon_args(*(g[k] for k in _ARG_KEYS))
        for p in params:
            if p.ndim < 2:
                raise ValueError(
                    f"params: Muon needs parameters with >= 2 dims; got shape {tuple(p.shape)} "
                    "(send vectors such as biases and norm gains to AdamW)"
                )
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # also runs in load_state_dict: fill options a torch.optim.Muon state dict lacks
        # (only ours: torch's __setstate__ adds "differentiable" to the defaults)
        super().__setstate__(state)
        self.__dict__.setdefault("distributed", False)  # not in state dicts: a process setting
        for group in self.param_groups:
            for key in _GROUP_KEYS:
                group.setdefault(key, self.defaults[key])

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Perform one Muon step; ``closure`` re-evaluates the loss (optional)."""
        loss = run_closure(closure)
        process_group = resolve_group(self.distributed)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Muon")
            check_not_sharded(params)
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            opts = muon_group_options(group)
            muon_step(params, grads, bufs, process_group=process_group, **opts)
        return loss
