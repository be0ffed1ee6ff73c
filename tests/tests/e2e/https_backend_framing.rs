//! How an HTTPS backend's answer is framed for an HTTP/1.1 client. hyper's client reads these
//! answers and keeps their fields as the backend sent them; the daemon's own HTTP/1.1 client
//! (plain backends) settles them. Both must reach the client the same way: a length listed
//! twice is one length, and an answer framed both by Transfer-Encoding and by Content-Length
//! is refused (RFC 9112 §6.3), never passed on with a length that does not frame its body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use streamgate_tests::tls::{make_cert, server_tls};
use streamgate_tests::*;

/// The answers to `/a` and then `/b`, asked on one client connection.
async fn two_answers(d: &TestDaemon) -> Vec<(String, String)> {
    let raw =
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let text = raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
        .await
        .unwrap();
    answers(&text)
}

#[tokio::test]
async fn a_length_listed_twice_reaches_the_client_as_one() {
    let cert = make_cert(&["origin.test"]);
    let respond = |_: &str| b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello".to_vec();
    let origin = RawOrigin::answering_after_bodies_tls(respond, server_tls(&cert, None)).await;
    let (d, _ca) = origin.behind_https(&cert).await;
    let got = two_answers(&d).await;
    assert_eq!(got.len(), 2, "both answers, whole: {got:?}");
    for (head, body) in &got {
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert_eq!(body, "hello");
    }
}

#[tokio::test]
async fn an_answer_framed_two_ways_is_refused_and_the_connection_goes_on() {
    let cert = make_cert(&["origin.test"]);
    let respond = |head: &str| {
        if head.starts_with("GET /a") {
            // Larger than one read, so the body streams on after the head.
            let chunk = "x".repeat(100_000);
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
                 {:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
                chunk.len(),
                chunk.len()
            )
            .into_bytes()
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext".to_vec()
        }
    };
    let origin = RawOrigin::answering_after_bodies_tls(respond, server_tls(&cert, None)).await;
    let (d, _ca) = origin.behind_https(&cert).await;
    let got = two_answers(&d).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].0.starts_with("http/1.1 502"), "{got:?}");
    assert!(got[1].0.starts_with("http/1.1 200"), "{got:?}");
    assert_eq!(got[1].1, "next", "the second answer is its own: {got:?}");
}
