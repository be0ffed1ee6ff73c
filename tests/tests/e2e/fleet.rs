//! A fleet of three PoPs kept in step through a real `nats-server -js` on loopback: a fleet
//! purge from one reaches all three, a PoP stopped during the purge applies it after its
//! restart, a region deactivated fleet-wide moves traffic at all three while a PoP's own word
//! still wins, and killing nats-server under load fails no request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use streamgate_tests::nats::NatsServer;
use streamgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");
// Generous: the loops end as soon as their condition holds; a loaded CI machine is slow.
const WAIT: Duration = Duration::from_secs(30);

fn fleet(nats: &NatsServer, pop: &str) -> String {
    format!(
        "[fleet]\nservers = [\"{}\"]\npop = \"{pop}\"\nregion = \"r-{pop}\"\nheartbeat = \"200ms\"\n",
        nats.url()
    )
}

fn cdn(o1: &Origin, o2: &Origin) -> Config {
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("one").origins(&[o1]))
        .region(Region::new("two").origins(&[o2]))
        .service(
            Service::new("cdn")
                .listeners(&["web"])
                .hosts(&["cdn.test"])
                .regions(&["one", "two"])
                .region_policy("failover")
                .cache(Cache::new("64MiB")),
        )
}

async fn fetch(web: std::net::SocketAddr, path: &str) -> Answer {
    get(
        &http1(),
        &format!("http://{web}{path}"),
        &[("host", "cdn.test")],
    )
    .await
    .unwrap()
}

/// A series' value, 0 while it is not exported.
fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

async fn connected(d: &TestDaemon) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if d.admin(Method::GET, "/fleet", "").await.1["connected"] == true
            && value(&d.metrics().await, "streamgate_fleet_connected") == 1.0
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

const OBJ: &str = "/c/page?cc=max-age%3D600";

/// `OBJ` purged fleet-wide through `d`'s admin API.
async fn fleet_purge(d: &TestDaemon) -> (StatusCode, serde_json::Value) {
    d.admin(
        Method::POST,
        "/cache/purge",
        &json!({ "url": format!("http://cdn.test{OBJ}"), "scope": "fleet" }).to_string(),
    )
    .await
}

