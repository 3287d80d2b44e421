"""Maintained peer optimizers, taken by name in the benchmarks (``--optimizer torch-muon,...``).

Each peer runs at its library's documented defaults (the constructor's defaults; the ``hp``
below copies them) unless a benchmark overrides a field. Muon peers get the benchmark's split:
hidden matrices to Muon, embeddings, head, gains and biases to the library's AdamW (or torch's
AdamW where the library has none). The peers other than ``torch-muon`` come from the optional
``peers`` dependency group (``uv sync --group peers``); :func:`missing` says when one is absent so
a benchmark can skip it with a note instead of failing (CI installs no peers).

API read from the installed sources (pytorch-optimizer 4.1.0, grokfast-pytorch 0.0.11,
heavyball 3.2.1, torch 2.15):

- ``kozistr-grokfastadamw``: ``pytorch_optimizer.GrokFastAdamW`` (lr 1e-4, betas (0.9, 0.99),
  grokfast_alpha 0.98, grokfast_lamb 2.0, weight_decay 0 decoupled as ``p *= 1 - lr*wd``,
  ``normalize_lr``: lr is divided by ``1 + lamb``).
- ``lucidrains-grokfastadamw``: ``grokfast_pytorch.GrokFastAdamW`` (same defaults; its weight
  decay is per step, ``p *= 1 - wd * lr / lr_0``, *not* multiplied by lr).
- ``torch-muon``: ``torch.optim.Muon`` (lr 1e-3, weight_decay 0.1, momentum 0.95, Nesterov) with
  ``torch.optim.AdamW`` (lr 1e-3, betas (0.9, 0.999), weight_decay 0.01) on the rest.
- ``kozistr-muon``: ``pytorch_optimizer.Muon`` with ``use_muon`` groups (lr 0.02, momentum 0.95,
  weight_decay 0; its AdamW groups lr 3e-4, betas (0.9, 0.95), weight_decay 0).
- ``heavyball-muon``: ``heavyball.SplitOpt`` of ``heavyball.Muon`` and ``heavyball.AdamW``, the
  library's own way to split (both lr 0.0025, betas (0.9, 0.99), weight_decay 0). HeavyBall
  compiles its update functions by default; here ``heavyball.utils.compile_mode = None`` runs them
  eagerly (same arithmetic; a CPU ``max-autotune`` compile would dominate runs this short).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

Params = list[torch.nn.Parameter]

PEERS: dict[str, dict[str, Any]] = {
    "kozistr-grokfastadamw": {
        "package": "pytorch_optimizer",
        "hp": {"lr": 1e-4, "weight_decay": 0.0, "alpha": 0.98, "lamb": 2.0},
        "kind": "pytorch_optimizer.GrokFastAdamW (kozistr), documented defaults",
    },
    "lucidrains-grokfastadamw": {
        "package": "grokfast_pytorch",
        "hp": {"lr": 1e-4, "weight_decay": 0.0, "alpha": 0.98, "lamb": 2.0},
        "kind": "grokfast_pytorch.GrokFastAdamW (lucidrains), documented defaults",
    },
    "torch-muon": {
        "package": "torch",
        "hp": {"muon_lr": 1e-3, "muon_weight_decay": 0.1, "lr": 1e-3, "weight_decay": 0.01},
        "kind": "torch.optim.Muon (hidden matrices) + torch.optim.AdamW (rest), defaults",
    },
    "kozistr-muon": {
        "package": "pytorch_optimizer",
        "hp": {"muon_lr": 0.02, "muon_weight_decay": 0.0, "lr": 3e-4, "weight_decay": 0.0},
        "kind": "pytorch_optimizer.Muon (kozistr), use_muon groups, documented defaults",
    },
    "heavyball-muon": {
        "package": "heavyball",
        "hp": {"muon_lr": 0.0025, "muon_weight_decay": 0.0, "lr": 0.0025, "weight_decay": 0.0},
        "kind": "heavyball.SplitOpt(Muon | AdamW), documented defaults, eager (no compile)",
    },
}


def missing(name: str) -> str | None:
    """A note saying why peer ``name`` cannot run here, or None when it can."""
    package = PEERS[name]["package"]
    if importlib.util.find_spec(package) is None:
        return (
            f"{name}: skipped, package {package!r} is not installed "
            "(it is in the optional `peers` group: `uv sync --all-packages --group peers`)"
        )
    return None


class OptimizerPair:
    """Two optimizers stepped together (Muon on matrices, AdamW on the rest).

    ``optimizers`` is what the benchmarks schedule (one LR scheduler each), as for
    ``heavyball.SplitOpt``.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = list(optimizers)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def _grokfast_adamw(name: str, params: Params, hp: dict[str, Any]) -> torch.optim.Optimizer:
    kw = {"lr": hp["lr"], "weight_decay": hp["weight_decay"]}
    if name == "kozistr-grokfastadamw":
        import pytorch_optimizer

        return pytorch_optimizer.GrokFastAdamW(
            params, grokfast_alpha=hp["alpha"], grokfast_lamb=hp["lamb"], **kw
        )
    import grokfast_pytorch

    return grokfast_pytorch.GrokFastAdamW(
        params, grokfast_alpha=hp["alpha"], grokfast_lamb=hp["lamb"], **kw
    )


def _muon(name: str, muon: Params, rest: Params, hp: dict[str, Any]) -> Any:
    m_kw = {"lr": hp["muon_lr"], "weight_decay": hp["muon_weight_decay"]}
    a_kw = {"lr": hp["lr"], "weight_decay": hp["weight_decay"]}
    if name == "torch-muon":
        return OptimizerPair(torch.optim.Muon(muon, **m_kw), torch.optim.AdamW(rest, **a_kw))
    if name == "kozistr-muon":
        import pytorch_optimizer

        groups = [
            {"params": muon, "use_muon": True, **m_kw},
            {"params": rest, "use_muon": False, **a_kw},
        ]
        return pytorch_optimizer.Muon(groups)
    import heavyball

    heavyball.utils.compile_mode = None
    return heavyball.SplitOpt(
        [
            {"params": muon, "optimizer": heavyball.Muon, **m_kw},
            {"params": rest, "optimizer": heavyball.AdamW, **a_kw},
        ]
    )


def build_peer(name: str, muon: Params, rest: Params, hp: dict[str, Any]) -> Any:
    """Peer ``name`` over ``muon`` (hidden matrices) and ``rest``; see the module docstring."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {list(PEERS)}")
    if "muon_lr" in PEERS[name]["hp"]:
        return _muon(name, muon, rest, hp)
    return _grokfast_adamw(name, muon + rest, hp)


def sub_optimizers(opt: Any) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside ``opt`` (itself, or a pair's / SplitOpt's parts)."""
    return list(getattr(opt, "optimizers", [opt]))
