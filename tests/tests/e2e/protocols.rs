//! Backend protocols other than plain HTTP/1.1: HTTPS and HTTP/2 over TLS (verified, with SNI
//! and a client certificate), h2c with trailers (what gRPC needs), and WebSocket tunnels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use streamgate_tests::h2::{h2_client, websocket_connect};
use streamgate_tests::tls::{make_cert, server_tls, write_cert};
use streamgate_tests::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The listener "web" and the one region "r".
fn one_region(region: Region) -> Config {
    Config::new().listener(Listener::http("web")).region(region)
}

/// A service on "web" over region "r".
fn service(name: &str) -> Service {
    Service::new(name).listeners(&["web"]).regions(&["r"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_backends_are_verified_get_sni_and_a_client_certificate() {
    let origin_cert = make_cert(&["origin.test"]);
    let client_cert = make_cert(&["streamgate-client"]);
    let stranger = make_cert(&["origin.test"]);
    // The origin requires a client certificate signed by `client_cert`.
    let o = Origin::start_tls("tls", server_tls(&origin_cert, Some(&client_cert))).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "origin-ca", &origin_cert);
    let (wrong_ca, _) = write_cert(dir.path(), "stranger", &stranger);
    let (cc, ck) = write_cert(dir.path(), "client", &client_cert);
    let tls = |ca: &std::path::Path, protocol: &str| {
        Upstream::new()
            .protocol(protocol)
            .tls_ca_file(ca)
            .tls_server_name("origin.test")
            .tls_client_cert(&cc)
            .tls_client_key(&ck)
    };
    let d = one_region(Region::new("r").backends(&[(&o, 1)]))
        .service(
            service("https")
                .hosts(&["a.example"])
                .health(Health::new().path("/healthz").interval("100ms"))
                .upstream(tls(&ca, "https")),
        )
        .service(service("h2").hosts(&["b.example"]).upstream(tls(&ca, "h2")))
        .service(
            service("untrusted")
                .hosts(&["c.example"])
                .upstream(tls(&wrong_ca, "https")),
        )
        .start()
        .await;
    let c = http1();

    let r = get(&c, &d.url("web", "/one"), &[("host", "a.example")])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "origin tls /one");
    let seen = o.last_tls().unwrap();
    assert_eq!(seen.sni.as_deref(), Some("origin.test"));
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(seen.client_certificate);
    assert_eq!(o.last_version(), Some(Version::HTTP_11));
    assert_eq!(o.last_headers()["host"], "a.example");

    let r = get(&c, &d.url("web", "/two"), &[("host", "b.example")])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(o.last_tls().unwrap().alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(o.last_version(), Some(Version::HTTP_2));
    // The site asked for is the request's `:authority`, which an HTTP/2 server reads before
    // Host (RFC 9113 §8.3.1), and no Host line that could differ from it.
    assert_eq!(o.last_authority().as_deref(), Some("b.example"));
    assert!(
        o.last_headers().get("host").is_none(),
        "{:?}",
        o.last_headers()
    );

    // A backend whose certificate the configured CA did not sign is not talked to.
    let hits = o.hits();
    let r = get(&c, &d.url("web", "/three"), &[("host", "c.example")])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(o.hits(), hits);

    // Health probes speak TLS with the client certificate too (the origin accepts nothing else).
    assert!(eventually(Duration::from_secs(5), || o.probes() >= 3).await);
}

#[tokio::test]
async fn a_ca_file_without_certificates_fails_the_check_naming_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let config = one_region(Region::new("r").address("127.0.0.1:9"))
        .service(service("secure").upstream(Upstream::new().protocol("https").tls_ca_file(&empty)));
    let path = dir.path().join("streamgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamgate-e2e"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("service \"secure\" upstream"), "{stderr}");
    assert!(stderr.contains("no PEM certificate"), "{stderr}");
}

#[tokio::test]
async fn cookie_crumbs_of_an_http2_request_reach_an_http1_backend_as_one_field() {
    // RFC 9113 §8.2.3: an HTTP/2 client may split Cookie into one field per cookie; before
    // the request goes on as HTTP/1.1 they are joined with "; " (many applications read only
    // the first Cookie line, and would lose the session in a later crumb).
    let o = RawOrigin::ok().await;
    let d = o.behind(Listener::http("web")).await;
    let url = format!("http://{}/", d.addr("web"));
    let crumbs = [
        ("cookie", "a=1"),
        ("cookie", "session=s3cr3t"),
        ("cookie", "c=3"),
    ];
    let a = get(&http2(), &url, &crumbs).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let heads = o.heads();
    let cookies: Vec<&str> = heads[0]
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("cookie:"))
        .collect();
    assert_eq!(cookies.len(), 1, "{}", heads[0]);
    assert_eq!(
        cookies[0].split_once(':').unwrap().1.trim(),
        "a=1; session=s3cr3t; c=3"
    );
    // One Cookie field from an HTTP/1.1 client goes on as it came.
    let a = get(&http1(), &url, &[("cookie", "a=1; b=2")])
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        o.heads()[1]
            .to_ascii_lowercase()
            .contains("\r\ncookie: a=1; b=2\r\n"),
        "{}",
        o.heads()[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_h2c_keeps_trailers_both_ways() {
    let o = Origin::start("grpc").await;
    let d = one_region(Region::new("r").backends(&[(&o, 1)]))
        .service(service("grpc").upstream(Upstream::new().protocol("h2c")))
        .start()
        .await;

    let client: Client<HttpConnector, StreamBody<_>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05world"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = Request::builder()
        .method(Method::POST)
        .uri(d.url("web", "/echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let got_trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(
        collected.to_bytes(),
        &b"\0\0\0\0\x05hello\0\0\0\0\x05world"[..]
    );
    assert_eq!(got_trailers["grpc-status"], "0");
    assert_eq!(got_trailers["x-checksum"], "c0ffee");
    assert_eq!(o.last_version(), Some(Version::HTTP_2));
    assert_eq!(o.last_headers()["te"], "trailers");
}

/// A WebSocket server that echoes every message.
async fn websocket_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    } else if m.is_close() {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let backend = websocket_echo().await;
    let d = one_region(Region::new("r").address(backend))
        .service(service("ws"))
        .start()
        .await;

    let mut sessions = Vec::new();
    for n in 0..10u8 {
        let addr = d.addr("web");
        sessions.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.example/live", tcp)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            ws.send(Message::text(format!("hello {n}"))).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text(format!("hello {n}"))
            );
            // A large binary message crosses in many frames and segments.
            let big: Vec<u8> = (0..1_000_000u32)
                .map(|i| (i.wrapping_mul(31) ^ u32::from(n)) as u8)
                .collect();
            ws.send(Message::binary(big.clone())).await.unwrap();
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => assert!(b[..] == big[..], "binary echo differs"),
                other => panic!("expected binary, got {other:?}"),
            }
            ws.close(None).await.unwrap();
            // The server's close frame comes back, then the stream ends.
            while let Some(m) = ws.next().await {
                if m.is_err() {
                    break;
                }
            }
        }));
    }
    for s in sessions {
        s.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect_reaches_an_http1_backend() {
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let backend = websocket_echo().await;
    let d = one_region(Region::new("r").address(backend))
        .service(service("ws"))
        .start()
        .await;

    let mut sender = h2_client(&d).await;
    // Several WebSockets share the one HTTP/2 connection.
    let mut sessions = Vec::new();
    for n in 0..3u8 {
        let req = websocket_connect("/live");
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        let upgraded = hyper::upgrade::on(resp).await.unwrap();
        sessions.push(tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Client,
                None,
            )
            .await;
            for i in 0..5 {
                let m = Message::text(format!("stream {n} message {i}"));
                ws.send(m.clone()).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), m);
            }
            let big = vec![n; 300_000];
            ws.send(Message::binary(big.clone())).await.unwrap();
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => assert!(b[..] == big[..]),
                other => panic!("expected binary, got {other:?}"),
            }
            ws.close(None).await.unwrap();
        }));
    }
    for s in sessions {
        s.await.unwrap();
    }
    // Plain CONNECT (forward proxying) is refused.
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("chat.example:443")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// An extended CONNECT the backend does not upgrade (an ordinary 200 to its GET with Upgrade)
/// is not a tunnel: the client gets 502, not the 200 that tells an HTTP/2 client its
/// WebSocket is open (RFC 8441 §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_connect_the_backend_does_not_upgrade_is_a_502() {
    let o = Origin::start("o").await;
    let d = one_region(Region::new("r").origins(&[&o]))
        .service(service("plain"))
        .start()
        .await;
    let mut sender = h2_client(&d).await;
    let req = websocket_connect("/live");
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(o.hits(), 1, "the backend was asked");
}

