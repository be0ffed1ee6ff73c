//! The real binary: `check`, `run` with signals, and memory while streaming large bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use streamgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");

fn service(region: Region) -> Config {
    Config::new()
        .workers(2)
        .shutdown_timeout("10s")
        .listener(Listener::http("web"))
        .region(region)
        .service(Service::new("app").listeners(&["web"]).regions(&["local"]))
}

fn local(origin: &Origin) -> Region {
    Region::new("local").backends(&[(origin, 1)])
}

#[test]
fn check_prints_every_error_with_file_line_and_key_and_exits_1() {
    let text = r#"[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[regions]]
name = "us-east"
backends = [ { address = "127.0.0.1:9001" } ]

[[services]]
name = "video"
listeners = ["web"]
regions = ["us-east", "eu-west"]
backend_policy = "leastconn"
"#;
    let (_dir, path) = write_config(text);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    assert_eq!(
        stderr,
        format!(
            "{file}:12: services[0].regions[1]: no region named \"eu-west\"; defined regions: us-east\n\
             {file}:13: services[0].backend_policy: unknown policy \"leastconn\"; expected one of round_robin, least_conn, latency, random, consistent_hash\n"
        )
    );

    let good = text
        .replace(", \"eu-west\"", "")
        .replace("leastconn", "least_conn");
    let (_dir, path) = write_config(&good);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (1 listeners, 1 regions, 1 services)")
    );
}

#[test]
fn check_names_unknown_keys_and_missing_files() {
    let (_dir, path) = write_config("[runtime]\nworkerz = 2\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:2: runtime.workerz: unknown field `workerz`",
            path.display()
        )),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/streamgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/streamgate.toml: cannot read config file")
    );
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_in_flight_request_then_exits() {
    let origin = Origin::start("slow").await;
    origin.set_delay(Duration::from_millis(1500));
    let mut p = DaemonProcess::start(BIN, &service(local(&origin)).to_toml(), &["web"]);
    let url = format!("http://{}/slow", p.addr("web"));
    let in_flight = tokio::spawn(async move { get(&http1(), &url, &[]).await });
    assert!(
        eventually(Duration::from_secs(5), || origin.hits() == 1).await,
        "request reached the origin"
    );
    p.signal("TERM");
    // New connections are refused once the listener is closed.
    let addr = p.addr("web");
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            addr
        )
        .is_err())
        .await,
        "listener closed after SIGTERM"
    );
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "origin slow /slow");
    let status = p.wait_exit(Duration::from_secs(10)).expect("daemon exits");
    assert!(status.success(), "{status:?}");
    let logs = p.log_json();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "all connections closed; bye"),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_logs_one_line_naming_the_backend() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = DaemonProcess::start(
        BIN,
        &service(Region::new("local").address(dead)).to_toml(),
        &["web"],
    );
    let a = get(&http1(), &format!("http://{}/", p.addr("web")), &[])
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let dead_s = dead.to_string();
    let found = eventually(Duration::from_secs(5), || {
        p.log_json()
            .iter()
            .any(|l| l["message"] == "request failed" && l["backend"] == dead_s.as_str())
    })
    .await;
    let lines: Vec<_> = p
        .log_json()
        .into_iter()
        .filter(|l| l["backend"] == dead_s.as_str() && l["message"] == "request failed")
        .collect();
    assert!(found, "{lines:?}");
    assert_eq!(lines.len(), 1, "one line per failed request: {lines:?}");
    assert_eq!(lines[0]["status"], 502);
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("connect failed"),
        "{lines:?}"
    );
}

/// 1 GiB each way through the daemon: its peak memory grows by a small bounded amount, because
/// bodies are streamed, never buffered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_download_and_upload_do_not_raise_memory() {
    const GIB: u64 = 1 << 30;
    let origin = Origin::start("big").await;
    let p = DaemonProcess::start(BIN, &service(local(&origin)).to_toml(), &["web"]);
    let base = format!("http://{}", p.addr("web"));
    // Warm up pools and buffers first so the baseline includes them.
    get(&http1(), &format!("{base}/bytes/1000000"), &[])
        .await
        .unwrap();
    let before = p.peak_rss();

    let started = Instant::now();
    let resp = http1()
        .request(
            http::Request::get(format!("{base}/bytes/{GIB}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    let chunks = futures_util::stream::iter((0..GIB / (1 << 20)).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            1u8;
            1 << 20
        ])))
    }));
    let upload = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/sink"))
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let up_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::StreamBody<_>>();
    let resp = up_client.request(upload).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&n), GIB.to_string());

    let after = p.peak_rss();
    let grew = after.saturating_sub(before);
    eprintln!(
        "2 GiB streamed in {:?}; peak RSS {} -> {} MiB",
        started.elapsed(),
        before >> 20,
        after >> 20
    );
    assert!(grew < 48 << 20, "peak RSS grew by {} MiB", grew >> 20);
}

