//! Global load balancing end to end: geo routing with the fixture databases, health checks,
//! failover and failback, latency routing, reloads and the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use streamgate_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Three regions at Virginia, Frankfurt and Tokyo, one origin each, geo policy.
struct World {
    us: Origin,
    eu: Origin,
    ap: Origin,
}

impl World {
    async fn start() -> World {
        World {
            us: Origin::start("us-east").await,
            eu: Origin::start("eu-west").await,
            ap: Origin::start("ap-northeast").await,
        }
    }

    fn config(&self, database: &str, extra_service: &str) -> String {
        format!(
            r#"
[geo]
database = "{db}"
default_region = "us-east"
trusted_proxies = ["127.0.0.1/32"]

[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[regions]]
name = "us-east"
location = {{ lat = 39.0, lon = -77.5 }}
countries = ["CA"]
backends = {us}

[[regions]]
name = "eu-west"
location = {{ lat = 50.1, lon = 8.7 }}
backends = {eu}

[[regions]]
name = "ap-northeast"
location = {{ lat = 35.7, lon = 139.7 }}
backends = {ap}

[[services]]
name = "web"
listeners = ["web"]
regions = ["us-east", "eu-west", "ap-northeast"]
region_policy = "geo"
{extra_service}
"#,
            db = fixture(database).display(),
            us = backends(&[(&self.us, 1)]),
            eu = backends(&[(&self.eu, 1)]),
            ap = backends(&[(&self.ap, 1)]),
        )
    }
}

async fn region_for_xff(d: &TestDaemon, xff: &str) -> String {
    let a = get(&http1(), &d.url("web", "/"), &[("x-forwarded-for", xff)])
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    a.header("x-origin").unwrap().to_string()
}

async fn region_from(d: &TestDaemon, src: &str, headers: &[(&str, &str)]) -> String {
    let a = get_from(ip(src), d.addr("web"), "/", headers)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    a.header("x-origin").unwrap().to_string()
}

#[tokio::test]
async fn synthetic_city_db_routes_clients_to_the_nearest_region() {
    let w = World::start().await;
    let d = TestDaemon::start(&w.config("geo/streamgate-synthetic-city.mmdb", "")).await;
    // Addresses in X-Forwarded-For from a trusted peer (127.0.0.1).
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "eu-west");
    assert_eq!(region_for_xff(&d, "198.51.100.7").await, "us-east");
    assert_eq!(region_for_xff(&d, "203.0.113.7").await, "ap-northeast");
    assert_eq!(region_for_xff(&d, "2001:db8:3::1").await, "ap-northeast");
    // The socket peer itself, with no header: 127.0.1.x is Frankfurt, 127.0.3.x Tokyo.
    assert_eq!(region_from(&d, "127.0.1.5", &[]).await, "eu-west");
    assert_eq!(region_from(&d, "127.0.3.5", &[]).await, "ap-northeast");
    // South America (São Paulo) is nearer Virginia; Sydney nearer Tokyo; Johannesburg nearer Frankfurt.
    assert_eq!(region_from(&d, "127.0.4.9", &[]).await, "us-east");
    assert_eq!(region_from(&d, "127.0.5.9", &[]).await, "ap-northeast");
    assert_eq!(region_from(&d, "127.0.6.9", &[]).await, "eu-west");
    // An explicit country mapping wins: 127.0.8.x is Canada without coordinates.
    assert_eq!(region_from(&d, "127.0.8.5", &[]).await, "us-east");
    // An untrusted peer's header is ignored: a Tokyo peer claiming to be in Frankfurt stays in Tokyo.
    assert_eq!(
        region_from(&d, "127.0.3.5", &[("x-forwarded-for", "192.0.2.7")]).await,
        "ap-northeast"
    );
    // Addresses the database does not know go to the default region.
    assert_eq!(region_for_xff(&d, "10.1.2.3").await, "us-east");
    assert_eq!(region_from(&d, "127.0.0.1", &[]).await, "us-east");
}