/// A backend that answers every request `101 Switching Protocols` to the protocol named by the
/// request's path (`/to/<protocol>`), with `accept` as its Sec-WebSocket-Accept, then sends bytes
/// of that protocol.
async fn switching_origin(accept: &'static str) -> RawOrigin {
    RawOrigin::start(move |head| {
        let path = head.split(' ').nth(1).unwrap_or("/");
        let protocol = path.strip_prefix("/to/").unwrap_or("websocket");
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: {protocol}\r\nconnection: upgrade\r\n\
             sec-websocket-accept: {accept}\r\n\r\nbytes of {protocol}"
        )
        .into_bytes()
    })
    .await
}

/// Sends `head` on a new connection to `addr` and returns the status line of the answer.
async fn status_line(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("no status line: {other:?} after {got:?}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

/// A 101 hands the client's connection to another protocol, so it is passed on only when it
/// answers the upgrade the client asked for (RFC 9110 §7.8, §15.2.2). A 101 to a plain GET, or
/// a switch to a protocol the client did not offer, would make the connection a byte stream no
/// rule or limit sees: the backend's error, a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_is_passed_on_only_when_it_answers_the_upgrade_asked_for() {
    let origin = switching_origin("unchecked").await;
    let d = origin.behind(Listener::http("web")).await;
    let upgrade = |path: &str, protocol: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    // The control: a WebSocket asked for and given (the client checks its own accept).
    let line = status_line(d.addr("web"), &upgrade("/to/websocket", "websocket")).await;
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    let line = status_line(
        d.addr("web"),
        "GET /to/websocket HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(
        line.starts_with("HTTP/1.1 502"),
        "a 101 to a plain GET: {line}"
    );
    let line = status_line(d.addr("web"), &upgrade("/to/raw-tcp", "websocket")).await;
    assert!(
        line.starts_with("HTTP/1.1 502"),
        "a switch to what was not offered: {line}"
    );
}

/// For an HTTP/2 WebSocket StreamGate makes the HTTP/1.1 handshake itself, so it checks the
/// backend's Sec-WebSocket-Accept as the client would have (RFC 6455 §4.2.2): a backend that
/// does not compute it (not a WebSocket server, or something answering 101 to anything) is a
/// 502, not a 200 that tells the client its WebSocket is open. (A right accept:
/// `websocket_over_http2_extended_connect_reaches_an_http1_backend`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_websocket_answered_with_a_wrong_accept_is_a_502() {
    let origin = switching_origin("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=").await;
    let d = origin.behind(Listener::http("web")).await;
    let mut sender = h2_client(&d).await;
    let req = websocket_connect("/to/websocket");
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
}

