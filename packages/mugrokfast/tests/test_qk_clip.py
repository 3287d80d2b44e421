"""qk_clip_: after rescaling, the same inputs give logits at most tau (exactly tau if clipped)."""

from __future__ import annotations

import pytest
import torch
from mugrokfast import qk_clip_


def _max_logits(x, wq, wk, n_heads, n_kv):
    """Per-head max of (x Wq^h)(x Wk^h)^T / sqrt(d) over all positions. x: (T, d_model)."""
    hd = wq.shape[0] // n_heads
    q = (x @ wq.T).view(-1, n_heads, hd).transpose(0, 1)  # (H, T, hd)
    k = (x @ wk.T).view(-1, n_kv, hd).transpose(0, 1).repeat_interleave(n_heads // n_kv, 0)
    return (q @ k.transpose(1, 2) / hd**0.5).amax(dim=(1, 2))  # (H,)


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2)])
def test_logit_bound_holds_after_clip(n_heads, n_kv):
    torch.manual_seed(0)
    d, hd, tau = 16, 4, 50.0
    x = torch.randn(10, d)
    wq = (
        torch.randn(n_heads * hd, d)
        * torch.tensor([0.3, 3.0, 1.0, 4.0]).repeat_interleave(hd)[:, None]
    )
    wk = torch.randn(n_kv * hd, d) * 2
    before = _max_logits(x, wq, wk, n_heads, n_kv)
    assert (before > tau).any() and (before < tau).any()
    wq0, wk0 = wq.clone(), wk.clone()
    factor = qk_clip_(wq, wk, before, n_heads, tau=tau)
    after = _max_logits(x, wq, wk, n_heads, n_kv)
    clipped = before > tau
    torch.testing.assert_close(after[clipped], torch.full_like(after[clipped], tau))
    torch.testing.assert_close(after[~clipped], before[~clipped])
    torch.testing.assert_close(factor, torch.where(clipped, tau / before, torch.ones_like(before)))
    hq = wq.view(n_heads, hd, d)
    assert torch.equal(hq[~clipped], wq0.view(n_heads, hd, d)[~clipped])  # others untouched
    if n_kv == n_heads:  # MuonClip: both sides scaled by sqrt(tau / S)
        s = (tau / before[clipped]).sqrt()[:, None, None]
        torch.testing.assert_close(hq[clipped], wq0.view(n_heads, hd, d)[clipped] * s)
        torch.testing.assert_close(
            wk.view(n_kv, hd, d)[clipped], wk0.view(n_kv, hd, d)[clipped] * s
        )
    else:
        assert torch.equal(wk, wk0)


def test_default_tau_is_100_and_errors():
    wq, wk = torch.ones(4, 3), torch.ones(4, 3)
    assert torch.equal(qk_clip_(wq, wk, [99.0, 400.0], 2), torch.tensor([1.0, 0.25]))
    with pytest.raises(ValueError, match="n_heads"):
        qk_clip_(wq, wk, [1.0], 0)
    with pytest.raises(ValueError, match="q_weight"):
        qk_clip_(wq, wk, [1.0] * 3, 3)
    with pytest.raises(ValueError, match="max_logits"):
        qk_clip_(wq, wk, [1.0] * 3, 2)
    with pytest.raises(ValueError, match="tau"):
        qk_clip_(wq, wk, [1.0, 1.0], 2, tau=0.0)
    with pytest.raises(ValueError, match="k_weight"):
        qk_clip_(wq, torch.ones(4, 5), [1.0, 1.0], 2)
