"""torch.export and torch.compile with a dynamic sequence length (slow: minutes on a CPU).

Reference: the eager model on the same inputs.
"""

import pytest
import torch
from cognate_model import CognateCache

pytestmark = pytest.mark.slow


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(ids, attention_mask=mask, use_cache=False).logits


def test_export_with_a_dynamic_length(make_tiny):
    """One exported program for every length 2..max_seq_len (eval: ACT halting on)."""
    model = make_tiny()
    wrapped = _Logits(model)
    seq = torch.export.Dim("seq", min=2, max=model.config.max_seq_len)
    ids = torch.randint(0, 256, (2, 40))
    program = torch.export.export(
        wrapped,
        (ids, torch.ones_like(ids)),
        dynamic_shapes={"ids": {1: seq}, "mask": {1: seq}},
    )
    for length in (2, 9, 77, model.config.max_seq_len):
        ids = torch.randint(0, 256, (2, length))
        mask = torch.ones_like(ids)
        mask[0, : length // 3] = 0
        torch.testing.assert_close(
            program.module()(ids, mask), wrapped(ids, mask), rtol=1e-5, atol=1e-5
        )


def test_compile_dynamic_training_step_and_eval(make_tiny):
    model = make_tiny().train()
    compiled = torch.compile(model, dynamic=True)
    for length in (24, 37):
        ids = torch.randint(0, 256, (2, length))
        ref = model(ids, labels=ids, return_metrics=False)
        ref.loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        out = compiled(ids, labels=ids, return_metrics=False)
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
        out.loss.backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
        model.zero_grad()
    model.eval()
    ids = torch.randint(0, 256, (2, 50))
    torch.testing.assert_close(
        compiled(ids, use_cache=False).logits,
        model(ids, use_cache=False).logits,
        rtol=1e-5,
        atol=1e-5,
    )


def test_compiled_cached_decoding_equals_eager(make_tiny):
    """A prefill then one-token steps through `torch.compile(model)` with one `CognateCache`
    give the eager model's logits (eager, under no_grad, appends the window in place; the
    compiled graph concatenates), past the window so the held keys slide."""
    model = make_tiny(window_size=4)
    compiled = torch.compile(model, dynamic=True)
    ids = torch.randint(0, 256, (2, 12 + 2 * model.config.window_size))

    @torch.no_grad()
    def decode(fn):
        cache, logits = CognateCache(model.config), []
        steps = [(0, 12), *((t, 1) for t in range(12, ids.shape[1]))]
        for t, n in steps:
            logits.append(fn(ids[:, t : t + n], past_key_values=cache, return_metrics=False).logits)
        return torch.cat(logits, 1)

    torch.testing.assert_close(decode(compiled), decode(model), rtol=1e-5, atol=1e-5)
