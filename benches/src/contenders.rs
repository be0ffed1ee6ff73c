//! The processes of a benchmark: the shared origin, and each proxy pinned to its own core with one
//! worker.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::share::CpuShare;

/// A proxy under test.
#[derive(Debug)]
pub struct Contender {
    pub name: &'static str,
    /// HTTP/1.1 pass-through listener.
    pub http: Option<SocketAddr>,
    /// HTTP/2 cleartext (prior knowledge) pass-through listener.
    pub h2c: Option<SocketAddr>,
    /// HTTP/1.1 listener in front of the proxy's cache.
    pub cache: Option<SocketAddr>,
    /// HTTP/2 cleartext (prior knowledge) listener in front of the proxy's cache.
    pub h2c_cache: Option<SocketAddr>,
    /// HTTPS (TLS terminated by the proxy, HTTP/1.1) pass-through listener.
    pub https: Option<SocketAddr>,
    /// L4 listener forwarding to the TCP origin (iperf3).
    pub tcp: Option<SocketAddr>,
    /// `None` for the "direct" baseline, which is no process.
    child: Option<Child>,
    /// The cgroup capping it (`--proxy-share`); removed after the process is stopped.
    _share: Option<CpuShare>,
}

impl Contender {
    /// CPU seconds used so far by the process and its children (nginx's worker).
    pub fn cpu_seconds(&self) -> f64 {
        self.child
            .as_ref()
            .map_or(0.0, |c| process_tree_cpu(c.id()))
    }

    /// No proxy at all: the load generator talks to the TCP origin itself.
    pub fn direct(tcp_origin: SocketAddr) -> Contender {
        Contender {
            name: "direct",
            http: None,
            h2c: None,
            cache: None,
            h2c_cache: None,
            https: None,
            tcp: Some(tcp_origin),
            child: None,
            _share: None,
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            stop(c);
        }
    }
}

/// What every proxy forwards to: the HTTP origin, the TCP origin (an iperf3 server), and the
/// certificate HTTPS listeners present.
#[derive(Debug)]
pub struct Origins {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file, as HAProxy wants it.
    pub cert_and_key: PathBuf,
}

/// A self-signed ECDSA P-256 certificate for `localhost`, used by every contender.
pub fn write_certificate(work: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let (c, k, both) = (
        work.join("cert.pem"),
        work.join("key.pem"),
        work.join("cert-and-key.pem"),
    );
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    std::fs::write(&both, format!("{}{}", cert.pem(), key.serialize_pem()))?;
    Ok((c, k, both))
}

/// The iperf3 server the L4 scenario pushes bytes to, on the load generator's core.
pub fn start_tcp_origin(work: &Path, cpu: usize) -> Result<(SocketAddr, Child)> {
    let addr = free_port()?;
    let log = std::fs::File::create(work.join("iperf3-server.log"))?;
    let mut child = pinned(cpu, "iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &addr.port().to_string()])
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt-get install iperf3)")?;
    wait_listening(addr, &mut child, "iperf3 server")?;
    Ok((addr, child))
}