/// An HTTP/2 client that opens its 256 streams to large answers, grants them all the window
/// there is, and then reads nothing: what the daemon holds for it is bounded per stream (the
/// send buffer and the pump's pieces), not the 400 KiB a stream that hyper keeps by default,
/// which made one such connection pin over 100 MiB until its write timer ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_reads_nothing_pins_little_memory() {
    use streamgate_tests::h2::frame;
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start("big").await;
    let p = DaemonProcess::start(BIN, &service(local(&origin)).to_toml(), &["web"]);
    let base = format!("http://{}", p.addr("web"));
    get(&http1(), &format!("{base}/bytes/1000000"), &[])
        .await
        .unwrap();
    let before = p.rss();
    let mut s = tokio::net::TcpStream::connect(p.addr("web")).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE at its largest, and the connection's window too.
    let mut settings = 4u16.to_be_bytes().to_vec();
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(frame(4, 0, 0, &settings));
    out.extend(frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    out.extend(streamgate_tests::h2::get_streams("/bytes/8388608", 256));
    s.write_all(&out).await.unwrap();
    // Every stream has its answer under way once the origin has been asked 256 times.
    let asked = eventually(Duration::from_secs(20), || origin.hits() >= 257).await;
    assert!(asked, "{} requests reached the origin", origin.hits());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grew = p.rss().saturating_sub(before);
    eprintln!("RSS {} -> {} MiB", before >> 20, (before + grew) >> 20);
    // 38 MiB here with 64 KiB send buffers, 34-36 MiB with 16 KiB (the rest is the pump's
    // pieces and the backend connections' buffers), 124 MiB with hyper's default of 400 KiB.
    assert!(
        grew < 56 << 20,
        "one connection that reads nothing pins {} MiB",
        grew >> 20
    );
    drop(s);
}

