#!/bin/bash
# User-space instructions per request, counted by callgrind: proxied HTTP/1.1 and h2c, and cache
# hits over both (1 KiB, an nginx origin). Instruction counts do not depend on the machine's load,
# so this compares two binaries on a noisy machine where timing cannot: run it with each and
# compare.
# It counts StreamGate's own work only (the kernel's share is not instructions in the process), and
# valgrind counts a `rep movsb` copy per step, so large copies weigh more here than on the CPU.
#   benches/scripts/instructions.sh [REQUESTS]      (apt-get install valgrind nghttp2-client nginx)
#   STREAMGATE=/path/to/other/streamgate benches/scripts/instructions.sh
#   KEEP=/some/dir benches/scripts/instructions.sh   keeps each path's profile as DIR/NAME.callgrind
#                                                    (read it with callgrind_annotate)
set -eu
N=${1:-10000}
BIN=${STREAMGATE:-target/release/streamgate}
for tool in valgrind callgrind_control callgrind_annotate h2load nginx curl; do
  command -v $tool >/dev/null || { echo "needs $tool (apt-get install valgrind nghttp2-client nginx curl)" >&2; exit 2; }
done
. "$(dirname "$0")/origin.sh"
origin_work instructions 18181 "expires 1h;"
proxy_and_cache_config 18180 18182 18181 18190
nginx -c "$WORK/origin.conf" -e "$WORK/origin.err"

# One path: the daemon under callgrind, 2000 requests of warm-up, counters zeroed, N requests,
# counters dumped; instructions per request from the dump.
one() {
  local name=$1 url=$2 proto=$3
  rm -f "$WORK"/cg.out*
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" --compress-strings=no \
    "$BIN" --log-level warn run --config "$WORK/sg.toml" >"$WORK/valgrind.log" 2>&1 &
  local pid=$!
  echo $pid > "$WORK/sg.pid"
  for _ in $(seq 150); do curl -s -o /dev/null "$url" && break; sleep 0.2; done
  load() {
    if [ "$proto" = h1 ]; then h2load --h1 -n "$1" -c 8 "$url"; else h2load -n "$1" -c 4 -m 8 "$url"; fi
  }
  load 2000 >/dev/null
  callgrind_control -z $pid >/dev/null 2>&1
  local done
  done=$(load "$N" | awk '/^requests:/ {print $8}')
  callgrind_control -d $pid >/dev/null 2>&1
  kill $pid; wait $pid 2>/dev/null || true
  local ir out
  out=$(ls "$WORK"/cg.out.* | head -1)
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/$name.callgrind"
  ir=$(callgrind_annotate "$out" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  printf "%-16s %8d instructions per request (%s of %s requests succeeded)\n" \
    "$name" $((ir / N)) "$done" "$N"
}
echo "$BIN, $N requests per path"
one proxied-h1-1k http://127.0.0.1:18180/1k h1
one proxied-h2c-1k http://127.0.0.1:18180/1k h2
one hit-h1-1k http://127.0.0.1:18182/1k h1
one hit-h2c-1k http://127.0.0.1:18182/1k h2
