#!/usr/bin/env bash
# Starts the three mock backends of config/gateway.yaml and the gateway in front of them.
# Stop both with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p mockserver -p apigateway
target="${CARGO_TARGET_DIR:-target}/debug"

"$target/mockserver" --fleet &
fleet=$!
trap 'kill "$fleet" 2>/dev/null || true' EXIT

"$target/apigateway" --config config/gateway.yaml
