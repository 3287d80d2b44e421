#!/bin/bash
# The issue-19 campaign in priority order, in two chains that can hold one CPU slot each:
# `campaign.sh filter` (filter screen, best variant on x*y, the other operations, then
# ops_ours.sh: the two priority peers and AdamW on the other operations) and `campaign.sh peers`
# (tune_peers.sh, all five peers, the priority ones first). Every step writes its own
# result file when it ends, so an interrupted chain keeps what it finished.
set -e
cd "$(dirname "$0")"
case $1 in
  filter) ./filter_screen.sh && ./filter_confirm.sh && ./filter_ops.sh && ./ops_ours.sh ;;
  peers) ./tune_peers.sh ;;
  *) echo "usage: campaign.sh filter|peers" >&2; exit 2 ;;
esac
