#!/bin/bash
# Filter study, step 2 (after filter_screen.sh): the screen's best variant other than plain Muon
# ("off") and today's MuGrokfast ("grad_abs1") on the untuned seeds 10-12 of x*y mod 97, next to
# `muon` and `mugrokfast`, whose runs are taken from results/grokking.json with --reuse (same
# seeds, hyperparameters, cap 2000 and stop 0.99: a seed fixes the run). New runs also end after
# 240 s (--time-limit: a variant slower than ~600 steps here has lost anyway).
set -e
cd "$(dirname "$0")/../.."
R=benchmarks/results
label=$(uv run python benchmarks/issue19/best_hp.py $R/filter_study_sweep.json muon-slow \
  --exclude off,grad_abs1 --label)
hp=$(uv run python benchmarks/issue19/best_hp.py $R/filter_study_sweep.json muon-slow \
  --exclude off,grad_abs1)
echo "best variant: $label $hp"
uv run python benchmarks/grokking.py --optimizer muon,mugrokfast,muon-slow $hp \
  --seeds 10,11,12 --max-steps 2000 --stop-at 0.99 --time-limit 240 \
  --reuse $R/grokking.json --out $R/filter_study_mul.json
