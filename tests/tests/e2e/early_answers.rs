//! A backend that answers before the request body has all arrived (a 401 or 413 decided on the
//! head, nginx's static files answering a POST): the rest of the body still goes, the client's
//! connection serves the next request, the backend's is closed (never pooled: request
//! smuggling), an upload that stops is let go, and a body that ends short never leaves its
//! backend connection to the next request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use streamgate_tests::h2::frame;
use streamgate_tests::tls::{make_cert, server_tls};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An origin that answers every request at once with its path, and reads its body after: a
/// refusal (401) for paths under `/refused`, a 200 for the rest.
async fn path_origin() -> RawOrigin {
    RawOrigin::start(path_answer).await
}

/// The answer of [`path_origin`] to `head`.
fn path_answer(head: &str) -> Vec<u8> {
    let path = head.split(' ').nth(1).unwrap_or("?").to_string();
    let status = match path.starts_with("/refused") {
        true => "401 Unauthorized",
        false => "200 OK",
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{path}",
        path.len()
    )
    .into_bytes()
}

/// Reads from `s` until `text` holds `n` answers (Content-Length framed), at most 5 s.
async fn read_answers(s: &mut TcpStream, text: &mut String, n: usize) {
    let mut chunk = [0u8; 4096];
    while answers(text).len() < n {
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer {n} within 5 s: {text:?}"));
        match read {
            Ok(0) | Err(_) => {
                panic!("the daemon closed the connection before answer {n}: {text:?}")
            }
            Ok(k) => text.push_str(&String::from_utf8_lossy(&chunk[..k])),
        }
    }
}

/// A backend that answers on the head, before the upload has ended (nginx's static files to a
/// POST, a 401, a 413), and then reads the rest: the client's connection lives on. The rest of
/// the body still reaches the backend, and the next request on the connection is answered.
/// hyper's server closes a connection whose request body is dropped half-read, and a client
/// that reuses it loses its next request (h2load saw one connection in 30 break this way with
/// two workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_ends_keeps_the_client_connection() {
    let origin = path_origin().await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let body = vec![b'u'; 40_000];
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 40000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&body[..1000]).await.unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    // The answer is whole; the rest of the body follows it, then the next request.
    s.write_all(&body[1000..]).await.unwrap();
    // The backend connection closes once the body has gone (see
    // `a_connection_answered_before_its_upload_ended_is_not_reused`).
    let origin_has_it = eventually(Duration::from_secs(5), || origin.bodies().len() == 1).await;
    assert!(origin_has_it, "the rest of the upload reached the backend");
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answers(&mut s, &mut text, 2).await;
    let got = answers(&text);
    assert!(got[0].0.starts_with("http/1.1 200 ok"), "{text}");
    assert_eq!(got[0].1, "/upload");
    assert!(got[1].0.starts_with("http/1.1 200 ok"), "{text}");
    assert_eq!(got[1].1, "/next");
    assert!(!got[0].0.contains("connection: close"), "{text}");
    assert_eq!(
        origin.bodies(),
        vec![40_000],
        "the whole upload reached the backend"
    );
    assert_eq!(
        origin.request_connections(),
        2,
        "the backend connection answered before its upload ended is not reused"
    );
}

/// A backend that answers a POST on its head and never reads the body (a static-file handler;
/// a "CL.0" backend) takes the body's bytes for the next request. If the connection went back
/// to the pool once the upload's tail had gone, a body crafted as the start of a request
/// ("GET /smuggled ... X: ") would prefix the next client's request on it, and that client
/// would get the smuggled answer: the desync of request-smuggling research. nginx never keeps a
/// backend connection whose request body was not all sent before the answer; neither does
/// StreamGate: the tail still goes (the backend may want it), then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_answered_before_its_upload_ended_is_not_reused() {
    let origin = RawOrigin::ignoring_bodies(path_answer).await;
    let d = origin.behind(Listener::http("web")).await;
    try_to_smuggle(&d).await;
}

/// The same desync through an HTTPS backend, which hyper's client speaks to: it puts a
/// connection back in its pool once both the request and the answer are done, however they
/// overlapped. Such a connection is poisoned for the pool before the body's last bytes go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_connection_answered_before_its_upload_ended_is_not_reused() {
    let (_origin, d, _ca) = cl0_https().await;
    let first = get(&http1(), &d.url("web", "/first"), &[]).await.unwrap();
    assert_eq!(first.text(), "/first", "the HTTPS backend answers");
    try_to_smuggle(&d).await;
}

