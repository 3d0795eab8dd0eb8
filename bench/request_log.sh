#!/usr/bin/env bash
# Benchmark of the SQLite request log.
#
# (a) Runs the store's writer_throughput example, which queues 200,000 records and prints the
#     rows per second that the batch writer commits.
# (b) Loads one release gateway (server.workers: 1, one mockserver backend, access log, rate
#     limit, CORS and health checks off) with wrk on 127.0.0.1, once with the request log on and
#     once with it off, interleaved over several rounds. It prints requests per second for
#     each, the ratio on/off, and for each run with the log on the rows written and dropped
#     against the requests the backend served.
#
# The throughput figures are printed, never judged. The script exits 1 only when a response
# was not 200, a socket error occurred, or a run with the log on lost a row without counting
# it: written + dropped + failed is below the requests the backend served, or above them by
# more than the connections wrk can leave in flight at its end.
#
# Usage: bench/request_log.sh [--quick]
#   --quick        one round of 2 s runs instead of 3 rounds of 10 s (a smoke run)
# Environment:
#   CONNECTIONS    wrk connections (default 50)
#   CARGO_TARGET_DIR  where cargo builds (default: target/ in the repository)
set -euo pipefail

duration=10
rounds=3
case "${1:-}" in
    --quick)
        duration=2
        rounds=1
        ;;
    "") ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
esac

connections="${CONNECTIONS:-50}"

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

# `--bins` is needed next to `--examples`: a target flag alone builds only the targets named.
(cd "$repo" && cargo build --release -p apigateway -p mockserver -p gateway-store \
    --bins --examples)
# Copies, so that another build into the same target folder cannot swap a binary between runs.
cp "$target/release/apigateway" "$target/release/mockserver" \
    "$target/release/examples/writer_throughput" "$work/"
gateway_bin="$work/apigateway"
mock_bin="$work/mockserver"
writer_bin="$work/writer_throughput"
echo "== commit $(git -C "$repo" rev-parse --short HEAD)$(
    git -C "$repo" diff --quiet HEAD -- bin crates || echo ' with uncommitted changes')"

# --- Helpers --------------------------------------------------------------------------------

# Defines wait_for_line FILE PATTERN and free_port.
source "$repo/bench/lib/helpers.sh"

# Prints the number of requests mockserver on port $1 has echoed, from its /_mock/stats.
mock_requests() {
    local port="$1" response
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET /_mock/stats HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' \
        "$port" >&3
    response="$(timeout 5 cat <&3)"
    exec 3<&-
    sed -nE 's/.*"requests":([0-9]+).*/\1/p' <<<"$response"
}

# Prints the value of field $2 (such as `written`) of the key=value line $1.
line_field() {
    sed -nE "s/.*[ ]$2=([0-9]+).*/\1/p" <<<"$1"
}

# --- (a) Writer throughput ------------------------------------------------------------------

echo "== writer_throughput example (200,000 records, batch_size 512)"
writer_line="$(timeout 300 "$writer_bin")"
echo "$writer_line"
writer_rows_per_second="$(sed -nE 's/.* ([0-9]+) rows\/s.*/\1/p' <<<"$writer_line")"

# --- (b) Gateway throughput with the request log on and off ---------------------------------

"$mock_bin" --port 0 --name bench >"$work/mock.log" 2>&1 &
pids+=("$!")
mock_url="$(wait_for_line "$work/mock.log" 'listening on http://' | awk '{ print $NF }')"
mock_port="${mock_url##*:}"

# wrk counts responses by status in each thread's Lua state; done() sums them.
cat >"$work/count.lua" <<'EOF'
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    ok = 0
    other = 0
end

function response(status, headers, body)
    if status == 200 then
        ok = ok + 1
    else
        other = other + 1
    end
end

function done(summary, latency, requests)
    local ok_total, other_total = 0, 0
    for _, thread in ipairs(threads) do
        ok_total = ok_total + thread:get("ok")
        other_total = other_total + thread:get("other")
    end
    local e = summary.errors
    io.write(string.format("COUNTS ok=%d other=%d socket_errors=%d duration_us=%d\n",
        ok_total, other_total, e.connect + e.read + e.write + e.timeout, summary.duration))
end
EOF

failed=0
results="$work/results.txt"
: >"$results"

