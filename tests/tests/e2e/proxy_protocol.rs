//! The PROXY protocol end to end: read from trusted balancers on TCP and HTTP listeners,
//! written to backends, and a header that names no client (a balancer's own health check)
//! trusted for nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use streamgate_tests::presets::{echo_service, tcp as tcp_config};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that reads a PROXY header (any version) and answers with the source and the
/// destination it names.
async fn proxy_reporter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (addrs, rest) =
                    streamgate_proxy::proxy_protocol::read_header(&mut s, Duration::from_secs(5))
                        .await
                        .unwrap();
                let addrs = addrs.unwrap();
                let line = format!(
                    "{} {} {}\n",
                    addrs.source,
                    addrs.destination,
                    String::from_utf8_lossy(&rest)
                );
                s.write_all(line.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn proxy_protocol_in_from_trusted_peers_and_out_to_backends() {
    for version in ["v1", "v2"] {
        let reporter = proxy_reporter().await;
        let d = tcp_config(
            Region::new("r").address(reporter),
            Listener::tcp("l4").proxy_protocol(true),
            echo_service().upstream(Upstream::new().send_proxy(version)),
        )
        .start()
        .await;
        // From 127.0.0.1 (trusted): the header's source is the client the backend is told
        // about, and its destination the address the client connected to (the balancer's).
        let mut s = TcpStream::connect(d.addr("l4")).await.unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\nhello")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "192.0.2.7:40000 10.0.0.1:443 hello\n", "{version}");
        // A malformed header closes the connection without reaching the backend.
        let mut bad = TcpStream::connect(d.addr("l4")).await.unwrap();
        bad.write_all(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = bad.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "closed");
    }
}

#[tokio::test]
async fn proxy_protocol_on_an_http_listener_names_the_client() {
    let o = Origin::start("o").await;
    // No geo database: trusted_proxies alone is enough (docs/tls-and-tcp.md); the tcp tests
    // above have one.
    let d = Config::new()
        .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
        .listener(Listener::http("web").proxy_protocol(true))
        .region(Region::new("r").backends(&[(&o, 1)]))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
        .start()
        .await;
    let header = streamgate_proxy::proxy_protocol::encode_v2(
        "198.51.100.9:1234".parse().unwrap(),
        d.addr("web"),
    );
    let mut raw = header;
    raw.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(d.addr("web"), &raw, 1 << 16).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(o.last_headers()["x-forwarded-for"], "198.51.100.9");
}

/// A daemon taking PROXY headers from a balancer on loopback, with one service made by `with`.
async fn behind_a_balancer(o: &Origin, with: impl FnOnce(Service) -> Service) -> TestDaemon {
    Config::new()
        .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
        .listener(Listener::http("web").proxy_protocol(true))
        .region(Region::new("r").backends(&[(o, 1)]))
        .service(with(Service::new("s").listeners(&["web"]).regions(&["r"])))
        .start()
        .await
}

/// A trusted balancer's `PROXY UNKNOWN` (HAProxy sends it for a unix-socket or mixed-family
/// front end) names no client: the connection is the balancer's, but its requests are the
/// client's, so their forwarding fields are not believed as if the balancer had set them.
#[tokio::test]
async fn a_proxy_header_that_names_no_client_does_not_make_the_client_trusted() {
    let o = Origin::start("o").await;
    let d = behind_a_balancer(&o, |s| s.access(Access::new().allow(&["198.51.100.0/24"]))).await;
    let raw = b"PROXY UNKNOWN\r\nGET /x HTTP/1.1\r\nHost: a\r\n\
X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(d.addr("web"), raw, 1 << 16).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(o.hits(), 0);
}

/// Nor does it make the client the balancer for `purge_from`: a PURGE through `PROXY UNKNOWN`
/// from a balancer allowed to purge is some client's.
#[tokio::test]
async fn a_proxy_header_that_names_no_client_cannot_purge() {
    let o = Origin::start("o").await;
    let d = behind_a_balancer(&o, |s| {
        s.cache(Cache::new("16MiB").purge_from(&["127.0.0.1/32"]))
    })
    .await;
    let purge = |proxy: &'static [u8]| {
        let mut raw = proxy.to_vec();
        raw.extend_from_slice(b"PURGE /c/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        raw
    };
    let unknown = raw_exchange(d.addr("web"), &purge(b"PROXY UNKNOWN\r\n"), 1 << 16)
        .await
        .unwrap();
    assert!(unknown.starts_with("HTTP/1.1 403"), "{unknown}");
    // The balancer's own connection (a PROXY header naming it) still may.
    let own = raw_exchange(
        d.addr("web"),
        &purge(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 80\r\n"),
        1 << 16,
    )
    .await
    .unwrap();
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
}
