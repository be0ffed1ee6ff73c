//! Backends by DNS name, end to end: a DNS server on 127.0.0.1 whose answers the test changes,
//! origins on 127.0.0.1 and 127.0.0.2 (same port, as a name's addresses would be), and a client
//! sending requests the whole time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use streamgate_tests::*;

pub(super) const NAME: &str = "origin.test";

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two origins on one port: 127.0.0.1 and 127.0.0.2.
pub(super) async fn origin_pair() -> (Origin, Origin) {
    for _ in 0..20 {
        let a = Origin::start("a").await;
        let b_addr = SocketAddr::new(ip("127.0.0.2"), a.addr.port());
        if std::net::TcpListener::bind(b_addr).is_ok() {
            return (a, Origin::start_at("b", b_addr).await);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// The origins of these tests are on 127.0.0.x: their names' answers need `allow_local`.
fn config(port: u16, dns: &DnsServer) -> String {
    config_with(port, dns, "allow_local = true\n")
}

/// [`config`] with `extra` lines in `[dns]`.
fn config_with(port: u16, dns: &DnsServer, extra: &str) -> String {
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").address(format!("{NAME}:{port}")))
        .service(Service::new("app").listeners(&["web"]).regions(&["r"]))
        .raw(&format!(
            "[dns]\nservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"10s\"\ntimeout = \"300ms\"\n{}",
            dns.addr, extra
        ))
        .to_toml()
}

/// Sends requests one after another until stopped; counts them and keeps the failures.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(url: String) -> Load {
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let client = http1();
            let mut errors = Vec::new();
            while !s.load(SeqCst) {
                let outcome = get(&client, &url, &[]).await;
                n.fetch_add(1, SeqCst);
                match outcome {
                    Ok(a) if a.status == StatusCode::OK => {}
                    Ok(a) => errors.push(format!("status {}", a.status)),
                    Err(e) => errors.push(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            errors
        });
        Load { stop, sent, task }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, SeqCst);
        let errors = self.task.await.unwrap();
        (self.sent.load(SeqCst), errors)
    }
}

/// `/backends` as (address, name, requests) for the app's region.
async fn backends(d: &TestDaemon) -> Vec<(String, Option<String>, u64)> {
    let (status, body) = d.admin(Method::GET, "/backends", "").await;
    assert_eq!(status, StatusCode::OK);
    body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["name"].as_str().map(str::to_string),
                b["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn counter(metrics: &str, result: &str) -> u64 {
    series(
        metrics,
        &format!("streamgate_dns_resolutions_total{{name=\"{NAME}\",result=\"{result}\"}}"),
    )
}

/// The value of one series (0 when absent).
fn series(metrics: &str, name: &str) -> u64 {
    metric(metrics, name).map_or(0, |v| v as u64)
}

fn dropped(metrics: &str, reason: &str) -> u64 {
    series(
        metrics,
        &format!("streamgate_dns_addresses_dropped_total{{name=\"{NAME}\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_answer_moves_traffic_within_its_ttl_and_failures_keep_the_last_good_address() {
    let dns = DnsServer::start().await;
    let (a, b) = origin_pair().await;
    let port = a.addr.port();
    dns.set(NAME, &[ip("127.0.0.1")], 1);
    let d = TestDaemon::start(&config(port, &dns)).await;
    let url = d.url("web", "/");

    // Resolved before the daemon listened: the first request already has a backend.
    assert_eq!(
        get(&http1(), &url, &[]).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!((a.hits(), b.hits()), (1, 0));
    let load = Load::start(url.clone());
    assert!(eventually(Duration::from_secs(5), || a.hits() > 20).await);

    // A second address: traffic spreads to it, and the address that stayed keeps its stats.
    let before = backends(&d).await;
    assert_eq!(before.len(), 1);
    let a_requests = before[0].2;
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    // 5 s: 5x the 1 s TTL, room for a loaded CI machine; a daemon that kept the answer for
    // max_ttl (10 s) still fails.
    assert!(
        eventually(Duration::from_secs(5), || b.hits() > 0).await,
        "the second address got no traffic within the TTL (1 s) and a margin"
    );
    let both = backends(&d).await;
    let a_row = both.iter().find(|r| r.0 == a.addr.to_string()).unwrap();
    assert!(
        a_row.2 >= a_requests,
        "{a_row:?} lost its stats ({a_requests} before)"
    );
    assert_eq!(a_row.1.as_deref(), Some(NAME));

    // The answer moves to 127.0.0.2 only: within its TTL, 127.0.0.1 gets nothing new.
    dns.set(NAME, &[ip("127.0.0.2")], 1);
    let changed = Instant::now();
    while backends(&d).await.len() != 1 {
        // 5 s as above.
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "127.0.0.1 was still a backend {:?} after the change (TTL 1 s)",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A request already sent to 127.0.0.1 finishes there; none start after it. The load client
    // sends one request at a time: once 127.0.0.2 got two more (the first may be the one in
    // flight when the table changed), that one is done and 127.0.0.1's count is final. A fixed
    // 100 ms sleep could end before it on a loaded CI machine.
    let b_now = b.hits();
    assert!(eventually(Duration::from_secs(5), || b.hits() >= b_now + 2).await);
    let settled = a.hits();
    let b_then = b.hits();
    assert!(eventually(Duration::from_secs(5), || b.hits() > b_then + 20).await);
    assert_eq!(a.hits(), settled, "the removed address still got requests");
    let rows = backends(&d).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, b.addr.to_string());
    assert_eq!(rows[0].1.as_deref(), Some(NAME));

    // SERVFAIL, then silence: the last good address keeps serving, and the failures are counted.
    dns.answer(NAME, DnsAnswer::ServFail);
    let mut metrics = String::new();
    for _ in 0..40 {
        metrics = d.metrics().await;
        if counter(&metrics, "error") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counter(&metrics, "error") > 0, "{metrics}");
    assert!(metrics.contains(&format!("streamgate_dns_addresses{{name=\"{NAME}\"}} 1")));
    dns.answer(NAME, DnsAnswer::Silent);
    for _ in 0..60 {
        metrics = d.metrics().await;
        if counter(&metrics, "timeout") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counter(&metrics, "timeout") > 0, "{metrics}");
    let b_then = b.hits();
    assert!(eventually(Duration::from_secs(5), || b.hits() > b_then + 20).await);

    let (sent, errors) = load.finish().await;
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        errors.is_empty(),
        "{} of {sent} requests failed: {errors:?}",
        errors.len()
    );
    assert!(counter(&metrics, "success") >= 3, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_at_start_is_retried_until_it_does() {
    let dns = DnsServer::start().await;
    let a = Origin::start("a").await;
    // NXDOMAIN: the daemon starts anyway, with no backend in the region yet.
    let d = TestDaemon::start(&config(a.addr.port(), &dns)).await;
    let url = d.url("web", "/");
    let first = get(&http1(), &url, &[]).await.unwrap();
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);

    dns.set(NAME, &[ip("127.0.0.1")], 30);
    let mut ok = false;
    for _ in 0..50 {
        if get(&http1(), &url, &[]).await.unwrap().status == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the name resolved but the region got no backend");
    let metrics = d.metrics().await;
    assert!(counter(&metrics, "nxdomain") >= 1, "{metrics}");
    let (_, regions) = d.admin(Method::GET, "/regions", "").await;
    assert_eq!(
        regions["regions"][0]["dns_names"][0]["addresses"][0], "127.0.0.1",
        "{regions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_name_publishes_its_addresses_with_it() {
    let dns = DnsServer::start().await;
    let a = Origin::start("a").await;
    let other = Origin::start("other").await;
    dns.set("new.test", &[ip("127.0.0.1")], 300);
    let base = |region: Region| {
        Config::new()
            .listener(Listener::http("web"))
            .region(region)
            .service(Service::new("app").listeners(&["web"]).regions(&["r"]))
            .raw(&format!(
                "[dns]\nservers = [\"{}\"]\nallow_local = true\n",
                dns.addr
            ))
            .to_toml()
    };
    let d = TestDaemon::start(&base(Region::new("r").origins(&[&other]))).await;
    d.rewrite_config(&base(
        Region::new("r").address(format!("new.test:{}", a.addr.port())),
    ));
    let (status, _) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK);
    // No wait: the table the reload published already has the name's address.
    let answer = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(a.hits(), 1);
    assert_eq!(other.hits(), 0);
}

/// A reload that turns `allow_local` off drops the loopback addresses a name already gave, at
/// once: they are not kept as the name's "last good" answer while its new answers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_turns_allow_local_off_drops_the_local_addresses_held() {
    let dns = DnsServer::start().await;
    let a = Origin::start("a").await;
    dns.set(NAME, &[ip("127.0.0.1")], 300);
    let d = TestDaemon::start(&config(a.addr.port(), &dns)).await;
    let url = d.url("web", "/");
    assert_eq!(
        get(&http1(), &url, &[]).await.unwrap().status,
        StatusCode::OK
    );
    d.rewrite_config(&config_with(a.addr.port(), &dns, ""));
    let (status, body) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hits = a.hits();
    for _ in 0..3 {
        let answer = get(&http1(), &url, &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        a.hits(),
        hits,
        "a refused address was used after the reload"
    );
    assert!(backends(&d).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_link_local_and_unusable_answers_give_no_backend_without_allow_local() {
    let dns = DnsServer::start().await;
    let a = Origin::start("a").await;
    // The origin listens on 127.0.0.1, but without allow_local that answer is refused: a name
    // must not send requests to the proxy's own host (or to 169.254.169.254) unless allowed.
    dns.set(
        NAME,
        &[
            ip("127.0.0.1"),
            ip("169.254.169.254"),
            ip("0.0.0.0"),
            ip("224.0.0.1"),
        ],
        1,
    );
    let d = TestDaemon::start(&config_with(a.addr.port(), &dns, "")).await;
    let url = d.url("web", "/");
    for _ in 0..3 {
        let answer = get(&http1(), &url, &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(a.hits(), 0, "a refused address was used");
    assert!(backends(&d).await.is_empty());
    let metrics = d.metrics().await;
    assert!(counter(&metrics, "filtered") >= 2, "{metrics}");
    assert_eq!(counter(&metrics, "success"), 0, "{metrics}");
    assert!(dropped(&metrics, "local") >= 4, "{metrics}");
    assert!(dropped(&metrics, "unusable") >= 4, "{metrics}");
    assert!(metrics.contains(&format!("streamgate_dns_addresses{{name=\"{NAME}\"}} 0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_gives_at_most_max_addresses_backends_the_first_in_sorted_order() {
    let dns = DnsServer::start().await;
    let (a, _b) = origin_pair().await;
    let many: Vec<IpAddr> = (1..=5).rev().map(|i| ip(&format!("127.0.0.{i}"))).collect();
    dns.set(NAME, &many, 300);
    let d = TestDaemon::start(&config_with(
        a.addr.port(),
        &dns,
        "allow_local = true\nmax_addresses = 2\n",
    ))
    .await;
    let mut rows: Vec<String> = backends(&d).await.into_iter().map(|r| r.0).collect();
    rows.sort();
    let port = a.addr.port();
    assert_eq!(
        rows,
        [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")]
    );
    let metrics = d.metrics().await;
    assert_eq!(dropped(&metrics, "over_cap"), 3, "{metrics}");
    assert!(metrics.contains(&format!("streamgate_dns_addresses{{name=\"{NAME}\"}} 2")));
}

/// `/backends` of the app as (address, drained).
async fn drained_rows(d: &TestDaemon) -> Vec<(String, bool)> {
    let (_, body) = d.admin(Method::GET, "/backends", "").await;
    let mut rows: Vec<(String, bool)> = body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["drained"].as_bool().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_address_that_leaves_the_answer_and_comes_back_is_still_drained() {
    let dns = DnsServer::start().await;
    let (a, b) = origin_pair().await;
    let snaps = tempfile::tempdir().unwrap();
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    let text = format!(
        "{}[snapshots]\ndir = \"{}\"\ninterval = \"1h\"\n",
        config(a.addr.port(), &dns),
        snaps.path().display()
    );
    let d = TestDaemon::start(&text).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let drain = |addr: &str| format!("{{\"address\": \"{addr}\"}}");
    assert_eq!(
        d.admin(Method::POST, "/backends/drain", &drain(&a_addr))
            .await
            .0,
        StatusCode::OK
    );

    // The answer loses 127.0.0.1: its backend goes, and its state with it.
    dns.set(NAME, &[ip("127.0.0.2")], 1);
    let start = Instant::now();
    while drained_rows(&d).await.len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "127.0.0.1 never left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An override written while it is away still names it (a restart now must keep the drain).
    let state = snaps.path().join("operator-state.json");
    // The file's identity: every write replaces it with a new file (new inode and mtime).
    let written = || {
        std::fs::metadata(&state).ok().map(|m| {
            (
                m.modified().unwrap(),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        })
    };
    // The drain of 127.0.0.1 was written long ago (its leaving took a TTL, 1 s); nothing writes
    // on its leaving, unless the daemon forgot the drain then.
    let before = written();
    for action in ["drain", "undrain"] {
        let path = format!("/backends/{action}");
        assert_eq!(
            d.admin(Method::POST, &path, &drain(&b_addr)).await.0,
            StatusCode::OK
        );
    }
    let in_file = || -> Vec<String> {
        std::fs::read(&state)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|v| {
                v["drained"]
                    .as_array()
                    .map(|l| l.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            })
            .unwrap_or_default()
    };
    // The writer runs on its own, one write at a time, the latest state after a burst: wait
    // for a write made after the changes above that holds the drain ([127.0.0.1 and .2], then
    // [127.0.0.1], or only the latter). A daemon that loses the drain of an address away from
    // the answer never writes that; the file from before the changes does not count.
    let saved = eventually(Duration::from_secs(5), || {
        written() != before && in_file() == std::slice::from_ref(&a_addr)
    })
    .await;
    assert!(saved, "{:?} in the file", in_file());

    // It comes back: drained, as the operator left it.
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    let start = Instant::now();
    while drained_rows(&d).await.len() != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "127.0.0.1 never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        drained_rows(&d).await,
        [(a_addr.clone(), true), (b_addr.clone(), false)]
    );
    let before = a.hits();
    for _ in 0..20 {
        let answer = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(a.hits(), before, "the drained address got new requests");

    // Undrained by the operator, it stays undrained through the next churn.
    assert_eq!(
        d.admin(Method::POST, "/backends/undrain", &drain(&a_addr))
            .await
            .0,
        StatusCode::OK
    );
    dns.set(NAME, &[ip("127.0.0.2")], 1);
    let start = Instant::now();
    while drained_rows(&d).await.len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "127.0.0.1 never left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")], 1);
    let start = Instant::now();
    while drained_rows(&d).await.len() != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "127.0.0.1 never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drained_rows(&d).await, [(a_addr, false), (b_addr, false)]);
}

/// A reload that waits on DNS for a name new to its file longer than `request_header` still runs
/// to its end and answers: the admin API bounds how long a request takes to arrive, not how long
/// a reload takes (once it was answered 408 with nothing said, and a reload given up on there
/// had already swapped its geo database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_waits_on_dns_answers_when_it_is_done() {
    let dns = DnsServer::start().await;
    dns.set(NAME, &[ip("127.0.0.1")], 60);
    dns.answer("silent.test", DnsAnswer::Silent);
    let a = Origin::start("a").await;
    let with = |names: &[String]| {
        let mut region = Region::new("r");
        for n in names {
            region = region.address(n);
        }
        Config::new()
            .timeouts(Timeouts::new().request_header("500ms"))
            .listener(Listener::http("web"))
            .region(region)
            .service(Service::new("app").listeners(&["web"]).regions(&["r"]))
            .raw(&format!(
                "[dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\nallow_local = true\n",
                dns.addr
            ))
            .to_toml()
    };
    let port = a.addr.port();
    let d = TestDaemon::start(&with(&[format!("{NAME}:{port}")])).await;
    d.rewrite_config(&with(&[
        format!("{NAME}:{port}"),
        format!("silent.test:{port}"),
    ]));
    let started = Instant::now();
    let (status, body) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it did wait on DNS"
    );
    assert_eq!(body["version"], 2, "{body}");
    let answer = get(&http1(), &d.url("web", "/"), &[]).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
}