/// Clients that stop reading large answers from an HTTP/2 backend do not stall everyone else on
/// the shared backend connection. hyper returns flow-control window to the backend only as a
/// body is read, so each stalled answer keeps what the backend sent it; with hyper's default
/// windows (2 MiB a stream, 5 MiB the connection) three such streams used up the connection's
/// window, and every other request to that backend waited for them to be given up (`idle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_do_not_stall_an_http2_backend_for_others() {
    let o = Origin::start("h2").await;
    let d = h2c_behind(&o).await;
    let stalled = stall_streams(&d, &o, 8).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    another_client_is_answered(&d, 1_000_000).await;
    drop(stalled);
}

/// A daemon whose `web` sends every request to `o` over h2c.
async fn h2c_behind(o: &Origin) -> TestDaemon {
    one_region(Region::new("r").origins(&[o]))
        .service(service("s").upstream(Upstream::new().protocol("h2c")))
        .start()
        .await
}

/// A connection to `d`'s `web` with `n` streams for 8 MiB each, granting no more than HTTP/2's
/// initial 64 KiB a stream and never reading; once all have reached `o`.
async fn stall_streams(d: &TestDaemon, o: &Origin, n: u32) -> TcpStream {
    use streamgate_tests::h2::frame;
    use tokio::io::AsyncWriteExt;
    let mut stalled = TcpStream::connect(d.addr("web")).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(streamgate_tests::h2::get_streams("/bytes/8388608", n));
    stalled.write_all(&out).await.unwrap();
    let least = u64::from(n.min(200));
    let asked = eventually(Duration::from_secs(10), || o.hits() >= least).await;
    assert!(asked, "{} requests reached the backend", o.hits());
    stalled
}

