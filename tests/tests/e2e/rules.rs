//! `[[services.rules]]` end to end: every action against the real daemon and a real origin on
//! loopback: HTTP to HTTPS and regex redirects, rewrites the origin sees, header edits with
//! variables both ways, fixed answers, denies by address and by country (the synthetic geo
//! database places 127.0.1.x in Germany, 127.0.2.x in the United States), and /explain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use http::{Method, StatusCode};
use streamgate_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const RULES: &[&str] = &[
    // First: rules run in order, and one that answers (redirect, respond, deny) ends them.
    r#"{ name = "security", response_headers = { set = { "Strict-Transport-Security" = "max-age=600", "X-Served-By" = "$backend $region" }, remove = ["X-Powered-By"] } }"#,
    r#"{ name = "https", match = { scheme = "http", hosts = ["secure.test"] }, redirect = { scheme = "https", status = 308 } }"#,
    r#"{ name = "posts", match = { path_regex = "^/blog/(\\d+)$" }, redirect = { path = "/posts/$1" } }"#,
    r#"{ name = "edge-health", match = { path = "/edge-health" }, respond = { status = 200, body = "edge ok for $client_ip\n" } }"#,
    r#"{ name = "admin", match = { path_prefix = "/admin", clients = ["127.0.5.0/24"] }, deny = true }"#,
    r#"{ name = "no-de", match = { path_prefix = "/us-only/", countries = ["DE"] }, deny = true }"#,
    r#"{ name = "api", match = { path_prefix = "/api/" }, rewrite = { strip_prefix = "/api" }, request_headers = { set = { "X-Client" = "$client_ip", "X-Request-Id" = "$request_id" }, remove = ["X-Internal"] } }"#,
    r#"{ name = "from-lb", match = { headers = { "X-Forwarded-For" = "10.9.9.9" } }, deny = true }"#,
    r#"{ name = "in-r", match = { regions = ["r"], path = "/where" }, respond = { body = "routed to r\n" } }"#,
    r#"{ name = "beta", match = { headers = { "X-Beta" = "1" } }, rewrite = { add_prefix = "/beta" } }"#,
    r#"{ name = "no-delete", match = { path_prefix = "/users/", methods = ["DELETE"] }, deny = true }"#,
];

async fn daemon(o: &Origin) -> TestDaemon {
    Config::new()
        .geo(Geo::fixture("geo/streamgate-synthetic-city.mmdb"))
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[o]))
        .service(
            Service::new("site")
                .listeners(&["web"])
                .hosts(&["*"])
                .regions(&["r"])
                .rules(RULES),
        )
        .start()
        .await
}

