#!/usr/bin/env bash
# Footage benchmark (release build): prints figures, last line
# `footage camera_cpu_pct=... snapshot_ms=... clip_ms=... upload_mb_s=...`.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
SIGHTLINE_BIN_DIR="$BIN" RUST_LOG=warn "$BIN/bench-footage" "$@"
