"""Batched greedy generation for the number and code datasets' metrics.

Batching pads on the right: in a causal model a position never sees later ones, so padding
after a row's last real token cannot change that row's logits or its greedy continuation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..evaluation import EvalMode, logits_of


def right_pad(rows: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


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

    Rows are right-padded and each row has its own cursor: a step appends the argmax at the
    row's last real position. With `max_len`, a prompt is cut from the left so that prompt and
    generation fit it. Results come back in the order of `prompts`.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id(tokenizer)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    keep = None if max_len is None else max(1, max_len - max_new_tokens - 1)
    rows = [[bos, *(ids[-keep:] if keep else ids)] for ids in encoded]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[str] = [""] * len(rows)
    with EvalMode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            starts = [len(rows[i]) for i in chunk]
            ids, _ = right_pad([rows[i] + [pad] * max_new_tokens for i in chunk], pad, device)
            lens = torch.tensor(starts, device=ids.device)
            mask = (torch.arange(ids.shape[1], device=ids.device)[None] < lens[:, None]).long()
            done = torch.zeros(len(chunk), dtype=torch.bool, device=ids.device)
            arange = torch.arange(len(chunk), device=ids.device)
            for _ in range(max_new_tokens):
                width = int(lens.max())
                logits = logits_of(model(input_ids=ids[:, :width], attention_mask=mask[:, :width]))
                nxt = logits[arange, lens - 1].argmax(dim=-1)
                live = ~done
                ids[arange[live], lens[live]] = nxt[live]
                mask[arange[live], lens[live]] = 1
                lens = lens + live.long()
                done |= nxt == eos
                if bool(done.all()):
                    break
            for row, i in enumerate(chunk):
                new = ids[row, starts[row] : int(lens[row])].tolist()
                if eos in new:
                    new = new[: new.index(eos)]
                out[i] = tokenizer.decode(new, skip_special_tokens=False)
    return out
