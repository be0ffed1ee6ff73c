//! consistent_hash end to end: real loopback origins that answer with their own name, a real
//! daemon, real reloads. The same key reaches the same origin; a fifth origin takes about a
//! fifth of the keys; a drained or dead origin sends only its own keys elsewhere; the sticky
//! cookie is set, honoured and replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::IpAddr;

use http::{Method, StatusCode};
use streamgate_tests::*;

/// Keys sent per round: enough that a fifth of them is well away from the bounds.
const KEYS: usize = 1000;

fn config(origins: &[&Origin], hash: Hash) -> String {
    let list: Vec<(&Origin, u32)> = origins.iter().map(|o| (*o, 1)).collect();
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("local").backends(&list))
        .service(
            Service::new("app")
                .listeners(&["web"])
                .regions(&["local"])
                .backend_policy("consistent_hash")
                .hash(hash),
        )
        .to_toml()
}

/// The origin name in an answer (`origin <name> <path>`).
fn origin_of(a: &Answer) -> String {
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    a.text().split_whitespace().nth(1).unwrap().to_string()
}

/// Which origin answers each key `u0..u{KEYS}` sent as X-User, eight requests at a time.
async fn mapping(d: &TestDaemon) -> Vec<String> {
    let client = http1();
    let url = d.url("web", "/work");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for k in (t..KEYS).step_by(8) {
                    let user = format!("u{k}");
                    let a = get(&client, &url, &[("x-user", &user)]).await.unwrap();
                    out.push((k, origin_of(&a)));
                }
                out
            })
        })
        .collect();
    let mut all = vec![String::new(); KEYS];
    for t in tasks {
        for (k, o) in t.await.unwrap() {
            all[k] = o;
        }
    }
    all
}

fn shares(m: &[String]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for o in m {
        *out.entry(o.clone()).or_insert(0) += 1;
    }
    out
}

