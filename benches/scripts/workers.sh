#!/bin/bash
# `[runtime] workers` 1 against 2: proxied HTTP/1.1 keep-alive, 64 connections, 1 KiB, wrk and an
# nginx origin beside the daemon. Prints requests per second and the daemon's busy cores (from
# /proc/<pid>/stat), so req/s per busy core compares the two. "pinned" puts the daemon on core 0
# and wrk plus the origin on core 1, as the load benchmark does; "free" lets the kernel place them.
#   benches/scripts/workers.sh [ROUNDS] [SECONDS]
set -eu
ROUNDS=${1:-2}
D=${2:-6}
BIN=${STREAMGATE:-target/release/streamgate}
. "$(dirname "$0")/origin.sh"
origin_work workers 18081
one() {
  local workers=$1 place=$2 sg="" load=""
  if [ "$place" = pinned ]; then sg="taskset -c 0"; load="taskset -c 1"; fi
  cat > "$WORK/sg.toml" <<CONF
[runtime]
workers = $workers
[admin]
listen = "127.0.0.1:18090"
[[listeners]]
name = "web"
listen = "127.0.0.1:18080"
[[regions]]
name = "local"
backends = [ { address = "127.0.0.1:18081" } ]
[[services]]
name = "bench"
listeners = ["web"]
regions = ["local"]
CONF
  $load nginx -c "$WORK/origin.conf" -e "$WORK/origin.err"
  $sg "$BIN" --log-level warn run --config "$WORK/sg.toml" 2>"$WORK/sg.log" &
  local pid=$!
  echo $pid > "$WORK/sg.pid"
  sleep 1.5
  $load wrk -t1 -c64 -d2s http://127.0.0.1:18080/1k >/dev/null
  local t0 t1 out rps busy
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$($load wrk -t1 -c64 -d${D}s http://127.0.0.1:18080/1k)
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  busy=$(echo "($t1-$t0)/$(getconf CLK_TCK)/$D" | bc -l)
  printf "workers=%s %-6s %9.0f req/s  daemon busy %.2f cores  %7.0f req/s per busy core\n" \
    "$workers" "$place" "$rps" "$busy" "$(echo "$rps/$busy" | bc -l)"
  kill $pid; wait $pid 2>/dev/null || true
  kill "$(cat "$WORK/origin.pid")"; sleep 0.5
}
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  one 1 pinned; one 1 free; one 2 free
done
