//! L4 and TLS end to end: TCP proxying with half-close, TLS termination with SNI and ALPN,
//! certificate reload, TLS passthrough by SNI. The PROXY protocol: `proxy_protocol.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use rustls_pki_types::{CertificateDer, ServerName};
use streamgate_tests::presets::{echo_service, tcp as tcp_config};
use streamgate_tests::tls::{client_tls, make_cert, write_cert};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Socket buffers asked for the test's own sockets in the bulk test. Without a bound, the
/// test's 400 sockets (the proxy's 200 are not ours to bound) are autotuned up to `tcp_rmem`
/// max (32 MiB here): that crossed the kernel's global TCP memory-pressure line (`tcp_mem`,
/// 1.5 GiB here) on every run, and in 2 of 8 runs connections stalled in zero-window probes
/// backed off to 120 s. Bounded, four runs in a row stayed below it. The kernel doubles the
/// size asked for and caps it at `net.core.rmem_max` / `wmem_max`.
const TEST_SOCKET_BUFFER: u32 = 256 * 1024;

/// A socket whose kernel buffers are set from [`TEST_SOCKET_BUFFER`], which turns autotuning
/// off for them.
fn bounded_socket() -> tokio::net::TcpSocket {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(TEST_SOCKET_BUFFER).unwrap();
    s.set_send_buffer_size(TEST_SOCKET_BUFFER).unwrap();
    s
}

