"""Where should Grokfast's slow-gradient amplification act when Muon orthogonalises the update?

``SlowMuon`` is Muon (momentum 0.95, Nesterov, Newton-Schulz as in ``mugrokfast``, decoupled
weight decay, lr scaled by ``sqrt(max(1, rows/cols))``) with an EMA amplifier ``x + s * h``,
``h = alpha * h + (1 - alpha) * x`` (h starts at the first x), applied at ``place``:

- ``"grad"``: x is the raw gradient before momentum (what ``MuGrokfast`` does today);
- ``"momentum"``: x is the Nesterov direction that goes into Newton-Schulz;
- ``"update"``: x is the orthogonalised update; the amplified update is scaled back to the
  norm of the orthogonalised one, so the filter changes its direction, not the step size.

``s = lamb`` (``relative=0``: the paper's absolute weight), or ``s = lamb * |x| / |h|``
(``relative=1``): the slow component then enters with weight ``lamb`` relative to x whatever
their magnitudes, which is what survives Muon's normalisation. ``warmup_steps``: steps where h
is updated but not added. The other parameters (embeddings, head, gains, biases) go to
``MuGrokfast``'s AdamW groups with the paper's EMA filter (``adamw_lamb``; 0 turns it off), so
only the Muon side changes between variants. With ``place="grad", relative=0`` the whole
optimizer equals ``MuGrokfast(grokfast="ema")``: :func:`check_against_mugrokfast` asserts it.

This is a benchmark-side study (``grokking.py --optimizer muon-slow --hp muon-slow.place=...``).
Its best variant, ``place="update", relative=1``, is in ``mugrokfast`` as an opt-in:
``MuGrokfast(grokfast="ema", grokfast_place="update")`` (equal to SlowMuon in float64, see
``packages/mugrokfast/tests/test_grokfast_place.py``).
"""

from __future__ import annotations

from typing import Any

import torch

PLACES = ("grad", "momentum", "update")


class SlowMuon(torch.optim.Optimizer):
    """Muon with the Grokfast EMA amplifier at ``place`` (see the module docstring)."""

    def __init__(self, params, lr=0.03, weight_decay=1.0, momentum=0.95, alpha=0.98, lamb=1.0,
                 place="grad", relative=False, warmup_steps=0):  # fmt: skip
        if place not in PLACES:
            raise ValueError(f"place must be one of {PLACES} (got {place!r})")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, alpha=alpha,
                        lamb=lamb, place=place, relative=bool(relative),
                        warmup_steps=warmup_steps)  # fmt: skip
        super().__init__(params, defaults)

    @staticmethod
    def _amplify(x: torch.Tensor, state: dict, g: dict[str, Any]) -> torch.Tensor:
        h = state.get("slow")
        if h is None:
            h = state["slow"] = x.detach().clone()
        else:
            h.lerp_(x, 1 - g["alpha"])
        if state["step"] <= g["warmup_steps"] or g["lamb"] == 0:
            return x
        scale = g["lamb"]
        if g["relative"]:
            scale = scale * x.norm() / h.norm().clamp(min=1e-30)
        return x + scale * h

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        from mugrokfast.muon import adjust_lr
        from mugrokfast.newton_schulz import zeropower_via_newtonschulz

        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st["step"] = st.get("step", 0) + 1
                grad = p.grad
                if g["place"] == "grad":
                    grad = self._amplify(grad, st, g)
                buf = st.setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(grad, 1 - g["momentum"])
                u = grad.lerp(buf, g["momentum"])
                if g["place"] == "momentum":
                    u = self._amplify(u, st, g)
                o = zeropower_via_newtonschulz(u.reshape(p.shape[0], -1)).view(p.shape)
                if g["place"] == "update":
                    o = o.to(p.dtype)
                    a = self._amplify(o, st, g)
                    o = a * (o.norm() / a.norm().clamp(min=1e-30))
                p.mul_(1 - g["lr"] * g["weight_decay"])
                p.add_(o.to(p.dtype), alpha=-adjust_lr(g["lr"], None, tuple(p.shape)))


def build(muon: list, rest: list, hp: dict[str, Any]) -> Any:
    """SlowMuon on ``muon`` + MuGrokfast's AdamW (EMA filter ``adamw_lamb``) on ``rest``."""
    import mugrokfast
    import peers

    slow = SlowMuon(muon, lr=hp["muon_lr"], weight_decay=hp["weight_decay"], alpha=hp["alpha"],
                    lamb=hp["lamb"], place=hp["place"], relative=hp["relative"],
                    warmup_steps=hp["warmup_steps"])  # fmt: skip
    adamw = mugrokfast.MuGrokfast(
        [{"params": rest, "use_muon": False}], lr=hp["lr"], betas=(0.9, 0.98),
        weight_decay=hp["weight_decay"], grokfast="ema" if hp["adamw_lamb"] else None,
        grokfast_alpha=hp["alpha"], grokfast_lambda=hp["adamw_lamb"],
    )  # fmt: skip
    return peers.OptimizerPair(slow, adamw)


def check_against_mugrokfast(steps: int = 5) -> float:
    """Max |difference| of SlowMuon(grad, absolute) + AdamW vs MuGrokfast(ema) after ``steps``."""
    import mugrokfast

    torch.manual_seed(0)
    shapes = [(8, 6), (6, 8), (5,)]
    a = [torch.randn(s, dtype=torch.float64) for s in shapes]
    b = [t.clone() for t in a]
    hp = dict(muon_lr=0.03, weight_decay=1.0, alpha=0.98, lamb=1.0, place="grad", relative=0,
              warmup_steps=0, lr=1e-3, adamw_lamb=1.0)  # fmt: skip
    ours = build(a[:2], a[2:], hp)
    ref = mugrokfast.MuGrokfast(
        [{"params": b[:2], "use_muon": True}, {"params": b[2:], "use_muon": False}],
        lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0, muon_lr=0.03, grokfast="ema",
        grokfast_alpha=0.98, grokfast_lambda=1.0,
    )  # fmt: skip
    for t in a + b:
        t.requires_grad_(True)
    for _ in range(steps):
        grads = [torch.randn(s, dtype=torch.float64) for s in shapes]
        for x, y, gr in zip(a, b, grads, strict=True):
            x.grad, y.grad = gr.clone(), gr.clone()
        ours.step()
        ref.step()
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
