"""``--grokfast {ema,ma,dual,none}``, ``--grokfast-warmup-steps`` and ``--grokfast-place`` reach
the optimizer the trainer builds: it steps exactly as a MuGrokfast / Grokfast(AdamW) built by
hand."""

from __future__ import annotations

import copy
import json

import mugrokfast
import pytest
import torch
from cognate_train import checkpoints as ck
from cognate_train import engine as engine_mod
from cognate_train.cli import _config, build_parser, main
from cognate_train.config import ConfigError, build_config
from cognate_train.optim import boost_on_grokking, grokfast_lambda
from cognate_train.trainer import CurriculumTask

FILTERS = ["ema", "ma", "dual", "none"]


def _engine(tmp_path, argv: list[str]):
    """The trainer's own optimizer for `train --preset smoke ARGV`, and a copy of the model
    taken before any step."""
    cfg = _config("train", build_parser().parse_args(["train", "--preset", "smoke", *argv]))
    task = CurriculumTask(cfg, "reasoning", torch.device("cpu"))
    start = copy.deepcopy(task.model)
    return engine_mod.Engine(task, cfg, tmp_path, log=lambda m: None), start, cfg


def _same_steps(model_a, opt_a, model_b, opt_b, steps: int = 6) -> None:
    """Both optimizers step on the same random gradients; the weights stay equal."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
            g = torch.randn(pa.shape, generator=gen)
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)


def _by_hand(model, cfg, **filter_kw) -> mugrokfast.MuGrokfast:
    """MuGrokfast built from the library over `model`'s routing, with the run's optimizer
    settings and the filter settings given: the reference the trainer's optimizer must equal."""
    return mugrokfast.MuGrokfast(
        mugrokfast.param_groups(model),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        muon_lr=cfg.muon_lr,
        grokfast_alpha=cfg.grokfast_alpha,
        grokfast_lambda=cfg.grokfast_lambda,
        **filter_kw,
    )


def _groups(opt) -> list[dict]:
    """Every group setting but the schedule's (the engine's LambdaLR has scaled `lr` by its
    warmup factor and added `initial_lr`)."""
    skip = {"params", "lr", "initial_lr"}
    return [{k: v for k, v in g.items() if k not in skip} for g in opt.param_groups]


def _same_lr(opt, like) -> None:
    for g, h in zip(opt.param_groups, like.param_groups, strict=True):
        g["lr"] = h["lr"]


@pytest.mark.parametrize("filt", FILTERS)
def test_mugrokfast_gets_the_filter_and_warmup(tmp_path, filt, single_thread):
    argv = ["--grokfast", filt, "--grokfast-warmup-steps", "3"]
    eng, model, cfg = _engine(tmp_path, argv)
    by_hand = _by_hand(
        model, cfg, grokfast=None if filt == "none" else filt, grokfast_warmup_steps=3
    )
    assert cfg.grokfast == filt and cfg.grokfast_warmup_steps == 3
    assert _groups(eng.optimizer) == _groups(by_hand)
    _same_lr(by_hand, eng.optimizer)
    _same_steps(eng.task.model, eng.optimizer, model, by_hand)


@pytest.mark.parametrize("place", ["grad", "update"])
def test_mugrokfast_gets_the_place(tmp_path, place, single_thread):
    eng, model, cfg = _engine(tmp_path, ["--optimizer", "mugrokfast", "--grokfast-place", place])
    assert cfg.grokfast_place == place
    groups = eng.optimizer.param_groups
    assert [g["use_muon"] for g in groups] == [True, False]
    assert [g["grokfast_place"] for g in groups] == [place, place]  # AdamW's: read for Muon only
    by_hand = _by_hand(model, cfg, grokfast="ema", grokfast_place=place)
    assert _groups(eng.optimizer) == _groups(by_hand)
    _same_lr(by_hand, eng.optimizer)
    _same_steps(eng.task.model, eng.optimizer, model, by_hand)
    # the update place keeps an EMA of the orthogonalised update on the Muon matrices only
    for group in groups:
        for p in group["params"]:
            st = eng.optimizer.state[p]
            assert ("grokfast_update_ema" in st) == (place == "update" and group["use_muon"])
            assert ("grokfast_ema" in st) == (place == "grad" or not group["use_muon"])


@pytest.mark.parametrize("filt", FILTERS)
def test_grokfast_adamw_gets_the_filter_and_warmup(tmp_path, filt, single_thread):
    argv = ["--optimizer", "grokfast-adamw", "--grokfast", filt, "--grokfast-warmup-steps", "2"]
    eng, model, cfg = _engine(tmp_path, argv)
    base = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    by_hand = mugrokfast.Grokfast(
        base,
        filter=None if filt == "none" else filt,
        alpha=cfg.grokfast_alpha,
        lamb=cfg.grokfast_lambda,
        warmup_steps=2,
    )
    assert _groups(eng.optimizer) == _groups(by_hand)
    _same_lr(by_hand, eng.optimizer)
    _same_steps(eng.task.model, eng.optimizer, model, by_hand)


def test_default_is_ema_without_warmup():
    cfg = build_config("train", None, None, {})
    assert (cfg.grokfast, cfg.grokfast_warmup_steps) == ("ema", 0)
    # the quick preset and grok train with plain Muon (the filter measured no gain); the
    # filter setting applies once an optimizer with a filter is chosen
    assert cfg.optimizer == "muon" and build_config("grok", None, None, {}).optimizer == "muon"
    grok = build_config("grok", None, None, {"optimizer": "mugrokfast", "grokfast": "dual"})
    assert grok.grokfast == "dual"  # a shared setting: grok takes it too
    with pytest.raises(ConfigError, match="optimizer muon has no Grokfast filter"):
        build_config("grok", None, None, {"grokfast": "dual"})


