//! The daemon's own HTTP/1.1 server (plain requests) and its hand-over to hyper's (the rest),
//! seen from a client's socket: pipelining across the hand-over, HEAD, chunked answers of
//! unknown length, `Connection: close`, and a client that leaves before its answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn behind(origin: &Origin) -> Config {
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(origin, 1)]))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
}

/// Writes `raw` on a new connection and reads until the daemon closes it (at most 5 s).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    exchange_within(addr, raw, Duration::from_secs(5)).await
}

/// [`exchange`], reading for at most `within`.
async fn exchange_within(addr: std::net::SocketAddr, raw: &[u8], within: Duration) -> String {
    tokio::time::timeout(within, raw_exchange(addr, raw, usize::MAX))
        .await
        .expect("the daemon closes the connection")
        .unwrap()
}

async fn open_connections(d: &TestDaemon) -> Option<f64> {
    metric(
        &d.metrics().await,
        "streamgate_connections_active{listener=\"web\"}",
    )
}

/// How long the origins of the tests of a client that leaves take to answer or to go on: far
/// over [`CLOSES_WITHIN`], so that a daemon that waits for them is far from passing.
const ORIGIN_WORKS_FOR: Duration = Duration::from_secs(30);
/// What "at once" may take on a loaded CI machine (a debug build on 2 cores).
const CLOSES_WITHIN: Duration = Duration::from_secs(10);

