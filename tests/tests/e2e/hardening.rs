//! Hardening: deadlines that mean what they say, and the edge cases a long-running edge proxy
//! meets (slow uploads, stalled clients). HTTP/2's own are in `http2_hardening.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use streamgate_tests::presets::{
    over_origin as one_service, service_s as service, timed as config,
};
use streamgate_tests::*;
use tokio::net::TcpStream;

/// POSTs `chunks` chunks of `size` bytes to `/sink`, `gap` apart (a slow uploader); the answer.
async fn slow_upload(
    d: &TestDaemon,
    chunks: usize,
    size: usize,
    gap: Duration,
    stall_after: Option<usize>,
) -> (StatusCode, String) {
    let tcp = TcpStream::connect(d.addr("web")).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if stall_after == Some(i) {
                // Stop sending, keep the connection: a stalled client.
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            tokio::time::sleep(gap).await;
            if body_tx
                .send(Ok(Frame::data(Bytes::from(vec![b'u'; size]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(body_rx));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/sink")
        .header("host", "upload.example")
        .body(body)
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status();
    let text = resp.into_body().collect().await.map_or_else(
        |e| e.to_string(),
        |b| String::from_utf8_lossy(&b.to_bytes()).into_owned(),
    );
    (status, text)
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_upstream_response_is_not_a_timeout() {
    let o = Origin::start("o").await;
    // The deadline counts from the upload's last progress: 2 s is 8 times the 250 ms between
    // pieces, which a loaded CI machine can stretch (1 s, 4 times, was too thin).
    let d = config(&o, Timeouts::new().upstream_response("2s"))
        .start()
        .await;
    // 4 s of upload (twice the deadline), 64 KiB every 250 ms: the backend answers once it has
    // it all.
    let (status, text) = slow_upload(&d, 16, 64 * 1024, Duration::from_millis(250), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, (16 * 64 * 1024).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stops_is_the_clients_timeout() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().upstream_response("1s"))
        .start()
        .await;
    let (status, text) = slow_upload(&d, 12, 1024, Duration::from_millis(50), Some(3)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
    // The backend is not blamed for the client's stall.
    let m = d.metrics().await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("streamgate_upstream_errors_total{") && !l.ends_with(" 0")),
        "{m}"
    );
}

/// An HTTP/2 POST with `content-length: 0` whose END_STREAM has not come has all of its body:
/// a backend that then does not answer within `upstream_response` is the backend's timeout
/// (504), not an upload the client let stall (408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_to_an_empty_http2_upload_is_the_backends_timeout() {
    let o = Origin::start("o").await;
    o.set_delay(Duration::from_secs(5));
    let d = config(&o, Timeouts::new().upstream_response("1s"))
        .start()
        .await;
    let s = TcpStream::connect(d.addr("web")).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // A body that never ends: no END_STREAM while the sender is held.
    let (_open, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    let frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }));
    let req = Request::post("http://a.example/x")
        .header("content-length", "0")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(4), tx.send_request(req))
        .await
        .expect("an answer within 4 s")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
}

/// Two services on one listener: `/pub/` to the origin "public", everything else to "rest".
async fn pub_and_rest() -> (Origin, Origin, TestDaemon) {
    let public = Origin::start("public").await;
    let rest = Origin::start("rest").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("pub").backends(&[(&public, 1)]))
        .region(Region::new("rest").backends(&[(&rest, 1)]))
        .service(
            Service::new("pub")
                .listeners(&["web"])
                .path_prefix("/pub/")
                .regions(&["pub"]),
        )
        .service(Service::new("rest").listeners(&["web"]).regions(&["rest"]))
        .start()
        .await;
    (public, rest, d)
}

