//! Forwarding loops: a backend that leads back to the daemon's own listener (an origin whose
//! name was pointed at the CDN in front of it, a mistyped port) is answered 508 after a few
//! passes instead of each request opening connections to itself without end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use streamgate_tests::*;

fn config(region: Region) -> String {
    Config::new()
        .listener(Listener::http("web"))
        .region(region)
        .service(Service::new("app").listeners(&["web"]).regions(&["r"]))
        .to_toml()
}

fn series(metrics: &str, name: &str) -> u64 {
    metric(metrics, name).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_backend_is_its_own_listener_answers_508_and_stays_bounded() {
    let other = Origin::start("other").await;
    let d = TestDaemon::start(&config(Region::new("r").origins(&[&other]))).await;
    // The listener's address is known once it is bound: the reload points the region at it.
    d.rewrite_config(&config(Region::new("r").address(d.addr("web"))));
    let (status, body) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let connections = |m: &str| series(m, "streamgate_connections_total{listener=\"web\"}");
    let before = connections(&d.metrics().await);
    let client = http1();
    for _ in 0..5 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            get(&client, &d.url("web", "/loop"), &[]),
        )
        .await
        .expect("the looping request was not answered within 5 s")
        .unwrap();
        assert_eq!(answer.status, StatusCode::LOOP_DETECTED);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "508 took {:?}",
            started.elapsed()
        );
        assert_eq!(
            std::str::from_utf8(&answer.body).unwrap(),
            "508 Loop Detected: this request has already passed through this proxy\n"
        );
    }
    assert_eq!(other.hits(), 0);
    let metrics = d.metrics().await;
    // Each request passes at most three times (Via names us 0, 1, 2 times: forwarded; 3:
    // refused), so five requests open at most 5 * 3 connections to the listener besides the
    // client's own; pooled upstream connections make it fewer.
    let opened = connections(&metrics) - before;
    assert!(opened <= 16, "{opened} connections for 5 looping requests");
    let refused = series(
        &metrics,
        "streamgate_loops_detected_total{listener=\"web\"}",
    );
    assert_eq!(refused, 5, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_two_tiers_of_streamgate_are_forwarded() {
    // A client (or an edge StreamGate) whose request already passed two StreamGates: allowed.
    let o = Origin::start("o").await;
    let d = TestDaemon::start(&config(Region::new("r").origins(&[&o]))).await;
    let tiers = get(
        &http1(),
        &d.url("web", "/"),
        &[("via", "1.1 streamgate, 1.1 cdn, 2 streamgate")],
    )
    .await
    .unwrap();
    assert_eq!(tiers.status, StatusCode::OK);
    assert_eq!(o.hits(), 1);
    let looped = get(
        &http1(),
        &d.url("web", "/"),
        &[
            ("via", "1.1 streamgate, 1.1 streamgate"),
            ("via", "1.1 streamgate"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(looped.status, StatusCode::LOOP_DETECTED);
    assert_eq!(o.hits(), 1, "a looping request was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_via_line_goes_on_and_counts() {
    // Our hop on a second Via line (an intermediary that put its own line first) was dropped
    // when the request was forwarded, so the next pass did not count it.
    let o = Origin::start("o").await;
    let d = TestDaemon::start(&config(Region::new("r").origins(&[&o]))).await;
    let answer = get(
        &http1(),
        &d.url("web", "/"),
        &[("via", "1.1 cdn"), ("via", "1.1 streamgate")],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let seen = o.last_headers();
    let via: Vec<&str> = seen
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(via, ["1.1 cdn, 1.1 streamgate, 1.1 streamgate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_on_a_via_line_with_bytes_beyond_ascii_count() {
    // A comment in Latin-1 (obs-text) made the whole line invisible to the hop count: such a
    // loop was never refused.
    let o = Origin::start("o").await;
    let d = TestDaemon::start(&config(Region::new("r").origins(&[&o]))).await;
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 streamgate, 1.1 streamgate (caf".to_vec();
    raw.extend_from_slice(b"\xe9), 1.1 streamgate\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(d.addr("web"), &raw, 1 << 16).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 508"), "{answer}");
    assert_eq!(o.hits(), 0, "a looping request was forwarded");
}
