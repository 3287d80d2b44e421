"""Grokfast gradient filters (Lee et al. 2024, arXiv 2405.20233).

Grokfast treats the sequence of gradients of each parameter as a signal and amplifies its slow
(low-frequency) component, which is what drives generalisation in grokking:

    EMA (Algorithm 2):  h_1 = g_1;  h_t = alpha * h_{t-1} + (1 - alpha) * g_t;  g_t <- g_t + lamb * h_t
    MA  (Algorithm 1):  g_t <- g_t + lamb * mean(g_{t-w+1}, ..., g_t)   (once w gradients are seen)

This is a LOW-pass filter: ``g + lamb * ema(g)``. (``g + lamb * (g - ema(g))`` would be a
high-pass filter, the opposite of Grokfast.)

Two layers live here:

* :func:`gradfilter_ema` / :func:`gradfilter_ma`: drop-in replacements for the reference
  functions of ``ironjr/grokfast`` (same arguments, same returned state objects, the same
  floating-point operations in the same order, so bit-identical numbers), without the
  reference's pitfalls: the state is a copy, never an alias of ``p.grad`` (so ``zero_grad
  (set_to_none=False)`` or gradient accumulation cannot corrupt it), and a parameter whose
  gradient first appears after the first call simply starts its own filter.
* :func:`grokfast_filter`: the tensor-list core used by the optimizers. All state lives in the
  per-parameter ``state`` dicts (``optimizer.state[p]``), so ``state_dict()`` round-trips. The MA
  filter keeps a ring buffer plus a running sum: O(1) work per step whatever the window.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._state import check_int, check_number

FILTERS = (None, "ema", "ma", "dual")


def check_grad(grad: Tensor, who: str = "Grokfast") -> None:
    """Raise a clear error for gradients the filters and optimizers cannot handle."""
    if grad.is_sparse:
        raise RuntimeError(
            f"{who} does not support sparse gradients (use nn.Embedding(sparse=False) or a "
            "sparse optimizer such as torch.optim.SparseAdam for that parameter)"
        )
    if grad.is_complex():
        raise RuntimeError(
            f"{who} does not support complex gradients (view complex parameters as real with "
            "torch.view_as_real before optimising them)"
        )


def params_with_grad(group: dict[str, Any], who: str) -> tuple[list[Tensor], list[Tensor]]:
    """The group's params that have a gradient, and those gradients (checked)."""
    params = [p for p in group["params"] if p.grad is not None]
    grads = [p.grad for p in params]
    for g in grads:
        check_grad(g, who)
    return params, grads


