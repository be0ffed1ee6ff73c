//! HTTP/2 hardening: a backend or a client that stalls a stream (no window, a stalled body),
//! and the attacks on the protocol itself (rapid reset, CONTINUATION floods, PINGs, a header
//! block trickled in).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use streamgate_tests::h2::{frame, get_block, h2_trickle, raw_h2};
use streamgate_tests::presets::{
    over_origin as one_service, service_s as service, timed as config,
};
use streamgate_tests::*;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_backend_that_stalls_mid_body_is_given_up_on() {
    let o = Origin::start("o").await;
    let d = one_service(
        &o,
        Listener::http("web"),
        service().upstream(Upstream::new().protocol("h2c")),
    )
    .timeouts(Timeouts::new().upstream_response("1s"))
    .start()
    .await;
    // 1 MiB whose origin sends 64 KiB, then nothing.
    let url = d.url("web", "/c/stall?size=1048576&hold=1");
    let got = tokio::time::timeout(Duration::from_secs(10), get(&http1(), &url, &[])).await;
    match got {
        Err(_) => panic!("the client waited on a stalled backend body for 10 s"),
        Ok(Ok(a)) => assert!(a.body.len() < 1_048_576, "the whole body arrived"),
        Ok(Err(_)) => {} // the response broke off: what a client should see
    }
    o.release();
}

