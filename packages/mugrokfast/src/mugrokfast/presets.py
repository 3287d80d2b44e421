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
            "The constructor defaults: AdamW lr 1e-3, Muon lr 0.02, Grokfast-EMA (0.98, 2.0). "
            "No benchmark here shows the filter beating plain Muon (grokfast=None); the "
            "task presets below leave it off.",
            {},
            grad_clip=None,
        ),
        Preset(
            "phase1",
            "Cognate Phase 1 pre-training: AdamW lr 5e-4, Muon lr 5e-3, clip 1.0, and no "
            "Grokfast filter (grokfast=None: Muon + AdamW). Measured on the language-model "
            "benchmark at a matched Muon lr, the filter gave no lower val loss than plain Muon "
            "(0.887 vs 0.860, seeds 1-3; benchmarks/README.md, section 3); the original design's "
            "lambda 0.02 leaves an orthogonalised update almost unchanged. Pass grokfast='ema' "
            "(and a grokfast_lambda) to train with the filter anyway.",
            dict(lr=5e-4, muon_lr=5e-3, grokfast=None),
            grad_clip=1.0,
        ),
        Preset(
            "grokking",
            "Algorithmic tasks such as the Grokfast paper's x*y mod 97 (2-layer decoder): AdamW "
            "lr 3e-3, betas (0.9, 0.98), weight decay 0.7, Muon lr 0.06, and no Grokfast filter "
            "(grokfast=None). Tuned on x*y, seeds 0-2, in benchmarks/grokking_sweep.py (the best "
            "point one weight decay for all groups can express). On untuned seeds 10-12 it "
            "reaches 95% val in x*y 200 / x+y 190 / x-y 320 / x/y 280 steps (median; one x/y "
            "seed not within 600), against 280 / 280 / 330 / 340 for the earlier preset (lr "
            "1e-3, Muon lr 0.03, weight decay 1.0). A lighter weight decay on the Muon matrices "
            "alone (0.5, AdamW groups 1.0, via param_groups(..., muon_group={'weight_decay': "
            "0.5})) measured 170 / 200 / 250 / 260. No Grokfast filter placement beat plain "
            "Muon once weight decay was tuned (benchmarks/README.md, section 1b).",
            dict(lr=3e-3, betas=(0.9, 0.98), weight_decay=0.7, muon_lr=0.06, grokfast=None),
            grad_clip=None,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"name: unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
