#!/usr/bin/env bash
# Dashboard benchmark (release build, headless Chromium): prints figures, last line
# `dashboard first_paint_ms=... wasm_gz_kb=... live_lag_p99_ms=... viewers=... core_cpu_delta_pct=...`.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
deploy/build-web.sh
BIN=${CARGO_TARGET_DIR:-target}/release
SIGHTLINE_BIN_DIR="$BIN" RUST_LOG=warn "$BIN/bench-dashboard" "$@"
