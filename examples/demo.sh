#!/usr/bin/env bash
# Starts the three mock backends of config/gateway.yaml and the gateway in front of them.
# Stop both with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

# One package at a time, as `cargo run -p` builds each: built together, the shared
# dependencies get the union of both packages' features, and `cargo run` would rebuild them.
cargo build -p mockserver
cargo build -p apigateway
target="${CARGO_TARGET_DIR:-target}/debug"

"$target/mockserver" --fleet &
fleet=$!
trap 'kill "$fleet" 2>/dev/null || true' EXIT

# The gateway starts only once the three backends accept connections. A port that another
# program listens on makes the fleet exit, and the gateway would otherwise send the demo's
# requests to that program.
for attempt in $(seq 50); do
  if ! kill -0 "$fleet" 2>/dev/null; then
    echo "demo.sh: the mock backends did not start (is one of ports 9001 to 9003 taken?)." >&2
    echo "demo.sh: see the README's Quickstart for running them on other ports." >&2
    exit 1
  fi
  up=0
  for port in 9001 9002 9003; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      up=$((up + 1))
    fi
  done
  [[ $up -eq 3 ]] && break
  sleep 0.2
done
[[ $up -eq 3 ]] || { echo "demo.sh: the mock backends did not accept connections within 10 s" >&2; exit 1; }

"$target/apigateway" --config config/gateway.yaml
