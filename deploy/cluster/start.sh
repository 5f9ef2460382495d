#!/usr/bin/env bash
# A 3-node Sightline cluster on loopback (issue 15): 3 clustered
# `nats-server -js` (JetStream, R3), moto's S3 server (footage and partition
# checkpoints) and 3 cores (deploy/cluster/core-{a,b,c}.toml). Prints every
# address, then waits; Ctrl-C stops everything it started.
#
#   deploy/install-deps.sh            # nats-server, moto (once)
#   cargo build --bins                # or SIGHTLINE_BIN_DIR=target/release
#   deploy/cluster/start.sh
#   sightline-agent --core quic://127.0.0.1:50440,quic://127.0.0.1:50441,quic://127.0.0.1:50442 \
#       --tls-dir data/cluster/pki simulate
#
# Ports: NATS clients 4222-4224, routes 6222-6224, monitoring 8222-8224;
# moto 5000; cores gRPC 51050-51052, HTTP 8080-8082, edge 50440-50442.
# Data: data/cluster/ (delete it to start from nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DATA=${SIGHTLINE_CLUSTER_DATA:-$ROOT/data/cluster}
BIN=${SIGHTLINE_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
NATS=${SIGHTLINE_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
MOTO=${SIGHTLINE_MOTO_SERVER:-${SIGHTLINE_VENV:-$HOME/.cache/sightline/venv}/bin/moto_server}
for b in "$BIN/sightline-core" "$NATS" "$MOTO"; do
  [ -x "$b" ] || { echo "start.sh: $b is missing (deploy/install-deps.sh; cargo build --bins)" >&2; exit 1; }
done
mkdir -p "$DATA"

PIDS=()
stop() {
  trap - INT TERM EXIT
  echo "start.sh: stopping ${#PIDS[@]} processes"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# Waits until 127.0.0.1:$1 takes TCP connections (at most $2 s); $3 names it.
wait_port() {
  for _ in $(seq 1 $(($2 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "start.sh: $3 does not listen on 127.0.0.1:$1" >&2
  return 1
}

# 1. Three clustered nats-servers with JetStream.
ROUTES=nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224
for i in 0 1 2; do
  mkdir -p "$DATA/nats-$i"
  "$NATS" -js -a 127.0.0.1 -p $((4222 + i)) -m $((8222 + i)) \
    --cluster nats://127.0.0.1:$((6222 + i)) --cluster_name sightline --routes "$ROUTES" \
    --server_name "nats-$i" -sd "$DATA/nats-$i" >"$DATA/nats-$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do wait_port $((4222 + i)) 20 "nats-$i"; done
# JetStream is usable once the servers agree on a meta leader.
for _ in $(seq 1 200); do
  leader=$(curl -s http://127.0.0.1:8222/jsz | sed -n 's/.*"leader": *"\([^"]*\)".*/\1/p' | head -1)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "${leader:-}" ] || { echo "start.sh: JetStream elected no meta leader; see $DATA/nats-*.log" >&2; exit 1; }

# 2. moto (S3) with the footage and checkpoint buckets.
"$MOTO" -H 127.0.0.1 -p 5000 >"$DATA/moto.log" 2>&1 &
PIDS+=($!)
wait_port 5000 30 moto
for bucket in sightline-footage sightline-checkpoints; do
  curl -sf -X PUT "http://127.0.0.1:5000/$bucket" >/dev/null
done

# 3. One site CA and a core certificate for 127.0.0.1, shared by the nodes.
PKI=$ROOT/data/cluster/pki
if [ ! -f "$PKI/ca.pem" ]; then
  "$BIN/sightline-core" certs init --dir "$PKI"
  "$BIN/sightline-core" certs core --dir "$PKI" --san 127.0.0.1 --san localhost
fi

# 4. The three cores (their config paths are relative to the repository).
# Each must listen within 60 s; one that exits first stops the script with its log.
for n in a b c; do
  "$BIN/sightline-core" serve --config "deploy/cluster/core-$n.toml" \
    >"$DATA/core-$n.out" 2>"$DATA/core-$n.log" &
  PIDS+=($!)
done
for i in 0 1 2; do
  n=$(echo a b c | cut -d' ' -f$((i + 1)))
  pid=${PIDS[$((${#PIDS[@]} - 3 + i))]}
  for _ in $(seq 1 600); do
    grep -q "^sightline-core listening" "$DATA/core-$n.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "start.sh: core-$n exited:" >&2; tail -8 "$DATA/core-$n.log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q "^sightline-core listening" "$DATA/core-$n.out" || { echo "start.sh: core-$n did not start within 60 s; see $DATA/core-$n.log" >&2; exit 1; }
done

cat <<INFO
Sightline cluster on loopback (data in $DATA):
  nats-server  nats://127.0.0.1:4222  nats://127.0.0.1:4223  nats://127.0.0.1:4224  (JetStream meta leader: $leader; monitoring :8222-8224)
  S3 (moto)    http://127.0.0.1:5000  buckets sightline-footage, sightline-checkpoints
  core-a       query gRPC 127.0.0.1:51050  dashboard http://127.0.0.1:8080  edge quic://127.0.0.1:50440
  core-b       query gRPC 127.0.0.1:51051  dashboard http://127.0.0.1:8081  edge quic://127.0.0.1:50441
  core-c       query gRPC 127.0.0.1:51052  dashboard http://127.0.0.1:8082  edge quic://127.0.0.1:50442
  agents       sightline-core certs agent --dir $PKI --agent-id <id>, then
               sightline-agent --agent-id <id> --tls-dir $PKI --core quic://127.0.0.1:50440,quic://127.0.0.1:50441,quic://127.0.0.1:50442 simulate
Ctrl-C stops everything.
INFO
wait -n "${PIDS[@]}" || true
echo "start.sh: a process exited; see $DATA/*.log" >&2
