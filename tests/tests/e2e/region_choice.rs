//! Which region serves: the operator's choice of primary region, and what happens when every
//! region is down (fail open by default, or closed with 503).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};
use streamgate_tests::presets::{api, failover_config};
use streamgate_tests::*;

#[tokio::test]
async fn primary_region_can_be_chosen_by_the_operator() {
    let us = Origin::start("us").await;
    let eu = Origin::start("eu").await;
    let d = failover_config(&[&us], &[&eu], "1s").start().await;
    let c = http1();
    assert_eq!(
        get(&c, &d.url("web", "/"), &[])
            .await
            .unwrap()
            .header("x-origin"),
        Some("us")
    );
    let (status, v) = d
        .admin(
            Method::POST,
            "/services/api/primary",
            "{\"region\": \"eu-west\"}",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["previous"], "us-east");
    assert_eq!(
        get(&c, &d.url("web", "/"), &[])
            .await
            .unwrap()
            .header("x-origin"),
        Some("eu")
    );
    let (status, v) = d
        .admin(
            Method::POST,
            "/services/api/primary",
            "{\"region\": \"mars\"}",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("its regions: us-east, eu-west")
    );
    let (status, _) = d
        .admin(
            Method::POST,
            "/services/nope/primary",
            "{\"region\": \"eu-west\"}",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, regions) = d.admin(Method::GET, "/regions", "").await;
    let eu_entry = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "eu-west")
        .unwrap()
        .clone();
    assert_eq!(eu_entry["services"][0]["primary"], true);
}

// Paused time: the wait is on the health checker's probe timers (tokio's clock); probes and
// requests reach an origin in this runtime over loopback, and a probe that timed out instead of
// getting its 500 is a failure all the same.
#[tokio::test(start_paused = true)]
async fn every_region_down_fails_closed_with_503_when_configured() {
    let a = Origin::start("a").await;
    a.set_health(500);
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("us-east").backends(&[(&a, 1)]))
        .service(api(
            &["us-east"],
            Failover::new().hold_down("1s").when_all_down("fail_closed"),
        ))
        .start()
        .await;
    assert!(
        eventually(Duration::from_secs(3), || !d.daemon.table.load().services
            [0]
        .regions[0]
            .backends[0]
            .state
            .is_up())
        .await
    );
    let r = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.hits(), 0);
}

// Paused time: as above.
#[tokio::test(start_paused = true)]
async fn every_region_down_fails_open_by_default() {
    let a = Origin::start("a").await;
    a.set_health(500);
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("us-east").backends(&[(&a, 1)]))
        .service(api(&["us-east"], Failover::new().hold_down("1s")))
        .start()
        .await;
    assert!(
        eventually(Duration::from_secs(3), || !d.daemon.table.load().services
            [0]
        .regions[0]
            .backends[0]
            .state
            .is_up())
        .await
    );
    let r = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "fail_open still tries the backend"
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(
            "streamgate_traffic_routing_requests_total{reason=\"fail_open\",region=\"us-east\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamgate_backend_up{backend=\"")
            && metrics.contains("region=\"us-east\"} 0"),
        "{metrics}"
    );
}
