//! A backend that fails, end to end: refused connections (502), none usable (503), a slow
//! one (504), broken uploads, and which requests are tried again on another backend (a dead
//! one, a 503, a reused connection the backend closed) and which are not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use streamgate_tests::presets::{app, local, web as one_service};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `app` over `region`, a backend ejected for a minute after `failures` failures in a row, and
/// 503 (not fail-open) once every backend is out.
async fn ejecting_after(failures: i64, region: Region) -> TestDaemon {
    one_service(
        region,
        app()
            .outlier(
                Outlier::new()
                    .consecutive_failures(failures)
                    .base_ejection("1m"),
            )
            .failover(Failover::new().when_all_down("fail_closed")),
    )
    .start()
    .await
}

/// A loopback port that refuses connections for as long as the socket is kept: bound, never
/// listening. A port bound and let go at once could be taken by a test running beside this one.
fn refusing_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    (sock, addr)
}

#[tokio::test]
async fn refused_backend_is_502_with_a_short_body() {
    let (_held, dead) = refusing_port();
    let d = one_service(local().address(dead), app()).start().await;
    let a = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.text(), "502 Bad Gateway: backend unreachable\n");
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn no_usable_backend_is_503() {
    let (_held, dead) = refusing_port();
    let d = ejecting_after(1, local().address(dead)).await;
    let c = http1();
    assert_eq!(
        get(&c, &d.url("web", "/"), &[]).await.unwrap().status,
        StatusCode::BAD_GATEWAY
    );
    // The failure ejected the only backend; fail_closed answers 503 instead of trying it.
    let a = get(&c, &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.text(), "503 Service Unavailable: no healthy backend\n");
    assert_eq!(a.header("retry-after"), Some("1"));
}

/// Sends `/sink` a chunked upload that breaks off with a malformed chunk; the daemon's answer.
async fn broken_upload(d: &TestDaemon) -> String {
    let mut s = tokio::net::TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    s.write_all(b"5\r\nhello\r\nzz\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("the broken upload's connection is closed")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client whose upload breaks off (a malformed chunk) is answered 400, and the backend's
/// answer to the truncated body (the 500 of an application that hit EOF) is not held against
/// the backend: broken uploads cannot get a healthy backend ejected.
#[tokio::test]
async fn broken_uploads_do_not_eject_their_backend() {
    let origin = Origin::start("app").await;
    let d = ejecting_after(1, local().backends(&[(&origin, 1)])).await;
    for i in 1..=3 {
        let answer = broken_upload(&d).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let seen = eventually(Duration::from_secs(5), || {
            origin
                .state
                .cut_sinks
                .load(std::sync::atomic::Ordering::SeqCst)
                == i
        })
        .await;
        assert!(seen, "the backend saw upload {i} break off");
    }
    let a = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.text(), "origin app /");
}

/// Nor do they hide a failing backend: broken uploads between its 500s count neither way, and
/// the 500s still add up to its ejection.
#[tokio::test]
async fn broken_uploads_do_not_shield_a_failing_backend() {
    let origin = Origin::start("sick").await;
    origin.set_status(500);
    let d = ejecting_after(3, local().backends(&[(&origin, 1)])).await;
    let c = http1();
    for _ in 0..2 {
        assert_eq!(get(&c, &d.url("web", "/"), &[]).await.unwrap().status, 500);
        let answer = broken_upload(&d).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    }
    assert_eq!(get(&c, &d.url("web", "/"), &[]).await.unwrap().status, 500);
    // The third 500 in a row ejected the only backend.
    let a = get(&c, &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
}

#[tokio::test]
async fn slow_backend_is_504() {
    let origin = Origin::start("slow").await;
    origin.set_delay(Duration::from_secs(5));
    let d = one_service(
        local().backends(&[(&origin, 1)]),
        app().timeouts(Timeouts::new().upstream_response("200ms")),
    )
    .start()
    .await;
    let started = std::time::Instant::now();
    let a = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        a.text(),
        "504 Gateway Timeout: backend did not answer in time\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.hits(), 1, "a timed-out request is not retried");
}

#[tokio::test]
async fn a_dead_backend_is_retried_on_another_and_the_client_sees_200() {
    let live = Origin::start("live").await;
    let (_held, dead) = refusing_port();
    let d = one_service(local().address(dead).address(live.addr), app())
        .start()
        .await;
    let c = http1();
    for _ in 0..20 {
        let a = get(&c, &d.url("web", "/"), &[]).await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.text(), "origin live /");
    }
}

#[tokio::test]
async fn a_503_from_a_backend_is_retried_for_idempotent_requests_only() {
    let (_sick, _well, d) = sick_and_well().await;
    let c = http1();
    for _ in 0..10 {
        assert_eq!(
            get(&c, &d.url("web", "/"), &[]).await.unwrap().status,
            StatusCode::OK
        );
    }
    let mut saw_503 = false;
    for _ in 0..10 {
        let a = send(&c, Method::POST, &d.url("web", "/"), &[], Bytes::new())
            .await
            .unwrap();
        saw_503 |= a.status == StatusCode::SERVICE_UNAVAILABLE;
    }
    assert!(
        saw_503,
        "a POST that reached the sick backend gets its 503, not a replay"
    );
}

/// A daemon over two backends, one answering every request 503, with outlier ejection off
/// (so the sick one keeps its turns).
async fn sick_and_well() -> (Origin, Origin, TestDaemon) {
    let sick = Origin::start("sick").await;
    sick.set_status(503);
    let well = Origin::start("well").await;
    let d = one_service(
        local().backends(&[(&sick, 1), (&well, 1)]),
        app().outlier(Outlier::new().consecutive_failures(0)),
    )
    .start()
    .await;
    (sick, well, d)
}

/// An idempotent request with a streaming body (a PUT over 16 KiB) that got a 503 is not sent
/// again: the body went with the first attempt, and a retry went out with none, which stored
/// an empty file. A small body is read whole first, so its PUT is sent again with all of it.
#[tokio::test]
async fn a_put_is_replayed_only_with_its_whole_body() {
    let (_sick, _well, d) = sick_and_well().await;
    let c = http1();
    let large = Bytes::from(vec![b'p'; 40_000]);
    let mut saw_503 = false;
    for _ in 0..10 {
        let a = send(&c, Method::PUT, &d.url("web", "/echo"), &[], large.clone())
            .await
            .unwrap();
        match a.status {
            StatusCode::SERVICE_UNAVAILABLE => saw_503 = true,
            status => {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(a.body.len(), large.len(), "the backend got the whole body");
            }
        }
    }
    assert!(
        saw_503,
        "a streamed PUT that reached the sick backend gets its 503"
    );
    let small = Bytes::from(vec![b'p'; 1000]);
    for i in 0..10 {
        let a = send(&c, Method::PUT, &d.url("web", "/echo"), &[], small.clone())
            .await
            .unwrap();
        assert_eq!(
            a.status,
            StatusCode::OK,
            "PUT {i} went again to the well backend"
        );
        assert_eq!(a.body, small, "with its whole body");
    }
    // A POST is not idempotent: read whole or not, one that reached a backend is not resent.
    let mut saw_503 = false;
    for _ in 0..10 {
        let a = send(&c, Method::POST, &d.url("web", "/echo"), &[], small.clone())
            .await
            .unwrap();
        saw_503 |= a.status == StatusCode::SERVICE_UNAVAILABLE;
    }
    assert!(
        saw_503,
        "a small POST that reached the sick backend gets its 503"
    );
}

/// A backend that answers the first request on each connection and closes the connection
/// without answering the second, as one whose keep-alive timer fired just as a request
/// arrived (or one that crashed running it). The request lines it read, in order.
async fn closes_on_the_second_request() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let line = head.lines().next().unwrap_or("").to_string();
                    if line.contains("/healthz") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        continue;
                    }
                    lines.lock().unwrap().push(line);
                    if answered == 1 {
                        return;
                    }
                    answered += 1;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

