"""Config validation, presets, specializations and parameter counts."""

import pytest
import torch
from cognate_model import PRESETS, SPECIALIZATIONS, CognateConfig, CognateForCausalLM


def expected_parameters(c: CognateConfig) -> int:
    """Parameter count from the documented architecture, written out by hand."""
    D, F, V, Cm = c.d_model, c.d_ff, c.vocab_size, c.d_memory
    attn, mlp = 4 * D * D, 3 * D * F
    block = attn + mlp + 2 * D  # two RMSNorm gains
    total = V * D + c.n_layers * block + D  # embedding, blocks, final norm
    if c.use_ltm and c.ltm_type == "ema":
        total += 2 * D * Cm + Cm  # down, up, decay logits
        total += 2 * D * D + D + D  # MAG gate (with bias), memory norm
    if c.use_ltm and c.ltm_type == "titans":  # per MAG layer: q, k, v, o, rates, W_0, gate norm,
        # the q/k/v filter (ltm_conv_size taps per channel), the persistent key/value slots
        hd = D // c.n_heads
        total += len(c.memory_layers()) * (4 * D * D + 3 * c.n_heads * (D + 1) + D * hd + D)
        total += len(c.memory_layers()) * (
            3 * D * c.ltm_conv_size + 2 * c.persistent_memory_tokens * D
        )
    total += attn + mlp + D  # the recursion's block: kv norm (its post-norms have no gain)
    if c.use_act:
        total += D + D + 1  # norm, halting Linear(D, 1)
    total += D  # output norm
    if not c.tie_word_embeddings:
        total += V * D
    return total


def count(config: CognateConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in CognateForCausalLM(config).parameters())


@pytest.mark.parametrize("spec", [None, *SPECIALIZATIONS])
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name, spec):
    config = CognateConfig.from_preset(name, spec)
    n = count(config)
    assert n == expected_parameters(config)
    low, high = {
        "cognate-tiny": (0, 5e5),
        "cognate-small": (1e6, 3e6),
        "cognate-25m": (20e6, 30e6),
    }[name]
    assert low <= n <= high, f"{name}/{spec}: {n:,}"


def test_untied_and_ablated_counts_follow_the_formula():
    for kw in (
        {"tie_word_embeddings": False},
        {"use_ltm": False},
        {"use_act": False},
        {"ltm_type": "titans"},
        {"ltm_type": "titans", "mag_layers": [0, 1]},
        {"ltm_type": "titans", "use_ltm": False},
    ):
        config = CognateConfig.from_preset("cognate-tiny", **kw)
        assert count(config) == expected_parameters(config)


def test_specializations_differ_only_in_config():
    base = CognateConfig.from_preset("cognate-25m")
    r, m, s = (
        CognateConfig.from_preset("cognate-25m", x) for x in ("reasoning", "memory", "speed")
    )
    assert s.trm_cycles < base.trm_cycles == r.trm_cycles
    assert base.recursion_gradient == "per_cycle" and r.recursion_gradient == "all_cycles"
    assert r.supervision_weights() == (0.0, 1 / 7, 2 / 7, 4 / 7)  # no weight on y0
    assert s.act_threshold < base.act_threshold < r.act_threshold
    assert s.ponder_weight > base.ponder_weight
    assert base.ltm_type == "ema" and m.ltm_type == "titans" and m.memory_layers() == (7,)
    assert r.specialization == "reasoning" and r.preset == "cognate-25m"


def test_overrides_win_over_preset_and_specialization():
    c = CognateConfig.from_preset("cognate-small", "speed", vocab_size=1000, trm_cycles=5)
    assert c.vocab_size == 1000 and c.trm_cycles == 5 and c.trm_micro_steps == 1


def test_supervision_weights():
    c = CognateConfig()
    w = torch.tensor([0.33, 0.5, 0.75, 1.0])
    assert c.supervision_weights() == pytest.approx((w / w.sum()).tolist())
    c5 = CognateConfig(trm_cycles=6)
    w5 = c5.supervision_weights()
    assert len(w5) == 7 and w5[-1] / w5[0] == pytest.approx(1.0 / 0.33)
    assert all(a < b for a, b in zip(w5, w5[1:], strict=False))
    custom = CognateConfig(trm_cycles=1, deep_supervision_weights=[0.0, 2.0])
    assert custom.supervision_weights() == (0.0, 1.0)


