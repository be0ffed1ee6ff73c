//! RFC 9111 and RFC 9213 as the cache applies them, end to end: what a 304 may change, how the
//! cache's own requests are forwarded, keys per scheme, conditional misses, invalidation by
//! unsafe methods, interim responses, Age, and the targeted cache-control fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use streamgate_tests::tls::{client_tls, make_cert, write_cert};
use streamgate_tests::*;

fn config(backend: impl std::fmt::Display, cache: Cache) -> Config {
    Config::cdn(backend, &["cdn.example.com"], cache)
}

fn cache() -> Cache {
    Cache::new("64MiB")
}

async fn start(o: &Origin, cache: Cache) -> TestDaemon {
    config(o.addr, cache).start().await
}

async fn fetch(d: &TestDaemon, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut h = vec![("host", "cdn.example.com")];
    h.extend_from_slice(headers);
    get(&http1(), &d.url("web", path), &h).await.unwrap()
}

async fn call(d: &TestDaemon, method: &str, path: &str) -> Answer {
    send(
        &http1(),
        Method::from_bytes(method.as_bytes()).unwrap(),
        &d.url("web", path),
        &[("host", "cdn.example.com")],
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap()
}

fn xc(a: &Answer) -> &str {
    a.header("x-cache").unwrap_or("-")
}

#[tokio::test]
async fn a_304_updates_only_what_it_may_and_can_remove_the_object() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    // The test origin marks `x-origin-private` hop-by-hop (Connection) on every response, the
    // 304 too: never stored, so never on a hit.
    let path = "/c/a?cc=max-age%3D0&cc304=max-age%3D60&etag=v1";
    fetch(&d, path, &[]).await;
    assert_eq!(xc(&fetch(&d, path, &[]).await), "EXPIRED");
    let hit = fetch(&d, path, &[]).await;
    assert_eq!(xc(&hit), "HIT");
    assert!(
        hit.header("x-origin-private").is_none(),
        "{:?}",
        hit.headers
    );
    assert_eq!(hit.header("cache-control"), Some("max-age=60"));

    // A 304 that says no-store (or private): the client that asked gets its answer, and the
    // object is no longer kept.
    for cc in ["no-store", "private"] {
        let path = format!("/c/{cc}?cc=max-age%3D0&cc304={cc}&etag=v1");
        assert_eq!(xc(&fetch(&d, &path, &[]).await), "MISS");
        let asked = fetch(&d, &path, &[]).await;
        assert_eq!((asked.status, xc(&asked)), (StatusCode::OK, "EXPIRED"));
        let next = fetch(&d, &path, &[]).await;
        assert_eq!(xc(&next), "MISS", "{cc}: removed, fetched anew");
    }
}

#[tokio::test]
async fn the_caches_own_requests_are_forwarded_like_a_clients() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    let forged = [
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-host", "evil.example"),
    ];
    let path = "/c/r?cc=max-age%3D0&etag=v1";
    fetch(&d, path, &forged).await;
    assert_eq!(xc(&fetch(&d, path, &forged).await), "EXPIRED");
    let seen = o.last_headers();
    assert_eq!(seen["if-none-match"], "\"v1\"", "a revalidation");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "cdn.example.com");
    assert_eq!(seen["via"], "1.1 streamgate");

    let body = r#"{"urls": ["http://cdn.example.com/c/p?cc=max-age%3D60"]}"#;
    let (status, v) = d.admin(Method::POST, "/cache/prefetch", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let seen = o.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["via"], "1.1 streamgate");
    assert_eq!(xc(&fetch(&d, "/c/p?cc=max-age%3D60", &[]).await), "HIT");
}

