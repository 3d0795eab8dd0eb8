#!/usr/bin/env bash
# Counts the user-space instructions that one proxied request costs, in the gateway and in
# NGINX, with valgrind's callgrind. Unlike CPU time, the count does not depend on what else
# the machine is doing: the same binary, configuration and load give the same figure to
# within a fraction of a percent, so a change of 1 % in the hot path shows.
#
# It counts user space only. The kernel's share of a request (about 60 % of its CPU time on
# loopback, by perf) is not counted; compare it with perf or with bench/gateway.sh.
#
# Each target runs alone under callgrind in front of the benchmark origin (127.0.0.1:9131,
# run natively). A warm-up of 5,000 requests runs with counting off, then REQUESTS requests
# (default 20,000) over 50 connections with counting on. Every thread of the target is
# counted, so the gateway's figures include its request log writer.
#   nginx      one worker, no master process, access log off      (bench/peers/nginx.conf)
#   nginx-log  the same with its buffered access log on            (bench/peers/nginx-log.conf)
#   gw         the plain proxy (request log, access line, rate limit and CORS off)
#   gw-full    every feature on, as shipped
# Usage: bench/instructions.sh [--quick] [--only a,b] [--keep DIR]
#   --quick  4,000 counted requests
#   --keep   keep the callgrind output files in DIR, for callgrind_annotate
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REQUESTS=20000
ONLY="nginx,nginx-log,gw,gw-full"
KEEP=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) REQUESTS=4000; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    *) echo "instructions.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

need=()
for tool in nginx h2load valgrind curl; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [[ ${#need[@]} -gt 0 ]]; then
  echo "instructions.sh: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq nginx nghttp2-client valgrind curl >/dev/null
fi

(cd "$ROOT" && cargo build --release --locked -p apigateway)
ORIGIN_TARGET=${ORIGIN_TARGET:-${TMPDIR:-/tmp}/peer-bench-origin}
(cd "$HERE/origin" && cargo build --release --quiet --locked --target-dir "$ORIGIN_TARGET")

RUN=$(mktemp -d /tmp/gateway-instructions.XXXXXX)
cp "$CARGO_TARGET_DIR/release/apigateway" "$RUN/apigateway"
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

ORIGIN_PORT=9131 PORT=9331
declare -A COUNT=()
"$ORIGIN_TARGET/release/bench-origin" "127.0.0.1:$ORIGIN_PORT" >"$RUN/origin.log" 2>&1 &
STARTED+=($!)

ready() { # ready PID: waits up to 60 s for the target to answer
  local i
  for i in $(seq 300); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# measure NAME COMMAND...: runs COMMAND under callgrind and sets COUNT[NAME] to the
# instructions of the counted requests.
measure() {
  local name=$1 out="$RUN/callgrind.$1.out" pid total
  shift
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
    >"$RUN/$name.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  ready "$pid" || { echo "instructions.sh: $name did not start, see its log:" >&2; tail "$RUN/$name.log" >&2; exit 1; }
  h2load --h1 -c50 -n5000 "http://127.0.0.1:$PORT/" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  h2load --h1 -c50 -n"$REQUESTS" "http://127.0.0.1:$PORT/" >"$RUN/$name.h2load"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  grep -q "$REQUESTS succeeded, 0 failed" "$RUN/$name.h2load" \
    || { echo "instructions.sh: $name: not every request succeeded:" >&2; cat "$RUN/$name.h2load" >&2; exit 1; }
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  COUNT[$name]=$(awk '/^totals:/ {print $2}' "$out")
  if [[ -n $KEEP ]]; then
    mkdir -p "$KEEP"
    cp "$out" "$KEEP/"
  fi
}

# nginx_conf NAME: the peer's configuration with the ports moved and without a master process.
nginx_conf() {
  mkdir -p "$RUN/$1/tmp"
  sed -e "s/127.0.0.1:9101/127.0.0.1:$ORIGIN_PORT/; s/127.0.0.1:92[0-9][0-9]/127.0.0.1:$PORT/" \
    -e 's/^master_process on;.*/master_process off;/' "$HERE/peers/$1.conf" >"$RUN/$1.conf"
}

gateway_conf() { # gateway_conf NAME FEATURES(true|false)
  cat >"$RUN/$1.yaml" <<YAML
server: {host: 127.0.0.1, port: $PORT, workers: 1}
routes:
  - path: "/*rest"
    backends: [{url: "http://127.0.0.1:$ORIGIN_PORT"}]
rate_limiting: {enabled: $2, requests_per_second: 10000000, burst: 10000000}
cors: {enabled: $2}
health_check: {enabled: $2}
request_log: {enabled: $2, database: "$RUN/$1.db"}
logging: {access_log: $2}
YAML
}

for name in ${ONLY//,/ }; do
  case $name in
    nginx | nginx-log)
      nginx_conf "$name"
      measure "$name" nginx -p "$RUN/$name" -c "$RUN/$name.conf" ;;
    gw)
      gateway_conf gw false
      measure gw "$RUN/apigateway" --config "$RUN/gw.yaml" ;;
    gw-full)
      gateway_conf gw-full true
      measure gw-full "$RUN/apigateway" --config "$RUN/gw-full.yaml" ;;
    *) echo "instructions.sh: unknown target '$name'" >&2; exit 2 ;;
  esac
done

echo "$(date -Is), $(nginx -v 2>&1), $(valgrind --version), $REQUESTS requests over 50 connections"
echo "| target | instructions per request | × nginx | × nginx-log |"
echo "|---|---:|---:|---:|"
for name in ${ONLY//,/ }; do
  awk -v n="$name" -v c="${COUNT[$name]}" -v r="$REQUESTS" -v a="${COUNT[nginx]:-0}" \
    -v b="${COUNT[nginx-log]:-0}" 'BEGIN {
      x = a > 0 ? sprintf("%.2f", c / a) : "-"; y = b > 0 ? sprintf("%.2f", c / b) : "-"
      printf "| %s | %.0f | %s | %s |\n", n, c / r, x, y }'
done
