#!/usr/bin/env bash
# Splits the gateway's CPU per request into user and system time, one feature at a time, beside
# NGINX's worker without and with its access log, in front of the benchmark origin. Every
# process runs on one core (CPU, default 1). For each target it sends a warm-up, then
# h2load --h1 -c50 -n REQUESTS twice, and reads utime and stime from /proc/PID/stat before and
# after. Prints µs per request.
# Usage: bench/features.sh [--quick]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CPU=${CPU:-1}
REQUESTS=100000
case ${1:-} in
  "") ;;
  --quick) REQUESTS=20000 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "features.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

for tool in nginx h2load taskset; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq && apt-get install -y -qq nginx nghttp2-client util-linux >/dev/null
    break
  }
done

(cd "$ROOT" && cargo build --release --locked -p apigateway)
ORIGIN_TARGET=${ORIGIN_TARGET:-${TMPDIR:-/tmp}/peer-bench-origin}
(cd "$HERE/origin" && cargo build --release --quiet --locked --target-dir "$ORIGIN_TARGET")

RUN=$(mktemp -d /tmp/gateway-features.XXXXXX)
cp "$CARGO_TARGET_DIR/release/apigateway" "$RUN/apigateway"
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

ORIGIN_PORT=9111 GW_PORT=9311 NGINX_PORT=9211 NGINX_LOG_PORT=9214
taskset -c "$CPU" "$ORIGIN_TARGET/release/bench-origin" "127.0.0.1:$ORIGIN_PORT" >"$RUN/origin.log" 2>&1 &
STARTED+=($!)

# ticks PID -> "utime stime" in clock ticks
ticks() { awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12], f[13]}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

measure() { # measure NAME PID PORT
  local name=$1 pid=$2 port=$3 u0 s0 u1 s1 user=0 sys=0 round
  taskset -c "$CPU" h2load --h1 -c50 -n5000 "http://127.0.0.1:$port/" >/dev/null
  for round in 1 2; do
    read -r u0 s0 < <(ticks "$pid")
    taskset -c "$CPU" h2load --h1 -c50 -n"$REQUESTS" "http://127.0.0.1:$port/" >/dev/null
    sleep 0.3
    read -r u1 s1 < <(ticks "$pid")
    user=$((user + u1 - u0)); sys=$((sys + s1 - s0))
  done
  awk -v n="$name" -v u="$user" -v s="$sys" -v hz="$HZ" -v r="$((2 * REQUESTS))" \
    'BEGIN { printf "| %s | %.1f | %.1f | %.1f |\n", n, u*1e6/hz/r, s*1e6/hz/r, (u+s)*1e6/hz/r }'
}

echo "| target | user µs/req | system µs/req | total µs/req |"
echo "|---|---:|---:|---:|"

mkdir -p "$RUN/nginx/tmp"
sed "s/9101/$ORIGIN_PORT/; s/9201/$NGINX_PORT/" "$HERE/peers/nginx.conf" >"$RUN/nginx.conf"
taskset -c "$CPU" nginx -p "$RUN/nginx" -c "$RUN/nginx.conf" &
STARTED+=($!)
sleep 0.5
measure nginx "$(pgrep -P "${STARTED[-1]}" | head -1)" "$NGINX_PORT"

# NGINX with its buffered access log, the peer of the gateway with every feature on.
mkdir -p "$RUN/nginx-log/tmp"
sed "s/9101/$ORIGIN_PORT/; s/9204/$NGINX_LOG_PORT/" "$HERE/peers/nginx-log.conf" >"$RUN/nginx-log.conf"
taskset -c "$CPU" nginx -p "$RUN/nginx-log" -c "$RUN/nginx-log.conf" &
STARTED+=($!)
sleep 0.5
measure "nginx, access log" "$(pgrep -P "${STARTED[-1]}" | head -1)" "$NGINX_LOG_PORT"

# variant NAME ACCESS_LOG REQUEST_LOG LIMIT_AND_CORS
variant() {
  cat >"$RUN/$1.yaml" <<YAML
server: {host: 127.0.0.1, port: $GW_PORT, workers: 1}
routes:
  - path: "/*rest"
    backends: [{url: "http://127.0.0.1:$ORIGIN_PORT"}]
rate_limiting: {enabled: $4, requests_per_second: 10000000, burst: 10000000}
cors: {enabled: $4}
health_check: {enabled: false}
request_log: {enabled: $3, database: "$RUN/$1.db"}
logging: {access_log: $2}
YAML
  taskset -c "$CPU" "$RUN/apigateway" --config "$RUN/$1.yaml" >"$RUN/$1.log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  sleep 0.5
  measure "gateway, $1" "$pid" "$GW_PORT"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
variant plain false false false
variant access-line true false false
variant request-log false true false
variant limit-and-cors false false true
variant everything true true true
