//! An operator's first hour, as a new user meets it: the README's /explain example against the
//! demo config, /regions telling the same truth as /explain, TCP connections in the access log
//! and the request counters, a purge naming a service that does not exist, and counters that
//! alert rules can use from the first event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The demo's config with its listener on a free port and its geo database found from here.
fn demo_config() -> String {
    std::fs::read_to_string(repo("config/demo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(
            "../fixtures/geo/streamgate-synthetic-city.mmdb",
            &fixture("geo/streamgate-synthetic-city.mmdb")
                .display()
                .to_string(),
        )
}

#[tokio::test]
async fn the_readme_explain_example_answers_against_the_demo() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let query = readme
        .lines()
        .find_map(|l| {
            let at = l.find("/explain?")?;
            let rest = &l[at..];
            Some(rest[..rest.find(['\'', ' ']).unwrap_or(rest.len())].to_string())
        })
        .expect("the README shows an /explain example");
    let d = TestDaemon::start(&demo_config()).await;
    let (status, v) = d.admin(Method::GET, &query, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["service"], "web", "{v}");
    assert_eq!(v["decision"]["region"], "ap-northeast", "{v}");
    // Without the host, the answer says which parameter was missing and what is served.
    let (_, bare) = d.admin(Method::GET, "/explain?ip=203.0.113.7", "").await;
    let why = bare["why"].as_str().unwrap();
    assert!(why.contains("host=") && why.contains("localhost"), "{why}");
}

#[tokio::test]
async fn regions_and_explain_tell_one_truth() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("first").origins(&[&a]))
        .region(Region::new("second").origins(&[&b]))
        .service(
            Service::new("app")
                .listeners(&["web"])
                .hosts(&["app.test"])
                .regions(&["first", "second"])
                .region_policy("failover"),
        )
        .start()
        .await;
    for _ in 0..4 {
        get(&http1(), &d.url("web", "/"), &[("host", "app.test")])
            .await
            .unwrap();
    }
    let (_, regions) = d.admin(Method::GET, "/regions", "").await;
    let svc = |name: &str| {
        regions["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["services"][0]
            .clone()
    };
    assert_eq!(
        (
            svc("first")["requests"].as_u64(),
            svc("first")["traffic_share"].as_f64()
        ),
        (Some(4), Some(1.0))
    );
    assert_eq!(
        (
            svc("second")["requests"].as_u64(),
            svc("second")["traffic_share"].as_f64()
        ),
        (Some(0), Some(0.0)),
        "the standby region got none of the traffic"
    );
    assert_eq!(svc("second")["failback_ramp"].as_f64(), Some(1.0));

    let (s, _) = d
        .admin(Method::POST, "/regions/second/deactivate", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, regions) = d.admin(Method::GET, "/regions", "").await;
    let second = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "second")
        .unwrap()
        .clone();
    assert_eq!(second["services"][0]["eligible"], false, "{second}");
    let (_, explain) = d
        .admin(Method::GET, "/explain?ip=127.0.0.1&host=app.test", "")
        .await;
    let listed = explain["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "second")
        .unwrap()
        .clone();
    assert_eq!(listed["eligible"], second["services"][0]["eligible"]);
}

