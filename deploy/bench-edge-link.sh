#!/usr/bin/env bash
# Edge-link benchmark (release build): gRPC over TLS vs QUIC through the same
# impaired link (2% loss, 50 ms each way, a bottleneck), 1,000 events/s while
# a 50 MB clip uploads on the same connection. Last line
# `edge_link grpc_event_p99_ms=... quic_event_p99_ms=... grpc_events_per_s=... quic_events_per_s=...`.
# Extra arguments go to the bench: --seconds S --rate-mb R.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
BIN=${CARGO_TARGET_DIR:-target}/release
SIGHTLINE_BIN_DIR="$BIN" RUST_LOG=warn "$BIN/bench-edge-link" "$@"
