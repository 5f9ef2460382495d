#!/usr/bin/env bash
# The edge agent as a camera host runs it, and as the benchmarks measure it:
#   deploy/build-agent.sh [cargo build options]   ->  ${CARGO_TARGET_DIR:-target}/lean/agent/sightline-agent
#
# - `--profile agent` (Cargo.toml): built for size, the whole program optimised at
#   link time.
# - Without the `footage` feature (no FFmpeg loaded) unless asked: pass
#   `--features footage` for a host whose cameras the agent cuts clips from.
# - RocksDB compiled from its source (`ROCKSDB_COMPILE=1`), not Debian's archive
#   that every other build links (.cargo/config.toml): Debian's objects have no
#   function sections, so the agent carried whole objects of RocksDB it never
#   calls, and a resident set is mostly code it maps. Compiled with function
#   sections, the linker keeps what the agent reaches: its text went from 10.7 to
#   7.4 MB and its peak RSS in the ingest benchmark by ~4 MiB (BENCHMARKS.md,
#   forty-third session). The first build compiles RocksDB (~20 minutes on two
#   cores); later ones reuse it. Same RocksDB major version (7) as Debian's: the
#   buffer's files are the same format either way.
set -euo pipefail
cd "$(dirname "$0")/.."
ROCKSDB_COMPILE=1 cargo build --profile agent -p sightline-agent --no-default-features \
  --target-dir "${CARGO_TARGET_DIR:-target}/lean" "$@"
