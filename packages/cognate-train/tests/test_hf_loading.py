"""A saved model used the Hugging Face way gives the CLI's answers (issue: it did not).

The reference is the CLI's own ``generate`` (which places ``<bos>`` itself and never pads); the
Hugging Face side runs in a fresh process that knows nothing of cognate_train: ``AutoTokenizer``
and ``AutoModelForCausalLM.generate`` on ``final/``, one prompt at a time and as one left-padded
batch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cognate_model  # noqa: F401  (registers the Auto classes)
import pytest
import torch
from cognate_train.cli import main
from transformers import AutoConfig, AutoModelForCausalLM

PROMPTS = ["copy ab:", "rev abcdef:", "12+35=", "copy hello:", "sort 3142:", "copy h\u00e9:"]
NEW = 8

HF_SCRIPT = """
import json, sys
import torch
import cognate_model  # registers the Auto classes
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
d, prompts, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d).eval()

def text(ids):  # the completion up to the first <eos>, as the CLI cuts it
    ids = ids.tolist()
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id)]
    return tok.decode(ids)

alone = []
for p in prompts:
    enc = tok(p, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=new, do_sample=False)
    alone.append(text(out[0, enc["input_ids"].shape[1]:]))
enc = tok(prompts, return_tensors="pt", padding=True)
out = model.generate(**enc, max_new_tokens=new, do_sample=False)
batched = [text(row[enc["input_ids"].shape[1]:]) for row in out]
print(json.dumps({"alone": alone, "batched": batched}))
"""


def _cli_generate(final, prompts, capsys) -> list[str]:
    args = ["generate", "--checkpoint", str(final), "--max-new-tokens", str(NEW)]
    for p in prompts:
        args += ["--prompt", p]
    capsys.readouterr()
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    decoder = json.JSONDecoder()
    out = []
    for line, prompt in zip(lines, prompts, strict=True):
        shown, end = decoder.raw_decode(line)
        assert shown == prompt and line[end:].startswith(" -> ")
        out.append(json.loads(line[end + 4 :]))
    return out


@pytest.fixture(scope="module")
def talkative_final(smoke_run, tmp_path_factory):
    """The smoke run's ``final/`` (its tokenizer, config and trainer state as saved) with freshly
    initialised weights: 24 smoke steps teach the model to answer ``<eos>`` at once, and empty
    completions would compare equal whatever the tokenizer did."""
    d = tmp_path_factory.mktemp("hf") / "final"
    shutil.copytree(smoke_run / "final", d)
    (d / "manifest.json").unlink()  # the weights change; eval/generate verify only if present
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(d))
    model.save_pretrained(d)
    return d


def test_autotokenizer_and_automodel_generate_what_the_cli_generates(talkative_final, capsys):
    final = talkative_final
    cli_batched = _cli_generate(final, PROMPTS, capsys)
    cli_alone = [_cli_generate(final, [p], capsys)[0] for p in PROMPTS]
    assert cli_alone == cli_batched
    proc = subprocess.run(
        [sys.executable, "-c", HF_SCRIPT, str(final), json.dumps(PROMPTS), str(NEW)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf = json.loads(proc.stdout.splitlines()[-1])
    assert hf["alone"] == cli_alone
    assert hf["batched"] == cli_alone
    assert any(cli_alone), "every completion is empty: the comparison would prove little"
