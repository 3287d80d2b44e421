#!/bin/bash
# The tail of `campaign.sh filter` (after filter_ops.sh), so that it keeps its CPU slot on the
# shared machine: the two priority peers on x*y (tune_peers.sh: torch-muon, kozistr-grokfastadamw),
# then AdamW wd 1 added to results/grokking_ops_<op>.json (made by filter_ops.sh: MuGrokfast with
# the task's tuned settings, plain Muon, the filter study's best variant), whose runs are reused
# (--reuse: same seeds, hyperparameters, cap and stop). Untuned seeds 10-12, stop at 95% val, cap
# 600 steps (x*y for these: results/grokking.json). SKIP_PEERS=1 skips the peers.
set -e
cd "$(dirname "$0")/../.."
R=benchmarks/results
[ -n "$SKIP_PEERS" ] || PEERS="torch-muon kozistr-grokfastadamw" benchmarks/issue19/tune_peers.sh
hp=$(uv run python benchmarks/issue19/best_hp.py $R/filter_study_sweep.json muon-slow \
  --exclude off,grad_abs1)
for op in ${OPS:-add sub div}; do
  uv run python benchmarks/grokking.py --optimizer mugrokfast,muon,muon-slow,adamw $hp \
    --operation $op --seeds 10,11,12 --max-steps 600 --stop-at 0.95 \
    --reuse $R/grokking_ops_$op.json --out $R/grokking_ops_$op.json
done