#[tokio::test]
async fn country_databases_place_clients_at_their_country_centre() {
    let w = World::start().await;
    // MaxMind's test country DB (nested GeoIP2 records, no coordinates).
    let d = TestDaemon::start(&w.config("geo/GeoLite2-Country-Test.mmdb", "")).await;
    assert_eq!(region_for_xff(&d, "81.2.69.142").await, "eu-west", "GB");
    assert_eq!(region_for_xff(&d, "216.160.83.56").await, "us-east", "US");
    assert_eq!(
        region_for_xff(&d, "2001:218::1").await,
        "ap-northeast",
        "JP"
    );
    assert_eq!(
        region_for_xff(&d, "::ffff:89.160.20.128").await,
        "eu-west",
        "SE, IPv4-mapped"
    );
    drop(d);
    // DB-IP's real country data (flat country_code records).
    let d = TestDaemon::start(&w.config("geo/dbip-country-lite.mmdb", "")).await;
    assert_eq!(region_for_xff(&d, "8.8.8.8").await, "us-east", "US");
    assert_eq!(region_for_xff(&d, "193.99.144.80").await, "eu-west", "DE");
    assert_eq!(region_for_xff(&d, "1.1.1.1").await, "ap-northeast", "AU");
    assert_eq!(
        region_for_xff(&d, "::ffff:81.2.69.142").await,
        "eu-west",
        "GB via IPv4-mapped"
    );
}

#[tokio::test]
async fn corrupt_and_wrong_databases_are_refused_with_a_clear_error() {
    let w = World::start().await;
    for (file, expect) in [
        (
            "geo/bad/GeoIP2-City-Test-Invalid-Node-Count.mmdb",
            "cannot open geo database",
        ),
        (
            "geo/bad/truncated-GeoIP2-City-Test.mmdb",
            "cannot open geo database",
        ),
        (
            "geo/bad/MaxMind-DB-test-broken-pointers-24.mmdb",
            "geo database is corrupt",
        ),
        (
            "geo/bad/MaxMind-DB-test-broken-search-tree-24.mmdb",
            "geo database is corrupt",
        ),
        (
            "geo/bad/GeoIP2-City-Test-Broken-Double-Format.mmdb",
            "geo database is corrupt",
        ),
        ("geo/GeoLite2-ASN-Test.mmdb", "has no country data"),
    ] {
        let (_dir, path) = write_config(&with_test_admin(&w.config(file, "")));
        let config = streamgate_config::load(&path).unwrap();
        let err = streamgate::Daemon::start(config).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(expect) && msg.contains(file.rsplit('/').next().unwrap()),
            "{file}: {msg}"
        );
    }
}

