#!/bin/bash
# issue 19, second tuning round: the picks on the four operations, untuned seeds 10-12
cd "$(dirname "$0")/../.."
WHO=$1
for op in mul add sub div; do
  if [ "$WHO" = ours ]; then
    OMP_NUM_THREADS=1 uv run python benchmarks/grokking.py --optimizer mugrokfast --hp mugrokfast.place=update --hp mugrokfast.lamb=0.5 --hp mugrokfast.alpha=0.95 --hp mugrokfast.adamw_lamb=0.0 --hp mugrokfast.muon_weight_decay=0.7 --hp mugrokfast.lr=3e-3 --hp mugrokfast.muon_lr=0.06 --seeds 10,11,12 --max-steps 600 --stop-at 0.95 --operation $op --out benchmarks/results/grokking_round2_${op}_mugrokfast_update.json
  else
    OMP_NUM_THREADS=1 uv run python benchmarks/grokking.py --optimizer muon --hp muon.muon_weight_decay=0.5 --hp muon.lr=3e-3 --hp muon.muon_lr=0.06 --seeds 10,11,12 --max-steps 600 --stop-at 0.95 --operation $op --out benchmarks/results/grokking_round2_${op}_muon.json
  fi
done
