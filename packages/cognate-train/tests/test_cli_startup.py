"""``cognate-train --help`` answers without importing torch or transformers, and shows defaults;
``eval`` and ``generate`` run under ``--threads`` like ``train``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from cognate_train.cli import main
from cognate_train.presets import TRAIN_PRESETS

HEAVY = ("torch", "transformers", "tokenizers", "datasets", "matplotlib")

PROBE = """
import json, sys
from cognate_train.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"]])
def test_help_imports_no_heavy_module(args):
    code = PROBE.format(heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: cognate-train" in proc.stdout
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_a_bad_flag_is_refused_before_the_heavy_imports():
    code = PROBE.replace("main(sys.argv[1:])", "assert main(sys.argv[1:]) == 2").format(heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--max-steps", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def _help(args, capsys) -> str:
    with pytest.raises(SystemExit):
        main(args)
    return " ".join(capsys.readouterr().out.split())


def test_train_help_shows_the_quick_presets_values(capsys):
    text = _help(["train", "--help"], capsys)
    quick = TRAIN_PRESETS["quick"]
    for flag in ("max-steps", "lr", "muon-lr", "batch-size", "n-val", "threads"):
        value = quick[flag.replace("-", "_")]
        assert f"--{flag} " in text and f"(default: {value})" in text, flag
    assert "(default: 0.9,0.98)" in text  # a list field, as the flag takes it


def test_eval_and_generate_help_show_their_defaults(capsys):
    assert "rows per forward pass (default: 16)" in _help(["eval", "--help"], capsys)
    assert "longest completion (default: 32)" in _help(["generate", "--help"], capsys)


@pytest.fixture
def threads_seen(monkeypatch):
    """The intra-op thread count in force while generate_answers runs."""
    import cognate_train.evaluation as evaluation

    seen: list[int] = []

    def record(model, tok, prompts, **kw):
        seen.append(torch.get_num_threads())
        return [""] * len(prompts)

    monkeypatch.setattr(evaluation, "generate_answers", record)
    return seen


def test_generate_runs_with_the_runs_threads_or_the_flags(smoke_run, threads_seen):
    final = str(smoke_run / "final")
    before = torch.get_num_threads()
    recorded = json.loads((smoke_run / "final" / "trainer_state.json").read_text())
    assert main(["generate", "--checkpoint", final, "--prompt", "a"]) == 0
    assert main(["generate", "--checkpoint", final, "--prompt", "a", "--threads", "2"]) == 0
    assert threads_seen == [recorded["config"]["threads"], 2]
    assert torch.get_num_threads() == before  # restored afterwards


def test_negative_threads_is_a_clear_error(smoke_run, capsys):
    final = str(smoke_run / "final")
    assert main(["eval", "--checkpoint", final, "--threads", "-1"]) == 2
    assert "threads: must be >= 0" in capsys.readouterr().err
