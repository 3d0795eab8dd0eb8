#!/usr/bin/env bash
# Stress benchmark of the rate limit: one release gateway with a global token bucket in front
# of one mockserver, loaded by wrk at far more than the limit on 127.0.0.1.
#
# It prints the accepted count (the requests that reached the backend) against the bucket's
# promise (burst + rate x duration), the responses that were neither 200 nor 429, and the
# gateway's CPU time and peak RSS. It exits 1 when the accepted count is off by more than 2 %
# or when any other response or socket error occurs. It also exits 1 when the backend count
# and the 200 responses that wrk read differ by more than the requests in flight at the end.
#
# Usage: bench/rate_limit.sh [--quick]
#   --quick        run wrk for 2 s instead of 10 s (a smoke run for CI)
# Environment:
#   RATE           requests_per_second of the bucket (default 1000)
#   BURST          burst of the bucket (default 100)
#   CONNECTIONS    wrk connections (default 64)
#   THREADS        wrk threads (default 2); the status counts are summed over threads
#   CARGO_TARGET_DIR  where cargo builds (default: target/ in the repository)
set -euo pipefail

duration=10
case "${1:-}" in
    --quick) duration=2 ;;
    "") ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
esac

rate="${RATE:-1000}"
burst="${BURST:-100}"
connections="${CONNECTIONS:-64}"
threads="${THREADS:-2}"

repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$(mktemp -d)"
pids=()

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Load generator -------------------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk with apt-get" >&2
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    if ! apt-cache policy wrk | grep -q 'Candidate: [0-9]'; then
        echo "wrk is not available from apt; install wrk and run again" >&2
        exit 1
    fi
    $sudo apt-get install -y -qq wrk >/dev/null
fi

# --- Build ----------------------------------------------------------------------------------

(cd "$repo" && cargo build --release -p apigateway -p mockserver)
gateway_bin="$target/release/apigateway"
mock_bin="$target/release/mockserver"

# --- Helpers --------------------------------------------------------------------------------

# Defines wait_for_line FILE PATTERN and free_port.
source "$repo/bench/lib/helpers.sh"

# Sends GET $2 to 127.0.0.1:$1 and prints the response body.
http_get() {
    local port="$1" path="$2" response
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' \
        "$path" "$port" >&3
    response="$(timeout 5 cat <&3)"
    exec 3<&-
    printf '%s\n' "${response#*$'\r\n\r\n'}"
}

# Prints the CPU time (user + system) of process $1 in milliseconds.
cpu_ms() {
    local ticks
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    ticks="$(sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }')"
    echo $((ticks * 1000 / $(getconf CLK_TCK)))
}

# --- Start the backend and the gateway ------------------------------------------------------

"$mock_bin" --port 0 --name bench >"$work/mock.log" 2>&1 &
pids+=("$!")
mock_url="$(wait_for_line "$work/mock.log" 'listening on http://' | awk '{ print $NF }')"
mock_port="${mock_url##*:}"

gateway_port="$(free_port)"
cat >"$work/gateway.yaml" <<EOF
server:
  host: 127.0.0.1
  port: $gateway_port
health_check:
  enabled: false
request_log:
  enabled: false
logging:
  access_log: false
rate_limiting:
  enabled: true
  requests_per_second: $rate
  burst: $burst
  key: global
routes:
  - path: "/api/*rest"
    backends:
      - url: "$mock_url"
EOF

"$gateway_bin" --config "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
gateway_pid="$!"
pids+=("$gateway_pid")
wait_for_line "$work/gateway.log" 'listening' >/dev/null

# --- Load -----------------------------------------------------------------------------------

# wrk runs response() in each thread's own Lua state, so done() sums the counters of every
# thread that setup() recorded.
cat >"$work/count.lua" <<'EOF'
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    accepted = 0
    limited = 0
    other = 0
end

function response(status, headers, body)
    if status == 200 then
        accepted = accepted + 1
    elseif status == 429 then
        limited = limited + 1
    else
        other = other + 1
    end
end

function done(summary, latency, requests)
    local a, l, o = 0, 0, 0
    for _, thread in ipairs(threads) do
        a = a + thread:get("accepted")
        l = l + thread:get("limited")
        o = o + thread:get("other")
    end
    local e = summary.errors
    io.write(string.format(
        "COUNTS accepted=%d limited=%d other=%d socket_errors=%d duration_us=%d p99_us=%d\n",
        a, l, o, e.connect + e.read + e.write + e.timeout, summary.duration,
        latency:percentile(99)))
end
EOF

cpu_before="$(cpu_ms "$gateway_pid")"
timeout $((duration + 30)) wrk -t"$threads" -c"$connections" -d"${duration}s" \
    -s "$work/count.lua" "http://127.0.0.1:$gateway_port/api/bench" >"$work/wrk.log"
cpu_after="$(cpu_ms "$gateway_pid")"
peak_rss_kib="$(awk '/^VmHWM:/ { print $2 }' "/proc/$gateway_pid/status")"

counts="$(grep '^COUNTS ' "$work/wrk.log")"
field() { sed -E "s/.* $1=([0-9]+).*/\1/" <<<"$counts"; }
accepted="$(field accepted)"
limited="$(field limited)"
other="$(field other)"
socket_errors="$(field socket_errors)"
duration_us="$(field duration_us)"
p99_us="$(field p99_us)"
backend="$(http_get "$mock_port" /_mock/stats | sed -E 's/.*"requests":([0-9]+).*/\1/')"

# --- Report ---------------------------------------------------------------------------------

awk -v accepted="$accepted" -v limited="$limited" -v other="$other" \
    -v socket_errors="$socket_errors" -v duration_us="$duration_us" -v rate="$rate" \
    -v burst="$burst" -v backend="$backend" -v cpu_ms=$((cpu_after - cpu_before)) \
    -v rss_kib="$peak_rss_kib" -v p99_us="$p99_us" -v connections="$connections" \
    -v threads="$threads" '
BEGIN {
    seconds = duration_us / 1e6
    total = accepted + limited + other
    offered = total / seconds
    promise = burst + rate * seconds
    # wrk drops the responses still in flight when its time is up, so the backend count is the
    # true accepted count, and wrk may have read up to one fewer per connection.
    off = (backend - promise) / promise * 100
    printf "wrk: %d threads, %d connections, %.2f s\n", threads, connections, seconds
    printf "limit: %d requests/s, burst %d, key global\n", rate, burst
    printf "offered: %d responses, %.0f per second (%.1fx the limit), p99 %.2f ms\n", \
        total, offered, offered / rate, p99_us / 1000
    printf "accepted: %d (wrk read %d), bucket promise %.0f, off by %+.2f %%\n", \
        backend, accepted, promise, off
    printf "rejected with 429: %d\n", limited
    printf "other responses: %d, socket errors: %d\n", other, socket_errors
    printf "gateway CPU: %.2f s (%.0f %% of one core), peak RSS %.1f MiB\n", \
        cpu_ms / 1000, cpu_ms / 10 / seconds, rss_kib / 1024
    failed = 0
    if (off > 2 || off < -2) { print "FAIL: accepted count is off by more than 2 %"; failed = 1 }
    if (other + socket_errors > 0) { print "FAIL: responses other than 200 and 429"; failed = 1 }
    if (backend < accepted || backend > accepted + connections) {
        print "FAIL: the backend count does not match the 200 responses wrk read"
        failed = 1
    }
    if (offered < 10 * rate) { print "NOTE: wrk offered less than 10x the limit" }
    if (!failed) { print "PASS" }
    exit failed
}'
