"""MuGrokfast against torch.optim.Muon + torch.optim.AdamW (+ the paper's filters)."""

from __future__ import annotations

import copy

import pytest
import torch
from mugrokfast import MuGrokfast, param_groups
from torch import nn

from .conftest import TinyLM, lm_loss
from .test_filters import paper_ema, paper_ma

HP = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, muon_lr=0.03, momentum=0.9)


def _groups(model):
    # torch's Muon takes 2-D params only: keep the conv kernel on AdamW for these comparisons
    return param_groups(model, adamw=["conv.weight"])


def _reference_run(model, steps, filt=None, **fkw):
    """torch.optim.Muon (bf16 NS, as torch does) + torch.optim.AdamW on the filtered grads."""
    g_muon, g_adam = _groups(model)
    muon = torch.optim.Muon(g_muon["params"], lr=HP["muon_lr"], weight_decay=HP["weight_decay"],
                            momentum=HP["momentum"])  # fmt: skip
    adamw = torch.optim.AdamW(g_adam["params"], lr=HP["lr"], betas=HP["betas"], eps=HP["eps"],
                              weight_decay=HP["weight_decay"])  # fmt: skip
    params = list(model.parameters())
    history: list[list[torch.Tensor]] = []
    for t in range(steps):
        model.zero_grad()
        lm_loss(model, t).backward()
        history.append([p.grad.clone() for p in params])
        if filt is not None:
            for k, p in enumerate(params):
                p.grad = filt([h[k] for h in history], **fkw)[-1]
        muon.step()
        adamw.step()
    return model


def _ours(model, steps, **kw):
    opt = MuGrokfast(_groups(model), **HP, ns_dtype=torch.bfloat16, **kw)
    for t in range(steps):
        opt.zero_grad()
        lm_loss(model, t).backward()
        opt.step()
    return model, opt


def _dual(stream, alpha, lamb, window, ma_lamb):
    ema, ma = paper_ema(stream, alpha, lamb), paper_ma(stream, window, ma_lamb)
    return [g + (e - g) + (m - g) for g, e, m in zip(stream, ema, ma, strict=True)]


@pytest.mark.parametrize("block", [None, 32], ids=["whole-tensors", "blocks-of-32"])
@pytest.mark.parametrize("foreach", [None, False, True])
def test_no_filter_is_bit_identical_to_torch_muon_plus_adamw(foreach, block, monkeypatch):
    """foreach=None: the cache-blocked CPU loops (mugrokfast._blocked); blocks of 32 elements
    split every tensor of TinyLM into several blocks and a shorter tail."""
    import mugrokfast._blocked

    if block:
        monkeypatch.setattr(mugrokfast._blocked, "BLOCK", block)
    model = TinyLM()
    ref = _reference_run(copy.deepcopy(model), 6)
    ours, _ = _ours(model, 6, grokfast=None, foreach=foreach)
    for (n, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), n


def test_ema_matches_paper_filter_then_torch():
    model = TinyLM()
    ref = _reference_run(copy.deepcopy(model), 6, paper_ema, alpha=0.9, lamb=2.0)
    ours, _ = _ours(model, 6, grokfast="ema", grokfast_alpha=0.9, grokfast_lambda=2.0)
    for (n, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        # the filter's lerp form rounds differently from the paper's (a few ulp; see
        # test_filters.py), and bf16 Newton-Schulz can turn an ulp into a bf16 rounding flip
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3, msg=n)


