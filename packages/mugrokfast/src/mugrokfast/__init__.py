"""mugrokfast: Grokfast gradient filters + Muon + AdamW for PyTorch, in one optimizer.

Public API:

* :class:`MuGrokfast` -- Grokfast filter -> Muon (hidden matrices) | AdamW (the rest).
* :class:`Grokfast` -- the filter in front of any torch optimizer.
* :class:`Muon` -- torch.optim.Muon's numbers, plus conv kernels and batched Newton-Schulz.
* :func:`param_groups` -- route a model's parameters to Muon or AdamW by module type.
* :func:`gradfilter_ema`, :func:`gradfilter_ma` -- the Grokfast reference's functions, fixed.
* :func:`zeropower_via_newtonschulz`, :func:`qk_clip_`.
"""

from .filters import gradfilter_ema, gradfilter_ma, grokfast_filter
from .mugrokfast import MuGrokfast
from .muon import Muon, muon_step
from .newton_schulz import default_ns_dtype, zeropower_via_newtonschulz
from .presets import PRESETS, Preset, get_preset
from .qk_clip import qk_clip_
from .routing import param_groups
from .wrapper import Grokfast

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Grokfast",
    "MuGrokfast",
    "Muon",
    "Preset",
    "default_ns_dtype",
    "get_preset",
    "gradfilter_ema",
    "gradfilter_ma",
    "grokfast_filter",
    "muon_step",
    "param_groups",
    "qk_clip_",
    "zeropower_via_newtonschulz",
]
