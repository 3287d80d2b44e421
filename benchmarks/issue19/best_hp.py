"""Print ``--hp NAME.FIELD=VALUE`` for each optimizer's best config in a grokking_sweep.py file.

Best = fewest median steps to 95% on the sweep's seeds (unreached counts as +inf; ties keep the
earlier config, the documented defaults first). Usage::

    python best_hp.py SWEEP.json [OPTIMIZER] [--exclude LABEL,LABEL]

OPTIMIZER: only that optimizer; ``--exclude``: skip configs with these labels (e.g. the
filter study's ``off``, which is plain Muon). With ``--label`` the chosen config's label is
printed instead of the ``--hp`` flags.
"""

import argparse
import json
import math

ap = argparse.ArgumentParser()
ap.add_argument("sweep")
ap.add_argument("optimizer", nargs="?")
ap.add_argument("--exclude", default="")
ap.add_argument("--label", action="store_true")
args = ap.parse_args()
skip = set(filter(None, args.exclude.split(",")))
best: dict[str, tuple[float, str, dict]] = {}
with open(args.sweep) as f:
    record = json.load(f)
for e in record["entries"]:
    name = e["command"].split("--optimizer ")[1].split()[0]
    if e["label"] in skip or args.optimizer not in (None, name):
        continue
    m = e["median_steps_to_95"]
    score = math.inf if m is None else m
    if name not in best or score < best[name][0]:
        best[name] = (score, e["label"], e["overrides"])
if args.label:
    print(" ".join(label for _, label, _ in best.values()))
else:
    print(" ".join(f"--hp {n}.{k}={v}" for n, (_, _, o) in best.items() for k, v in o.items()))
