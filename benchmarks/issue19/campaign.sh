#!/bin/bash
# The whole issue-19 campaign in priority order, under one CPU slot; every step writes its own
# result file when it ends, so an interrupted campaign keeps what it finished.
set -e
cd "$(dirname "$0")"
./filter_screen.sh
./filter_confirm.sh
PEERS="torch-muon kozistr-grokfastadamw" ./tune_peers.sh
./filter_ops.sh
./ops_ours.sh
PEERS="heavyball-muon kozistr-muon lucidrains-grokfastadamw" ./tune_peers.sh
