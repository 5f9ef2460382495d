#!/usr/bin/env bash
# Builds the dashboard's browser half: web-ui/frontend for wasm32 (release,
# optimised for size), bound by wasm-bindgen into <target>/site/pkg, with gzip
# copies the core serves to browsers that accept them. The core finds the
# site at <target>/site (config `dashboard.site_root`).
#
# wasm-bindgen-cli must be exactly the wasm-bindgen version in
# web-ui/frontend/Cargo.lock; it is installed once under ~/.cache/sightline/tools.
# wasm-opt is not used: Debian's (binaryen 108) breaks hydration. The wasm32
# target comes from deploy/install-deps.sh, which every caller runs first.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
WB_VERSION=$(grep -A1 '^name = "wasm-bindgen"$' web-ui/frontend/Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
TOOLS=${SIGHTLINE_TOOLS:-$HOME/.cache/sightline/tools}
if [ "$("$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ]; then
  echo "build-web: installing wasm-bindgen-cli $WB_VERSION into $TOOLS (once; 13 min on 2 cores)"
  cargo install wasm-bindgen-cli --version "$WB_VERSION" --root "$TOOLS"
fi
(cd web-ui/frontend && CARGO_TARGET_DIR="$TARGET" cargo build --release --target wasm32-unknown-unknown)
OUT="$TARGET/site/pkg"
mkdir -p "$OUT"
"$TOOLS/bin/wasm-bindgen" --target web --no-typescript --out-dir "$OUT" --out-name sightline_web \
  "$TARGET/wasm32-unknown-unknown/release/sightline_web_frontend.wasm"
gzip -9 -k -f "$OUT/sightline_web_bg.wasm" "$OUT/sightline_web.js"
echo "build-web: $OUT: wasm $(stat -c %s "$OUT/sightline_web_bg.wasm") bytes, gzip $(stat -c %s "$OUT/sightline_web_bg.wasm.gz") bytes"
