#!/bin/sh
# Hit latency with and without a recovery point being written: the daemon (pinned to core 0)
# holds GIB of 512 KiB objects; wrk (core 1) reads one hot 1 KiB object over 16 connections;
# rounds alternate "idle" and "snapshotting" (a full point written again and again).
#   benches/scripts/snapshot-p99.sh [GIB] [ROUNDS]
set -eu
GIB=${1:-1}
ROUNDS=${2:-3}
BIN=${STREAMGATE:-target/release/streamgate}
WORK=$(mktemp -d /var/tmp/sg-p99.XXXXXX)
trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/www" "$WORK/state"
# nginx workers run as an unprivileged user: the files must be readable to them.
chmod 755 "$WORK" "$WORK/www"
head -c 524288 /dev/urandom > "$WORK/www/big"
head -c 1024 /dev/urandom > "$WORK/www/hot"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:19190;
    root $WORK/www;
    add_header Cache-Control "max-age=86400";
    location = /hot { }
    location / { try_files /big =404; }
  }
}
CONF
taskset -c 1 nginx -c "$WORK/nginx.conf"
cat > "$WORK/sg.toml" <<CONF
[runtime]
workers = 1
[admin]
listen = "127.0.0.1:19191"
[[listeners]]
name = "web"
listen = "127.0.0.1:19192"
[[regions]]
name = "o"
backends = [ { address = "127.0.0.1:19190" } ]
[[services]]
name = "video"
listeners = ["web"]
regions = ["o"]
[services.cache]
max_size = "$((GIB * 1280))MiB"
max_object_size = "1MiB"
[snapshots]
dir = "$WORK/state"
interval = "24h"
max_increments = 0
keep = 2
CONF
taskset -c 0 "$BIN" --log-level info run --config "$WORK/sg.toml" 2> "$WORK/sg.log" & echo $! > "$WORK/sg.pid"
sleep 1
N=$((GIB * 2048))
echo "filling $N objects of 512 KiB..." >&2
seq 1 "$N" | taskset -c 1 xargs -P 8 -I{} curl -s -o /dev/null "http://127.0.0.1:19192/seg/{}.ts"
curl -s -o /dev/null http://127.0.0.1:19192/hot
curl -s -D - -o /dev/null http://127.0.0.1:19192/hot | grep -i '^x-cache' >&2
curl -s http://127.0.0.1:19191/cache | grep -E '"(objects|bytes)"' >&2
p99() { taskset -c 1 wrk -t1 -c16 -d8s --latency http://127.0.0.1:19192/hot | awk '/ 99%/ {print $2} /Requests\/sec/ {print "rps", $2}' | tr '\n' ' '; }
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r idle:         $(p99)"
  ( while [ ! -f "$WORK/stop" ]; do curl -s -o /dev/null -X POST http://127.0.0.1:19191/snapshots; done ) &
  sleep 0.5
  echo "round $r snapshotting: $(p99)"
  touch "$WORK/stop"; wait $! 2>/dev/null || true; rm -f "$WORK/stop"
done
ls -la "$WORK/state" | grep snap >&2
grep -v " INFO " "$WORK/sg.log" | head -5 >&2
