#!/usr/bin/env bash
# Access benchmark (release build): what access control costs over a store of
# 1,000,000 events; prints figures, last line
# `access events=... scoped_top_ms=... unscoped_top_ms=... scoped_search_ms=... unscoped_search_ms=... media_authz_ms=... audit_verify_per_s=...`.
# Extra arguments go to the bench: --events N --reps R --snapshots S --audit-records M.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins -p sightline-core -p sightline-agent -p sightline-tests
BIN=${CARGO_TARGET_DIR:-target}/release
SIGHTLINE_BIN_DIR="$BIN" RUST_LOG=warn "$BIN/bench-access" "$@"