async fn admin_json(d: &TestDaemon, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let a = send(
        &http1(),
        method,
        &d.admin_url(path),
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap();
    let v = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    (a.status, v)
}

#[tokio::test]
async fn a_bad_database_on_reload_keeps_the_old_one_and_the_old_config() {
    let w = World::start().await;
    let d = TestDaemon::start(&w.config("geo/streamgate-synthetic-city.mmdb", "")).await;
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "eu-west");
    std::fs::write(
        &d.config_path,
        with_test_admin(&w.config("geo/bad/MaxMind-DB-test-broken-pointers-24.mmdb", "")),
    )
    .unwrap();
    let (status, v) = admin_json(&d, Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("geo database is corrupt"),
        "{v}"
    );
    let (_, cfg) = admin_json(&d, Method::GET, "/config", "").await;
    assert!(
        cfg["geo_database"]["path"]
            .as_str()
            .unwrap()
            .ends_with("streamgate-synthetic-city.mmdb"),
        "{cfg}"
    );
    assert!(
        cfg["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("corrupt"),
        "{cfg}"
    );
    assert_eq!(
        region_for_xff(&d, "192.0.2.7").await,
        "eu-west",
        "still routing with the old database"
    );
}

#[tokio::test]
async fn explain_says_where_a_client_goes_and_why() {
    let w = World::start().await;
    let d = TestDaemon::start(&w.config("geo/streamgate-synthetic-city.mmdb", "")).await;
    let (status, v) = admin_json(
        &d,
        Method::GET,
        "/explain?ip=192.0.2.7&host=example.com&path=%2Fvideo",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["service"], "web");
    assert_eq!(v["client"]["geo"]["country"], "DE");
    assert_eq!(v["decision"]["region"], "eu-west");
    assert_eq!(v["decision"]["backend"], w.eu.addr.to_string());
    assert_eq!(v["decision"]["reason"], "geo");
    assert_eq!(v["regions"][0]["name"], "eu-west");
    assert!(
        v["regions"][0]["distance_km"].as_f64().unwrap() < 50.0,
        "{v}"
    );
    assert!(
        v["regions"][1]["distance_km"].as_f64().unwrap() > 6000.0,
        "{v}"
    );

    // Deactivate eu-west: the explanation says so and picks the next nearest.
    let (status, _) = admin_json(&d, Method::POST, "/regions/eu-west/deactivate", "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, v) = admin_json(&d, Method::GET, "/explain?ip=192.0.2.7", "").await;
    assert_eq!(
        v["regions"][0]["excluded_because"],
        "deactivated by an operator"
    );
    assert_eq!(v["decision"]["region"], "us-east");
    assert_eq!(v["decision"]["reason"], "failover");
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "us-east");
    admin_json(&d, Method::POST, "/regions/eu-west/activate", "").await;
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "eu-west");
}

/// Two regions in priority order with active health checks every 200 ms (fall 3, rise 2).
fn failover_config(us: &[&Origin], eu: &[&Origin], hold_down: &str) -> String {
    let list = |o: &[&Origin]| backends(&o.iter().map(|x| (*x, 1)).collect::<Vec<_>>());
    format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[regions]]
name = "us-east"
backends = {}

[[regions]]
name = "eu-west"
backends = {}

[[services]]
name = "api"
listeners = ["web"]
regions = ["us-east", "eu-west"]
region_policy = "failover"
backend_policy = "round_robin"

[services.health]
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "150ms"
rise = 2
fall = 3

[services.failover]
hold_down = "{hold_down}"
"#,
        list(us),
        list(eu)
    )
}