/// Whether `OBJ` stops being a hit at `d` within 10 s.
async fn no_longer_a_hit(d: &TestDaemon) -> bool {
    for _ in 0..500 {
        if fetch(d.addr("web"), OBJ).await.header("x-cache") != Some("HIT") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_fleet_purge_reaches_every_pop_and_one_that_was_down_catches_up() {
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = cdn(&o1, &o2).raw(&fleet(&nats, "a")).start().await;
    let b = cdn(&o1, &o2).raw(&fleet(&nats, "b")).start().await;
    let store = tempfile::tempdir().unwrap();
    let c_text = |dir: &Path| {
        cdn(&o1, &o2)
            .snapshots(Snapshots::new(dir).interval("1h"))
            .raw(&fleet(&nats, "c"))
            .to_toml()
    };
    let mut c = DaemonProcess::start(BIN, &c_text(store.path()), &["web", "admin"]);
    assert!(connected(&a).await && connected(&b).await, "a and b join");

    for web in [a.addr("web"), b.addr("web"), c.addr("web")] {
        fetch(web, OBJ).await;
        assert_eq!(fetch(web, OBJ).await.header("x-cache"), Some("HIT"));
    }
    // Every PoP hears every heartbeat.
    let mut all = false;
    for _ in 0..500 {
        let v = a.admin(Method::GET, "/fleet", "").await.1;
        if v["pops"].as_array().is_some_and(|p| p.len() == 3) {
            all = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(all, "/fleet lists a, b and c");

    // c stops (a planned stop writes its cache to a recovery point); the purge goes out.
    c.signal("TERM");
    assert!(c.wait_exit(WAIT).is_some(), "c stops");
    let (status, v) = fleet_purge(&a).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["fleet"]["published"], true, "{v}");
    for (name, d) in [("a", &a), ("b", &b)] {
        assert!(
            no_longer_a_hit(d).await,
            "{name} applied the fleet purge: {}",
            d.metrics()
                .await
                .lines()
                .filter(|l| l.contains("fleet"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let m = b.metrics().await;
    assert_eq!(
        value(
            &m,
            r#"streamgate_fleet_messages_total{kind="purge",result="applied"}"#
        ),
        1.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            r#"streamgate_replication_lag_seconds_count{region="r-b"}"#
        ) >= 1.0
    );

    // c comes back with its cache restored, then catches up on the purge it missed.
    let c = DaemonProcess::start(BIN, &c_text(store.path()), &["web", "admin"]);
    let mut applied = false;
    for _ in 0..1000 {
        let m = c.metrics().await;
        if value(
            &m,
            r#"streamgate_fleet_messages_total{kind="purge",result="applied"}"#,
        ) == 1.0
        {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "c applied the purge after its restart");
    assert_ne!(
        fetch(c.addr("web"), OBJ).await.header("x-cache"),
        Some("HIT")
    );
    // Applied once each, even though a saw its own purge come back through the stream.
    let m = a.metrics().await;
    assert_eq!(
        value(
            &m,
            r#"streamgate_fleet_messages_total{kind="purge",result="applied"}"#
        ),
        0.0,
        "a applied its own purge at once, not again from the stream"
    );
}

#[tokio::test]
async fn a_region_deactivated_fleet_wide_moves_traffic_at_every_pop() {
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let mut pops = Vec::new();
    for p in ["a", "b", "c"] {
        pops.push(cdn(&o1, &o2).raw(&fleet(&nats, p)).start().await);
    }
    for d in &pops {
        assert!(connected(d).await);
        assert!(
            fetch(d.addr("web"), "/x")
                .await
                .text()
                .starts_with("origin o1")
        );
    }
    let (status, v) = pops[0]
        .admin(Method::POST, "/regions/one/deactivate?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for (i, d) in pops.iter().enumerate() {
        let mut moved = false;
        for _ in 0..1000 {
            if fetch(d.addr("web"), "/x")
                .await
                .text()
                .starts_with("origin o2")
            {
                moved = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(moved, "pop {i} moved to region two");
    }
    // b's operator keeps region one: the local word wins, and /regions says whose it is.
    let (status, _) = pops[1]
        .admin(Method::POST, "/regions/one/activate", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        fetch(pops[1].addr("web"), "/x")
            .await
            .text()
            .starts_with("origin o1")
    );
    assert!(
        fetch(pops[2].addr("web"), "/x")
            .await
            .text()
            .starts_with("origin o2")
    );
    let regions = pops[1].admin(Method::GET, "/regions", "").await.1;
    let one = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "one")
        .unwrap()
        .clone();
    assert_eq!(one["active_by"], "local", "{one}");
    assert_eq!(one["fleet_override"], false, "{one}");

    // The fleet withdraws its word: c goes back to region one.
    let (status, _) = pops[2]
        .admin(Method::POST, "/regions/one/follow-fleet?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut back = false;
    for _ in 0..1000 {
        if fetch(pops[2].addr("web"), "/x")
            .await
            .text()
            .starts_with("origin o1")
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "c follows the fleet back to region one");
}

#[tokio::test]
async fn losing_nats_under_load_fails_no_request() {
    let mut nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = cdn(&o1, &o2).raw(&fleet(&nats, "a")).start().await;
    assert!(connected(&a).await);
    let web = a.addr("web");
    let load = tokio::spawn(async move {
        let c = http1();
        let (mut ok, mut failed) = (0u32, 0u32);
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut i = 0u32;
        while tokio::time::Instant::now() < until {
            i += 1;
            match get(
                &c,
                &format!("http://{web}/p{}", i % 50),
                &[("host", "cdn.test")],
            )
            .await
            {
                Ok(a) if a.status == StatusCode::OK => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.kill();
    let mut down = false;
    for _ in 0..500 {
        if value(&a.metrics().await, "streamgate_fleet_connected") == 0.0 {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "fleet_connected goes to 0");
    // A fleet purge without NATS: applied here, and the operator is told it did not go out.
    let (status, v) = a
        .admin(
            Method::POST,
            "/cache/purge",
            &json!({ "all": true, "scope": "fleet" }).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["fleet"]["published"], false);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 100, "{ok} requests");
    assert_eq!(failed, 0, "requests failed while NATS was down");

    nats.restart();
    assert!(connected(&a).await, "reconnects");
    let mut published = false;
    for _ in 0..500 {
        let (status, _) = a
            .admin(
                Method::POST,
                "/cache/purge",
                &json!({ "all": true, "scope": "fleet" }).to_string(),
            )
            .await;
        if status == StatusCode::OK {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "fleet purges work again after the reconnect");
}

/// A heartbeat speaks for the PoP its subject names: one published on another subject (by a
/// PoP, or anyone else allowed to publish) cannot show a dead PoP alive in `/fleet`.
#[tokio::test]
async fn a_heartbeat_on_another_pops_subject_is_not_believed() {
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = cdn(&o1, &o2).raw(&fleet(&nats, "a")).start().await;
    assert!(connected(&a).await, "a joins");
    let forged = |pop: &str| {
        json!({ "pop": pop, "region": "r", "sent_ms": 1, "config_version": 99 })
            .to_string()
            .into_bytes()
    };
    // First one on its own subject, which is believed: the test can see a heartbeat arrive.
    nats.publish("streamgate.heartbeat.real", &forged("real"));
    nats.publish("streamgate.heartbeat.evil", &forged("ghost"));
    let mut pops = Vec::new();
    for _ in 0..300 {
        let v = a.admin(Method::GET, "/fleet", "").await.1;
        pops = v["pops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pop"].as_str().unwrap_or("").to_string())
            .collect();
        if pops.iter().any(|p| p == "real") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pops.iter().any(|p| p == "real"), "{pops:?}");
    assert!(!pops.iter().any(|p| p == "ghost"), "{pops:?}");
    assert_eq!(
        value(
            &a.metrics().await,
            "streamgate_fleet_messages_total{kind=\"heartbeat\",result=\"malformed\"}"
        ),
        1.0
    );
}

/// A fleet purge from a PoP whose own purge journal cannot be written still reaches the other
/// PoPs (a takedown must not wait on one PoP's disk); the answer says this PoP's copy is not on
/// disk.
#[tokio::test]
async fn a_fleet_purge_is_published_when_the_local_journal_fails() {
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("points");
    let a = cdn(&o1, &o2)
        .snapshots(Snapshots::new(&dir).interval("1h"))
        .raw(&fleet(&nats, "a"))
        .start()
        .await;
    let b = cdn(&o1, &o2).raw(&fleet(&nats, "b")).start().await;
    assert!(connected(&a).await && connected(&b).await, "a and b join");
    fetch(b.addr("web"), OBJ).await;
    assert_eq!(
        fetch(b.addr("web"), OBJ).await.header("x-cache"),
        Some("HIT")
    );
    // a's snapshots directory is taken by a file: its journal cannot be written.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::write(&dir, "").unwrap();
    let (status, v) = fleet_purge(&a).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["journaled"], false, "{v}");
    assert_eq!(v["fleet"]["published"], true, "{v}");
    assert!(no_longer_a_hit(&b).await, "b applied the fleet purge");
}

/// The purge stream is bounded, as every PoP's NATS must hold it: whoever may publish on the
/// purge subject cannot make it grow without limit. A stream an older release made without
/// bounds gets them when a PoP joins, and a purge over 16 KiB never reaches a PoP.
#[tokio::test]
async fn the_purge_stream_is_bounded_even_when_an_older_release_made_it() {
    let nats = NatsServer::start();
    let unbounded = json!({
        "name": "STREAMGATE_PURGES",
        "subjects": ["streamgate.purge"],
        "storage": "file",
        "max_age": 86_400_000_000_000u64,
        "duplicate_window": 120_000_000_000u64,
    });
    let made = nats.request(
        "$JS.API.STREAM.CREATE.STREAMGATE_PURGES",
        unbounded.to_string().as_bytes(),
    );
    assert!(!made.contains("\"error\""), "{made}");
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = cdn(&o1, &o2).raw(&fleet(&nats, "a")).start().await;
    assert!(connected(&a).await, "a joins");
    let info: serde_json::Value =
        serde_json::from_str(&nats.request("$JS.API.STREAM.INFO.STREAMGATE_PURGES", b"")).unwrap();
    let c = &info["config"];
    assert_eq!(c["max_msg_size"], 16 * 1024, "{info}");
    assert_eq!(c["max_msgs"], 250_000, "{info}");
    assert_eq!(c["max_bytes"], -1, "no storage reserved: {info}");
    // Nothing else of the operator's stream changes.
    assert_eq!(c["max_age"], 86_400_000_000_000u64, "{info}");
    assert_eq!(c["discard"], "old", "{info}");

    fetch(a.addr("web"), OBJ).await;
    assert_eq!(
        fetch(a.addr("web"), OBJ).await.header("x-cache"),
        Some("HIT")
    );
    let big = json!({
        "id": "big", "from_pop": "x", "sent_ms": 1,
        "target": { "url": format!("http://cdn.test/{}", "a".repeat(17_000)) },
    });
    nats.publish("streamgate.purge", big.to_string().as_bytes());
    // The purge after it arrives; the large one never did.
    let small = json!({
        "id": "small", "from_pop": "x", "sent_ms": 1,
        "target": { "url": format!("http://cdn.test{OBJ}") },
    });
    nats.publish("streamgate.purge", small.to_string().as_bytes());
    assert!(no_longer_a_hit(&a).await);
    let m = a.metrics().await;
    let series = |result: &str| {
        format!("streamgate_fleet_messages_total{{kind=\"purge\",result=\"{result}\"}}")
    };
    assert_eq!(value(&m, &series("malformed")), 0.0, "{m}");
    assert_eq!(value(&m, &series("applied")), 1.0, "{m}");
}

/// Waits until `d` counted `n` purges dropped as `result`, then checks that `OBJ` is still a
/// hit there: none of them was applied.
async fn dropped_as(d: &TestDaemon, result: &str, n: f64) {
    let series = format!("streamgate_fleet_messages_total{{kind=\"purge\",result=\"{result}\"}}");
    let mut counted = false;
    for _ in 0..500 {
        if value(&d.metrics().await, &series) == n {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "{}", d.metrics().await);
    assert_eq!(
        fetch(d.addr("web"), OBJ).await.header("x-cache"),
        Some("HIT"),
        "a purge dropped as {result} was applied"
    );
}

/// With `[fleet] key_file`, a PoP applies only purges signed with the fleet's key: one from a
/// publisher without it, or with another key, is dropped and counted (`unsigned`), and the
/// fleet's own purges still reach every PoP. Without a key, whoever may publish on the purge
/// subject empties every PoP's cache.
#[tokio::test]
async fn with_a_fleet_key_only_signed_purges_are_applied() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let keyed = |pop: &str| format!("{}key_file = \"{}\"\n", fleet(&nats, pop), key.display());
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = cdn(&o1, &o2).raw(&keyed("a")).start().await;
    let b = cdn(&o1, &o2).raw(&keyed("b")).start().await;
    assert!(connected(&a).await && connected(&b).await, "both join");
    fetch(b.addr("web"), OBJ).await;
    assert_eq!(
        fetch(b.addr("web"), OBJ).await.header("x-cache"),
        Some("HIT")
    );

    let forged = |id: &str| {
        json!({ "id": id, "from_pop": "a", "sent_ms": 1, "target": { "url": format!("http://cdn.test{OBJ}") } })
            .to_string()
    };
    nats.publish("streamgate.purge", forged("unsigned").as_bytes());
    let wrong = "00".repeat(32);
    nats.publish_with_header(
        "streamgate.purge",
        Some(("Streamgate-Signature", &wrong)),
        forged("wrongly-signed").as_bytes(),
    );
    dropped_as(&b, "unsigned", 2.0).await;

    // A signed purge older than the stream keeps purges can only be a replay: refused.
    let signer = streamgate_fleet::signing::Key::read(&key).unwrap();
    let old = forged("captured");
    let sig = signer.sign("streamgate.purge", old.as_bytes());
    nats.publish_with_header(
        "streamgate.purge",
        Some(("Streamgate-Signature", &sig)),
        old.as_bytes(),
    );
    dropped_as(&b, "stale", 1.0).await;

    let (status, v) = fleet_purge(&a).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        no_longer_a_hit(&b).await,
        "the fleet's own purge is applied"
    );
}
