"""TRM recursion, ACT halting and the loss terms, each against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from cognate_model import CognateConfig, CognateForCausalLM
from cognate_model.heads import act_losses, expected_steps, halting_steps


def _ids(batch=3, seq=30):
    return torch.randint(0, 256, (batch, seq))


def test_halting_steps_is_first_cycle_over_threshold():
    logits = torch.randn(4, 3, 50) * 2
    steps = halting_steps(logits, 0.5)
    p = torch.sigmoid(logits)
    for b in range(3):
        for t in range(50):
            expect = next((c + 1 for c in range(4) if p[c, b, t] > 0.5), 4)
            assert steps[b, t] == expect


def test_expected_steps_matches_the_halting_distribution():
    logits = torch.randn(3, 2, 5, dtype=torch.float64)
    p = torch.sigmoid(logits)
    # P(stop at 1) = p1, at 2 = (1-p1) p2, at 3 = the rest: E = sum c * P(stop at c)
    stop = [p[0], (1 - p[0]) * p[1], (1 - p[0]) * (1 - p[1])]
    ref = sum((c + 1) * s for c, s in enumerate(stop))
    torch.testing.assert_close(expected_steps(logits), ref)


def test_act_losses_formulas():
    logits = torch.randn(3, 2, 6, dtype=torch.float64)
    correct = torch.rand(3, 2, 6) > 0.5
    valid = torch.rand(2, 6) > 0.3
    out = act_losses(logits, correct, valid, diversity_target=0.1)
    sel = valid.expand(3, -1, -1)
    bce = F.binary_cross_entropy_with_logits(logits[sel], correct[sel].double())
    torch.testing.assert_close(out["bce"], bce)
    torch.testing.assert_close(out["ponder"], expected_steps(logits)[valid].mean() / 3)
    p = torch.sigmoid(logits)
    var = torch.stack([p[c][valid].var(unbiased=False) for c in range(3)])
    torch.testing.assert_close(out["diversity"], (0.1 - var).clamp_min(0).mean())


def test_loss_is_weighted_deep_supervision_plus_act_and_gate_terms(make_tiny):
    model = make_tiny().double().train()
    cfg = model.config
    ids = _ids()
    labels = ids.clone()
    labels[0, :7] = -100
    out = model(ids, labels=labels, output_hidden_states=True)
    targets = labels[:, 1:]
    ce = [
        F.cross_entropy(
            model.lm_logits(y)[:, :-1].reshape(-1, 256), targets.reshape(-1), ignore_index=-100
        )
        for y in out.recursion_states
    ]
    torch.testing.assert_close(out.cycle_losses, torch.stack(ce))
    torch.testing.assert_close(out.lm_loss, ce[-1])
    w = torch.tensor([0.33, 0.5, 0.75, 1.0], dtype=torch.float64)
    ds = (w / w.sum() * torch.stack(ce)).sum()
    m = out.metrics
    expected = (
        ds
        + cfg.act_loss_weight * m["act/bce"]
        + cfg.ponder_weight * m["act/ponder"]
        + cfg.act_diversity_weight * m["act/diversity"]
        + cfg.gate_entropy_weight * (math.log(2) - m["ltm/gate_entropy"])
    )
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    # the ACT target: does cycle c's argmax already equal the label?
    halt = out.halt_probs
    correct = torch.stack(
        [model.lm_logits(y)[:, :-1].argmax(-1) == targets for y in out.recursion_states[1:]]
    )
    valid = (targets != -100).expand(3, -1, -1)
    bce = F.binary_cross_entropy(halt[:, :, :-1][valid], correct[valid].double())
    assert math.isclose(m["act/bce"], bce.item(), rel_tol=1e-6)


def test_lm_loss_matches_hf_shift_convention(make_tiny):
    model = make_tiny()
    ids = _ids()
    out = model(ids, labels=ids)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, ref)


def test_attention_mask_excludes_padding_from_loss_and_metrics(make_tiny):
    model = make_tiny().double()
    ids = _ids(1, 20)
    padded = torch.cat((torch.zeros(1, 5, dtype=torch.long), ids), 1)
    mask = torch.cat((torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 20, dtype=torch.long)), 1)
    a = model(padded, attention_mask=mask, labels=padded)
    b = model(ids, labels=ids)
    torch.testing.assert_close(a.lm_loss, b.lm_loss)
    torch.testing.assert_close(a.act_steps_mean, b.act_steps_mean)
    torch.testing.assert_close(a.ltm_gate_mean, b.ltm_gate_mean)
    torch.testing.assert_close(a.memory_norm, b.memory_norm)


def test_halted_tokens_keep_the_answer_of_their_halting_cycle(make_tiny):
    """Inference freezing: a token's final logits are its y at the cycle it halted, which equals
    the unfrozen run's y at that cycle (tokens do not read each other's y/z)."""
    model = make_tiny().double()
    with torch.no_grad():  # halting probabilities spread over (0, 1)
        model.recursion.act_head.proj.bias.fill_(0.0)
        model.recursion.act_head.proj.weight.mul_(30.0)
    ids = _ids(4, 40)
    free = model(ids, act_halting=False, output_hidden_states=True)
    p = free.halt_probs
    # a threshold that one token crosses exactly between cycle 1 and 2
    rise = torch.where(p[1] > p[0], p[1] - p[0], torch.zeros_like(p[0]))
    i = rise.flatten().argmax()
    model.config.act_threshold = ((p[0].flatten()[i] + p[1].flatten()[i]) / 2).item()
    frozen = model(ids, act_halting=True)
    steps = frozen.act_steps
    assert {1, 2} <= set(steps.unique().tolist()), "need tokens halting at several cycles"
    # the halting decision comes from the unfrozen run's probabilities
    assert torch.equal(steps, halting_steps(torch.logit(p), model.config.act_threshold))
    per_cycle = torch.stack([model.lm_logits(y) for y in free.recursion_states[1:]])  # (C,B,T,V)
    expect = per_cycle.gather(0, (steps - 1)[None, ..., None].expand(1, -1, -1, 256))[0]
    torch.testing.assert_close(frozen.logits, expect, rtol=0, atol=1e-10)
    # and the reported mean is the mean cycles used
    torch.testing.assert_close(frozen.act_steps_mean, steps.float().mean())


def test_all_halted_stops_early_with_identical_results(make_tiny):
    model = make_tiny().double()
    with torch.no_grad():
        model.recursion.act_head.proj.bias.fill_(30.0)  # everything halts after cycle 1
    ids = _ids()
    out = model(ids, output_hidden_states=True)
    assert (out.act_steps == 1).all()
    assert len(out.recursion_states) == model.config.trm_cycles + 1
    free = model(ids, act_halting=False, output_hidden_states=True)
    torch.testing.assert_close(out.logits, model.lm_logits(free.recursion_states[1]))


def test_speed_specialization_uses_fewer_cycles_than_reasoning():
    """Same weights (the specializations differ only in config), different halting."""
    torch.manual_seed(0)
    reasoning = CognateForCausalLM(CognateConfig.from_preset("cognate-tiny", "reasoning")).eval()
    speed = CognateForCausalLM(CognateConfig.from_preset("cognate-tiny", "speed")).eval()
    speed.load_state_dict(reasoning.state_dict())
    ids = _ids(4, 64)
    steps_r = reasoning(ids).act_steps_mean.item()
    steps_s = speed(ids).act_steps_mean.item()
    assert steps_s < steps_r
    assert steps_s <= speed.config.trm_cycles < reasoning.config.trm_cycles


@pytest.mark.parametrize("mode", ["per_cycle", "all_cycles", "last_cycle"])
def test_gradients_reach_every_parameter(make_tiny, mode):
    model = make_tiny(recursion_gradient=mode).train()
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_untied_head_gets_its_own_gradient(make_tiny):
    model = make_tiny(tie_word_embeddings=False).train()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    assert model.lm_head.weight.grad.abs().max() > 0
    assert model.model.embed_tokens.weight.grad.abs().max() > 0


def test_gradient_modes_of_the_cycles(make_tiny):
    """per_cycle and all_cycles: every cycle's answer carries gradient. last_cycle (TRM deep
    recursion): the intermediate cycles run under no_grad, only y_0 and the last do."""
    ids = _ids()
    for mode in ("per_cycle", "all_cycles"):
        ys = make_tiny(recursion_gradient=mode).train()(ids, output_hidden_states=True)
        assert all(y.requires_grad for y in ys.recursion_states)
    ys = make_tiny(recursion_gradient="last_cycle").train()(ids, output_hidden_states=True)
    flags = [y.requires_grad for y in ys.recursion_states]
    assert flags == [True, False, False, True]


@pytest.mark.parametrize("mode, reaches", [("per_cycle", False), ("all_cycles", True)])
def test_only_all_cycles_backpropagates_into_earlier_cycles(make_tiny, mode, reaches):
    """The last answer's gradient reaches y_1 through the cycles between (all_cycles) or not at
    all (per_cycle: each cycle starts from a detached (y, z))."""
    model = make_tiny(recursion_gradient=mode).train()
    ys = model(_ids(), output_hidden_states=True).recursion_states
    (grad,) = torch.autograd.grad(ys[-1].sum(), ys[1], allow_unused=True)
    assert (grad is not None and bool(grad.abs().max() > 0)) == reaches


def test_detach_between_cycles_is_read_as_the_old_name_of_recursion_gradient():
    from cognate_model import CognateConfig

    for old, new in ((True, "per_cycle"), (False, "last_cycle")):
        with pytest.warns(FutureWarning, match="recursion_gradient"):
            assert CognateConfig(detach_between_cycles=old).recursion_gradient == new
    with pytest.raises(ValueError, match="recursion_gradient must be one of"):
        CognateConfig(recursion_gradient="every")


def test_metrics_are_floats_with_the_trainer_prefixes(make_tiny):
    model = make_tiny().train()
    ids = _ids()
    out = model(ids, labels=ids)
    assert out.metrics and all(isinstance(v, float) for v in out.metrics.values())
    assert {k.split("/")[0] for k in out.metrics} == {"act", "ltm", "trm"}
    assert out.metrics["act/steps_mean"] == pytest.approx(out.act_steps_mean.item())
    assert out.metrics["ltm/usage"] == pytest.approx(1 - out.ltm_gate_mean.item())
    assert out.metrics["trm/loss_y3"] == pytest.approx(out.lm_loss.item())
    assert model(ids, return_metrics=False).metrics is None
