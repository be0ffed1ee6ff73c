#!/bin/bash
# h2c throughput of 1 MiB answers for the binaries given, alternated round by round: cache hits
# (4 connections x 4 streams, and 1 x 1) and proxied (4 x 4) from an nginx origin. The daemon
# runs on core 0, nginx and h2load on core 1. Compares two builds of a change that touches
# large HTTP/2 answers (send buffers, windows, the pump).
#   benches/scripts/h2-large.sh ROUNDS BIN...      (apt-get install nginx nghttp2-client curl)
set -eu
ROUNDS=$1; shift
for tool in h2load nginx curl taskset; do
  command -v $tool >/dev/null || { echo "needs $tool (apt-get install nginx nghttp2-client curl)" >&2; exit 2; }
done
. "$(dirname "$0")/origin.sh"
origin_work h2big 18281 "expires 1h;"
head -c 1048576 /dev/urandom > "$WORK/www/1m"; chmod 644 "$WORK/www/1m"
proxy_and_cache_config 18280 18282 18281
taskset -c 1 nginx -c "$WORK/origin.conf" -e "$WORK/origin.err"
for r in $(seq $ROUNDS); do
  for bin in "$@"; do
    taskset -c 0 "$bin" --log-level warn run --config "$WORK/sg.toml" > "$WORK/sg.log" 2>&1 &
    pid=$!; echo $pid > "$WORK/sg.pid"
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18282/1m && break; sleep 0.1; done
    hit=$(taskset -c 1 h2load -n 3000 -c 4 -m 4 http://127.0.0.1:18282/1m | awk '/^finished in/ {print $4 $5}')
    pass=$(taskset -c 1 h2load -n 1500 -c 4 -m 4 http://127.0.0.1:18280/1m | awk '/^finished in/ {print $4 $5}')
    one=$(taskset -c 1 h2load -n 500 -c 1 -m 1 http://127.0.0.1:18282/1m | awk '/^finished in/ {print $4 $5}')
    echo "round $r $bin: hit-c4m4 $hit  pass-c4m4 $pass  hit-c1m1 $one"
    kill $pid; wait $pid 2>/dev/null || true
  done
done
