#!/usr/bin/env bash
# Benchmark of large transfers and idle keep-alive connections, for the gateway beside NGINX.
#
# Builds the gateway and mockserver in release mode, then starts one mockserver on 127.0.0.1.
# In front of it run one gateway with one worker thread and every optional feature off
# (request log, access log, health checks, rate limit, CORS), and one NGINX with one worker
# process and request and response buffering off. It measures:
#   1. 100 MiB downloads with curl from the mockserver directly, through the gateway and
#      through NGINX: MB/s (10^6 bytes per second), median of the runs.
#   2. 100 MiB uploads the same way, checking the body length the mockserver counted.
#   For both, the proxies' peak RSS (VmHWM, summed over NGINX's master and worker) at start,
#   after one 1 MiB download and upload, after the downloads and after the uploads. A streamed
#   body keeps it flat after the first transfer.
#   3. 10,000 idle keep-alive client connections, each after one GET /x, to the gateway and
#      then to NGINX: (VmRSS with the connections - VmRSS before) / connections, in KiB.
#   4. 50 clients that read a 50 MB response 1 KiB every 50 ms through a 4 KiB receive buffer,
#      to a second, fresh gateway and to NGINX: (VmRSS after 4 s of reading - VmRSS before) /
#      clients, in KiB.
# Nothing is pinned to a core, so curl, the mockserver and the proxy share every core.
#
# Usage: bench/transfer.sh [--quick]
#   --quick        one transfer run per target instead of three, and 1,000 idle connections
#                  instead of 10,000 (a smoke run). Its RSS per connection reads low, because
#                  the first connections reuse memory the allocator kept after the transfers.
# Environment:
#   CARGO_TARGET_DIR  where cargo builds (default: target/ in the repository)
#
# It runs as root: it raises the open-file limit to 65536 (or to the hard limit, when that is
# lower but still enough) and installs nginx with apt-get when nginx is missing. The figures
# are printed, never judged. It exits 1 when a transfer is incomplete or an idle connection
# fails to open or stay open.
set -euo pipefail

runs=3
idle_connections=10000
case "${1:-}" in
    --quick)
        runs=1
        idle_connections=1000
        ;;
    "") ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
esac

transfer_bytes=104857600
# Clients hold their idle connections at most this long. It stays below the gateway's
# read_timeout and NGINX's keepalive_timeout (both 120 s), which close idle connections.
hold_seconds=90

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

# Every process started below inherits this limit: the client keeps one socket per idle
# connection, and each proxy needs as many accepted sockets. A container without
# CAP_SYS_RESOURCE cannot raise the hard limit even as root, so the hard limit is the fallback.
if ! ulimit -n 65536 2>/dev/null; then
    ulimit -n "$(ulimit -Hn)"
    echo "note: could not raise the open-file limit to 65536; using the hard limit" \
        "$(ulimit -n)" >&2
fi
if (($(ulimit -n) < idle_connections + 1024)); then
    echo "the open-file limit $(ulimit -n) is below the $((idle_connections + 1024)) needed;" \
        "raise the hard limit (ulimit -Hn) and run again" >&2
    exit 1
fi

# --- Tools ----------------------------------------------------------------------------------

if ! command -v nginx >/dev/null 2>&1; then
    echo "installing nginx with apt-get" >&2
    apt-get update -qq
    apt-get install -y -qq nginx >/dev/null
fi
for tool in curl python3 ss; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "missing tool: $tool" >&2
        exit 1
    fi
done

# Another load generator would take CPU time from the build and the transfers, so wait until
# neither wrk nor h2load has run for 15 s in a row. The pause matters because a benchmark
# script starts one load step right after the other.
quiet_seconds=0
for _ in $(seq 900); do
    if pgrep -x wrk >/dev/null || pgrep -x h2load >/dev/null; then
        quiet_seconds=0
    else
        quiet_seconds=$((quiet_seconds + 1))
    fi
    if ((quiet_seconds >= 15)); then
        break
    fi
    sleep 1