# --------------------------------------------------------------------------------------------
# Reference-compatible functional API
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def gradfilter_ema(
    model: nn.Module,
    grads: dict[str, Tensor] | None = None,
    alpha: float = 0.98,
    lamb: float = 2.0,
) -> dict[str, Tensor]:
    """Grokfast-EMA, Algorithm 2: ``h = alpha*h + (1-alpha)*g; g += lamb*h`` for every param.

    Call after ``loss.backward()`` and before ``optimizer.step()``; pass the returned dict back
    in on the next call (``grads = gradfilter_ema(model, grads, alpha, lamb)``). The state
    ``h`` starts at the first gradient. ``p.grad`` is updated in place.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    if grads is None:
        grads = {}
    for n, p in model.named_parameters():
        if not (p.requires_grad and p.grad is not None):
            continue
        g = p.grad.detach()
        check_grad(g, "gradfilter_ema")
        if n not in grads:
            grads[n] = g.clone()
        grads[n] = grads[n] * alpha + g * (1 - alpha)
        g.add_(grads[n] * lamb)
    return grads


@torch.no_grad()
def gradfilter_ma(
    model: nn.Module,
    grads: dict[str, deque] | None = None,
    window_size: int = 100,
    lamb: float = 5.0,
    filter_type: Literal["mean", "sum"] = "mean",
    warmup: bool = True,
    trigger: bool = False,
) -> dict[str, deque]:
    """Grokfast-MA, Algorithm 1: ``g += lamb * mean(last window_size gradients)``.

    With ``warmup`` (the default) nothing is amplified until the window is full; ``trigger``
    (the reference's ablation switch) then disables amplification. ``filter_type="sum"`` uses
    the window sum instead of the mean. The state is a dict of deques, as in the reference.
    This functional form re-sums the window each call (O(window), like the reference, so the
    numbers match it exactly); the optimizers use an O(1) ring buffer instead.
    """
    if not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"window_size must be a positive int (got {window_size!r})")
    if filter_type not in ("mean", "sum"):
        raise ValueError(f"filter_type must be 'mean' or 'sum' (got {filter_type!r})")
    if grads is None:
        grads = {}
    for n, p in model.named_parameters():
        if not (p.requires_grad and p.grad is not None):
            continue
        g = p.grad.detach()
        check_grad(g, "gradfilter_ma")
        if n not in grads:
            grads[n] = deque(maxlen=window_size)
        grads[n].append(g.clone())
        if not warmup or (len(grads[n]) == window_size and not trigger):
            avg = sum(grads[n])
            if filter_type == "mean":
                avg = avg / len(grads[n])
            g.add_(avg * lamb)
    return grads


# --------------------------------------------------------------------------------------------
# Optimizer core: tensor lists + per-parameter state dicts
# --------------------------------------------------------------------------------------------


def validate_filter_args(
    filter: str | None,
    alpha: float,
    lamb: float,
    window: int,
    ma_lamb: float,
    warmup_steps: int,
    history_dtype: Any,
    names: Sequence[str] = (
        "filter",
        "alpha",
        "lamb",
        "window_size",
        "ma_lamb",
        "warmup_steps",
        "history_dtype",
    ),
) -> None:
    """ValueError naming the offending argument (``names`` maps to the caller's spelling)."""
    if filter not in FILTERS:
        raise ValueError(f"{names[0]} must be one of {FILTERS} (got {filter!r})")
    check_number(names[1], alpha, 0.0, 1.0, open_high=True)
    check_number(names[2], lamb)
    check_int(names[3], window, 1)
    check_number(names[4], ma_lamb)
    check_int(names[5], warmup_steps, 0)
    if history_dtype is not None and not (
        isinstance(history_dtype, torch.dtype) and history_dtype.is_floating_point
    ):
        raise ValueError(
            f"{names[6]} must be None or a floating torch.dtype (got {history_dtype!r})"
        )


def ma_history_bytes(
    params: Sequence[Tensor], window: int, history_dtype: torch.dtype | None = None
) -> int:
    """Bytes the MA filter keeps for ``params``: a ring buffer of ``window`` gradients per
    parameter (in ``history_dtype``, default the parameter's) plus one running sum."""
    return sum(
        p.numel() * (window * (history_dtype or p.dtype).itemsize + p.dtype.itemsize)
        for p in params
    )


def device_memory_bytes(device: torch.device) -> int | None:
    """Physical memory of ``device`` (RAM for the CPU), or None when unknown."""
    try:
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
    except (ValueError, OSError, RuntimeError, AttributeError):
        pass
    return None


def check_ma_memory(groups: Sequence[dict[str, Any]], window_name: str) -> None:
    """Refuse, at construction, MA/dual filters whose history cannot fit in the memory of its
    device: ValueError naming ``window_name`` and the bytes it would need."""
    need: dict[torch.device, int] = {}
    for g in groups:
        if g.get("grokfast") in ("ma", "dual"):
            for p in g["params"]:
                n = ma_history_bytes([p], g["grokfast_window"], g["grokfast_history_dtype"])
                need[p.device] = need.get(p.device, 0) + n
    for device, n in need.items():
        have = device_memory_bytes(device)
        if have is not None and n > have:
            windows = sorted({g["grokfast_window"] for g in groups if g.get("grokfast")})
            raise ValueError(
                f"{window_name}={windows[-1]}: the MA filter would keep {n} bytes "
                f"({n / 2**30:.1f} GiB) of gradient history on {device}, which has {have} "
                f"bytes ({have / 2**30:.1f} GiB); use a smaller window, "
                "a bf16 history dtype, or the EMA filter"
            )


def _ema_update(grads: list[Tensor], states: list[dict]) -> list[Tensor]:
    for g, st in zip(grads, states, strict=True):
        if "grokfast_ema" not in st:
            st["grokfast_ema"] = g.detach().clone()  # h starts at the first gradient
    return [st["grokfast_ema"] for st in states]


def _ma_update(grads: list[Tensor], states: list[dict], window: int, history_dtype) -> list[int]:
    """Push each grad into its ring buffer, keep the running sum; return the fill counts."""
    for g, st in zip(grads, states, strict=True):
        if "grokfast_ma_buffer" not in st:
            st["grokfast_ma_buffer"] = torch.zeros(
                (window, *g.shape), dtype=history_dtype or g.dtype, device=g.device
            )
            st["grokfast_ma_sum"] = torch.zeros_like(g, memory_format=torch.contiguous_format)
            st["grokfast_ma_count"] = 0
            st["grokfast_ma_index"] = 0
        elif st["grokfast_ma_buffer"].shape[0] != window:
            raise ValueError(
                f"grokfast_window changed from {st['grokfast_ma_buffer'].shape[0]} to {window} "
                "after the MA filter started; the ring buffer cannot be resized"
            )
    slots = [st["grokfast_ma_buffer"][st["grokfast_ma_index"]] for st in states]
    sums = [st["grokfast_ma_sum"] for st in states]
    full = [i for i, st in enumerate(states) if st["grokfast_ma_count"] == window]
    if full:  # the slot about to be overwritten holds the oldest gradient: drop it from the sum
        torch._foreach_sub_([sums[i] for i in full], [slots[i] for i in full])
    torch._foreach_copy_(slots, grads)
    torch._foreach_add_(sums, slots)  # add the stored (possibly rounded) value, so it cancels
    counts = []
    for st in states:
        st["grokfast_ma_index"] = (st["grokfast_ma_index"] + 1) % window
        st["grokfast_ma_count"] = min(st["grokfast_ma_count"] + 1, window)
        if st["grokfast_ma_index"] == 0:
            # Once per window: recompute the sum from the buffer so add/sub rounding can't drift.
            torch.sum(
                st["grokfast_ma_buffer"],
                dim=0,
                dtype=st["grokfast_ma_sum"].dtype,
                out=st["grokfast_ma_sum"],
            )
        counts.append(st["grokfast_ma_count"])
    return counts


@torch.no_grad()
def grokfast_filter(
    grads: list[Tensor],
    states: list[dict],
    *,
    filter: str | None,
    alpha: float,
    lamb: float,
    window: int,
    ma_lamb: float,
    warmup_steps: int = 0,
    history_dtype: torch.dtype | None = None,
    inplace: bool = False,
) -> list[Tensor]:
    """Filter a list of raw gradients, updating each parameter's state dict in place.

    Returns the filtered gradients (new tensors where amplified; with ``inplace=True`` the
    amplified gradients are written into ``grads`` itself, saving a copy):

    * ``"ema"``:  ``g + lamb * h``
    * ``"ma"``:   ``g + ma_lamb * S / window`` once the window is full (ring buffer sum ``S``)
    * ``"dual"``: ``g + lamb * h + ma_lamb * S / window``, both filters fed the raw gradient
    * ``None``:   ``g``

    For the first ``warmup_steps`` calls (counted per parameter) the state is updated but the
    raw gradient is returned. MA history may be stored in a lower precision ``history_dtype``
    (the running sum stays in the gradient dtype).

    Cost: the filter is memory-bound, so it is written as few passes over the gradients as
    possible and without list-sized temporaries: ``h.lerp_(g, 1 - alpha)`` (one pass, i.e.
    ``h + (1-alpha)*(g - h)``) then ``g + lamb*h`` as one ``add(alpha=lamb)``; the MA term is
    one ``add(S, alpha=ma_lamb/window)``. These are the paper's formulas, but rounded
    differently from its ``alpha*h + (1-alpha)*g`` / ``mean*lamb`` (a few ulp in fp32; the tests
    compare with the paper's form at rtol = atol = 1e-6). The same code runs before and after a
    ``state_dict()`` round trip, so resumed runs stay bit-identical.
    """
    terms = grokfast_terms(
        grads,
        states,
        filter=filter,
        alpha=alpha,
        lamb=lamb,
        window=window,
        ma_lamb=ma_lamb,
        warmup_steps=warmup_steps,
        history_dtype=history_dtype,
    )
    return apply_terms(grads, terms, inplace=inplace)


# g' = g + sum(scale * term): the amplification of one gradient, not yet added
Terms = list[tuple[Tensor, float]]


@torch.no_grad()
def grokfast_terms(
    grads: list[Tensor],
    states: list[dict],
    *,
    filter: str | None,
    alpha: float,
    lamb: float,
    window: int,
    ma_lamb: float,
    warmup_steps: int = 0,
    history_dtype: torch.dtype | None = None,
) -> list[Terms]:
    """The state update of :func:`grokfast_filter` without the amplification: returns, per
    gradient, the ``(term, scale)`` pairs to add (``[]``: use the raw gradient).

    An optimizer that has to write a fresh tensor anyway (Muon's Nesterov update, AdamW's
    denominator) adds the terms there instead of materialising every filtered gradient at once;
    on CPU that saves the page faults of a parameter-sized allocation per step, which cost more
    than the filter's arithmetic. :func:`apply_terms` gives :func:`grokfast_filter`'s numbers.
    """
    terms: list[Terms] = [[] for _ in grads]
    if filter is None or not grads:
        return terms
    for st in states:
        st["grokfast_step"] = st.get("grokfast_step", 0) + 1
    live = [i for i, st in enumerate(states) if st["grokfast_step"] > warmup_steps]

    # Update the state from the raw gradients first (an in-place EMA amplification would
    # otherwise feed the MA buffer of a "dual" filter amplified gradients).
    if filter in ("ema", "dual"):
        emas = _ema_update(grads, states)
        torch._foreach_lerp_(emas, grads, 1 - alpha)  # h = alpha*h + (1-alpha)*g, one pass
        for i in live:
            terms[i].append((emas[i], lamb))
    if filter in ("ma", "dual"):
        counts = _ma_update(grads, states, window, history_dtype)
        for i in live:
            if counts[i] == window:
                terms[i].append((states[i]["grokfast_ma_sum"], ma_lamb / window))
    return terms


def add_terms(grad: Tensor, terms: Terms) -> Tensor:
    """``grad + sum(scale * term)`` as a new tensor (``grad`` itself when there are no terms)."""
    if not terms:
        return grad
    return add_terms_into(torch.empty_like(grad), grad, terms)


def add_terms_into(out: Tensor, grad: Tensor, terms: Terms) -> Tensor:
    """``out = grad + sum(scale * term)`` (``terms`` not empty), the sum in the terms' order."""
    (t0, s0), *rest = terms
    torch.add(grad, t0, alpha=s0, out=out)
    for t, s in rest:
        out.add_(t, alpha=s)
    return out


def apply_terms(grads: list[Tensor], terms: list[Terms], inplace: bool = False) -> list[Tensor]:
    """The filtered gradients: one foreach pass per term, no temporaries. New tensors where
    amplified, unless ``inplace`` (then written into ``grads`` itself)."""
    out = list(grads)
    # max over a list, not a generator with default=: torch.compile (dynamo) before 2.12
    # cannot trace the latter and breaks the graph
    for k in range(max([0] + [len(t) for t in terms])):
        by_scale: dict[float, list[int]] = {}
        for i, t in enumerate(terms):
            if len(t) > k:
                by_scale.setdefault(t[k][1], []).append(i)
        for scale, idx in by_scale.items():
            _add_into(out, grads, idx, [terms[i][k][0] for i in idx], scale, inplace)
    return out


def _add_into(
    out: list[Tensor],
    grads: list[Tensor],
    idx: list[int],
    terms: list[Tensor],
    scale: float,
    inplace: bool,
) -> None:
    """``out[i] = out[i] + scale * term`` for ``i`` in ``idx``, one pass: in place where
    ``out[i]`` is already a new tensor (or ``inplace``), else into a new tensor so that the
    caller's gradient ``grads[i]`` is left untouched."""
    mine = [k for k, i in enumerate(idx) if inplace or out[i] is not grads[i]]
    theirs = [k for k, i in enumerate(idx) if not (inplace or out[i] is not grads[i])]
    if mine:
        torch._foreach_add_([out[idx[k]] for k in mine], [terms[k] for k in mine], alpha=scale)
    if theirs:
        new = torch._foreach_add(
            [grads[idx[k]] for k in theirs], [terms[k] for k in theirs], alpha=scale
        )
        for k, t in zip(theirs, new, strict=True):
            out[idx[k]] = t


def filter_group(
    group: dict[str, Any], grads: list[Tensor], states: list[dict], inplace: bool = False
) -> list[Tensor]:
    """:func:`grokfast_filter` with the hyperparameters stored in a param group."""
    return apply_terms(grads, group_terms(group, grads, states), inplace=inplace)


def group_terms(group: dict[str, Any], grads: list[Tensor], states: list[dict]) -> list[Terms]:
    """:func:`grokfast_terms` with the hyperparameters stored in a param group."""
    return grokfast_terms(
        grads,
        states,
        filter=group["grokfast"],
        alpha=group["grokfast_alpha"],
        lamb=group["grokfast_lambda"],
        window=group["grokfast_window"],
        ma_lamb=group["grokfast_ma_lambda"],
        warmup_steps=group["grokfast_warmup_steps"],
        history_dtype=group["grokfast_history_dtype"],
    )


def set_grokfast_lambda(
    param_groups: list[dict[str, Any]], lamb: float, ma_lamb: float | None = None
) -> None:
    """Write ``grokfast_lambda`` into every group (also ``grokfast_ma_lambda`` for "ma" groups,
    whose only amplification it is, unless ``ma_lamb`` sets that of every group)."""
    if not lamb >= 0.0:
        raise ValueError(f"lamb must be >= 0 (got {lamb!r})")
    if ma_lamb is not None and not ma_lamb >= 0.0:
        raise ValueError(f"ma_lamb must be >= 0 (got {ma_lamb!r})")
    for group in param_groups:
        group["grokfast_lambda"] = float(lamb)
        if ma_lamb is not None:
            group["grokfast_ma_lambda"] = float(ma_lamb)
        elif group["grokfast"] == "ma":
            group["grokfast_ma_lambda"] = float(lamb)


# --------------------------------------------------------------------------------------------
# The EMA on Muon's orthogonalised update (grokfast_place="update")
# --------------------------------------------------------------------------------------------

PLACES = ("grad", "update")
TINY = 1e-30  # floor of the norms divided by (a zero update stays zero)


def validate_place(place: Any, filter: Any) -> None:
    """ValueError unless ``grokfast_place`` is known and fits the filter ``grokfast``."""
    if place not in PLACES:
        raise ValueError(f"grokfast_place must be one of {PLACES} (got {place!r})")
    if place == "update" and filter not in (None, "ema"):
        raise ValueError(
            f'grokfast_place="update" supports grokfast="ema" only (an EMA of the '
            f"orthogonalised update; the MA filter acts on gradients), got grokfast={filter!r}; "
            'use grokfast_place="grad" for "ma" and "dual"'
        )


@torch.no_grad()
def update_ema_(
    updates: list[Tensor], states: list[dict], *, alpha: float, lamb: float, warmup_steps: int
) -> list[Tensor]:
    """Grokfast's EMA on Muon's orthogonalised updates ``o`` (one per matrix, in the
    parameter's dtype and shape), with a relative weight::

        h <- alpha*h + (1-alpha)*o                        (h starts at the first o)
        a  = o + lamb * (|o| / |h|) * h                   (|.|: Frobenius norm)
        o <- a * |o| / |a|

    Newton-Schulz normalises whatever it is given, so an absolute ``g + lamb*h`` before it only
    matters through the ratio of the slow part to the gradient; here ``lamb`` is that ratio
    itself, and the step keeps Muon's size (the filter tilts the direction towards the slow
    component). The state ``h`` is ``state["grokfast_update_ema"]``; ``state["grokfast_step"]``
    counts the updates seen, and during the first ``warmup_steps`` of them (or at ``lamb=0``)
    ``h`` is updated but ``o`` returned as it is. Returns the updates to apply: new tensors
    where amplified, ``updates[i]`` itself elsewhere.
    """
    old = [i for i, st in enumerate(states) if "grokfast_update_ema" in st]
    for i, st in enumerate(states):
        if "grokfast_update_ema" not in st:
            st["grokfast_update_ema"] = updates[i].clone()
    if old:
        torch._foreach_lerp_(
            [states[i]["grokfast_update_ema"] for i in old], [updates[i] for i in old], 1 - alpha
        )
    for st in states:
        st["grokfast_step"] = st.get("grokfast_step", 0) + 1
    out = list(updates)
    live = [i for i, st in enumerate(states) if st["grokfast_step"] > warmup_steps]
    if lamb == 0 or not live:
        return out
    o = [updates[i] for i in live]
    h = [states[i]["grokfast_update_ema"] for i in live]
    norm_o, norm_h = torch._foreach_norm(o), torch._foreach_norm(h)
    for k, i in enumerate(live):
        a = o[k] + (lamb * norm_o[k] / norm_h[k].clamp(min=TINY)) * h[k]
        out[i] = a.mul_(norm_o[k] / a.norm().clamp(min=TINY))
    return out
