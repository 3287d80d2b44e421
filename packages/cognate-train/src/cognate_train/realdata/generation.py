"""Greedy generation for the number and code datasets' metrics (gsm8k, svamp, mbpp pass@1).

The curriculum evaluation's decoding (`cognate_train.evaluation._greedy`), shared rather than
repeated: prompts are grouped by token length, so no batch holds padding and every row decodes
exactly as it would alone; each batch is prefilled once, then decodes one token per step with
the model's KV cache. A model whose forward takes no cache (or returns none) re-runs the whole
sequence each step instead, with the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import evaluation


@torch.no_grad()
def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    device: Any = "cpu",
    max_len: int | None = None,
) -> list[str]:
    """Greedy continuation of `<bos> prompt` until `<eos>` or `max_new_tokens`, decoded.

    The text before the first `<eos>`, other special tokens decoded literally. With `max_len`,
    a prompt is cut from the left to its last max(1, max_len - max_new_tokens - 1) tokens, so
    that `<bos>`, prompt and generation fit it. Results come back in the order of `prompts`.
    """
    evaluation._check_positive("max_new_tokens", max_new_tokens)
    evaluation._check_positive("batch_size", batch_size)
    keep = None if max_len is None else max(1, max_len - max_new_tokens - 1)
    budgets = [max_new_tokens] * len(prompts)
    # looked up on the module at call time: benchmarks/eval_decoding.py swaps in use_cache=False
    out = evaluation._greedy(
        model, tokenizer, prompts, budgets, batch_size, device, max_prompt_tokens=keep
    )
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids, _ in out]
