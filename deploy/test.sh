#!/usr/bin/env bash
# The whole test suite: unit tests, property tests and the end-to-end tests
# that start the real binaries on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
# The end-to-end tests start the binaries; build them first, and the
# dashboard's browser half (wasm) the core serves.
cargo build --workspace --bins
deploy/build-web.sh
cargo test --workspace -- --test-threads "${SIGHTLINE_TEST_THREADS:-3}"
