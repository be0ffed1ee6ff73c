//! Long-lived tunnels: a WebSocket stays open while it is quiet (or while only the server
//! talks) for longer than the request-header and idle timeouts, until `tunnel_idle`; it counts
//! against `max_connections` and in the tunnel metrics; graceful shutdown lets it run until the
//! deadline and then ends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server: echoes what it gets; with `push`, also sends `tick N` every 200 ms.
async fn websocket_backend(push: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                let mut n = 0;
                loop {
                    tokio::select! {
                        m = rx.next() => match m {
                            Some(Ok(m)) if m.is_text() => {
                                if tx.send(m).await.is_err() { return; }
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        _ = tick.tick(), if push => {
                            n += 1;
                            if tx.send(Message::text(format!("tick {n}"))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn config(backend: std::net::SocketAddr, timeouts: Timeouts) -> Config {
    Config::new()
        .timeouts(timeouts)
        .listener(Listener::http("web").max_connections(1))
        .region(Region::new("r").address(backend))
        .service(ws_service())
}

/// The service `ws` on `web` over `r`.
fn ws_service() -> Service {
    Service::new("ws").listeners(&["web"]).regions(&["r"])
}

/// `service` behind `listener`, over a WebSocket backend that echoes, with [`timeouts`].
async fn websocket_daemon(listener: Listener, service: Service) -> TestDaemon {
    Config::new()
        .timeouts(timeouts())
        .listener(listener)
        .region(Region::new("r").address(websocket_backend(false).await))
        .service(service)
        .start()
        .await
}

/// `request_header` and `idle` of 1 s.
fn timeouts() -> Timeouts {
    Timeouts::new().request_header("1s").idle("1s")
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn open(d: &TestDaemon) -> Ws {
    let tcp = TcpStream::connect(d.addr("web")).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async("ws://chat.example/live", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn metric(d: &TestDaemon, prefix: &str) -> f64 {
    let m = d.metrics().await;
    m.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_outlives_the_request_timeouts() {
    let d = config(websocket_backend(false).await, timeouts())
        .start()
        .await;
    let mut ws = open(&d).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    // Quiet for longer than request_header and idle (1 s each).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("still there?")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still there?")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_where_only_the_server_talks_stays_open() {
    let d = config(websocket_backend(true).await, timeouts())
        .start()
        .await;
    let mut ws = open(&d).await;
    // Ticks until one arrives 2.5 s after the upgrade (2.5x the 1 s request_header and idle,
    // whose clocks started before `opened`): the tunnel was not cut while the client was quiet.
    // Not a count of ticks in a window: a loaded CI machine can deliver fewer than one per 200 ms.
    let opened = tokio::time::Instant::now();
    let mut ticks = 0;
    while opened.elapsed() < Duration::from_millis(2500) {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no tick for 5 s after {ticks} ticks"))
            .unwrap_or_else(|| panic!("closed after {ticks} ticks, {:?}", opened.elapsed()))
            .unwrap();
        assert!(
            m.is_text(),
            "{m:?} after {ticks} ticks, {:?}",
            opened.elapsed()
        );
        ticks += 1;
    }
    assert!(ticks >= 3, "{ticks} ticks in {:?}", opened.elapsed());
    ws.send(Message::text("and back")).await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.as_str() == "and back" => break,
            Message::Text(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_closes_after_tunnel_idle() {
    let d = config(websocket_backend(false).await, timeouts().tunnel_idle("3s"))
        .start()
        .await;
    let mut ws = open(&d).await;
    // Quiet for 1 s (the 1 s idle does not end a tunnel), then a message each way, which
    // restarts the tunnel's 3 s idle clock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Taken before the message is sent: the daemon's last activity (the echo) is after it, so
    // the tunnel cannot close less than 3 s after `started` however slow the machine. A clock
    // that the message did not restart closes it about 2 s after `started`; the 1 s idle, sooner.
    let started = tokio::time::Instant::now();
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("a"));
    // Then silence: gone after tunnel_idle, not before it, and not never (15 s is 5x it).
    let end = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
    assert!(end.is_ok(), "the idle tunnel was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_against_max_connections_and_in_metrics() {
    let d = config(websocket_backend(false).await, timeouts())
        .start()
        .await;
    let mut ws = open(&d).await;
    // The gauge goes up in the task that relays the tunnel, which may run after the 101 arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let active = metric(&d, "streamgate_tunnels_active{listener=\"web\"} ").await;
        if active == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tunnels_active {active} 5 s after the upgrade"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&d, "streamgate_connections_active{listener=\"web\"} ").await,
        1.0
    );
    // The one slot is the WebSocket's: another client waits in the backlog.
    let url = d.url("web", "/");
    let waiting = tokio::spawn(async move { get(&http1(), &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beside the tunnel");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the tunnel ended")
        .unwrap();
    assert!(answer.is_ok());
    assert_eq!(
        metric(&d, "streamgate_tunnels_active{listener=\"web\"} ").await,
        0.0
    );
    assert_eq!(
        metric(&d, "streamgate_tunnels_total{listener=\"web\"} ").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_tunnel_run_until_the_deadline_then_ends_it() {
    let d = config(websocket_backend(false).await, timeouts())
        .start()
        .await;
    let mut ws = open(&d).await;
    let TestDaemon {
        daemon, dir: _dir, ..
    } = d;
    // A 3 s deadline: the drain has begun after the 1 s sleep, and the echo has 2 s left (a
    // round trip takes milliseconds when things pass; 1.5 s with a 500 ms sleep is thin on
    // a loaded CI machine).
    let stopping = tokio::spawn(daemon.shutdown(Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    ws.send(Message::text("during the drain")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("during the drain")
    );
    assert!(
        !stopping.await.unwrap(),
        "the tunnel was still open at the deadline"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(end, Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_))))),
        "{end:?}"
    );
}

/// A WebSocket keeps its client's `max_connections_per_client` slot while it is open, not only
/// until its upgrade: one client cannot open tunnels past its limit and take every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_holds_its_clients_connection_slot() {
    let d = websocket_daemon(
        Listener::http("web").max_connections_per_client(1),
        ws_service(),
    )
    .await;
    let web = d.addr("web");
    let mut ws = open(&d).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = raw_exchange(web, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1 << 16)
        .await
        .unwrap();
    assert_eq!(second, "", "the client's one slot is its WebSocket's");
    assert_eq!(d.limited("client_connections").await, 1.0);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    // Given back when the tunnel ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let a = raw_exchange(
            web,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            1 << 16,
        )
        .await
        .unwrap();
        if !a.is_empty() || tokio::time::Instant::now() > deadline {
            assert!(!a.is_empty(), "the slot came back");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service that compresses its answers still upgrades: the 101 keeps its Upgrade and
/// Connection fields (compression's hop-by-hop clean-up is for answers it may compress).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opens_on_a_service_that_compresses() {
    let d = websocket_daemon(
        Listener::http("web"),
        ws_service().set("compression", streamgate_tests::config::Raw("{ }".into())),
    )
    .await;
    let mut ws = open(&d).await;
    ws.send(Message::text("through")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("through"));
}

/// An Upgrade to h2c is ignored, not forwarded: HTTP/2 cleartext through the proxy would carry
/// requests no route or rule saw ("h2c smuggling"). The request is answered as an ordinary one.
#[tokio::test]
async fn an_upgrade_to_h2c_is_not_passed_on() {
    let origin = RawOrigin::ok().await;
    let d = origin.behind(Listener::http("web")).await;
    // Also with a byte that is not text beside h2c, which a backend splitting the list reads.
    for (i, upgrade) in [&b"h2c"[..], b"h2c, \x80"].into_iter().enumerate() {
        let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
        let mut request = format!(
            "GET /h2c{i} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: "
        )
        .into_bytes();
        request.extend_from_slice(upgrade);
        request.extend_from_slice(b"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n");
        s.write_all(&request).await.unwrap();
        // The connection stays open (keep-alive): read the one answer, `ok`.
        let mut got = Vec::new();
        let read = async {
            while !got.ends_with(b"\r\n\r\nok") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&got);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let heads = origin.heads();
        let head = heads
            .iter()
            .find(|h| h.contains(&format!("/h2c{i} ")))
            .unwrap()
            .to_ascii_lowercase();
        assert!(!head.contains("upgrade"), "{head}");
        assert!(!head.contains("http2-settings"), "{head}");
    }
}

/// WebSockets over HTTP/2 count against the connection limits as HTTP/1.1 ones do: one
/// connection of 256 streams held 256 backend connections for a client allowed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_websockets_count_against_the_clients_connection_limit() {
    use streamgate_tests::h2::{h2_client, websocket_connect};
    let d = websocket_daemon(
        Listener::http("web").max_connections_per_client(2),
        ws_service(),
    )
    .await;
    let mut sender = h2_client(&d).await;
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..6 {
        let resp = sender
            .send_request(websocket_connect("/live"))
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == StatusCode::OK {
            open.push(hyper::upgrade::on(resp).await.unwrap());
        }
    }
    // The connection's own slot carries the first; the client's second slot one more.
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    assert_eq!(d.limited("client_connections").await, 4.0);
    // A tunnel that ends gives its slot back.
    drop(open.pop());
    assert_eq!(
        opens_within_5s(&mut sender).await,
        200,
        "the ended tunnel's slot came back"
    );
    // The first tunnel (riding on the connection's slots) ends: the next rides in its place,
    // while the one holding the client's other slot is still open.
    let _second = sender
        .send_request(websocket_connect("/live"))
        .await
        .unwrap();
    drop(open.remove(0));
    assert_eq!(
        opens_within_5s(&mut sender).await,
        200,
        "the riding tunnel's place came back"
    );
}

/// Asks for an HTTP/2 WebSocket until one is opened (a slot given back is given back in the
/// tunnel's task); the last status.
async fn opens_within_5s(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> u16 {
    let mut status = 0;
    for _ in 0..100 {
        let resp = sender
            .send_request(streamgate_tests::h2::websocket_connect("/live"))
            .await
            .unwrap();
        status = resp.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

/// A rule sees an HTTP/2 WebSocket as the backend gets it, a GET upgrading to websocket, as it
/// sees an HTTP/1.1 one: the extended CONNECT is not a way past a rule that refuses GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_refusing_get_refuses_websockets_over_both_protocols() {
    use streamgate_tests::h2::{h2_client, websocket_connect};
    let d = websocket_daemon(
        Listener::http("web"),
        ws_service()
            .rules(&[r#"{ match = { path_prefix = "/admin", methods = ["GET"] }, deny = true }"#]),
    )
    .await;
    let h1 = |path: &'static str| {
        let web = d.addr("web");
        async move {
            let tcp = TcpStream::connect(web).await.unwrap();
            match tokio_tungstenite::client_async(format!("ws://chat.example{path}"), tcp).await {
                Ok((_, resp)) => resp.status().as_u16(),
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(h1("/live").await, 101);
    assert_eq!(h1("/admin/feed").await, 403);
    let mut sender = h2_client(&d).await;
    let mut h2 = async |path: &str| {
        let resp = sender.send_request(websocket_connect(path)).await.unwrap();
        resp.status().as_u16()
    };
    assert_eq!(h2("/live").await, 200);
    assert_eq!(
        h2("/admin/feed").await,
        403,
        "the CONNECT form got past the rule"
    );
}
