#!/bin/bash
# The other three operations for MuGrokfast (the task's tuned settings), plain Muon and AdamW
# wd 1: untuned seeds 10-12, stop at 95% val, cap 600 steps; one result file per operation
# (x*y for these three: results/grokking.json).
set -e
cd "$(dirname "$0")/../.."
G="uv run python benchmarks/grokking.py --seeds 10,11,12 --max-steps 600 --stop-at 0.95"
for op in add sub div; do
  $G --optimizer mugrokfast,muon,adamw --operation $op --out benchmarks/results/grokking_ops_$op.json
done
