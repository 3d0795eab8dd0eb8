#!/usr/bin/env bash
# tail.sh ROUNDS NAME:PORT ... -> latency percentiles at 2,000/s (10 conns x 200/s, 20,000 requests)
R=$1; shift
for r in $(seq $R); do
  for t in "$@"; do
    IFS=: read name port <<< "$t"
    taskset -c 1 h2load --h1 -c10 --rps 200 -n20000 --log-file /tmp/prof/tail.log http://127.0.0.1:$port/ > /dev/null
    awk '{print $3}' /tmp/prof/tail.log | sort -n | awk -v t=$name -v r=$r '{a[NR]=$1} END{printf "r%s %-6s p50 %4d p99 %4d p99.9 %5d max %5d\n", r, t, a[int(NR*0.5)], a[int(NR*0.99)], a[int(NR*0.999)], a[NR]}'
  done
done
