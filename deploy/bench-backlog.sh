#!/usr/bin/env bash
# Backlog benchmark (release build): a core outage of --outage-seconds (600
# by default) at --rate events/s (10,000), then the drain beside live traffic.
# Last line:
#   backlog events=<n> drain_x_live=<x> live_p99_during_drain_ms=<p> agent_rss_max_mb=<a> ...
# Other arguments go to the bench (--agents N --no-sync). Takes the outage
# plus about a minute and a half.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
# The agent as deployed on a host with no cameras to cut (deploy/build-agent.sh).
LEAN=${CARGO_TARGET_DIR:-target}/lean
deploy/build-agent.sh
echo "# load $(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)"
SIGHTLINE_BIN_DIR="$BIN" SIGHTLINE_AGENT_BIN="$LEAN/agent/sightline-agent" RUST_LOG=warn \
  "$BIN/bench-backlog" "$@"
echo "# load $(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)"