/// A closed-loop client: GETs one after another, recording (time, origin) and failures.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    log: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = http1();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, failures, log, c, url) = (
                    stop.clone(),
                    failures.clone(),
                    log.clone(),
                    c.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(SeqCst) {
                        match get(&c, &url, &[]).await {
                            Ok(a) if a.status == StatusCode::OK => {
                                log.lock().unwrap().push((
                                    Instant::now(),
                                    a.header("x-origin").unwrap_or("?").to_string(),
                                ));
                            }
                            Ok(a) => {
                                eprintln!("failed: {} {}", a.status, a.text());
                                failures.fetch_add(1, SeqCst);
                            }
                            Err(e) => {
                                eprintln!("failed: {e}");
                                failures.fetch_add(1, SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            failures,
            log,
            tasks,
        }
    }

    fn served_since(&self, t: Instant) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// When the first answer after `t` from origins named `prefix` arrived.
    fn first_from_since(&self, t: Instant, prefix: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(at, o)| *at >= t && o.starts_with(prefix))
            .map(|(at, _)| *at)
    }

    /// The first moment after `t` from which every answer came from origins named `prefix`.
    fn switched_at(&self, t: Instant, prefix: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        let after: Vec<_> = log.iter().filter(|(at, _)| *at >= t).collect();
        let last_other = after.iter().rposition(|(_, o)| !o.starts_with(prefix));
        match last_other {
            None => after.first().map(|(at, _)| *at),
            Some(i) => after.get(i + 1).map(|(at, _)| *at),
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.failures.load(SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_region_fails_over_within_1_5s_with_no_failed_request_and_fails_back_after_hold_down()
 {
    let us1 = Origin::start("us-1").await;
    let us2 = Origin::start("us-2").await;
    let eu1 = Origin::start("eu-1").await;
    let d = TestDaemon::start(&failover_config(&[&us1, &us2], &[&eu1], "2s")).await;
    let load = Load::start(d.url("web", "/"), 4);
    assert!(
        eventually(Duration::from_secs(5), || load
            .served_since(Instant::now() - Duration::from_secs(1))
            .len()
            > 50)
        .await
    );
    assert!(
        load.served_since(Instant::now() - Duration::from_millis(500))
            .iter()
            .all(|o| o.starts_with("us"))
    );

    // Kill the whole primary region.
    let (addr1, addr2) = (us1.addr, us2.addr);
    let killed = Instant::now();
    us1.stop();
    us2.stop();
    drop((us1, us2));
    // Health checks mark both backends down (fall 3 x 200 ms) and the region unhealthy.
    assert!(
        eventually(Duration::from_secs(3), || !d.daemon.table.load().services
            [0]
        .regions[0]
            .health
            .is_healthy())
        .await,
        "region marked unhealthy"
    );
    let detected = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let switched = load
        .switched_at(killed, "eu")
        .expect("traffic moved to eu-west");
    let switch_time = switched.duration_since(killed);
    eprintln!("health detection {detected:?}, traffic switch {switch_time:?}");
    assert!(
        switch_time < Duration::from_millis(1500),
        "switch took {switch_time:?}"
    );
    assert!(
        detected < Duration::from_millis(1500),
        "detection took {detected:?}"
    );

    // Bring the primary back: traffic returns only after the 2 s hold-down.
    let _us1 = Origin::start_at("us-1", addr1).await;
    let _us2 = Origin::start_at("us-2", addr2).await;
    assert!(
        eventually(Duration::from_secs(5), || d.daemon.table.load().services[0]
            .regions[0]
            .health
            .is_healthy())
        .await,
        "region healthy again"
    );
    let healthy_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        load.served_since(healthy_at)
            .iter()
            .all(|o| o.starts_with("eu")),
        "no traffic back before the hold-down"
    );
    assert!(
        eventually(Duration::from_secs(5), || load
            .served_since(Instant::now() - Duration::from_millis(200))
            .iter()
            .any(|o| o.starts_with("us")))
        .await
    );
    let back = load
        .first_from_since(healthy_at, "us")
        .expect("an answer from us-east after failback")
        .duration_since(healthy_at);
    assert!(
        back >= Duration::from_millis(1900),
        "failback after {back:?}, hold-down is 2 s"
    );

    assert_eq!(load.finish().await, 0, "no client saw a failed request");
    let metrics = get(&http1(), &d.admin_url("/metrics"), &[])
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(
            "streamgate_failovers_total{from=\"us-east\",service=\"api\",to=\"eu-west\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "streamgate_failovers_total{from=\"eu-west\",service=\"api\",to=\"us-east\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_region_loses_latency_policy_traffic() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let config = format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[regions]]
name = "a"
backends = {}

[[regions]]
name = "b"
backends = {}

[[services]]
name = "api"
listeners = ["web"]
regions = ["a", "b"]
region_policy = "latency"

[services.health]
path = "/healthz"
interval = "100ms"

[services.failover]
latency_tolerance = "20ms"
"#,
        backends(&[(&a, 1)]),
        backends(&[(&b, 1)])
    );
    let d = TestDaemon::start(&config).await;
    let c = http1();
    for _ in 0..50 {
        get(&c, &d.url("web", "/"), &[]).await.unwrap();
    }
    // Nearly equal regions: one of them keeps the traffic (tolerance), no flapping.
    let first = if a.hits() > b.hits() { &a } else { &b };
    let second = if std::ptr::eq(first, &a) { &b } else { &a };
    let before = second.hits();
    for _ in 0..50 {
        get(&c, &d.url("web", "/"), &[]).await.unwrap();
    }
    assert!(
        second.hits() - before <= 2,
        "traffic stayed on {} (other got {})",
        first.name,
        second.hits() - before
    );

    // Slow the serving region by 100 ms (requests and probes).
    first.set_delay(Duration::from_millis(100));
    first.state.health_delay_ms.store(100, SeqCst);
    let moved = async {
        for _ in 0..60 {
            let a = get(&c, &d.url("web", "/"), &[]).await.unwrap();
            if a.header("x-origin") == Some(&second.name) {
                return true;
            }
        }
        false
    }
    .await;
    assert!(moved, "the slowed region {} kept the traffic", first.name);
    let f0 = first.hits();
    for _ in 0..30 {
        get(&c, &d.url("web", "/"), &[]).await.unwrap();
    }
    assert!(
        first.hits() - f0 <= 2,
        "the slow region got {} of 30 more",
        first.hits() - f0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_an_invalid_one_keeps_the_old_config() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let text = |list: &str| {
        format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[regions]]\nname = \"r\"\nbackends = {list}\n\
             [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n"
        )
    };
    let only_a = text(&backends(&[(&a, 1)]));
    let both = text(&backends(&[(&a, 1), (&b, 1)]));
    let d = TestDaemon::start(&only_a).await;
    let load = Load::start(d.url("web", "/"), 4);
    for i in 0..40 {
        let t = if i % 2 == 0 { &both } else { &only_a };
        std::fs::write(&d.config_path, with_test_admin(t)).unwrap();
        let (status, v) = admin_json(&d, Method::POST, "/reload", "").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], true);
    }
    std::fs::write(&d.config_path, with_test_admin(&both)).unwrap();
    let (_, v) = admin_json(&d, Method::POST, "/reload", "").await;
    let version = v["version"].as_u64().unwrap();
    let b0 = b.hits();
    assert!(
        eventually(Duration::from_secs(5), || b.hits() > b0 + 20).await,
        "the added backend gets traffic"
    );

    // An invalid file: rejected with the same errors as `check`, the old table stays.
    let broken = both.replace("regions = [\"r\"]", "regions = [\"r\", \"nowhere\"]");
    std::fs::write(&d.config_path, with_test_admin(&broken)).unwrap();
    let (status, v) = admin_json(&d, Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let err = v["errors"][0].as_str().unwrap();
    assert!(
        err.contains("streamgate.toml:")
            && err.contains("services[0].regions[1]: no region named \"nowhere\""),
        "{err}"
    );
    assert_eq!(
        v["version"].as_u64().unwrap(),
        version,
        "the running version did not change"
    );
    let (_, cfg) = admin_json(&d, Method::GET, "/config", "").await;
    assert!(
        cfg["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("nowhere")
    );
    assert_eq!(load.finish().await, 0);
    let metrics = get(&http1(), &d.admin_url("/metrics"), &[])
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("streamgate_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamgate_config_reloads_total{result=\"success\"} 41"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_new_requests_and_lets_in_flight_ones_finish() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    a.set_delay(Duration::from_millis(800));
    let d = TestDaemon::start(&format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[regions]]\nname = \"r\"\nbackends = {}\n\
         [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\nbackend_policy = \"round_robin\"\n",
        backends(&[(&a, 1), (&b, 1)])
    ))
    .await;
    // Start a slow request on a, then drain a while it is in flight.
    let url = d.url("web", "/");
    let slow = {
        let url = url.clone();
        tokio::spawn(async move {
            let c = http1();
            loop {
                let r = get(&c, &url, &[]).await.unwrap();
                if r.header("x-origin") == Some("a") {
                    return r;
                }
            }
        })
    };
    assert!(eventually(Duration::from_secs(5), || a.hits() >= 1).await);
    let (status, v) = admin_json(
        &d,
        Method::POST,
        "/backends/drain",
        &format!("{{\"address\": \"{}\"}}", a.addr),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["in_flight"], 1);
    let hits_a = a.hits();
    for _ in 0..20 {
        assert_eq!(
            get(&http1(), &url, &[]).await.unwrap().header("x-origin"),
            Some("b")
        );
    }
    assert_eq!(
        a.hits(),
        hits_a,
        "no new request reached the drained backend"
    );
    let finished = slow.await.unwrap();
    assert_eq!(
        finished.status,
        StatusCode::OK,
        "the in-flight request finished"
    );
    let (_, list) = admin_json(&d, Method::GET, "/backends", "").await;
    let entry = list["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == a.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(entry["drained"], true);
    assert_eq!(entry["unavailable_because"], "drained");
    admin_json(
        &d,
        Method::POST,
        "/backends/undrain",
        &format!("{{\"address\": \"{}\"}}", a.addr),
    )
    .await;
    a.set_delay(Duration::ZERO);
    for _ in 0..4 {
        get(&http1(), &url, &[]).await.unwrap();
    }
    assert!(a.hits() > hits_a, "undrained backend gets traffic again");
    let (status, _) = admin_json(
        &d,
        Method::POST,
        "/backends/drain",
        "{\"address\": \"127.0.0.1:1\"}",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn primary_region_can_be_chosen_by_the_operator() {
    let us = Origin::start("us").await;
    let eu = Origin::start("eu").await;
    let d = TestDaemon::start(&failover_config(&[&us], &[&eu], "1s")).await;
    let c = http1();
    assert_eq!(
        get(&c, &d.url("web", "/"), &[])
            .await
            .unwrap()
            .header("x-origin"),
        Some("us")
    );
    let (status, v) = admin_json(
        &d,
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
    let (status, v) = admin_json(
        &d,
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
    let (status, _) = admin_json(
        &d,
        Method::POST,
        "/services/nope/primary",
        "{\"region\": \"eu-west\"}",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, regions) = admin_json(&d, Method::GET, "/regions", "").await;
    let eu_entry = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "eu-west")
        .unwrap()
        .clone();
    assert_eq!(eu_entry["services"][0]["primary"], true);
}

#[tokio::test]
async fn the_admin_api_wants_the_bearer_token_when_one_is_configured() {
    let o = Origin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, "correct-horse-battery\n").unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
         [[regions]]\nname = \"r\"\nbackends = {}\n[[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n",
        token_path.display(),
        backends(&[(&o, 1)])
    );
    let d = TestDaemon::start(&config).await;
    let c = http1();
    assert_eq!(
        get(&c, &d.admin_url("/regions"), &[]).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(
            &c,
            &d.admin_url("/regions"),
            &[("authorization", "Bearer wrong")]
        )
        .await
        .unwrap()
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &d.admin_url("/metrics"), &[]).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    let ok = get(
        &c,
        &d.admin_url("/regions"),
        &[("authorization", "Bearer correct-horse-battery")],
    )
    .await
    .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    // Liveness and readiness stay open for orchestrators.
    assert_eq!(
        get(&c, &d.admin_url("/live"), &[]).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &d.admin_url("/ready"), &[]).await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_region_down_fails_closed_with_503_when_configured() {
    let a = Origin::start("a").await;
    a.set_health(500);
    let config = failover_config(&[&a], &[], "1s")
        .replace("[[regions]]\nname = \"eu-west\"\nbackends = [  ]\n", "");
    let config = config.replace(
        "regions = [\"us-east\", \"eu-west\"]",
        "regions = [\"us-east\"]",
    ) + "when_all_down = \"fail_closed\"\n";
    let d = TestDaemon::start(&config).await;
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

#[tokio::test]
async fn every_region_down_fails_open_by_default() {
    let a = Origin::start("a").await;
    a.set_health(500);
    let config = failover_config(&[&a], &[], "1s")
        .replace("[[regions]]\nname = \"eu-west\"\nbackends = [  ]\n", "")
        .replace(
            "regions = [\"us-east\", \"eu-west\"]",
            "regions = [\"us-east\"]",
        );
    let d = TestDaemon::start(&config).await;
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
    let metrics = get(&http1(), &d.admin_url("/metrics"), &[])
        .await
        .unwrap()
        .text();
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