@pytest.mark.parametrize("block", [None, 32], ids=["whole-tensors", "blocks-of-32"])
@pytest.mark.parametrize("batched", [False, True], ids=["per-matrix", "batched-ns"])
@pytest.mark.parametrize("foreach", [None, False, True])
@pytest.mark.parametrize(
    "fkw",
    [
        dict(filter="ema", alpha=0.9, lamb=2.0),
        dict(filter="dual", alpha=0.9, lamb=2.0, window=2, ma_lamb=3.0, warmup_steps=1),
    ],
    ids=["ema", "dual+warmup"],
)
def test_fused_filter_paths_equal_filter_then_torch_bit_for_bit(
    fkw, foreach, batched, block, monkeypatch
):
    """The amplification added inside Muon's Nesterov step and the CPU AdamW loop (no
    materialised filtered gradients), whole or in cache-sized blocks, gives torch.optim.Muon/
    AdamW's numbers on the output of the standalone grokfast_filter, exactly."""
    import mugrokfast._blocked
    import mugrokfast.muon as muon_mod
    from mugrokfast import grokfast_filter

    monkeypatch.setattr(muon_mod, "BATCH_ON_CPU", batched)  # same-shaped matrices stacked
    if block:
        monkeypatch.setattr(mugrokfast._blocked, "BLOCK", block)
    model = TinyLM()
    ref = copy.deepcopy(model)
    g_muon, g_adam = _groups(ref)
    muon = torch.optim.Muon(g_muon["params"], lr=HP["muon_lr"], weight_decay=HP["weight_decay"],
                            momentum=HP["momentum"])  # fmt: skip
    adamw = torch.optim.AdamW(g_adam["params"], lr=HP["lr"], betas=HP["betas"], eps=HP["eps"],
                              weight_decay=HP["weight_decay"], foreach=foreach)  # fmt: skip
    filt = dict(window=100, ma_lamb=0.0) | fkw
    states = [{} for _ in ref.parameters()]
    for t in range(6):
        ref.zero_grad()
        lm_loss(ref, t).backward()
        params = list(ref.parameters())
        filtered = grokfast_filter([p.grad for p in params], states, **filt)
        for p, g in zip(params, filtered, strict=True):
            p.grad = g
        muon.step()
        adamw.step()
    ours, _ = _ours(
        model,
        6,
        grokfast=fkw["filter"],
        grokfast_alpha=fkw["alpha"],
        grokfast_lambda=fkw["lamb"],
        grokfast_window=fkw.get("window", 100),
        grokfast_ma_lambda=fkw.get("ma_lamb", 5.0),
        grokfast_warmup_steps=fkw.get("warmup_steps", 0),
        foreach=foreach,
    )
    for (n, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("mode", ["ma", "dual"])
def test_ma_and_dual_match_paper_filters_then_torch(mode):
    model = TinyLM()
    if mode == "ma":
        ref = _reference_run(copy.deepcopy(model), 8, paper_ma, window=3, lamb=2.0)
    else:
        ref = _reference_run(copy.deepcopy(model), 8, _dual, alpha=0.9, lamb=1.0, window=3,
                             ma_lamb=2.0)  # fmt: skip
    ours, _ = _ours(model, 8, grokfast=mode, grokfast_alpha=0.9, grokfast_lambda=1.0,
                    grokfast_window=3, grokfast_ma_lambda=2.0)  # fmt: skip
    for (n, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        # MA sums in a different order (ring buffer vs re-sum) and bf16 NS amplifies ulps
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3, msg=n)


def test_warmup_updates_state_but_does_not_amplify():
    model = TinyLM()
    base, _ = _ours(copy.deepcopy(model), 3, grokfast=None)
    warm, opt = _ours(copy.deepcopy(model), 3, grokfast="ema", grokfast_warmup_steps=3)
    for a, b in zip(warm.parameters(), base.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(opt.state[p]["grokfast_step"] == 3 for p in warm.parameters())
    # and afterwards it equals the paper's filter, whose EMA started at step 1
    ref = _reference_run(copy.deepcopy(model), 5, paper_ema, alpha=0.98, lamb=2.0)
    hybrid = copy.deepcopy(model)
    opt = MuGrokfast(_groups(hybrid), **HP, ns_dtype=torch.bfloat16, grokfast_warmup_steps=3)
    for t in range(5):
        opt.zero_grad()
        lm_loss(hybrid, t).backward()
        opt.step()
    for a, b in zip(hybrid.parameters(), ref.parameters(), strict=True):
        assert not torch.equal(a, b)  # steps 1-3 differ (no amplification) ...
    filt = MuGrokfast([torch.nn.Parameter(torch.zeros(3))], grokfast_warmup_steps=2)
    p = filt.param_groups[0]["params"][0]
    grads = [torch.randn(3) for _ in range(4)]
    expected = paper_ema(grads, 0.98, 2.0)
    for t, g in enumerate(grads):  # ... while the filter state follows the paper from step 1
        p.grad = g
        filt.step()
        if t >= 2:
            torch.testing.assert_close(filt.state[p]["grokfast_ema"] * 2.0 + g, expected[t])


def test_muon_lr_lives_in_group_lr_so_schedulers_scale_both():
    model = TinyLM()
    opt = MuGrokfast(param_groups(model), lr=1e-3, muon_lr=0.02)
    muon_g, adam_g = opt.param_groups
    assert muon_g["use_muon"] and muon_g["lr"] == 0.02 and adam_g["lr"] == 1e-3
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s + 1))
    lm_loss(model, 0).backward()
    opt.step()
    sched.step()
    assert muon_g["lr"] == pytest.approx(0.005) and adam_g["lr"] == pytest.approx(2.5e-4)
    explicit = MuGrokfast([{"params": [model.fc1.weight], "use_muon": True, "lr": 0.1}])
    assert explicit.param_groups[0]["lr"] == 0.1
    per_group = MuGrokfast([{"params": [model.fc1.weight], "muon_lr": 0.07}])
    assert per_group.param_groups[0]["lr"] == 0.07


def test_plain_parameters_are_split_by_ndim():
    model = TinyLM()
    opt = MuGrokfast(model.parameters())
    muon_g, adam_g = opt.param_groups
    assert muon_g["use_muon"] and all(p.ndim >= 2 for p in muon_g["params"])
    assert not adam_g["use_muon"] and all(p.ndim < 2 for p in adam_g["params"])
    assert len(muon_g["params"]) + len(adam_g["params"]) == len(list(model.parameters()))