/// The same desync from an HTTP/2 client whose body has a `content-length` and whose
/// END_STREAM comes after the last byte: hyper's client stops polling the body at its length,
/// so the end is taken where the length runs out, not at the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_answered_early_by_an_https_backend_is_not_reused() {
    let (_origin, d, _ca) = cl0_https().await;
    let smuggled = smuggled();
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut got = Vec::new();
    s.write_all(&h2_upload("/upload", Some(smuggled.len()), 0))
        .await
        .unwrap();
    read_to_end_of_stream_1(&mut s, &mut got).await;
    // DATA frames of at most 16 KiB, HTTP/2's default largest frame.
    for part in smuggled.chunks(16_000) {
        s.write_all(&frame(0, 0, 1, part)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&frame(0, 1, 1, &[])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    victims_get_their_own(&d).await;
}

/// The watch on HTTPS backends costs no keep-alive where the backend reads each body before
/// it answers: uploads one after another share one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_uploads_read_before_their_answers_share_a_connection() {
    let cert = make_cert(&["origin.test"]);
    let origin = RawOrigin::answering_after_bodies_tls(path_answer, server_tls(&cert, None)).await;
    let (d, _ca) = origin.behind_https(&cert).await;
    let c = http1();
    for i in 0..5 {
        let path = format!("/upload/{i}");
        let r = send(
            &c,
            Method::POST,
            &d.url("web", &path),
            &[],
            Bytes::from(vec![b'u'; 10_000]),
        )
        .await
        .unwrap();
        assert_eq!(r.text(), path);
    }
    assert_eq!(origin.bodies(), vec![10_000; 5]);
    assert_eq!(
        origin.request_connections(),
        1,
        "every upload went on the one pooled connection"
    );
}

/// A "CL.0" backend over HTTPS ([`RawOrigin::ignoring_bodies_tls`], answering with the path)
/// and a daemon in front of it ([`RawOrigin::behind_https`]).
async fn cl0_https() -> (RawOrigin, TestDaemon, tempfile::TempDir) {
    let cert = make_cert(&["origin.test"]);
    let origin = RawOrigin::ignoring_bodies_tls(path_answer, server_tls(&cert, None)).await;
    let (d, ca) = origin.behind_https(&cert).await;
    (origin, d, ca)
}

/// A body crafted as the start of a request: a backend that takes it for the next request on
/// its connection answers the next client's request with `/smuggled`. Padded past 16 KiB: a
/// smaller body with its length declared is read whole before the backend is asked, so it is
/// never sent after an answer (see `request_buffering.rs`).
fn smuggled() -> Vec<u8> {
    let pad = "p".repeat(20_000);
    format!("GET /smuggled HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\nX-Ignore: ").into_bytes()
}

/// Sends a POST to `d`'s `web` whose body is the start of a request for `/smuggled`, its tail
/// after the answer, then asks for `/victim` three times: each must get its own answer.
async fn try_to_smuggle(d: &TestDaemon) {
    let smuggled = smuggled();
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    assert_eq!(answers(&text)[0].1, "/upload");
    // The body after the answer: the tail goes to the backend.
    s.write_all(&smuggled).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    victims_get_their_own(d).await;
}

/// Three requests for `/victim` to `d`'s `web`, each of which must get its own answer.
async fn victims_get_their_own(d: &TestDaemon) {
    for _ in 0..3 {
        let victim = get(&http1(), &d.url("web", "/victim"), &[]).await.unwrap();
        assert_eq!(
            victim.text(),
            "/victim",
            "another client got a smuggled answer"
        );
    }
}

/// After an early answer, an upload that stops moving is given up on (5 s without a byte, as
/// nginx's `lingering_timeout`): the client's connection closes, and the backend connection,
/// which still waits for the rest of that body, is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stops_after_an_early_answer_is_let_go() {
    let origin = RawOrigin::ok().await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    // Taken before the upload's bytes are written: the 5 s run from its last byte, which the
    // daemon cannot read earlier, so from here they are at least 5 s whatever the machine's
    // load (from the answer, read later, they may be less).
    let sent = std::time::Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'u'; 1000]).await.unwrap();
    let mut text = String::new();
    read_answers(&mut s, &mut text, 1).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the stalled upload's connection is closed within 10 s"
    );
    // Not at once: the upload had 5 s to go on (100 ms off for the clocks' granularity).
    assert!(
        sent.elapsed() >= Duration::from_millis(4900),
        "{:?}",
        sent.elapsed()
    );
    let next = get(&http1(), &d.url("web", "/next"), &[]).await.unwrap();
    assert_eq!(next.status, 200);
    assert!(origin.bodies().is_empty(), "{:?}", origin.bodies());
    assert_eq!(
        origin.request_connections(),
        2,
        "the next request does not go on the connection the upload left half-sent"
    );
}

