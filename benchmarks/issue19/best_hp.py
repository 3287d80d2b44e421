"""Print ``--hp NAME.FIELD=VALUE`` for each optimizer's best config in a grokking_sweep.py file.

With a second argument, only that optimizer. Best = fewest median steps to 95% on the sweep's seeds (unreached counts as +inf; ties keep the
earlier config, the documented defaults first). Usage: ``python best_hp.py SWEEP.json``.
"""

import json
import math
import sys

best: dict[str, tuple[float, dict]] = {}
with open(sys.argv[1]) as f:
    record = json.load(f)
for e in record["entries"]:
    name = e["command"].split("--optimizer ")[1].split()[0]
    m = e["median_steps_to_95"]
    score = math.inf if m is None else m
    if name not in best or score < best[name][0]:
        best[name] = (score, e["overrides"])
only = sys.argv[2] if len(sys.argv) > 2 else None
best = {n: b for n, b in best.items() if only in (None, n)}
print(" ".join(f"--hp {n}.{k}={v}" for n, (_, over) in best.items() for k, v in over.items()))
