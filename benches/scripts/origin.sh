# Sourced by the bash scripts beside it: a work directory that is removed on exit, with every
# process whose pid file is in it stopped, holding a 1 KiB payload and an nginx origin's config.
#   origin_work NAME PORT [DIRECTIVES]   sets WORK; writes $WORK/www/1k and $WORK/origin.conf, an
#                                        nginx on 127.0.0.1:PORT serving $WORK/www with DIRECTIVES
#   proxy_and_cache_config WEB CACHE ORIGIN [ADMIN]
#                                        writes $WORK/sg.toml: one worker, a proxied service on
#                                        port WEB and a cached one on CACHE, both to ORIGIN
# The payload sits in its own directory: the daemon's config file watcher is woken by every open
# of a file in the config's directory (inotify's OPEN is in notify's fixed mask), and with the
# config beside the payload that was 1 200 of 39 400 instructions per proxied request.

# Stops every process with a pid file in $WORK, waits (up to 5 s) until they have exited so that
# nothing they write on exit lands after the removal, and removes $WORK.
stop_work() {
  local pids
  pids=$(cat "$WORK"/*.pid 2>/dev/null) || true
  [ -n "$pids" ] && { kill $pids 2>/dev/null || true; }
  for _ in $(seq 50); do
    kill -0 $pids 2>/dev/null || break
    sleep 0.1
  done
  rm -rf "$WORK"
}
origin_work() {
  WORK=$(mktemp -d "/var/tmp/sg-$1.XXXXXX")
  trap 'stop_work' EXIT
  # nginx workers run as an unprivileged user: the files must be readable to them.
  mkdir "$WORK/www"
  chmod 755 "$WORK" "$WORK/www"
  head -c 1024 /dev/zero | tr '\0' a > "$WORK/www/1k"
  chmod 644 "$WORK/www/1k"
  cat > "$WORK/origin.conf" <<CONF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { root $WORK/www; ${3:-} } } }
CONF
}

proxy_and_cache_config() {
  {
    printf '[runtime]\nworkers = 1\n'
    [ -n "${4:-}" ] && printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$4"
    cat <<CONF
[[listeners]]
name = "web"
listen = "127.0.0.1:$1"
[[listeners]]
name = "cache"
listen = "127.0.0.1:$2"
[[regions]]
name = "local"
backends = [ { address = "127.0.0.1:$3" } ]
[[services]]
name = "bench"
listeners = ["web"]
regions = ["local"]
[[services]]
name = "cached"
listeners = ["cache"]
regions = ["local"]
[services.cache]
max_size = "64MiB"
CONF
  } > "$WORK/sg.toml"
}
