#!/bin/bash
# Filter study, step 3: plain Muon, MuGrokfast and the screen's best variant (as in
# filter_confirm.sh; all at their x*y settings, no per-operation tuning) on x+y, x-y, x/y mod 97,
# untuned seeds 10-12, stop at 95% val, cap 600 (results/grokking_ops_<op>.json; AdamW wd 1 is
# added to these files by ops_ours.sh with --reuse).
set -e
cd "$(dirname "$0")/../.."
R=benchmarks/results
hp=$(uv run python benchmarks/issue19/best_hp.py $R/filter_study_sweep.json muon-slow \
  --exclude off,grad_abs1)
for op in ${OPS:-add sub div}; do
  uv run python benchmarks/grokking.py --optimizer muon,mugrokfast,muon-slow $hp \
    --operation $op --seeds 10,11,12 --max-steps 600 --stop-at 0.95 \
    --out $R/grokking_ops_$op.json
done
