//! Global load balancing end to end: geo routing with the fixture databases, reloads of the
//! database, the explain endpoint and the admin API's token. Failover: `failover.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use http::{Method, StatusCode};
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

    fn config(&self, database: &str) -> Config {
        Config::new()
            .geo(
                Geo::fixture(database)
                    .default_region("us-east")
                    .trusted_proxies(&["127.0.0.1/32"]),
            )
            .listener(Listener::http("web"))
            .region(
                Region::new("us-east")
                    .location(39.0, -77.5)
                    .countries(&["CA"])
                    .backends(&[(&self.us, 1)]),
            )
            .region(
                Region::new("eu-west")
                    .location(50.1, 8.7)
                    .backends(&[(&self.eu, 1)]),
            )
            .region(
                Region::new("ap-northeast")
                    .location(35.7, 139.7)
                    .backends(&[(&self.ap, 1)]),
            )
            .service(
                Service::new("web")
                    .listeners(&["web"])
                    .regions(&["us-east", "eu-west", "ap-northeast"])
                    .region_policy("geo"),
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
    let d = w.config("geo/streamgate-synthetic-city.mmdb").start().await;
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
    let d = w.config("geo/GeoLite2-Country-Test.mmdb").start().await;
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
    let d = w.config("geo/dbip-country-lite.mmdb").start().await;
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
        let (_dir, path) = write_config(&w.config(file).to_toml());
        let config = streamgate_config::load(&path).unwrap();
        let err = streamgate::Daemon::start(config).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(expect) && msg.contains(file.rsplit('/').next().unwrap()),
            "{file}: {msg}"
        );
    }
}

#[tokio::test]
async fn a_bad_database_on_reload_keeps_the_old_one_and_the_old_config() {
    let w = World::start().await;
    let d = w.config("geo/streamgate-synthetic-city.mmdb").start().await;
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "eu-west");
    d.rewrite_config(
        &w.config("geo/bad/MaxMind-DB-test-broken-pointers-24.mmdb")
            .to_toml(),
    );
    let (status, v) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("geo database is corrupt"),
        "{v}"
    );
    let (_, cfg) = d.admin(Method::GET, "/config", "").await;
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
    let d = w.config("geo/streamgate-synthetic-city.mmdb").start().await;
    let (status, v) = d
        .admin(
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
    let (status, _) = d
        .admin(Method::POST, "/regions/eu-west/deactivate", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, v) = d.admin(Method::GET, "/explain?ip=192.0.2.7", "").await;
    assert_eq!(
        v["regions"][0]["excluded_because"],
        "deactivated by an operator"
    );
    assert_eq!(v["decision"]["region"], "us-east");
    assert_eq!(v["decision"]["reason"], "failover");
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "us-east");
    d.admin(Method::POST, "/regions/eu-west/activate", "").await;
    assert_eq!(region_for_xff(&d, "192.0.2.7").await, "eu-west");
}

#[tokio::test]
async fn the_admin_api_wants_the_bearer_token_when_one_is_configured() {
    let o = Origin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, "correct-horse-battery\n").unwrap();
    let d = Config::new()
        .admin(Admin::new().token_file(&token_path))
        .listener(Listener::http("web"))
        .region(Region::new("r").backends(&[(&o, 1)]))
        .service(Service::new("s").listeners(&["web"]).regions(&["r"]))
        .start()
        .await;
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
