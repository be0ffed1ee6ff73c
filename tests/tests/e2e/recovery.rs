//! Disaster recovery end to end: cache recovery points written by the real daemon (on a graceful
//! stop, on demand, every interval), checked by `streamgate snapshot verify`, and restored by the
//! next start so a restart costs the origin nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use streamgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");

fn config(origin: &Origin, snapshots: Option<Snapshots>) -> Config {
    let c = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("origin").backends(&[(origin, 1)]))
        .service(
            Service::new("cdn")
                .listeners(&["web"])
                .hosts(&["cdn.example.com"])
                .regions(&["origin"])
                .cache(Cache::new("64MiB")),
        );
    match snapshots {
        Some(s) => c.snapshots(s),
        None => c,
    }
}

async fn fetch(url: &str) -> Answer {
    get(&http1(), url, &[("host", "cdn.example.com")])
        .await
        .unwrap()
}

async fn fetch_in_german(url: &str) -> Answer {
    get(
        &http1(),
        url,
        &[("host", "cdn.example.com"), ("accept-language", "de")],
    )
    .await
    .unwrap()
}

fn x_cache(a: &Answer) -> &str {
    a.header("x-cache").unwrap_or("-")
}

fn points(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    v.sort();
    v
}

fn verify(path: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["snapshot", "verify"])
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_cached_object() {
    let origin = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let text = config(&origin, Some(Snapshots::new(snaps.path()).interval("1h"))).to_toml();
    let mut first = DaemonProcess::start(BIN, &text, &["web", "admin"]);
    let web = first.addr("web");
    // 40 small objects, one of 300 KiB, and one with two Vary variants.
    let paths: Vec<String> = (0..40)
        .map(|i| format!("/c/obj{i}?cc=max-age%3D600"))
        .chain([
            "/c/big?cc=max-age%3D600&size=307200".to_string(),
            "/c/v?cc=max-age%3D600&vary=accept-language".to_string(),
        ])
        .collect();
    let mut bodies = Vec::new();
    for p in &paths {
        let a = fetch(&format!("http://{web}{p}")).await;
        assert_eq!((a.status, x_cache(&a)), (StatusCode::OK, "MISS"), "{p}");
        bodies.push(a.body);
    }
    let german = fetch_in_german(&format!(
        "http://{web}/c/v?cc=max-age%3D600&vary=accept-language"
    ))
    .await;
    assert_eq!(x_cache(&german), "MISS");
    assert_eq!(origin.hits(), 43);

    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status:?}");
    let written = points(snaps.path());
    assert_eq!(written.len(), 1, "one recovery point at the stop");
    let out = verify(snaps.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK (42 URLs, 43 objects"), "{stdout}");

    let second = DaemonProcess::start(BIN, &text, &["web", "admin"]);
    let restored = second
        .log_json()
        .into_iter()
        .find(|l| l["message"] == "cache restored from a recovery point")
        .expect("the start logs the restore");
    assert_eq!(restored["objects"], 42, "{restored}");
    let web = second.addr("web");
    for (p, body) in paths.iter().zip(&bodies) {
        let a = fetch(&format!("http://{web}{p}")).await;
        assert_eq!((a.status, x_cache(&a)), (StatusCode::OK, "HIT"), "{p}");
        assert_eq!(&a.body, body, "{p}: the stored bytes, not a new fetch");
        assert!(a.header("age").is_some());
    }
    let german_again = fetch_in_german(&format!(
        "http://{web}/c/v?cc=max-age%3D600&vary=accept-language"
    ))
    .await;
    assert_eq!(x_cache(&german_again), "HIT");
    assert_eq!(german_again.body, german.body);
    assert_eq!(origin.hits(), 43, "the restart cost the origin nothing");
}

#[tokio::test]
async fn points_on_demand_are_listed_kept_to_the_limit_and_a_damaged_one_is_skipped() {
    let origin = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let text = config(
        &origin,
        // Full points only (the count alone decides what is kept; chains: recovery_chain.rs).
        Some(
            Snapshots::new(snaps.path())
                .interval("1h")
                .keep(2)
                .max_increments(0),
        ),
    );
    let d = text.start().await;
    let url = |p: &str| d.url("web", p);

    assert_eq!(x_cache(&fetch(&url("/c/a?cc=max-age%3D600")).await), "MISS");
    let (status, one) = d.admin(Method::POST, "/snapshots", "").await;
    assert_eq!(status, StatusCode::CREATED, "{one}");
    assert_eq!(one["objects"], 1);
    assert_eq!(x_cache(&fetch(&url("/c/b?cc=max-age%3D600")).await), "MISS");
    let (_, two) = d.admin(Method::POST, "/snapshots", "").await;
    assert_eq!(two["objects"], 2);
    let (_, three) = d.admin(Method::POST, "/snapshots", "").await;
    assert_eq!(three["objects"], 2);

    let (status, list) = d.admin(Method::GET, "/snapshots", "").await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["recovery_points"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "keep = 2: {list}");
    assert_eq!(listed[0]["file"], three["file"], "newest first");
    assert_eq!(listed[1]["file"], two["file"]);
    assert_eq!(points(snaps.path()).len(), 2, "the oldest file was deleted");
    let metrics = d.metrics().await;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("streamgate_recovery_point_age_seconds "))
        .expect("the age is exported")
        .parse()
        .unwrap();
    assert!(age < 5.0, "a point was just written: {age}");

    // Damage the newest point: one flipped byte in the last object.
    let newest = snaps.path().join(three["file"].as_str().unwrap());
    let mut raw = std::fs::read(&newest).unwrap();
    let at = raw.len() - 3;
    raw[at] ^= 0x40;
    std::fs::write(&newest, raw).unwrap();
    let out = verify(snaps.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(three["file"].as_str().unwrap()) && stderr.contains("checksum mismatch"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(two["file"].as_str().unwrap()));

    // A new daemon on the same directory falls back to the older, intact point.
    let hits = origin.hits();
    let again = text.start().await;
    let a = fetch(&again.url("web", "/c/a?cc=max-age%3D600")).await;
    assert_eq!(x_cache(&a), "HIT");
    let b = fetch(&again.url("web", "/c/b?cc=max-age%3D600")).await;
    assert_eq!(x_cache(&b), "HIT");
    assert_eq!(origin.hits(), hits);
}

#[tokio::test]
async fn objects_that_expired_while_down_are_not_restored() {
    let origin = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let text = config(&origin, Some(Snapshots::new(snaps.path())));
    let d = text.start().await;
    fetch(&d.url("web", "/c/short?cc=max-age%3D1")).await;
    fetch(&d.url("web", "/c/long?cc=max-age%3D600")).await;
    let (status, point) = d.admin(Method::POST, "/snapshots", "").await;
    assert_eq!(
        (status, &point["objects"]),
        (StatusCode::CREATED, &Value::from(2))
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = text.start().await;
    let long = fetch(&again.url("web", "/c/long?cc=max-age%3D600")).await;
    assert_eq!(x_cache(&long), "HIT");
    let age: u64 = long.header("age").unwrap().parse().unwrap();
    assert!(
        age >= 2,
        "Age counts the time since the origin answered: {age}"
    );
    let short = fetch(&again.url("web", "/c/short?cc=max-age%3D1")).await;
    assert_eq!(x_cache(&short), "MISS");
}

#[tokio::test]
async fn without_the_section_the_endpoints_say_how_to_enable_it() {
    let origin = Origin::start("o").await;
    let text = config(&origin, None).to_toml();
    assert!(!text.contains("[snapshots]"));
    let d = TestDaemon::start(&text).await;
    for method in [Method::GET, Method::POST] {
        let (status, body) = d.admin(method, "/snapshots", "").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body["error"].as_str().unwrap().contains("[snapshots]"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn points_are_written_every_interval() {
    let origin = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let text = config(
        &origin,
        Some(
            Snapshots::new(snaps.path())
                .interval("1s")
                .keep(3)
                .max_increments(0),
        ),
    );
    let d = text.start().await;
    fetch(&d.url("web", "/c/x?cc=max-age%3D600")).await;
    let dir = snaps.path().to_path_buf();
    assert!(
        eventually(Duration::from_secs(10), || points(&dir).len() == 3).await,
        "three points within a few intervals"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(points(&dir).len(), 3, "never more than keep");
    let out = verify(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn operator_overrides_survive_a_restart() {
    let (a1, a2, b) = (
        Origin::start("a1").await,
        Origin::start("a2").await,
        Origin::start("b").await,
    );
    let snaps = tempfile::tempdir().unwrap();
    let text = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("a").backends(&[(&a1, 1), (&a2, 1)]))
        .region(Region::new("b").backends(&[(&b, 1)]))
        .region(Region::new("spare").backends(&[(&b, 1)]))
        .service(
            Service::new("app")
                .listeners(&["web"])
                .regions(&["a", "b"])
                .region_policy("failover"),
        )
        .snapshots(Snapshots::new(snaps.path()));
    let post = |d: &TestDaemon, path: &str, body: &str| {
        let (url, body) = (d.admin_url(path), body.to_string());
        async move {
            let (status, v) = admin_call(Method::POST, &url, &[], &body).await;
            assert_eq!(status, StatusCode::OK, "{v}");
        }
    };
    let first = text.start().await;
    post(
        &first,
        "/backends/drain",
        &format!(r#"{{"address": "{}"}}"#, a1.addr),
    )
    .await;
    post(&first, "/services/app/primary", r#"{"region": "b"}"#).await;
    post(&first, "/regions/spare/deactivate", "").await;
    // Saved off the request path, the latest state after the burst.
    let state = snaps.path().join("operator-state.json");
    let saved = || -> Value {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = saved();
            s["drained"] == serde_json::json!([a1.addr.to_string()])
                && s.to_string().contains("spare")
        })
        .await,
        "{}",
        saved()
    );
    drop(first);

    let second = text.start().await;
    let (_, backends) = second.admin(Method::GET, "/backends", "").await;
    let drained: Vec<&str> = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["drained"] == true)
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(drained, vec![a1.addr.to_string()]);
    let (_, regions) = second.admin(Method::GET, "/regions", "").await;
    let region = |name: &str| {
        regions["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(region("spare")["active"], false);
    assert_eq!(region("b")["services"][0]["primary"], true);
    assert_eq!(region("a")["services"][0]["primary"], false);
    // Traffic follows: the chosen primary region answers.
    let answer = get(&http1(), &second.url("web", "/"), &[]).await.unwrap();
    assert_eq!(answer.text(), "origin b /");

    // Undoing an override is kept too.
    post(
        &second,
        "/backends/undrain",
        &format!(r#"{{"address": "{}"}}"#, a1.addr),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || saved()["drained"]
            == serde_json::json!([]))
        .await,
        "{}",
        saved()
    );
    drop(second);
    let third = text.start().await;
    let (_, backends) = third.admin(Method::GET, "/backends", "").await;
    assert!(
        backends["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["drained"] == false),
        "{backends}"
    );
}

/// An operator's drain that cannot be saved (the snapshots directory is gone, or full) is in
/// force, and the answer says a restart would lose it, rather than a plain 200.
#[tokio::test]
async fn a_word_that_cannot_be_saved_is_answered_so() {
    let b = Origin::start("b").await;
    let snaps = tempfile::tempdir().unwrap();
    let dir = snaps.path().join("points");
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("a").backends(&[(&b, 1)]))
        .service(Service::new("app").listeners(&["web"]).regions(&["a"]))
        .snapshots(Snapshots::new(&dir))
        .start()
        .await;
    // The directory's place is taken by a file: nothing can be saved in it.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::write(&dir, "").unwrap();
    let body = format!(r#"{{"address": "{}"}}"#, b.addr);
    let (status, v) = admin_call(Method::POST, &d.admin_url("/backends/drain"), &[], &body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(v.to_string().contains("restart would lose it"), "{v}");
    // In force all the same.
    let (_, backends) = admin_call(Method::GET, &d.admin_url("/backends"), &[], "").await;
    assert!(
        backends.to_string().contains("\"drained\":true"),
        "{backends}"
    );
    // Saved again once the directory is back.
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let (status, v) = admin_call(Method::POST, &d.admin_url("/backends/drain"), &[], &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(dir.join("operator-state.json").exists());
}

/// A purge whose journal write hangs (a disk that stopped answering: here the journal is a
/// FIFO nobody reads, so opening it blocks for ever) is answered within a bound, applied, and
/// said not to be on disk, rather than never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_answered_when_the_journal_disk_hangs() {
    let origin = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let d = config(&origin, Some(Snapshots::new(snaps.path()).interval("1h")))
        .start()
        .await;
    let url = d.url("web", "/c/hung?cc=max-age%3D600");
    fetch(&url).await;
    assert_eq!(x_cache(&fetch(&url).await), "HIT");
    let fifo = snaps.path().join("purges.journal");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let body = r#"{"url": "http://cdn.example.com/c/hung?cc=max-age%3D600"}"#;
    let at = d.admin_url("/cache/purge");
    let purge = admin_call(Method::POST, &at, &[], body);
    let (status, v) = tokio::time::timeout(Duration::from_secs(30), purge)
        .await
        .expect("the purge was never answered");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["journaled"], false, "{v}");
    assert_eq!(x_cache(&fetch(&url).await), "MISS", "applied all the same");
    // While the disk still hangs, the next purge does not wait the 5 s again (a fleet applies
    // its purges one after another, and would fall to one every 5 s).
    let again = admin_call(Method::POST, &at, &[], body);
    let (status, v) = tokio::time::timeout(Duration::from_secs(3), again)
        .await
        .expect("the second purge waited for the hung disk again");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["journaled"], false, "{v}");
    // The writer is still stuck: release it so the test's directory can go.
    let _ = std::fs::OpenOptions::new().read(true).open(&fifo);
}

/// A purge whose journal line never reached the disk (the journal's path is a directory here,
/// so every write fails) is not undone by going back to a point older than it: the running
/// daemon remembers it and applies it after the restore, as it does the journal's lines.
#[tokio::test]
async fn a_restore_keeps_a_purge_the_journal_could_not_write() {
    let origin = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let d = config(&origin, Some(Snapshots::new(snaps.path()).interval("1h")))
        .start()
        .await;
    let gone = d.url("web", "/c/gone?cc=max-age%3D600");
    let kept = d.url("web", "/c/kept?cc=max-age%3D600");
    fetch(&gone).await;
    fetch(&kept).await;
    let (status, point) = d.admin(Method::POST, "/snapshots", "").await;
    assert_eq!(status, StatusCode::CREATED, "{point}");
    let journal = snaps.path().join("purges.journal");
    let _ = std::fs::remove_file(&journal);
    std::fs::create_dir(&journal).unwrap();
    let body = r#"{"url": "http://cdn.example.com/c/gone?cc=max-age%3D600"}"#;
    let (status, v) = d.admin(Method::POST, "/cache/purge", body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["journaled"], false, "{v}");

    let ask = serde_json::json!({"point": point["file"]}).to_string();
    let (status, r) = d.admin(Method::POST, "/snapshots/restore", &ask).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        x_cache(&fetch(&kept).await),
        "HIT",
        "the point came back: {r}"
    );
    assert_eq!(
        x_cache(&fetch(&gone).await),
        "MISS",
        "the restore brought a purged object back"
    );
}
