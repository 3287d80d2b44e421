"""The library stays torch-only: its one runtime requirement, and no imports of siblings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_only_runtime_requirement_is_torch():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert len(deps) == 1 and re.match(r"torch\b", deps[0])
    assert "optional-dependencies" not in project


def test_sources_import_only_stdlib_torch_and_themselves():
    allowed = {"torch", "mugrokfast", "__future__", "collections", "dataclasses", "itertools",
               "math", "os", "typing", "warnings"}  # fmt: skip
    for path in (ROOT / "src" / "mugrokfast").glob("*.py"):
        for mod in re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), flags=re.M):
            assert mod in allowed, f"{path.name} imports {mod}"


def test_license_file_is_declared_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.slow
def test_built_wheel_ships_the_license(tmp_path):
    import shutil
    import subprocess
    import zipfile

    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("needs uv on PATH")
    subprocess.run([uv, "build", "--package", "mugrokfast", "--wheel", "--out-dir", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("mugrokfast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