/// The origin every proxy forwards to: nginx serving static files, on the load generator's core.
#[derive(Debug)]
pub struct OriginServer {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for OriginServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Stops a contender gracefully: SIGKILL on nginx's master would leave its workers running
/// (and holding their ports) after the benchmark ends.
pub fn stop(child: &mut Child) {
    let asked = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if asked {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            // `taskset` exits 127 when the program it was to start is not installed.
            if status.code() == Some(127) {
                bail!(
                    "{what}: its program was not found (taskset exited 127); the benchmark \
                     needs apt-get install nginx haproxy varnish iperf3 wrk nghttp2-client"
                );
            }
            bail!("{what} exited during start-up ({status}); see its log in the work directory");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Where the proxies run: pinned to one core and, with `--proxy-share`, each in a cgroup that
/// caps it to that percentage of the core.
#[derive(Debug, Clone, Copy)]
pub struct ProxyCore {
    pub cpu: usize,
    pub share: Option<u32>,
}

impl ProxyCore {
    /// The command that starts `program` as the contender `name`, with its cgroup if capped.
    fn command(&self, name: &str, program: &str) -> Result<(Command, Option<CpuShare>)> {
        match self.share {
            None => Ok((pinned(self.cpu, program), None)),
            Some(percent) => {
                let share = CpuShare::create(name, percent)?;
                Ok((share.command(self.cpu, program), Some(share)))
            }
        }
    }
}

fn pinned(cpu: usize, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &cpu.to_string(), program]);
    c
}

/// Files the origin serves: `/1k` and `/100k`.
pub fn write_payloads(dir: &Path) -> Result<()> {
    std::fs::write(dir.join("1k"), vec![b'a'; 1024])?;
    std::fs::write(dir.join("100k"), vec![b'b'; 100 * 1024])?;
    // Markup with varying numbers, so that gzip has work to do (about 5:1, as real pages).
    let mut page = String::from("<!doctype html><html><head><title>bench</title></head><body>\n");
    let mut i = 0u64;
    while page.len() < 20 * 1024 {
        i += 1;
        page.push_str(&format!(
            "<div class=\"item\" id=\"item-{i}\"><a href=\"/product/{}\">Product {}</a> <span class=\"price\">{}.{:02} EUR</span></div>\n",
            i * 7919 % 100_003,
            i * 31 % 977,
            i * 13 % 500,
            i % 100
        ));
    }
    page.truncate(20 * 1024 - 15);
    page.push_str("</body></html>\n");
    std::fs::write(dir.join("page20k.html"), page)?;
    Ok(())
}

fn nginx_common(work: &Path, name: &str) -> String {
    let w = work.display();
    format!(
        "worker_processes 1;\ndaemon off;\nuser root;\npid {w}/{name}.pid;\nerror_log {w}/{name}.error.log warn;\n\
         events {{ worker_connections 8192; }}\n"
    )
}

fn nginx_temp_paths(work: &Path, name: &str) -> String {
    let w = work.display();
    format!(
        "client_body_temp_path {w}/{name}-body; proxy_temp_path {w}/{name}-proxy; fastcgi_temp_path {w}/{name}-fcgi; \
         uwsgi_temp_path {w}/{name}-uwsgi; scgi_temp_path {w}/{name}-scgi;\n"
    )
}

pub fn start_origin(work: &Path, cpu: usize) -> Result<OriginServer> {
    let addr = free_port()?;
    let root = work.join("www");
    std::fs::create_dir_all(&root)?;
    write_payloads(&root)?;
    let conf = format!(
        "{}http {{\n access_log off;\n {}\n keepalive_requests 10000000;\n keepalive_timeout 300s;\n open_file_cache max=16;\n sendfile on;\n tcp_nopush on;\n \
         server {{ listen {addr} backlog=4096; location / {{ root {}; expires 1h; }} }}\n}}\n",
        nginx_common(work, "origin"),
        nginx_temp_paths(work, "origin"),
        root.display()
    );
    let path = work.join("origin.conf");
    std::fs::write(&path, conf)?;
    let mut child = pinned(cpu, "nginx")
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(work.join("origin.stderr.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the nginx origin (apt-get install nginx)")?;
    wait_listening(addr, &mut child, "nginx origin")?;
    Ok(OriginServer { addr, child })
}

/// nginx's stream (L4) module, a separate package on Debian (libnginx-mod-stream).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub fn start_nginx(work: &Path, core: ProxyCore, o: &Origins) -> Result<Contender> {
    let origin = o.http;
    let (http, h2c, cache, https) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let h2c_cache = free_port()?;
    let stream = Path::new(NGINX_STREAM_MODULE).exists();
    let tcp = if stream { Some(free_port()?) } else { None };
    let cache_dir = work.join("nginx-cache");
    // A production-style proxy config: upstream keep-alive, forwarding headers like StreamGate
    // adds, buffers in memory (never spilling to temp files).
    let conf = format!(
        "{}http {{\n access_log off;\n {}\n keepalive_requests 10000000;\n keepalive_timeout 300s;\n \
         upstream origin {{ server {origin}; keepalive 256; keepalive_requests 10000000; }}\n \
         gzip on; gzip_comp_level 6; gzip_min_length 1024; gzip_vary on; gzip_proxied any;\n \
         proxy_cache_path {cdir} levels=1:2 keys_zone=sg:16m max_size=256m inactive=1h use_temp_path=off;\n \
         server {{\n  listen {cache} backlog=4096;\n  listen {h2c_cache} http2 backlog=4096;\n  \
         location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
         proxy_set_header Host $host; proxy_cache sg; proxy_cache_valid 200 1h; proxy_cache_lock on; \
         add_header X-Cache $upstream_cache_status; }}\n }}\n \
         server {{\n  listen {http} backlog=4096;\n  listen {h2c} http2 backlog=4096;\n  \
         location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
         proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
         proxy_buffers 32 8k; proxy_max_temp_file_size 0; }}\n }}\n \
         server {{\n  listen {https} ssl backlog=4096;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n  \
         ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache shared:SSL:10m;\n  \
         location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
         proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
         proxy_buffers 32 8k; proxy_max_temp_file_size 0; }}\n }}\n}}\n{stream_block}",
        nginx_common(work, "nginx"),
        nginx_temp_paths(work, "nginx"),
        cdir = cache_dir.display(),
        cert = o.cert.display(),
        key = o.key.display(),
        stream_block = match tcp {
            Some(t) => format!(
                "stream {{ server {{ listen {t} backlog=4096; proxy_pass {}; }} }}\n",
                o.tcp
            ),
            None => String::new(),
        },
    );
    let conf = if stream {
        format!("load_module {NGINX_STREAM_MODULE};\n{conf}")
    } else {
        conf
    };
    let path = work.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let (mut command, share) = core.command("nginx", "nginx")?;
    let mut child = command
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(work.join("nginx.stderr.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx)")?;
    wait_listening(http, &mut child, "nginx")?;
    Ok(Contender {
        name: "nginx",
        http: Some(http),
        h2c: Some(h2c),
        cache: Some(cache),
        h2c_cache: Some(h2c_cache),
        https: Some(https),
        tcp,
        child: Some(child),
        _share: share,
    })
}

