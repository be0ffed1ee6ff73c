//! Reloads are exact: everything is checked before anything is swapped, every key that can take
//! effect does, and the keys that need a restart are named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use streamgate_tests::tls::{make_cert, server_tls, write_cert};
use streamgate_tests::*;

fn service(o: &Origin) -> Config {
    service_on(o, Listener::http("web"))
}

fn service_on(o: &Origin, listener: Listener) -> Config {
    Config::new()
        .listener(listener)
        .region(Region::new("r").backends(&[(o, 1)]))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
}

/// Writes `text` as the daemon's file and reloads through the admin API.
async fn reload(d: &TestDaemon, text: &str, token: Option<&str>) -> (StatusCode, Value) {
    d.rewrite_config(text);
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    admin_call(Method::POST, &d.admin_url("/reload"), &headers, "").await
}

async fn config_status(d: &TestDaemon) -> Value {
    d.admin(Method::GET, "/config", "").await.1
}

#[tokio::test]
async fn a_changed_access_log_takes_effect_on_reload() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let log = |p: &std::path::Path, format: &str| {
        service(&o).access_log(AccessLog::new(p).format(format))
    };
    let d = log(&first, "json").start().await;
    get(&http1(), &d.url("web", "/one"), &[]).await.unwrap();
    let (status, body) = reload(&d, &log(&second, "$status $path").to_toml(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    get(&http1(), &d.url("web", "/two"), &[]).await.unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || read(&second)
            .contains("200 /two"))
        .await,
        "the new file and format: {:?}",
        read(&second)
    );
    assert!(read(&first).contains("\"/one\""), "{}", read(&first));
    assert!(
        !read(&first).contains("/two"),
        "the old file is no longer written"
    );
    assert_eq!(body["needs_restart"], serde_json::json!([]));
}

#[tokio::test]
async fn settings_read_at_start_are_named_in_the_reload_and_in_config() {
    let o = Origin::start("o").await;
    let d = service(&o).start().await;
    let changed = service_on(&o, Listener::http("web").max_connections(5).max_headers(64));
    let (status, body) = reload(&d, &changed.to_toml(), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let named = serde_json::json!([
        "listeners \"web\" max_connections",
        "listeners \"web\" max_headers"
    ]);
    assert_eq!(body["needs_restart"], named);
    assert_eq!(config_status(&d).await["needs_restart"], named);
}

#[tokio::test]
async fn a_reload_that_fails_a_check_swaps_nothing_not_even_the_geo_database() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(&["a.example"]);
    let (cp, kp) = write_cert(dir.path(), "a", &cert);
    let text = |db: &str| {
        Config::new()
            .geo(Geo::fixture(&format!("geo/{db}")))
            .listener(Listener::https("tls", &[(&cp, &kp)]))
            .listener(Listener::http("web"))
            .region(Region::new("r").backends(&[(&o, 1)]))
            .service(Service::new("s").listeners(&["web", "tls"]).regions(&["r"]))
            .to_toml()
    };
    let d = TestDaemon::start(&text("streamgate-synthetic-city.mmdb")).await;
    let before = config_status(&d).await["geo_database"]["path"].clone();
    // Another valid database, but the certificate file is now garbage.
    std::fs::write(&cp, "not a certificate").unwrap();
    let (status, body) = reload(&d, &text("GeoLite2-City-Test.mmdb"), None).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    let after = config_status(&d).await;
    assert_eq!(
        after["geo_database"]["path"], before,
        "the database was swapped: {after}"
    );
    assert!(
        after["last_reload_error"].as_str().unwrap().contains("tls"),
        "{after}"
    );
}

