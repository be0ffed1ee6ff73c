//! Limits on what clients may take, end to end: request rates per
//! service and per client (429 with Retry-After), connections per client, each counted in
//! `limited_total`; IPv6 clients counted by their /64.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::StatusCode;
use streamgate_tests::tls::{make_cert, server_tls, write_cert};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");

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
    // One request a second refills the burst of 5: the 8 requests, sent together, must all
    // arrive within 1 s for exactly 5 to pass. At rate(5) a sixth was let in once 200 ms had
    // passed, which 8 requests one after the other on new connections took on a loaded CI.
    let d = limited_config(&o, Listener::http("web"), Limits::new().rate(1).burst(5))
        .start()
        .await;
    let url = d.url("web", "/");
    let answers = futures_util::future::join_all((0..8).map(|_| {
        let url = url.clone();
        // A client each: a connection each.
        async move { get(&http1(), &url, &[]).await }
    }))
    .await;
    let mut statuses = Vec::new();
    for a in answers {
        let a = a.unwrap();
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
    // Sent together: a third is let in once 1 s has passed.
    let mut three = futures_util::future::join_all((0..3).map(|_| from("127.0.0.1"))).await;
    three.sort_by_key(|s| s.as_u16());
    assert_eq!(
        three,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "a burst of 2"
    );
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
    // Sent together: the second is let in once 1 s has passed.
    let (one, two) = tokio::join!(via("2001:db8:0:1::1"), via("2001:db8:0:1::2"));
    let mut two_of_one = [one, two];
    two_of_one.sort_by_key(|s| s.as_u16());
    assert_eq!(
        two_of_one,
        [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS],
        "the same /64"
    );
    assert_eq!(via("2001:db8:0:2::1").await, StatusCode::OK, "another /64");
    assert_eq!(d.limited("client_rate").await, 1.0);
}

/// A daemon that caches and lets each client one connection.
async fn one_slot_each(o: &Origin) -> TestDaemon {
    one_service(
        o,
        Listener::http("web").max_connections_per_client(1),
        service().cache(Cache::new("64MiB")),
    )
    .start()
    .await
}

/// The object whose first 64 KiB the origin sends, then holds the rest back (the recording
/// waits for it).
const HELD_MOVIE: &str = "/c/movie?size=1000000&hold=1&cc=max-age%3D60";

/// After a client left: whether its next connection is served (the origin let go after).
async fn served_again(o: &Origin, web: std::net::SocketAddr) {
    // The daemon sees the client leave when its task next runs, which on a loaded machine may
    // be long after: ask every 100 ms for up to 5 s. A slot never given back is still caught
    // (each attempt is closed unanswered), and the origin holds the recording all along.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let next = get_from("127.0.0.1".parse().unwrap(), web, "/other", &[]).await;
        let status = next.map(|a| a.status).ok();
        if status == Some(StatusCode::OK) || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    o.release();
    assert_eq!(
        status,
        Some(StatusCode::OK),
        "the slot came back when the client left"
    );
}

/// A client that leaves in the middle of a cacheable download gives its connection slot back
/// when it leaves, though the daemon goes on recording the answer into the cache: the client's
/// next connection is served (a player that seeks reconnects this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_download_being_cached_gets_its_slot_back() {
    let o = Origin::start("o").await;
    let d = one_slot_each(&o).await;
    let web = d.addr("web");
    let mut s = TcpStream::connect(web).await.unwrap();
    let request = format!("GET {HELD_MOVIE} HTTP/1.1\r\nHost: a\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while got < 32 * 1024 {
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .unwrap();
        assert!(n > 0);
        got += n;
    }
    drop(s);
    served_again(&o, web).await;
}

/// [`a_client_that_leaves_a_download_being_cached_gets_its_slot_back`] over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_leaves_a_download_being_cached_gets_its_slot_back() {
    use http_body_util::BodyExt;
    let o = Origin::start("o").await;
    let d = one_slot_each(&o).await;
    let web = d.addr("web");
    let tcp = TcpStream::connect(web).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://a{HELD_MOVIE}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut resp = sender.send_request(req).await.unwrap();
    let mut got = 0;
    while got < 32 * 1024 {
        let frame = resp.body_mut().frame().await.unwrap().unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    drop(resp);
    drop(sender);
    conn.abort();
    served_again(&o, web).await;
}

/// One GET on an open connection; the answer's status line and body.
async fn ask(s: &mut TcpStream) -> (String, String) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0usize);
                if text.len() >= end + 4 + length {
                    let status = text.lines().next().unwrap_or_default().to_string();
                    return (status, text[end + 4..end + 4 + length].to_string());
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return (format!("closed after {text:?}"), String::new()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| ("no answer in 10 s".into(), String::new()))
}

