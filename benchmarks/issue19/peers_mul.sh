#!/bin/bash
# x*y mod 97 with the peers (tune_peers.sh), then filter screen if time allows.
set -e
cd "$(dirname "$0")/../.."
benchmarks/issue19/tune_peers.sh
benchmarks/issue19/filter_screen.sh
