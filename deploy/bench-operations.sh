#!/usr/bin/env bash
# Operations benchmark (release build): fills a store with 5,000,000 events,
# exports it to Parquet with `sightline-core export parquet`, times DuckDB's
# top-X query on the export, and backup/restore when the core has them.
# Last line:
#   operations export_events_per_s=<a> export_mb=<b> backup_s=<c> restore_s=<d> duckdb_top_ms=<e>
# Arguments go to the bench (--events N --hours H --jobs J).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release -p sightline-core --bin sightline-core -p sightline-tests --bin bench-operations
BIN=${CARGO_TARGET_DIR:-target}/release
echo "# load $(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)"
SIGHTLINE_BIN_DIR="$BIN" RUST_LOG=warn "$BIN/bench-operations" "$@"
echo "# load $(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)"
