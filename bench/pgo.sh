#!/usr/bin/env bash
# Builds the gateway with profile-guided optimization (PGO) and prints the binary's path.
#
# A PGO build is compiled twice. The first build is instrumented: it counts how often each
# branch is taken and each function is called. This script runs it on loopback in front of the
# benchmark origin, under the training load below, as a plain proxy and with every feature on.
# The second build reads those counts, lays out the code that requests run as one stretch, and
# inlines along the paths they take. The binary does the same work as the ordinary release
# build, in fewer instructions and with fewer instruction-cache misses (bench/RESULTS.md).
#
# Training load, for each of the two configurations (about two minutes in all):
#   GET, 50 connections, 60,000 requests       the benchmarks' request
#   GET with a query, a browser's User-Agent and an Origin, 20,000 requests
#   POST of 1 KiB, 10,000 requests, and of 256 KiB, 300 requests
#   HEAD, an OPTIONS preflight, a 405 and a PURGE, 200 each
# The load includes the benchmarks' own request, so the benchmarks measure the gain on the
# path it was trained on. Train on your own traffic's shape for a production build, by editing
# train() below.
#
# Needs llvm-profdata of the LLVM that rustc was built with (`rustc -vV`): it is looked up in
# rustup's llvm-tools component, then as llvm-profdata-N, and installed from the
# distribution's llvm-N package when missing. Installs h2load and curl the same way, builds the
# origin in release mode, and uses ports 9141 (origin) and 9341 (gateway), which must be free.
# Usage: bench/pgo.sh [--out FILE]
#   --out  copy the optimized binary to FILE
# The builds go to $CARGO_TARGET_DIR/pgo-generate and $CARGO_TARGET_DIR/pgo-use (target/ by
# default, about 1 GB each). The first run takes about ten minutes on two cores, most of it
# the two builds; later runs reuse the instrumented build while the sources stay the same, and
# always rebuild the optimized one, since its profile is new.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET="$PWD/$TARGET"
OUT=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --out)
      [[ $# -ge 2 ]] || { echo "pgo.sh: --out needs a file" >&2; exit 2; }
      OUT=$2
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "pgo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
# The output is checked before the builds, so that a mistyped path does not cost a run.
if [[ -n $OUT ]]; then
  [[ $OUT == /* ]] || OUT="$PWD/$OUT"
  [[ -d $(dirname "$OUT") ]] || { echo "pgo.sh: --out: folder $(dirname "$OUT") not found" >&2; exit 2; }
  [[ ! -d $OUT ]] || { echo "pgo.sh: --out: $OUT is a folder: name the binary's file" >&2; exit 2; }
fi
# The profile flags go in RUSTFLAGS, which cargo ignores when CARGO_ENCODED_RUSTFLAGS is set.
[[ -z ${CARGO_ENCODED_RUSTFLAGS:-} ]] || {
  echo "pgo.sh: unset CARGO_ENCODED_RUSTFLAGS, which would replace the profile flags" >&2
  exit 2
}
# A listener already on either port would get the training load, and its responses would
# shape the profile.
for port in 9141 9341; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "pgo.sh: port $port on 127.0.0.1 is in use: stop what listens there" >&2
    exit 1
  fi
done

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $llvm_major ]] || { echo "pgo.sh: 'rustc -vV' names no LLVM version" >&2; exit 1; }
find_profdata() {
  local tools
  tools="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
  if [[ -x $tools/llvm-profdata ]]; then
    echo "$tools/llvm-profdata"
  elif command -v "llvm-profdata-$llvm_major" >/dev/null; then
    command -v "llvm-profdata-$llvm_major"
  fi
}
PROFDATA=$(find_profdata)
if [[ -z $PROFDATA ]]; then
  echo "pgo.sh: installing llvm-$llvm_major for llvm-profdata" >&2
  apt-get update -qq || true
  apt-get install -y -qq "llvm-$llvm_major" >/dev/null || true
  PROFDATA=$(find_profdata)
fi
[[ -n $PROFDATA ]] || {
  echo "pgo.sh: no llvm-profdata for LLVM $llvm_major: run 'rustup component add llvm-tools'" \
    "or install the llvm-$llvm_major package" >&2
  exit 1
}
need=()
for tool in h2load curl; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [[ ${#need[@]} -gt 0 ]]; then
  echo "pgo.sh: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq nghttp2-client curl >/dev/null
fi

RUN=$(mktemp -d /tmp/gateway-pgo.XXXXXX)
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

ORIGIN_TARGET=${ORIGIN_TARGET:-${TMPDIR:-/tmp}/peer-bench-origin}
(cd "$HERE/origin" && cargo build --release --quiet --locked --target-dir "$ORIGIN_TARGET")
# With --target, RUSTFLAGS reach only the gateway's own code and not build scripts or
# procedural macros, which would otherwise write profiles of their own.
HOST=$(rustc -vV | sed -n 's/^host: //p')
# A fixed folder for the raw profiles keeps RUSTFLAGS the same from run to run, so that cargo
# reuses the instrumented build.
PROFILES="$TARGET/pgo-generate/profiles"
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
echo "pgo.sh: building the instrumented gateway" >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET/pgo-generate" \
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PROFILES" \
  cargo build --release --locked --quiet --target "$HOST" -p apigateway)

ORIGIN_PORT=9141 PORT=9341
"$ORIGIN_TARGET/release/bench-origin" "127.0.0.1:$ORIGIN_PORT" >"$RUN/origin.log" 2>&1 &
ORIGIN_PID=$!
STARTED+=("$ORIGIN_PID")
head -c 1024 /dev/zero | tr '\0' 'a' >"$RUN/body-1k"
head -c 262144 /dev/zero | tr '\0' 'b' >"$RUN/body-256k"

# h2load_ok [--some-5xx] ARGS...: runs h2load and fails unless every request got a 2xx or 3xx
# response. With --some-5xx, up to 5 % of them may get a 5xx instead.
h2load_ok() {
  local out allowed=0 total failed
  if [[ $1 == --some-5xx ]]; then
    allowed=5
    shift
  fi
  out=$(timeout 300 h2load --h1 "$@") || { echo "pgo.sh: h2load $*: failed" >&2; exit 1; }
  total=$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' <<<"$out")
  failed=$(sed -n 's/^requests: .* \([0-9]*\) failed, 0 errored, 0 timeout$/\1/p' <<<"$out")
  if [[ -z $total || -z $failed ]] || ((failed * 100 > allowed * total)); then
    echo "pgo.sh: h2load $*: not every request succeeded:" >&2
    echo "$out" >&2
    exit 1
  fi
}

# fail_with_log NAME MESSAGE: prints MESSAGE and the end of RUN/NAME.log, and exits.
fail_with_log() {
  echo "pgo.sh: $2, see the end of its log:" >&2
  tail -n 5 "$RUN/$1.log" >&2
  exit 1
}

# train FEATURES: runs the instrumented gateway as a plain proxy (false) or with every
# feature on (true) under the training load, then stops it so that it writes its profile.
train() {
  local name=gw-$1 pid url="http://127.0.0.1:$PORT" i
  cat >"$RUN/$name.yaml" <<YAML
server: {host: 127.0.0.1, port: $PORT, workers: 1}
routes:
  - path: "/static/*rest"
    backends: [{url: "http://127.0.0.1:$ORIGIN_PORT"}]
    methods: [GET]
  - path: "/*rest"
    backends: [{url: "http://127.0.0.1:$ORIGIN_PORT"}]
rate_limiting: {enabled: $1, requests_per_second: 10000000, burst: 10000000}
cors: {enabled: $1}
health_check: {enabled: $1}
request_log: {enabled: $1, database: "$RUN/$name.db"}
logging: {access_log: $1}
YAML
  LLVM_PROFILE_FILE="$PROFILES/$name-%p.profraw" \
    "$TARGET/pgo-generate/$HOST/release/apigateway" --config "$RUN/$name.yaml" \
    >"$RUN/$name.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  for i in $(seq 300); do
    kill -0 "$ORIGIN_PID" 2>/dev/null || fail_with_log origin "the origin stopped"
    kill -0 "$pid" 2>/dev/null || fail_with_log "$name" "the gateway stopped"
    curl -fs -o /dev/null --max-time 1 "$url/" && break
    [[ $i -lt 300 ]] || fail_with_log "$name" "the gateway did not respond within 60 s"
    sleep 0.2
  done
  h2load_ok -c50 -n60000 "$url/"
  h2load_ok -c20 -n20000 -H "Origin: http://app.example" \
    -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0" \
    "$url/api/users/42?fields=name,email&page=2"
  # The origin responds without reading a body, then closes the connection without a
  # `Connection: close`. Now and then a POST meets a pooled connection as it closes and gets 502.
  h2load_ok --some-5xx -c10 -n10000 -d "$RUN/body-1k" "$url/api/orders"
  h2load_ok --some-5xx -c4 -n300 -d "$RUN/body-256k" "$url/api/uploads"
  # One curl reads the requests from a configuration file, on one connection, and `next` starts
  # each request's own options.
  for i in $(seq 200); do
    printf 'url = "%s/static/app.js"\n-I\nnext\n' "$url"
    printf 'url = "%s/api/orders"\n-X OPTIONS\n-H "Origin: http://app.example"\n' "$url"
    printf -- '-H "Access-Control-Request-Method: PUT"\nnext\n'
    printf 'url = "%s/static/app.js"\n-X POST\nnext\n' "$url"
    printf 'url = "%s/api/cache/1"\n-X PURGE\n' "$url"
    [[ $i == 200 ]] || printf 'next\n'
  done | sed 's|^url = .*|&\n-s\n-o /dev/null|' >"$RUN/curl.conf"
  timeout 120 curl -K "$RUN/curl.conf" || { echo "pgo.sh: curl's requests failed" >&2; exit 1; }
  kill "$pid" 2>/dev/null || fail_with_log "$name" "the gateway stopped during the training"
  wait "$pid" || true
}
train false
train true

"$PROFDATA" merge -o "$RUN/merged.profdata" "$PROFILES"/*.profraw
echo "pgo.sh: building the optimized gateway" >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET/pgo-use" \
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$RUN/merged.profdata" \
  cargo build --release --locked --quiet --target "$HOST" -p apigateway)
BIN="$TARGET/pgo-use/$HOST/release/apigateway"
if [[ -n $OUT ]]; then
  cp -- "$BIN" "$OUT"
  BIN=$OUT
fi
echo "$BIN"
