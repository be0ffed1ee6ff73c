//! The admin API's own limits, seen from a client's socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::StatusCode;
use streamgate_tests::*;
use tokio::io::AsyncWriteExt;

/// A daemon whose admin API serves two connections at once.
fn two_admin_slots(o: &Origin) -> Config {
    Config::new()
        .admin(Admin::new().listen("127.0.0.1:0").max_connections(2))
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(o, 1)]))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
}

/// With the clients that hog the slots at work, an operator's GET `path` is answered 200
/// within 10 s (`why` says why it must be).
async fn an_operator_is_served(d: &TestDaemon, path: &str, why: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        get(&http1(), &d.admin_url(path), &[]),
    )
    .await
    .expect(why)
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
}

/// Clients that send requests and never read the answers cannot keep the admin API's
/// connection slots: an answer not read within `request_header` ends its connection, and an
/// operator is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_hold_the_admin_slots() {
    let o = Origin::start("o").await;
    let d = two_admin_slots(&o)
        .timeouts(Timeouts::new().request_header("1s"))
        .start()
        .await;
    let admin = d.daemon.admin_addr();
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(admin).await.unwrap();
        hogs.push(tokio::spawn(async move {
            // /metrics answers are kilobytes each: a few fill what the socket holds.
            let asks = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(2000);
            let _ = s.write_all(&asks).await;
            // Open, and never read.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        }));
    }
    an_operator_is_served(
        &d,
        "/live",
        "an operator is served once the clients that read nothing are cut off",
    )
    .await;
    for h in hogs {
        h.abort();
    }
}

/// Clients that keep asking (`GET /live` needs no token) and read every answer cannot keep the
/// slots either: a connection serves a hundred requests and closes, and an operator waiting in
/// the backlog is taken before the client's next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_keep_asking_cannot_hold_the_admin_slots() {
    let o = Origin::start("o").await;
    let d = two_admin_slots(&o).start().await;
    let admin = d.daemon.admin_addr();
    let mut hogs = Vec::new();
    for _ in 0..2 {
        hogs.push(tokio::spawn(async move {
            loop {
                let Ok(tcp) = tokio::net::TcpStream::connect(admin).await else {
                    continue;
                };
                let Ok((mut tx, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
                else {
                    continue;
                };
                tokio::spawn(conn);
                loop {
                    let req = http::Request::get("/live")
                        .header("host", "127.0.0.1")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let Ok(r) = tx.send_request(req).await else {
                        break;
                    };
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
            }
        }));
    }
    an_operator_is_served(
        &d,
        "/regions",
        "an operator is served between the busy clients' connections",
    )
    .await;
    for h in hogs {
        h.abort();
    }
}

/// Clients that trickle their request heads hold a slot each until `request_header` (the token
/// is checked once a head is in). One client address gets `max_connections_per_client` of
/// them; its next connections are closed at once, and an operator from elsewhere is served.
/// Before, one client filled every slot and kept everyone else in the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_trickling_heads_cannot_hold_every_admin_slot() {
    let o = Origin::start("o").await;
    let d = Config::new()
        .admin(
            Admin::new()
                .listen("127.0.0.1:0")
                .max_connections(4)
                .max_connections_per_client(2),
        )
        .timeouts(Timeouts::new().request_header("30s"))
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(&o, 1)]))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
        .start()
        .await;
    let admin = d.daemon.admin_addr();
    let mut hogs = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /backends HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        hogs.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        get_from("127.0.0.2".parse().unwrap(), admin, "/live", &[]),
    )
    .await
    .expect("an operator from another address is served")
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // The two beyond the client's share were refused, and counted as on a proxy listener.
    let refused = "streamgate_limited_total{limit=\"client_connections\",listener=\"admin\"}";
    let metrics = get_from("127.0.0.2".parse().unwrap(), admin, "/metrics", &[])
        .await
        .unwrap()
        .text();
    assert_eq!(metric(&metrics, refused), Some(2.0), "{metrics}");
    drop(hogs);
}
