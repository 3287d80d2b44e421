"""bf16 autocast, float64, CUDA (when present) and torch.compile against the fp32 eager model."""

import pytest
import torch


def _ids(batch=2, seq=32):
    return torch.randint(0, 256, (batch, seq))


def test_bf16_autocast_close_to_fp32(make_tiny):
    model = make_tiny().train()
    ids = _ids()
    ref = model(ids, labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref.loss.item()) < 0.02 * ref.loss.item()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # the memory scan stays in fp32 under autocast
    assert out.memory_state.dtype == torch.float32


def test_float64_model_matches_float32(make_tiny):
    model = make_tiny()
    ids = _ids()
    ref = model(ids).logits
    out = model.double()(ids).logits
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(make_tiny):
    model = make_tiny()
    ids = _ids()
    ref = model(ids, labels=ids)
    gpu = model.cuda()
    out = gpu(ids.cuda(), labels=ids.cuda())
    torch.testing.assert_close(out.logits.cpu(), ref.logits, rtol=1e-3, atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(gpu(ids.cuda(), labels=ids.cuda()).loss)


@pytest.mark.slow
def test_torch_compile_matches_eager(make_tiny):
    """Compiling takes minutes on a loaded 2-core CPU, hence slow; eager is covered above."""
    model = make_tiny(trm_cycles=2).train()
    ids = _ids()
    ref = model(ids, labels=ids)
    ref.loss.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model)
    out = compiled(ids, labels=ids)
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    for g, r in zip((p.grad for p in model.parameters()), ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)
    model.eval()
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)


def test_rms_norm_formula_and_bf16_inputs():
    from cognate_model.attention import RMSNorm

    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8, dtype=torch.float64)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    torch.testing.assert_close(norm(x), ref)  # float64 stays float64
    xb = x.to(torch.bfloat16)
    out = norm(xb)
    assert out.dtype == torch.bfloat16
    ref_b = xb.double() / torch.sqrt((xb.double() ** 2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out.double(), ref_b * norm.weight.double(), rtol=1e-2, atol=1e-2)