/// An echo server: every byte back until the client closes its side, then closes. Its
/// connections inherit the listener's bounded buffers.
async fn echo_server() -> SocketAddr {
    let s = bounded_socket();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(1024).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn fnv(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_100_connections_64_mib_each_way_with_checksums_and_half_close() {
    let echo = echo_server().await;
    let d = tcp_config(
        Region::new("r").address(echo),
        Listener::tcp("l4"),
        echo_service(),
    )
    .start()
    .await;
    let addr = d.addr("l4");
    const EACH: usize = 64 << 20;
    let tasks: Vec<_> = (0..100u64)
        .map(|seed| {
            tokio::spawn(async move {
                let s = bounded_socket().connect(addr).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    let mut sum = 0xcbf2_9ce4_8422_2325u64;
                    let mut chunk = vec![0u8; 256 * 1024];
                    let mut sent = 0;
                    while sent < EACH {
                        rng.fill(&mut chunk);
                        fnv(&mut sum, &chunk);
                        w.write_all(&chunk).await.unwrap();
                        sent += chunk.len();
                    }
                    // Half-close: we are done sending but still reading.
                    w.shutdown().await.unwrap();
                    sum
                });
                let mut sum = 0xcbf2_9ce4_8422_2325u64;
                let mut got = 0usize;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    fnv(&mut sum, &buf[..n]);
                    got += n;
                }
                let sent_sum = writer.await.unwrap();
                assert_eq!(
                    got, EACH,
                    "connection {seed}: every byte came back, then EOF"
                );
                assert_eq!(sum, sent_sum, "connection {seed}: checksums match");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_tcp_backend_is_skipped_for_the_next() {
    let echo = echo_server().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = tcp_config(
        Region::new("r").address(dead).address(echo),
        Listener::tcp("l4"),
        echo_service().backend_policy("round_robin"),
    )
    .start()
    .await;
    for _ in 0..4 {
        let mut s = TcpStream::connect(d.addr("l4")).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
    }
}

/// A TCP service's own `[services.timeouts]` hold for its connections, as for HTTP services:
/// an idle connection is closed after the service's `tunnel_idle`, not the file's (an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_services_own_idle_timeout_closes_its_connections() {
    let echo = echo_server().await;
    let d = tcp_config(
        Region::new("r").address(echo),
        Listener::tcp("l4"),
        echo_service().timeouts(Timeouts::new().tunnel_idle("1s")),
    )
    .timeouts(Timeouts::new().tunnel_idle("1h"))
    .start()
    .await;
    let mut s = TcpStream::connect(d.addr("l4")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open 5 s after 1 s of silence");
}

/// A TCP service whose backend address is its own listener (a name that resolves to this host,
/// a copied config) does not connect to itself without end: the connection that comes back
/// from the daemon is refused, and the chain stops at once instead of growing until file
/// descriptors run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_backend_that_is_its_own_listener_is_refused_not_looped() {
    let own = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = tcp_config(
        Region::new("r").address(own),
        Listener::tcp("l4").listen(&own.to_string()),
        echo_service(),
    )
    .start()
    .await;
    let mut s = TcpStream::connect(d.addr("l4")).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the looping connection is closed");
    let metrics = d.metrics().await;
    let loops = metric(&metrics, "streamgate_connections_total{listener=\"l4\"}");
    assert!(
        loops.is_some_and(|n| n <= 4.0),
        "connections through the listener: {loops:?}"
    );
}

/// Handshakes with `sni` and returns the certificate the server presented and the ALPN result.
async fn handshake(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> (
    CertificateDer<'static>,
    Option<Vec<u8>>,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = conn.get_ref();
    let cert = session.peer_certificates().unwrap()[0].clone().into_owned();
    let alpn = session.alpn_protocol().map(|a| a.to_vec());
    (cert, alpn, conn)
}

/// `strict_sni = true` refuses a handshake naming no server, or a name no certificate covers,
/// with an alert, as nginx's `ssl_reject_handshake` does, instead of showing the first
/// certificate (whose names a scanner connecting by address would learn).
#[tokio::test]
async fn a_strict_sni_listener_refuses_names_it_has_no_certificate_for() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(&["a.example.com"]);
    let (ap, ak) = write_cert(dir.path(), "a", &a);
    let d = Config::new()
        .listener(Listener::https("tls", &[(&ap, &ak)]).set("strict_sni", true))
        .region(Region::new("r").backends(&[(&o, 1)]))
        .service(Service::new("s").listeners(&["tls"]).regions(&["r"]))
        .start()
        .await;
    let addr = d.addr("tls");
    let roots = client_tls(&[&a], &[b"http/1.1"]);
    let (cert, _, _) = handshake(addr, "a.example.com", roots.clone()).await;
    assert_eq!(cert, *a.cert.der());
    // Without strict_sni both would get a.example.com's certificate, and fail only at the
    // client's check of the name: here the server says no.
    for name in [
        ServerName::try_from("b.example.com").unwrap(),
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let refused = tokio_rustls::TlsConnector::from(roots.clone())
            .connect(name.clone(), tcp)
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("received fatal alert"),
            "{name:?}: {refused}"
        );
    }
}

#[tokio::test]
async fn https_picks_the_certificate_by_sni_negotiates_h2_and_reloads_certificates() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(&["a.example.com"]);
    let w = make_cert(&["*.b.example.com"]);
    let (ap, ak) = write_cert(dir.path(), "a", &a);
    let (wp, wk) = write_cert(dir.path(), "w", &w);
    let d = Config::new()
        .listener(Listener::https("tls", &[(&ap, &ak), (&wp, &wk)]))
        .region(Region::new("r").backends(&[(&o, 1)]))
        .service(Service::new("s").listeners(&["tls"]).regions(&["r"]))
        .start()
        .await;
    let addr = d.addr("tls");
    let roots = client_tls(&[&a, &w], &[b"h2", b"http/1.1"]);
    let (cert, alpn, _) = handshake(addr, "a.example.com", roots.clone()).await;
    assert_eq!(cert, *a.cert.der());
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (cert, _, _) = handshake(addr, "x.b.example.com", roots.clone()).await;
    assert_eq!(cert, *w.cert.der(), "wildcard");

    // HTTP/1.1 over TLS reaches the origin, which learns the client used https.
    let (_, _, stream) = handshake(addr, "a.example.com", client_tls(&[&a], &[b"http/1.1"])).await;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            http::Request::get("/secure")
                .header("host", "a.example.com")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(o.last_headers()["x-forwarded-proto"], "https");

    // New certificate files + reload: new handshakes get the new certificate.
    let a2 = make_cert(&["a.example.com"]);
    write_cert(dir.path(), "a", &a2);
    let (status, v) = d.admin(http::Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (cert, _, _) = handshake(addr, "a.example.com", client_tls(&[&a2, &w], &[b"h2"])).await;
    assert_eq!(cert, *a2.cert.der(), "reloaded");
    // A key that does not match: the reload is refused and the running certificate stays.
    std::fs::write(&ak, make_cert(&["x"]).key.serialize_pem()).unwrap();
    let (status, v) = d.admin(http::Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v.to_string()
            .contains("does not belong to this certificate"),
        "{v}"
    );
    let (cert, _, _) = handshake(addr, "a.example.com", client_tls(&[&a2, &w], &[b"h2"])).await;
    assert_eq!(cert, *a2.cert.der());
}

#[tokio::test]
async fn tls_passthrough_routes_by_sni_without_terminating() {
    // A TLS backend with its own certificate; the proxy never sees a key.
    let backend_cert = make_cert(&["pass.example"]);
    let server_cfg = {
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(backend_cert.key.serialize_der()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![backend_cert.cert.der().clone()], key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acc = tokio_rustls::TlsAcceptor::from(server_cfg.clone());
            tokio::spawn(async move {
                if let Ok(mut t) = acc.accept(s).await {
                    let mut b = [0u8; 4];
                    if t.read_exact(&mut b).await.is_ok() {
                        let _ = t.write_all(b"pong").await;
                        let _ = t.shutdown().await;
                    }
                }
            });
        }
    });
    let d = Config::new()
        .listener(Listener::tls_passthrough("pt"))
        .region(Region::new("r").address(backend))
        .service(
            Service::new("pass")
                .listeners(&["pt"])
                .hosts(&["pass.example"])
                .regions(&["r"]),
        )
        .start()
        .await;
    let (cert, _, mut stream) = handshake(
        d.addr("pt"),
        "pass.example",
        client_tls(&[&backend_cert], &[b"http/1.1"]),
    )
    .await;
    assert_eq!(
        cert,
        *backend_cert.cert.der(),
        "the backend's own certificate, end to end"
    );
    stream.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    stream.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
    // An SNI no service claims: the connection is closed, nothing forwarded.
    let tcp = TcpStream::connect(d.addr("pt")).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(client_tls(&[&backend_cert], &[]))
        .connect(ServerName::try_from("other.example").unwrap(), tcp)
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn a_certificate_near_expiry_is_logged_as_a_warning() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["soon.example".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(80);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pem, keyfile) = (dir.path().join("soon.pem"), dir.path().join("soon.key"));
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(&keyfile, key.serialize_pem()).unwrap();
    let config = Config::new()
        .listener(Listener::https("tls", &[(&pem, &keyfile)]))
        .region(Region::new("r").address("127.0.0.1:9"))
        .service(Service::new("s").listeners(&["tls"]).regions(&["r"]));
    let p = DaemonProcess::start(
        env!("CARGO_BIN_EXE_streamgate-e2e"),
        &config.to_toml(),
        &["tls"],
    );
    assert!(
        eventually(Duration::from_secs(5), || p.log_json().iter().any(|l| {
            l["message"] == "certificate expires soon; renew it"
                && l["level"] == "WARN"
                && (l["days_left"] == 4 || l["days_left"] == 5)
                && l["certificate"].as_str() == pem.to_str()
        }))
        .await,
        "{:#?}",
        p.log_json()
    );
}

/// The numbers of the descriptors the process `pid` has open.
fn open_fds(pid: u32) -> Vec<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The `RLIMIT_NOFILE` that leaves `free` more descriptors to a process holding `open`: new
/// descriptors take the lowest free numbers, and the limit bounds the numbers.
fn limit_leaving(open: &[usize], free: usize) -> usize {
    let mut limit = 0;
    let mut left = free;
    while left > 0 {
        if !open.contains(&limit) {
            left -= 1;
        }
        limit += 1;
    }
    limit
}

/// A daemon short of file descriptors still relays the TCP connections it could accept and
/// connect: when the pipes splice(2) needs cannot be made (four descriptors a connection),
/// the bytes are copied instead. Room for five more descriptors: the first connection's two
/// sockets and one pipe fit, its second pipe does not; copied, it leaves room for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_copied_when_pipes_cannot_be_made() {
    let echo = echo_server().await;
    let config = tcp_config(
        Region::new("r").address(echo),
        Listener::tcp("l4"),
        echo_service().health(Health::new().interval("1h")),
    );
    let p = DaemonProcess::start(
        env!("CARGO_BIN_EXE_streamgate-e2e"),
        &config.to_toml(),
        &["l4"],
    );
    let addr = p.addr("l4");
    // One connection first, so that every descriptor made on first use is there.
    let mut warm = TcpStream::connect(addr).await.unwrap();
    echoes(&mut warm, b"warm").await;
    drop(warm);
    // Its two sockets and four pipe ends close once both ways have ended: the count is taken
    // once it has held still for half a second.
    let mut last = open_fds(p.pid());
    let mut still_since = std::time::Instant::now();
    while still_since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = open_fds(p.pid());
        if now != last {
            (last, still_since) = (now, std::time::Instant::now());
        }
    }
    let limit = limit_leaving(&last, 5);
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", p.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(set.success());
    let mut conns = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echoes(&mut s, format!("connection {i}").as_bytes()).await;
        conns.push(s);
    }
    assert!(
        eventually(Duration::from_secs(5), || p.log_json().iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot make pipes"))
        }))
        .await,
        "the fallback is logged"
    );
}

/// Writes `text` on `s` and reads it back within 5 s.
async fn echoes(s: &mut TcpStream, text: &[u8]) {
    s.write_all(text).await.unwrap();
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echoed within 5 s")
        .expect("echoed, not closed");
    assert_eq!(got, text);
}
