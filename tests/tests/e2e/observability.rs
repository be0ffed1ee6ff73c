//! Metrics and the deploy/ files checked against what the daemon really exports. The access
//! log: `access_log.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use streamgate_tests::presets::two_regions;
use streamgate_tests::*;

/// The value of the series written exactly as `series` (name and labels in the text format).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_traffic_have_exact_series_and_values() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let d = two_regions(&[&a], &[&b]).start().await;
    let c = http1();
    for _ in 0..7 {
        let r = get(&c, &d.url("web", "/x"), &[("host", "example.com")])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = get(&c, &d.url("web", "/x"), &[("host", "nobody.example")])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let m = d.metrics().await;
    let exact = |series: &str, want: f64| {
        assert_eq!(value(&m, series), Some(want), "{series} in:\n{m}");
    };
    exact(
        "streamgate_global_load_balancer_requests_total{code_class=\"2xx\",region=\"a\",service=\"web\"}",
        7.0,
    );
    exact(
        "streamgate_global_load_balancer_requests_total{code_class=\"2xx\",region=\"b\",service=\"web\"}",
        0.0,
    );
    exact(
        "streamgate_latency_by_region_seconds_count{region=\"a\"}",
        7.0,
    );
    exact(
        "streamgate_traffic_routing_requests_total{reason=\"primary\",region=\"a\"}",
        7.0,
    );
    exact(
        "streamgate_data_locality_requests_total{data_type=\"pass\",region=\"a\"}",
        7.0,
    );
    exact(
        "streamgate_data_locality_latency_seconds_count{data_type=\"pass\",region=\"a\"}",
        7.0,
    );
    exact("streamgate_unrouted_requests_total{listener=\"web\"}", 1.0);
    exact(
        "streamgate_cache_served_bytes_total{source=\"origin\"}",
        7.0 * "origin a /x".len() as f64,
    );
    exact(
        &format!(
            "streamgate_backend_up{{backend=\"{}\",region=\"a\"}}",
            a.addr
        ),
        1.0,
    );
    exact("streamgate_region_healthy{region=\"a\"}", 1.0);
    assert!(
        m.contains("streamgate_latency_by_region_seconds_bucket{region=\"a\",le=\"0.0001\"}"),
        "edge buckets from 100 us"
    );
    assert!(
        m.contains("streamgate_latency_by_region_seconds_bucket{region=\"a\",le=\"10\"}"),
        "to 10 s"
    );

    // The backend dies: backend_up flips to 0, the region goes unhealthy and b takes over.
    a.stop().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = d.daemon.table.load();
            !t.services[0].regions[0].health.is_healthy()
        })
        .await
    );
    let m = d.metrics().await;
    assert_eq!(
        value(
            &m,
            &format!(
                "streamgate_backend_up{{backend=\"{}\",region=\"a\"}}",
                a.addr
            )
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "streamgate_region_healthy{region=\"a\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "streamgate_failovers_total{from=\"a\",service=\"web\",to=\"b\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        value(
            &m,
            &format!(
                "streamgate_health_checks_total{{backend=\"{}\",result=\"failure\"}}",
                a.addr
            )
        )
        .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_paths_and_client_addresses_add_no_series() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let d = two_regions(&[&a], &[&b]).start().await;
    let c = http1();
    get(&c, &d.url("web", "/warm"), &[("host", "example.com")])
        .await
        .unwrap();
    get(&c, &d.url("web", "/warm"), &[("host", "unknown.example")])
        .await
        .unwrap();
    let series = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect::<BTreeSet<_>>()
    };
    let before = series(&d.metrics().await);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (c, base) = (c.clone(), d.url("web", ""));
            tokio::spawn(async move {
                for i in 0..1250u32 {
                    let n = t * 1250 + i;
                    let path = format!("{base}/item/{n}?q={n}");
                    let xff = format!("198.51.{}.{}", n / 250 % 250, n % 250);
                    let host = if n % 2 == 0 {
                        "example.com".to_string()
                    } else {
                        format!("h{n}.example.net")
                    };
                    get(&c, &path, &[("host", &host), ("x-forwarded-for", &xff)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = series(&d.metrics().await);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "new series: {new:?}");
}

/// Every `streamgate_*` name an expression uses, exported or derived (`_bucket`, `_sum`, `_count`).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("streamgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Names a scrape exports, with histogram series names.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            out.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn dashboard_exprs() -> Vec<String> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/streamgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if (k == "expr" || k == "query")
                        && let Some(s) = x.as_str()
                    {
                        out.push(s.to_string());
                    }
                    walk(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    exprs
}

fn alert_rules() -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/streamgate-alerts.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let groups = docs[0]["groups"].as_vec().expect("groups").clone();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_use_only_metrics_the_daemon_exports() {
    // Traffic that makes every family appear: requests, a dead backend (upstream errors, a
    // failover, failed probes), a reload.
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    // A [fleet] whose NATS is unreachable: the fleet series are declared, and traffic is
    // served all the same.
    let d = two_regions(&[&a], &[&b])
        .raw("[fleet]\nservers = [\"nats://127.0.0.1:1\"]\npop = \"obs\"\n")
        .start()
        .await;
    let c = http1();
    for _ in 0..3 {
        get(&c, &d.url("web", "/"), &[("host", "example.com")])
            .await
            .unwrap();
    }
    a.stop().await;
    for _ in 0..3 {
        get(&c, &d.url("web", "/"), &[("host", "example.com")])
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || !d.daemon.table.load().services
            [0]
        .regions[0]
            .health
            .is_healthy())
        .await
    );
    d.admin(Method::POST, "/reload", "").await;
    let names = exported(&d.metrics().await);

    let dash = dashboard_exprs();
    assert!(dash.len() >= 15, "the dashboard has its panels");
    let mut used = BTreeSet::new();
    for e in &dash {
        used.extend(names_in(e));
    }
    let rules = alert_rules();
    for r in &rules {
        used.extend(names_in(r["expr"].as_str().unwrap()));
    }
    let missing: Vec<_> = used.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {names:?}"
    );
    // And the dashboard covers what operators asked for.
    for must in [
        "streamgate_global_load_balancer_requests_total",
        "streamgate_latency_by_region_seconds_bucket",
        "streamgate_region_healthy",
        "streamgate_backend_up",
        "streamgate_failovers_total",
        "streamgate_data_locality_requests_total",
        "streamgate_cache_served_bytes_total",
        "streamgate_backend_active_connections",
    ] {
        assert!(
            dash.iter().any(|e| e.contains(must)),
            "dashboard lacks {must}"
        );
    }
}

#[test]
fn alert_rules_are_valid_and_cover_the_required_alerts() {
    let rules = alert_rules();
    let names: Vec<&str> = rules
        .iter()
        .map(|r| r["alert"].as_str().expect("every rule is an alert"))
        .collect();
    for must in [
        "StreamGateRegionDown",
        "StreamGateFailover",
        "StreamGateHighLatencyP95",
        "StreamGateCacheHitRatioLow",
        "StreamGateConfigReloadFailed",
        "StreamGateRecoveryPointTooOld",
    ] {
        assert!(names.contains(&must), "missing alert {must}: {names:?}");
    }
    for r in &rules {
        assert!(
            r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{r:?}"
        );
        assert!(r["labels"]["severity"].as_str().is_some(), "{r:?}");
        assert!(r["annotations"]["summary"].as_str().is_some(), "{r:?}");
        if let Some(f) = r["for"].as_str() {
            assert!(
                streamgate_config::units::parse_duration(f).is_ok(),
                "bad for: {f}"
            );
        }
    }
    // promtool, where it is installed (Debian's prometheus package; .ci/run installs it).
    match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(repo("deploy/prometheus/streamgate-alerts.yml"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("promtool not installed ({e}); the YAML checks above stand alone"),
    }
}

#[test]
fn kubernetes_manifests_probe_the_admin_endpoints_and_run_as_non_root() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/streamgate.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["ConfigMap", "DaemonSet", "Service"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/live")
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    // The ConfigMap's config is a valid StreamGate config (paths aside).
    let cm = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    let toml = cm["data"]["streamgate.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let geo = dir.path().join("geo.mmdb");
    std::fs::copy(fixture("geo/streamgate-synthetic-city.mmdb"), &geo).unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "t").unwrap();
    let toml = toml
        .replace(
            "/var/lib/streamgate/geo/GeoLite2-City.mmdb",
            geo.to_str().unwrap(),
        )
        .replace(
            "/etc/streamgate-secret/admin.token",
            token.to_str().unwrap(),
        );
    streamgate_config::parse(&dir.path().join("streamgate.toml"), &toml)
        .unwrap_or_else(|e| panic!("{e}"));
}