def test_toml_keys(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('optimizer = "mugrokfast"\ngrokfast = "dual"\ngrokfast_warmup_steps = 50\n')
    cfg = build_config("train", None, str(toml), {})
    assert (cfg.grokfast, cfg.grokfast_warmup_steps) == ("dual", 50)
    toml.write_text('optimizer = "mugrokfast"\ngrokfast_place = "update"\n')
    assert build_config("train", None, str(toml), {}).grokfast_place == "update"
    assert build_config("grok", None, str(toml), {}).grokfast_place == "update"
    # a flag overrides the file
    assert build_config("train", None, str(toml), {"grokfast_place": "grad"}).grokfast_place == (
        "grad"
    )


def test_place_default_is_grad():
    for kind in ("train", "grok"):
        assert build_config(kind, None, None, {"optimizer": "mugrokfast"}).grokfast_place == "grad"
    for preset in ("smoke", "quick", "phase1"):
        assert build_config("train", preset, None, {}).grokfast_place == "grad"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--grokfast", "high"], "grokfast"),
        (["--grokfast-warmup-steps", "-1"], "grokfast-warmup-steps: must be >= 0"),
        (["--optimizer", "adamw", "--grokfast", "ma"], "optimizer adamw has no Grokfast filter"),
        (["--optimizer", "muon", "--grokfast", "ema"], "optimizer muon has no Grokfast filter"),
        (["--optimizer", "muon", "--grokfast-warmup-steps", "5"], "muon has no Grokfast"),
        (["--grokfast-place", "middle"], "--grokfast-place: invalid choice: 'middle'"),
        (["--optimizer", "muon", "--grokfast-place", "update"], "which optimizer muon does not"),
        (["--optimizer", "adamw", "--grokfast-place", "update"], "which optimizer adamw does"),
        (
            ["--optimizer", "grokfast-adamw", "--grokfast-place", "update"],
            "grokfast-place: update needs --optimizer mugrokfast",
        ),
        (["--grokfast", "ma", "--grokfast-place", "update"], "update takes --grokfast ema only"),
        (["--grokfast", "dual", "--grokfast-place", "update"], "grokfast-place: update takes"),
        (["--grokfast", "none", "--grokfast-place", "update"], "grokfast-place: update takes"),
    ],
)
def test_bad_or_ignored_filter_settings_are_errors(argv, message, capsys, tmp_path):
    assert main(["train", "--preset", "smoke", *argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_no_filter_is_allowed_with_unfiltered_optimizers():
    cfg = build_config("train", None, None, {"optimizer": "adamw", "grokfast": "none"})
    assert cfg.grokfast == "none"
    cfg = build_config("train", None, None, {"optimizer": "muon", "grokfast_place": "grad"})
    assert cfg.grokfast_place == "grad"  # the default place: nothing to refuse


@pytest.mark.parametrize("optimizer", ["muon", "adamw", "grokfast-adamw"])
def test_update_place_from_a_file_is_refused_naming_the_file(tmp_path, optimizer):
    toml = tmp_path / "run.toml"
    toml.write_text('grokfast_place = "update"\n')
    with pytest.raises(ConfigError, match=r"run.toml: grokfast-place: update needs") as exc:
        build_config("train", None, str(toml), {"optimizer": optimizer})
    assert exc.value.field == "grokfast_place"
    with pytest.raises(ConfigError, match="grokfast-place: update takes --grokfast ema only"):
        build_config("grok", None, str(toml), {"optimizer": "mugrokfast", "grokfast": "ma"})


def test_help_says_what_they_do(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--grokfast {ema,ma,dual,none}" in text
    assert "--grokfast-warmup-steps GROKFAST_WARMUP_STEPS steps during which" in text
    assert "--grokfast-place {grad,update} where mugrokfast's EMA acts" in text
    assert "--qk-clip TAU QK-clip (MuonClip)" in text


def test_boost_on_grokking_amplifies_the_ma_term(tmp_path, single_thread):
    """With ma the only amplification is grokfast_ma_lambda: that is what is read and boosted."""
    eng, _, _ = _engine(tmp_path, ["--grokfast", "ma"])
    assert grokfast_lambda(eng.optimizer) == 5.0  # MuGrokfast's grokfast_ma_lambda default
    msg = boost_on_grokking(eng.optimizer, 1.5, 10, 0.9)
    assert "5 -> 7.5" in msg
    assert {g["grokfast_ma_lambda"] for g in eng.optimizer.param_groups} == {7.5}
    assert grokfast_lambda(eng.optimizer) == 7.5


def test_resume_with_another_place_is_refused_or_applied_with_override(tmp_path, capsys):
    """A changed place is a changed setting like a changed filter: refused on resume, taken
    with --override (the Muon groups then start their update EMA at the resume step)."""
    out = tmp_path / "run"
    base = ["grok", "--preset", "smoke", "--optimizer", "mugrokfast", "--output-dir", str(out)]
    assert main([*base, "--max-steps", "10"]) == 0
    changed = [*base, "--max-steps", "14", "--grokfast-place", "update"]
    assert main(changed) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "settings differ" in err and "grokfast_place 'grad' -> 'update'" in err
    assert main([*changed, "--override"]) == 0
    step = out / "checkpoints" / "step-000014"
    ts = json.loads((step / "trainer_state.json").read_text())
    event = [e for e in ts["events"] if e["event"] == "override"]
    assert event[0]["changed"]["grokfast_place"] == ["grad", "update"]
    saved = ck.load_torch_state(step)["optimizer"]
    for group in saved["param_groups"]:
        assert group["grokfast_place"] == "update"
        for i in group["params"]:
            has = "grokfast_update_ema" in saved["state"][i]
            assert has == group["use_muon"]
