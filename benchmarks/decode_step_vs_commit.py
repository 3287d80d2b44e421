"""One cached decoding step of `CognateForCausalLM`: this tree against the package at a git commit.

Both versions run in one process, on the same weights (the state dict is copied), interleaved
(A, B, A, B, ...), after a 32-token prompt: the median ms per step of ``--reps`` runs of
``--steps`` steps, for each preset and batch. The package source at ``--commit`` is extracted
with ``git archive`` into a temporary directory and imported as ``cognate_model_at_commit``.
The logits of the two versions are compared too (max abs difference over the run).

    OMP_NUM_THREADS=1 python benchmarks/decode_step_vs_commit.py --commit e049a3c \\
        --out benchmarks/results/decode_step_vs_commit.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cognate_model
import torch
from generation_speed import PROMPT, interleaved

SRC = "packages/cognate-model/src/cognate_model"


def import_at(commit: str, root: Path) -> object:
    """The cognate_model package as it was at `commit`, under another name."""
    data = subprocess.run(
        ["git", "archive", commit, SRC], capture_output=True, check=True, cwd=root
    ).stdout
    tmp = Path(tempfile.mkdtemp())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / SRC).rename(tmp / "cognate_model_at_commit")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("cognate_model_at_commit")


def decode(model: torch.nn.Module, package: object, ids: torch.Tensor) -> torch.Tensor:
    cache = package.CognateCache(model.config)
    logits = []
    with torch.no_grad():
        for t in range(PROMPT, ids.shape[1] + 1):
            chunk = ids[:, :PROMPT] if t == PROMPT else ids[:, t - 1 : t]
            out = model(chunk, past_key_values=cache, return_metrics=False, logits_to_keep=1)
            logits.append(out.logits)
    return torch.cat(logits, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--commit", required=True)
    p.add_argument("--presets", nargs="+", default=["cognate-25m", "cognate-tiny"])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/decode_step_vs_commit.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    old = import_at(args.commit, root)
    started, load_before = _dt.datetime.now(_dt.UTC), os.getloadavg()
    results = {}
    for preset in args.presets:
        torch.manual_seed(0)
        config = cognate_model.CognateConfig.from_preset(preset, max_seq_len=PROMPT + args.steps)
        new_model = cognate_model.CognateForCausalLM(config).eval()
        old_model = old.CognateForCausalLM(old.CognateConfig(**config.to_diff_dict())).eval()
        old_model.load_state_dict(new_model.state_dict())
        for batch in args.batch:
            ids = torch.randint(0, config.vocab_size, (batch, PROMPT + args.steps))
            diff = (decode(new_model, cognate_model, ids) - decode(old_model, old, ids)).abs()
            runs = {
                "this tree": lambda m=new_model, i=ids: decode(m, cognate_model, i),
                args.commit: lambda m=old_model, i=ids: decode(m, old, i),
            }
            secs = interleaved(runs, args.reps)
            ms = {k: 1000 * v / args.steps for k, v in secs.items()}
            results[f"{preset}|{batch}"] = {
                "ms_per_step": ms,
                "commit_over_this_tree": ms[args.commit] / ms["this tree"],
                "max_abs_logit_difference": diff.max().item(),
            }
            print(preset, batch, results[f"{preset}|{batch}"], flush=True)
    out = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "date_utc": started.strftime("%Y-%m-%d %H:%M"),
        "load_average_before_after": [load_before, os.getloadavg()],
        "torch": torch.__version__,
        "note": f"ms per cached step incl. the {PROMPT}-token prefill, median of {args.reps}",
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
