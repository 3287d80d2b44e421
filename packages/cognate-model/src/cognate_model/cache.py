"""The generation cache: everything a decoding step needs from the tokens before it.

Cognate's per-token state is small and bounded, so a cached step costs the same at token 10
and at token 100 000:

- backbone attention (one `WindowKV` per layer, `cache.layers[i]`): the rotated keys and values
  of the last `window_size - 1` positions, all that a later query can see through the sliding
  window (query t sees t - window < s <= t);
- the recursion's cross-attention (`cache.recursion`, a `WindowKV`): the projected feature
  keys/values, same window, since the TRM latent attends only to backbone features and the rest
  of a refinement step is per position;
- the long-term memory: with ltm_type "ema" (`cache.memory`, a `MemoryState`) the LTM state
  after the last real token (B, d_memory); with "titans" (`cache.titans[j]`, one
  `TitansMemoryState` per MAG layer) each layer's `TitansState`: memory weights, momentum and
  the sums of the incomplete chunk (a few d x d matrices per head, whatever the length);
- which cached positions are padding (`cache.padding`, `WindowFlags`) and how many positions
  were seen (`cache.seen_tokens`, the next position's rotary index).

Each part is read and written only by the module that owns it (`Attention`, `TRMRecursion`,
`CognateModel` for the memory), so a new memory or recursion design replaces its own part
(a new `_BatchState` subclass with its tensors listed in `_tensors`) and nothing else.
Batch operations that `generate` uses (beam reordering, repeat, select) apply to every part.

With all three parts the cached step is exact: the same logits as a full forward over the whole
prefix, up to float rounding (the tests check 1e-5 in fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin


class _BatchState:
    """Batch-dimension bookkeeping over the tensors named in `_tensors` (dim 0 is the batch)."""

    _tensors: tuple[str, ...] = ()

    def _map(self, fn: Callable[[Tensor], Tensor]) -> None:
        for name in self._tensors:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices])

    def reset(self) -> None:
        for name in self._tensors:
            setattr(self, name, None)


def _tail(x: Tensor, keep: int, dim: int) -> Tensor:
    """The last `keep` entries of x along dim (none when keep is 0; x[-0:] would be all)."""
    n = x.shape[dim]
    return x.narrow(dim, n - min(keep, n), min(keep, n))


class WindowKV(_BatchState, CacheLayerMixin):
    """Keys/values (B, H, P, head_dim) of the last P <= window - 1 positions of one attention.

    Without autograd (generation) new keys/values are written in place into a buffer with
    room for `keep` more positions, and `keys`/`values` are views of its tail: a decoding step
    copies its own key/value, and the held window is copied once every `keep` steps into a
    fresh buffer (appending with `torch.cat` copies the whole window at every step). With
    autograd, or under torch.compile, it concatenates (no in-place writes into saved tensors).
    """

    is_sliding = True
    _tensors = ("keys", "values")

    def __init__(self, window: int) -> None:
        super().__init__()
        self.keep = window - 1
        self._buffers: tuple[Tensor, Tensor] | None = None
        self._end = 0  # `keys` ends at this index of the buffers

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Append the new (B, H, T, hd) keys/values; return cached + new, keep the window."""
        new = (key_states, value_states)
        if self.keys is None:
            self.lazy_initialization(key_states, value_states)
            keys, values = new
        elif torch.is_grad_enabled() or torch.compiler.is_compiling():
            keys = torch.cat((self.keys, key_states), dim=-2)
            values = torch.cat((self.values, value_states), dim=-2)
            self._buffers = None
        else:
            keys, values = self._append_in_place(new)
        self.keys, self.values = _tail(keys, self.keep, -2), _tail(values, self.keep, -2)
        return keys, values

    def _append_in_place(self, new: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Write `new` after the held positions in the buffers (a fresh pair when full)."""
        held, steps = self.keys.shape[-2], new[0].shape[-2]
        if self._buffers is None or self._end + steps > self._buffers[0].shape[-2]:
            b, h, _, d = self.keys.shape
            size = held + max(self.keep, steps)
            self._buffers = (
                self.keys.new_empty(b, h, size, d),
                self.values.new_empty(b, h, size, d),
            )
            for buffer, old in zip(self._buffers, (self.keys, self.values), strict=True):
                buffer[..., :held, :].copy_(old)
            self._end = held
        start, self._end = self._end, self._end + steps
        for buffer, x in zip(self._buffers, new, strict=True):
            buffer[..., start : self._end, :].copy_(x)
        keys, values = (buffer[..., start - held : self._end, :] for buffer in self._buffers)
        return keys, values

    def _map(self, fn: Callable[[Tensor], Tensor]) -> None:
        super()._map(fn)
        self._buffers = None  # batch operations give new tensors: the next step starts a buffer

    def get_seq_length(self) -> int:
        """Positions held (at most window - 1), not positions seen: see `CognateCache`."""
        return 0 if self.keys is None else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return self.keep

    def reset(self) -> None:
        super().reset()
        self._buffers = None
        self.is_initialized = False


class WindowFlags(_BatchState):
    """Which of the held positions are real tokens (B, P) bool; None while nothing is padded."""

    _tensors = ("real",)

    def __init__(self, window: int) -> None:
        self.keep = window - 1
        self.real: Tensor | None = None

    def update(self, new: Tensor | None, held: int, seq_len: int) -> Tensor | None:
        """Append the new tokens' flags (B, T) (None: all real); return held + new (B, P + T)."""
        if new is None and self.real is None:
            return None
        if new is None:
            new = self.real.new_ones(self.real.shape[0], seq_len)
        past = self.real
        if past is None:
            past = torch.ones(new.shape[0], held, dtype=torch.bool, device=new.device)
        flags = torch.cat((past, new.to(torch.bool)), dim=1)
        self.real = _tail(flags, self.keep, 1)
        return flags


class MemoryState(_BatchState):
    """The long-term memory's state after the last real token, (B, d_memory); None at start."""

    _tensors = ("state",)

    def __init__(self) -> None:
        self.state: Tensor | None = None


class TitansMemoryState(_BatchState):
    """One MAG layer's Titans memory state (a `titans.TitansState`, every tensor batch-first);
    None at start."""

    def __init__(self) -> None:
        self.state: Any = None

    def _map(self, fn: Callable[[Tensor], Tensor]) -> None:
        if self.state is not None:
            self.state = type(self.state)(*(fn(t) for t in self.state))

    def reset(self) -> None:
        self.state = None


class CognateCache(Cache):
    """The cache `CognateForCausalLM.generate` carries between steps (a `transformers.Cache`).

    `layers` holds one `WindowKV` per backbone layer (what `len(cache)` and HF's helpers see);
    `recursion`, `memory` and `padding` are the model-specific parts. `get_seq_length()` is the
    number of positions seen so far (HF slices the next input with it), not the number held.
    Built empty: `CognateCache(config)`; `generate` builds one unless `use_cache=False`.
    """

    def __init__(self, config: Any) -> None:
        window = config.window_size
        super().__init__(layers=[WindowKV(window) for _ in range(config.n_layers)])
        self.recursion = WindowKV(window)
        self.memory = MemoryState()
        self.titans = [TitansMemoryState() for _ in config.memory_layers()]
        self.padding = WindowFlags(window)
        self.seen_tokens = 0

    def parts(self) -> Iterator[_BatchState]:
        yield from self.layers
        yield from (self.recursion, self.memory, *self.titans, self.padding)

    def step(self, attention_mask: Tensor | None, seq_len: int) -> tuple[int, int, Tensor | None]:
        """Start a forward over `seq_len` new tokens (their (B, T) mask or None).

        Returns (position of the first new token, positions held before it, key flags
        (B, held + T) or None) and advances `seen_tokens`.
        """
        start, held = self.seen_tokens, self.layers[0].get_seq_length()
        flags = self.padding.update(attention_mask, held, seq_len)
        self.seen_tokens += seq_len
        return start, held, flags

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no limit on positions: the window slides, the memory is a state

    def reorder_cache(self, beam_idx: Tensor) -> None:
        for part in self.parts():
            part.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for part in self.parts():
            part.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: Tensor) -> None:
        for part in self.parts():
            part.batch_select_indices(indices)

    def reset(self) -> None:
        for part in self.parts():
            part.reset()
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported beyond removing nothing (`crop(0)`): the long-term memory state after
        the last token cannot be rolled back. Exact cropping would need a snapshot of the
        memory (and, for titans, of its weights and momentum) after every token that might be
        removed, and the window keys that slid out; rejected candidates of assisted /
        speculative decoding are then cheaper to re-decode. `is_croppable` is False and the
        model is marked stateful, so `generate(assistant_model=...)` refuses up front."""
        if tokens_to_remove == 0:
            return
        raise ValueError(
            f"CognateCache cannot be cropped (crop({tokens_to_remove})): the long-term memory "
            "state has no rollback (assisted / speculative decoding needs a croppable cache)"
        )

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        held = next((layer.keys for layer in self.layers if layer.keys is not None), None)
        return -1 if held is None else held.shape[0]


__all__ = ["CognateCache", "MemoryState", "TitansMemoryState", "WindowFlags", "WindowKV"]
