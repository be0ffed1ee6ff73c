#!/bin/bash
# Builds StreamGate with profile-guided optimisation: an instrumented build serves a training mix
# on loopback, and the release build is laid out by what that mix executed (hot code packed
# together, cold code moved away). docs/benchmarks.md, "Profile-guided builds", has what it buys
# and how that was measured.
#   benches/scripts/pgo.sh                   builds target/pgo/<host>/release/streamgate
#   KEEP_PROFILE=FILE benches/scripts/pgo.sh      also keeps the merged profile as FILE
#   PROFILE=FILE benches/scripts/pgo.sh           skips training and builds with FILE
# Needs llvm-profdata of the same LLVM major version as rustc (`rustc -vV`), and for training
# nginx, h2load, curl and openssl:
#   apt-get install llvm-22 nginx nghttp2-client curl openssl     (or: rustup component add
#   llvm-tools; LLVM_PROFDATA=/path/to/llvm-profdata picks another one)
# The training mix is what a PoP serves, not one benchmark: proxied HTTP/1.1 (small and large
# answers, uploads), h2c, HTTPS over HTTP/1.1 and HTTP/2 with fresh handshakes, cache hits over
# both protocols, gzip compression, and L4 TCP; once with `workers = 1` (tokio's single-threaded
# scheduler) and once with `workers = 2` (the multi-threaded one, the default on a multi-core
# machine).
set -eu
[ -z "${PROFILE:-}" ] || PROFILE=$(realpath -e "$PROFILE")
[ -z "${KEEP_PROFILE:-}" ] || KEEP_PROFILE=$(realpath -m "$KEEP_PROFILE")
cd "$(dirname "$0")/../.."
# cargo reads CARGO_ENCODED_RUSTFLAGS before RUSTFLAGS: one left in the environment would build
# without the profile flags below, under the PGO output path.
unset CARGO_ENCODED_RUSTFLAGS
HOST=$(rustc -vV | awk '/^host:/ {print $2}')
MAJOR=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
OUT=target/pgo/$HOST/release/streamgate
step() { echo "== $(date +%T) $*" >&2; }

optimised() {
  step "optimised build with $1 (a cold build takes about 10 minutes on 2 cores)"
  # rustc warns about functions that changed since the profile was taken (built as without one).
  RUSTFLAGS="-Cprofile-use=$1" \
    cargo build --release --locked -p streamgate --target "$HOST" --target-dir target/pgo
  step "built $OUT"
}
if [ -n "${PROFILE:-}" ]; then
  optimised "$PROFILE"
  exit 0
fi

PROFDATA=${LLVM_PROFDATA:-}
if [ -z "$PROFDATA" ]; then
  for p in "llvm-profdata-$MAJOR" "/usr/lib/llvm-$MAJOR/bin/llvm-profdata" \
    "$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"; do
    command -v "$p" >/dev/null && PROFDATA=$p && break
  done
fi
[ -n "$PROFDATA" ] || {
  echo "needs llvm-profdata for LLVM $MAJOR, rustc's: apt-get install llvm-$MAJOR, or rustup" \
    "component add llvm-tools, or set LLVM_PROFDATA=/path/to/llvm-profdata" >&2
  exit 2
}
for tool in nginx h2load curl openssl; do
  command -v $tool >/dev/null || {
    echo "training needs $tool (apt-get install nginx nghttp2-client curl openssl)" >&2
    exit 2
  }
done

step "instrumented build (a cold build takes about 10 minutes on 2 cores)"
# A fixed path in the flags keeps a second run's build incremental; LLVM_PROFILE_FILE below sends
# this run's profile to its own directory.
RUSTFLAGS="-Cprofile-generate=$PWD/target/pgo-gen/raw" \
  cargo build --release --locked -p streamgate --target "$HOST" --target-dir target/pgo-gen

