#!/usr/bin/env bash
# Installs what building and testing Sightline needs on Debian 12, if missing.
# Idempotent: a second run installs nothing.
set -euo pipefail

need_apt=()
for pkg in librocksdb-dev libsnappy-dev protobuf-compiler g++ clang libclang-dev pkg-config curl \
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev ffmpeg \
  python3-venv python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
  chromium openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "install-deps: apt packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# An S3-compatible server for the tests (moto's server, from PyPI), in a venv
# outside the clone so repeated runs reuse it.
VENV="${SIGHTLINE_VENV:-$HOME/.cache/sightline/venv}"
if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "install-deps: moto[server] into $VENV"
  PY=python3
  $PY -m venv "$VENV" 2>/dev/null || { /usr/bin/python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q "moto[server]==5.2.1"
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: Rust is missing; install it with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
# The dashboard's browser half is built for wasm32 (deploy/build-web.sh).
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The browser tests drive Debian's Chromium with Node's playwright-core
# (package-lock.json pins it; nothing downloads a browser).
# playwright-core needs Node.js 20 or later. Some nodejs packages bring npm
# with them (NodeSource's); Debian's does not: npm only if still missing.
if ! command -v npm >/dev/null; then
  echo "install-deps: nodejs"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs
  command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
fi
BROWSER_DIR="$(dirname "$0")/../tests/browser"
if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
  echo "install-deps: playwright-core (npm ci in tests/browser)"
  (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Running as a service (issue 14): cargo-deb builds the Debian packages and
# tests/e2e/service.rs checks them with dpkg-deb, dpkg-shlibdeps (dpkg-dev),
# systemd-analyze (systemd) and objdump (binutils). The aarch64 target and a
# cross C compiler let CI `cargo check` the agent for an ARM camera host
# (build scripts such as ring's and zstd's compile C for the target).
need_svc=()
for pkg in dpkg-dev systemd binutils gcc-aarch64-linux-gnu libc6-dev-arm64-cross; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_svc+=("$pkg")
done
if ((${#need_svc[@]})); then
  echo "install-deps: apt packages: ${need_svc[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_svc[@]}"
fi
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
SVC_TOOLS=${SIGHTLINE_TOOLS:-$HOME/.cache/sightline/tools}
CARGO_DEB_VERSION=3.8.0
if [ "$("$SVC_TOOLS/bin/cargo-deb" --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_DEB_VERSION" ]; then
  echo "install-deps: cargo-deb $CARGO_DEB_VERSION into $SVC_TOOLS"
  cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" --root "$SVC_TOOLS"
fi
# Observability: Debian's Prometheus. tests/e2e/observability.rs runs
# `prometheus` against a core and an agent, and `promtool` checks
# deploy/prometheus/ (config, alert rules and their unit tests).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "install-deps: prometheus (promtool)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi
# Parquet export: DuckDB (the Python wheel, pinned) reads the exported tree in
# tests/e2e/export.rs and deploy/bench-operations.sh, an independent reader.
VENV="${SIGHTLINE_VENV:-$HOME/.cache/sightline/venv}"
if ! "$VENV/bin/python" -c 'import duckdb, sys; sys.exit(duckdb.__version__ != "1.5.6")' 2>/dev/null; then
  echo "install-deps: duckdb into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "duckdb==1.5.6"
fi
# Cluster mode (issue 15): Debian's nats-server (JetStream). tests/src/nats.rs
# starts three of them clustered on loopback for the cluster tests, and
# deploy/cluster/start.sh for the 3-node example.
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "install-deps: nats-server"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nats-server
fi
