#!/bin/bash
# The grokking preset's candidate: plain Muon (grokfast=None) at the best point of the second
# tuning round that one weight decay for all groups can express (lr 3e-3, Muon lr 0.06, weight
# decay 0.7: 190, 180, 180 on tuning seeds 0-2, results/grokking_probe_round2.json), on the
# four operations, untuned seeds 10-12.
cd "$(dirname "$0")/../.."
for op in mul add sub div; do
  OMP_NUM_THREADS=1 uv run python benchmarks/grokking.py --optimizer muon --hp muon.lr=3e-3 --hp muon.muon_lr=0.06 --hp muon.weight_decay=0.7 --seeds 10,11,12 --max-steps 600 --stop-at 0.95 --operation $op --out benchmarks/results/grokking_round2_${op}_muon_wd0.7.json
done