#[tokio::test]
async fn redirects_answers_and_denies_never_reach_the_origin() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let web = d.addr("web");
    let get = |from: &'static str, path: &'static str, host: &'static str| async move {
        get_from(ip(from), web, path, &[("host", host)])
            .await
            .unwrap()
    };

    let a = get("127.0.0.1", "/a/b?x=1", "secure.test:8080").await;
    assert_eq!(a.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        a.header("location"),
        Some("https://secure.test/a/b?x=1"),
        "the port of the plain listener is dropped, the query kept"
    );
    assert_eq!(
        a.header("strict-transport-security"),
        Some("max-age=600"),
        "response headers of the rules matched before go on a rule's own answer too"
    );

    let a = get("127.0.0.1", "/a/b", "secure.test.").await;
    assert_eq!(
        a.status,
        StatusCode::PERMANENT_REDIRECT,
        "a fully qualified name with its dot is the same host to rules as to routing"
    );

    let a = get("127.0.0.1", "/blog/42", "www.test").await;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(a.header("location"), Some("http://www.test/posts/42"));
    let a = get("127.0.0.1", "/blog/x", "www.test").await;
    assert_eq!(a.status, StatusCode::OK, "the regex needs digits");

    let a = get("127.0.1.5", "/where", "www.test").await;
    assert_eq!(a.text(), "routed to r\n", "match.regions");
    let hits = o.hits();
    let a = get("127.0.3.9", "/edge-health", "www.test").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "edge ok for 127.0.3.9\n");

    assert_eq!(
        get("127.0.5.7", "/admin/users", "www.test").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("127.0.1.5", "/us-only/x", "www.test").await.status,
        StatusCode::FORBIDDEN,
        "Frankfurt"
    );
    assert_eq!(o.hits(), hits, "no rule answer reached the origin");
    assert_eq!(
        get("127.0.6.7", "/admin/users", "www.test").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get("127.0.2.5", "/us-only/x", "www.test").await.status,
        StatusCode::OK,
        "Virginia"
    );

    let a = get_from(
        ip("127.0.6.8"),
        web,
        "/x",
        &[("host", "www.test"), ("x-forwarded-for", "10.9.9.9")],
    )
    .await
    .unwrap();
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a client that is not a trusted proxy cannot make a rule see X-Forwarded-For"
    );

    let m = d.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == r#"streamgate_access_denied_total{reason="rule",service="site"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn rewrites_and_header_variables_reach_the_origin_and_the_client() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let web = d.addr("web");

    let a = get_from(
        ip("127.0.3.4"),
        web,
        "/api/headers?q=1",
        &[
            ("host", "www.test"),
            ("x-internal", "secret"),
            // The same fields to a backend that reads them CGI-style (HTTP_X_INTERNAL).
            ("x_internal", "secret"),
            ("X_Client", "forged"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = o.last_headers();
    assert!(
        seen.get("x_internal").is_none() && seen.get("x_client").is_none(),
        "underscore spellings of removed or set fields go too: {seen:?}"
    );
    assert_eq!(
        seen.get("x-client").unwrap(),
        "127.0.3.4",
        "origin /headers was reached"
    );
    let id = seen.get("x-request-id").unwrap().to_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(
        seen.get("x-internal").is_none(),
        "removed before forwarding"
    );
    assert_eq!(
        a.header("x-served-by"),
        Some(format!("{} r", o.addr).as_str()),
        "$backend and $region of the answer"
    );

    let a = get_from(
        ip("127.0.0.1"),
        web,
        "/docs/x",
        &[("host", "www.test"), ("x-beta", "1")],
    )
    .await
    .unwrap();
    assert_eq!(a.text(), "origin o /beta/docs/x");
    let a = get_from(ip("127.0.0.1"), web, "/docs/x", &[("host", "www.test")])
        .await
        .unwrap();
    assert_eq!(a.text(), "origin o /docs/x");
}

#[tokio::test]
async fn explain_shows_the_rules_a_request_matches() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let (status, v) = d
        .admin(
            Method::GET,
            "/explain?host=www.test&path=/api/users&ip=127.0.0.9",
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rules = &v["rules"];
    assert_eq!(rules["count"], 11);
    assert_eq!(rules["matched"], serde_json::json!(["security", "api"]));
    assert_eq!(rules["rewritten_path"], "/users");
    assert_eq!(rules["request_headers"][1]["value"], "127.0.0.9");
    assert_eq!(rules["response_headers"][2]["value"], "$backend $region");

    let (_, v) = d
        .admin(Method::GET, "/explain?host=secure.test&path=/x%3Fa%3D1", "")
        .await;
    assert_eq!(
        v["rules"]["answer"],
        serde_json::json!({ "redirect": 308, "location": "https://secure.test/x?a=1" })
    );
}

/// A rewrite whose capture brings dot segments (`/img-../admin` gives `$1 = ../admin`) may not
/// send the request out of the directory its template writes: routing chose this service for
/// `/img-…`, not for `/admin` on the same backend. Refused with 400; the origin sees nothing.
#[tokio::test]
async fn a_rewrite_cannot_be_climbed_out_of_with_dot_segments_in_a_capture() {
    let o = Origin::start("o").await;
    let d = Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("r").origins(&[&o]))
        .service(
            Service::new("img")
                .listeners(&["web"])
                .path_prefix("/img-")
                .regions(&["r"])
                .rules(&[
                    // docs/configuration.md's recipe against encoded slashes.
                    r#"{ match = { path_regex = "(?i)%2f" }, deny = true }"#,
                    // A capture that makes `..;`, which is `..` to Tomcat, Jetty and Spring.
                    r#"{ match = { path_regex = "^/img-v-(.*)$" }, rewrite = { path = "/images/$1;v" }, last = true }"#,
                    r#"{ match = { path_regex = "^/img-(.*)$" }, rewrite = { path = "/images/$1" } }"#,
                ]),
        )
        .start()
        .await;
    let c = http1();
    let a = get(&c, &d.url("web", "/img-cat.png"), &[]).await.unwrap();
    assert_eq!(a.text(), "origin o /images/cat.png");
    let before = o.hits();
    for path in [
        "/img-../admin",
        "/img-%2e%2e/admin",
        "/img-../images-private/a",
        "/img-v-..",
    ] {
        let a = get(&c, &d.url("web", path), &[]).await.unwrap();
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.text());
    }
    let a = get(&c, &d.url("web", "/img-a%2fb"), &[]).await.unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN, "an encoded slash");
    assert_eq!(o.hits(), before, "nothing reached the origin");
}

/// A method in lower case is refused before the rules, as nginx does: `delete` matched no
/// rule for DELETE, and backends that upper-case methods (Django, Flask, PHP) ran it as one.
#[tokio::test]
async fn a_lower_case_method_cannot_pass_a_rule_for_its_upper_case() {
    let o = Origin::start("o").await;
    let d = daemon(&o).await;
    let web = d.addr("web");
    let upper = raw_exchange(
        web,
        b"DELETE /users/1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        1 << 16,
    )
    .await
    .unwrap();
    assert!(upper.starts_with("HTTP/1.1 403"), "{upper}");
    for method in ["delete", "Delete", "get"] {
        let raw =
            format!("{method} /users/1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(web, raw.as_bytes(), 1 << 16).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{method}: {answer}");
    }
    assert_eq!(o.hits(), 0, "nothing reached the backend");
}
