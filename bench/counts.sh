#!/usr/bin/env bash
# Counts what one proxied request costs the gateway and NGINX. Neither measure depends on
# what else the machine is doing, so a change of 1 % in the hot path shows:
#   instructions  user-space instructions per request, counted by valgrind's callgrind. The
#                 same binary, configuration and load give the same figure to within a
#                 fraction of a percent.
#   syscalls      system calls per request, counted by perf on the kernel's syscall entry
#                 tracepoint while the target runs natively. About 60 % of a request's CPU
#                 time on loopback is the kernel's, nearly all of it inside these calls.
# Neither is CPU time: compare that with bench/gateway.sh.
#
# Each target runs alone in front of the benchmark origin (127.0.0.1:9131), once under
# callgrind and once natively. A warm-up of 5,000 requests is not counted, then REQUESTS
# requests (default 20,000) over 50 connections are. Every thread of the target counts, so
# the gateway's figures include its request log writer.
#   nginx      one worker, no master process, access log off      (bench/peers/nginx.conf)
#   nginx-log  the same with its buffered access log on            (bench/peers/nginx-log.conf)
#   gw         the plain proxy (request log, access line, rate limit and CORS off)
#   gw-full    every feature on, as shipped
#   gw-pgo, gw-full-pgo  the same two, built with profile-guided optimization by bench/pgo.sh
#              (only when named in --only; PGO_BINARY=FILE uses a binary pgo.sh already built)
# Installs nginx, h2load, valgrind, curl and perf from the distribution's packages when one is
# missing, builds the gateway and the origin in release mode, and uses ports 9131 and 9331.
# Usage: bench/counts.sh [--quick] [--only a,b] [--keep DIR]
#   --quick  4,000 counted requests
#   --only   the targets to run, from nginx, nginx-log, gw, gw-full, gw-pgo and gw-full-pgo
#   --keep   keep the callgrind output files in DIR, for callgrind_annotate
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REQUESTS=20000
ONLY="nginx,nginx-log,gw,gw-full"
KEEP=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) REQUESTS=4000; shift ;;
    --only | --keep)
      [[ $# -ge 2 ]] || { echo "counts.sh: $1 needs a value" >&2; exit 2; }
      if [[ $1 == --only ]]; then ONLY=$2; else KEEP=$2; fi
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "counts.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for name in ${ONLY//,/ }; do
  [[ $name =~ ^(nginx|nginx-log|gw|gw-full|gw-pgo|gw-full-pgo)$ ]] || {
    echo "counts.sh: unknown target '$name': pick from nginx, nginx-log, gw, gw-full, gw-pgo," \
      "gw-full-pgo" >&2
    exit 2
  }
done

need=()
for tool in nginx h2load valgrind curl perf; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [[ ${#need[@]} -gt 0 ]]; then
  echo "counts.sh: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq nginx nghttp2-client valgrind curl linux-perf >/dev/null
fi

(cd "$ROOT" && cargo build --release --locked -p apigateway)
ORIGIN_TARGET=${ORIGIN_TARGET:-${TMPDIR:-/tmp}/peer-bench-origin}
(cd "$HERE/origin" && cargo build --release --quiet --locked --target-dir "$ORIGIN_TARGET")

RUN=$(mktemp -d /tmp/gateway-counts.XXXXXX)
cp "$CARGO_TARGET_DIR/release/apigateway" "$RUN/apigateway"
if [[ ,$ONLY, == *-pgo,* ]]; then
  if [[ -n ${PGO_BINARY:-} ]]; then
    cp "$PGO_BINARY" "$RUN/apigateway-pgo"
  else
    "$HERE/pgo.sh" --out "$RUN/apigateway-pgo" >/dev/null
  fi
fi
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

ORIGIN_PORT=9131 PORT=9331
# shellcheck source=lib/targets.sh
source "$HERE/lib/targets.sh"
declare -A COUNT=() CALLS=()
"$ORIGIN_TARGET/release/bench-origin" "127.0.0.1:$ORIGIN_PORT" >"$RUN/origin.log" 2>&1 &
STARTED+=($!)

# measure NAME COMMAND...: runs COMMAND under callgrind and sets COUNT[NAME] to the
# instructions of the counted requests.
measure() {
  local name=$1 out="$RUN/callgrind.$1.out" pid total
  shift
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
    >"$RUN/$name.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  ready "$pid" || { echo "counts.sh: $name did not start, see its log:" >&2; tail "$RUN/$name.log" >&2; exit 1; }
  h2load --h1 -c50 -n5000 "http://127.0.0.1:$PORT/" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  h2load --h1 -c50 -n"$REQUESTS" "http://127.0.0.1:$PORT/" >"$RUN/$name.h2load"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  grep -q "$REQUESTS succeeded, 0 failed" "$RUN/$name.h2load" \
    || { echo "counts.sh: $name: not every request succeeded:" >&2; cat "$RUN/$name.h2load" >&2; exit 1; }
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  COUNT[$name]=$(awk '/^totals:/ {print $2}' "$out")
  if [[ -n $KEEP ]]; then
    mkdir -p "$KEEP"
    cp "$out" "$KEEP/"
  fi
}

# count_calls NAME COMMAND...: runs COMMAND natively and sets CALLS[NAME] to the system calls
# of the counted requests.
count_calls() {
  local name=$1 pid counter
  shift
  "$@" >"$RUN/$name.native.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  ready "$pid" || { echo "counts.sh: $name did not start, see its log:" >&2; tail "$RUN/$name.native.log" >&2; exit 1; }
  h2load --h1 -c50 -n5000 "http://127.0.0.1:$PORT/" >/dev/null
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$RUN/$name.perf" &
  counter=$!
  sleep 0.5
  h2load --h1 -c50 -n"$REQUESTS" "http://127.0.0.1:$PORT/" >"$RUN/$name.native.h2load"
  kill -INT "$counter"
  wait "$counter" || true
  grep -q "$REQUESTS succeeded, 0 failed" "$RUN/$name.native.h2load" \
    || { echo "counts.sh: $name: not every request succeeded:" >&2; cat "$RUN/$name.native.h2load" >&2; exit 1; }
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  CALLS[$name]=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$RUN/$name.perf")
}

for name in ${ONLY//,/ }; do
  case $name in
    nginx | nginx-log)
      nginx_conf "$name"
      command=(nginx -p "$RUN/$name" -c "$RUN/$name.conf") ;;
    gw)
      gateway_conf gw false
      command=("$RUN/apigateway" --config "$RUN/gw.yaml") ;;
    gw-full)
      gateway_conf gw-full true
      command=("$RUN/apigateway" --config "$RUN/gw-full.yaml") ;;
    gw-pgo)
      gateway_conf gw-pgo false
      command=("$RUN/apigateway-pgo" --config "$RUN/gw-pgo.yaml") ;;
    gw-full-pgo)
      gateway_conf gw-full-pgo true
      command=("$RUN/apigateway-pgo" --config "$RUN/gw-full-pgo.yaml") ;;
    *) echo "counts.sh: unknown target '$name'" >&2; exit 2 ;;
  esac
  measure "$name" "${command[@]}"
  # A fresh request log, so that both runs start from an empty database.
  rm -f "$RUN/$name.db" "$RUN/$name.db-wal" "$RUN/$name.db-shm"
  count_calls "$name" "${command[@]}"
done

echo "$(date -Is), $(nginx -v 2>&1), $(valgrind --version), $REQUESTS requests over 50 connections"
echo "| target | instructions per request | × nginx | × nginx-log | system calls per request | × nginx | × nginx-log |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for name in ${ONLY//,/ }; do
  awk -v n="$name" -v r="$REQUESTS" \
    -v c="${COUNT[$name]}" -v a="${COUNT[nginx]:-0}" -v b="${COUNT[nginx-log]:-0}" \
    -v s="${CALLS[$name]}" -v sa="${CALLS[nginx]:-0}" -v sb="${CALLS[nginx-log]:-0}" '
    function ratio(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" }
    BEGIN {
      printf "| %s | %.0f | %s | %s | %.2f | %s | %s |\n", n, c / r, ratio(c, a), ratio(c, b),
        s / r, ratio(s, sa), ratio(s, sb)
    }'
done