/// Reads HTTP/2 frames from `s` until one on stream 1 ends it (END_STREAM), at most 5 s.
async fn read_to_end_of_stream_1(s: &mut TcpStream, got: &mut Vec<u8>) {
    let ends = |kind, flags, _: &[u8]| (kind == 0 || kind == 1) && flags & 1 == 1;
    assert!(
        read_until_on_stream_1(s, got, Duration::from_secs(5), ends).await,
        "the answer within 5 s"
    );
}

/// Reads HTTP/2 frames from `s` until `wanted(kind, flags, payload)` holds for a frame on
/// stream 1 (true), or `within` passes (false). `got` keeps what was read past that frame
/// for the next call: a reset may come in the same read as the answer's end.
async fn read_until_on_stream_1(
    s: &mut TcpStream,
    got: &mut Vec<u8>,
    within: Duration,
    wanted: impl Fn(u8, u8, &[u8]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        while got.len() >= 9 {
            let len =
                (usize::from(got[0]) << 16) | (usize::from(got[1]) << 8) | usize::from(got[2]);
            if got.len() < 9 + len {
                break;
            }
            let (kind, flags) = (got[3], got[4]);
            let stream = u32::from_be_bytes([got[5], got[6], got[7], got[8]]);
            let found = stream == 1 && wanted(kind, flags, &got[9..9 + len]);
            got.drain(..9 + len);
            if found {
                return true;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => panic!("closed while reading frames"),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// After an early refusal of an HTTP/2 client's upload, the upload is stopped at once with
/// `RST_STREAM(NO_ERROR)` (RFC 9113 §8.1; nginx does the same), not read on and passed to the
/// backend: a client uploading a large file that the backend refused (401, 413) stops sending.
/// HTTP/2 needs no tail to keep the client's connection, as HTTP/1.1 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_refused_early_is_stopped() {
    let origin = path_origin().await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut got = Vec::new();
    s.write_all(&h2_upload("/refused", Some(100_000), 1000))
        .await
        .unwrap();
    read_to_end_of_stream_1(&mut s, &mut got).await;
    let no_error_reset = |kind, _, payload: &[u8]| kind == 3 && payload == [0, 0, 0, 0];
    assert!(
        read_until_on_stream_1(&mut s, &mut got, Duration::from_secs(2), no_error_reset).await,
        "RST_STREAM(NO_ERROR) on the upload within 2 s of its answer"
    );
    // The backend, still owed most of the body, would read the next request on that
    // connection as part of it: the next request goes on a new connection and is answered.
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        get(&http1(), &d.url("web", "/next"), &[]),
    )
    .await
    .expect("the next request is answered, not read as the rest of a body")
    .unwrap();
    assert_eq!(next.text(), "/next");
    assert!(origin.bodies().is_empty(), "{:?}", origin.bodies());
    assert_eq!(
        origin.request_connections(),
        2,
        "the half-sent connection is closed"
    );
}

/// An upload that the backend accepted before its end (a 2xx, as an ingest endpoint may send
/// before it reads the body) still goes to the backend whole for an HTTP/2 client too, with no
/// reset; the backend connection then closes, as for HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_accepted_early_still_reaches_the_backend() {
    let origin = path_origin().await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut got = Vec::new();
    s.write_all(&h2_upload("/upload", Some(20_000), 1000))
        .await
        .unwrap();
    read_to_end_of_stream_1(&mut s, &mut got).await;
    let body = vec![b'u'; 16_000];
    s.write_all(&frame(0, 0, 1, &body)).await.unwrap();
    s.write_all(&frame(0, 1, 1, &body[..3000])).await.unwrap();
    let origin_has_it = eventually(Duration::from_secs(5), || origin.bodies().len() == 1).await;
    assert!(origin_has_it, "the rest of the upload reached the backend");
    assert_eq!(origin.bodies(), vec![20_000]);
    let reset = |kind, _, _: &[u8]| kind == 3;
    assert!(
        !read_until_on_stream_1(&mut s, &mut got, Duration::from_millis(300), reset).await,
        "no reset of an accepted upload"
    );
    let next = get(&http1(), &d.url("web", "/next"), &[]).await.unwrap();
    assert_eq!(next.text(), "/next");
    assert_eq!(
        origin.request_connections(),
        2,
        "the backend connection answered before its upload ended is not reused"
    );
}

/// An HTTP/2 POST with `content-length: 0` and no END_STREAM yet has all of its body: its backend
/// connection goes back to the pool with the answer, and does not wait for a flag that may come
/// late, or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_of_length_zero_does_not_hold_its_backend_connection() {
    let origin = path_origin().await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut got = Vec::new();
    s.write_all(&h2_upload("/empty", Some(0), 0)).await.unwrap();
    read_to_end_of_stream_1(&mut s, &mut got).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = get(&http1(), &d.url("web", "/next"), &[]).await.unwrap();
    assert_eq!(next.text(), "/next");
    let heads = origin.heads();
    assert!(heads[0].contains("content-length: 0\r\n"), "{heads:?}");
    assert_eq!(
        origin.request_connections(),
        1,
        "the connection served the next request at once"
    );
}

