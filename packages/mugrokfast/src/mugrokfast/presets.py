"""Named MuGrokfast configurations: ``MuGrokfast.from_preset(name, params, **overrides)``.

Each preset is a set of constructor keyword arguments plus training advice the optimizer itself
cannot apply (``grad_clip``: pass it to ``torch.nn.utils.clip_grad_norm_``). After
``from_preset`` the chosen preset is available as ``optimizer.preset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named configuration: ``kwargs`` for MuGrokfast, ``grad_clip`` for the training loop."""

    name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    grad_clip: float | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "default",
            "The constructor defaults: AdamW lr 1e-3, Muon lr 0.02, Grokfast-EMA (0.98, 2.0).",
            {},
            grad_clip=None,
        ),
        Preset(
            "phase1",
            "Cognate Phase 1 pre-training: AdamW lr 5e-4, Muon lr 5e-3, Grokfast-EMA lambda 0.02 "
            "(cognate-train's phase1 setting), clip 1.0. Under Muon's orthogonalisation a "
            "lambda this small leaves the update almost unchanged; no benchmark here shows a gain from the filter over plain Muon "
            "(benchmarks/README.md, sections 1b and 3).",
            dict(lr=5e-4, muon_lr=5e-3, grokfast="ema", grokfast_alpha=0.98, grokfast_lambda=0.02),
            grad_clip=1.0,
        ),
        Preset(
            "grokking",
            "Algorithmic tasks such as the Grokfast paper's x*y mod 97 (2-layer decoder): AdamW "
            "lr 1e-3, betas (0.9, 0.98), weight decay 1.0 (Power et al.), Muon lr 0.03, "
            "Grokfast-EMA alpha 0.98 lambda 1.0; the 'mugrokfast' setting of "
            "benchmarks/grokking.py, tuned on seeds 0-2 (figures in benchmarks/README.md). The "
            "speed is Muon's: plain Muon at these settings is within one evaluation interval "
            "(x*y 280 vs 270 steps, x+y 280 vs 280, x-y 330 vs 340, x/y 340 vs 350).",
            dict(
                lr=1e-3,
                betas=(0.9, 0.98),
                weight_decay=1.0,
                muon_lr=0.03,
                grokfast="ema",
                grokfast_alpha=0.98,
                grokfast_lambda=1.0,
            ),
            grad_clip=None,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"name: unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