/// The client's connection is gone from the daemon within [`CLOSES_WITHIN`].
async fn closes_at_once(d: &TestDaemon) {
    let left = std::time::Instant::now();
    while open_connections(d).await != Some(0.0) {
        assert!(
            left.elapsed() < CLOSES_WITHIN,
            "still open: {:?}",
            open_connections(d).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over() {
    let origin = Origin::start("o").await;
    let d = behind(&origin).start().await;
    // A plain GET (ours), a POST with a body (hyper's from here on), and a GET after it.
    let raw = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let got = answers(&exchange(d.addr("web"), raw).await);
    let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["origin o /one", "5", "origin o /three"], "{got:?}");
    assert!(got.iter().all(|(h, _)| h.starts_with("http/1.1 200 ok")));
    assert!(got[0].0.contains("\r\ndate: "), "{}", got[0].0);
    assert!(got[2].0.contains("\r\nconnection: close"), "{}", got[2].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_has_the_length_a_get_would_get_and_no_body() {
    let origin = Origin::start("o").await;
    let d = behind(&origin).start().await;
    let raw = b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let text = exchange(d.addr("web"), raw).await;
    // The HEAD answer's head, then at once the GET's: no body bytes between them.
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", "origin o /x".len())),
        "{head}"
    );
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "{rest}");
    assert!(rest.ends_with("\r\n\r\norigin o /x"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_unknown_length_is_chunked_and_the_connection_lives_on() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec()
    })
    .await;
    let d = origin.behind(Listener::http("web")).await;
    let raw = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let text = exchange(d.addr("web"), raw).await;
    let chunked = "transfer-encoding: chunked\r\n";
    assert_eq!(
        text.to_ascii_lowercase().matches(chunked).count(),
        2,
        "{text}"
    );
    // Both bodies whole, each ended by the last chunk.
    let bodies: Vec<String> = text
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(|a| {
            let body = a.split_once("\r\n\r\n").unwrap().1;
            let mut out = String::new();
            let mut rest = body;
            loop {
                let (size, after) = rest.split_once("\r\n").unwrap();
                let n = usize::from_str_radix(size, 16).unwrap();
                if n == 0 {
                    assert_eq!(after, "\r\n", "the last chunk ends the answer");
                    break;
                }
                out.push_str(&after[..n]);
                rest = &after[n + 2..];
            }
            out
        })
        .collect();
    assert_eq!(bodies, ["hello world", "hello world"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_is_let_go_at_once() {
    let origin = Origin::start("o").await;
    origin.set_delay(ORIGIN_WORKS_FOR);
    let d = behind(&origin).start().await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || origin.hits() == 1).await,
        "request forwarded"
    );
    assert_eq!(open_connections(&d).await, Some(1.0));
    drop(s);
    // Its connection closes while the origin is still working on the request (30 s), as with
    // hyper's server: the request in hand is dropped, not answered into a closed socket.
    closes_at_once(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_quiet_stream_is_let_go_at_once() {
    // The head and a first chunk, then nothing more: an event stream between events.
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec()
    })
    .await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the first chunk arrives")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(open_connections(&d).await, Some(1.0));
    drop(s);
    closes_at_once(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_status_as_the_origins_answer_is_a_502() {
    // A 101 to a request that asked for no upgrade is not an answer the client can take: the
    // backend's error, one 502 (see `protocols::a_101_is_passed_on_only_when_it_answers_the_
    // upgrade_asked_for`), and nothing of the backend's after it.
    let origin = RawOrigin::start(|_| b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec()).await;
    let d = origin.behind(Listener::http("web")).await;
    let text = exchange(
        d.addr("web"),
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_after_an_http1_request_on_the_same_connection_is_refused() {
    let origin = Origin::start("o").await;
    let d = behind(&origin).start().await;
    let mut raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    raw.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    raw.extend(streamgate_tests::h2::frame(4, 0, 0, &[]));
    let text = exchange(d.addr("web"), &raw).await;
    // The HTTP/1.1 answer, then the connection ends: no SETTINGS frame, no HTTP/2.
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("\r\n\r\norigin o /x"), "{text:?}");
}

/// The same with the preface split across writes: its first line alone is not an HTTP/1.1
/// head either, and was handed to hyper, which read the rest and spoke HTTP/2 on a connection
/// whose deadlines had been chosen for HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_after_an_http1_request_is_refused_when_its_preface_comes_in_pieces() {
    let origin = Origin::start("o").await;
    let d = behind(&origin).start().await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"origin o /x") {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&b[..n]);
    }
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rest = b".0\r\n\r\nSM\r\n\r\n".to_vec();
    rest.extend(streamgate_tests::h2::frame(4, 0, 0, &[]));
    // Written into a closed connection, this may fail: that is the point.
    let _ = s.write_all(&rest).await;
    let mut after = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut after)).await;
    assert!(read.is_ok(), "the connection stays open");
    assert!(after.is_empty(), "no HTTP/2 after HTTP/1.1: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_wrong_from_its_first_bytes_gets_400_at_once() {
    let origin = Origin::start("o").await;
    let d = behind(&origin).start().await;
    for raw in [
        &b"G@T / HTTP/1.1\r\nHost: a\r\n"[..],
        b"GET /\r\n",
        // A TLS ClientHello's first bytes on a plain port.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let started = std::time::Instant::now();
        let text = exchange(d.addr("web"), raw).await;
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request"),
            "{raw:?}: {text}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{raw:?}");
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_done_when_its_length_is_sent_not_when_the_origin_ends_its_stream() {
    // Over h2c the origin sends the five bytes it announced, then ends the stream 30 s later.
    let origin = late_end_origin(ORIGIN_WORKS_FOR).await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").address(origin))
        .service(
            Service::new("s")
                .listeners(&["web"])
                .regions(&["r"])
                .upstream(Upstream::new().protocol("h2c")),
        )
        .start()
        .await;
    let started = std::time::Instant::now();
    let raw = b"GET /late-end HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let text = exchange_within(d.addr("web"), raw, CLOSES_WITHIN + Duration::from_secs(5)).await;
    let got = answers(&text);
    let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["hello", "origin o /x"], "{got:?}");
    // The pipelined request did not wait for the first stream's end.
    assert!(started.elapsed() < CLOSES_WITHIN, "{:?}", started.elapsed());
}

/// An h2c origin that answers `/late-end` with the five bytes its Content-Length announces at
/// once and ends the stream `end_after` later (an HTTP/2 origin can do that; HTTP/1.1 framing
/// ends with the last byte), and any other path as [`Origin`] "o" does. The shared origin ends
/// it after 3 s, too close to a loaded machine's "at once".
async fn late_end_origin(end_after: Duration) -> std::net::SocketAddr {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;

    type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |req: http::Request<_>| async move {
                let path = req.uri().path().to_string();
                let answer = if path == "/late-end" {
                    let pieces = futures_util::stream::unfold(false, move |sent| async move {
                        if sent {
                            tokio::time::sleep(end_after).await;
                            return None;
                        }
                        let hello = Frame::data(Bytes::from_static(b"hello"));
                        Some((Ok::<_, std::convert::Infallible>(hello), true))
                    });
                    http::Response::builder()
                        .header("content-length", "5")
                        .body(Body::new(StreamBody::new(pieces)))
                } else {
                    let text = format!("origin o {path}");
                    http::Response::builder().body(Full::new(Bytes::from(text)).boxed())
                };
                Ok::<_, std::convert::Infallible>(answer.unwrap())
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A backend's answer goes on as it was sent (names as the backend spelled them, every line of a
/// repeated field, the backend's Via hops before ours), less the fields for its hop only. An
/// ordinary head goes on as the backend's bytes; one with a field named in Connection goes
/// through the field map (lower-case names), and both must look the same otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answer_goes_on_as_sent_less_its_hop_by_hop_fields() {
    let origin = RawOrigin::start(|head| {
        let connection = if head.starts_with("GET /named ") {
            "Connection: x-private\r\nX-Private: 1\r\n"
        } else {
            "Connection: keep-alive\r\n"
        };
        format!(
            "HTTP/1.1 200 OK\r\nServer: origin\r\nX-Mixed-Case: One\r\n{connection}\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nVia: 1.1 cdn\r\n\
Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
        )
        .into_bytes()
    })
    .await;
    let d = origin.behind(Listener::http("web")).await;
    for (path, as_spelled) in [("/plain", true), ("/named", false)] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let text = exchange(d.addr("web"), raw.as_bytes()).await;
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
        assert_eq!(body, "ok", "{path}");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let lines: Vec<&str> = head.lines().skip(1).collect();
        let lower: Vec<String> = lines.iter().map(|l| l.to_ascii_lowercase()).collect();
        for gone in ["keep-alive:", "proxy-connection:", "x-private:"] {
            assert!(
                !lower.iter().any(|l| l.starts_with(gone)),
                "{gone} in {head}"
            );
        }
        let connection: Vec<&String> = lower
            .iter()
            .filter(|l| l.starts_with("connection:"))
            .collect();
        assert_eq!(connection, ["connection: close"], "{head}");
        let cookies: Vec<&String> = lower
            .iter()
            .filter(|l| l.starts_with("set-cookie:"))
            .collect();
        assert_eq!(cookies, ["set-cookie: a=1", "set-cookie: b=2"], "{head}");
        let via: Vec<&str> = lower
            .iter()
            .filter_map(|l| l.strip_prefix("via: "))
            .flat_map(|v| v.split(", "))
            .collect();
        assert_eq!(via, ["1.1 cdn", "1.1 streamgate"], "{head}");
        assert_eq!(
            lower
                .iter()
                .filter(|l| l.starts_with("content-length:"))
                .count(),
            1
        );
        assert!(lower.iter().any(|l| l == "content-length: 2"), "{head}");
        assert!(lower.iter().any(|l| l.starts_with("date: ")), "{head}");
        assert!(lower.iter().any(|l| l == "x-mixed-case: one"), "{head}");
        assert_eq!(lines.contains(&"X-Mixed-Case: One"), as_spelled, "{head}");
    }
}

/// An empty answer (Content-Length: 0) that goes on as the backend sent it gives its backend
/// connection back once the client's head is written: twenty pipelined requests take one
/// backend connection, and every answer arrives, empty, with the backend's spelling (the raw
/// path). That it costs no allocation for its fields is the allocs bench's
/// `proxied-h1-empty`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_answers_sent_as_the_backend_sent_them_reuse_its_connection() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 0\r\n\r\n".to_vec()
    })
    .await;
    let d = origin.behind(Listener::http("web")).await;
    let mut raw = String::new();
    for i in 0..20 {
        let close = if i == 19 { "Connection: close\r\n" } else { "" };
        raw.push_str(&format!("GET /e{i} HTTP/1.1\r\nHost: a\r\n{close}\r\n"));
    }
    let text = exchange(d.addr("web"), raw.as_bytes()).await;
    assert_eq!(text.matches("\r\nServer: origin\r\n").count(), 20, "{text}");
    let got = answers(&text);
    assert_eq!(got.len(), 20, "{text}");
    for (head, body) in &got {
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("\r\nserver: origin"), "{head}");
        assert!(head.contains("\r\ncontent-length: 0"), "{head}");
        assert_eq!(body, "");
    }
    assert_eq!(origin.heads().len(), 20);
    assert_eq!(
        origin.request_connections(),
        1,
        "one backend connection, reused"
    );
}

