#!/bin/bash
# One unit of the per-operation tables: `ops_add.sh OP NAME...` adds the optimizers NAME (adamw
# or peers) to results/grokking_ops_<OP>.json (x+y, x-y, x/y mod 97: OP add, sub, div), untuned
# seeds 10-12, stop at 95% val, cap 720 steps (2x the slowest Muon median there, so that
# "AdamW >= 2x slower" is decided even when AdamW does not get there). A peer runs at its best
# x*y sweep point (results/grokking_peers_sweep.json, tune_peers.sh), AdamW at wd 1 (Power et
# al.'s), the filter study's best variant as in filter_ops.sh. The runs already in the file are
# reused (--reuse: runs that reached 95% before the earlier cap are the same runs under 720).
set -e
cd "$(dirname "$0")/../.."
R=benchmarks/results
op=$1
shift
F=$R/grokking_ops_$op.json
have=$(python3 -c "import json; print(','.join(json.load(open('$F'))['optimizers']))")
names=$have
for n in "$@"; do
  case ",$names," in *",$n,"*) ;; *) names="$names,$n" ;; esac
done
hp=$(uv run python benchmarks/issue19/best_hp.py $R/filter_study_sweep.json muon-slow \
  --exclude off,grad_abs1)
peer_hp=$(uv run python benchmarks/issue19/best_hp.py $R/grokking_peers_sweep.json)
uv run python benchmarks/grokking.py --optimizer "$names" $hp $peer_hp --operation "$op" \
  --seeds 10,11,12 --max-steps 720 --stop-at 0.95 --reuse "$F" --out "$F"
