//! Operator words made fleet-wide through a real `nats-server -js` on loopback: a backend
//! drained and a primary chosen at one PoP apply at the others, a PoP's own word still wins and
//! `follow-fleet` gives the thing back; a region a later reload adds takes the word the fleet
//! said before; `PURGE` with `Purge-Scope: fleet` on the data path reaches every PoP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use streamgate_tests::nats::NatsServer;
use streamgate_tests::*;

// Generous: the loops end as soon as their condition holds; a loaded CI machine is slow.
const WAIT: Duration = Duration::from_secs(30);

fn fleet(nats: &NatsServer, pop: &str) -> String {
    format!(
        "[fleet]\nservers = [\"{}\"]\npop = \"{pop}\"\nregion = \"r-{pop}\"\nheartbeat = \"200ms\"\n",
        nats.url()
    )
}

/// PoP `name` of the fleet on `nats`: [`cdn`] with its `[fleet]` section.
fn pop_config(nats: &NatsServer, o1: &Origin, o2: &Origin, regions: &[&str], name: &str) -> Config {
    cdn(o1, o2, regions).raw(&fleet(nats, name))
}

/// [`pop_config`], started.
async fn pop(
    nats: &NatsServer,
    o1: &Origin,
    o2: &Origin,
    regions: &[&str],
    name: &str,
) -> TestDaemon {
    pop_config(nats, o1, o2, regions, name).start().await
}

/// Regions one (o1) and two (o2); the service uses `regions` in that order, failover.
fn cdn(o1: &Origin, o2: &Origin, regions: &[&str]) -> Config {
    let mut c = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("one").origins(&[o1]));
    if regions.contains(&"two") {
        c = c.region(Region::new("two").origins(&[o2]));
    }
    c.service(
        Service::new("cdn")
            .listeners(&["web"])
            .hosts(&["cdn.test"])
            .regions(regions)
            .region_policy("failover")
            .cache(Cache::new("64MiB").purge_from(&["127.0.0.1/32"])),
    )
}

async fn fetch(d: &TestDaemon, path: &str) -> Answer {
    get(&http1(), &d.url("web", path), &[("host", "cdn.test")])
        .await
        .unwrap()
}

