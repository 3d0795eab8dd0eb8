# Shell helpers shared by the benchmark scripts in this folder. Source it; it defines
# functions only.

# Waits up to 20 s for a line matching $2 in file $1 and prints it.
wait_for_line() {
    local file="$1" pattern="$2" line
    for _ in $(seq 200); do
        line="$(grep -m1 -E "$pattern" "$file" 2>/dev/null || true)"
        if [[ -n "$line" ]]; then
            echo "$line"
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for /$pattern/ in $file:" >&2
    cat "$file" >&2
    return 1
}

# Prints a loopback port that nothing listens on at the moment. The ports lie below Linux's
# default ephemeral range (32768 to 60999), so that no outgoing connection uses one of them.
free_port() {
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "found no free port" >&2
    return 1
}
