#!/usr/bin/env bash
# Ingest benchmark (release build): prints figures, last line
# `ingest events_per_s=... p50_live_ms=... p99_live_ms=... agent_rss_mb=... core_rss_mb=...`.
# Extra arguments go to the bench: --agents N --seconds S --rate R --batch B.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
# The agent as deployed on a host with no cameras to cut: built without the
# `footage` feature, so it does not load FFmpeg (see BENCHMARKS.md).
LEAN=${CARGO_TARGET_DIR:-target}/lean
cargo build --release -p sightline-agent --no-default-features --target-dir "$LEAN"
SIGHTLINE_BIN_DIR="$BIN" SIGHTLINE_AGENT_BIN="$LEAN/release/sightline-agent" RUST_LOG=warn "$BIN/bench-ingest" "$@"
