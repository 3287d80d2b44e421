"""``Grokfast(base_optimizer)``: the Grokfast filter in front of any torch optimizer.

``step()`` filters each gradient (see :mod:`mugrokfast.filters`), lets the base optimizer step
on the filtered gradients, and puts the raw gradients back: after ``step()`` ``p.grad`` is the
gradient backward produced, as with any torch optimizer (the reference's ``gradfilter_ema``
leaves the amplified gradient in ``p.grad`` instead).

The wrapper is a ``torch.optim.Optimizer`` citizen. It shares the base's ``param_groups`` list
(the same dict objects) and ``defaults``, so LR schedulers built on either object move the same
learning rates, and ``GradScaler.unscale_(wrapper)`` unscales the gradients the filter then
reads. Filter state lives in the wrapper's own ``state[p]`` (keys ``grokfast_*``; the base's
state stays in the base, whose optimizers may initialise on ``len(state) == 0``).
``state_dict()`` is torch's format with both merged per parameter, so a plain base-optimizer
checkpoint loads into the wrapper (the filter starts fresh) and a wrapper checkpoint into the
base (which ignores the ``grokfast_*`` entries). ``load_state_dict``, hooks, pickling and
``deepcopy`` are torch's; step hooks fire once per ``step()`` (the base's own instance hooks
run too, the global ones once).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import _use_grad_for_differentiable

from ._state import cast_history, run_closure
from .filters import (
    check_ma_memory,
    filter_group,
    params_with_grad,
    set_grokfast_lambda,
    validate_filter_args,
)
from .mugrokfast import MuGrokfast

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
_PREFIX = "grokfast_"  # every filter state entry starts with it
# the code object of the wrapper torch puts around its optimizers' step()
_USE_GRAD_CODE = _use_grad_for_differentiable(lambda *args, **kwargs: None).__code__


class Grokfast(Optimizer):
    """Wrap ``base_optimizer`` with a Grokfast gradient filter.

    Args:
        base_optimizer: any ``torch.optim.Optimizer`` (AdamW, SGD, Muon, ...), not a
            ``MuGrokfast`` (it has its own filter: ``grokfast=...``).
        filter: "ema" | "ma" | "dual" | None (None: pass-through).
        alpha, lamb: EMA filter ``g + lamb * ema(g)`` (reference defaults 0.98, 2.0).
        window_size, ma_lamb: MA filter ``g + ma_lamb * mean(last window_size g)``, applied once
            the window is full (reference defaults 100, 5.0; with ``filter="ma"`` the
            amplification is ``ma_lamb``). Its memory: ``window_size x numel`` history entries
            per parameter (:func:`mugrokfast.filters.ma_history_bytes`); a window that cannot
            fit in the device's memory is refused here, not at the first step.
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
        if isinstance(base_optimizer, MuGrokfast):
            raise ValueError("base_optimizer: MuGrokfast has its own filter (grokfast=...)")
        args = (filter, alpha, lamb, window_size, ma_lamb, warmup_steps, history_dtype)
        validate_filter_args(*args, names=_NAMES)
        self._filter_defaults = dict(zip(_KEYS, args, strict=True))
        # Optimizer.__init__ sets up hooks and bookkeeping; then share the base's groups.
        params = [p for g in base_optimizer.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.base_optimizer = base_optimizer
        self._link()
        check_ma_memory(self.param_groups, "window_size")

    def _link(self) -> None:
        """Share the base's groups and defaults; fill the filter options into its groups."""
        self.param_groups = self.base_optimizer.param_groups
        self.defaults = self.base_optimizer.defaults
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
        try:
            check_ma_memory(self.param_groups, "window_size")
        except ValueError:
            self.param_groups.pop()
            raise

    def set_grokfast_lambda(self, lamb: float, ma_lamb: float | None = None) -> None:
        """Same contract as :meth:`mugrokfast.MuGrokfast.set_grokfast_lambda`."""
        set_grokfast_lambda(self.param_groups, lamb, ma_lamb)

    # -------------------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Filter the gradients, step the base optimizer on them, restore the raw ``p.grad``.

        A ``closure`` is evaluated once, before filtering; optimizers that call their closure
        several times per step (LBFGS) are not supported.
        """
        loss = run_closure(closure)
        compiling = torch.compiler.is_compiling()
        swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Grokfast")
            if not params or group["grokfast"] is None:
                continue
            states = [self.state[p] for p in params]
            if compiling:
                # torch.compile cannot step a torch optimizer after p.grad was reassigned
                # (a graph break): amplify in place and copy the raw gradients back after
                raw = [g.clone() for g in grads]
                filter_group(group, grads, states, inplace=True)
                swapped += [(g, r) for g, r in zip(grads, raw, strict=True)]
                continue
            filtered = filter_group(group, grads, states)  # new tensors where amplified
            for p, g, f in zip(params, grads, filtered, strict=True):
                if f is not g:
                    swapped.append((p, g))
                    p.grad = f
        try:
            self._step_base()
        finally:
            for a, b in swapped:
                if compiling:
                    a.copy_(b)
                else:
                    a.grad = b
        return loss

    def _step_base(self) -> None:
        """``base_optimizer.step()`` with the base's own step hooks, but not the global ones:
        those already ran for this ``step()``."""
        base = self.base_optimizer
        hooked = type(base).step
        unhooked = getattr(hooked, "__wrapped__", None)
        if unhooked is None or not getattr(hooked, "hooked", False):
            base.step()
            return
        if getattr(unhooked, "__code__", None) is _USE_GRAD_CODE and not base.defaults.get(
            "differentiable", False
        ):
            # torch's grad-mode wrapper: we already run in no_grad, and its explicit graph
            # breaks would split a torch.compile'd step() in two
            unhooked = unhooked.__wrapped__
        args: tuple = (base,)
        kwargs: dict = {}
        for hook in list(base._optimizer_step_pre_hooks.values()):
            result = hook(base, args, kwargs)
            if result is not None:
                args, kwargs = result
        unhooked(*args, **kwargs)
        base._optimizer_step_code()
        for hook in list(base._optimizer_step_post_hooks.values()):
            hook(base, args, kwargs)
        if "step" in vars(base):  # an LR scheduler built on the base tracks its step calls
            base._opt_called = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict()`` (hooks included) with the base's state and the filter's
        merged per parameter: ``{"state": {i: {**base, **grokfast_*}}, "param_groups": ...}``."""
        own = self.state
        merged: defaultdict = defaultdict(dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = {**self.base_optimizer.state.get(p, {}), **own.get(p, {})}
                if st:
                    merged[p] = st
        self.state = merged
        try:
            return super().state_dict()
        finally:
            self.state = own

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (hooks, state cast to each parameter's dtype and device).

        Takes a wrapper checkpoint, a plain checkpoint of the base optimizer (the filter then
        starts fresh) or one written by mugrokfast 0.1 (``base_state`` kept apart).
        """
        if "base_state" in state_dict:
            state = {i: dict(st) for i, st in state_dict["base_state"].items()}
            for i, st in state_dict["state"].items():
                state.setdefault(i, {}).update(st)
            state_dict = {"state": state, "param_groups": state_dict["param_groups"]}
        super().load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        return super().__getstate__() | {
            "base_optimizer": self.base_optimizer,
            "_filter_defaults": self._filter_defaults,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "base_optimizer" in state:  # unpickling, deepcopy
            super().__setstate__(state)
            self._link()
            return
        # from Optimizer.load_state_dict: params already cast; split base and filter state
        loaded, groups = state["state"], state["param_groups"]
        base_sd: dict[str, Any] = {"state": {}, "param_groups": []}
        filt: defaultdict = defaultdict(dict)
        index = 0
        for group in groups:
            ids = list(range(index, index + len(group["params"])))
            index += len(ids)
            base_sd["param_groups"].append({**group, "params": ids})
            for i, p in zip(ids, group["params"], strict=True):
                st = loaded.get(p, {})
                base_part = {k: v for k, v in st.items() if not k.startswith(_PREFIX)}
                if base_part:
                    base_sd["state"][i] = base_part
                filt_part = {k: v for k, v in st.items() if k.startswith(_PREFIX)}
                if filt_part:
                    filt[p] = filt_part
        self.base_optimizer.load_state_dict(base_sd)
        self.state = filt
        self._link()
        cast_history(self)