def test_per_group_overrides_and_set_grokfast_lambda():
    model = TinyLM()
    g_muon, g_adam = param_groups(model)
    g_adam["grokfast"] = "ma"
    g_adam["grokfast_window"] = 4
    opt = MuGrokfast([g_muon, g_adam], grokfast="ema")
    assert [g["grokfast"] for g in opt.param_groups] == ["ema", "ma"]
    opt.set_grokfast_lambda(0.5)
    assert [g["grokfast_lambda"] for g in opt.param_groups] == [0.5, 0.5]
    assert opt.param_groups[0]["grokfast_ma_lambda"] == 5.0  # ema group: MA lambda untouched
    assert opt.param_groups[1]["grokfast_ma_lambda"] == 0.5  # "ma" group: its only lambda
    opt.set_grokfast_lambda(1.0, ma_lamb=3.0)
    assert [g["grokfast_ma_lambda"] for g in opt.param_groups] == [3.0, 3.0]
    with pytest.raises(ValueError, match="lamb"):
        opt.set_grokfast_lambda(-1.0)


def test_step_leaves_p_grad_untouched():
    model = TinyLM()
    opt = MuGrokfast(param_groups(model), grokfast="dual", grokfast_window=2)
    for t in range(3):
        opt.zero_grad()
        lm_loss(model, t).backward()
        raw = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, r) for p, r in zip(model.parameters(), raw, strict=True))


def test_grad_scaler_sees_unscaled_grads_and_skips_inf_steps():
    """GradScaler.step() unscales before calling step(): same result as no scaler at all."""
    model = TinyLM()
    plain = copy.deepcopy(model)
    opt_s = MuGrokfast(param_groups(model), grokfast="ema")
    opt_p = MuGrokfast(param_groups(plain), grokfast="ema")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for t in range(4):
        opt_s.zero_grad()
        scaler.scale(lm_loss(model, t)).backward()
        scaler.unscale_(opt_s)  # as for clipping; GradScaler.step would do it otherwise
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt_s)
        scaler.update()
        opt_p.zero_grad()
        lm_loss(plain, t).backward()
        nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt_p.step()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    # an overflowing step is skipped whole: params and filter state unchanged
    before = copy.deepcopy(opt_s.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    opt_s.zero_grad()
    scaler.scale(lm_loss(model, 9) * float("inf")).backward()
    scaler.step(opt_s)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights, strict=True))
    after = opt_s.state_dict()["state"]
    for k, st in before["state"].items():
        assert torch.equal(after[k]["grokfast_ema"], st["grokfast_ema"])


def test_grad_accumulation_filters_the_accumulated_gradient():
    """Two micro-batches accumulated (zero_grad(set_to_none=False) between steps)."""
    model = TinyLM()
    ref = copy.deepcopy(model)
    opt = MuGrokfast(_groups(model), **HP, ns_dtype=torch.bfloat16, grokfast="ema")
    ref_opt = MuGrokfast(_groups(ref), **HP, ns_dtype=torch.bfloat16, grokfast="ema")
    for t in range(3):
        opt.zero_grad(set_to_none=False)
        for micro in range(2):
            (lm_loss(model, 10 * t + micro) / 2).backward()
        opt.step()
        ref_opt.zero_grad()
        loss = (lm_loss(ref, 10 * t) + lm_loss(ref, 10 * t + 1)) / 2
        loss.backward()
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


BAD = [
    (dict(lr=-1.0), "lr"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(muon_lr=-1.0), "muon_lr"),
    (dict(momentum=1.5), "momentum"),
    (dict(ns_steps=0), "ns_steps"),
    (dict(adjust_lr_fn="x"), "adjust_lr_fn"),
    (dict(ns_dtype="bf16"), "ns_dtype"),
    (dict(grokfast="kalman"), "grokfast"),
    (dict(grokfast_alpha=1.0), "grokfast_alpha"),
    (dict(grokfast_lambda=-2.0), "grokfast_lambda"),
    (dict(grokfast_window=0), "grokfast_window"),
    (dict(grokfast_ma_lambda=-1.0), "grokfast_ma_lambda"),
    (dict(grokfast_warmup_steps=-1), "grokfast_warmup_steps"),
    (dict(grokfast_history_dtype=torch.int8), "grokfast_history_dtype"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MuGrokfast(TinyLM().parameters(), **kwargs)


@pytest.mark.parametrize("kwargs,match", BAD[:2] + BAD[9:11])
def test_bad_per_group_values_are_refused_too(kwargs, match):
    model = TinyLM()
    with pytest.raises(ValueError, match=match):
        MuGrokfast([{"params": [model.fc1.weight], **kwargs}])


def test_muon_group_with_a_vector_is_refused():
    with pytest.raises(ValueError, match="use_muon"):
        MuGrokfast([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}])


def test_sparse_and_complex_grads_raise_clearly():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = MuGrokfast([{"params": emb.parameters(), "use_muon": False}])
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    c = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    c.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        MuGrokfast([c]).step()


def test_a_refused_group_is_not_added():
    model = TinyLM()
    opt = MuGrokfast([model.fc1.weight])
    with pytest.raises(ValueError, match="grokfast_window"):
        opt.add_param_group({"params": [model.fc2.weight], "grokfast_window": 0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [model.fc2.weight]})  # still possible with valid options
    assert len(opt.param_groups) == 2
