#!/bin/bash
# Filter study, screening on tuning seed 0 (x*y mod 97, stop at 95% val, cap 400 steps):
# where the EMA amplifier acts under Muon (grad = today's MuGrokfast, momentum, update) and an
# absolute vs relative lambda. "off" is plain Muon through the same code (lamb 0, adamw_lamb 0).
# One sweep call per config, so each lands in results/filter_study_sweep.json as it ends.
set -e
cd "$(dirname "$0")/../.."
for config in "update_rel0.5:place=update,relative=1,lamb=0.5" \
  "momentum_rel0.5:place=momentum,relative=1,lamb=0.5" "off:lamb=0,adamw_lamb=0" \
  "grad_rel0.5:relative=1,lamb=0.5" "update_rel2:place=update,relative=1,lamb=2" \
  "momentum_rel2:place=momentum,relative=1,lamb=2" "grad_abs1:"; do
  uv run python benchmarks/grokking_sweep.py --optimizer muon-slow --seeds 0 --max-steps 400 \
    --stop-at 0.95 --out benchmarks/results/filter_study_sweep.json --config "$config"
done