/// An HTTP/2 client that opens a stream for `path` with no window and never grants any: the
/// backend is released within 5 s (`idle` is 1 s), and then the connection, which carries
/// nothing else, is closed.
async fn zero_window_stream_is_let_go(path: &str) {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().idle("1s")).start().await;
    let (mut tx, conn) = {
        let s = TcpStream::connect(d.addr("web")).await.unwrap();
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap()
    };
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://a.example{path}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let in_flight = || async {
        let (_, v) = d.admin(Method::GET, "/backends", "").await;
        v["backends"][0]["in_flight"].as_u64().unwrap()
    };
    let mut released = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if in_flight().await == 0 {
            released = true;
            break;
        }
    }
    assert!(
        released,
        "{path}: the backend is still held by a stream that cannot move"
    );
    // The stalled stream no longer keeps its connection busy: idle closes it.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        closed.is_ok(),
        "{path}: the connection of a stalled stream was kept open"
    );
    drop(resp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_that_grants_no_window_releases_its_backend_after_idle() {
    zero_window_stream_is_let_go("/bytes/10485760").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_http2_response_that_gets_no_window_releases_its_backend_too() {
    zero_window_stream_is_let_go("/bytes/32768").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http2_reader_still_gets_the_whole_body() {
    use http_body_util::BodyExt;
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().idle("2s")).start().await;
    let s = TcpStream::connect(d.addr("web")).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://a.example/bytes/131072")
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut body = tx.send_request(req).await.unwrap().into_body();
    // About 20 KiB a second: a 16 KiB piece is taken every 0.8 s, well inside idle (2 s) even
    // on a loaded machine (CI once saw a 0.5 s margin run out), but a 64 KiB read of the
    // backend takes 3.2 s to drain, so a pump that timed whole reads would cut this reader.
    let mut got = 0;
    while let Some(f) = body.frame().await {
        let f = f.expect("the body was cut while the client was reading");
        if let Some(d) = f.data_ref() {
            got += d.len();
            tokio::time::sleep(Duration::from_millis(d.len() as u64 * 1000 / 20_480)).await;
        }
    }
    assert_eq!(got, 131_072);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_with_a_goaway() {
    let o = Origin::start("o").await;
    o.set_delay(Duration::from_millis(200));
    let d = config(&o, Timeouts::new()).start().await;
    let mut frames = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        frames.extend(frame(1, 0x5, stream, &get_block()));
        frames.extend(frame(3, 0, stream, &8u32.to_be_bytes()));
    }
    let (goaway, closed) = raw_h2(d.addr("web"), frames).await;
    assert!(goaway && closed, "goaway {goaway}, closed {closed}");
    assert!(o.hits() < 2000, "{} requests reached the origin", o.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_continuation_flood_is_cut_with_a_goaway() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new()).start().await;
    // A header block that never ends: HEADERS without END_HEADERS, then 10 000 CONTINUATIONs.
    let mut frames = frame(1, 0x1, 1, &get_block());
    let junk: Vec<u8> =
        std::iter::repeat_n([0x00u8, 3, b'x', b'-', b'a', 3, b'v', b'a', b'l'], 100)
            .flatten()
            .collect();
    for _ in 0..10_000 {
        frames.extend(frame(9, 0, 1, &junk));
    }
    let (goaway, closed) = raw_h2(d.addr("web"), frames).await;
    assert!(goaway && closed, "goaway {goaway}, closed {closed}");
    assert_eq!(o.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_peer_that_stops_answering_pings_is_closed() {
    use tokio::io::AsyncWriteExt;
    let o = Origin::start("o").await;
    // The request waits 20 s on its backend: the connection is busy, so no idle timer applies.
    o.set_delay(Duration::from_secs(20));
    let d = config(&o, Timeouts::new().idle("1s")).start().await;
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x5, 1, &get_block()));
    s.write_all(&out).await.unwrap();
    // Read what comes, never answer a PING: the peer looks gone.
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    assert!(closed, "the silent peer was kept");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_block_trickled_in_is_cut_at_request_header() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().request_header("1s").idle("30s"))
        .start()
        .await;
    // HEADERS without END_HEADERS, then a CONTINUATION that says 4 000 bytes follow and sends
    // them one every 250 ms: every byte is "activity", yet the request head never completes.
    let mut first = frame(1, 0x1, 1, &get_block());
    first.extend(&frame(9, 0x4, 1, &[])[..9]);
    first[get_block().len() + 9..][..3].copy_from_slice(&[0, 0x0f, 0xa0]);
    let closed = h2_trickle(d.addr("web"), first, vec![0]).await;
    let took = closed.expect("a head trickled in for 8 s was still being read");
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert_eq!(o.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_kept_busy_by_pings_alone_is_closed_at_idle() {
    let o = Origin::start("o").await;
    let d = config(&o, Timeouts::new().idle("1s")).start().await;
    // One request, then nothing but PINGs (and answers to the server's): the connection carries
    // no request, so it is idle.
    let closed = h2_trickle(
        d.addr("web"),
        frame(1, 0x5, 1, &get_block()),
        frame(6, 0, 0, &[7; 8]),
    )
    .await;
    let took = closed.expect("PINGs kept an idle connection open");
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert_eq!(o.hits(), 1);
}

/// "Paced" rapid reset: streams reset a few milliseconds after they open, once the server has
/// taken them. h2 counts only resets of streams not yet taken, so each such stream cost a
/// backend request (and a backend connection thrown away) without end: all 1500 here reached
/// the origin over one connection. A connection whose client resets most of its streams as soon
/// as it opens them now gets a GOAWAY, as Envoy's premature-reset check gives one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_paced_past_the_accept_queue_is_cut_with_a_goaway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = Origin::start("o").await;
    // Slow enough that every stream is still waiting on it when its reset comes.
    o.set_delay(Duration::from_secs(1));
    let d = config(&o, Timeouts::new()).start().await;
    let (mut rd, mut wr) = TcpStream::connect(d.addr("web"))
        .await
        .unwrap()
        .into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .is_ok();
        (streamgate_tests::h2::has_goaway(&got), closed)
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let _ = wr.write_all(&out).await;
    for batch in 0..15u32 {
        let streams: Vec<u32> = (0..100).map(|i| 2 * (batch * 100 + i) + 1).collect();
        let heads: Vec<u8> = streams
            .iter()
            .flat_map(|&s| frame(1, 0x5, s, &get_block()))
            .collect();
        if wr.write_all(&heads).await.is_err() {
            break;
        }
        // Taken by the server, their requests on their way to the origin.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resets: Vec<u8> = streams
            .iter()
            .flat_map(|&s| frame(3, 0, s, &8u32.to_be_bytes()))
            .collect();
        if wr.write_all(&resets).await.is_err() {
            break;
        }
    }
    let (goaway, closed) = reader.await.unwrap();
    assert!(goaway && closed, "goaway {goaway}, closed {closed}");
    // Judged from its 500th stream on: the first 500 reached the origin, few of the next.
    assert!(o.hits() <= 700, "{} requests reached the origin", o.hits());
    let resets = "streamgate_limited_total{limit=\"resets\",listener=\"web\"}";
    assert_eq!(metric(&d.metrics().await, resets), Some(1.0));
}

/// A client that cancels many of a few hundred streams early while its backend is slow (gRPC
/// deadlines, a page cancelling each search-as-you-type fetch) keeps its connection: only a
/// connection past 500 streams is judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancelling_a_few_hundred_slow_streams_keeps_its_connection() {
    let o = Origin::start("o").await;
    o.set_delay(Duration::from_secs(1));
    let d = config(&o, Timeouts::new()).start().await;
    let s = TcpStream::connect(d.addr("web")).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = || {
        Request::get("http://a.example/")
            .body(http_body_util::Empty::new())
            .unwrap()
    };
    for _ in 0..4 {
        let pending: Vec<_> = (0..100)
            .map(|_| tokio::spawn(tx.clone().send_request(req())))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Cancelled: each stream is reset.
        pending.iter().for_each(|p| p.abort());
    }
    o.set_delay(Duration::ZERO);
    let answer = tokio::time::timeout(Duration::from_secs(10), tx.clone().send_request(req()))
        .await
        .expect("answered")
        .expect("the connection is still served");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(!conn.is_finished(), "the connection was closed");
    let resets = "streamgate_limited_total{limit=\"resets\",listener=\"web\"}";
    assert_eq!(metric(&d.metrics().await, resets), Some(0.0));
}
