# Targets for the scripts that measure one target at a time in front of the benchmark origin
# (counts.sh, placement.sh). Source it after setting HERE (the bench folder), RUN (a scratch
# folder), PORT (the target's port) and ORIGIN_PORT (the origin's).

# ready PID: waits up to 60 s for the target on PORT to respond, and fails when PID exits.
ready() {
  local i
  for i in $(seq 300); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# nginx_conf NAME: writes RUN/NAME.conf, the peer's configuration with the ports moved and
# without a master process.
nginx_conf() {
  mkdir -p "$RUN/$1/tmp"
  sed -e "s/127.0.0.1:9101/127.0.0.1:$ORIGIN_PORT/; s/127.0.0.1:92[0-9][0-9]/127.0.0.1:$PORT/" \
    -e 's/^master_process on;.*/master_process off;/' "$HERE/peers/$1.conf" >"$RUN/$1.conf"
}

# gateway_conf NAME FEATURES: writes RUN/NAME.yaml, the gateway with one worker, with every
# feature on (FEATURES true) or as a plain proxy (false). The rate limit never rejects.
gateway_conf() {
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
