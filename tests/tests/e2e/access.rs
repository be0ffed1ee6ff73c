//! Access lists end to end (`[services.access]`): clients refused by address and by country
//! (the synthetic geo database places 127.0.1.x in Germany, 127.0.2.x in the United States),
//! answered 403 and counted, over HTTP and on a TCP listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use http::StatusCode;
use streamgate_tests::*;
use tokio::io::AsyncReadExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn http_clients_are_refused_by_address_and_by_country() {
    let o = Origin::start("o").await;
    let d = Config::new()
        .geo(Geo::fixture("geo/streamgate-synthetic-city.mmdb"))
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[&o]))
        .service(
            Service::new("staging")
                .listeners(&["web"])
                .hosts(&["staging.test"])
                .regions(&["r"])
                .access(Access::new().allow(&["127.0.4.0/24"]).deny(&["127.0.4.66"])),
        )
        .service(
            Service::new("eu")
                .listeners(&["web"])
                .hosts(&["eu.test"])
                .regions(&["r"])
                .access(Access::new().allow_countries(&["DE", "FR"])),
        )
        .start()
        .await;
    let web = d.addr("web");
    let status = |from: &str, host: &'static str| {
        let from = ip(from);
        async move {
            get_from(from, web, "/", &[("host", host)])
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(status("127.0.4.1", "staging.test").await, StatusCode::OK);
    assert_eq!(
        status("127.0.4.66", "staging.test").await,
        StatusCode::FORBIDDEN,
        "deny wins"
    );
    assert_eq!(
        status("127.0.0.1", "staging.test").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("127.0.1.5", "eu.test").await,
        StatusCode::OK,
        "Frankfurt"
    );
    assert_eq!(
        status("127.0.2.5", "eu.test").await,
        StatusCode::FORBIDDEN,
        "Virginia"
    );
    let hits_before = o.hits();
    assert_eq!(status("127.0.2.6", "eu.test").await, StatusCode::FORBIDDEN);
    assert_eq!(
        o.hits(),
        hits_before,
        "a refused request never reaches the origin"
    );
    let m = d.metrics().await;
    let denied = |svc: &str, reason: &str| {
        metric(
            &m,
            &format!("streamgate_access_denied_total{{reason=\"{reason}\",service=\"{svc}\"}}"),
        )
    };
    assert_eq!(denied("staging", "address"), Some(1.0));
    assert_eq!(denied("staging", "not_allowed"), Some(1.0));
    assert_eq!(denied("eu", "not_allowed"), Some(2.0));
    assert_eq!(denied("eu", "country"), Some(0.0), "exported at 0");
}

#[tokio::test]
async fn tcp_connections_are_refused_by_address() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let d = Config::new()
        .listener(Listener::tcp("l4"))
        .region(Region::new("r").address(echo_addr))
        .service(
            Service::new("db")
                .listeners(&["l4"])
                .regions(&["r"])
                .access(Access::new().deny(&["127.0.5.0/24"])),
        )
        .start()
        .await;
    let connect = |from: &str| {
        let (from, to) = (ip(from), d.addr("l4"));
        async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::new(from, 0)).unwrap();
            let mut c = s.connect(to).await.unwrap();
            use tokio::io::AsyncWriteExt;
            c.write_all(b"ping").await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            let _ = c.read_to_end(&mut back).await;
            back
        }
    };
    assert_eq!(connect("127.0.0.1").await, b"ping");
    assert_eq!(
        connect("127.0.5.9").await,
        b"",
        "closed without reaching the backend"
    );
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            "streamgate_access_denied_total{reason=\"address\",service=\"db\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn country_rules_without_a_geo_database_are_a_config_error() {
    let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
        [[regions]]\nname = \"r\"\nbackends = [ { address = \"127.0.0.1:9\" } ]\n\
        [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n\
        [services.access]\nallow_countries = [\"DE\", \"Germany\"]\ndeny = [\"10.0.0.300\"]\n";
    let errors = streamgate_config::parse(std::path::Path::new("t.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("t.toml:12: services[0].access.allow_countries"),
        "{errors}"
    );
    assert!(errors.contains("geo database"), "{errors}");
    assert!(
        errors.contains("\"Germany\" is not a country code"),
        "{errors}"
    );
    assert!(
        errors.contains("\"10.0.0.300\" is not an address or CIDR"),
        "{errors}"
    );
}

/// Behind a trusted balancer, the client is the address the balancer appended to
/// X-Forwarded-For, whatever bytes the client put in the field on its own side: nginx's
/// `proxy_add_x_forwarded_for` joins them into one line, and a byte that is not text must not
/// hide the address to its right (which made the balancer the client, past every deny).
#[tokio::test]
async fn a_client_cannot_hide_behind_its_balancer_with_bytes_in_x_forwarded_for() {
    let o = Origin::start("o").await;
    let d = Config::new()
        .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[&o]))
        .service(
            Service::new("s")
                .listeners(&["web"])
                .regions(&["r"])
                .access(Access::new().deny(&["203.0.113.0/24"])),
        )
        .start()
        .await;
    for (forwarded, want) in [
        (&b"198.51.100.1"[..], "200"),
        (b"203.0.113.7", "403"),
        (b"\x80, 203.0.113.7", "403"),
        (b"\xff\xfe junk \x80, 203.0.113.7", "403"),
        (b"203.0.113.7, \x80", "200"),
    ] {
        let mut raw =
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Forwarded-For: ".to_vec();
        raw.extend_from_slice(forwarded);
        raw.extend_from_slice(b"\r\n\r\n");
        let answer = raw_exchange(d.addr("web"), &raw, 1 << 16).await.unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "{}: {answer}",
            String::from_utf8_lossy(forwarded)
        );
    }
}

/// Behind a trusted balancer, a client that names X-Forwarded-For (or Forwarded, Host, Via) in
/// `Connection` does not make the origin see the balancer as the client: an origin that trusts
/// internal addresses would have let it in, and its logs would have named the wrong client.
#[tokio::test]
async fn a_connection_line_cannot_drop_the_balancers_forwarded_for() {
    let o = RawOrigin::ok().await;
    let d = Config::new()
        .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
        .listener(Listener::http("web"))
        .region(Region::new("r").address(o.addr))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
        .start()
        .await;
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\n\
Connection: close, x-forwarded-for, via, x-drop\r\nX-Drop: 1\r\n\r\n";
    let answer = raw_exchange(d.addr("web"), raw, 1 << 16).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = o.heads().pop().unwrap().to_ascii_lowercase();
    assert!(
        head.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(!head.contains("x-drop"), "other names still go: {head}");
}

/// An address list may name IPv4 clients as IPv4-mapped IPv6 (as a dual-stack listener's
/// logs show them): `::ffff:127.0.4.66` is 127.0.4.66, not a network that never matches.
#[tokio::test]
async fn ipv4_mapped_entries_in_an_access_list_match_their_ipv4_clients() {
    let o = Origin::start("o").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[&o]))
        .service(
            Service::new("s")
                .listeners(&["web"])
                .regions(&["r"])
                .access(Access::new().deny(&["::ffff:127.0.4.66", "::ffff:127.0.6.0/120"])),
        )
        .start()
        .await;
    let web = d.addr("web");
    for (from, want) in [
        ("127.0.4.65", StatusCode::OK),
        ("127.0.4.66", StatusCode::FORBIDDEN),
        ("127.0.6.200", StatusCode::FORBIDDEN),
        ("127.0.7.1", StatusCode::OK),
    ] {
        let a = get_from(ip(from), web, "/", &[]).await.unwrap();
        assert_eq!(a.status, want, "{from}");
    }
}
