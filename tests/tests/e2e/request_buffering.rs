//! Small request bodies (a declared length up to 16 KiB, as nginx's `client_body_buffer_size`)
//! are read whole before a backend is asked: a client that trickles one, or 256 at once over
//! one HTTP/2 connection, holds no backend connection meanwhile, and a body read whole can go
//! to the next backend when the first one fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use streamgate_tests::tls::{make_cert, server_tls, write_cert};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An origin that reads each body before it answers with its path.
async fn origin() -> RawOrigin {
    RawOrigin::answering_after_bodies(|head: &str| {
        let path = head.split(' ').nth(1).unwrap_or("?").to_string();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
            path.len()
        )
        .into_bytes()
    })
    .await
}

/// Reads from `s` until what came ends with `end` (at most 10 s a read); what came.
async fn read_until_end(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(end) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn a_trickled_http1_body_reaches_no_backend_before_it_is_whole() {
    let o = origin().await;
    let d = o.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        o.heads().is_empty(),
        "asked before the body was in: {:?}",
        o.heads()
    );
    s.write_all(b"world").await.unwrap();
    let got = read_until_end(&mut s, b"/up").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(o.bodies(), vec![10]);
}

#[tokio::test]
async fn trickled_http2_uploads_hold_no_backend_connection() {
    let o = origin().await;
    let d = o.behind(Listener::http("web")).await;
    let tcp = TcpStream::connect(d.addr("web")).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut rests = Vec::new();
    let mut answers = Vec::new();
    for i in 0..8 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://a.example/up/{i}"))
            .header("content-length", "10")
            .body(StreamBody::new(Box::pin(frames)))
            .unwrap();
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        let mut sender = sender.clone();
        answers.push(tokio::spawn(async move { sender.send_request(req).await }));
        rests.push(tx);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        o.heads().is_empty(),
        "asked before the bodies were in: {:?}",
        o.heads()
    );
    assert_eq!(o.request_connections(), 0);
    for tx in &rests {
        tx.send(Bytes::from_static(b"world")).await.unwrap();
    }
    drop(rests);
    for (i, a) in answers.into_iter().enumerate() {
        let resp = tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .expect("answered")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("/up/{i}"));
    }
    assert_eq!(o.bodies(), vec![10; 8]);
}

/// An HTTPS backend that refuses connections (a closed port) and one that answers: every
/// POST with a small body is answered by the live one. hyper's client takes a streaming body
/// before it connects, so before bodies were read whole, a POST that drew the dead backend
/// got a 502.
#[tokio::test]
async fn a_small_post_goes_to_the_next_backend_when_the_first_refuses_the_connection() {
    let cert = make_cert(&["origin.test"]);
    let live = RawOrigin::answering_after_bodies_tls(
        |_: &str| b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlive".to_vec(),
        server_tls(&cert, None),
    )
    .await;
    // Bound and never listening, and kept for the test: a port let go at once could be taken
    // by a test running beside this one.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = refusing.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "ca", &cert);
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("origin").address(dead).address(live.addr))
        .service(
            Service::new("s")
                .listeners(&["web"])
                .regions(&["origin"])
                .backend_policy("round_robin")
                .upstream(
                    Upstream::new()
                        .protocol("https")
                        .tls_ca_file(&ca)
                        .tls_server_name("origin.test"),
                ),
        )
        .start()
        .await;
    let c = http1();
    for i in 0..4 {
        let r = send(
            &c,
            Method::POST,
            &d.url("web", "/pay"),
            &[],
            Bytes::from(vec![b'p'; 1000]),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK, "POST {i}: {}", r.text());
        assert_eq!(r.text(), "live");
    }
    assert_eq!(live.bodies(), vec![1000; 4]);
}

