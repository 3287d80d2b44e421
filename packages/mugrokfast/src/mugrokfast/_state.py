"""Helpers shared by the optimizers: parameter lists, number checks, closures, and history
dtypes across ``load_state_dict``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

# Upper bound of learning rates, weight decays and amplifications: far above any sensible
# value, far below what overflows a float32 parameter update (lr=1e300 would fail mid-step).
MAX_SCALE = 1e6


def check_number(
    name: str,
    value: Any,
    low: float = 0.0,
    high: float = MAX_SCALE,
    *,
    open_low: bool = False,
    open_high: bool = False,
    tensor_ok: bool = False,
) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite real number in the range.

    Strings, bools, None and sequences are refused with ValueError too (``lr='0.01'``,
    ``betas=0.9`` as a beta), not the TypeError a bare comparison would raise. With
    ``tensor_ok`` a 1-element tensor is accepted (torch's "Tensor lr").
    """
    if isinstance(value, Tensor):
        if not tensor_ok:
            raise ValueError(f"{name} must be a number, not a tensor (got {value!r})")
        if value.numel() != 1:
            raise ValueError(
                f"{name}: Tensor lr must be 1-element (got shape {tuple(value.shape)})"
            )
        x = float(value.detach().float().cpu().reshape(()))
    elif isinstance(value, (str, bytes, bool)) or value is None:
        raise ValueError(f"{name} must be a real number (got {value!r})")
    else:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real number (got {value!r})") from None
    lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
    bad_low = x <= low if open_low else x < low
    bad_high = x >= high if open_high else x > high
    if not math.isfinite(x) or bad_low or bad_high:
        raise ValueError(f"{name} must be a finite number in {lo}{low}, {high}{hi} (got {value!r})")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (not a bool) in ``[low, high)``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low} (got {value!r})")
    if high is not None and value >= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}) (got {value!r})")


def group_params(param_group: dict[str, Any]) -> tuple[list[Tensor], list[str] | None]:
    """The tensors of a param group and their names (or None), read as torch reads them.

    A single tensor is one parameter; ``(name, tensor)`` pairs (``model.named_parameters()``)
    give names, as torch's optimizers take them since 2.6; a set is refused with torch's
    TypeError (its order changes between runs). The names end up in the group's
    ``param_names`` and in ``state_dict()``, as torch stores them.
    """
    params = param_group["params"]
    if isinstance(params, Tensor):
        params = [params]
    elif isinstance(params, set):
        raise TypeError(
            "optimizer parameters need to be organized in ordered collections, but the "
            "ordering of tensors in sets will change between runs. Please use a list instead."
        )
    else:
        params = list(params)
    names = [p[0] for p in params if isinstance(p, tuple)]
    tensors = [p[1] if isinstance(p, tuple) else p for p in params]
    if names and len(names) != len(tensors):
        raise ValueError(
            "all optimizer params should be with/without names. Some param names are missing"
        )
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {t!r}")
    if not names and "param_names" in param_group:
        names = list(param_group["param_names"])
    return tensors, (names or None)


def with_params(
    param_group: dict[str, Any], tensors: list[Tensor], names: list[str] | None
) -> dict[str, Any]:
    """A copy of ``param_group`` holding ``tensors`` (and ``param_names`` if named)."""
    group = {k: v for k, v in param_group.items() if k != "param_names"}
    group["params"] = list(tensors)
    if names is not None:
        group["param_names"] = list(names)
    return group


def cast_history(optimizer: Optimizer) -> None:
    """After ``Optimizer.load_state_dict`` (which casts every floating state tensor to its
    parameter's dtype): put each MA ring buffer back in its group's ``grokfast_history_dtype``
    (the parameter's dtype when None). bf16 -> wider -> bf16 is exact, so a bf16 history
    round-trips bit for bit."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if isinstance(st.get("grokfast_ma_buffer"), Tensor):
                dtype = group.get("grokfast_history_dtype") or p.dtype
                st["grokfast_ma_buffer"] = st["grokfast_ma_buffer"].to(dtype)


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """Evaluate a ``step(closure)`` closure with grad enabled (``step`` itself runs in no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