pub fn start_haproxy(work: &Path, core: ProxyCore, o: &Origins) -> Result<Contender> {
    let origin = o.http;
    let (http, h2c, cache) = (free_port()?, free_port()?, free_port()?);
    let h2c_cache = free_port()?;
    let (https, tcp) = (free_port()?, free_port()?);
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 8000\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  \
         option http-keep-alive\n  option forwardfor\n  http-reuse always\n\n\
         frontend fe\n  bind {http}\n  bind {h2c} proto h2\n  default_backend be\n\n\
         backend be\n  server origin {origin}\n\n\
         cache sg\n  total-max-size 256\n  max-object-size 1048576\n  max-age 3600\n\n\
         frontend fe_cache\n  bind {cache}\n  bind {h2c_cache} proto h2\n  default_backend be_cache\n\n\
         backend be_cache\n  http-request cache-use sg\n  http-response cache-store sg\n  server origin {origin}\n\n\
         frontend fe_tls\n  bind {https} ssl crt {both} alpn http/1.1\n  default_backend be\n\n\
         listen l4\n  mode tcp\n  bind {tcp}\n  server o {tcp_origin}\n",
        both = o.cert_and_key.display(),
        tcp_origin = o.tcp,
    );
    let path = work.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let log = std::fs::File::create(work.join("haproxy.log"))?;
    let (mut command, share) = core.command("haproxy", "haproxy")?;
    let mut child = command
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    wait_listening(http, &mut child, "haproxy")?;
    Ok(Contender {
        name: "haproxy",
        http: Some(http),
        h2c: Some(h2c),
        cache: Some(cache),
        h2c_cache: Some(h2c_cache),
        https: Some(https),
        tcp: Some(tcp),
        child: Some(child),
        _share: share,
    })
}

