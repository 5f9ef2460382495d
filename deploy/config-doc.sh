#!/usr/bin/env bash
# Writes docs/CONFIG.md: the rule for environment variables, then every key of
# the core's and the agent's config as the binaries describe them
# (`sightline-core config-reference`, `sightline-agent config-reference`: the
# config structs' doc comments, types and defaults). The tests
# every_*_key_has_a_meaning_and_docs_config_md_is_current fail when it is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q -p sightline-core -p sightline-agent --bins
{
  cat <<'HEAD'
# Configuration reference

Generated from the code by `deploy/config-doc.sh`; do not edit by hand: the
meanings are the doc comments of the config structs (core-server/src/config.rs,
edge-agent/src/config.rs and the modules they name). Commented examples:
deploy/core.example.toml and deploy/agent.example.toml.

Types: a *duration* is a string such as `"500ms"`, `"15s"`, `"5m"`, `"7d"`; a
*size* is a string such as `"64 MiB"` or `"1 GiB"` (or a number of bytes).
Paths that are relative resolve from the working directory (under systemd:
the service's state directory, /var/lib/sightline-core or
/var/lib/sightline-agent).

## Environment variables

Any key can be set by an environment variable, over the file and under the
command-line flags (flags win):

- The name is the program's prefix, `SIGHTLINE_CORE` or `SIGHTLINE_AGENT`,
  then `__`, then the dotted key with each `.` written `__`, in capitals:
  `pipeline.partitions` of the core is `SIGHTLINE_CORE__PIPELINE__PARTITIONS`;
  `buffer.max_events` of the agent is `SIGHTLINE_AGENT__BUFFER__MAX_EVENTS`.
- The value is read as a TOML value: `4`, `0.25`, `true`, `"text"`,
  `["a", "b"]`, `{ key = "value" }`. A value that is not valid TOML is taken
  as a string, so paths, addresses, durations and sizes need no quotes
  (`SIGHTLINE_CORE__STORAGE__PATH=/var/lib/sightline-core/store`,
  `SIGHTLINE_CORE__SERVER__SHUTDOWN_GRACE=45s`); a string that reads as a
  number or a boolean does (`SIGHTLINE_AGENT__AGENT_ID='"42"'`).
- An array of tables (`capture.cameras`) is set whole:
  `SIGHTLINE_AGENT__CAPTURE__CAMERAS='[{ camera_oid = 7, input = "rtsp://cam7/stream" }]'`.
  A table of strings takes one entry per variable:
  `SIGHTLINE_CORE__MEDIA__OPTIONS__REGION=eu-west-1`.
- A variable with the prefix that names no key, or whose value the key does
  not take, stops the program at start with an error naming the variable.
  (`SIGHTLINE_CORE` alone, the terminal client's core address, is not a key.)

HEAD
  "$TARGET/debug/sightline-core" config-reference
  echo
  "$TARGET/debug/sightline-agent" config-reference
} > docs/CONFIG.md.new
mv docs/CONFIG.md.new docs/CONFIG.md
echo "config-doc: docs/CONFIG.md: $(grep -c '^| `' docs/CONFIG.md) keys"
