#!/bin/bash
# Peers on x*y mod 97, one peer at a time (results land per peer): 3 sweep points each (the
# documented defaults + 2) on tuning seed 0 only, stop at 95% val, cap 400 steps
# (results/grokking_peers_sweep.json); then the peer at its best point on the untuned seeds
# 10-12, same stop and cap (results/grokking_peers_mul_<peer>.json).
set -e
cd "$(dirname "$0")/../.."
R=benchmarks/results
S="uv run python benchmarks/grokking_sweep.py --seeds 0 --max-steps 400 --stop-at 0.95"
S="$S --out $R/grokking_peers_sweep.json"
# Muon peers: defaults; the task's settings (Muon lr 0.03 as ours, lr 1e-3, decoupled wd 1.0 on
# both groups, as ours and Power et al.'s AdamW); the same with Muon lr 0.01.
TASK="lr=0.001,weight_decay=1.0,muon_weight_decay=1.0"
report() {
  local hp
  hp=$(uv run python benchmarks/issue19/best_hp.py $R/grokking_peers_sweep.json "$1")
  echo "$1 best sweep point: $hp"
  uv run python benchmarks/grokking.py --operation mul --seeds 10,11,12 --max-steps 400 \
    --stop-at 0.95 --optimizer "$1" $hp --out $R/grokking_peers_mul_$1.json
}
# one sweep call per config: each lands in the sweep file as it ends
sweep() {
  local peer=$1 c
  shift
  for c in "$@"; do $S --optimizer "$peer" --config "$c"; done
}
tune_muon() {
  sweep "$1" "defaults:" "task_mlr0.03:muon_lr=0.03,$TASK" "task_mlr0.01:muon_lr=0.01,$TASK"
  report "$1"
}
# GrokFastAdamW peers (lr is divided by 1 + lamb = 3 inside both): defaults; per-step weight
# decay 1e-3 (AdamW wd 1.0 at lr 1e-3, Power et al.'s) at lr 1e-3 and at lr 3e-3 (effective 1e-3).
# lucidrains' decay is per step, not times lr: wd 1e-3 is the same per-step decay as AdamW's lr*wd.
tune_grokfastadamw() {
  local wd=1.0
  [ "$1" = lucidrains-grokfastadamw ] && wd=0.001
  sweep "$1" "defaults:" "lr1e-3_wd$wd:lr=0.001,weight_decay=$wd" \
    "lr3e-3_wd$wd:lr=0.003,weight_decay=$wd"
  report "$1"
}
# PEERS: which peers, in this order (default: all five, the priority ones first).
for peer in ${PEERS:-torch-muon kozistr-grokfastadamw heavyball-muon kozistr-muon \
  lucidrains-grokfastadamw}; do
  case $peer in
    *grokfastadamw) tune_grokfastadamw $peer ;;
    *) tune_muon $peer ;;
  esac
done
