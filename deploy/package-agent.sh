#!/usr/bin/env bash
# The agent's Debian package as deployed: the agent built as deploy/build-agent.sh builds it
# (`--profile agent`, RocksDB compiled from source), with footage (FFmpeg), as
# `cargo deb -p sightline-agent` packages it:
#   deploy/package-agent.sh [cargo-deb options]   ->  the .deb's path (last line)
# `cargo deb -p sightline-agent` alone packages the release build, which links Debian's
# RocksDB archive whole: its text is twice this one's (20.4 vs 10.4 MB, forty-fourth session).
# The first run compiles RocksDB (~15 minutes on two cores). cargo-deb comes from
# deploy/install-deps.sh. Built in a target dir of its own (…/package): in
# deploy/build-agent.sh's (…/lean) the packaged agent, with footage, replaced the
# lean one the benchmarks run.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${SIGHTLINE_TOOLS:-$HOME/.cache/sightline/tools}
PATH="$TOOLS/bin:$PATH" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/package" ROCKSDB_COMPILE=1 \
  cargo deb -p sightline-agent --profile agent "$@"