/// A prefetch reads each answer to count its bytes: gathered whole, eight objects of a few
/// gigabytes at a time would have been eight times their size in the daemon's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_of_large_objects_holds_little_memory() {
    let origin = Origin::start("big").await;
    let config = Config::new()
        .workers(2)
        .listener(Listener::http("web"))
        .region(local(&origin))
        .service(
            Service::new("app")
                .listeners(&["web"])
                .hosts(&["cdn.test"])
                .regions(&["local"])
                // Too large to store: what the prefetch holds is its own.
                .cache(Cache::new("64MiB").max_object_size("1MiB")),
        );
    let p = DaemonProcess::start(BIN, &config.to_toml(), &["web", "admin"]);
    let size = 48 << 20;
    let urls: Vec<String> = (0..4)
        .map(|i| format!("http://cdn.test/bytes/{size}?n={i}"))
        .collect();
    let before = p.peak_rss();
    let body = serde_json::json!({ "urls": urls }).to_string();
    let (status, v) = p.admin(http::Method::POST, "/cache/prefetch", &body).await;
    assert_eq!(status, http::StatusCode::OK, "{v}");
    assert_eq!(v["ok"], 4, "{v}");
    assert_eq!(v["results"][0]["bytes"], size, "{v}");
    let grew = p.peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew {} MiB", grew >> 20);
    assert!(
        grew < 64 << 20,
        "prefetching 4 x 48 MiB raised the peak by {} MiB",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_a_changed_file_reload_the_config() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let p = DaemonProcess::start(BIN, &service(local(&a)).to_toml(), &["web", "admin"]);
    let url = format!("http://{}/", p.addr("web"));
    assert_eq!(
        get(&http1(), &url, &[]).await.unwrap().header("x-origin"),
        Some("a")
    );

    // Edit the file: the watcher reloads it on its own.
    let text = service(local(&b)).to_toml();
    std::fs::write(&p.config_path, text).unwrap();
    let switched = async {
        for _ in 0..100 {
            if get(&http1(), &url, &[]).await.unwrap().header("x-origin") == Some("b") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    .await;
    assert!(switched, "file change reloaded; log: {:?}", p.log_json());

    // SIGHUP reloads too (here: back to a).
    let text = service(local(&a)).to_toml();
    std::fs::write(&p.config_path, text).unwrap();
    p.signal("HUP");
    let back = async {
        for _ in 0..100 {
            if get(&http1(), &url, &[]).await.unwrap().header("x-origin") == Some("a") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    .await;
    assert!(back);
    assert!(
        p.log_json()
            .iter()
            .any(|l| l["message"] == "configuration reloaded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_never_appears_in_the_log() {
    let a = Origin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    let secret = "s3cret-token-7f1e9c";
    std::fs::write(&token_path, secret).unwrap();
    let text = service(local(&a))
        .admin(Admin::new().token_file(&token_path))
        .to_toml();
    let p = DaemonProcess::start(BIN, &text, &["web", "admin"]);
    let base = format!("http://{}", p.addr("admin"));
    let c = http1();
    let wrong = get(
        &c,
        &format!("{base}/backends"),
        &[("authorization", "Bearer s3cret-token-7f1e9X")],
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    for _ in 0..3 {
        let again = get(&c, &format!("{base}/config"), &[]).await.unwrap();
        assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    }
    let right = get(
        &c,
        &format!("{base}/backends"),
        &[("authorization", &format!("Bearer {secret}"))],
    )
    .await
    .unwrap();
    assert_eq!(right.status, StatusCode::OK);
    assert!(!right.text().contains(secret));
    let reload = send(
        &c,
        Method::POST,
        &format!("{base}/reload"),
        &[("authorization", &format!("Bearer {secret}"))],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reload.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || p
            .log_json()
            .iter()
            .any(|l| l["message"] == "configuration reloaded"))
        .await
    );
    let all = p.logs.lock().unwrap().join("\n");
    assert!(
        !all.contains(secret) && !all.contains("7f1e9"),
        "token leaked into the log:\n{all}"
    );
    // Refusals are seen (someone guessing), once a minute at most: the first at once.
    let refusals = p
        .log_json()
        .into_iter()
        .filter(|l| l["message"] == "admin requests refused: missing or wrong bearer token")
        .collect::<Vec<_>>();
    assert_eq!(refusals.len(), 1, "{all}");
    assert!(
        !all.contains("short token"),
        "a 19-byte token is not short:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sighup_is_one_reload() {
    let a = Origin::start("a").await;
    let p = DaemonProcess::start(BIN, &service(local(&a)).to_toml(), &["web", "admin"]);
    p.signal("HUP");
    // Long enough for the file watcher's debounce to have fired many times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = p.log_json();
    let count = |m: &str| logs.iter().filter(|l| l["message"] == m).count();
    assert_eq!(count("configuration reloaded"), 1, "{logs:?}");
    assert_eq!(
        count("config file changed; reloading"),
        0,
        "reading the file is not a change of it: {logs:?}"
    );
    let reloads = p.metrics().await.lines().find_map(|l| {
        l.strip_prefix("streamgate_config_reloads_total{result=\"success\"} ")
            .map(str::to_string)
    });
    assert_eq!(reloads.as_deref(), Some("1"));
}

/// Reads from `s` until the daemon closes it (at most 5 s): the bytes read, or None if it was
/// still open. With `h2`, answers the daemon's PINGs as a live HTTP/2 client does (a graceful
/// GOAWAY waits for one round trip).
async fn read_to_close(s: &mut tokio::net::TcpStream, h2: bool) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            while h2 && seen + 9 <= got.len() {
                let f = &got[seen..];
                let len = (usize::from(f[0]) << 16) | (usize::from(f[1]) << 8) | usize::from(f[2]);
                if f.len() < 9 + len {
                    break;
                }
                if f[3] == 6 && f[4] & 1 == 0 {
                    let ack = streamgate_tests::h2::frame(6, 1, 0, &f[9..9 + len]);
                    let _ = s.write_all(&ack).await;
                }
                seen += 9 + len;
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start("o").await;
    let mut p = DaemonProcess::start(BIN, &service(local(&origin)).to_toml(), &["web"]);
    let addr = p.addr("web");
    // HTTP/1.1: one answered request, then the connection sits idle, kept alive.
    let mut h1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&head).contains("origin o /x") {
        let n = h1.read(&mut buf).await.unwrap();
        assert!(n > 0, "answered: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    // HTTP/2 (prior knowledge): the daemon's SETTINGS show the connection is being served.
    let mut h2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(streamgate_tests::h2::frame(4, 0, 0, &[]));
    h2.write_all(&hello).await.unwrap();
    let n = h2.read(&mut buf).await.unwrap();
    assert!(n >= 9 && buf[3] == 4, "the daemon's SETTINGS first");

    // Part of a head only: not a request yet, closed as an idle connection is.
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"GET /y HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let asked = Instant::now();
    p.signal("TERM");
    assert_eq!(
        read_to_close(&mut h1, false).await.as_deref(),
        Some(&b""[..]),
        "the idle HTTP/1.1 connection is closed, nothing sent"
    );
    assert!(
        read_to_close(&mut partial, false).await.is_some(),
        "a connection with part of a head is closed"
    );
    let frames = read_to_close(&mut h2, true)
        .await
        .expect("the idle HTTP/2 connection is closed");
    assert!(
        streamgate_tests::h2::has_goaway(&frames),
        "an HTTP/2 client is told with GOAWAY"
    );
    // Well before the 10 s shutdown_timeout: nothing was left to wait for.
    let status = p.wait_exit(Duration::from_secs(5)).expect("daemon exits");
    assert!(status.success(), "{status:?}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(
        p.log_json()
            .iter()
            .any(|l| l["message"] == "all connections closed; bye")
    );
}

/// A short admin token is warned of at start: guesses are answered as fast as they come.
#[tokio::test]
async fn a_short_admin_token_is_warned_of() {
    let a = Origin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, "abc123\n").unwrap();
    let text = service(local(&a))
        .admin(Admin::new().token_file(&token_path))
        .to_toml();
    let p = DaemonProcess::start(BIN, &text, &["web", "admin"]);
    let warned = p.log_json().into_iter().any(|l| {
        l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin.token_file holds a short token"))
            && l["bytes"] == 6
    });
    assert!(warned, "{}", p.logs.lock().unwrap().join("\n"));
}
