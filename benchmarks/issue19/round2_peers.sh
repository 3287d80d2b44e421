#!/bin/bash
# issue 19, second tuning round: the Muon peers given plain Muon's new point (Muon weight decay 0.5) on x*y
cd "$(dirname "$0")/../.."
for p in torch-muon kozistr-muon; do
 OMP_NUM_THREADS=1 uv run python benchmarks/grokking.py --operation mul --optimizer $p --hp $p.lr=3e-3 --hp $p.muon_lr=0.06 --hp $p.weight_decay=1.0 --hp $p.muon_weight_decay=0.5 --seeds 10,11,12 --max-steps 400 --stop-at 0.95 --jobs 2 --out benchmarks/results/grokking_round2_mul_$p.json
done