#[tokio::test]
async fn a_rotated_admin_token_takes_effect_on_reload() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, "first-token").unwrap();
    let text = service(&o)
        .admin(Admin::new().token_file(&token_path))
        .to_toml();
    let d = TestDaemon::start(&text).await;
    let regions = |t: &'static str| {
        let url = d.admin_url("/regions");
        async move {
            get(&http1(), &url, &[("authorization", &format!("Bearer {t}"))])
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(regions("first-token").await, StatusCode::OK);
    std::fs::write(&token_path, "second-token").unwrap();
    let (status, body) = reload(&d, &text, Some("first-token")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(regions("second-token").await, StatusCode::OK);
    assert_eq!(regions("first-token").await, StatusCode::UNAUTHORIZED);
}

/// A reload that drops the admin token while the API listens off loopback is refused: its move
/// to loopback waits for a restart, and the API would be open, without a token, where it
/// listens today.
#[tokio::test]
async fn a_reload_cannot_drop_the_token_of_an_admin_api_off_loopback() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, "the-token").unwrap();
    // Every address, reached here on loopback only.
    let admin = Admin::new().set("listen", "0.0.0.0:0");
    let text = service(&o).admin(admin.token_file(&token_path)).to_toml();
    let d = TestDaemon::start(&text).await;
    let port = d.daemon.admin_addr().port();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let moved = service(&o)
        .admin(Admin::new().set("listen", "127.0.0.1:0"))
        .to_toml();
    d.rewrite_config(&moved);
    let auth = [("authorization", "Bearer the-token")];
    let (status, body) = admin_call(Method::POST, &url("/reload"), &auth, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("admin.token_file"), "{body}");
    let open = get(&http1(), &url("/regions"), &[]).await.unwrap();
    assert_eq!(open.status, StatusCode::UNAUTHORIZED, "{}", open.text());
    let with = get(&http1(), &url("/regions"), &auth).await.unwrap();
    assert_eq!(with.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operator_changes_leave_one_whole_state_file() {
    let o = Origin::start("o").await;
    let snaps = tempfile::tempdir().unwrap();
    let mut region = Region::new("r").address(o.addr);
    for i in 0..20 {
        region = region.address(format!("127.0.0.1:{}", 20000 + i));
    }
    let text = Config::new()
        .listener(Listener::http("web"))
        .region(region)
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
        .snapshots(Snapshots::new(snaps.path()));
    let d = std::sync::Arc::new(text.start().await);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let body = format!("{{\"address\": \"127.0.0.1:{}\"}}", 20000 + i);
                d.admin(Method::POST, "/backends/drain", &body).await.0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let state = snaps.path().join("operator-state.json");
    let drained = || -> usize {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["drained"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(5), || drained() == 20).await,
        "{} drained in the file",
        drained()
    );
    // Files only: config/ holds the last known good configs. The writer may still be writing
    // the latest state once more (its temporary file exists until the rename): a temporary
    // file left behind never goes.
    let names = || -> Vec<String> {
        std::fs::read_dir(snaps.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let settled = eventually(Duration::from_secs(5), || {
        names() == ["operator-state.json"]
    })
    .await;
    assert!(settled, "no temporary file left: {:?}", names());
}

/// A backend removed by a reload (or dropped from a DNS name's answer, which rebuilds the table
/// the same way) takes its `health_checks_total` series with it: a name whose answers keep
/// changing would otherwise grow the metrics without bound.
#[tokio::test]
async fn a_removed_backend_takes_its_health_series_with_it() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let with = |origins: &[&Origin]| {
        Config::new()
            .listener(Listener::http("web"))
            .region(Region::new("r").origins(origins))
            .service(
                Service::new("s")
                    .listeners(&["web"])
                    .regions(&["r"])
                    .health(
                        Health::new()
                            .kind("http")
                            .path("/healthz")
                            .interval("100ms")
                            .timeout("100ms"),
                    ),
            )
            .to_toml()
    };
    let d = TestDaemon::start(&with(&[&a, &b])).await;
    let probed = |metrics: &str, o: &Origin| {
        let label = format!("backend=\"{}\"", o.addr);
        metrics
            .lines()
            .any(|l| l.contains("health_checks_total{") && l.contains(&label))
    };
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = d.metrics().await;
        if probed(&metrics, &a) && probed(&metrics, &b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probed(&metrics, &b), "{metrics}");
    let (status, body) = reload(&d, &with(&[&a]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metrics = d.metrics().await;
    assert!(!probed(&metrics, &b), "the removed backend's series stay");
    assert!(probed(&metrics, &a));
}

/// A CA bundle rotated in place (same path, new contents) takes effect at the next reload: the
/// backend client is made again, not kept because its settings read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotated_in_place_takes_effect_at_the_reload() {
    let old_cert = make_cert(&["origin.test"]);
    let new_cert = make_cert(&["origin.test"]);
    let old = Origin::start_tls("old", server_tls(&old_cert, None)).await;
    let new = Origin::start_tls("new", server_tls(&new_cert, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "ca", &old_cert);
    let config = |o: &Origin| {
        Config::new()
            .listener(Listener::http("web"))
            .region(Region::new("r").backends(&[(o, 1)]))
            .service(
                Service::new("s")
                    .listeners(&["web"])
                    .regions(&["r"])
                    .upstream(
                        Upstream::new()
                            .protocol("https")
                            .tls_ca_file(&ca)
                            .tls_server_name("origin.test"),
                    ),
            )
    };
    let d = config(&old).start().await;
    let c = http1();
    let r = get(&c, &d.url("web", "/one"), &[]).await.unwrap();
    assert_eq!(r.text(), "origin old /one");
    // The backend moves to a certificate the old CA did not sign, and the CA file with it.
    let (rotated, _) = write_cert(dir.path(), "ca", &new_cert);
    assert_eq!(rotated, ca);
    d.rewrite_config(&config(&new).to_toml());
    let (status, body) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = get(&c, &d.url("web", "/two"), &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "origin new /two");
}

/// The daemon binary's config with one service on "web" over `o`, for the file watcher.
fn watched(o: &Origin) -> String {
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("local").backends(&[(o, 1)]))
        .service(Service::new("app").listeners(&["web"]).regions(&["local"]))
        .to_toml()
}

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");

/// A file written in place by a writer that pauses (`scp`, `kubectl cp`, `tee`) is read once
/// the writer closes it: its first half can be valid TOML with services missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_being_written_is_not_reloaded_until_its_writer_closes_it() {
    use std::io::Write;
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let p = DaemonProcess::start(BIN, &watched(&a), &["web", "admin"]);
    let url = format!("http://{}/", p.addr("web"));
    let origin = async || {
        get(&http1(), &url, &[])
            .await
            .unwrap()
            .header("x-origin")
            .map(str::to_string)
    };
    assert_eq!(origin().await.as_deref(), Some("a"));
    // Written once the watcher is on the file: a write before it is seen as a change made
    // while the daemon started, and read at once.
    let watching = eventually(Duration::from_secs(10), || {
        p.log_json()
            .iter()
            .any(|l| l["message"] == "watching the config file for changes")
    })
    .await;
    assert!(watching, "{:?}", p.log_json());

    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p.config_path)
        .unwrap();
    f.write_all(watched(&b).as_bytes()).unwrap();
    f.flush().unwrap();
    // Three times the debounce: the half written so far is a valid config, for b.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        origin().await.as_deref(),
        Some("a"),
        "read before its writer was done"
    );
    f.write_all(b"\n# the rest of the file\n").unwrap();
    drop(f);
    let switched = async {
        for _ in 0..100 {
            if origin().await.as_deref() == Some("b") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(
        switched.await,
        "not reloaded once closed; log: {:?}",
        p.log_json()
    );
    let logs = p.log_json();
    let reloads = logs
        .iter()
        .filter(|l| l["message"] == "configuration reloaded")
        .count();
    assert_eq!(reloads, 1, "{logs:?}");
}