/// A request the backend may have run is sent again after a reused connection fails with no
/// answer only when running it twice is harmless: a GET is, a bodiless POST is not (nginx and
/// Go's client do not resend it either); it gets 502.
#[tokio::test]
async fn a_post_is_not_sent_again_when_a_reused_connection_fails() {
    let (addr, seen) = closes_on_the_second_request().await;
    let d = one_service(local().address(addr), app()).start().await;
    let c = http1();
    let url = d.url("web", "/");
    let first = send(&c, Method::GET, &format!("{url}first"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let get = send(&c, Method::GET, &format!("{url}get"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        get.status,
        StatusCode::OK,
        "a GET is sent again on a new connection"
    );
    let post = send(
        &c,
        Method::POST,
        &format!("{url}transfer"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{}", post.text());
    let posts = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "{:?}", seen.lock().unwrap());
}

/// Failed answers, which a client can provoke (a path that answers 500), take out at most half
/// a region's backends (`max_ejection_percent`, at least one): a client could otherwise eject
/// them all in turn, a request or two each. And a 501 (a method the backend does not serve) is
/// the client's doing, not a failure of the backend.
#[tokio::test]
async fn failed_answers_eject_at_most_half_a_region_and_a_501_ejects_nothing() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    a.set_status(500);
    b.set_status(500);
    let d = ejecting_after(1, local().backends(&[(&a, 1), (&b, 1)])).await;
    let c = http1();
    for _ in 0..6 {
        let got = get(&c, &d.url("web", "/"), &[]).await.unwrap();
        assert_eq!(
            got.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            got.text()
        );
    }
    assert_eq!(a.hits() + b.hits(), 6, "every request reached a backend");
    assert!(
        a.hits() == 1 || b.hits() == 1,
        "one was ejected after its first 500"
    );

    // A backend out of service for another reason (drained) counts too: the last one stays.
    let d = ejecting_after(1, local().backends(&[(&a, 1), (&b, 1)])).await;
    let drain = format!("{{\"address\": \"{}\"}}", a.addr);
    assert_eq!(
        d.admin(Method::POST, "/backends/drain", &drain).await.0,
        StatusCode::OK
    );
    for _ in 0..3 {
        let got = get(&c, &d.url("web", "/"), &[]).await.unwrap();
        assert_eq!(
            got.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            got.text()
        );
    }

    let o = Origin::start("o").await;
    o.set_status(501);
    let d = ejecting_after(1, local().backends(&[(&o, 1)])).await;
    for _ in 0..3 {
        let got = get(&c, &d.url("web", "/"), &[]).await.unwrap();
        assert_eq!(got.status, StatusCode::NOT_IMPLEMENTED);
    }
}
