#!/usr/bin/env bash
# Soak (issue 11, release build): the real core and two agents, 10,000
# events/s for --minutes M (default 30) under a storm of valid and invalid
# queries, dashboard requests and malformed edge messages; the core's RSS
# sampled every second; at the end every stored event compared with what the
# intakes acknowledged. Exits non-zero if the core died, an event was lost or
# doubled, or the core's RSS passed its bound. Last line
# `soak minutes=... queries=... bad_requests=... core_rss_max_mb=... core_restarts=0 lost=0 duplicated=0`.
# Extra arguments go to the soak: --minutes M --rate R --agents N.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
SIGHTLINE_BIN_DIR="$BIN" RUST_LOG=warn "$BIN/soak" "$@"