# Runs one gateway with the request log on ($1 = on) or off ($1 = off) for round $2, loads it
# with wrk and appends `mode rps` to the results file.
run_gateway() {
    local mode="$1" round="$2" dir port enabled ready pid counts ok other socket_errors
    local duration_us rps served_before served closed written dropped lost
    dir="$work/$mode-$round"
    mkdir -p "$dir"
    port="$(free_port)"
    enabled=false
    ready='listening'
    if [[ "$mode" == on ]]; then
        enabled=true
        # `listening` is logged before the request log opens, so wait for the log.
        ready='request log open'
    fi
    cat >"$dir/gateway.yaml" <<EOF
server:
  host: 127.0.0.1
  port: $port
  workers: 1
health_check:
  enabled: false
rate_limiting:
  enabled: false
cors:
  enabled: false
request_log:
  enabled: $enabled
  database: "$dir/gateway.db"
logging:
  access_log: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "$mock_url"
EOF
    "$gateway_bin" --config "$dir/gateway.yaml" >"$dir/gateway.log" 2>&1 &
    pid="$!"
    pids+=("$pid")
    wait_for_line "$dir/gateway.log" "$ready" >/dev/null

    served_before="$(mock_requests "$mock_port")"
    timeout $((duration + 30)) wrk -t1 -c"$connections" -d"${duration}s" \
        -s "$work/count.lua" "http://127.0.0.1:$port/api/bench" >"$dir/wrk.log"

    # SIGTERM drains the gateway and makes the writer commit everything queued.
    kill -TERM "$pid"
    if ! timeout 30 tail --pid="$pid" -f /dev/null; then
        echo "gateway ($mode, round $round) did not exit within 30 s of SIGTERM" >&2
        return 1
    fi
    wait "$pid" || {
        echo "gateway ($mode, round $round) exited with status $?" >&2
        cat "$dir/gateway.log" >&2
        return 1
    }
    served=$(($(mock_requests "$mock_port") - served_before))

    counts="$(grep '^COUNTS ' "$dir/wrk.log")"
    ok="$(line_field "$counts" ok)"
    other="$(line_field "$counts" other)"
    socket_errors="$(line_field "$counts" socket_errors)"
    duration_us="$(line_field "$counts" duration_us)"
    rps="$(awk -v n="$ok" -v us="$duration_us" 'BEGIN { printf "%.0f", n / (us / 1e6) }')"
    echo "$mode $rps" >>"$results"

    printf 'round %d, log %-3s: %8s requests/s (%d responses in %.2f s, backend served %d)\n' \
        "$round" "$mode" "$rps" "$ok" "$(awk -v us="$duration_us" 'BEGIN { print us / 1e6 }')" \
        "$served"
    if ((other + socket_errors > 0)); then
        echo "FAIL: $other responses other than 200 and $socket_errors socket errors" >&2
        failed=1
    fi
    if [[ "$mode" == on ]]; then
        closed="$(wait_for_line "$dir/gateway.log" 'request log closed')"
        written="$(line_field "$closed" written)"
        dropped="$(line_field "$closed" dropped)"
        lost="$(line_field "$closed" failed)"
        printf '                   rows written %d, dropped %d, failed %d of %d served\n' \
            "$written" "$dropped" "$lost" "$served"
        # wrk closes its connections with requests in flight. Each gets a row (status 499),
        # whether or not the backend counted it before the gateway dropped its backend
        # connection, so the rows may exceed the backend's count by up to one per connection,
        # never fall short of it.
        local accounted=$((written + dropped + lost))
        if ((accounted < served)); then
            echo "FAIL: $((served - accounted)) requests reached the backend" \
                "but were neither written nor counted as dropped" >&2
            failed=1
        elif ((accounted > served + connections)); then
            echo "FAIL: $((accounted - served)) more rows than requests the backend served," \
                "more than the $connections that wrk can leave in flight" >&2
            failed=1
        fi
    fi
}

echo
echo "== gateway throughput: wrk -t1 -c$connections -d${duration}s, server.workers 1," \
    "$rounds round(s)"
for round in $(seq "$rounds"); do
    # Alternate which mode goes first, so that drift over time does not favour one.
    if ((round % 2 == 1)); then
        run_gateway on "$round"
        run_gateway off "$round"
    else
        run_gateway off "$round"
        run_gateway on "$round"
    fi
done

echo
awk -v writer="$writer_rows_per_second" '
    { sum[$1] += $2; n[$1] += 1 }
    END {
        on = sum["on"] / n["on"]
        off = sum["off"] / n["off"]
        printf "writer_throughput: %s rows/s\n", writer
        printf "request log off: %.0f requests/s (mean of %d runs)\n", off, n["off"]
        printf "request log on:  %.0f requests/s (mean of %d runs)\n", on, n["on"]
        printf "ratio on/off: %.3f, so logging costs %.1f %% of throughput (target: under 10 %%)\n",
            on / off, (1 - on / off) * 100
    }' "$results"
exit "$failed"
