"""Check cognate-train's multiple-choice scorer against lm-evaluation-harness itself.

Both score the same saved checkpoint on the same local files: lm-eval through its own task
definitions of arc_easy, arc_challenge and hellaswag (its prompts, choices and hellaswag
preprocessing), with only the data source swapped for the local files, and its HFLM wrapper
(add_bos_token=True, as cognate-train scores `<bos> context`); cognate-train through
`cognate_train.realdata.metrics`. The script compares acc, acc_norm and every choice's
log-likelihood document by document, and writes the comparison as JSON.

lm-eval is not a dependency of the workspace (it pulls in scikit-learn, nltk, evaluate, ...):
install it next to the environment, e.g. `uv pip install --target /tmp/lmeval-pkgs lm-eval[hf]`
without its already-present dependencies, then

    PYTHONPATH=/tmp/lmeval-pkgs HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 \\
      .venv/bin/python benchmarks/lmeval_check.py --checkpoint RUN/final --data-dir DIR \\
      --out benchmarks/results/realdata_lmeval_check.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

TASKS = ("arc_easy", "arc_challenge", "hellaswag")


def lm_eval_task(name: str, source):
    """lm-eval's registered task `name` (its own YAML), reading the local split, not the hub."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    entry = manager._entry(name)  # the registered definition; overrides merge into it
    return manager._factory.build(
        entry, overrides=_overrides(name, source), registry=manager._index
    )


def _overrides(name: str, source) -> dict:
    builder = {"jsonl": "json", "json": "json", "parquet": "parquet"}[source.kind]
    split = source.split
    return {
        "task": name,
        "dataset_path": builder,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: [str(p) for p in source.files]}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
        "fewshot_split": None,
        "num_fewshot": 0,
    }


def run(args: argparse.Namespace) -> dict:
    import lm_eval
    import torch
    from cognate_train.realdata.evaluate import load_checkpoint, model_max_len
    from cognate_train.realdata.metrics import choice_loglikelihoods, choice_metrics
    from cognate_train.realdata.pipeline import find_split, load_records
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(args.threads)
    model, tok = load_checkpoint(args.checkpoint)
    max_len = model_max_len(model)
    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        add_bos_token=True,
        max_length=max_len,
        batch_size=args.batch_size,
        device="cpu",
    )
    out: dict = {
        "command": " ".join(sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        "tasks": {},
    }
    for name in args.tasks:
        source = find_split(name, None, args.data_dir)
        records = load_records(name, None, data_dir=args.data_dir).records
        if args.limit:
            records = records[: args.limit]
        ours_ll = choice_loglikelihoods(model, tok, records, args.batch_size, "cpu", max_len)
        ours = choice_metrics(records, ours_ll)
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[lm_eval_task(name, source)],
            limit=args.limit,
            log_samples=True,
            bootstrap_iters=0,
        )
        theirs = res["results"][name]
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        their_ll = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        diffs = [
            abs(a - b[0])
            for row_t, row_o in zip(their_ll, ours_ll, strict=True)
            for a, b in zip(row_t, row_o, strict=True)
        ]
        golds_match = all(int(s["target"]) == r.gold for s, r in zip(samples, records, strict=True))
        out["tasks"][name] = {
            "n": len(records),
            "split": source.split,
            "ours": {"acc": ours["acc"], "acc_norm": ours["acc_norm"]},
            "lm_eval": {"acc": theirs["acc,none"], "acc_norm": theirs["acc_norm,none"]},
            "same_acc": math.isclose(ours["acc"], theirs["acc,none"])
            and math.isclose(ours["acc_norm"], theirs["acc_norm,none"]),
            "max_abs_loglik_diff": max(diffs),
            "same_gold": golds_match,
        }
        print(name, json.dumps(out["tasks"][name]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    result = run(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = all(t["same_acc"] and t["same_gold"] for t in result["tasks"].values())
    print("same accuracy as lm-eval:", ok)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
