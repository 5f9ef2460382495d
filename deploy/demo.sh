#!/usr/bin/env bash
# The demo on the embedded default: one core (RocksDB, local store) and a
# simulated fleet of 3 agents x 4 cameras, 10,000 events/s in total, 5%
# upstream duplicates, joined with deploy/locations.csv, plus one camera host
# with footage; the dashboard on http://127.0.0.1:8080/. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --bins
deploy/build-web.sh
BIN=target/release
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN="$CARGO_TARGET_DIR/release"
DATA=${SIGHTLINE_DEMO_DIR:-data/demo}
mkdir -p "$DATA"
GRPC=${SIGHTLINE_GRPC:-127.0.0.1:50051}
HTTP=${SIGHTLINE_HTTP:-127.0.0.1:8080}
EDGE=${SIGHTLINE_EDGE:-127.0.0.1:50443}

# The edge link's CA, the core's certificate and one per agent (mutual TLS),
# and the registry of which cameras each agent may publish for.
PKI="$DATA/pki"
if [ ! -f "$PKI/core.pem" ]; then
  "$BIN/sightline-core" certs init --dir "$PKI" >/dev/null
  "$BIN/sightline-core" certs core --dir "$PKI" --san 127.0.0.1 --san localhost >/dev/null
fi
for a in demo-agent-1 demo-agent-2 demo-agent-3 demo-camera-host; do
  [ -f "$PKI/agent-$a.pem" ] || "$BIN/sightline-core" certs agent --dir "$PKI" --agent-id "$a" >/dev/null
done
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/sightline-core" serve --grpc-listen "$GRPC" --http-listen "$HTTP" \
  --edge-listen "$EDGE" --tls-dir "$PKI" \
  --data-dir "$DATA/core" --locations deploy/locations.csv >"$DATA/core.out" 2>"$DATA/core.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q listening "$DATA/core.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$DATA/core.out" || { echo "the core did not start; see $DATA/core.log"; exit 1; }
# The agent registry (enforced, $DATA/core/agents.toml): a new agent is
# refused until an admin grants it its cameras.
grant() {
  SIGHTLINE_CORE="http://$GRPC" "$BIN/sightline-core" grant --agent-id "$1" --cameras "$2" \
    --admin-token-file "$DATA/core/admin.token" >/dev/null
}
grant demo-agent-1 101,102,103,104
grant demo-agent-2 201,202,203,204
grant demo-agent-3 301,302,303,304
grant demo-camera-host 901

# Every query and page needs a credential. The terminal client uses the
# core's admin token; the dashboard needs an account: on the first run the
# demo makes an admin with a generated password (read by the CLI from
# stdin), kept in $DATA/admin.password (mode 0600) and printed below.
export SIGHTLINE_CORE="http://$GRPC" SIGHTLINE_ADMIN_TOKEN_FILE="$DATA/core/admin.token"
if [ ! -s "$DATA/admin.password" ]; then
  PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  (umask 077; printf '%s\n' "$PASSWORD" >"$DATA/admin.password")
  printf '%s\n' "$PASSWORD" | "$BIN/sightline-core" users add admin --role admin >/dev/null 2>"$DATA/users.log" \
    || { echo "could not create the admin account; see $DATA/users.log"; rm -f "$DATA/admin.password"; exit 1; }
fi
PASSWORD=$(cat "$DATA/admin.password")

# Agent i runs cameras i*100+1..i*100+4 at locations spread over Dataset B;
# location 13 is not in Dataset B, to show unmatched events.
for i in 1 2 3; do
  case $i in 1) LOCS=1,2,3,4 ;; 2) LOCS=5,6,7,8 ;; 3) LOCS=9,10,11,13 ;; esac
  "$BIN/sightline-agent" --agent-id "demo-agent-$i" --core "quic://$EDGE" --tls-dir "$PKI" --data-dir "$DATA/agent-$i" \
    simulate --cameras 4 --camera-base $((i * 100 + 1)) --locations "$LOCS" \
    --rate 3334 --duplicates 0.05 >"$DATA/agent-$i.out" 2>"$DATA/agent-$i.log" &
  pids+=($!)
done

# A fourth host with one camera (a synthetic 640x360 H.264 stream) and a
# detector publishing about one detection a second: snapshots and clips
# for the dashboard's event pages.
cat >"$DATA/camera.toml" <<TOML
agent_id = "demo-camera-host"
core_url = "quic://$EDGE"
[tls]
dir = "$PKI"
[buffer]
path = "$DATA/camera-host"
[capture]
spool_path = "$DATA/camera-host-spool"
spool_max_bytes = "512 MiB"
[[capture.cameras]]
camera_oid = 901
input = "synthetic://yard-camera?width=640&height=360&fps=25&gop=25"
mode = "clip"
pre = "3s"
post = "3s"
TOML
"$BIN/sightline-agent" --config "$DATA/camera.toml" \
  simulate --cameras 1 --camera-base 901 --locations 12 --rate 1 \
  >"$DATA/camera-host.out" 2>"$DATA/camera-host.log" &
pids+=($!)

cat <<MSG
Sightline demo running: core + 3 agents x 4 cameras, 10,000 events/s, 5% duplicates,
and a camera host whose detections come with snapshots and clips; agents reach
the core over QUIC with mutual TLS ($EDGE), each only for its own cameras.

  dashboard:               http://$HTTP/   log in as  admin / $PASSWORD
                           (kept in $DATA/admin.password; more accounts: see below)

The terminal client uses the core's admin token; in another shell first:
  export SIGHTLINE_CORE=http://$GRPC SIGHTLINE_ADMIN_TOKEN_FILE=$DATA/core/admin.token

  top items per location:  $BIN/sightline-core top --last 5m -x 5
  live joined events:      $BIN/sightline-core tail --count 20
  fleet:                   $BIN/sightline-core fleet
  totals:                  $BIN/sightline-core stats
  a viewer account:        $BIN/sightline-core users add alice --role viewer --locations 1,2   (password on stdin)
  an API token:            $BIN/sightline-core tokens create --name wall --role viewer --expires 90d
  agent registry:          $DATA/core/agents.toml (grpcurl -plaintext -H "authorization: Bearer \$(cat $DATA/core/admin.token)" $GRPC sightline.v1.Admin/ListGrants)
  metrics:                 curl http://$HTTP/metrics
  gRPC (reflection on):    grpcurl -plaintext -H "authorization: Bearer \$(cat $DATA/core/admin.token)" $GRPC list
  logs:                    $DATA/*.log

Ctrl-C stops everything.
MSG
wait