/// StreamGate pinned to `cpu`. With `rules > 0` it is the contender `streamgate-rules`, whose
/// proxied service has that many `[[services.rules]]` that no benchmark request matches.
pub fn start_streamgate(
    work: &Path,
    core: ProxyCore,
    o: &Origins,
    binary: &Path,
    rules: usize,
    compression: bool,
) -> Result<Contender> {
    let gzip = if compression {
        "[services.compression]\nencodings = [\"gzip\"]\ngzip_level = 6\n"
    } else {
        ""
    };
    let origin = o.http;
    let (http, cache, https, tcp) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let conf = format!(
        "[runtime]\nworkers = 1\n\n[admin]\nlisten = \"{}\"\n\n[[listeners]]\nname = \"web\"\nlisten = \"{http}\"\n\n\
         [[listeners]]\nname = \"cache\"\nlisten = \"{cache}\"\n\n\
         [[listeners]]\nname = \"tls\"\nlisten = \"{https}\"\nprotocol = \"https\"\n\
         certificates = [ {{ cert = \"{cert}\", key = \"{key}\" }} ]\n\n\
         [[listeners]]\nname = \"l4\"\nlisten = \"{tcp}\"\nprotocol = \"tcp\"\n\n\
         [[regions]]\nname = \"local\"\nbackends = [ {{ address = \"{origin}\" }} ]\n\n\
         [[regions]]\nname = \"iperf\"\nbackends = [ {{ address = \"{tcp_origin}\" }} ]\n\n\
         [[services]]\nname = \"bench\"\nlisteners = [\"web\", \"tls\"]\nregions = [\"local\"]\n{rules}\n\
         {gzip}\n\
         [[services]]\nname = \"pump\"\nlisteners = [\"l4\"]\nregions = [\"iperf\"]\n\n\
         [[services]]\nname = \"cached\"\nlisteners = [\"cache\"]\nregions = [\"local\"]\n\
         [services.cache]\nmax_size = \"256MiB\"\n{gzip}",
        free_port()?,
        cert = o.cert.display(),
        key = o.key.display(),
        tcp_origin = o.tcp,
        rules = streamgate_bench::rules::unmatched(rules),
    );
    let name = if rules == 0 {
        "streamgate"
    } else {
        "streamgate-rules"
    };
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, conf)?;
    let log = std::fs::File::create(work.join(format!("{name}.log")))?;
    let (mut command, share) = core.command(name, &binary.display().to_string())?;
    let mut child = command
        .args(["--log-level", "warn", "run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    wait_listening(http, &mut child, "streamgate")?;
    // HTTP/1.1 and h2c share StreamGate's listener.
    Ok(Contender {
        name,
        http: Some(http),
        h2c: Some(http),
        cache: Some(cache),
        // HTTP/1.1 and h2c share the cache listener too.
        h2c_cache: Some(cache),
        https: Some(https),
        tcp: Some(tcp),
        child: Some(child),
        _share: share,
    })
}

/// Varnish (malloc storage, one thread pool) pinned to `cpu`: a cache only.
pub fn start_varnish(work: &Path, core: ProxyCore, origin: SocketAddr) -> Result<Contender> {
    let cache = free_port()?;
    let dir = work.join("varnish");
    let log = std::fs::File::create(work.join("varnish.log"))?;
    let (mut command, share) = core.command("varnish", "varnishd")?;
    let mut child = command
        .arg("-F")
        .arg("-a")
        .arg(cache.to_string())
        .arg("-b")
        .arg(origin.to_string())
        .args(["-s", "malloc,256m", "-p", "thread_pools=1", "-n"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting varnishd (apt-get install varnish)")?;
    wait_listening(cache, &mut child, "varnish")?;
    Ok(Contender {
        name: "varnish",
        http: None,
        h2c: None,
        cache: Some(cache),
        h2c_cache: None,
        https: None,
        tcp: None,
        child: Some(child),
        _share: share,
    })
}

/// Builds the release binary unless one was given.
pub fn streamgate_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    eprintln!("building streamgate (release)...");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "streamgate"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p streamgate failed");
    }
    Ok(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/release/streamgate"
    )))
}

/// CPU seconds (user + system) of `pid` and its direct children.
fn process_tree_cpu(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the ")" of the command name: state ppid ... utime(14) stime(15).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        if p == pid || ppid == pid {
            let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += ut + st;
        }
    }
    total as f64 / ticks
}
