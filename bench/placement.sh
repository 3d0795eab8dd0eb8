#!/usr/bin/env bash
# Measures what a proxied request costs at a fixed offered load, with the target on a core of
# its own or sharing one core with the client and the origin. The side-by-side benchmark pins
# everything to one core, and there the gateway's CPU per request at 2,000/s can differ from
# what the same load costs it unpinned. This script shows how much of that is placement.
#
# Each target runs alone in front of the benchmark origin (127.0.0.1:9132) and takes
# REQUESTS requests (default 20,000) at 2,000 per second (h2load, 10 connections of 200/s),
# after a warm-up of 5,000. For the target's process over that run, it reports:
#   cpu ms       task-clock, the CPU time of every thread of the target
#   user/sys ms  the same split from /proc (10 ms ticks)
#   syscalls     system calls (the kernel's syscall entry tracepoint)
#   switches     context switches
# Placements:
#   unpinned  no CPU affinity: the kernel spreads target, origin and client
#   one-core  target, origin, client and perf all on CORE (default 1)
# Targets:
#   nginx      one worker, no master process, access log off      (bench/peers/nginx.conf)
#   nginx-log  the same with its buffered access log on            (bench/peers/nginx-log.conf)
#   gw         the plain proxy (request log, access line, rate limit and CORS off)
#   gw-full    every feature on, as shipped
# Installs nginx, h2load, curl and perf from the distribution's packages when one is missing,
# builds the gateway and the origin in release mode, and uses ports 9132 and 9332.
# Usage: bench/placement.sh [--only a,b] [--requests N] [--core N]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REQUESTS=20000
ONLY="nginx,gw,nginx-log,gw-full"
CORE=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --only | --requests | --core)
      [[ $# -ge 2 ]] || { echo "placement.sh: $1 needs a value" >&2; exit 2; }
      case $1 in
        --only) ONLY=$2 ;;
        --requests) REQUESTS=$2 ;;
        --core) CORE=$2 ;;
      esac
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "placement.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for name in ${ONLY//,/ }; do
  [[ $name =~ ^(nginx|nginx-log|gw|gw-full)$ ]] \
    || { echo "placement.sh: unknown target '$name': pick from nginx, nginx-log, gw, gw-full" >&2; exit 2; }
done
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "placement.sh: --requests takes a positive number" >&2; exit 2; }
[[ $CORE =~ ^[0-9]+$ ]] || { echo "placement.sh: --core takes a CPU number" >&2; exit 2; }

need=()
for tool in nginx h2load curl perf taskset; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [[ ${#need[@]} -gt 0 ]]; then
  echo "placement.sh: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq nginx nghttp2-client curl linux-perf util-linux >/dev/null
fi

(cd "$ROOT" && cargo build --release --locked -p apigateway)
ORIGIN_TARGET=${ORIGIN_TARGET:-${TMPDIR:-/tmp}/peer-bench-origin}
(cd "$HERE/origin" && cargo build --release --quiet --locked --target-dir "$ORIGIN_TARGET")

RUN=$(mktemp -d /tmp/gateway-placement.XXXXXX)
cp "$CARGO_TARGET_DIR/release/apigateway" "$RUN/apigateway"
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

ORIGIN_PORT=9132 PORT=9332
# shellcheck source=lib/targets.sh
source "$HERE/lib/targets.sh"

# ticks PID: the user and system clock ticks of process PID, every thread included.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# run PLACEMENT NAME COMMAND...: starts the origin and COMMAND, placed as PLACEMENT, and
# prints one row of the table.
run() {
  local placement=$1 name=$2 pin=() origin target counter before after
  shift 2
  [[ $placement == one-core ]] && pin=(taskset -c "$CORE")

  "${pin[@]}" "$ORIGIN_TARGET/release/bench-origin" "127.0.0.1:$ORIGIN_PORT" >"$RUN/origin.log" 2>&1 &
  origin=$!
  STARTED+=("$origin")
  "${pin[@]}" "$@" >"$RUN/$name.log" 2>&1 &
  target=$!
  STARTED+=("$target")
  ready "$target" || { echo "placement.sh: $name did not start, see its log:" >&2; tail "$RUN/$name.log" >&2; exit 1; }
  "${pin[@]}" h2load --h1 -c10 -n5000 "http://127.0.0.1:$PORT/" >/dev/null

  "${pin[@]}" perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$target" \
    -o "$RUN/$name.perf" &
  counter=$!
  sleep 0.5
  before=$(ticks "$target")
  "${pin[@]}" h2load --h1 -c10 --rps 200 -n"$REQUESTS" "http://127.0.0.1:$PORT/" \
    >"$RUN/$name.h2load"
  after=$(ticks "$target")
  kill -INT "$counter"
  wait "$counter" || true

  grep -q "$REQUESTS succeeded, 0 failed" "$RUN/$name.h2load" \
    || { echo "placement.sh: $name: not every request succeeded:" >&2; cat "$RUN/$name.h2load" >&2; exit 1; }
  kill "$target" "$origin"
  wait "$target" "$origin" 2>/dev/null || true

  awk -F, -v p="$placement" -v n="$name" -v before="$before" -v after="$after" -v hz="$(getconf CLK_TCK)" '
    /task-clock/ { cpu = $1 }
    /raw_syscalls:sys_enter/ { calls = $1 }
    /context-switches/ { switches = $1 }
    END {
      split(before, b, " "); split(after, a, " ")
      printf "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f |\n", p, n, cpu,
        (a[1] - b[1]) * 1000 / hz, (a[2] - b[2]) * 1000 / hz, calls, switches
    }' "$RUN/$name.perf"
}

echo "$(date -Is), $(nginx -v 2>&1), $REQUESTS requests at 2,000/s over 10 connections"
echo "| placement | target | cpu ms | user ms | sys ms | syscalls | switches |"
echo "|---|---|---:|---:|---:|---:|---:|"
for placement in unpinned one-core; do
  for name in ${ONLY//,/ }; do
    case $name in
      nginx | nginx-log)
        nginx_conf "$name"
        command=(nginx -p "$RUN/$name" -c "$RUN/$name.conf") ;;
      gw | gw-full)
        features=false
        [[ $name == gw-full ]] && features=true
        rm -f "$RUN/$name.db" "$RUN/$name.db-wal" "$RUN/$name.db-shm"
        gateway_conf "$name" "$features"
        command=("$RUN/apigateway" --config "$RUN/$name.yaml") ;;
    esac
    run "$placement" "$name" "${command[@]}"
  done
done
