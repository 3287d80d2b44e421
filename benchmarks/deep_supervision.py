"""TRM deep supervision in the trainer: carried (y, z) over N supervision steps, with and without
training-time early exit on the halting head (issue 10).

Runs ``cognate-train train`` (the Trainer, curriculum, quick recipe) for the reasoning model at
the same number of optimizer steps with: N = 1 (one step per batch), N = `--supervision-steps`
carrying (y, z), and the same with ``--supervision-early-exit``. Each final model is measured
on the validation split with benchmarks/recursion.py's per-cycle evaluation, up to N x C cycles
(a model trained from carried states has seen that depth). Reported: per-cycle val CE and exact
match, the mean supervision step index over training (1 = every step a new batch), wall time.

    uv run python benchmarks/deep_supervision.py --steps 600 --supervision-steps 3 \\
        --out benchmarks/results/deep_supervision.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recursion import cycle_metrics, run_record, val_batches, write_json  # noqa: E402


def run(label: str, overrides: dict, steps: int, extra: int, out_root: Path) -> dict:
    from cognate_model import CognateForCausalLM
    from cognate_train.config import build_config
    from cognate_train.data import active_stages, families_for_stage, make_split
    from cognate_train.metrics import read_metrics
    from cognate_train.tokenizer import build_tokenizer
    from cognate_train.trainer import Trainer

    flags = {"max_steps": steps, "samples": 0, "eval_every": steps, "checkpoint_every": steps}
    cfg = build_config("train", "quick", None, {**flags, **overrides})
    out = out_root / label
    t0 = time.perf_counter()
    Trainer(cfg, "reasoning", out, log=lambda m: None).run()
    wall = time.perf_counter() - t0
    records = read_metrics(out / "metrics.jsonl")
    sup = [r["trm/supervision_step"] for r in records if "trm/supervision_step" in r]
    model = CognateForCausalLM.from_pretrained(out / "final").eval()
    tok = build_tokenizer()
    families = families_for_stage(active_stages(cfg.stage_fractions)[-1])
    _, val = make_split(families, cfg.n_train, cfg.n_val, cfg.seed, cfg.max_len)
    cycles = cycle_metrics(model, val_batches(tok, val, cfg.max_len), extra)
    row = {
        "label": label,
        "overrides": overrides,
        "train_wall_s": round(wall, 1),
        "mean_supervision_step": round(sum(sup) / len(sup), 3) if sup else None,
        "final_val_loss": records[-1].get("val/loss"),
        "cycles": cycles,
    }
    print(json.dumps({k: v for k, v in row.items() if k != "cycles"}), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--supervision-steps", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/deep_supervision.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    n, c = args.supervision_steps, 4  # the reasoning model's trm_cycles
    variants = {
        "one_step_per_batch": {},
        f"carry_{n}": {"steps_per_batch": n},
        f"carry_{n}_early_exit": {"steps_per_batch": n, "supervision_early_exit": True},
    }
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(k, v, args.steps, (n - 1) * c, Path(tmp)) for k, v in variants.items()]
    payload = {
        **run_record("deep_supervision.py", None, load0),
        "settings": {"preset": "quick", "specialization": "reasoning", "steps": args.steps},
        "runs": rows,
    }
    out = Path(args.out)
    write_json(payload, out)
    lines = [
        "# Deep supervision in the trainer (issue 10)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}; load average {payload['loadavg_start']} -> "
        f"{payload['loadavg_end']}; settings {json.dumps(payload['settings'])}",
        "",
        "| run | mean supervision step | wall s | val CE at cycle 4 | EM at 4 | best cycle "
        "| val CE there | EM there |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at_c, best = r["cycles"][c], min(r["cycles"][1:], key=lambda x: x["val_ce"])
        lines.append(
            f"| {r['label']} | {r['mean_supervision_step']} | {r['train_wall_s']} | "
            f"{at_c['val_ce']} | {at_c['exact_match']} | {best['cycle']} | {best['val_ce']} | "
            f"{best['exact_match']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