INVALID = [
    ("vocab_size", 0),
    ("d_model", -4),
    ("n_layers", 1.5),
    ("n_heads", 0),
    ("d_ff", 0),
    ("max_seq_len", 0),
    ("window_size", 0),
    ("d_memory", 0),
    ("trm_cycles", 0),
    ("trm_micro_steps", 0),
    ("ltm_chunk_size", 1),
    ("dropout", 1.0),
    ("rope_theta", 0.0),
    ("rms_norm_eps", -1.0),
    ("act_threshold", 1.0),
    ("ponder_weight", -0.1),
    ("gate_entropy_weight", float("nan")),
    ("act_diversity_target", -1),
    ("ltm_decay_min", 0.0),
    ("ltm_decay_max", 1.0),
    ("deep_supervision_weights", [1.0, 1.0]),
    ("specialization", "fast"),
]


@pytest.mark.parametrize("field,value", INVALID)
def test_invalid_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CognateConfig(**{field: value})


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="n_heads"):
        CognateConfig(d_model=64, n_heads=3)
    with pytest.raises(ValueError, match="n_heads"):
        CognateConfig(d_model=60, n_heads=4)  # head_dim 15 is odd: no rotary pairs


def test_from_preset_rejects_unknown_names():
    with pytest.raises(ValueError, match="name"):
        CognateConfig.from_preset("cognate-1b")
    with pytest.raises(ValueError, match="specialization"):
        CognateConfig.from_preset("cognate-tiny", "creative")


def test_config_json_round_trip(tmp_path):
    c = CognateConfig.from_preset("cognate-small", "memory", deep_supervision_weights=[1, 1, 1, 2])
    c.save_pretrained(tmp_path)
    d = CognateConfig.from_pretrained(tmp_path)
    for key in (
        "d_memory",
        "ltm_type",
        "mag_layers",
        "specialization",
        "preset",
        "deep_supervision_weights",
    ):
        assert getattr(d, key) == getattr(c, key)


def test_titans_memory_layers():
    tiny = CognateConfig.from_preset("cognate-tiny")
    assert tiny.ltm_type == "ema" and tiny.memory_layers() == ()
    assert CognateConfig.from_preset("cognate-tiny", ltm_type="titans").memory_layers() == (1,)
    both = CognateConfig.from_preset("cognate-tiny", ltm_type="titans", mag_layers=[1, 0])
    assert both.memory_layers() == (0, 1)
    off = CognateConfig.from_preset("cognate-tiny", ltm_type="titans", use_ltm=False)
    assert off.memory_layers() == ()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"ltm_type": "lstm"}, "ltm_type"),
        ({"mag_layers": [2]}, "mag_layers"),
        ({"mag_layers": [0, 0]}, "mag_layers"),
        ({"mag_layers": []}, "mag_layers"),
        ({"mag_layers": [True]}, "mag_layers"),
        ({"ltm_type": "titans", "window_size": 4}, "ltm_chunk_size"),
        ({"ltm_type": "titans", "ltm_conv_size": 0}, "ltm_conv_size"),
        ({"ltm_type": "titans", "persistent_memory_tokens": -1}, "persistent_memory_tokens"),
        ({"ltm_type": "titans", "persistent_memory_tokens": True}, "persistent_memory_tokens"),
        ({"persistent_memory_tokens": 2}, "persistent_memory_tokens"),  # ema: no MAG layer
    ],
)
def test_titans_fields_are_validated(overrides, match):
    with pytest.raises(ValueError, match=match):
        CognateConfig.from_preset("cognate-tiny", **overrides)


def test_readme_preset_table_matches_the_models():
    """The parameter counts quoted in the package README are the models' own (meta device)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = dict(
        re.findall(r"^\| `(cognate-[\w-]+)`[^|]*\|(?:[^|]*\|){7} ([\d, /]+) \|$", readme, re.M)
    )
    assert set(rows) == set(PRESETS)
    for name, cell in rows.items():
        quoted = [int(x.replace(",", "")) for x in cell.split(" / ")]
        actual = [count(CognateConfig.from_preset(name, s)) for s in (None, *SPECIALIZATIONS)]
        assert quoted == actual, name
