#!/usr/bin/env bash
# Benchmarks the gateway beside NGINX, HAProxy and Caddy on loopback, with peers.sh.
#
# Builds the gateway in release mode, installs the peers and load generators from the
# distribution's packages when they are missing, writes the gateway's configurations, and runs
# peers.sh with these extra targets, each proxying to the same origin on 127.0.0.1:9101:
#   gw         plain proxy: request log, access line, rate limit and CORS off (port 9301)
#   gw-full    every feature on, as shipped (request log, access line, rate limit that never
#              rejects, CORS, health checks) (port 9302)
#   gw-2w      the plain proxy with two worker threads (port 9303); peers.sh pins every proxy
#              to PROXY_CPU, so it only scales when PROXY_CPU names two cores (PROXY_CPU=0,1)
#   nginx-log  nginx with its access log on, the peer for gw-full (port 9204)
# With --pgo, also the gateway built with profile-guided optimization by bench/pgo.sh
# (PGO_BINARY=FILE uses a binary pgo.sh already built):
#   gw-pgo       the plain proxy (port 9304)
#   gw-full-pgo  every feature on (port 9305)
# Every other argument is passed to peers.sh (--quick, --rounds N, --only a,b, --out DIR).
# Results: the table peers.sh prints; copy the figures to bench/RESULTS.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

# Help is printed before anything is installed or built.
for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    echo
    echo "peers.sh's options:"
    "$HERE/peers.sh" --help
    exit 0
  fi
done

need=()
for tool in nginx haproxy caddy wrk h2load curl taskset chrt; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [[ ${#need[@]} -gt 0 ]]; then
  echo "gateway.sh: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq nginx haproxy caddy wrk nghttp2-client curl util-linux >/dev/null
fi

PGO=false
args=()
for arg in "$@"; do
  if [[ $arg == --pgo ]]; then PGO=true; else args+=("$arg"); fi
done

(cd "$ROOT" && cargo build --release --locked -p apigateway)
BIN="$CARGO_TARGET_DIR/release/apigateway"

CONF=$(mktemp -d /tmp/gateway-bench.XXXXXX)
trap 'rm -rf "$CONF"' EXIT

# write_config FILE PORT WORKERS FEATURES(on|off)
write_config() {
  local file=$1 port=$2 workers=$3 features=$4 on=false
  [[ $features == on ]] && on=true
  cat >"$file" <<YAML
server:
  host: 127.0.0.1
  port: $port
  workers: $workers
routes:
  - path: "/*rest"
    backends:
      - url: "http://127.0.0.1:9101"
rate_limiting:
  enabled: $on
  requests_per_second: 10000000
  burst: 10000000
cors:
  enabled: $on
health_check:
  enabled: $on
request_log:
  enabled: $on
  database: "$CONF/requests-$port.db"
logging:
  access_log: $on
YAML
}
write_config "$CONF/plain.yaml" 9301 1 off
write_config "$CONF/full.yaml" 9302 1 on
write_config "$CONF/two.yaml" 9303 2 off
mkdir -p "$CONF/nginx-log/tmp"

pgo_targets=()
if $PGO; then
  PGO_BIN="$CONF/apigateway-pgo"
  if [[ -n ${PGO_BINARY:-} ]]; then
    cp "$PGO_BINARY" "$PGO_BIN"
  else
    "$HERE/pgo.sh" --out "$PGO_BIN" >/dev/null
  fi
  write_config "$CONF/plain-pgo.yaml" 9304 1 off
  write_config "$CONF/full-pgo.yaml" 9305 1 on
  pgo_targets=(
    --target gw-pgo=http://127.0.0.1:9304/ --cmd gw-pgo="$PGO_BIN --config $CONF/plain-pgo.yaml"
    --target gw-full-pgo=http://127.0.0.1:9305/
    --cmd gw-full-pgo="$PGO_BIN --config $CONF/full-pgo.yaml"
  )
fi

"$HERE/peers.sh" \
  --target gw=http://127.0.0.1:9301/ --cmd gw="$BIN --config $CONF/plain.yaml" \
  --target gw-full=http://127.0.0.1:9302/ --cmd gw-full="$BIN --config $CONF/full.yaml" \
  --target gw-2w=http://127.0.0.1:9303/ --cmd gw-2w="$BIN --config $CONF/two.yaml" \
  --target nginx-log=http://127.0.0.1:9204/ \
  --cmd nginx-log="nginx -p $CONF/nginx-log -c $HERE/peers/nginx-log.conf" \
  "${pgo_targets[@]}" "${args[@]}"
