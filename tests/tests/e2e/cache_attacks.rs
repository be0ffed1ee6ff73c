//! What a client or an origin can try against the shared cache, found by an attack-minded review
//! of the cache rework: each a test that failed before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use streamgate_tests::*;

fn config(backend: impl std::fmt::Display, cache: Cache) -> Config {
    Config::cdn(backend, &["*"], cache)
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

fn xc(a: &Answer) -> &str {
    a.header("x-cache").unwrap_or("-")
}

/// `n` clients at once; their answers.
async fn at_once(d: &Arc<TestDaemon>, n: usize, path: &'static str) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { fetch(&d, path, &[]).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_on_an_uncacheable_answer_go_at_once_not_one_by_one() {
    let o = Origin::start("o").await;
    // Every client must arrive while the first one's request runs: 300 ms was too short for 20
    // new connections on a loaded CI, so the origin takes 2 s. One at a time, the 20 would take
    // 40 s: the lock_timeout (after which each waiting client goes on its own, all at once) is
    // 60 s so that it does not hide it.
    let d = Arc::new(start(&o, cache().lock_timeout("60s")).await);
    o.set_delay(Duration::from_secs(2));
    for a in at_once(&d, 20, "/c/u?cc=private").await {
        assert_eq!(a.status, StatusCode::OK);
    }
    assert!(
        o.max_in_flight() >= 5,
        "the waiting clients were sent one at a time (at most {} at once)",
        o.max_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_now_says_private_is_not_answered_with_the_stale_copy() {
    let o = Origin::start("o").await;
    let d = Arc::new(start(&o, cache()).await);
    let path = "/c/p?cc=max-age%3D0%2C%20stale-if-error%3D600";
    assert_eq!(xc(&fetch(&d, path, &[]).await), "MISS");
    o.set_cache_control("private");
    o.set_delay(Duration::from_millis(200));
    for a in at_once(&d, 10, path).await {
        assert_eq!(a.status, StatusCode::OK);
        assert_ne!(
            xc(&a),
            "STALE",
            "the origin is up: its answer, not the old copy"
        );
    }
}

#[tokio::test]
async fn a_range_of_an_object_too_large_to_store_is_asked_of_the_origin() {
    let o = Origin::start("o").await;
    let d = start(&o, cache().max_object_size("1MiB")).await;
    let path = "/c/huge.mp4?cc=max-age%3D60&size=4194304";
    let a = fetch(&d, path, &[("range", "bytes=3000000-3000009")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        a.header("content-range"),
        Some("bytes 3000000-3000009/4194304")
    );
    let want: Vec<u8> = (3_000_000..3_000_010)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    assert_eq!(&a.body[..], &want[..]);
    assert_eq!(
        o.last_headers()["range"],
        "bytes=3000000-3000009",
        "the origin served the range"
    );
    // A range near the start of a small object is still cut from the object being stored.
    let small = "/c/small?cc=max-age%3D60&size=1000";
    let a = fetch(&d, small, &[("range", "bytes=10-19")]).await;
    assert_eq!((a.status, a.body.len()), (StatusCode::PARTIAL_CONTENT, 10));
    assert!(o.last_headers().get("range").is_none());
    assert_eq!(xc(&fetch(&d, small, &[]).await), "HIT");
}

#[tokio::test]
async fn a_clients_preconditions_are_answered_by_the_cache_and_never_stored() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    let path = "/c/m?cc=max-age%3D60&etag=v1";
    let failed = fetch(&d, path, &[("if-match", "\"nope\"")]).await;
    assert_eq!(failed.status, StatusCode::PRECONDITION_FAILED);
    assert!(o.last_headers().get("if-match").is_none(), "not forwarded");
    let next = fetch(&d, path, &[]).await;
    assert_eq!(
        (next.status, xc(&next)),
        (StatusCode::OK, "HIT"),
        "not poisoned"
    );
    let ok = fetch(&d, path, &[("if-match", "\"v1\"")]).await;
    assert_eq!((ok.status, xc(&ok)), (StatusCode::OK, "HIT"));
    let ius = fetch(
        &d,
        path,
        &[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(ius.status, StatusCode::OK, "no Last-Modified: ignored");
}

#[tokio::test]
async fn forged_forwarding_fields_never_reach_the_origin() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    let forged = [
        ("x_forwarded_host", "evil.example"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-server", "evil.example"),
        ("true-client-ip", "203.0.113.9"),
        ("x-host", "evil.example"),
    ];
    fetch(&d, "/c/f?cc=max-age%3D60", &forged).await;
    let seen = o.last_headers();
    for (name, _) in forged {
        assert!(seen.get(name).is_none(), "{name} reached the origin");
    }
    // A method override makes a GET something else to some applications: not cached.
    let path = "/c/o?cc=max-age%3D60";
    let a = fetch(&d, path, &[("x-http-method-override", "DELETE")]).await;
    assert_eq!(xc(&a), "BYPASS");
    assert_eq!(xc(&fetch(&d, path, &[]).await), "MISS");
}

#[tokio::test]
async fn a_host_that_is_not_an_authority_is_refused() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    for head in [
        "Host: cdn.example.com/evil",
        "Host: cdn.example.com\r\nHost: other.example",
        "Host: a b",
    ] {
        let raw = format!("GET /c/x HTTP/1.1\r\n{head}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(d.addr("web"), raw.as_bytes(), 1 << 16)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{head}: {answer}");
    }
    assert_eq!(o.hits(), 0);
}

#[tokio::test]
async fn only_if_cached_does_not_go_to_the_origin_for_a_stale_object() {
    let o = Origin::start("o").await;
    let d = start(&o, cache()).await;
    let path = "/c/s?cc=max-age%3D0&etag=v1";
    fetch(&d, path, &[]).await;
    let a = fetch(&d, path, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn a_304_naming_another_representation_is_not_applied() {
    let o = RawOrigin::start(|head| {
        let body = "hello";
        if head.to_ascii_lowercase().contains("if-none-match") {
            // Not the stored ETag: this 304 validates something else.
            b"HTTP/1.1 304 Not Modified\r\netag: \"b\"\r\ncache-control: max-age=60\r\n\r\n"
                .to_vec()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\netag: \"a\"\r\ncache-control: max-age=0\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    })
    .await;
    let d = config(o.addr, cache()).start().await;
    assert_eq!(xc(&fetch(&d, "/doc", &[]).await), "MISS");
    let a = fetch(&d, "/doc", &[]).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(a.header("etag"), Some("\"a\""));
    let heads = o.heads();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        !heads[2].to_ascii_lowercase().contains("if-none-match"),
        "asked again, plainly"
    );
}

/// An origin that reads a query as PHP, Express and Python do (`&` separates, `;` does not) and
/// reflects its `id` parameter into a cacheable answer.
async fn reflecting_id() -> RawOrigin {
    RawOrigin::start(|head| {
        let target = head.split(' ').nth(1).unwrap_or("");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let id = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("id="))
            .unwrap_or("-");
        let body = format!("id {id}");
        fresh_for_a_minute(&body)
    })
    .await
}

/// A raw 200 of `body`, fresh for a minute.
fn fresh_for_a_minute(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
#[tokio::test]
async fn a_query_piece_the_origin_reads_as_one_parameter_is_keyed_whole() {
    let o = reflecting_id().await;
    let d = config(o.addr, cache().set("key_query", &["id"][..]))
        .start()
        .await;
    // The attacker's `id` is `1;x=<script>` to this origin; were `x=...` dropped from the key
    // as an unlisted parameter, the answer would be stored as `?id=1`'s.
    let a = fetch(&d, "/p?id=1;x=%3Cscript%3E", &[]).await;
    assert_eq!(a.text(), "id 1;x=%3Cscript%3E");
    let b = fetch(&d, "/p?id=1", &[]).await;
    assert_eq!(b.text(), "id 1", "x-cache {}", xc(&b));
    // Names in another case are the same parameter to some origins: keyed too.
    let c = fetch(&d, "/p?ID=2&id=1", &[]).await;
    assert_eq!(xc(&c), "MISS");
    // What the list leaves out still shares the entry.
    let e = fetch(&d, "/p?utm=9&id=1", &[]).await;
    assert_eq!((xc(&e), e.text().as_str()), ("HIT", "id 1"));
}

#[tokio::test]
async fn a_get_with_a_body_goes_to_the_origin_and_is_not_stored() {
    // An application that answers a GET from its body (some read JSON from it): that answer is
    // this client's, not the URL's.
    let o = RawOrigin::answering_after_bodies(|_| {
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 2\r\n\r\nok".to_vec()
    })
    .await;
    let d = config(o.addr, cache()).start().await;
    let url = d.url("web", "/search");
    for client in [http1(), http2()] {
        let a = send(
            &client,
            http::Method::GET,
            &url,
            &[("host", "cdn.example.com")],
            bytes::Bytes::from_static(b"{\"q\":\"evil\"}"),
        )
        .await
        .unwrap();
        assert_eq!(xc(&a), "BYPASS");
    }
    assert_eq!(o.bodies(), [12, 12], "the origin reads each body");
    // The URL's own answer is fetched and stored as usual.
    assert_eq!(xc(&fetch(&d, "/search", &[]).await), "MISS");
    assert_eq!(xc(&fetch(&d, "/search", &[]).await), "HIT");
}

#[tokio::test]
async fn an_answer_whose_vary_cannot_be_read_is_not_stored() {
    // The answer depends on X-User, named in a Vary the cache cannot read as text (obs-text):
    // stored as if it did not vary, one user's answer would be the next user's.
    let o = RawOrigin::start(|head| {
        let user = head
            .lines()
            .find_map(|l| l.strip_prefix("x-user: "))
            .unwrap_or("-")
            .to_string();
        let mut a = format!(
            "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: {}\r\nvary: x-user, x-r",
            user.len()
        )
        .into_bytes();
        a.extend_from_slice(b"\xe9gion\r\n\r\n");
        a.extend_from_slice(user.as_bytes());
        a
    })
    .await;
    let d = config(o.addr, cache()).start().await;
    let alice = fetch(&d, "/me", &[("x-user", "alice")]).await;
    assert_eq!(alice.text(), "alice");
    let bob = fetch(&d, "/me", &[("x-user", "bob")]).await;
    assert_eq!(bob.text(), "bob", "x-cache {}", xc(&bob));
    assert_eq!(xc(&bob), "MISS");
}

#[tokio::test]
async fn url_overrides_never_reach_the_origin_even_through_a_trusted_balancer() {
    let o = Origin::start("o").await;
    let d = config(o.addr, cache())
        .geo(Geo::without_database().trusted_proxies(&["127.0.0.1/32"]))
        .start()
        .await;
    let sent = [
        ("x-original-url", "/admin"),
        ("x_rewrite_url", "/admin"),
        ("x-original_url", "/admin"),
        ("x-forwarded-proto", "https"),
    ];
    fetch(&d, "/c/t?cc=max-age%3D60", &sent).await;
    let seen = o.last_headers();
    for name in ["x-original-url", "x_rewrite_url", "x-original_url"] {
        assert!(seen.get(name).is_none(), "{name}");
    }
    // What the balancer vouches for still goes on.
    assert!(seen.get("x-forwarded-proto").is_some(), "{seen:?}");
}

/// An origin whose answer differs by the `x-tenant` field and by the whole query: it reflects
/// both.
async fn per_tenant() -> RawOrigin {
    RawOrigin::start(|head| {
        let target = head.split(' ').nth(1).unwrap_or("");
        let tenant = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-tenant:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "-".into());
        let body = format!("{tenant} {target}");
        fresh_for_a_minute(&body)
    })
    .await
}

#[tokio::test]
async fn key_rules_widened_by_a_reload_do_not_serve_copies_stored_under_the_old_ones() {
    let o = per_tenant().await;
    let keyed = |c: Cache| c.set("key_query", &["id"][..]);
    let d = config(o.addr, keyed(cache())).start().await;
    // Stored before the operator learnt that the answers differ by tenant and by language.
    let a = fetch(&d, "/home", &[("x-tenant", "a")]).await;
    assert_eq!(a.text(), "a /home");
    assert_eq!(
        fetch(&d, "/p?id=1&lang=fr", &[]).await.text(),
        "- /p?id=1&lang=fr"
    );
    assert_eq!(xc(&fetch(&d, "/home", &[("x-tenant", "b")]).await), "HIT");

    let wider = keyed(cache())
        .set("key_query", &["id", "lang"][..])
        .set("key_headers", &["x-tenant"][..]);
    d.rewrite_config(&config(o.addr, wider).to_toml());
    d.daemon
        .apply(streamgate_config::load(&d.config_path).unwrap());
    // Tenant a's copy was stored for everyone; now tenants are told apart, it answers no one.
    let b = fetch(&d, "/home", &[("x-tenant", "b")]).await;
    assert_eq!((b.text().as_str(), xc(&b)), ("b /home", "MISS"));
    let b = fetch(&d, "/home", &[("x-tenant", "b")]).await;
    assert_eq!((b.text().as_str(), xc(&b)), ("b /home", "HIT"));
    let a = fetch(&d, "/home", &[("x-tenant", "a")]).await;
    assert_eq!((a.text().as_str(), xc(&a)), ("a /home", "MISS"));
    // `/p?id=1&lang=fr` was stored as `/p?id=1`: that key now means "no lang".
    let p = fetch(&d, "/p?id=1", &[]).await;
    assert_eq!((p.text().as_str(), xc(&p)), ("- /p?id=1", "MISS"));
}

#[tokio::test]
async fn a_chunked_answer_cut_short_by_a_size_line_without_digits_is_not_stored() {
    // An empty line, blanks, or an extension alone are no chunk size: httparse read each as
    // size 0, the last chunk, so `hello` looked whole and was stored although the origin's
    // body went on. hyper and nginx refuse them, and a bare LF inside an extension.
    let o = RawOrigin::start(|head| {
        let target = head.split(' ').nth(1).unwrap_or("");
        let size_line = match target {
            "/empty" => "",
            "/blank" => "  ",
            "/ext" => ";x=1",
            "/lf" => "0;a\nb",
            _ => "0",
        };
        format!(
            "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n{size_line}\r\n\r\n"
        )
        .into_bytes()
    })
    .await;
    let d = config(o.addr, cache()).start().await;
    for path in ["/empty", "/blank", "/ext", "/lf"] {
        let url = d.url("web", path);
        for _ in 0..2 {
            let got = get(&http1(), &url, &[("host", "cdn.example.com")]).await;
            assert!(got.is_err(), "{path}: a whole answer: {got:?}");
        }
    }
    assert_eq!(o.heads().len(), 8, "every request went to the origin");
    // The well-formed answer is stored.
    assert_eq!(fetch(&d, "/whole", &[]).await.text(), "hello");
    assert_eq!(xc(&fetch(&d, "/whole", &[]).await), "HIT");
}

/// A HEAD fetches a HEAD, whose answer has no body to store. Had it led the fill, the GETs
/// waiting behind it would be told "not stored" and each go to the origin on its own: a HEAD
/// sent as an object expires would undo request coalescing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_miss_does_not_lead_the_gets_behind_it_to_the_origin_one_each() {
    let o = Origin::start("o").await;
    let d = Arc::new(start(&o, cache().lock_timeout("60s")).await);
    o.set_delay(Duration::from_secs(2));
    let path = "/c/live?cc=max-age%3D60";
    let head = {
        let url = d.url("web", path);
        tokio::spawn(async move {
            let h = [("host", "cdn.example.com")];
            send(&http1(), http::Method::HEAD, &url, &h, bytes::Bytes::new()).await
        })
    };
    // The HEAD is at the origin when the GETs come.
    assert!(eventually(Duration::from_secs(5), || o.hits() == 1).await);
    for a in at_once(&d, 8, path).await {
        assert_eq!(a.status, StatusCode::OK, "{}", xc(&a));
        assert!(!a.body.is_empty());
    }
    assert_eq!(head.await.unwrap().unwrap().status, StatusCode::OK);
    assert_eq!(o.hits(), 2, "the HEAD, and one GET for the eight");
    // A HEAD is answered from what a GET stored.
    let h = [("host", "cdn.example.com")];
    let url = d.url("web", path);
    let again = send(&http1(), http::Method::HEAD, &url, &h, bytes::Bytes::new()).await;
    assert_eq!(xc(&again.unwrap()), "HIT");
    assert_eq!(o.hits(), 2);
}

/// An answer whose body ends when the origin closes (neither Content-Length nor chunked) is
/// passed on but not stored: its end cannot be told from an origin that died mid-body, and a
/// copy cut short was stored as whole and served to everyone for its lifetime. The same
/// answer with a length is stored.
#[tokio::test]
async fn an_answer_that_ends_when_the_origin_closes_is_not_stored() {
    let o = RawOrigin::start(|head| {
        let body = "x".repeat(100);
        if head.contains("/framed") {
            fresh_for_a_minute(&body)
        } else {
            // 100 of the 1000 bytes a crashing origin meant to send, then its close.
            format!("HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\r\n{body}").into_bytes()
        }
    })
    .await;
    let d = config(o.addr, cache()).start().await;
    for _ in 0..2 {
        let a = fetch(&d, "/cut", &[]).await;
        assert_eq!((a.status, a.body.len()), (StatusCode::OK, 100));
        assert_ne!(
            xc(&a),
            "HIT",
            "a body that may have been cut short was stored"
        );
    }
    assert_eq!(o.heads().len(), 2, "each request went to the origin");
    assert_eq!(xc(&fetch(&d, "/framed", &[]).await), "MISS");
    assert_eq!(xc(&fetch(&d, "/framed", &[]).await), "HIT");
}