async fn reload(d: &TestDaemon, text: &str) {
    d.rewrite_config(text);
    let (status, body) = d.admin(Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stays_on_its_origin_and_a_fifth_origin_takes_about_a_fifth_of_the_keys() {
    let (a, b, c, dd, e) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
        Origin::start("d").await,
        Origin::start("e").await,
    );
    let by_header = || Hash::new().key("header:X-User");
    let d = TestDaemon::start(&config(&[&a, &b, &c, &dd], by_header())).await;
    let first = mapping(&d).await;
    assert_eq!(
        mapping(&d).await,
        first,
        "the same key reached another origin"
    );
    let spread = shares(&first);
    assert_eq!(spread.len(), 4, "{spread:?}");
    for (o, n) in &spread {
        // 250 each expected; the spread of 1000 keys is about 14.
        assert!((175..=325).contains(n), "{o} got {n} of {KEYS}: {spread:?}");
    }

    reload(&d, &config(&[&a, &b, &c, &dd, &e], by_header())).await;
    let after = mapping(&d).await;
    let moved = first.iter().zip(&after).filter(|(x, y)| x != y).count();
    let ideal = KEYS as f64 / 5.0;
    eprintln!("a fifth origin moved {moved} of {KEYS} keys (ideal {ideal})");
    assert!(
        (0.5 * ideal..=1.6 * ideal).contains(&(moved as f64)),
        "{moved} of {KEYS} keys moved when a fifth origin was added; ideal {ideal}"
    );
    let to_e = first
        .iter()
        .zip(&after)
        .filter(|(x, y)| x != y && *y == "e")
        .count();
    assert!(
        to_e as f64 >= 0.9 * moved as f64,
        "{to_e} of {moved} moved keys went to the new origin"
    );

    // And back: removing it returns every key to where it was.
    reload(&d, &config(&[&a, &b, &c, &dd], by_header())).await;
    assert_eq!(mapping(&d).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_or_dead_origin_sends_only_its_own_keys_elsewhere() {
    let (a, b, c, dd) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
        Origin::start("d").await,
    );
    let d = TestDaemon::start(&config(
        &[&a, &b, &c, &dd],
        Hash::new().key("header:X-User"),
    ))
    .await;
    let first = mapping(&d).await;

    let check = |after: &[String], gone: &str| {
        let mut received = HashMap::new();
        for (x, y) in first.iter().zip(after) {
            if x == gone {
                assert_ne!(y, gone);
                *received.entry(y.clone()).or_insert(0) += 1;
            } else {
                assert_eq!(x, y, "a key of a usable origin moved");
            }
        }
        // Spread over the other three, not piled on one neighbour.
        assert_eq!(received.len(), 3, "{received:?}");
    };

    let body = format!("{{\"address\": \"{}\"}}", b.addr);
    assert_eq!(
        d.admin(Method::POST, "/backends/drain", &body).await.0,
        StatusCode::OK
    );
    check(&mapping(&d).await, "b");
    assert_eq!(
        d.admin(Method::POST, "/backends/undrain", &body).await.0,
        StatusCode::OK
    );
    assert_eq!(
        mapping(&d).await,
        first,
        "keys return to an undrained origin"
    );

    // A dead origin: its first request fails to connect and is sent to the key's next entry.
    c.stop().await;
    check(&mapping(&d).await, "c");
}

/// The `sg` cookie of a Set-Cookie field, and the field.
fn sticky(a: &Answer) -> Option<(String, String)> {
    let field = a.header("set-cookie")?.to_string();
    let value = field.strip_prefix("sg=")?.split(';').next()?.to_string();
    Some((value, field))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sticky_cookie_is_set_honoured_and_replaced_when_its_origin_dies() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let hash = Hash::new().key("client_ip").cookie("sg").cookie_ttl("1h");
    let d = TestDaemon::start(&config(&[&a, &b, &c], hash)).await;
    let to = d.addr("web");

    // Clients from different addresses hash to different origins; each gets a cookie naming it.
    let mut cookie_of: HashMap<String, String> = HashMap::new();
    let mut home_of: HashMap<IpAddr, String> = HashMap::new();
    for i in 2..60u8 {
        let from = IpAddr::from([127, 0, 0, i]);
        let answer = get_from(from, to, "/", &[]).await.unwrap();
        let origin = origin_of(&answer);
        let (value, field) = sticky(&answer).expect("a first request gets the cookie");
        assert_eq!(value.len(), 16, "{field}");
        assert!(
            !field.contains("127.0.0.1"),
            "the cookie names no address: {field}"
        );
        assert!(
            field.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"),
            "{field}"
        );
        if let Some(seen) = cookie_of.get(&origin) {
            assert_eq!(*seen, value, "one origin, one cookie value");
        }
        cookie_of.insert(origin.clone(), value);
        // The same client, without the cookie, hashes to the same origin.
        assert_eq!(
            origin_of(&get_from(from, to, "/", &[]).await.unwrap()),
            origin
        );
        home_of.insert(from, origin);
    }
    assert_eq!(cookie_of.len(), 3, "{cookie_of:?}");

    // A client sent with another origin's cookie goes there, and is not given a new cookie.
    let from = IpAddr::from([127, 0, 0, 2]);
    let home = home_of[&from].clone();
    let other = ["a", "b", "c"].into_iter().find(|o| *o != home).unwrap();
    let cookie = format!("sg={}", cookie_of[other]);
    for _ in 0..5 {
        let answer = get_from(from, to, "/", &[("cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(origin_of(&answer), other);
        assert!(sticky(&answer).is_none(), "a valid cookie is not set again");
    }
    // A cookie that names nothing is replaced by the hashed origin's.
    let answer = get_from(from, to, "/", &[("cookie", "sg=0123456789abcdef")])
        .await
        .unwrap();
    assert_eq!(origin_of(&answer), home);
    assert_eq!(sticky(&answer).unwrap().0, cookie_of[&home]);

    // The cookie's origin dies: the request goes where the client hashes and the cookie is
    // replaced by that origin's.
    [&a, &b, &c]
        .into_iter()
        .find(|o| o.name == other)
        .unwrap()
        .stop()
        .await;
    let answer = get_from(from, to, "/", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(origin_of(&answer), home);
    assert_eq!(sticky(&answer).unwrap().0, cookie_of[&home]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_hash_key() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let d = TestDaemon::start(&config(&[&a, &b], Hash::new().key("uri"))).await;
    let (status, body) = d
        .admin(
            Method::GET,
            "/explain?listener=web&host=x&path=/video/1&ip=192.0.2.1",
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hash"]["key"], "uri", "{body}");
    assert_eq!(body["hash"]["hashed"], "uri", "{body}");
    // The decision is the backend that request gets.
    let answer = get(&http1(), &d.url("web", "/video/1"), &[]).await.unwrap();
    let backend = body["decision"]["backend"].as_str().unwrap();
    let chosen = if backend == a.addr.to_string() {
        "a"
    } else {
        "b"
    };
    assert_eq!(origin_of(&answer), chosen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_hashes_the_path_the_request_is_routed_with() {
    // The data path hashes the normalised path: `/v//3` is hashed as `/v/3`. /explain hashed
    // the path as typed, and named another backend about three times in four.
    let origins = [
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
        Origin::start("d").await,
    ];
    let refs: Vec<&Origin> = origins.iter().collect();
    let d = TestDaemon::start(&config(&refs, Hash::new().key("uri"))).await;
    for i in 0..6 {
        let path = format!("/v//{i}/./x?q={i}");
        let query = format!(
            "/explain?listener=web&host=x&path={}&ip=192.0.2.1",
            path.replace('?', "%3F").replace('=', "%3D")
        );
        let (status, body) = d.admin(Method::GET, &query, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let backend = body["decision"]["backend"].as_str().unwrap();
        let named = origins
            .iter()
            .find(|o| o.addr.to_string() == backend)
            .map(|o| o.name.clone())
            .unwrap();
        let answer = get(&http1(), &d.url("web", &path), &[]).await.unwrap();
        assert_eq!(origin_of(&answer), named, "{path}");
    }
}