#[tokio::test]
async fn http_and_https_are_different_keys() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(&["cdn.example.com"]);
    let (cp, kp) = write_cert(dir.path(), "c", &cert);
    let d = Config::new()
        .listener(Listener::http("web"))
        .listener(Listener::https("tls", &[(&cp, &kp)]))
        .region(Region::new("origin").address(o.addr))
        .service(
            Service::new("cdn")
                .listeners(&["web", "tls"])
                .hosts(&["cdn.example.com"])
                .regions(&["origin"])
                .cache(cache()),
        )
        .start()
        .await;
    let path = "/c/s?cc=max-age%3D60";
    let tls = client_tls(&[&cert], &[b"http/1.1"]);
    let over_tls = || {
        get_tls(
            d.addr("tls"),
            "cdn.example.com",
            tls.clone(),
            path,
            &[("host", "cdn.example.com")],
        )
    };
    assert_eq!(xc(&over_tls().await.unwrap()), "MISS");
    assert_eq!(o.last_headers()["x-forwarded-proto"], "https");
    assert_eq!(
        xc(&fetch(&d, path, &[]).await),
        "MISS",
        "http is another key"
    );
    assert_eq!(xc(&over_tls().await.unwrap()), "HIT");
    assert_eq!(xc(&fetch(&d, path, &[]).await), "HIT");
    // A purge without a scheme takes both.
    let (_, v) = d
        .admin(
            Method::POST,
            "/cache/purge",
            r#"{"url": "cdn.example.com/c/s?cc=max-age%3D60"}"#,
        )
        .await;
    assert_eq!(v["purged"], 2, "{v}");
    // Prefetch stores an https:// URL where https clients look (through the HTTPS listener).
    let (_, v) = d
        .admin(
            Method::POST,
            "/cache/prefetch",
            r#"{"urls": ["https://cdn.example.com/c/s?cc=max-age%3D60"]}"#,
        )
        .await;
    assert_eq!(v["ok"], 1, "{v}");
    assert_eq!(xc(&over_tls().await.unwrap()), "HIT");
    assert_eq!(xc(&fetch(&d, path, &[]).await), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_miss_is_answered_from_the_head_while_the_body_is_recorded() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    let path = "/c/big?cc=max-age%3D60&etag=v7&size=1048576&hold=1";
    let nm = tokio::time::timeout(
        Duration::from_secs(10),
        fetch(&d, path, &[("if-none-match", "\"v7\"")]),
    )
    .await
    .expect("answered without waiting for the body");
    assert_eq!((nm.status, xc(&nm)), (StatusCode::NOT_MODIFIED, "MISS"));
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), Some("\"v7\""));
    o.release();
    let mut hit = None;
    for _ in 0..500 {
        let a = fetch(&d, path, &[("range", "bytes=-4")]).await;
        if xc(&a) == "HIT" {
            hit = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hit = hit.expect("the object was recorded");
    assert_eq!(hit.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        hit.header("content-range"),
        Some("bytes 1048572-1048575/1048576")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_on_a_failed_revalidation_get_the_stale_copy() {
    let o = Origin::start("o").await;
    let d = Arc::new(start(&o, cache()).await);
    let path = "/c/sie?cc=max-age%3D0%2C%20stale-if-error%3D600";
    let first = fetch(&d, path, &[]).await;
    o.set_status(503);
    // Every client must arrive while the first one's revalidation runs: 300 ms was too short
    // for 30 new connections on a loaded CI. 2 s is still under the 5 s lock_timeout after
    // which a waiting client goes to the origin on its own.
    o.set_delay(Duration::from_secs(2));
    let before = o.hits();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { fetch(&d, path, &[]).await })
        })
        .collect();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!((a.status, xc(&a)), (StatusCode::OK, "STALE"));
        assert_eq!(a.body, first.body);
    }
    assert_eq!(
        o.hits() - before,
        1,
        "one origin request for 30 waiting clients"
    );
}