/// `GET path` as the client wrote it (no client library re-spells it), and the whole answer.
async fn get_raw(d: &TestDaemon, path: &str) -> String {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
        .await
        .unwrap()
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_forwarded_as_routed() {
    let (_public, rest, d) = pub_and_rest().await;
    let cases = [
        ("/pub/../admin", "origin rest /admin"),
        ("/pub/%2e%2e/admin", "origin rest /admin"),
        ("/pub/./x/../../admin?q=1", "origin rest /admin"),
        ("/%70ub/x", "origin public /pub/x"),
        ("/pub//x", "origin public /pub/x"),
        ("//pub/x", "origin public /pub/x"),
    ];
    for (path, want) in cases {
        let answer = get_raw(&d, path).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.ends_with(want), "{path}: {answer}");
    }
    assert_eq!(rest.last_headers().get("host").unwrap(), "a.example");
}

#[tokio::test]
async fn paths_that_would_mean_another_path_to_the_origin_are_refused() {
    // A stray `%` that a decoded escape completes (`%2` then `%65`) made `%2e%2e` after
    // normalising, which matched `/pub/` here and which nginx or a URL parser at the origin
    // reads as `..`; `..;` is `..` to Tomcat, Jetty and Spring, and `\` a separator to IIS.
    let (public, rest, d) = pub_and_rest().await;
    for path in [
        "/pub/%2%65%2%65/admin",
        "/pub/%%32%65%%32%65/admin",
        "/pub/x%2%66y",
        "/pub/%zz",
        "/pub/%4",
        "/pub/..;/admin",
        "/pub/.;x/admin",
        "/pub/%2e%2e;x/admin",
        "/pub/..\\admin",
        // Escaped separators beside dots: nginx and Python decode `%2F` before resolving
        // `..`, IIS `%5C`; and a NUL, which nginx refuses and old Jetty read as nothing.
        "/pub/..%2Fadmin",
        "/pub/..%2fadmin",
        "/pub/.%2F..%2F..%2Fadmin",
        "/pub/..%5Cadmin",
        "/pub/a%5Cb",
        "/pub/..%00/admin",
    ] {
        let answer = get_raw(&d, path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert_eq!(public.hits() + rest.hits(), 0, "no origin was asked");
    // What stays allowed: escapes of reserved characters, `;` parameters of ordinary segments.
    for path in ["/pub/a%2Fb", "/pub/x;jsessionid=1", "/pub/caf%C3%A9"] {
        let answer = get_raw(&d, path).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(
            answer.ends_with(&format!("origin public {path}")),
            "{path}: {answer}"
        );
    }
}

#[tokio::test]
async fn the_admin_api_refuses_what_a_browser_page_would_send() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new()).start().await;
    let post = |headers: Vec<(&'static str, &'static str)>, body: &'static str| {
        let url = d.admin_url("/backends/drain");
        async move {
            send(&http1(), Method::POST, &url, &headers, Bytes::from(body))
                .await
                .unwrap()
        }
    };
    let drain = r#"{"address": "127.0.0.1:1"}"#;
    // A form post, a text/plain "simple request", a page's fetch, a DNS-rebound name.
    let form = post(
        vec![("content-type", "application/x-www-form-urlencoded")],
        drain,
    )
    .await;
    assert_eq!(
        form.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        form.text()
    );
    let text = post(vec![("content-type", "text/plain")], drain).await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let page = post(vec![("origin", "http://evil.example")], drain).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.text());
    let rebound = post(vec![("host", "rebind.evil.example:9901")], drain).await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    // Scripts and tools: JSON, or no declared type at all.
    let json = post(vec![("content-type", "application/json")], drain).await;
    assert_ne!(json.status, StatusCode::FORBIDDEN);
    assert_ne!(json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bare = post(vec![], drain).await;
    assert_ne!(bare.status, StatusCode::FORBIDDEN);
    // Reads are not state changes.
    let read = get(
        &http1(),
        &d.admin_url("/backends"),
        &[("origin", "http://evil.example")],
    )
    .await
    .unwrap();
    assert_eq!(read.status, StatusCode::OK);
    // Without a token, a page whose name is rebound to 127.0.0.1 cannot read the API either
    // (its addresses, config and metrics); probes by any name still get the health endpoints.
    let rebound = |path: &str| {
        let url = d.admin_url(path);
        async move {
            get(&http1(), &url, &[("host", "rebind.evil.example:9901")])
                .await
                .unwrap()
                .status
        }
    };
    for path in ["/backends", "/config", "/metrics"] {
        assert_eq!(rebound(path).await, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(rebound("/live").await, StatusCode::OK);
    let by_name = get(
        &http1(),
        &d.admin_url("/backends"),
        &[("host", "localhost")],
    )
    .await
    .unwrap();
    assert_eq!(by_name.status, StatusCode::OK);
}

// Paused time: every timer here is tokio's (the admin listener's hyper TokioTimer, the
// handler's timeout, the test's sleeps) and all I/O is loopback within this runtime.
#[tokio::test(start_paused = true)]
async fn the_admin_listener_cuts_slow_heads_and_caps_connections() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().request_header("500ms"))
        .admin(Admin::new().max_connections(2))
        .start()
        .await;
    let admin = d.daemon.admin_addr();
    // A head that never completes is closed after request_header.
    let cut = stall_then_drain(
        admin,
        b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert!(cut.is_some(), "the trickling head was left open");
    // Two idle connections take both slots: a third waits until one goes.
    let a = TcpStream::connect(admin).await.unwrap();
    let b = TcpStream::connect(admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = d.admin_url("/live");
    let third = tokio::spawn(async move { get(&http1(), &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    drop((a, b));
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot was free")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
}

fn limited_config(o: &Origin, listener: Listener, limits: Limits) -> Config {
    one_service(o, listener, service().limits(limits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_max_body_gets_413() {
    let o = Origin::start("o").await;
    let d = limited_config(&o, Listener::http("web"), Limits::new().max_body("1KiB"))
        .start()
        .await;
    assert_eq!(d.limited("body").await, 0.0, "exported from the start");
    let post = |body: Bytes| {
        let url = d.url("web", "/sink");
        async move { send(&http1(), Method::POST, &url, &[], body).await.unwrap() }
    };
    assert_eq!(
        post(Bytes::from(vec![b'x'; 1000])).await.status,
        StatusCode::OK
    );
    let declared = post(Bytes::from(vec![b'x'; 2048])).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Without a declared length: cut when it passes the limit.
    let (status, _) = slow_upload(&d, 4, 512, Duration::from_millis(10), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(d.limited("body").await, 2.0);
    assert_eq!(o.hits(), 2, "the declared one never reached the origin");
}

#[tokio::test]
async fn a_connection_line_cannot_hide_a_bodys_length_from_max_body() {
    // RFC 9110 lets `Connection` name fields to drop at this hop; naming Content-Length (or
    // Transfer-Encoding) must not take the body past the limit unseen. The origin would have
    // had all 2 KiB before its answer was turned into a 413.
    let o = Origin::start("o").await;
    let d = limited_config(&o, Listener::http("web"), Limits::new().max_body("1KiB"))
        .start()
        .await;
    for connection in ["content-length, close", "Content-Length,close"] {
        let raw = format!(
            "POST /sink HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\n\
             Content-Length: 2048\r\n\r\n{}",
            "x".repeat(2048)
        );
        let answer = raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{connection}: {answer}");
    }
    assert_eq!(o.hits(), 0, "no body over max_body reached the origin");
    assert_eq!(d.limited("body").await, 2.0);
}

#[tokio::test]
async fn by_default_a_request_may_carry_100_header_fields() {
    // Envoy's default (HAProxy's is 101); hyper parses up to 100 on the stack. The origin
    // takes any number of fields, so every 431 is the proxy's.
    let o = RawOrigin::ok().await;
    let d = o.behind(Listener::http("web")).await;
    for (fields, status) in [(100, "HTTP/1.1 200"), (101, "HTTP/1.1 431")] {
        // Host and Connection are two of them.
        let extra: String = (0..fields - 2).map(|i| format!("X-H{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n");
        let answer = raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
            .await
            .unwrap();
        assert!(answer.starts_with(status), "{fields} fields: {answer}");
    }
    assert_eq!(d.limited("header").await, 1.0);
}

#[tokio::test]
async fn max_headers_holds_for_http2_requests_too() {
    // hyper enforces `max_headers` on HTTP/1.1 only; an h2c request was bounded by bytes alone.
    // Counted as HTTP/1.1 counts lines: :authority as Host, a Cookie split into crumbs as one.
    let o = RawOrigin::ok().await;
    let d = o.behind(Listener::http("web").max_headers(20)).await;
    let client = http2();
    let url = format!("http://{}/", d.addr("web"));
    let names: Vec<String> = (0..20).map(|i| format!("x-h{i}")).collect();
    let fields =
        |n: usize| -> Vec<(&str, &str)> { names[..n].iter().map(|k| (k.as_str(), "v")).collect() };
    let mut with_cookies = fields(18);
    with_cookies.extend([("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
    for (extra, status) in [
        (fields(19), StatusCode::OK),
        (with_cookies, StatusCode::OK),
        (fields(20), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let n = extra.len();
        let a = get(&client, &url, &extra).await.unwrap();
        assert_eq!(a.status, status, "{n} fields and :authority");
    }
    assert_eq!(d.limited("header").await, 1.0);
    assert_eq!(o.heads().len(), 2, "the refused request was not forwarded");
}

#[tokio::test]
async fn oversized_heads_get_431_and_are_counted() {
    let o = Origin::start("o").await;
    let d = limited_config(
        &o,
        Listener::http("web")
            .max_headers(16)
            .max_header_bytes("8KiB"),
        Limits::new(),
    )
    .start()
    .await;
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "b".repeat(10 * 1024));
    for extra in [many, big] {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n");
        let answer = raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
    assert_eq!(d.limited("header").await, 2.0);
    assert_eq!(o.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_refused_before_any_handler_are_access_logged() {
    // hyper answers these itself (400, 414, 431) without running the proxy's handler: an
    // operator still finds each in the access log, as nginx logs its 400s.
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let d = limited_config(
        &o,
        Listener::http("web")
            .max_headers(16)
            .max_header_bytes("128KiB"),
        Limits::new(),
    )
    .access_log(AccessLog::new(&log_path).format("json"))
    .start()
    .await;
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"), 431),
        (
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(70_000)),
            414,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n".to_string(),
            400,
        ),
    ];
    for (raw, status) in &cases {
        let answer = raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
            .await
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
    }
    let lines = || json_lines(&log_path);
    assert!(
        eventually(Duration::from_secs(5), || lines().len() == cases.len()).await,
        "{:?}",
        lines()
    );
    let mut statuses: Vec<u64> = lines()
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [400, 414, 431]);
    for line in lines() {
        assert_eq!(line["listener"], "web");
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["method"], "-");
        assert_eq!(line["path"], "-");
        assert_eq!(line["bytes_out"], 0);
    }
    // The two over a limit are counted as such; the malformed one is not.
    assert_eq!(d.limited("header").await, 2.0);
    assert_eq!(o.hits(), 0);
}

/// How long `bytes` sent on a new connection to `addr` keep it open, reading (and dropping)
/// whatever comes; `None` if still open after 10 s.
async fn open_for(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 4096];
    let read_to_end = async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} };
    tokio::time::timeout(Duration::from_secs(10), read_to_end)
        .await
        .ok()
        .map(|_| started.elapsed())
}

/// A new connection's first request is due within `request_header` of the connection's start,
/// as with nginx's client_header_timeout and HAProxy's `timeout http-request`. Before, a
/// connection that sent nothing (or only the HTTP/2 preface) was kept for `idle` (60 s by
/// default, against 10 s): a flood of silent connections held the connection budget six
/// times as long. A keep-alive connection waiting for its next request still has `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_new_connection_is_closed_at_request_header_not_idle() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().request_header("1s").idle("30s"))
        .start()
        .await;
    let web = d.addr("web");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for (what, bytes) in [("nothing", &b""[..]), ("the HTTP/2 preface", &preface[..])] {
        let took = open_for(web, bytes).await;
        let took = took.unwrap_or_else(|| panic!("a connection that sent {what} was kept"));
        assert!(
            took < Duration::from_secs(5),
            "{what}: closed after {took:?}"
        );
    }
    let keep_alive = open_for(web, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        keep_alive, None,
        "a keep-alive connection was closed before idle"
    );
    assert_eq!(o.hits(), 1);
}
