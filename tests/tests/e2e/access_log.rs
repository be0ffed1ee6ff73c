//! The access log end to end: every field of a JSON line, templates, and reopening on
//! SIGUSR1 (logrotate); and a health page read in its first 64 KiB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use streamgate_tests::presets::two_regions;
use streamgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamgate-e2e");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_carry_every_field() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let d = two_regions(&[&a], &[&b])
        .access_log(AccessLog::new(&log_path).format("json"))
        .start()
        .await;
    let c = http1();
    let r = get(
        &c,
        &d.url("web", "/video/1.ts?q=2"),
        &[("host", "example.com"), ("x-forwarded-for", "192.0.2.7")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let body = Bytes::from(vec![b'u'; 3000]);
    let up = send(
        &c,
        Method::POST,
        &d.url("web", "/sink"),
        &[("host", "example.com")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(up.status, StatusCode::OK);
    get(&c, &d.url("web", "/nothing"), &[("host", "nobody.example")])
        .await
        .unwrap();

    let lines = || json_lines(&log_path);
    assert!(
        eventually(Duration::from_secs(5), || lines().len() == 3).await,
        "{:?}",
        lines()
    );
    let l = lines();
    let first = &l[0];
    assert_eq!(first["listener"], "web");
    assert_eq!(
        first["client"], "192.0.2.7",
        "the trusted proxy's X-Forwarded-For names the client"
    );
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "example.com");
    assert_eq!(first["path"], "/video/1.ts?q=2");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 0);
    assert_eq!(first["bytes_out"], r.body.len());
    assert_eq!(first["service"], "web");
    assert_eq!(first["region"], "a");
    assert_eq!(first["backend"], a.addr.to_string());
    assert_eq!(first["cache"], Value::Null);
    assert_eq!(first["retries"], 0);
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    let time = first["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    assert_eq!(l[1]["method"], "POST");
    assert_eq!(l[1]["bytes_in"], 3000);
    assert_eq!(l[2]["status"], 404);
    assert_eq!(l[2]["service"], Value::Null);
    assert_eq!(l[2]["backend"], Value::Null);
    assert_eq!(
        l[2]["bytes_out"],
        "404 Not Found: no service for this host\n".len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_templates_and_sigusr1_reopen() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let config = two_regions(&[&a], &[&b]).access_log(
        AccessLog::new(&log_path).format("$client $method $path $status $service/$region $$"),
    );
    let p = DaemonProcess::start(BIN, &config.to_toml(), &["web"]);
    let url = format!("http://{}/one", p.addr("web"));
    get(&http1(), &url, &[("host", "example.com")])
        .await
        .unwrap();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(eventually(Duration::from_secs(5), || !read(&log_path).is_empty()).await);
    assert_eq!(read(&log_path), "127.0.0.1 GET /one 200 web/a $\n");

    // logrotate: move the file away, signal, and the daemon writes a new one.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    p.signal("USR1");
    assert!(
        eventually(Duration::from_secs(5), || p
            .log_json()
            .iter()
            .any(|l| l["message"] == "SIGUSR1: reopening the access log"))
        .await
    );
    get(
        &http1(),
        &format!("http://{}/two", p.addr("web")),
        &[("host", "example.com")],
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || read(&log_path)
            == "127.0.0.1 GET /two 200 web/a $\n")
        .await,
        "{:?}",
        read(&log_path)
    );
    assert_eq!(read(&rotated), "127.0.0.1 GET /one 200 web/a $\n");
}

/// `body_contains` looks at a health page's first 64 KiB: a larger page with the text early is
/// up, not failed for its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_page_larger_than_64_kib_is_read_in_its_first_bytes() {
    let a = Origin::start("a").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("a").origins(&[&a]))
        .service(
            Service::new("web")
                .listeners(&["web"])
                .regions(&["a"])
                .health(
                    Health::new()
                        .path("/c/health?size=200000")
                        .body_contains("abcdef")
                        .interval("100ms")
                        .fall(1)
                        .rise(1),
                ),
        )
        .start()
        .await;
    let series = |result: &str| {
        format!(
            "streamgate_health_checks_total{{backend=\"{}\",result=\"{result}\"}}",
            a.addr
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let m = loop {
        let m = d.metrics().await;
        if metric(&m, &series("success")).unwrap_or(0.0) >= 3.0
            || std::time::Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(metric(&m, &series("success")).unwrap_or(0.0) >= 3.0, "{m}");
    assert_eq!(metric(&m, &series("failure")).unwrap_or(0.0), 0.0, "{m}");
}
