"""``Grokfast(base_optimizer)``: the Grokfast filter in front of any torch optimizer.

``step()`` replaces each ``p.grad`` by its filtered value (see :mod:`mugrokfast.filters`) and
then calls ``base_optimizer.step()``. The wrapper is a ``torch.optim.Optimizer`` that shares the
base's ``param_groups`` list (the same dict objects), so LR schedulers built on either object
move the same learning rates, and ``GradScaler.unscale_(wrapper)`` unscales the gradients the
filter then reads. Filter state lives in the wrapper's own ``state[p]`` (separate from the
base's, whose optimizers may initialise on ``len(state) == 0``); ``state_dict()`` holds both.
Filter hyperparameters are stored per group (``grokfast_alpha`` ...), so groups may differ.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import torch
from torch.optim import Optimizer

from ._state import run_closure
from .filters import (
    filter_group,
    params_with_grad,
    set_grokfast_lambda,
    validate_filter_args,
)

_NAMES = ("filter", "alpha", "lamb", "window_size", "ma_lamb", "warmup_steps", "history_dtype")
_KEYS = (
    "grokfast",
    "grokfast_alpha",
    "grokfast_lambda",
    "grokfast_window",
    "grokfast_ma_lambda",
    "grokfast_warmup_steps",
    "grokfast_history_dtype",
)


class Grokfast(Optimizer):
    """Wrap ``base_optimizer`` with a Grokfast gradient filter.

    Args:
        base_optimizer: any ``torch.optim.Optimizer`` (AdamW, SGD, Muon, ...).
        filter: "ema" | "ma" | "dual" | None (None: pass-through).
        alpha, lamb: EMA filter ``g + lamb * ema(g)`` (reference defaults 0.98, 2.0).
        window_size, ma_lamb: MA filter ``g + ma_lamb * mean(last window_size g)``, applied once
            the window is full (reference defaults 100, 5.0; with ``filter="ma"`` the
            amplification is ``ma_lamb``).
        warmup_steps: steps during which the filter state is updated but not applied.
        history_dtype: dtype of the MA ring buffer (default: the gradient's), e.g. bf16 to halve
            its ``window_size x numel`` memory.
    """

    def __init__(
        self,
        base_optimizer: Optimizer,
        filter: str | None = "ema",
        alpha: float = 0.98,
        lamb: float = 2.0,
        window_size: int = 100,
        ma_lamb: float = 5.0,
        warmup_steps: int = 0,
        *,
        history_dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise ValueError(
                f"base_optimizer must be a torch.optim.Optimizer (got {type(base_optimizer)})"
            )
        if isinstance(base_optimizer, Grokfast):
            raise ValueError("base_optimizer is already wrapped in Grokfast")
        args = (filter, alpha, lamb, window_size, ma_lamb, warmup_steps, history_dtype)
        validate_filter_args(*args, names=_NAMES)
        self._filter_defaults = dict(zip(_KEYS, args, strict=True))
        # Optimizer.__init__ sets up hooks and bookkeeping; then share the base's groups.
        params = [p for g in base_optimizer.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults
        for group in self.param_groups:
            self._fill_group(group)

    def _fill_group(self, group: dict[str, Any]) -> None:
        filled = self._filter_defaults | group
        validate_filter_args(*(filled[k] for k in _KEYS), names=_KEYS)
        group.update(filled)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # called from Optimizer.__init__
            super().add_param_group(param_group)
            return
        self._fill_group(param_group)  # validate (and fill) before the base stores it
        self.base_optimizer.add_param_group(param_group)

    def set_grokfast_lambda(self, lamb: float, ma_lamb: float | None = None) -> None:
        """Same contract as :meth:`mugrokfast.MuGrokfast.set_grokfast_lambda`."""
        set_grokfast_lambda(self.param_groups, lamb, ma_lamb)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Filter every ``p.grad`` in place, then step the base optimizer.

        A ``closure`` is evaluated once, before filtering; optimizers that call their closure
        several times per step (LBFGS) are not supported.
        """
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Grokfast")
            if not params or group["grokfast"] is None:
                continue
            # in place: p.grad <- p.grad + lamb*h directly, no new tensors and no copy back
            filter_group(group, grads, [self.state[p] for p in params], inplace=True)
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """``{"state": filter state, "param_groups": [...], "base_state": base's state}``."""
        base = self.base_optimizer.state_dict()
        own = super().state_dict()
        return {"state": own["state"], "param_groups": base["param_groups"],
                "base_state": base["state"]}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "base_state" not in state_dict:
            raise ValueError("state_dict: not a Grokfast state dict (no 'base_state' entry)")
        groups = state_dict["param_groups"]
        self.base_optimizer.load_state_dict({"state": state_dict["base_state"],
                                             "param_groups": groups})  # fmt: skip
        self.param_groups = self.base_optimizer.param_groups
        # Filter state: map saved param ids onto our params in group order, as torch does.
        saved_ids = itertools.chain.from_iterable(g["params"] for g in groups)
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        id_map = dict(zip(saved_ids, params, strict=False))
        self.state = defaultdict(dict)
        for pid, st in state_dict["state"].items():
            p = id_map[pid]
            self.state[p] = {
                k: v.to(device=p.device) if isinstance(v, torch.Tensor) else v
                for k, v in st.items()
            }
