"""The optional metric sinks install with the command the docs and the CLI's error quote."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cognate_train.config import LOG_BACKENDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[3]


def test_every_log_backend_is_an_extra_of_the_workspace_root():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    member = tomllib.loads((ROOT / "packages/cognate-train/pyproject.toml").read_text())
    root_extras = root["project"]["optional-dependencies"]
    for backend in LOG_BACKENDS:
        assert backend in member["project"]["optional-dependencies"]
        assert root_extras[backend] == [f"cognate-train[{backend}]"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", LOG_BACKENDS)
def test_documented_uv_command_would_install_the_backend(backend):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    done = subprocess.run(
        [uv, "sync", "--extra", backend, "--dry-run", "--frozen"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    plan = done.stdout + done.stderr
    if importlib.util.find_spec(backend) is None:
        assert f"+ {backend}==" in plan  # the plan installs it
    else:
        assert f"- {backend}==" not in plan  # installed already and kept
