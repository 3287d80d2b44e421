"""Exponential moving average of a model's weights, for evaluation and ``final/``."""

from __future__ import annotations

import contextlib

import torch


class WeightEMA:
    """``w_ema <- d * w_ema + (1 - d) * w`` after every optimizer step (TRM uses d = 0.999).

    Integer buffers are copied, not averaged. :meth:`swapped_in` evaluates or saves the model
    with the averaged weights and puts the trained ones back afterwards.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(backup)


def maybe_swapped_in(ema: WeightEMA | None, model: torch.nn.Module):
    """The EMA weights swapped into ``model`` for the block, or ``model`` as it is."""
    return ema.swapped_in(model) if ema is not None else contextlib.nullcontext(model)
