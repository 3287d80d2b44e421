"""ACT halting's recursion time: this tree against the package at a git commit (issue 10).

Loads a trained model saved by `benchmarks/recursion.py --models DIR` (the `speed` variant by
default) into both versions, computes the backbone features of the validation prompts once
(batch 1, batch 32, and with `--pack K` rows of K prompts back to back, as recursion.py
does), then times the recursion alone, halting on and off, for both versions interleaved
(A on, A off, B on, B off; the order reversed every other repetition): the median seconds
of ``--reps`` passes over all chunks and the ratio halting / all cycles of each version.
The final answers of the two versions are compared too (max abs difference, halting on).

    uv run python benchmarks/act_halting_vs_commit.py --commit ed6938f --models DIR \\
        --out benchmarks/results/act_halting_vs_commit.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cognate_model  # noqa: E402
from decode_step_vs_commit import import_at  # noqa: E402
from recursion import _chunks, packed_chunks, run_record, write_json  # noqa: E402


def features(models: dict, chunks: list[dict]) -> list[tuple]:
    """Per chunk: the backbone output x and each version's attention inputs."""
    out = []
    with torch.no_grad():
        for b in chunks:
            ids, mask = b["input_ids"], b["attention_mask"]
            attn = {
                name: m.model.attention_inputs(ids.shape[1], mask, ids.device, torch.float32)
                for name, m in models.items()
            }
            x = models["tree"].model(ids, mask, attention_inputs=attn["tree"]).last_hidden_state
            out.append((x, attn))
    return out


def timed(model: torch.nn.Module, name: str, inputs: list[tuple], threshold: float | None):
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, attn in inputs:
            model.recursion(x, *attn[name], halt_threshold=threshold)
    return time.perf_counter() - t0


def compare(models: dict, inputs: list[tuple], reps: int) -> dict:
    threshold = models["tree"].config.act_threshold
    with torch.no_grad():
        diff = max(
            (
                models["tree"].recursion(x, *attn["tree"], halt_threshold=threshold).ys[-1]
                - models["commit"].recursion(x, *attn["commit"], halt_threshold=threshold).ys[-1]
            )
            .abs()
            .max()
            .item()
            for x, attn in inputs
        )
    order = [(name, h) for name in models for h in (True, False)]
    times: dict = {key: [] for key in order}
    for r in range(reps):
        for name, h in order if r % 2 == 0 else order[::-1]:
            times[(name, h)].append(timed(models[name], name, inputs, threshold if h else None))
    med = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    out: dict = {"max_abs_diff_final_answer": diff}
    for name in models:
        out[name] = {
            "halting_s": round(med[(name, True)], 4),
            "all_cycles_s": round(med[(name, False)], 4),
            "ratio": round(med[(name, True)] / med[(name, False)], 4),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--commit", required=True)
    p.add_argument("--models", required=True, help="the --models folder of recursion.py")
    p.add_argument("--variant", default="speed")
    p.add_argument("--pack", type=int, default=8)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/act_halting_vs_commit.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    from cognate_train.data import all_families, make_split
    from cognate_train.tokenizer import build_tokenizer

    root = Path(__file__).resolve().parents[1]
    old = import_at(args.commit, root)
    saved = Path(args.models) / args.variant
    models = {
        "tree": cognate_model.CognateForCausalLM.from_pretrained(saved).eval(),
        "commit": old.CognateForCausalLM.from_pretrained(saved).eval(),
    }
    tok = build_tokenizer()
    _, val = make_split(all_families(), 400, 32, 0, 64)
    layouts = {"1": _chunks(tok, val, 64, 1), "32": _chunks(tok, val, 64, 32)}
    if args.pack > 1:
        layouts[f"32_packed{args.pack}"] = packed_chunks(tok, val, args.pack, 32)
    load0 = os.getloadavg()
    results = {}
    for name, chunks in layouts.items():
        results[name] = compare(models, features(models, chunks), args.reps)
        print(name, json.dumps(results[name]), flush=True)
    payload = {
        **run_record("act_halting_vs_commit.py", None, load0),
        "settings": {"commit": args.commit, "variant": args.variant, "reps": args.reps},
        "results": results,
    }
    write_json(payload, Path(args.out))


if __name__ == "__main__":
    main()