/// What a backend's answer says of its framing is checked before it goes on, as nginx does: a
/// transfer coding other than `chunked` alone is refused (502), since this hop's
/// Transfer-Encoding is not passed on and the coding would reach the client unnamed; a length
/// sent as a list of equal values goes on as one value; and an HTTP/1.0 answer with
/// Transfer-Encoding has faulty framing, so its backend connection is closed after it
/// (RFC 9112 §6.1), not used for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answers_framing_is_checked_before_it_goes_on() {
    let origin = RawOrigin::start(|head| {
        let path = head.split(' ').nth(1).unwrap_or("?");
        match path {
            "/gzip-chunked" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec()
            }
            "/old-chunked" => b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\
Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(),
        }
    })
    .await;
    let d = origin.behind(Listener::http("web")).await;
    let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let text = exchange(d.addr("web"), ask("/listed").as_bytes()).await;
    let got = answers(&text);
    assert!(got[0].0.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(got[0].0.contains("\r\ncontent-length: 5\r\n"), "{text}");
    assert_eq!(got[0].1, "hello");
    assert_eq!(origin.request_connections(), 1);
    // On the same backend connection: an HTTP/1.0 answer with Transfer-Encoding...
    let text = exchange(d.addr("web"), ask("/old-chunked").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{text}");
    // ...ends it: the next request takes a new one.
    let text = exchange(d.addr("web"), ask("/listed").as_bytes()).await;
    assert_eq!(answers(&text)[0].1, "hello", "{text}");
    assert_eq!(
        origin.request_connections(),
        2,
        "the connection of the faulty framing is not used again"
    );
    let text = exchange(d.addr("web"), ask("/gzip-chunked").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
}

/// An HTTP/1.1 request's header map, emptied, takes a later backend answer's fields on the
/// same thread (spare_maps.rs), for HTTP/1.1 and HTTP/2 clients alike: nothing of one
/// client's request or answer may show in another's, nor in what the backend gets for it. One
/// worker, so every client shares the thread and its spare maps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_one_clients_exchange_shows_in_anothers() {
    let origin = RawOrigin::start(|head| {
        if head.starts_with("GET /a ") {
            b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=A\r\nX-For-A: a\r\nContent-Length: 1\r\n\r\nA"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB".to_vec()
        }
    })
    .await;
    let d = Config::new()
        .workers(1)
        .listener(Listener::http("web"))
        .region(Region::new("origin").address(origin.addr))
        .service(Service::new("s").listeners(&["web"]).regions(&["origin"]))
        .start()
        .await;
    // Enough fields that the request's map is large enough to be kept.
    let names: Vec<String> = (0..16).map(|i| format!("x-private-{i}")).collect();
    let mut secret: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "A")).collect();
    secret.push(("authorization", "Bearer secret-A"));
    for _ in 0..3 {
        let a = get(&http1(), &d.url("web", "/a"), &secret).await.unwrap();
        assert_eq!(a.text(), "A");
        assert_eq!(a.header("set-cookie"), Some("sid=A"));
        for client in [http1(), http2()] {
            let b = get(&client, &d.url("web", "/b"), &[]).await.unwrap();
            assert_eq!(b.text(), "B");
            for (name, value) in &b.headers {
                let value = value.to_str().unwrap_or("");
                assert!(
                    !["set-cookie", "x-for-a", "authorization"].contains(&name.as_str())
                        && !name.as_str().starts_with("x-private")
                        && !value.contains("secret-A")
                        && !value.contains("sid=A"),
                    "{name}: {value} in another client's answer"
                );
            }
        }
    }
    let heads = origin.heads();
    let to_b: Vec<&String> = heads.iter().filter(|h| h.starts_with("GET /b ")).collect();
    assert_eq!(to_b.len(), 6);
    for head in to_b {
        let head = head.to_ascii_lowercase();
        assert!(
            !head.contains("secret-a") && !head.contains("x-private") && !head.contains("sid=a"),
            "{head}"
        );
    }
}
