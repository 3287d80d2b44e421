"""QK-clip in the trainer: ``--qk-clip TAU`` rescales exactly the heads whose max logit (checked
against a float64 recomputation) exceeded TAU, by sqrt(TAU / S_h), after the optimizer step; the
``attn/max_logit`` metric is that max; the recomputed logits after a clip are <= TAU."""

from __future__ import annotations

import math

import pytest
import torch
from cognate_model.attention import Attention, apply_rotary, rotary_cos_sin, sliding_window_mask
from cognate_train import engine as engine_mod
from cognate_train.cli import main
from cognate_train.config import build_config
from cognate_train.trainer import CurriculumTask
from mugrokfast import qk_clip_


def reference_max(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max over (b, t, s allowed) of q.k / sqrt(d), naively in float64: (H,)."""
    scores = torch.einsum("bhtd,bhsd->bhts", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~mask.expand_as(scores), -math.inf).amax(dim=(0, 2, 3))


def _rotated(m: Attention, x, weight, cos, sin) -> torch.Tensor:
    """(B, H, T, hd) rotary-rotated projection of x, in float64."""
    y = x.double() @ weight.detach().double().T
    y = y.view(*y.shape[:2], m.n_heads, m.head_dim).transpose(1, 2)
    return apply_rotary(y, cos.double(), sin.double())


def _reference_hooks(model) -> tuple[dict[str, torch.Tensor], list]:
    """Per Attention: the float64 max logit of every call (running max), from its inputs and
    its weights at call time."""
    found: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, Attention):
            continue

        def hook(m, args, kwargs, name=name):
            x, mask, cos, sin = (a.detach() for a in args[:4])
            q = _rotated(m, x, m.q_proj.weight, cos, sin)
            kv = kwargs.get("kv")
            k = kv[0].detach() if kv is not None else _rotated(m, x, m.k_proj.weight, cos, sin)
            s = reference_max(q, k, mask)
            found[name] = s if name not in found else torch.maximum(found[name], s)

        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    return found, handles


def _one_step(tmp_path, name: str, **flags):
    """A fresh smoke-preset engine (same seed: same init and batch), one train_step; returns the
    engine, the float64 reference maxima per attention, and the weights after the step."""
    cfg = build_config("train", "smoke", None, {"max_steps": 2, **flags})
    task = CurriculumTask(cfg, "reasoning", torch.device("cpu"))
    eng = engine_mod.Engine(task, cfg, tmp_path / name, log=lambda m: None)
    refs, handles = _reference_hooks(task.model)
    eng.train_step(task.batches(0))
    for h in handles:
        h.remove()
    weights = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    return eng, refs, weights


def test_qk_clip_rescales_exactly_the_heads_over_tau(tmp_path, single_thread):
    plain, refs, w_plain = _one_step(tmp_path, "plain", log_every=1)
    assert any(n.startswith("recursion") for n in refs) and len(refs) >= 3
    every = torch.cat(list(refs.values()))
    # attn/max_logit of a logged step: the max over every attention and head
    assert plain.max_logit == pytest.approx(float(every.max()), rel=1e-5)
    tau = float(every.median())  # about half the heads are clipped
    clipped, refs_c, w_clip = _one_step(tmp_path, "clip", log_every=1, qk_clip=tau)
    for name in refs:
        torch.testing.assert_close(refs_c[name], refs[name])  # same forward before the clip
    scaled = set()
    for name, s in refs.items():
        factor = torch.where(s > tau, tau / s, torch.ones_like(s)).sqrt()  # per head, on W_q, W_k
        n_heads = s.numel()
        for proj in ("q_proj", "k_proj"):
            key = f"{name}.{proj}.weight"
            want = w_plain[key].double().view(n_heads, -1) * factor[:, None]
            got = w_clip[key].double().view(n_heads, -1)
            torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-7)
            scaled.add(key)
    assert (every > tau).sum() >= 1 and (every <= tau).sum() >= 1
    for key, value in w_plain.items():
        if key not in scaled:  # everything else is the plain step's, bit for bit
            assert torch.equal(w_clip[key], value), key
    assert clipped.max_logit == pytest.approx(plain.max_logit, rel=1e-6)  # before the clip


def test_max_logits_are_recorded_only_on_logged_steps_without_qk_clip(tmp_path, single_thread):
    eng, _, _ = _one_step(tmp_path, "quiet", log_every=4)  # step 1 is not logged
    assert eng.max_logit is None
    attns = [m for m in eng.task.model.modules() if isinstance(m, Attention)]
    assert all(m.max_logits is None and not m.record_max_logits for m in attns)


def test_recomputed_logits_after_qk_clip_are_at_most_tau():
    torch.manual_seed(1)
    attn = Attention(32, 4).double()
    with torch.no_grad():
        attn.q_proj.weight.mul_(torch.tensor([1.0, 6.0, 1.0, 8.0]).repeat_interleave(8)[:, None])
    x = torch.randn(3, 12, 32, dtype=torch.float64) * 2
    cos, sin = rotary_cos_sin(12, 8, 10000.0, x.device, x.dtype)
    mask = sliding_window_mask(12, 5)
    attn.record_max_logits = True
    attn(x, mask, cos, sin)
    before = attn.max_logits.clone()
    tau = float(before.sort().values[1]) + 0.5  # two heads above, two below
    untouched = before <= tau
    assert untouched.sum() == 2
    q_rows = attn.q_proj.weight.detach().clone().view(4, 8, -1)
    qk_clip_(attn.q_proj.weight, attn.k_proj.weight, before, attn.n_heads, tau)
    attn.reset_max_logits()
    attn(x, mask, cos, sin)
    after = attn.max_logits
    assert (after <= tau * (1 + 1e-6)).all()
    torch.testing.assert_close(after[~untouched], torch.full_like(after[~untouched], tau))
    assert torch.equal(after[untouched], before[untouched])
    assert torch.equal(attn.q_proj.weight.view(4, 8, -1)[untouched], q_rows[untouched])


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_qk_clip_is_a_one_line_error(value, capsys, tmp_path):
    assert main(["train", "--preset", "smoke", "--qk-clip", value,
                 "--output-dir", str(tmp_path)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "qk-clip" in err and len(err.strip().splitlines()) == 1


def test_qk_clip_flag_and_toml_key(tmp_path):
    from cognate_train.cli import _config, build_parser

    ns = build_parser().parse_args(["train", "--qk-clip", "30"])
    assert _config("train", ns).qk_clip == 30.0
    toml = tmp_path / "run.toml"
    toml.write_text("qk_clip = 12.5\n")
    assert build_config("train", None, str(toml), {}).qk_clip == 12.5
    assert build_config("train", None, None, {}).qk_clip == 0.0  # off by default