#[tokio::test]
async fn unsafe_and_unknown_methods_invalidate_the_url_and_its_locations() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    let doc = "/c/doc?cc=max-age%3D60";
    for method in ["PUT", "FROBNICATE"] {
        fetch(&d, doc, &[]).await;
        assert_eq!(xc(&fetch(&d, doc, &[]).await), "HIT");
        let r = call(&d, method, doc).await;
        assert_eq!((r.status, xc(&r)), (StatusCode::OK, "BYPASS"), "{method}");
        assert_eq!(
            xc(&fetch(&d, doc, &[]).await),
            "MISS",
            "{method} invalidated it"
        );
    }
    // Location and Content-Location on the same host go too; another host's do not.
    fetch(&d, "/c/kept?cc=max-age%3D60", &[]).await;
    let target = "/c/posts?cc=max-age%3D60";
    fetch(&d, target, &[]).await;
    let post = "/c/new?hdr=location%3A%20%2Fc%2Fposts%3Fcc%3Dmax-age%253D60\
                &hdr=content-location%3A%20http%3A%2F%2Felsewhere.example%2Fc%2Fkept%3Fcc%3Dmax-age%253D60";
    assert_eq!(call(&d, "POST", post).await.status, StatusCode::OK);
    assert_eq!(
        xc(&fetch(&d, target, &[]).await),
        "MISS",
        "Location invalidated"
    );
    assert_eq!(
        xc(&fetch(&d, "/c/kept?cc=max-age%3D60", &[]).await),
        "HIT",
        "another host's Content-Location is left alone"
    );
    // A failed unsafe request changes nothing.
    fetch(&d, doc, &[]).await;
    o.set_status(500);
    call(&d, "DELETE", doc).await;
    o.set_status(0);
    assert_eq!(xc(&fetch(&d, doc, &[]).await), "HIT");
}

#[tokio::test]
async fn interim_responses_are_not_the_answer_and_never_stored() {
    let o = RawOrigin::start(|_| {
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nhello"
            .to_vec()
    })
    .await;
    let d = config(o.addr, cache()).start().await;
    for want in ["MISS", "HIT"] {
        let a = fetch(&d, "/page", &[]).await;
        assert_eq!((a.status, xc(&a)), (StatusCode::OK, want));
        assert_eq!(&a.body[..], b"hello");
        assert!(
            a.header("link").is_none(),
            "the 103's fields are not the answer's"
        );
    }
    assert_eq!(o.heads().len(), 1);
}

#[tokio::test]
async fn age_is_read_from_its_first_member() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    // Age 90 (then 30): older than max-age=60, so stale at once.
    let path = "/c/age?cc=max-age%3D60&hdr=age%3A%2090%2C%2030";
    fetch(&d, path, &[]).await;
    assert_ne!(xc(&fetch(&d, path, &[]).await), "HIT");
    let path = "/c/age2?cc=max-age%3D60&hdr=age%3A%2030%2C%2090";
    fetch(&d, path, &[]).await;
    let hit = fetch(&d, path, &[]).await;
    assert_eq!(xc(&hit), "HIT");
    assert!(hit.header("age").unwrap().parse::<u64>().unwrap() >= 30);
}

#[tokio::test]
async fn targeted_cache_control_takes_precedence_for_this_cache_only() {
    let o = Origin::start("o").await;
    let d = start(&o, cache().targeted_field("Edge-Control")).await;
    // Browsers are told not to store it; the CDN keeps it a minute.
    let kept = "/c/t1?cc=no-store&hdr=cdn-cache-control%3A%20max-age%3D60";
    fetch(&d, kept, &[]).await;
    let hit = fetch(&d, kept, &[]).await;
    assert_eq!(xc(&hit), "HIT");
    assert_eq!(
        hit.header("cache-control"),
        Some("no-store"),
        "passed on as is"
    );
    // The other way round: CDN-Cache-Control forbids what Cache-Control allows.
    let refused = "/c/t2?cc=max-age%3D60&hdr=cdn-cache-control%3A%20no-store";
    fetch(&d, refused, &[]).await;
    assert_eq!(xc(&fetch(&d, refused, &[]).await), "MISS");
    // The configured field wins over CDN-Cache-Control.
    let own = "/c/t3?hdr=edge-control%3A%20max-age%3D60&hdr=cdn-cache-control%3A%20no-store";
    fetch(&d, own, &[]).await;
    assert_eq!(xc(&fetch(&d, own, &[]).await), "HIT");
    // A targeted field also replaces Expires.
    let exp = "/c/t4?hdr=expires%3A%20Sat%2C%2006%20Nov%202094%2008%3A49%3A37%20GMT\
               &hdr=cdn-cache-control%3A%20max-age%3D0";
    fetch(&d, exp, &[]).await;
    assert_ne!(xc(&fetch(&d, exp, &[]).await), "HIT");
}