. benches/scripts/origin.sh
# nginx answers an upload to a static file with 405; error_page turns that into the file, so
# uploads are trained with the answers they normally get.
origin_work pgo 18281 "expires 1h; error_page 405 =200 \$uri;"
head -c 102400 /dev/zero | tr '\0' a > "$WORK/www/100k"
# Markup with varying numbers, so that gzip has work to do.
seq 1 4000 | sed 's|.*|<li class="item">row &</li>|' > "$WORK/www/page.html"
head -c 16384 /dev/urandom > "$WORK/upload"
chmod 644 "$WORK"/www/*
nginx -c "$WORK/origin.conf" -e "$WORK/origin.err"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 60 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>"$WORK/openssl.err" ||
  { cat "$WORK/openssl.err" >&2; exit 1; }

config() {
  cat <<CONF
[runtime]
workers = $1
[admin]
listen = "127.0.0.1:18290"
[[listeners]]
name = "web"
listen = "127.0.0.1:18280"
[[listeners]]
name = "cache"
listen = "127.0.0.1:18282"
[[listeners]]
name = "tls"
listen = "127.0.0.1:18285"
protocol = "https"
certificates = [ { cert = "$WORK/tls.pem", key = "$WORK/tls.key" } ]
[[listeners]]
name = "l4"
listen = "127.0.0.1:18286"
protocol = "tcp"
[[regions]]
name = "local"
backends = [ { address = "127.0.0.1:18281" } ]
[[services]]
name = "proxied"
listeners = ["web", "tls"]
regions = ["local"]
[services.compression]
encodings = ["gzip"]
[[services]]
name = "cached"
listeners = ["cache"]
regions = ["local"]
[services.cache]
max_size = "64MiB"
[services.compression]
encodings = ["gzip"]
[[services]]
name = "tcp"
listeners = ["l4"]
regions = ["local"]
CONF
}

# The daemon's log and the origin's are in $WORK, which goes on exit: show them on a failure.
failed() {
  echo "training failed: $*" >&2
  tail -20 "$WORK/sg.log" "$WORK/origin.err" >&2 2>/dev/null || true
  exit 1
}
# Every request must succeed: a profile of error paths would lay out the wrong code.
train() {
  echo "   $1" >&2
  shift
  h2load "$@" > "$WORK/h2load.out" || true
  awk '/^requests:/ { ok = $2 == $8 } END { exit !ok }' "$WORK/h2load.out" ||
    { cat "$WORK/h2load.out" >&2; failed "h2load $*"; }
}
mix() {
  local web=http://127.0.0.1:18280 cache=http://127.0.0.1:18282 tls=https://localhost:18285
  local gz=(-H "accept-encoding: gzip")
  train "proxied HTTP/1.1, 1 KiB" --h1 -n 40000 -c 16 $web/1k
  train "proxied HTTP/1.1, 100 KiB" --h1 -n 4000 -c 8 $web/100k
  train "proxied HTTP/1.1, gzip" --h1 -n 2000 -c 4 "${gz[@]}" $web/page.html
  train "proxied HTTP/1.1, uploads" --h1 -n 4000 -c 8 -d "$WORK/upload" $web/1k
  train "proxied h2c, 1 KiB" -n 40000 -c 4 -m 8 $web/1k
  train "cache hits HTTP/1.1" --h1 -n 40000 -c 16 $cache/1k $cache/100k $cache/page.html
  train "cache hits h2c" -n 40000 -c 4 -m 8 $cache/1k
  train "cache hits, gzip" --h1 -n 10000 -c 8 "${gz[@]}" $cache/page.html
  train "HTTPS HTTP/1.1, keep-alive" --h1 -n 40000 -c 16 $tls/1k
  train "HTTPS HTTP/2" -n 20000 -c 4 -m 8 $tls/1k
  train "HTTPS handshakes" --h1 -n 2000 -c 8 -H "connection: close" $tls/1k
  echo "   L4 TCP" >&2
  for _ in $(seq 200); do
    curl -sSf -o /dev/null http://127.0.0.1:18286/100k || failed "L4 TCP"
  done
}

for workers in 1 2; do
  step "training with workers = $workers"
  config $workers > "$WORK/sg.toml"
  LLVM_PROFILE_FILE="$WORK/raw/streamgate-%p-%m.profraw" \
    target/pgo-gen/$HOST/release/streamgate --log-level warn run --config "$WORK/sg.toml" \
    2>"$WORK/sg.log" &
  pid=$!
  echo $pid > "$WORK/sg.pid"
  for _ in $(seq 150); do curl -s -o /dev/null http://127.0.0.1:18280/1k && break; sleep 0.2; done
  # A daemon left over from another run could hold the ports: the training must reach this one.
  kill -0 $pid 2>/dev/null || failed "the instrumented daemon exited at start-up"
  mix
  kill -0 $pid 2>/dev/null || failed "the instrumented daemon exited during training"
  kill -TERM $pid
  # The profile is written when the daemon exits; a clean shutdown exits 0.
  wait $pid || failed "the instrumented daemon exited with status $?"
  rm "$WORK/sg.pid"
done

step "merging $(find "$WORK/raw" -name '*.profraw' | wc -l) raw profiles with $PROFDATA"
"$PROFDATA" merge -o "$WORK/streamgate.profdata" "$WORK/raw"
[ -z "${KEEP_PROFILE:-}" ] || cp "$WORK/streamgate.profdata" "$KEEP_PROFILE"
optimised "$WORK/streamgate.profdata"