done
if ((quiet_seconds < 15)); then
    echo "wrk or h2load kept running for 15 minutes; run again when it ends" >&2
    exit 1
fi

# --- Build ----------------------------------------------------------------------------------

(cd "$repo" && cargo build --release --locked -p apigateway -p mockserver)
# Copies, so that another build into the same target folder cannot swap a binary between runs.
cp "$target/release/apigateway" "$target/release/mockserver" "$work/"
commit="$(git -C "$repo" rev-parse --short HEAD)$(
    git -C "$repo" diff --quiet HEAD -- bin crates || echo ' with uncommitted changes')"

# --- Helpers --------------------------------------------------------------------------------

# Defines wait_for_line FILE PATTERN and free_port.
source "$repo/bench/lib/helpers.sh"

# Prints process $1 and its children, which for NGINX are the master and its worker.
process_tree() {
    echo "$1"
    pgrep -P "$1" || true
}

# Prints field $2 (VmHWM or VmRSS) in KiB, summed over process $1 and its children.
memory_kib() {
    local pid sum=0 value
    for pid in $(process_tree "$1"); do
        value="$(awk -v field="$2:" '$1 == field { print $2 }' "/proc/$pid/status" \
            2>/dev/null || true)"
        sum=$((sum + ${value:-0}))
    done
    echo "$sum"
}

# Prints the median of the numbers on standard input.
median() {
    sort -g | awk '{ values[NR] = $1 } END {
        if (NR % 2 == 1) { print values[(NR + 1) / 2] }
        else { print (values[NR / 2] + values[NR / 2 + 1]) / 2 } }'
}

failed=0

# --- Servers --------------------------------------------------------------------------------

"$work/mockserver" --port 0 --name Origin >"$work/mock.log" 2>&1 &
pids+=("$!")
mock_url="$(wait_for_line "$work/mock.log" 'listening on http://' | awk '{ print $NF }')"
mock_port="${mock_url##*:}"

gateway_port="$(free_port)"
cat >"$work/gateway.yaml" <<EOF
server:
  host: 127.0.0.1
  port: $gateway_port
  workers: 1
  read_timeout: 120s
health_check:
  enabled: false
rate_limiting:
  enabled: false
cors:
  enabled: false
request_log:
  enabled: false
logging:
  access_log: false
routes:
  - path: "/*rest"
    backends:
      - url: "$mock_url"
EOF
"$work/apigateway" --config "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
gateway_pid="$!"
pids+=("$gateway_pid")
wait_for_line "$work/gateway.log" 'listening' >/dev/null

# NOTE: proxy_buffer_size and client_body_buffer_size keep NGINX's defaults of one and two
# memory pages (4k and 8k on x86-64). With buffering off NGINX moves each body through that
# one buffer. In a trial run
# on 2 CPUs, raising both to 64k about doubled its download and upload MB/s.
nginx_port="$(free_port)"
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;

events {
    worker_connections $((idle_connections + 1024));
}

