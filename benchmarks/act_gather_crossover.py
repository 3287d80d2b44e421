"""When does halting's gathered cycle beat a plain one? (issue 10, `recursion.gather_pays`)

After a halting cycle, the next one can gather the still-active positions and update only them
(`TRMRecursion._active_cycle`), or compute every position and keep the halted ones frozen
(`_frozen_cycle`). Both give the same results; this times one cycle of each on the same state
for batch x length layouts and shares of halted positions (random halting sets, the speed
preset on cognate-tiny with random weights: the cost does not depend on the weights), and
reports time(gathered) / time(plain), the minimum over interleaved rounds of each.

    uv run python benchmarks/act_gather_crossover.py --out benchmarks/results/act_gather_crossover.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cognate_model import CognateConfig, CognateForCausalLM  # noqa: E402
from cognate_model.recursion import _Active, _Features, gather_pays, gathers_as_rows  # noqa: E402
from recursion import record_lines, run_record, write_json  # noqa: E402


def _best(fns: dict, rounds: int) -> dict[str, float]:
    """Minimum wall time of each function over `rounds` interleaved calls."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


@torch.no_grad()
def crossover(model: CognateForCausalLM, B: int, T: int, halted: float, rounds: int) -> dict:
    """Gathered vs plain cycle after a first cycle, with the share `halted` of B x T halted."""
    rec, ones = model.recursion, torch.ones(B, T, dtype=torch.long)
    ids = torch.randint(0, model.config.vocab_size, (B, T))
    attn = model.model.attention_inputs(T, ones, ids.device, torch.float32)
    x = model.model(ids, ones, attention_inputs=attn).last_hidden_state
    k, v = rec.block.project_features(x, attn.cos, attn.sin)

    def features() -> _Features:  # fresh per call: the gathered cycle caches its key spans,
        mask = dataclasses.replace(attn.mask, _dense=None)  # the mask its dense form
        return _Features(k, v, mask, attn.cos, attn.sin)

    y, z, logit = rec.cycle(x, x, features())
    active = torch.rand(B, T) >= halted
    idx = active.flatten().nonzero()[:, 0]
    as_rows = gathers_as_rows(B, T)
    n = int(idx.numel())
    size = n
    if as_rows:  # the layout even where the rule would not gather (blocked=True: always built)
        gathered = _Active.rows(active, idx, blocked=True)
        size = B * gathered.width if gathered is not None else B * T
    else:
        gathered = _Active(idx)
    fns = {"plain": lambda: rec._frozen_cycle(y, z, features(), active, logit)}
    if gathered is not None:  # (None: some row has every position active)
        fns["gathered"] = lambda: rec._active_cycle(y, z, features(), gathered, logit)
    best = _best(fns, rounds)
    g = best.get("gathered")
    return {
        "batch": B,
        "seq_len": T,
        "halted": B * T - n,
        "active": n,
        "layout": f"{B} rows of {size // B}" if as_rows else "one-query rows",
        "gathered_us": None if g is None else round(g * 1e6, 1),
        "plain_us": round(best["plain"] * 1e6, 1),
        "ratio": None if g is None else round(g / best["plain"], 3),
        "gather_pays_says": gather_pays(size, B * T, as_rows, attn.mask.blocked),
    }


def write_markdown(payload: dict, path: Path) -> None:
    lines = [
        "# Halting: gathered vs plain cycle (issue 10)",
        "",
        *record_lines(payload, f"; {payload['settings']}."),
        "",
        "ratio = time(gathered cycle) / time(plain cycle, halted frozen), minimum over rounds;"
        " below 1 the gather pays. `gather_pays` is the rule the model applies.",
        "",
        "| batch x length | halted | active | gathered as | gathered (us) | plain (us) | ratio "
        "| gather_pays |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['batch']} x {r['seq_len']} | {r['halted']} | {r['active']} | {r['layout']} | "
            f"{r['gathered_us']} | {r['plain_us']} | {r['ratio']} | {r['gather_pays_says']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--layouts", default="1x16,1x24,1x64,1x256,4x16,4x64,8x256,32x16,32x24,32x64,32x80,32x256"
    )
    p.add_argument("--halted", default="0.9,0.72,0.5,0.25")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/act_gather_crossover.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = CognateForCausalLM(CognateConfig.from_preset("cognate-tiny", "speed")).eval()
    load0 = os.getloadavg()
    rows = []
    for layout in args.layouts.split(","):
        B, T = (int(n) for n in layout.split("x"))
        for share in (float(h) for h in args.halted.split(",")):
            rows.append(crossover(model, B, T, share, args.rounds))
            print(json.dumps(rows[-1]), flush=True)
    payload = {
        **run_record("act_gather_crossover.py", argv, load0),
        "settings": f"cognate-tiny speed preset, random weights, seed {args.seed}, "
        f"{args.rounds} rounds",
        "rows": rows,
    }
    out = Path(args.out)
    write_json(payload, out)
    write_markdown(payload, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