/// Polls until `d` answers `/x` from `origin` (the origins answer "origin <name> ...").
async fn served_by(d: &TestDaemon, origin: &str) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if fetch(d, "/x")
            .await
            .text()
            .starts_with(&format!("origin {origin}"))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn connected(d: &TestDaemon) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if d.admin(Method::GET, "/fleet", "").await.1["connected"] == true {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `/regions`' entry for `name`.
fn region(regions: &Value, name: &str) -> Value {
    regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `/backends`' entry for `address`.
async fn backend(d: &TestDaemon, address: &str) -> Value {
    let v = d.admin(Method::GET, "/backends", "").await.1;
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == address)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn drains_and_primaries_said_fleet_wide_apply_at_every_pop_and_a_local_word_wins() {
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = pop(&nats, &o1, &o2, &["one", "two"], "a").await;
    let b = pop(&nats, &o1, &o2, &["one", "two"], "b").await;
    assert!(connected(&a).await && connected(&b).await);
    assert!(served_by(&a, "o1").await && served_by(&b, "o1").await);
    let o1_addr = o1.addr.to_string();
    let body = json!({ "address": o1_addr }).to_string();

    // a drains o1 at every PoP: both move to region two.
    let (status, v) = a
        .admin(Method::POST, "/backends/drain?scope=fleet", &body)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "fleet");
    assert!(served_by(&a, "o2").await && served_by(&b, "o2").await);
    let at_b = backend(&b, &o1_addr).await;
    assert_eq!(
        (&at_b["drained"], &at_b["drained_by"]),
        (&json!(true), &json!("fleet")),
        "{at_b}"
    );

    // b's operator undrains it here: the local word wins at b only.
    let (status, v) = b.admin(Method::POST, "/backends/undrain", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["drained"], &v["drained_by"]),
        (&json!(false), &json!("local")),
        "{v}"
    );
    assert!(served_by(&b, "o1").await);
    assert!(fetch(&a, "/x").await.text().starts_with("origin o2"));
    // b follows the fleet again: drained.
    let (status, v) = b.admin(Method::POST, "/backends/follow-fleet", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["drained_by"], "fleet", "{v}");
    assert!(served_by(&b, "o2").await);
    // The fleet withdraws its drain: both come back.
    let (status, v) = b
        .admin(Method::POST, "/backends/follow-fleet?scope=fleet", &body)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(served_by(&a, "o1").await && served_by(&b, "o1").await);

    // A primary chosen fleet-wide: region two leads at both, and /regions says whose word.
    let (status, v) = b
        .admin(
            Method::POST,
            "/services/cdn/primary?scope=fleet",
            r#"{"region": "two"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(served_by(&a, "o2").await && served_by(&b, "o2").await);
    let two = region(&a.admin(Method::GET, "/regions", "").await.1, "two")["services"][0].clone();
    assert_eq!(
        (&two["primary"], &two["primary_by"]),
        (&json!(true), &json!("fleet")),
        "{two}"
    );
    // a's own primary wins at a.
    let (status, v) = a
        .admin(
            Method::POST,
            "/services/cdn/primary",
            r#"{"region": "one"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["primary_by"], "local", "{v}");
    assert!(served_by(&a, "o1").await);
    assert!(fetch(&b, "/x").await.text().starts_with("origin o2"));
    let fleet = a.admin(Method::GET, "/fleet", "").await.1;
    assert_eq!(fleet["overrides"]["primaries"]["cdn"], "two", "{fleet}");

    // Words a PoP cannot take: a bad scope, a region the service does not use.
    let (status, _) = a
        .admin(Method::POST, "/backends/drain?scope=planet", &body)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = a
        .admin(
            Method::POST,
            "/services/cdn/primary?scope=fleet",
            r#"{"region": "mars"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_region_a_later_reload_adds_takes_the_word_the_fleet_said_before() {
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = pop(&nats, &o1, &o2, &["one", "two"], "a").await;
    // b starts without region two.
    let b = pop(&nats, &o1, &o2, &["one"], "b").await;
    assert!(connected(&a).await && connected(&b).await);
    let (status, v) = a
        .admin(Method::POST, "/regions/two/deactivate?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.admin(Method::GET, "/fleet", "").await.1["overrides"]["regions"]["two"] != false {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b hears the fleet's word on region two"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // b's config now has region two, first: the fleet's word keeps it out from the start.
    b.rewrite_config(&pop_config(&nats, &o1, &o2, &["two", "one"], "b").to_toml());
    let (status, v) = b.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let two = region(&b.admin(Method::GET, "/regions", "").await.1, "two");
    assert_eq!(
        (&two["active"], &two["active_by"]),
        (&json!(false), &json!("fleet")),
        "{two}"
    );
    for _ in 0..20 {
        let answer = fetch(&b, "/x").await.text();
        assert!(answer.starts_with("origin o1"), "{answer}");
    }
}

async fn purge(d: &TestDaemon, path: &str, scope: &str) -> (StatusCode, Value) {
    let a = send(
        &http1(),
        Method::from_bytes(b"PURGE").unwrap(),
        &d.url("web", path),
        &[("host", "cdn.test"), ("purge-scope", scope)],
        Bytes::new(),
    )
    .await
    .unwrap();
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn purge_with_purge_scope_fleet_reaches_every_pop() {
    const OBJ: &str = "/c/page?cc=max-age%3D600";
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = pop(&nats, &o1, &o2, &["one"], "a").await;
    let b = pop(&nats, &o1, &o2, &["one"], "b").await;
    let alone = cdn(&o1, &o2, &["one"]).start().await;
    assert!(connected(&a).await && connected(&b).await);
    for d in [&a, &b, &alone] {
        fetch(d, OBJ).await;
        assert_eq!(fetch(d, OBJ).await.header("x-cache"), Some("HIT"));
    }
    let (status, v) = purge(&a, OBJ, "planet").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(fetch(&a, OBJ).await.header("x-cache"), Some("HIT"));

    let (status, v) = purge(&a, OBJ, "fleet").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["purged"], &v["fleet"]["published"]),
        (&json!(1), &json!(true)),
        "{v}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while fetch(&b, OBJ).await.header("x-cache") == Some("HIT") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b applies the PURGE made fleet-wide at a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A daemon that stands alone purges here and says the fleet was not told.
    let (status, v) = purge(&alone, OBJ, "fleet").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["purged"], 1, "{v}");

    // A service without a cache forwards PURGE, but not the client's word on its scope.
    let front = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("one").origins(&[&o1]))
        .service(Service::new("pass").listeners(&["web"]).regions(&["one"]))
        .start()
        .await;
    let (status, _) = purge(&front, "/p", "fleet").await;
    assert_eq!(status, StatusCode::OK);
    let seen = o1.last_headers();
    assert_eq!(
        seen.get("host").map(|v| v.to_str().unwrap()),
        Some("cdn.test"),
        "the origin got the PURGE"
    );
    assert!(seen.get("purge-scope").is_none(), "{seen:?}");
}

#[tokio::test]
async fn a_pop_restarted_while_nats_is_down_keeps_the_fleets_last_words() {
    const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");
    let mut nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let a = pop(&nats, &o1, &o2, &["one", "two"], "a").await;
    let store = tempfile::tempdir().unwrap();
    let c_text = pop_config(&nats, &o1, &o2, &["one", "two"], "c")
        .snapshots(Snapshots::new(store.path()).interval("1h"))
        .to_toml();
    let mut c = DaemonProcess::start(BIN, &c_text, &["web", "admin"]);
    assert!(connected(&a).await);
    let (status, v) = a
        .admin(Method::POST, "/regions/one/deactivate?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    holds_the_word_against_one(&c, "c hears the word").await;
    c.signal("TERM");
    assert!(c.wait_exit(WAIT).is_some(), "c stops");
    nats.kill();

    let c = DaemonProcess::start(BIN, &c_text, &["web", "admin"]);
    let one = region(&c.admin(Method::GET, "/regions", "").await.1, "one");
    assert_eq!(
        (&one["active"], &one["active_by"]),
        (&json!(false), &json!("fleet")),
        "{one}"
    );
    let answer = get(
        &http1(),
        &format!("http://{}/x", c.addr("web")),
        &[("host", "cdn.test")],
    )
    .await
    .unwrap()
    .text();
    assert!(answer.starts_with("origin o2"), "{answer}");
}

/// Waits (up to `WAIT`) until `c`'s `/fleet` shows the fleet's word deactivating region
/// "one"; `why` names the wait when it fails.
async fn holds_the_word_against_one(c: &DaemonProcess, why: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.admin(Method::GET, "/fleet", "").await.1["overrides"]["regions"]["one"] != false {
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fleet word a PoP kept across a restart (saved beside its recovery points) goes when the
/// bucket no longer holds it: withdrawn while the PoP was away, or lost with the bucket (a
/// NATS cluster replaced, a bucket made anew). It stayed in force for good before.
#[tokio::test]
async fn a_word_the_bucket_no_longer_holds_is_withdrawn_when_a_pop_rejoins() {
    const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");
    let nats = NatsServer::start();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let store = tempfile::tempdir().unwrap();
    let c_text = pop_config(&nats, &o1, &o2, &["one", "two"], "c")
        .snapshots(Snapshots::new(store.path()).interval("1h"))
        .to_toml();
    let mut c = DaemonProcess::start(BIN, &c_text, &["web", "admin"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.admin(Method::GET, "/fleet", "").await.1["connected"] != true {
        assert!(tokio::time::Instant::now() < deadline, "c joins");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, v) = c
        .admin(Method::POST, "/regions/one/deactivate?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    holds_the_word_against_one(&c, "c holds the word").await;
    c.signal("TERM");
    assert!(c.wait_exit(WAIT).is_some(), "c stops");
    // The bucket is lost while c is down.
    let gone = nats.request("$JS.API.STREAM.DELETE.KV_streamgate_overrides", b"");
    assert!(gone.contains("\"success\":true"), "{gone}");

    let c = DaemonProcess::start(BIN, &c_text, &["web", "admin"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let one = region(&c.admin(Method::GET, "/regions", "").await.1, "one");
        if one["active"] == json!(true) {
            assert_ne!(one["active_by"], json!("fleet"), "{one}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost word is still in force: {one}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = get(
        &http1(),
        &format!("http://{}/x", c.addr("web")),
        &[("host", "cdn.test")],
    )
    .await
    .unwrap()
    .text();
    assert!(answer.starts_with("origin o1"), "{answer}");
}

/// Waits (up to `WAIT`) until `d` counts `n` fleet words refused as `result`.
async fn words_refused(d: &TestDaemon, result: &str, n: f64) {
    let series =
        format!("streamgate_fleet_messages_total{{kind=\"override\",result=\"{result}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&d.metrics().await, &series) != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is not {n}: {}",
            d.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `[fleet] key_file`, a PoP applies only fleet words signed with the fleet's key. Before,
/// words were not signed: whoever could write the bucket (a leaked credential, a permission
/// too wide) took a region out of service, or drained a backend, at every PoP. An unsigned
/// word, one signed for another key, a deletion (it carries no signature) and a signed word
/// put again after the fleet said a newer one (a replay) are all refused and counted, and the
/// word in force stays; the fleet's own words, withdrawals included, still apply.
#[tokio::test]
async fn with_a_fleet_key_only_signed_words_apply() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let (o1, o2) = (Origin::start("o1").await, Origin::start("o2").await);
    let keyed = |pop: &str| {
        cdn(&o1, &o2, &["one", "two"]).raw(&format!(
            "{}key_file = \"{}\"\n",
            fleet(&nats, pop),
            key.display()
        ))
    };
    let a = keyed("a").start().await;
    let b = keyed("b").start().await;
    assert!(connected(&a).await && connected(&b).await, "both join");
    assert!(served_by(&b, "o1").await);

    let subject = "$KV.streamgate_overrides.region.one";
    let out = br#"{"active":false,"from_pop":"a","sent_ms":1}"#;
    nats.publish(subject, out);
    words_refused(&b, "unsigned", 1.0).await;
    // Signed, but for another key (a backend's): not moved to this one.
    let signer = streamgate_fleet::signing::Key::read(&key).unwrap();
    let moved = streamgate_fleet::Word::Region("one".into(), Some(false)).value(
        "a",
        1,
        Some(streamgate_fleet::word::Signer {
            key: &signer,
            subject: "$KV.streamgate_overrides.region.two",
            after: 0,
        }),
    );
    nats.publish(subject, &moved.unwrap());
    words_refused(&b, "unsigned", 2.0).await;
    assert!(served_by(&b, "o1").await, "no forged word applied");

    // The fleet's own word applies, and its withdrawal (a signed value, not a deletion).
    let (status, v) = a
        .admin(Method::POST, "/regions/one/deactivate?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(served_by(&b, "o2").await, "the fleet's word applies");
    // A deletion of the key: anyone's, so not a withdrawal.
    nats.publish_with_header(subject, Some(("KV-Operation", "DEL")), b"");
    words_refused(&b, "unsigned", 3.0).await;
    assert_eq!(
        b.admin(Method::GET, "/fleet", "").await.1["overrides"]["regions"]["one"],
        false,
        "the deletion withdrew the fleet's word"
    );
    let (status, v) = a
        .admin(Method::POST, "/regions/one/follow-fleet?scope=fleet", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(served_by(&b, "o1").await, "the fleet's withdrawal applies");

    // The first word, as it was signed (over no earlier revision), put again: a replay.
    let replay = streamgate_fleet::Word::Region("one".into(), Some(false)).value(
        "a",
        2,
        Some(streamgate_fleet::word::Signer {
            key: &signer,
            subject,
            after: 0,
        }),
    );
    nats.publish(subject, &replay.unwrap());
    words_refused(&b, "stale", 1.0).await;
    let answer = fetch(&b, "/x").await.text();
    assert!(
        answer.starts_with("origin o1"),
        "the replay applied: {answer}"
    );
    // The replay is now the bucket's latest value: a PoP that joins again (here, its purge
    // consumer deleted under it) reads it again, and still refuses it.
    let gone = nats.request("$JS.API.CONSUMER.DELETE.STREAMGATE_PURGES.b", b"");
    assert!(gone.contains("\"success\":true"), "{gone}");
    words_refused(&b, "stale", 2.0).await;
    assert!(connected(&b).await, "b joins again");
    let answer = fetch(&b, "/x").await.text();
    assert!(
        answer.starts_with("origin o1"),
        "the replay applied on reconnect: {answer}"
    );
}