/// A body that stops arriving is the client's: 408 after the service's `upstream_response`,
/// and no backend was asked.
#[tokio::test]
async fn a_small_body_that_stops_is_answered_408_without_a_backend() {
    let o = origin().await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .timeouts(Timeouts::new().upstream_response("1s"))
        .region(Region::new("origin").address(o.addr))
        .service(Service::new("s").listeners(&["web"]).regions(&["origin"]))
        .start()
        .await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(o.heads().is_empty(), "{:?}", o.heads());
    let counted = metric(
        &d.metrics().await,
        "streamgate_global_load_balancer_requests_total{code_class=\"4xx\",region=\"none\",service=\"s\"}",
    );
    assert_eq!(counted, Some(1.0), "the refusal is counted");
}

/// A pooled backend connection idle past `upstream_idle` is not used, counted from when the
/// request is sent, not from when it began: a client that took a second over its body must
/// not get a connection the backend (whose keep-alive `upstream_idle` stays under) may be
/// closing.
#[tokio::test]
async fn the_pool_idle_time_counts_to_the_send_not_the_request_start() {
    let o = origin().await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .timeouts(Timeouts::new().upstream_idle("1s"))
        .region(Region::new("origin").address(o.addr))
        .service(Service::new("s").listeners(&["web"]).regions(&["origin"]))
        .start()
        .await;
    let c = http1();
    let warm = get(&c, &d.url("web", "/warm"), &[]).await.unwrap();
    assert_eq!(warm.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.write_all(b"world").await.unwrap();
    read_until_end(&mut s, b"/late").await;
    assert_eq!(
        o.request_connections(),
        2,
        "the connection idle 1.5 s was not used"
    );
}

/// Request trailers after a small declared length (gRPC's `grpc-status`, a checksum) still
/// reach an h2c backend when the body is read whole (`protocols.rs` has the streaming case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_of_a_body_read_whole_reach_an_h2c_backend() {
    let o = Origin::start("grpc").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(&o, 1)]))
        .service(
            Service::new("grpc")
                .listeners(&["web"])
                .regions(&["r"])
                .upstream(Upstream::new().protocol("h2c")),
        )
        .start()
        .await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("c0ffee"));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::builder()
        .method(Method::POST)
        .uri(d.url("web", "/echo"))
        .header("content-length", "5")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let echoed = collected
        .trailers()
        .cloned()
        .expect("the trailers came back");
    assert_eq!(collected.to_bytes(), "hello");
    assert_eq!(echoed["x-checksum"], "c0ffee");
}

/// A backend that reads one chunked request and answers with how many chunks and bytes its
/// body came in.
async fn chunk_counting_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let got = read_until_end(&mut s, b"\r\n0\r\n\r\n").await;
                let start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut rest = &got[start..];
                let (mut chunks, mut bytes) = (0, 0);
                loop {
                    let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                    let line = std::str::from_utf8(&rest[..line_end]).unwrap();
                    let size = usize::from_str_radix(line, 16).unwrap();
                    if size == 0 {
                        break;
                    }
                    chunks += 1;
                    bytes += size;
                    rest = &rest[line_end + 2 + size + 2..];
                }
                let body = format!("{chunks} chunks, {bytes} bytes");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A client's many tiny chunks that are in at once reach the backend together, not as a
/// write (and a chunk to parse) each: 2 000 one-byte chunks were 2 000 chunks and 6 000
/// writes to the backend.
#[tokio::test]
async fn tiny_chunks_that_came_together_go_to_the_backend_together() {
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").address(chunk_counting_backend().await))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
        .start()
        .await;
    let mut req = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2000 {
        req.extend_from_slice(b"1\r\nx\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(&req).await.unwrap();
    let answer = String::from_utf8(read_until_end(&mut s, b" bytes").await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let said = answer.rsplit("\r\n\r\n").next().unwrap();
    let (chunks, bytes) = said.split_once(" chunks, ").unwrap();
    assert_eq!(bytes, "2000 bytes");
    let chunks: usize = chunks.parse().unwrap();
    assert!(chunks <= 20, "{chunks} chunks for 2 000 bytes sent at once");
}