/// An HTTP/2 client's opening of an upload: the preface, POST `path` for a.example (with a
/// `content-length` when `length` is given; HPACK without indexing), and its first `sent`
/// bytes, without END_STREAM.
fn h2_upload(path: &str, length: Option<usize>, sent: usize) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"a.example");
    if let Some(n) = length {
        let n = n.to_string();
        block.extend_from_slice(&[0x0f, 0x0d, n.len() as u8]);
        block.extend_from_slice(n.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 4, 1, &block));
    if sent > 0 {
        out.extend(frame(0, 0, 1, &vec![b'u'; sent]));
    }
    out
}

/// The same reset of an HTTP/2 upload that has no length: it goes to an HTTP/1.1 backend
/// chunked, and hyper ends the body as if whole, so the last chunk would tell the backend the
/// body is complete: a truncated upload stored as a whole file. The backend connection is
/// closed instead, without its last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_without_a_length_reset_by_its_client_is_not_passed_on_as_whole() {
    let origin = path_origin().await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut got = Vec::new();
    s.write_all(&h2_upload("/upload", None, 1000))
        .await
        .unwrap();
    read_to_end_of_stream_1(&mut s, &mut got).await;
    s.write_all(&frame(3, 0, 1, &0u32.to_be_bytes()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = get(&http1(), &d.url("web", "/next"), &[]).await.unwrap();
    assert_eq!(next.text(), "/next");
    let heads = origin.heads();
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{heads:?}"
    );
    assert!(origin.bodies().is_empty(), "{:?}", origin.bodies());
    assert_eq!(origin.request_connections(), 2);
}

/// The same reset toward an HTTP/2 backend (h2c), before any answer: the backend's stream is
/// reset, not ended with END_STREAM as if the upload were whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_reset_by_its_client_is_reset_toward_an_http2_backend() {
    let origin = Origin::start("h2").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(&origin, 1)]))
        .service(
            Service::new("s")
                .listeners(&["web"])
                .regions(&["r"])
                .upstream(Upstream::new().protocol("h2c")),
        )
        .start()
        .await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(&h2_upload("/sink", None, 1000)).await.unwrap();
    // The upload reaches the backend before the client resets it.
    let st = &origin.state;
    for _ in 0..100 {
        if st.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&frame(3, 0, 1, &0u32.to_be_bytes()))
        .await
        .unwrap();
    let ends = || {
        let whole = st.whole_sinks.load(std::sync::atomic::Ordering::SeqCst);
        (
            whole,
            st.cut_sinks.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    for _ in 0..100 {
        if ends() != (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ends(), (0, 1), "(whole, cut) uploads at the backend");
}

/// An HTTP/2 upload whose announced length is all in, reset (NO_ERROR) before its END_STREAM:
/// the backend has the whole body by its framing, so the body is whole, and the backend
/// connection serves the next request. (The backend reads the body before it answers: an answer
/// before the body has gone closes the connection, see
/// `a_connection_answered_before_its_upload_ended_is_not_reused`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_reset_after_all_its_length_is_whole() {
    let origin = RawOrigin::answering_after_bodies(path_answer).await;
    let d = origin.behind(Listener::http("web")).await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut got = Vec::new();
    // All 1000 bytes of its length, without END_STREAM.
    s.write_all(&h2_upload("/upload", Some(1000), 1000))
        .await
        .unwrap();
    read_to_end_of_stream_1(&mut s, &mut got).await;
    s.write_all(&frame(3, 0, 1, &0u32.to_be_bytes()))
        .await
        .unwrap();
    let origin_has_it = eventually(Duration::from_secs(5), || origin.bodies().len() == 1).await;
    assert!(origin_has_it, "the whole body reached the backend");
    assert_eq!(origin.bodies(), vec![1000]);
    // A writer still returning when the answer ended hands the connection to the pool from a
    // task of its own: time for it on a loaded machine.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let next = get(&http1(), &d.url("web", "/next"), &[]).await.unwrap();
    assert_eq!(next.text(), "/next");
    assert_eq!(
        origin.request_connections(),
        1,
        "the backend connection is reused"
    );
}