/// A flood of idle connections past the descriptor limit. Without a process-wide cap the
/// daemon accepted them until EMFILE, and then every request of the clients it already had
/// needed a backend socket it could not get (502), and the admin API could not be reached.
/// The default cap leaves room for both; the excess waits in the backlog and is served once
/// connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_the_descriptors_that_open_clients_need() {
    // Every answer closes its backend connection: each request needs a new backend socket.
    let o = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec()
    })
    .await;
    let config = Config::new()
        .workers(1)
        .timeouts(Timeouts::new().request_header("60s").idle("60s"))
        .listener(Listener::http("web"))
        .region(Region::new("r").address(o.addr))
        .service(service());
    // 512 descriptors: (512 - 256 kept back) / 3 = 85 client connections.
    const LIMIT: usize = 512;
    // The flood below is more than a login shell's 1024 with the other tests' sockets.
    streamgate_proxy::descriptors::raise_soft_limit().unwrap();
    let p =
        DaemonProcess::start_with_nofile(BIN, LIMIT as u64, &config.to_toml(), &["web", "admin"]);
    let web = p.addr("web");
    let mut first = TcpStream::connect(web).await.unwrap();
    assert_eq!(
        ask(&mut first).await,
        ("HTTP/1.1 200 OK".into(), "ok".into())
    );

    let mut flood = Vec::new();
    for _ in 0..600 {
        flood.push(TcpStream::connect(web).await.unwrap());
    }
    // Until the daemon has taken what it will: the cap reached (counted), or, without one, its
    // descriptors all open.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let at_cap = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "neither the cap nor the limit was reached"
        );
        if p.open_descriptors() >= LIMIT - 1 {
            break false;
        }
        if let Ok(m) = tokio::time::timeout(Duration::from_secs(1), p.metrics()).await {
            let waited = "streamgate_limited_total{limit=\"process_connections\",listener=\"web\"}";
            if metric(&m, waited).unwrap_or(0.0) >= 1.0 {
                break true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        ask(&mut first).await,
        ("HTTP/1.1 200 OK".into(), "ok".into()),
        "a client already connected is still served"
    );
    let m = tokio::time::timeout(Duration::from_secs(5), p.metrics())
        .await
        .expect("the admin API answers");
    assert!(at_cap, "the daemon ran out of descriptors");
    assert_eq!(metric(&m, "streamgate_connections_limit"), Some(85.0));
    assert_eq!(
        metric(&m, "streamgate_connections_active{listener=\"web\"}"),
        Some(85.0)
    );
    assert!(
        p.open_descriptors() < LIMIT - 256,
        "{} open",
        p.open_descriptors()
    );

    // The excess waited in the backlog: once the others close, the last one is served.
    let mut last = flood.pop().unwrap();
    drop(flood);
    assert_eq!(
        ask(&mut last).await,
        ("HTTP/1.1 200 OK".into(), "ok".into())
    );
}

/// Backend sockets past the descriptor limit: three HTTP/2 connections of 200 streams each,
/// held by a slow backend, need 600 backend sockets under a limit of 512. The connects that
/// fail with EMFILE are this process's shortage, not the backend's: they are answered 503 and
/// eject nothing. Before, each counted as the backend's connect failure, ejected it, and the
/// service answered 503 for the whole ejection time after the flood had gone; and the idle
/// backend connections the burst left behind held the descriptors a new client needed for a
/// minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_for_backends_ejects_no_backend() {
    let o = Origin::start("o").await;
    flood_backend_sockets(&o, service()).await;
}

/// The same over HTTPS, whose client wraps the socket's error in its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_for_https_backends_ejects_no_backend() {
    let cert = make_cert(&["origin.test"]);
    let o = Origin::start_tls("tls", server_tls(&cert, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "origin-ca", &cert);
    let upstream = Upstream::new()
        .protocol("https")
        .tls_ca_file(&ca)
        .tls_server_name("origin.test");
    flood_backend_sockets(&o, service().upstream(upstream)).await;
}

/// 600 requests held by `o` on three HTTP/2 connections, through `service` under a limit of
/// 512 descriptors: each is answered 200, or 503 for want of descriptors; none is counted
/// against `o`, and a new client is served at once afterwards.
async fn flood_backend_sockets(o: &Origin, service: Service) {
    streamgate_proxy::descriptors::raise_soft_limit().unwrap();
    o.set_delay(Duration::from_millis(1500));
    let config = Config::new()
        .workers(1)
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(o, 1)]))
        .service(service);
    let p = DaemonProcess::start_with_nofile(BIN, 512, &config.to_toml(), &["web", "admin"]);
    let url = format!("http://{}/slow", p.addr("web"));
    let clients = [http2(), http2(), http2()];
    let answers =
        futures_util::future::join_all((0..600).map(|i| get(&clients[i % 3], &url, &[]))).await;
    let mut statuses = std::collections::BTreeMap::new();
    for a in answers {
        let a = a.unwrap();
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(a.text().contains("short of connections"), "{}", a.text());
        }
        *statuses.entry(a.status.as_u16()).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&503).is_some_and(|n| *n > 0),
        "the limit was reached: {statuses:?}"
    );
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200, 503],
        "{statuses:?}"
    );

    // The burst left ~490 idle backend connections in the pool for `upstream_idle` (60 s),
    // and the descriptors with them: a new client is accepted by closing those, not a minute
    // later.
    o.set_delay(Duration::ZERO);
    let after = tokio::time::timeout(Duration::from_secs(15), get(&http1(), &url, &[]))
        .await
        .expect("a new client is accepted while the burst's idle connections are pooled")
        .unwrap();
    assert_eq!(
        after.status,
        StatusCode::OK,
        "the backend was not ejected: {}",
        after.text()
    );
    let m = p.metrics().await;
    let counted = metric(
        &m,
        "streamgate_limited_total{limit=\"descriptors\",listener=\"web\"}",
    );
    assert!(
        counted >= Some(f64::from(statuses[&503])),
        "{counted:?} counted, {statuses:?}"
    );
}
