"""MuGrokfast: Grokfast gradient filter -> Muon (matrices) | AdamW (everything else), one optimizer.

Per step and per param group:

1. Grokfast on the raw gradient (``grokfast`` in None | "ema" | "ma" | "dual")::

       ema:  g' = g + lambda * h,   h = alpha*h + (1-alpha)*g   (h starts at the first g)
       ma:   g' = g + ma_lambda * mean(last `window` g)         (once the window is full)
       dual: g' = g + lambda * h + ma_lambda * mean(...)        (both from the raw g)

   During the first ``grokfast_warmup_steps`` steps the filter state is updated but g' = g.
   With ``grokfast_place="update"`` the Muon groups skip this step and filter in 3. instead.
2. Groups with ``use_muon=True``: Muon on g' (momentum, Newton-Schulz, decoupled wd), exactly
   :func:`~mugrokfast.muon.muon_step`; other groups: ``torch.optim.AdamW``'s update (same
   numbers). Off the CPU that is torch's own functional AdamW with the group's ``foreach``; CPU
   tensors take a loop with AdamW's exact operations, run in cache-sized blocks
   (:mod:`mugrokfast._blocked`), when filtered or at ``foreach=None`` (measured faster than
   torch's foreach AdamW there); ``foreach=True``/``False`` pick torch's paths for the rest.
3. ``grokfast_place="update"`` (``grokfast="ema"`` only), Muon groups: the EMA acts on the
   orthogonalised update ``o`` instead, with ``grokfast_lambda`` as a relative weight and the
   step size kept (:func:`~mugrokfast.filters.update_ema_`)::

       h <- alpha*h + (1-alpha)*o   (h starts at the first o);   a = o + lambda*(|o|/|h|)*h
       o <- a * |o| / |a|

   AdamW groups keep the gradient filter of 1.

g' is never materialised for the whole model at once: :func:`~mugrokfast.filters.grokfast_terms`
updates the filter state, and the ``lambda * h`` terms are added where the update writes a fresh
tensor anyway (on CPU a parameter-sized allocation per step cost more than the filter itself;
``benchmarks/results/ema_filter_cost.json``).

With ``grokfast=None`` the result equals ``torch.optim.Muon`` on the Muon groups and
``torch.optim.AdamW`` on the others. ``p.grad`` is never modified.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adamw import adamw as _adamw
from torch.optim.optimizer import _get_value, _to_scalar

from ._blocked import blocks
from ._state import cast_history, check_int, check_number, group_params, run_closure, with_params
from .distributed import check_distributed, check_not_sharded, resolve_group
from .filters import (
    Terms,
    add_terms_into,
    apply_terms,
    check_ma_memory,
    group_terms,
    params_with_grad,
    set_grokfast_lambda,
    update_ema_,
    validate_filter_args,
    validate_place,
)
from .muon import muon_group_options, muon_step, validate_muon_args
from .newton_schulz import DEFAULT_NS_COEFFICIENTS, DEFAULT_NS_EPS

_FILTER_NAMES = (
    "grokfast",
    "grokfast_alpha",
    "grokfast_lambda",
    "grokfast_window",
    "grokfast_ma_lambda",
    "grokfast_warmup_steps",
    "grokfast_history_dtype",
    "grokfast_place",
)
_MUON_NAMES = (
    "lr",
    "weight_decay",
    "momentum",
    "ns_coefficients",
    "ns_eps",
    "ns_steps",
    "adjust_lr_fn",
    "ns_dtype",
)


_DEFAULT_KEYS = (
    "lr", "betas", "eps", "weight_decay", "muon_lr", "momentum", "nesterov", "ns_steps",
    "adjust_lr_fn", "ns_dtype", "ns_coefficients", "ns_eps", *_FILTER_NAMES, "foreach",
)  # fmt: skip


def _scalar_dtype() -> torch.dtype:
    # what torch.optim.AdamW uses for state["step"]
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class MuGrokfast(Optimizer):
    """Grokfast + Muon + AdamW in one ``torch.optim.Optimizer``.

    Args:
        params: tensors, ``(name, tensor)`` pairs (``model.named_parameters()``) or param-group
            dicts. A group's ``use_muon`` says which update it gets; a group without
            ``use_muon`` is split, in place, into a Muon group (params with ``ndim >= 2``) and
            an AdamW group (the rest), empty ones left out. Every group records the index of
            the group the user passed as ``user_group``; :meth:`per_user_group` expands one
            value per user group (e.g. ``LambdaLR`` lambdas) to one per param group. Prefer
            :func:`mugrokfast.param_groups(model)`, which also keeps embeddings and the output
            head on AdamW. Any hyperparameter below can be set per group.
        lr: AdamW learning rate. betas, eps, weight_decay: AdamW's (``weight_decay`` also is
            Muon's decoupled decay ``p *= 1 - lr*wd``).
        muon_lr: learning rate of Muon groups. It is copied into the group's ``"lr"`` (unless
            the group sets ``lr`` itself), so LR schedulers scale Muon and AdamW groups alike.
        momentum, nesterov, ns_steps, adjust_lr_fn, ns_dtype, ns_coefficients, ns_eps: Muon's
            (see :class:`mugrokfast.Muon`). A momentum-cycling scheduler (``OneCycleLR``,
            ``CyclicLR`` with ``cycle_momentum``) cycles ``betas[0]`` of every group (the
            defaults hold ``betas``); Muon groups then take their momentum from it, as
            ``torch.optim.Muon`` would take the cycled momentum from its own scheduler.
        grokfast: None | "ema" | "ma" | "dual". grokfast_alpha, grokfast_lambda: the EMA filter.
            grokfast_window, grokfast_ma_lambda: the MA filter (ring buffer of ``window``
            gradients per parameter: memory ``window x numel`` in ``grokfast_history_dtype``,
            default the gradient dtype). grokfast_warmup_steps: steps with filter updates but no
            amplification.
        grokfast_place: where the EMA acts in Muon groups. ``"grad"`` (default): on the raw
            gradient, the paper's filter (1. above). ``"update"``: on the orthogonalised update
            (3. above; ``grokfast="ema"`` or None only), ``grokfast_lambda`` the weight of the
            slow component relative to the update. Why: Newton-Schulz normalises its input,
            so an absolute ``g + lambda*h`` only acts through the ratio of ``lambda*|h|`` to
            ``|g|``, which drifts as gradients shrink; after Newton-Schulz the update has a
            fixed size, the relative weight keeps its meaning and the step keeps Muon's size.
            Measured (``benchmarks/README.md``, sections 1b and 3): on grokking Power et al.'s
            four operations mod 97 it beat plain Muon while only the learning rates were tuned
            (1020 vs 1230 steps to 95% over the four), but not once Muon's weight decay was
            tuned too (940 vs 880 for plain Muon); on the LM benchmark it did not beat plain
            Muon either. So it is for experiments, not a recommendation. AdamW groups
            filter the gradient either way. State: ``grokfast_update_ema`` per matrix, in the
            parameter's dtype.
        foreach: ``None`` (default): on CPU the cache-blocked AdamW loop, elsewhere torch's
            default choice. ``True``/``False``: torch's foreach / per-tensor AdamW for unfiltered
            tensors (filtered CPU tensors keep the blocked loop). Same numbers either way.
        distributed: ``True`` (or a ``ProcessGroup``) under data parallelism (DDP): each rank
            runs Newton-Schulz on its share of the Muon matrices and ``all_gather`` shares the
            results (:mod:`mugrokfast.distributed`); parameters and state stay identical on
            every rank. A local step without an initialised group or with one rank. Not in
            state dicts. Default ``False``: every rank does all the work.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        muon_lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        ns_dtype: torch.dtype | None = None,
        grokfast: str | None = "ema",
        grokfast_alpha: float = 0.98,
        grokfast_lambda: float = 2.0,
        grokfast_window: int = 100,
        grokfast_ma_lambda: float = 5.0,
        grokfast_warmup_steps: int = 0,
        *,
        ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
        ns_eps: float = DEFAULT_NS_EPS,
        grokfast_history_dtype: torch.dtype | None = None,
        grokfast_place: str = "grad",
        foreach: bool | None = None,
        distributed: bool | Any = False,
    ) -> None:
        check_distributed(distributed)
        self.distributed = distributed
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            eps=eps,
            weight_decay=weight_decay,
            muon_lr=muon_lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
            ns_coefficients=(
                tuple(ns_coefficients)
                if isinstance(ns_coefficients, (tuple, list))
                else ns_coefficients
            ),
            ns_eps=ns_eps,
            grokfast=grokfast,
            grokfast_alpha=grokfast_alpha,
            grokfast_lambda=grokfast_lambda,
            grokfast_window=grokfast_window,
            grokfast_ma_lambda=grokfast_ma_lambda,
            grokfast_warmup_steps=grokfast_warmup_steps,
            grokfast_history_dtype=grokfast_history_dtype,
            grokfast_place=grokfast_place,
            foreach=foreach,
        )
        self._validate(defaults | {"use_muon": False, "user_group": 0})
        super().__init__(params, defaults)

    # ---------------------------------------------------------------- groups and validation

    @staticmethod
    def _validate(g: dict[str, Any]) -> None:
        try:
            betas = tuple(g["betas"])
        except TypeError:
            betas = ()
        if len(betas) != 2:
            raise ValueError(f"betas must be two floats in [0, 1) (got {g['betas']!r})")
        for b in betas:
            check_number("betas", b, 0.0, 1.0, open_high=True)
        check_number("eps", g["eps"])
        check_number("muon_lr", g["muon_lr"], open_low=True, tensor_ok=True)
        for key in ("use_muon", "nesterov"):
            if not isinstance(g[key], bool):
                raise ValueError(f"{key} must be a bool (got {g[key]!r})")
        if g["foreach"] not in (None, True, False):
            raise ValueError(f"foreach must be None or a bool (got {g['foreach']!r})")
        if isinstance(g["lr"], Tensor) and g["foreach"]:
            raise ValueError(  # torch.optim.AdamW's rule, at construction rather than at step
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        check_int("user_group", g["user_group"], 0)
        validate_muon_args(
            g["lr"], g["weight_decay"], g["momentum"], g["ns_coefficients"], g["ns_eps"],
            g["ns_steps"], g["adjust_lr_fn"], g["ns_dtype"], names=_MUON_NAMES,
        )  # fmt: skip
        validate_filter_args(
            g["grokfast"], g["grokfast_alpha"], g["grokfast_lambda"], g["grokfast_window"],
            g["grokfast_ma_lambda"], g["grokfast_warmup_steps"], g["grokfast_history_dtype"],
            names=_FILTER_NAMES,
        )  # fmt: skip
        validate_place(g["grokfast_place"], g["grokfast"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; without ``use_muon`` it is split by ``ndim`` (see the class docstring).

        Every group records ``user_group``: the index of the group the user passed (or added)
        that it came from; :meth:`per_user_group` uses it to line up per-group scheduler
        arguments.
        """
        group = dict(param_group)
        params, names = group_params(group)  # plain or named; a set is a TypeError
        if "user_group" not in group:
            group["user_group"] = 1 + max((g["user_group"] for g in self.param_groups), default=-1)
        if "use_muon" not in group:
            parts = [[i for i, p in enumerate(params) if (p.ndim >= 2) == m] for m in (True, False)]
            for use_muon, idx in zip((True, False), parts, strict=True):
                if idx:
                    part_names = None if names is None else [names[i] for i in idx]
                    part = with_params(group, [params[i] for i in idx], part_names)
                    self.add_param_group(part | {"use_muon": use_muon})
            if params:
                return
            group["use_muon"] = False
        group = with_params(group, params, names)
        if group["use_muon"]:
            for p in params:
                if p.ndim < 2:
                    raise ValueError(
                        f"use_muon: a Muon group got a parameter of shape {tuple(p.shape)}; "
                        "Muon needs >= 2 dims (send vectors to a group with use_muon=False)"
                    )
            if "lr" not in group:
                group["lr"] = group.get("muon_lr", self.defaults["muon_lr"])
        filled = self.defaults | group
        self._validate(filled)  # before torch stores the group
        check_ma_memory([*self.param_groups, filled], "grokfast_window")
        super().add_param_group(group)

    def per_user_group(self, values: list[Any]) -> list[Any]:
        """One entry of ``values`` per group the user passed, repeated for each param group
        made from it (a group without ``use_muon`` becomes a Muon and an AdamW group).

        For schedulers that take one value per group: ``LambdaLR(opt,
        opt.per_user_group([f_backbone, f_head]))``, ``OneCycleLR(opt,
        max_lr=opt.per_user_group([...]))``.
        """
        n = 1 + max(g["user_group"] for g in self.param_groups)
        if len(values) != n:
            raise ValueError(
                f"values: expected one entry per group passed to MuGrokfast ({n}), "
                f"got {len(values)}"
            )
        return [values[g["user_group"]] for g in self.param_groups]

    def set_grokfast_lambda(self, lamb: float, ma_lamb: float | None = None) -> None:
        """Set the amplification of every group (e.g. boost it when grokking stalls).

        Writes ``grokfast_lambda`` (the EMA term; in ``grokfast_place="update"`` Muon groups
        the relative weight) into every group. Groups filtering with
        ``"ma"`` alone have no EMA term, so there it also sets ``grokfast_ma_lambda``; pass
        ``ma_lamb`` to set ``grokfast_ma_lambda`` of every group explicitly.
        """
        set_grokfast_lambda(self.param_groups, lamb, ma_lamb)

    @classmethod
    def from_preset(
        cls, name: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], **overrides: Any
    ) -> MuGrokfast:
        """Build from a named preset (:data:`mugrokfast.presets.PRESETS`); kwargs override it."""
        from .presets import get_preset

        preset = get_preset(name)
        opt = cls(params, **(preset.kwargs | overrides))
        opt.preset = preset
        return opt

    # ------------------------------------------------------------------------------- state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # also runs in load_state_dict: fill options missing from older/foreign state dicts
        # (only ours: torch's __setstate__ adds "differentiable" to the defaults)
        super().__setstate__(state)
        self.__dict__.setdefault("distributed", False)  # not in state dicts: a process setting
        for i, group in enumerate(self.param_groups):
            group.setdefault("use_muon", all(p.ndim >= 2 for p in group["params"]))
            group.setdefault("user_group", i)
            for key in _DEFAULT_KEYS:
                group.setdefault(key, self.defaults[key])
        for st in self.state.values():  # torch's AdamW rule: a Python-number step -> tensor
            if "step" in st and not isinstance(st["step"], Tensor):
                st["step"] = torch.tensor(float(st["step"]), dtype=_scalar_dtype())

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # torch's: defaults, state, param_groups
        if hasattr(self, "preset"):  # from_preset's record survives pickle and deepcopy
            state["preset"] = self.preset
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (hooks, state cast to each parameter's dtype and
        device); MA ring buffers then go back to ``grokfast_history_dtype``."""
        mapping = [g["user_group"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, saved, user_group in zip(
            self.param_groups, state_dict["param_groups"], mapping, strict=True
        ):
            if "user_group" not in saved:  # a checkpoint of mugrokfast 0.1: keep ours
                group["user_group"] = user_group
        cast_history(self)

    # -------------------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One step: filter the raw gradients, then Muon or AdamW per group."""
        loss = run_closure(closure)
        process_group = resolve_group(self.distributed)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "MuGrokfast")
            if not params:
                continue
            if group["use_muon"]:
                check_not_sharded(params)
            states = [self.state[p] for p in params]
            if group["use_muon"] and group["grokfast_place"] == "update":
                terms = [[] for _ in params]  # the EMA acts on the orthogonalised update
            else:
                # the filter's state is updated here; the amplification g + lambda*h is added
                # inside the update that writes a fresh tensor anyway (see grokfast_terms)
                terms = group_terms(group, grads, states)
            if group["use_muon"]:
                self._muon(group, params, grads, states, terms, process_group)
            else:
                self._adamw(group, params, grads, states, terms)
        return loss

    @staticmethod
    def _muon(
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        terms: list[Terms],
        process_group: Any,
    ) -> None:
        for p, st in zip(params, states, strict=True):
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        bufs = [st["momentum_buffer"] for st in states]
        opts = muon_group_options(group, eps_key="ns_eps")
        if "max_momentum" in group:
            # a momentum-cycling scheduler (OneCycleLR, CyclicLR with cycle_momentum) is
            # attached: it cycles betas[0] of every group, as it would cycle torch.optim.Muon's
            # momentum; follow it (see the class docstring)
            opts["momentum"] = group["betas"][0]
        update_filter = None
        if group["grokfast"] == "ema" and group["grokfast_place"] == "update":

            def update_filter(idx: list[int], updates: list[Tensor]) -> list[Tensor]:
                return update_ema_(
                    updates,
                    [states[i] for i in idx],
                    alpha=group["grokfast_alpha"],
                    lamb=group["grokfast_lambda"],
                    warmup_steps=group["grokfast_warmup_steps"],
                )

        muon_step(
            params, grads, bufs, terms=terms, process_group=process_group,
            update_filter=update_filter, **opts,
        )  # fmt: skip

    @staticmethod
    def _adamw(
        group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict], terms
    ) -> None:
        # Under torch.compile off the CPU, torch's AdamW runs in its capturable form with the
        # step counts on the parameters' device, as dynamo arranges for torch's own optimizers
        # (a CPU count beside CUDA parameters does not trace). Eager keeps counts on the CPU.
        compiling = torch.compiler.is_compiling()
        for p, st in zip(params, states, strict=True):
            on_device = compiling and p.device.type != "cpu"
            if "exp_avg" not in st:
                st["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if on_device and st["step"].device != p.device:
                st["step"] = st["step"].to(p.device)
        beta1, beta2 = group["betas"]
        hp = dict(
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
        )
        # CPU tensors: the cache-blocked loop below when filtered (it also adds the Grokfast
        # terms without a parameter-sized allocation) or at foreach=None; everything else:
        # torch's own AdamW on the filtered gradients
        foreach = group["foreach"]
        fused = [
            i
            for i, t in enumerate(terms)
            if grads[i].device.type == "cpu"
            and type(grads[i]) is Tensor  # plain tensors only (a DTensor keeps torch's AdamW)
            and (t or (foreach is None and not compiling))
        ]
        if fused:
            _adamw_cpu(
                [params[i] for i in fused],
                [grads[i] for i in fused],
                [terms[i] for i in fused],
                [states[i] for i in fused],
                **hp,
            )
        if len(fused) == len(params):
            return
        skip = set(fused)
        rest = [i for i in range(len(params)) if i not in skip]
        _adamw(
            [params[i] for i in rest],
            apply_terms([grads[i] for i in rest], [terms[i] for i in rest]),
            [states[i]["exp_avg"] for i in rest],
            [states[i]["exp_avg_sq"] for i in rest],
            [],
            [states[i]["step"] for i in rest],
            foreach=foreach,
            capturable=compiling and params[rest[0]].device.type != "cpu",
            amsgrad=False,
            maximize=False,
            **hp,
        )


def _adamw_cpu(
    params: list[Tensor],
    grads: list[Tensor],
    terms: list[Terms],
    states: list[dict],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
) -> None:
    """torch.optim.AdamW's update on ``g' = g + sum(scale * term)``, one tensor at a time and,
    within a tensor, one cache-sized block at a time (:mod:`mugrokfast._blocked`).

    The operations and their order are those of torch's single-tensor AdamW (on CPU its foreach
    path runs the same kernels tensor by tensor), so the numbers are those of torch.optim.AdamW
    fed the filtered gradients. What changes is memory traffic: torch makes eight passes over
    each tensor and allocates ``sqrt(v)`` (and materialising the filtered gradients first would
    be one more parameter-sized allocation); here a block of ``p``, ``g``, the moments and one
    scratch buffer (g', then the denominator) stays in cache through the whole chain.
    Measured faster than torch's foreach AdamW on CPU (``benchmarks/optimizer_step.py``).
    """
    lr = _to_scalar(lr)  # a 1-element tensor lr, as in torch's AdamW
    for p, g, tm, st in zip(params, grads, terms, states, strict=True):
        step_t = st["step"]
        step_t += 1
        step = _get_value(step_t)  # a float, or the tensor under torch.compile (no graph break)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        tensors = [p, g, st["exp_avg"], st["exp_avg_sq"], *(t for t, _ in tm)]
        for pb, gb, exp_avg, exp_avg_sq, *tb, u in blocks(tensors, scratch=g.dtype):
            if tm:  # g' = g + sum(scale * term), into the scratch buffer
                gb = add_terms_into(u, gb, [(t, s) for t, (_, s) in zip(tb, tm, strict=True)])
            pb.mul_(1 - lr * weight_decay)
            exp_avg.lerp_(gb, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(gb, gb, value=1 - beta2)
            denom = torch.sqrt(exp_avg_sq, out=u).div_(bias_correction2_sqrt).add_(eps)
            pb.addcdiv_(exp_avg, denom, value=-step_size)
