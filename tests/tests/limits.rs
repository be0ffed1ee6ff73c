//! Limits on what clients may take, end to end: request rates per
//! service and per client (429 with Retry-After), connections per client, each counted in
//! `limited_total`; IPv6 clients counted by their /64.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::StatusCode;
use streamgate_tests::*;
use tokio::net::TcpStream;

fn one_service(o: &Origin, listener: Listener, service: Service) -> Config {
    Config::new()
        .listener(listener)
        .region(Region::new("r").backends(&[(o, 1)]))
        .service(service)
}

fn service() -> Service {
    Service::new("s").listeners(&["web"]).regions(&["r"])
}

fn limited_config(o: &Origin, listener: Listener, limits: Limits) -> Config {
    one_service(o, listener, service().limits(limits))
}

#[tokio::test]
async fn request_rates_per_service_and_per_client_get_429_with_retry_after() {
    let o = Origin::start("o").await;
    let d = limited_config(&o, Listener::http("web"), Limits::new().rate(5).burst(5))
        .start()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let a = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(a.header("retry-after"), Some("1"));
        }
        statuses.push(a.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(d.limited("rate").await, 3.0);

    let d = limited_config(
        &o,
        Listener::http("web"),
        Limits::new().client_rate(1).client_burst(2),
    )
    .start()
    .await;
    let web = d.addr("web");
    let from = |ip: &'static str| async move {
        get_from(ip.parse().unwrap(), web, "/", &[])
            .await
            .unwrap()
            .status
    };
    assert_eq!(from("127.0.0.1").await, StatusCode::OK);
    assert_eq!(from("127.0.0.1").await, StatusCode::OK);
    assert_eq!(from("127.0.0.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(from("127.0.1.9").await, StatusCode::OK, "another client");
    assert_eq!(d.limited("client_rate").await, 1.0);
}

#[tokio::test]
async fn connections_per_client_are_capped() {
    let o = Origin::start("o").await;
    let d = limited_config(
        &o,
        Listener::http("web").max_connections_per_client(2),
        Limits::new(),
    )
    .start()
    .await;
    let web = d.addr("web");
    let _one = TcpStream::connect(web).await.unwrap();
    let _two = TcpStream::connect(web).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = raw_exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1 << 16)
        .await
        .unwrap();
    assert_eq!(third, "", "closed without an answer");
    let other = get_from("127.0.2.3".parse().unwrap(), web, "/", &[])
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK, "another client is served");
    assert_eq!(d.limited("client_connections").await, 1.0);
}

/// An IPv6 client is counted by its /64, which its network gives it whole: picking another
/// address in it for each connection or request does not buy another limit. The addresses come
/// from a trusted balancer (PROXY protocol for connections, X-Forwarded-For for rates).
#[tokio::test]
async fn ipv6_clients_are_limited_by_their_slash_64() {
    let o = Origin::start("o").await;
    let d = one_service(
        &o,
        Listener::http("web")
            .proxy_protocol(true)
            .max_connections_per_client(1),
        service(),
    )
    .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
    .start()
    .await;
    let web = d.addr("web");
    let from = |client: &str| {
        let mut raw = streamgate_proxy::proxy_protocol::encode_v2(client.parse().unwrap(), web);
        raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        raw
    };
    // The first holds its slot: its head is incomplete.
    let mut held = TcpStream::connect(web).await.unwrap();
    let first = from("[2001:db8:0:1::1]:1000");
    tokio::io::AsyncWriteExt::write_all(&mut held, &first[..first.len() - 2])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let same = raw_exchange(web, &from("[2001:db8:0:1::2]:1000"), 1 << 16)
        .await
        .unwrap();
    assert_eq!(same, "", "another address of the same /64: closed at once");
    let other = raw_exchange(web, &from("[2001:db8:0:2::1]:1000"), 1 << 16)
        .await
        .unwrap();
    assert!(other.starts_with("HTTP/1.1 200"), "another /64: {other}");
    assert_eq!(d.limited("client_connections").await, 1.0);
    drop(held);

    let d = one_service(
        &o,
        Listener::http("web"),
        service().limits(Limits::new().client_rate(1).client_burst(1)),
    )
    .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
    .start()
    .await;
    let url = d.url("web", "/");
    let via = |client: &'static str| {
        let url = url.clone();
        async move {
            get(&http1(), &url, &[("x-forwarded-for", client)])
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(via("2001:db8:0:1::1").await, StatusCode::OK);
    assert_eq!(
        via("2001:db8:0:1::2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the same /64"
    );
    assert_eq!(via("2001:db8:0:2::1").await, StatusCode::OK, "another /64");
    assert_eq!(d.limited("client_rate").await, 1.0);
}