async fn echo_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_connections_are_logged_and_counted() {
    let echo = echo_server().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let d = Config::new()
        .access_log(AccessLog::new(&log).format("json"))
        .listener(Listener::tcp("l4"))
        .listener(Listener::tcp("l4dead"))
        .region(Region::new("r").address(echo))
        .region(Region::new("gone").address(dead))
        .service(Service::new("echo").listeners(&["l4"]).regions(&["r"]))
        .service(
            Service::new("nothing")
                .listeners(&["l4dead"])
                .regions(&["gone"]),
        )
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(d.addr("l4")).await.unwrap();
    s.write_all(b"hello, five bytes each way").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello, five bytes each way");
    let mut refused = tokio::net::TcpStream::connect(d.addr("l4dead"))
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = refused.read_to_end(&mut sink).await;

    let lines = || json_lines(&log);
    assert!(
        eventually(Duration::from_secs(5), || lines().len() >= 2).await,
        "{:?}",
        lines()
    );
    let all = lines();
    let ok = all
        .iter()
        .find(|l| l["listener"] == "l4")
        .expect("a line for the relayed connection");
    assert_eq!(ok["protocol"], "TCP");
    assert_eq!(ok["status"], 200);
    assert_eq!(
        (ok["bytes_in"].as_u64(), ok["bytes_out"].as_u64()),
        (Some(26), Some(26))
    );
    assert_eq!(
        (ok["service"].as_str(), ok["region"].as_str()),
        (Some("echo"), Some("r"))
    );
    assert_eq!(ok["backend"], echo.to_string());
    let failed = all.iter().find(|l| l["listener"] == "l4dead").unwrap();
    assert_eq!(failed["status"], 502, "{failed}");
    let m = d.metrics().await;
    let series = |svc: &str, region: &str, class: &str| {
        format!(
            "streamgate_global_load_balancer_requests_total{{code_class=\"{class}\",region=\"{region}\",service=\"{svc}\"}}"
        )
    };
    assert_eq!(metric(&m, &series("echo", "r", "2xx")), Some(1.0), "{m}");
    assert_eq!(metric(&m, &series("nothing", "gone", "5xx")), Some(1.0));
}

#[tokio::test]
async fn purging_a_service_that_does_not_exist_says_so() {
    let o = Origin::start("o").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[&o]))
        .service(
            Service::new("cdn")
                .listeners(&["web"])
                .hosts(&["cdn.test"])
                .regions(&["r"])
                .cache(Cache::new("1MiB")),
        )
        .service(
            Service::new("api")
                .listeners(&["web"])
                .hosts(&["api.test"])
                .regions(&["r"]),
        )
        .start()
        .await;
    let (s, v) = d
        .admin(
            Method::POST,
            "/cache/purge",
            r#"{"all": true, "service": "cdm"}"#,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("\"cdm\""), "{v}");
    let (s, v) = d
        .admin(
            Method::POST,
            "/cache/purge",
            r#"{"all": true, "service": "api"}"#,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("no cache"), "{v}");
    let (s, v) = d
        .admin(
            Method::POST,
            "/cache/purge",
            r#"{"all": true, "service": "cdn"}"#,
        )
        .await;
    assert_eq!((s, v["purged"].as_u64()), (StatusCode::OK, Some(0)));
}

#[tokio::test]
async fn counters_start_at_zero_and_deployments_are_counted() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let make = |eu: &[&Origin]| {
        Config::new()
            .listener(Listener::http("web"))
            .region(Region::new("eu").origins(eu))
            .region(Region::new("us").origins(&[&b]))
            .service(
                Service::new("app")
                    .listeners(&["web"])
                    .hosts(&["app.test"])
                    .regions(&["eu", "us"]),
            )
    };
    let d = make(&[&a]).start().await;
    let m = d.metrics().await;
    for series in [
        "streamgate_failovers_total{from=\"eu\",service=\"app\",to=\"us\"}",
        "streamgate_upstream_errors_total{kind=\"connect\",region=\"eu\"}",
        "streamgate_config_reloads_total{result=\"failure\"}",
        "streamgate_global_load_balancer_requests_total{code_class=\"5xx\",region=\"us\",service=\"app\"}",
    ] {
        assert_eq!(metric(&m, series), Some(0.0), "{series} exported at 0");
    }
    let deployed = |m: &str, r: &str| {
        metric(
            m,
            &format!("streamgate_regional_deployments_total{{region=\"{r}\"}}"),
        )
    };
    assert_eq!(
        (deployed(&m, "eu"), deployed(&m, "us")),
        (Some(1.0), Some(1.0))
    );
    // A reload that adds a backend to eu deploys eu, not us.
    d.rewrite_config(&make(&[&a, &b]).to_toml());
    let (s, v) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = d.metrics().await;
    assert_eq!(
        (deployed(&m, "eu"), deployed(&m, "us")),
        (Some(2.0), Some(1.0))
    );
}
