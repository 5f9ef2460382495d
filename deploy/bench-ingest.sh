#!/usr/bin/env bash
# Ingest benchmark (release build), measured beside the peers in the same run.
#
# Runs the peers of ../shared/peers (PostgreSQL, NATS JetStream, RocksDB
# alone; see its README) right before and right after Sightline, so that the
# ratios compare like with like on a machine whose speed varies day to day.
# Last line:
#   ingest events_per_s=<n> vs_pg=<r1> vs_jetstream=<r2> vs_rocksdb_sync=<r3>
#          cpu_us_per_event=<c> p99_live_ms=<p> core_rss_peak_mb=<m> agent_rss_mb=<a>
# where each ratio divides Sightline's events/s by the mean of the peer's two
# figures (before, after). Arguments go to the bench (--agents N --seconds S
# --rate R --batch B --no-sync), except --no-peers (Sightline alone, no
# ratios). SIGHTLINE_PEERS points at the peers' folder when it is elsewhere.
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
# All CPU ticks and the stolen ones (the hypervisor running other guests on
# this machine's vCPUs), from /proc/stat: a run with much stolen time runs
# slower for it, which the peers' run beside it shows only in part.
ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9 }' /proc/stat; }

if [ "$peers" = 1 ]; then
  [ -x "$PEERS_DIR/run-all.sh" ] || { echo "no peers at $PEERS_DIR (set SIGHTLINE_PEERS or pass --no-peers)" >&2; exit 2; }
  echo "## peers, before"
  "$PEERS_DIR/run-all.sh" | tee "$out/before"
fi
echo "## sightline"
load
read -r t0 s0 < <(ticks)
SIGHTLINE_BIN_DIR="$BIN" SIGHTLINE_AGENT_BIN="$LEAN/agent/sightline-agent" RUST_LOG=warn \
  "$BIN/bench-ingest" "${args[@]}" | tee "$out/ours"
read -r t1 s1 < <(ticks)
load
awk -v t="$((t1 - t0))" -v s="$((s1 - s0))" \
  'BEGIN { printf "# steal %.1f %% of the CPU time during the run\n", (t > 0 ? 100 * s / t : 0) }'
ours=$(grep '^ingest ' "$out/ours" | tail -n 1)
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" $2"; }
eps=$(field events_per_s "$ours")
tail_fields="cpu_us_per_event=$(field cpu_us_per_event "$ours") p99_live_ms=$(field p99_live_ms "$ours") core_rss_peak_mb=$(field core_rss_peak_mb "$ours") agent_rss_mb=$(field agent_rss_peak_mb "$ours")"
if [ "$peers" = 0 ]; then
  echo "ingest events_per_s=$eps $tail_fields"
  exit 0
fi
echo "## peers, after"
"$PEERS_DIR/run-all.sh" | tee "$out/after"
peer() { # mean of the peer's summary figure before and after
  local b a
  b=$(field "$1" "$(grep '^peers ' "$out/before" | tail -n 1)")
  a=$(field "$1" "$(grep '^peers ' "$out/after" | tail -n 1)")
  awk -v b="$b" -v a="$a" 'BEGIN { if (b == "" || a == "") print ""; else printf "%.0f", (b + a) / 2 }'
}
ratio() { awk -v o="$eps" -v p="$1" 'BEGIN { if (p == "" || p == 0) print "nan"; else printf "%.2f", o / p }'; }
pg=$(peer pg_events_per_s)
js=$(peer jetstream_msgs_per_s)
rs=$(peer rocksdb_dedup_sync_rec_per_s)
echo "peers mean pg_events_per_s=$pg jetstream_msgs_per_s=$js rocksdb_dedup_sync_rec_per_s=$rs"
echo "ingest events_per_s=$eps vs_pg=$(ratio "$pg") vs_jetstream=$(ratio "$js") vs_rocksdb_sync=$(ratio "$rs") $tail_fields"
