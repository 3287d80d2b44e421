"""The LTM's parallel scan against the per-timestep loop, streaming, padding and the MAG gate."""

import pytest
import torch
from cognate_model.memory import (
    LongTermMemory,
    MAGGate,
    MemoryAsGate,
    binary_entropy,
    linear_scan,
    linear_scan_reference,
)

# Decays from "forget at once" to "remember ~1e9 steps" (the hard case for log-space methods).
DECAYS = [1e-4, 0.3, 0.9, 0.999, 0.9999999, 1 - 1e-9]


def loop64(a: torch.Tensor, x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    return linear_scan_reference(a.double(), x.double(), None if state is None else state.double())


@pytest.mark.parametrize("seq_len", [1, 7, 8, 9, 64, 333])
@pytest.mark.parametrize("chunk", [2, 4, 8, 32])
def test_scan_matches_loop_float64(seq_len, chunk):
    # chunk 2 with T=333 recurses 8 levels deep; chunk 4: 333 -> 84 -> 21 -> 6 -> 2.
    a = torch.tensor(DECAYS, dtype=torch.float64)
    x = torch.randn(3, seq_len, len(DECAYS), dtype=torch.float64)
    h = linear_scan(torch.log(a), (1 - a) * x, chunk)
    torch.testing.assert_close(h, loop64(a, x), rtol=1e-12, atol=1e-12)


def test_scan_float32_long_sequence_close_to_float64_loop():
    """fp32, 5000 steps, decays within 1e-7 of 1: no drift, no overflow."""
    a = torch.tensor(DECAYS, dtype=torch.float64)
    x = torch.randn(2, 5000, len(DECAYS), dtype=torch.float64) + 0.5
    log_a = torch.nn.functional.logsigmoid(torch.logit(a)).float()  # as the model computes it
    h = linear_scan(log_a, ((1 - a) * x).float(), 32)
    ref = loop64(a, x)
    assert torch.isfinite(h).all()
    assert (h.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_scan_under_bf16_autocast_stays_float32():
    a = torch.tensor(DECAYS)
    x = torch.randn(2, 300, len(DECAYS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear_scan(torch.log(a), (1 - a) * x, 16)
    assert h.dtype == torch.float32
    ref = loop64(a, x)
    assert (h.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_scan_gradients_match_loop():
    a_logit = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 37, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 37, 5, dtype=torch.float64)

    a = torch.sigmoid(a_logit)
    (linear_scan(torch.log(a), (1 - a) * x, 8) * w).sum().backward()
    g_scan = (a_logit.grad.clone(), x.grad.clone())
    a_logit.grad, x.grad = None, None
    (linear_scan_reference(torch.sigmoid(a_logit), x) * w).sum().backward()
    torch.testing.assert_close(g_scan, (a_logit.grad, x.grad), rtol=1e-10, atol=1e-12)


def test_scan_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        linear_scan(torch.zeros(1), torch.zeros(1, 4, 1), 1)
    with pytest.raises(ValueError, match="log_a"):
        linear_scan(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1), 4)


def _module(d_model=12, d_memory=6, chunk=4) -> LongTermMemory:
    ltm = LongTermMemory(d_model, d_memory, 0.5, 0.9999, chunk).double()
    with torch.no_grad():
        ltm.decay_logit.add_(0.1 * torch.randn_like(ltm.decay_logit))
    return ltm


def test_module_matches_loop_on_its_own_weights():
    ltm = _module()
    x = torch.randn(2, 29, 12, dtype=torch.float64)
    mem, m, state = ltm(x)
    ref = loop64(ltm.decay(), x @ ltm.down.weight.T)
    torch.testing.assert_close(m, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mem, ref @ ltm.up.weight.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, ref[:, -1])


def test_initial_decays_span_the_configured_range():
    ltm = LongTermMemory(8, 5, decay_min=0.5, decay_max=0.999)
    a = ltm.decay().detach().double()
    torch.testing.assert_close(a[0], torch.tensor(0.5, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(a[-1], torch.tensor(0.999, dtype=torch.float64), rtol=1e-6, atol=0)
    tau = 1 / (1 - a)  # time scales are geometric: constant ratio
    ratios = tau[1:] / tau[:-1]
    torch.testing.assert_close(ratios, ratios[0].expand_as(ratios), rtol=1e-4, atol=0)


@pytest.mark.parametrize("split", [1, 5, 16, 28])
def test_streaming_in_two_chunks_equals_one_pass(split):
    ltm = _module()
    x = torch.randn(3, 29, 12, dtype=torch.float64)
    full, _, full_state = ltm(x)
    first, _, state = ltm(x[:, :split])
    second, _, end_state = ltm(x[:, split:], state=state)
    torch.testing.assert_close(torch.cat((first, second), 1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(end_state, full_state, rtol=1e-12, atol=1e-12)


def test_initial_state_matches_loop_from_that_state():
    ltm = _module()
    x = torch.randn(2, 10, 12, dtype=torch.float64)
    s0 = torch.randn(2, 6, dtype=torch.float64)
    _, m, _ = ltm(x, state=s0)
    torch.testing.assert_close(m, loop64(ltm.decay(), x @ ltm.down.weight.T, s0))


def test_left_padding_is_exact_even_with_an_incoming_state():
    """Generation pads on the left: the real tokens see exactly what they see unpadded."""
    ltm = _module()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    s0 = torch.randn(2, 6, dtype=torch.float64)
    padded = torch.cat((torch.randn(2, 4, 12, dtype=torch.float64), x), 1)
    mask = torch.tensor([[0] * 4 + [1] * 9, [0] * 4 + [1] * 9])
    for state in (None, s0):
        _, m_pad, s_pad = ltm(padded, attention_mask=mask, state=state)
        _, m, s = ltm(x, state=state)
        torch.testing.assert_close(m_pad[:, 4:], m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s_pad, s, rtol=1e-12, atol=1e-12)
    _, m_pad, _ = ltm(padded, attention_mask=mask)
    assert m_pad[:, :4].abs().max() == 0


def test_right_padding_returns_the_state_after_the_last_real_token():
    ltm = _module()
    x = torch.randn(2, 13, 12, dtype=torch.float64)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, 8:] = 0  # row 0 has 8 real tokens, row 1 has 13
    _, m, state = ltm(x, attention_mask=mask)
    _, m0, s0 = ltm(x[:1, :8])
    torch.testing.assert_close(m[:1, :8], m0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[:1], s0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[1:], ltm(x[1:])[2], rtol=1e-12, atol=1e-12)
    # a row with no real token keeps the incoming state
    s_in = torch.randn(2, 6, dtype=torch.float64)
    _, _, kept = ltm(x, attention_mask=torch.zeros(2, 13, dtype=torch.long), state=s_in)
    torch.testing.assert_close(kept, s_in)


def test_mag_gate_formula():
    gate = MAGGate(6).double()
    y, mem = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    out, g = gate(y, mem)
    g_ref = torch.sigmoid(torch.cat((y, mem), -1) @ gate.proj.weight.T + gate.proj.bias)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(out, g_ref * y + (1 - g_ref) * mem)


def test_binary_entropy():
    p = torch.tensor([0.5, 0.1, 0.999])
    ref = -(p * p.log() + (1 - p) * (1 - p).log())
    torch.testing.assert_close(binary_entropy(p), ref)
    torch.testing.assert_close(binary_entropy(torch.tensor(0.5)), torch.tensor(0.6931472))


def test_memory_as_gate_is_causal_and_pure():
    mag = MemoryAsGate(12, 6, 0.5, 0.999, 4, 1e-6).double()
    x = torch.randn(2, 20, 12, dtype=torch.float64)
    out, _, _ = mag(x)
    x2 = x.clone()
    x2[:, 11:] = torch.randn_like(x2[:, 11:])
    out2, _, _ = mag(x2)
    torch.testing.assert_close(out2[:, :11], out[:, :11], rtol=0, atol=0)
    torch.testing.assert_close(mag(x[1:])[0], out[1:], rtol=1e-12, atol=1e-12)
