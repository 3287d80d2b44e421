"""Helpers shared by the optimizers: closures, and history dtypes across ``load_state_dict``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

# State entries whose dtype is chosen by the user (``history_dtype``) rather than the param's.
KEEP_DTYPE_KEYS = ("grokfast_ma_buffer",)


def saved_state_dtypes(state_dict: dict[str, Any]) -> dict[tuple[Any, str], torch.dtype]:
    """Record the dtypes of the history buffers in a state dict, before torch casts them."""
    return {
        (pid, key): s[key].dtype
        for pid, s in state_dict["state"].items()
        for key in KEEP_DTYPE_KEYS
        if isinstance(s, dict) and isinstance(s.get(key), torch.Tensor)
    }


def restore_state_dtypes(
    optimizer: Optimizer, dtypes: dict[tuple[Any, str], torch.dtype], state_dict: dict[str, Any]
) -> None:
    """Undo ``Optimizer.load_state_dict``'s cast of every floating state tensor to the param dtype.

    The cast to a wider dtype and back is exact, so a bf16 history round-trips bit for bit.
    """
    if not dtypes:
        return
    saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = itertools.chain.from_iterable(g["params"] for g in optimizer.param_groups)
    id_map = dict(zip(saved_ids, params, strict=False))
    for (pid, key), dtype in dtypes.items():
        st = optimizer.state[id_map[pid]]
        st[key] = st[key].to(dtype)


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """Evaluate a ``step(closure)`` closure with grad enabled (``step`` itself runs in no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