http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;

    upstream origin {
        server 127.0.0.1:$mock_port;
        keepalive 16;
    }

    server {
        listen 127.0.0.1:$nginx_port;
        client_max_body_size 0;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 &
nginx_pid="$!"
pids+=("$nginx_pid")
nginx_ready=0
for _ in $(seq 100); do
    if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$nginx_port/x"; then
        nginx_ready=1
        break
    fi
    if ! kill -0 "$nginx_pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if ((nginx_ready == 0)); then
    echo "nginx did not respond with 200 within 10 s:" >&2
    cat "$work/nginx.log" "$work/nginx/error.log" >&2 2>/dev/null || true
    exit 1
fi

declare -A url=(
    [mock]="http://127.0.0.1:$mock_port/x"
    [gateway]="http://127.0.0.1:$gateway_port/x"
    [nginx]="http://127.0.0.1:$nginx_port/x"
)
targets=(mock gateway nginx)
declare -A download upload hwm_start hwm_warm hwm_download hwm_upload rss_per_connection

# Records the proxies' VmHWM in the array named $1.
record_hwm() {
    local -n into="$1"
    local name pid_var
    for name in gateway nginx; do
        pid_var="${name}_pid"
        into[$name]="$(memory_kib "${!pid_var}" VmHWM)"
    done
}

record_hwm hwm_start

# A 1 MiB download and upload through each proxy first, so that the figures after the 100 MiB
# transfers show their growth apart from the allocations of a proxy's first transfers.
for name in gateway nginx; do
    port_var="${name}_port"
    warm_url="http://127.0.0.1:${!port_var}/x"
    if ! curl -fs -o /dev/null --max-time 30 "$warm_url?size=1048576" ||
        ! head -c 1048576 /dev/zero | curl -fs -o /dev/null --max-time 30 -X POST \
            --data-binary @- -H 'Content-Type: application/octet-stream' "$warm_url"; then
        echo "FAIL: the 1 MiB warm-up transfer through $name failed" >&2
        failed=1
    fi
done
record_hwm hwm_warm

# --- 1. Downloads ---------------------------------------------------------------------------

echo "== downloads of $transfer_bytes bytes, $runs run(s) per target"
for run in $(seq "$runs"); do
    for name in "${targets[@]}"; do
        read -r speed size code < <(curl -s -o /dev/null --max-time 120 \
            -w '%{speed_download} %{size_download} %{http_code}\n' \
            "${url[$name]}?size=$transfer_bytes" || echo "0 0 000")
        printf 'run %d, %-7s: %8.1f MB/s (HTTP %s, %s bytes)\n' \
            "$run" "$name" "$(awk -v s="$speed" 'BEGIN { print s / 1e6 }')" "$code" "$size"
        if [[ "$code" != 200 || "$size" != "$transfer_bytes" ]]; then
            echo "FAIL: $name download returned HTTP $code with $size bytes" >&2
            failed=1
        fi
        echo "$speed" >>"$work/download-$name.txt"
    done
done
record_hwm hwm_download

# --- 2. Uploads -----------------------------------------------------------------------------

echo "== uploads of $transfer_bytes bytes, $runs run(s) per target"
for run in $(seq "$runs"); do
    for name in "${targets[@]}"; do
        read -r speed code < <(head -c "$transfer_bytes" /dev/zero |
            curl -s -X POST --data-binary @- -H 'Content-Type: application/octet-stream' \
                --max-time 120 "${url[$name]}" -o "$work/upload-response.json" \
                -w '%{speed_upload} %{http_code}\n' || echo "0 000")
        counted="$(sed -nE 's/.*"body_length":([0-9]+).*/\1/p' "$work/upload-response.json" \
            2>/dev/null || true)"
        printf 'run %d, %-7s: %8.1f MB/s (HTTP %s, backend counted %s bytes)\n' \
            "$run" "$name" "$(awk -v s="$speed" 'BEGIN { print s / 1e6 }')" "$code" \
            "${counted:-no}"
        if [[ "$code" != 200 || "$counted" != "$transfer_bytes" ]]; then
            echo "FAIL: $name upload returned HTTP $code, backend counted ${counted:-no} bytes" >&2
            failed=1
        fi
        rm -f "$work/upload-response.json"
        echo "$speed" >>"$work/upload-$name.txt"
    done
done
record_hwm hwm_upload

for name in "${targets[@]}"; do
    download[$name]="$(median <"$work/download-$name.txt" | awk '{ printf "%.1f", $1 / 1e6 }')"
    upload[$name]="$(median <"$work/upload-$name.txt" | awk '{ printf "%.1f", $1 / 1e6 }')"
done

# --- 3. Idle keep-alive connections ---------------------------------------------------------

# Opens $2 connections to port $1, sends one GET on each and reads the whole response, prints
# `open N`, then keeps them open until the file $4 exists or $3 seconds pass.
cat >"$work/idle.py" <<'EOF'
import os
import socket
import sys
import time

port, count, hold_seconds, done_file = (
    int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
open_deadline = time.monotonic() + 60


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head ended")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    if lines[0].split()[1] != b"200":
        raise ConnectionError(f"expected status 200, got {lines[0]!r}")
    headers = dict(line.split(b":", 1) for line in lines[1:])
    headers = {name.strip().lower(): value.strip() for name, value in headers.items()}
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the response body ended")
            body += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the last chunk")
            body += chunk
    else:
        raise ConnectionError("response has neither Content-Length nor chunked encoding")


sockets = []
for _ in range(count):
    if time.monotonic() > open_deadline:
        sys.exit(f"opened only {len(sockets)} of {count} connections within 60 s")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    read_response(sock)
    sockets.append(sock)
print(f"open {len(sockets)}", flush=True)

hold_deadline = time.monotonic() + hold_seconds
while time.monotonic() < hold_deadline and not os.path.exists(done_file):
    time.sleep(0.1)
for sock in sockets:
    sock.close()
EOF

echo "== $idle_connections idle keep-alive connections"
for name in gateway nginx; do
    pid_var="${name}_pid"
    pid="${!pid_var}"
    port_var="${name}_port"
    port="${!port_var}"
    rss_before="$(memory_kib "$pid" VmRSS)"

    rm -f "$work/idle-done"
    python3 "$work/idle.py" "$port" "$idle_connections" "$hold_seconds" "$work/idle-done" \
        >"$work/idle-$name.log" 2>&1 &
    client_pid="$!"
    pids+=("$client_pid")
    opened_line=""
    for _ in $(seq 700); do
        opened_line="$(grep -m1 '^open ' "$work/idle-$name.log" || true)"
        if [[ -n "$opened_line" ]] || ! kill -0 "$client_pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if [[ -z "$opened_line" ]]; then
        echo "FAIL: the client did not open $idle_connections connections to $name:" >&2
        cat "$work/idle-$name.log" >&2
        failed=1
        rss_per_connection[$name]="-"
        touch "$work/idle-done"
        wait "$client_pid" || true
        continue
    fi

    # Let the proxy finish its bookkeeping for the last connections before reading its RSS.
    sleep 1
    rss_with="$(memory_kib "$pid" VmRSS)"
    established="$(ss -Htn state established "( sport = :$port )" | wc -l)"
    touch "$work/idle-done"
    wait "$client_pid" || true

    rss_per_connection[$name]="$(awk -v a="$rss_with" -v b="$rss_before" \
        -v n="$idle_connections" 'BEGIN { printf "%.2f", (a - b) / n }')"
    printf '%-7s: RSS %d KiB before, %d KiB with %d connections open (%d established' \
        "$name" "$rss_before" "$rss_with" "$idle_connections" "$established"
    printf ' at measurement): %s KiB per connection\n' "${rss_per_connection[$name]}"
    if ((established < idle_connections)); then
        echo "FAIL: only $established of $idle_connections connections to $name were open" >&2
        failed=1
    fi
done

# --- 4. Slow readers ------------------------------------------------------------------------

# Opens $2 connections to port $1, each with a 4 KiB receive buffer and a GET of a 50 MB body.
# Reads 1 KiB from each every 50 ms for $3 seconds, then prints `reading`. Closes them once the
# file $4 exists, or after 30 s.
cat >"$work/slow.py" <<'EOF'
import os
import socket
import sys
import time

port, count, read_seconds, done_file = (
    int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
sockets = []
for _ in range(count):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /slow?size=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
    sock.setblocking(False)
    sockets.append(sock)
read_until = time.monotonic() + read_seconds
while time.monotonic() < read_until:
    for sock in sockets:
        try:
            sock.recv(1024)
        except BlockingIOError:
            pass
    time.sleep(0.05)
print("reading", flush=True)
wait_until = time.monotonic() + 30
while time.monotonic() < wait_until and not os.path.exists(done_file):
    time.sleep(0.1)
for sock in sockets:
    sock.close()
EOF

# A fresh gateway, because the first one keeps the memory that the idle connections freed,
# and the slow readers would reuse it unseen.
slow_gateway_port="$(free_port)"
sed "s/port: $gateway_port/port: $slow_gateway_port/" "$work/gateway.yaml" >"$work/slow-gateway.yaml"
"$work/apigateway" --config "$work/slow-gateway.yaml" >"$work/slow-gateway.log" 2>&1 &
slow_gateway_pid="$!"
pids+=("$slow_gateway_pid")
for _ in $(seq 100); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$slow_gateway_port/x" && break
    sleep 0.1
done

slow_readers=50
declare -A rss_per_slow_reader
echo "== $slow_readers slow readers of a 50 MB response"
for name in slow_gateway nginx; do
    pid_var="${name}_pid"
    pid="${!pid_var}"
    port_var="${name}_port"
    port="${!port_var}"
    rss_before="$(memory_kib "$pid" VmRSS)"
    rm -f "$work/slow-done"
    python3 "$work/slow.py" "$port" "$slow_readers" 4 "$work/slow-done" \
        >"$work/slow-$name.log" 2>&1 &
    client_pid="$!"
    pids+=("$client_pid")
    for _ in $(seq 100); do
        if grep -q '^reading' "$work/slow-$name.log" || ! kill -0 "$client_pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    rss_with="$(memory_kib "$pid" VmRSS)"
    touch "$work/slow-done"
    wait "$client_pid" || true
    rss_per_slow_reader[$name]="$(awk -v a="$rss_with" -v b="$rss_before" \
        -v n="$slow_readers" 'BEGIN { printf "%.0f", (a - b) / n }')"
    printf '%-7s: RSS %d KiB before, %d KiB with %d slow readers: %s KiB per reader\n' \
        "$name" "$rss_before" "$rss_with" "$slow_readers" "${rss_per_slow_reader[$name]}"
done

# --- Report ---------------------------------------------------------------------------------

# Prints $1 / $2, or `-` when either is not a positive number.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "-" }
        else { printf "%.2f", a / b } }'
}

echo
echo "Machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo);" \
    "$(uname -sr)"
echo "Versions: $(nginx -v 2>&1); $(rustc --version); gateway commit $commit"
echo "Date: $(date -Is). Script: bench/transfer.sh${1:+ $1}, $runs run(s) per transfer."
echo
echo "| measure | mockserver direct | gateway | NGINX | gateway / NGINX |"
echo "|---|---:|---:|---:|---:|"
printf '| 100 MiB download, MB/s (median) | %s | %s | %s | %s |\n' "${download[mock]}" \
    "${download[gateway]}" "${download[nginx]}" \
    "$(ratio "${download[gateway]}" "${download[nginx]}")"
printf '| 100 MiB upload, MB/s (median) | %s | %s | %s | %s |\n' "${upload[mock]}" \
    "${upload[gateway]}" "${upload[nginx]}" "$(ratio "${upload[gateway]}" "${upload[nginx]}")"
for stage in start warm download upload; do
    declare -n hwm="hwm_$stage"
    case "$stage" in
        start) label="at start" ;;
        warm) label="after 1 MiB warm-up" ;;
        download) label="after the downloads" ;;
        upload) label="after the uploads" ;;
    esac
    printf '| peak RSS (VmHWM) %s, KiB | - | %s | %s | %s |\n' "$label" "${hwm[gateway]}" \
        "${hwm[nginx]}" "$(ratio "${hwm[gateway]}" "${hwm[nginx]}")"
    unset -n hwm
done
printf '| RSS per idle keep-alive connection (%d open), KiB | - | %s | %s | %s |\n' \
    "$idle_connections" "${rss_per_connection[gateway]}" "${rss_per_connection[nginx]}" \
    "$(ratio "${rss_per_connection[gateway]}" "${rss_per_connection[nginx]}")"
printf '| RSS per slow reader of a 50 MB response (%d readers), KiB | - | %s | %s | %s |\n' \
    "$slow_readers" "${rss_per_slow_reader[slow_gateway]}" "${rss_per_slow_reader[nginx]}" \
    "$(ratio "${rss_per_slow_reader[slow_gateway]}" "${rss_per_slow_reader[nginx]}")"
exit "$failed"
