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

"$target/apigateway" --config config/gateway.yaml
