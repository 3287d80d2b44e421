"""The README's quick start runs, and its option table lists every constructor argument."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mugrokfast import MuGrokfast

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_quick_start_block_runs():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1]
    block = _python_blocks(quick)[0]
    assert 10 <= len(block.strip().splitlines()) <= 30
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})  # asserts accuracy 1.0


def test_option_table_covers_every_argument():
    text = README.read_text()
    table = text.split("## MuGrokfast options", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)`", table, flags=re.M))
    params = set(inspect.signature(MuGrokfast.__init__).parameters) - {"self", "params"}
    assert params | {"use_muon"} == documented


def test_root_readme_first_example_puts_the_classifier_head_on_adamw():
    root = README.parents[2] / "README.md"
    block = _python_blocks(root.read_text().split("## Use the optimizer on its own", 1)[1])[0]
    scope: dict = {"__name__": "readme"}
    exec(compile(block, str(root), "exec"), scope)
    model, opt = scope["model"], scope["opt"]
    on_muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert on_muon == {id(model[0].weight)}  # only the hidden Linear
    assert id(model[2].weight) not in on_muon  # the head trains with AdamW
