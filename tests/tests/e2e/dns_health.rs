//! Health across DNS answers, end to end: a DNS server on 127.0.0.1 whose answers the test
//! changes, and origins on 127.0.0.1 and 127.0.0.2 (see [`super::dns`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::Method;
use streamgate_tests::*;

use super::dns::{NAME, ip, origin_pair};

/// Whether `address` is up in `/backends`; `None` while it is not listed.
async fn up_of(d: &TestDaemon, address: &str) -> Option<bool> {
    let (_, body) = d.admin(Method::GET, "/backends", "").await;
    body["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == address)
        .and_then(|b| b["up"].as_bool())
}

/// A dead address that leaves the answer and comes back keeps the health it left with. Started
/// afresh, it came back "up", and was tried until its first probe (a random part of the
/// interval later); an answer that dropped and gave it back faster than that kept it up for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_that_leaves_the_answer_and_comes_back_is_still_down() {
    let dns = DnsServer::start().await;
    let (a, b) = origin_pair().await;
    let b_addr = b.addr.to_string();
    b.stop().await;
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    let text = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").address(format!("{NAME}:{}", a.addr.port())))
        .service(
            Service::new("app")
                .listeners(&["web"])
                .regions(&["r"])
                .health(
                    Health::new()
                        .kind("tcp")
                        .interval("3s")
                        .timeout("500ms")
                        .rise(1)
                        .fall(1),
                ),
        )
        .raw(&format!(
            "[dns]\nservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"10s\"\ntimeout = \"300ms\"\nallow_local = true\n",
            dns.addr
        ))
        .to_toml();
    let d = TestDaemon::start(&text).await;
    let mut down = false;
    for _ in 0..200 {
        if up_of(&d, &b_addr).await == Some(false) {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "127.0.0.2 was never found down");

    dns.set(NAME, &[ip("127.0.0.1")], 1);
    let mut gone = false;
    for _ in 0..100 {
        if up_of(&d, &b_addr).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "127.0.0.2 never left");

    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    let mut back = None;
    for _ in 0..100 {
        back = up_of(&d, &b_addr).await;
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, Some(false), "back, and down as it left");
}
