"""``param_groups(model)``: which parameters Muon should update, decided by module type.

Muon orthogonalises updates of *hidden* weight matrices: maps from one hidden representation to
another, where every direction of the update matters equally. It is the wrong tool for

* embeddings: a lookup table, each row updated only by its own token (rows are not a linear map);
* the output head (tied to, or the size of, an embedding): it maps into vocabulary space;
* norm gains, biases and any other vector.

Those go to AdamW. Rules, first match wins, each parameter listed once even when shared (tied):

1. explicit overrides: ``muon=[...]`` / ``adamw=[...]`` (parameters, or names as in
   ``model.named_parameters()``), then ``route(name, param, module) -> bool | None``
   (True: Muon, False: AdamW, None: no opinion);
2. parameters with fewer than 2 dims, and matrices with a dimension of size 1 (a vector in
   disguise, e.g. a scalar head ``nn.Linear(d, 1)``: orthogonalising it only normalises it)
   -> AdamW;
3. ``nn.Embedding``/``nn.EmbeddingBag`` weights -> AdamW;
4. the output head's parameters -> AdamW. The head is ``head=`` (a module, a module name, or a
   list of them; ``[]`` for none), else detected by structure: a Linear whose weight is
   shared with an embedding, the last Linear whose ``out_features`` equals some embedding's
   ``num_embeddings``, and the Linear producing a plain ``nn.Sequential``'s output. When none
   is found and some Linear goes to Muon, a UserWarning says so (a custom ``forward`` may use
   its modules in any order, so the last registered Linear is not guessed);
5. weights of ``nn.Linear``, ``nn.Conv{1,2,3}d``/``nn.ConvTranspose{1,2,3}d`` and the input
   projections of ``nn.MultiheadAttention`` (``in_proj_weight`` or ``q/k/v_proj_weight``;
   its ``out_proj`` is an ``nn.Linear``) -> Muon;
6. anything else (parameters of custom modules, e.g. learned initial states) -> AdamW.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

# module type -> names of its parameters that are hidden weight matrices
MUON_WEIGHTS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("weight",),
    nn.modules.conv._ConvNd: ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
}
EMBEDDING_MODULES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

Route = Callable[[str, nn.Parameter, nn.Module], "bool | None"]


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, nn.Module, Tensor)):
        return [x]
    return list(x)


def _detect_heads(model: nn.Module, head: Any) -> set[int] | None:
    """ids of the modules treated as output heads; None when none could be found."""
    modules = dict(model.named_modules())
    if head is not None:
        ids = set()
        for h in _as_list(head):
            if isinstance(h, str):
                if h not in modules:
                    raise ValueError(f"head: no module named {h!r} in the model")
                h = modules[h]
            if not isinstance(h, nn.Module):
                raise ValueError(f"head: expected module names or modules (got {type(h)})")
            ids.add(id(h))
        return ids
    heads: set[int] = set()
    embeddings = [m for m in modules.values() if isinstance(m, EMBEDDING_MODULES)]
    linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
    if embeddings:
        emb_weights = {id(m.weight) for m in embeddings}
        vocab_sizes = {m.num_embeddings for m in embeddings}
        heads = {id(m) for m in linears if id(m.weight) in emb_weights}
        sized = [m for m in linears if m.out_features in vocab_sizes]
        if sized:
            heads.add(id(sized[-1]))
    last = _output_linear(model)
    if last is not None:
        heads.add(id(last))
    return heads or None


def _output_linear(module: nn.Module) -> nn.Linear | None:
    """The Linear producing a plain ``nn.Sequential``'s output: its last child with parameters
    (parameter-free ones such as ReLU, Dropout, Softmax skipped), searched into nested
    Sequentials. None when that child is not a Linear or the model is no Sequential (a custom
    ``forward`` may use its modules in any order)."""
    if isinstance(module, nn.Linear):
        return module
    if not isinstance(module, nn.Sequential):
        return None
    for child in reversed(list(module.children())):
        if any(True for _ in child.parameters()):
            return _output_linear(child)
    return None


def _is_hidden_weight(module: nn.Module, p_name: str) -> bool:
    return any(isinstance(module, cls) and p_name in names for cls, names in MUON_WEIGHTS.items())


def param_groups(
    model: nn.Module,
    *,
    head: str | nn.Module | Iterable[str | nn.Module] | None = None,
    muon: Iterable[Tensor | str] | None = None,
    adamw: Iterable[Tensor | str] | None = None,
    route: Route | None = None,
    muon_group: dict[str, Any] | None = None,
    adamw_group: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a Muon group and an AdamW group.

    Returns ``[{"params": [...], "use_muon": True, **muon_group}, {"params": [...],
    "use_muon": False, **adamw_group}]`` (empty groups left out), ready for
    :class:`mugrokfast.MuGrokfast`. ``muon_group`` / ``adamw_group`` add per-group
    hyperparameters (e.g. ``{"weight_decay": 0.0}``). Routing rules: see the module docstring.
    """
    named = dict(model.named_parameters(remove_duplicate=False))
    force: dict[int, bool] = {}
    for flag, items, arg in ((True, muon, "muon"), (False, adamw, "adamw")):
        for item in _as_list(items):
            if isinstance(item, str):
                if item not in named:
                    raise ValueError(f"{arg}: no parameter named {item!r} in the model")
                item = named[item]
            if not isinstance(item, Tensor):
                raise ValueError(f"{arg}: expected parameters or names (got {type(item)})")
            if force.get(id(item), flag) != flag:
                raise ValueError(f"{arg}: a parameter is listed in both muon= and adamw=")
            force[id(item)] = flag

    found = _detect_heads(model, head)
    heads = found or set()
    seen: set[int] = set()
    to_muon: list[nn.Parameter] = []
    to_adamw: list[nn.Parameter] = []
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) in force:
                use = force[id(p)]
            else:
                use = route(name, p, module) if route is not None else None
                if use is None:
                    use = (
                        p.ndim >= 2
                        and min(p.shape[0], math.prod(p.shape[1:])) > 1
                        and id(module) not in heads
                        and _is_hidden_weight(module, p_name)
                    )
            if use and p.ndim < 2:
                raise ValueError(f"muon: {name} has shape {tuple(p.shape)}; Muon needs >= 2 dims")
            (to_muon if use else to_adamw).append(p)

    if found is None and to_muon and any(isinstance(m, nn.Linear) for m in model.modules()):
        warnings.warn(
            "param_groups: found no output head (no Linear tied to or as wide as an embedding, "
            "and the model is not a plain nn.Sequential ending in a Linear), so every Linear "
            "weight goes to Muon; pass head='<module name>' to keep the output layer on AdamW, "
            "or head=[] to say there is none",
            UserWarning,
            stacklevel=2,
        )
    groups = []
    if to_muon:
        groups.append({"params": to_muon, "use_muon": True, **(muon_group or {})})
    if to_adamw:
        groups.append({"params": to_adamw, "use_muon": False, **(adamw_group or {})})
    return groups
