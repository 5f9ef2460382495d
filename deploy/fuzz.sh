#!/usr/bin/env bash
# Fuzzing (stable toolchain): runs every target for the given seconds each
# (default 600), one after another, at low CPU priority, going on after a
# crash (a new process) until the time is up. Prints one line per
# target, `target=<t> executions=<n> seconds=<s> crashes=<c> seed=<seed>`;
# exits non-zero when a target crashed (its input is in fuzz/crashes/).
# One target: cargo run -p sightline-fuzz --bin fuzz -- <target> --seconds N [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
cargo build -p sightline-fuzz --bin fuzz
BIN=${CARGO_TARGET_DIR:-target}/debug/fuzz
nice -n 19 "$BIN" all --seconds "$SECONDS_EACH" --keep-going
