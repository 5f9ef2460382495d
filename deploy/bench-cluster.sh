#!/usr/bin/env bash
# Cluster benchmark (issue 15, release build): the embedded default and a
# 3-node cluster (3 clustered nats-servers with R3 streams, moto, 3 cores)
# in the same run, with the same agents and load, then a partition owner
# killed with kill -9 under a live subscriber (tests/src/bin/bench_cluster.rs
# says what each figure is). The peers of ../shared/peers run before and
# after (--no-peers: not), for the JetStream ratio. Last line:
#   cluster embedded_events_per_s=<a> cluster_events_per_s=<b> p99_live_ms=<c>
#           failover_s=<d> lost=<e> duplicated=<f> embedded_cpu_us_per_event=<g>
#           cluster_cpu_us_per_event=<h> cluster_vs_jetstream=<r>
# Other arguments go to the bench (--seconds S --rate R --live-seconds L
# --kill-at K --batch B).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR=${SIGHTLINE_PEERS:-$(pwd)/../shared/peers}
peers=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-peers" ]; then peers=0; else args+=("$a"); fi
done
deploy/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
# The agent as deployed on a host with no cameras to cut (deploy/build-agent.sh).
LEAN=${CARGO_TARGET_DIR:-target}/lean
deploy/build-agent.sh

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
load() { echo "# load $(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)"; }
if [ "$peers" = 1 ]; then
  [ -x "$PEERS_DIR/run-all.sh" ] || { echo "no peers at $PEERS_DIR (set SIGHTLINE_PEERS or pass --no-peers)" >&2; exit 2; }
  echo "## peers, before"
  "$PEERS_DIR/run-all.sh" | tee "$out/before"
fi
echo "## sightline"
load
SIGHTLINE_BIN_DIR="$BIN" SIGHTLINE_AGENT_BIN="$LEAN/agent/sightline-agent" RUST_LOG=warn \
  "$BIN/bench-cluster" "${args[@]}" | tee "$out/ours"
load
ours=$(grep '^cluster ' "$out/ours" | tail -n 1)
if [ "$peers" = 0 ]; then
  echo "$ours"
  exit 0
fi
echo "## peers, after"
"$PEERS_DIR/run-all.sh" | tee "$out/after"
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" $2"; }
b=$(field jetstream_msgs_per_s "$(grep '^peers ' "$out/before" | tail -n 1)")
a=$(field jetstream_msgs_per_s "$(grep '^peers ' "$out/after" | tail -n 1)")
js=$(awk -v b="$b" -v a="$a" 'BEGIN { if (b == "" || a == "") print ""; else printf "%.0f", (b + a) / 2 }')
ratio=$(awk -v o="$(field cluster_events_per_s "$ours")" -v p="$js" 'BEGIN { if (p == "" || p == 0) print "nan"; else printf "%.2f", o / p }')
echo "peers mean jetstream_msgs_per_s=$js"
echo "$ours cluster_vs_jetstream=$ratio"