/// Another client's request to `d`'s `web`, for `len` bytes, is answered within 10 s.
async fn another_client_is_answered(d: &TestDaemon, len: usize) {
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        get(&http1(), &d.url("web", &format!("/bytes/{len}")), &[]),
    )
    .await
    .expect("another client's request waited on the stalled ones")
    .unwrap();
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body.len(), len);
}

/// One client that holds as many streams as an HTTP/2 backend allows (hyper's servers: 200)
/// does not leave every other client waiting: hyper's pooled client keeps one connection per
/// backend, and a request past the backend's `SETTINGS_MAX_CONCURRENT_STREAMS` waited there for
/// a stalled stream to be given up (`idle`). A backend connection now carries at most 100
/// streams (the least RFC 9113 asks servers to allow), and more open beside it, as Envoy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_stream_of_an_http2_backend() {
    let o = Origin::start("h2").await;
    let d = h2c_behind(&o).await;
    // More streams than the backend allows (the ones past it wait in our client).
    let stalled = stall_streams(&d, &o, 250).await;
    another_client_is_answered(&d, 1000).await;
    drop(stalled);
}

/// A backend whose SETTINGS allow fewer streams than the 100 a connection carries: what it
/// says is how many a connection takes, and the next request opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_backend_allowing_few_streams_gets_more_connections() {
    let state = std::sync::Arc::new(streamgate_tests::origin::OriginState::default());
    state
        .h2_streams
        .store(8, std::sync::atomic::Ordering::SeqCst);
    let o = Origin::start_with_state("h2", "127.0.0.1:0".parse().unwrap(), state).await;
    let d = h2c_behind(&o).await;
    // The connection's SETTINGS are in before the stalled streams come: they came before the
    // answer (the pause keeps a loaded machine from running the test before hyper's connection
    // task has applied them).
    let r = get(&http1(), &d.url("web", "/one"), &[]).await.unwrap();
    assert_eq!(r.text(), "origin h2 /one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = stall_streams(&d, &o, 24).await;
    let all = eventually(Duration::from_secs(10), || o.hits() >= 25).await;
    assert!(
        all,
        "every stalled stream reached the backend: {}",
        o.hits()
    );
    another_client_is_answered(&d, 1000).await;
    drop(stalled);
}

/// An HTTP/2 backend that restarts (its connections cut) is used again at once: the closed
/// connection is left out, and the next request opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_http2_backend_is_used_again_at_once() {
    let o = Origin::start("h2").await;
    let d = h2c_behind(&o).await;
    let c = http1();
    let r = get(&c, &d.url("web", "/one"), &[]).await.unwrap();
    assert_eq!(r.text(), "origin h2 /one");
    let addr = o.addr;
    o.stop().await;
    let back = Origin::start_at("back", addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3 {
        let r = get(&c, &d.url("web", &format!("/again/{i}")), &[])
            .await
            .unwrap();
        assert_eq!(r.text(), format!("origin back /again/{i}"));
    }
    assert_eq!(back.last_version(), Some(http::Version::HTTP_2));
}

/// An HTTP/2 backend connection with no stream for `upstream_idle` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_http2_backend_connection_is_closed_after_upstream_idle() {
    let o = Origin::start("h2").await;
    let d = one_region(Region::new("r").origins(&[&o]))
        .timeouts(Timeouts::new().upstream_idle("1s"))
        .service(
            service("s")
                .upstream(Upstream::new().protocol("h2c"))
                .health(Health::new().interval("1h")),
        )
        .start()
        .await;
    let r = get(&http1(), &d.url("web", "/one"), &[]).await.unwrap();
    assert_eq!(r.text(), "origin h2 /one");
    let open = || {
        o.state
            .open_connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert!(open() >= 1);
    // Swept every 5 s: closed between 1 and about 6 s after the answer.
    let closed = eventually(Duration::from_secs(10), || open() == 0).await;
    assert!(closed, "{} connections still open", open());
}
