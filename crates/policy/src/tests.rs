use std::net::IpAddr;
use std::path::Path;

use http::HeaderMap;
use streamgate_config::rules::{Rules, Scheme};

use super::*;

/// The rules of a one-service config whose `[[services.rules]]` tables are `rules`.
pub(crate) fn compile(rules: &str) -> Rules {
    let text = format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[regions]]
name = "r"
backends = [ {{ address = "127.0.0.1:9001" }} ]

[[services]]
name = "site"
listeners = ["web"]
hosts = ["*"]
regions = ["r"]
{rules}
"#
    );
    match streamgate_config::parse(Path::new("rules.toml"), &text) {
        Ok(c) => c.services[0].rules.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn errors(rules: &str) -> String {
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[regions]]\nname = \"r\"\n\
         backends = [ {{ address = \"127.0.0.1:9001\" }} ]\n[[services]]\nname = \"site\"\n\
         listeners = [\"web\"]\nhosts = [\"*\"]\nregions = [\"r\"]\n{rules}"
    );
    match streamgate_config::parse(Path::new("rules.toml"), &text) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

struct Req {
    scheme: Scheme,
    method: &'static str,
    host: &'static str,
    port: Option<&'static str>,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    client: IpAddr,
    country: Option<&'static str>,
    region: Option<&'static str>,
}

fn get(path: &'static str) -> Req {
    Req {
        scheme: Scheme::Http,
        method: "GET",
        host: "www.example.com",
        port: None,
        path,
        query: None,
        headers: HeaderMap::new(),
        client: "198.51.100.7".parse().unwrap(),
        country: None,
        region: None,
    }
}

impl Req {
    fn view(&self) -> Request<'_> {
        Request {
            scheme: self.scheme,
            method: self.method,
            host: self.host,
            port: self.port,
            path: self.path,
            query: self.query,
            headers: &self.headers,
            client: self.client,
            country: self.country,
            region: self.region,
            service: "site",
        }
    }
}

fn redirect_of(rules: &Rules, r: &Req) -> Option<(u16, String)> {
    match evaluate(rules, &r.view()).answer {
        Some(Answer::Redirect { status, location }) => Some((status, location)),
        _ => None,
    }
}

#[test]
fn http_to_https_redirect_keeps_host_path_and_query_and_drops_the_port() {
    let rules =
        compile(r#"rules = [ { match = { scheme = "http" }, redirect = { scheme = "https" } } ]"#);
    let mut r = get("/a/b");
    r.query = Some("x=1");
    r.port = Some("8080");
    assert_eq!(
        redirect_of(&rules, &r),
        Some((301, "https://www.example.com/a/b?x=1".into()))
    );
    r.scheme = Scheme::Https;
    assert_eq!(evaluate(&rules, &r.view()), Outcome::default());
}

#[test]
fn redirect_table() {
    let rules = compile(
        r#"
[[services.rules]]
name = "canonical"
match = { hosts = ["example.com"] }
redirect = { host = "www.example.com", status = 308 }

[[services.rules]]
name = "posts"
match = { path_regex = "^/blog/(\\d+)/(.*)$" }
redirect = { path = "/posts/$1?slug=$2", status = 302 }

[[services.rules]]
name = "no-query"
match = { path = "/old" }
redirect = { path = "/new", keep_query = false, port = 8443 }
"#,
    );
    // host, path, query, expected (status, location)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<(u16, &'static str)>,
    );
    let cases: [Case; 5] = [
        (
            "example.com",
            "/x",
            Some("a=1"),
            Some((308, "http://www.example.com/x?a=1")),
        ),
        (
            "www.example.com",
            "/blog/42/hello",
            Some("a=1"),
            Some((302, "http://www.example.com/posts/42?slug=hello&a=1")),
        ),
        (
            "www.example.com",
            "/old",
            Some("a=1"),
            Some((301, "http://www.example.com:8443/new")),
        ),
        ("www.example.com", "/blog/x/hello", None, None),
        ("www.example.com", "/older", None, None),
    ];
    for (host, path, query, want) in cases {
        let mut r = get(path);
        r.host = host;
        r.query = query;
        assert_eq!(
            redirect_of(&rules, &r),
            want.map(|(s, l)| (s, l.to_string())),
            "{host}{path}"
        );
    }
}

#[test]
fn conditions_table() {
    let rules = compile(
        r#"
[[services.rules]]
name = "internal"
match = { clients = ["10.0.0.0/8"], methods = ["post", "PUT"], headers = { "X-Debug" = "1", "X-Trace" = "*" } }
deny = true
"#,
    );
    let base = || {
        let mut r = get("/");
        r.client = "10.1.2.3".parse().unwrap();
        r.method = "POST";
        r.headers.insert("x-debug", "1".parse().unwrap());
        r.headers.insert("x-trace", "anything".parse().unwrap());
        r
    };
    let denied = |r: &Req| evaluate(&rules, &r.view()).answer.is_some();
    assert!(denied(&base()));
    let mut r = base();
    r.client = "192.0.2.1".parse().unwrap();
    assert!(!denied(&r), "client outside the CIDR");
    let mut r = base();
    r.client = "::ffff:10.9.9.9".parse().unwrap();
    assert!(denied(&r), "an IPv4-mapped client is its IPv4 address");
    let mut r = base();
    r.method = "GET";
    assert!(!denied(&r), "method");

    let mut r = base();
    r.headers.insert("x-debug", "0".parse().unwrap());
    assert!(!denied(&r), "header value");
    let mut r = base();
    r.headers.remove("x-trace");
    assert!(!denied(&r), "header presence");
}

#[test]
fn a_rule_for_get_also_holds_for_head() {
    // As nginx's `limit_except GET`: most frameworks run the GET handler for a HEAD, its side
    // effects and its headers included.
    let rules = compile(
        r#"
[[services.rules]]
name = "export"
match = { path_prefix = "/export", methods = ["GET"] }
deny = true
"#,
    );
    let denied = |method: &'static str| {
        let mut r = get("/export/all");
        r.method = method;
        evaluate(&rules, &r.view()).answer.is_some()
    };
    let table = [
        ("GET", true),
        ("HEAD", true),
        ("POST", false),
        ("OPTIONS", false),
    ];
    for (method, want) in table {
        assert_eq!(denied(method), want, "{method}");
    }
}

#[test]
fn countries_need_the_country() {
    let rules = compile(
        r#"
[geo]
trusted_proxies = []
"#,
    );
    assert!(!rules.needs_country);
    let text = r#"rules = [ { match = { countries = ["DE"] }, deny = true } ]"#;
    assert!(
        errors(text).contains("countries come from the geo database"),
        "{}",
        errors(text)
    );
}

#[test]
fn rewrites_and_header_edits_accumulate_and_later_rules_see_the_new_path() {
    let rules = compile(
        r#"
[[services.rules]]
name = "api"
match = { path_prefix = "/api/v1/" }
rewrite = { strip_prefix = "/api/v1", add_prefix = "/v1-internal" }
request_headers = { set = { "X-Client" = "$client_ip", "X-Orig" = "$request_uri" }, remove = ["X-Internal"] }

[[services.rules]]
name = "internal"
match = { path_prefix = "/v1-internal/" }
response_headers = { set = { "X-Served-By" = "$backend in $region", "X-Id" = "$request_id" }, add = { "Link" = "<$path>" } }
last = true

[[services.rules]]
name = "never"
deny = true
"#,
    );
    let mut r = get("/api/v1/users");
    r.query = Some("q=1");
    let out = evaluate(&rules, &r.view());
    assert_eq!(out.matched, vec![0, 1]);
    assert_eq!(out.answer, None, "last stops before the deny");
    assert_eq!(out.path.as_deref(), Some("/v1-internal/users"));
    assert_eq!(
        out.request,
        vec![
            Edit::Remove("x-internal".into()),
            Edit::Set("x-client".into(), "198.51.100.7".into()),
            Edit::Set("x-orig".into(), "/api/v1/users?q=1".into()),
        ]
    );
    let late = Late {
        backend: Some("127.0.0.1:9001".parse().unwrap()),
        region: Some("r"),
    };
    let values: Vec<(String, String)> = out
        .response
        .iter()
        .map(|e| match e {
            Edit::Set(n, t) | Edit::Add(n, t) => (n.clone(), finish(t, &late)),
            Edit::Remove(n) => (n.clone(), String::new()),
        })
        .collect();
    assert_eq!(
        values[0],
        ("x-served-by".into(), "127.0.0.1:9001 in r".into())
    );
    assert_eq!(values[1].1.len(), 32, "a request id is 32 hex digits");
    assert_eq!(values[2], ("link".into(), "</v1-internal/users>".into()));

    // Only whole segments are stripped.
    let out = evaluate(&rules, &get("/api/v1x/users").view());
    assert_eq!(
        out.answer,
        Some(Answer::Deny {
            rule: "never".into()
        })
    );
}

#[test]
fn rewrite_path_with_captures_and_respond() {
    let rules = compile(
        r#"
[[services.rules]]
match = { path_regex = "^/u/([a-z]+)$" }
rewrite = { path = "/users?name=$1" }

[[services.rules]]
match = { path = "/health" }
respond = { status = 200, body = "ok from $service\n" }
response_headers = { set = { "Cache-Control" = "no-store" } }
"#,
    );
    let out = evaluate(&rules, &get("/u/ann").view());
    assert_eq!(out.path.as_deref(), Some("/users?name=ann"));
    let out = evaluate(&rules, &get("/health").view());
    assert_eq!(
        out.answer,
        Some(Answer::Respond {
            status: 200,
            body: "ok from site\n".into(),
            content_type: "text/plain; charset=utf-8".into()
        })
    );
    assert_eq!(out.response.len(), 1);
}

#[test]
fn validation_reports_every_error_with_its_line() {
    let text = r#"
[[services.rules]]
match = { path_regex = "(" , methods = ["G T"], clients = ["10.0.0.0/33"], path = "x" }
redirect = { status = 200 }

[[services.rules]]
request_headers = { set = { "Content-Length" = "1", "X-B" = "$backend", "X-C" = "$nope", "X-D" = "$2" } }

[[services.rules]]
match = { hosts = ["a.test"] }
"#;
    let e = errors(text);
    for want in [
        "rules.toml:14: services[0].rules[0].match.path_regex: not a regular expression",
        "services[0].rules[0].match.methods[0]",
        "services[0].rules[0].match.clients[0]",
        "services[0].rules[0].match.path: a path starts with",
        "services[0].rules[0].redirect.status",
        "the redirect changes nothing",
        "rules.toml:18: services[0].rules[1].request_headers.set.Content-Length",
        "$backend is known only once a backend answers",
        "unknown variable \"$nope\"",
        "$2 reads a capture group",
        "rules.toml:20: services[0].rules[2]: the rule has no action",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert!(!e.contains("rules[1]: the rule has no action"), "{e}");
}

#[test]
fn twenty_unmatched_rules_allocate_nothing() {
    let rules = compile(&twenty_rules());
    assert_eq!(rules.list.len(), 20);
    let mut r = get("/static/app.js");
    r.headers.insert("user-agent", "curl/8".parse().unwrap());
    r.scheme = Scheme::Https;
    // The regex engine's per-thread cache is made on first use.
    let _ = evaluate(&rules, &r.view());
    let counted = allocation_counter::measure(|| {
        for _ in 0..100 {
            assert!(evaluate(&rules, &r.view()).is_empty());
        }
    });
    assert_eq!(counted.count_total, 0, "allocations in 100 evaluations");
}

/// Twenty rules of every kind that a request for /static/… over https matches none of.
pub(crate) fn twenty_rules() -> String {
    let mut s = String::new();
    for i in 0..4 {
        s.push_str(&format!(
            r#"
[[services.rules]]
match = {{ scheme = "http", hosts = ["h{i}.test"] }}
redirect = {{ scheme = "https" }}
[[services.rules]]
match = {{ path_prefix = "/api/v{i}/" }}
rewrite = {{ strip_prefix = "/api" }}
[[services.rules]]
match = {{ path_regex = "^/blog/{i}/(\\d+)$" }}
redirect = {{ path = "/posts/$1" }}
[[services.rules]]
match = {{ headers = {{ "X-Debug-{i}" = "*" }}, methods = ["POST"] }}
request_headers = {{ set = {{ "X-Debug" = "$client_ip" }} }}
[[services.rules]]
match = {{ clients = ["10.{i}.0.0/16"], path = "/admin" }}
deny = true
"#
        ));
    }
    s
}

/// The example of docs/configuration.md, read from the docs so the two cannot drift.
#[test]
fn the_documented_example_compiles_and_does_what_it_says() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let block = doc
        .split("```toml\n")
        .find(|b| b.contains("name = \"security-headers\""))
        .and_then(|b| b.split("```").next())
        .expect("the rules example in docs/configuration.md");
    let rules = compile(block);
    assert_eq!(rules.list.len(), 6);
    let out = evaluate(&rules, &get("/x").view());
    assert_eq!(
        out.answer,
        Some(Answer::Redirect {
            status: 308,
            location: "https://www.example.com/x".into()
        })
    );
    assert_eq!(
        out.response.len(),
        4,
        "the security headers go on the redirect"
    );
    let mut r = get("/blog/7");
    r.scheme = Scheme::Https;
    assert_eq!(
        redirect_of(&rules, &r),
        Some((301, "https://www.example.com/posts/7".into()))
    );
    r.path = "/api/users";
    assert_eq!(evaluate(&rules, &r.view()).path.as_deref(), Some("/users"));
}

#[test]
fn redirects_cannot_be_turned_into_another_host() {
    let rules = compile(
        r#"
[[services.rules]]
match = { path_regex = "^/old(.*)$" }
redirect = { scheme = "https", host = "new.example.com", path = "$1" }

[[services.rules]]
match = { path_regex = "^/to/([^/]*)(/.*)?$" }
redirect = { host = "$1.example.com" }
"#,
    );
    for (path, want) in [
        ("/old@evil.test", "https://new.example.com/@evil.test"),
        ("/old.evil.test/", "https://new.example.com/.evil.test/"),
        ("/old/x", "https://new.example.com/x"),
    ] {
        assert_eq!(
            redirect_of(&rules, &get(path)).map(|(_, l)| l),
            Some(want.to_string()),
            "{path}"
        );
    }
    let out = evaluate(&rules, &get("/to/a@evil.test").view());
    assert!(
        matches!(out.answer, Some(Answer::Respond { status: 400, .. })),
        "{out:?}"
    );
    assert_eq!(
        redirect_of(&rules, &get("/to/shop")).map(|(_, l)| l),
        Some("http://shop.example.com/to/shop".to_string())
    );
}

#[test]
fn rewrites_are_normalised_before_later_rules_and_the_origin() {
    let rules = compile(
        r#"
[[services.rules]]
match = { path_regex = "^/img-(.*)$" }
rewrite = { path = "/images/$1" }

[[services.rules]]
match = { path_prefix = "/admin" }
deny = true

[[services.rules]]
match = { path_prefix = "/q/" }
rewrite = { path = "/search?term=x" }

[[services.rules]]
match = { path = "/search" }
response_headers = { set = { "X-Search" = "1" } }
"#,
    );
    // Dot segments a capture brings are resolved, inside the directory the template wrote;
    // one that would climb out of it is refused (400), not sent where routing never chose.
    let out = evaluate(&rules, &get("/img-a/../b").view());
    assert_eq!(out.path.as_deref(), Some("/images/b"));
    for climbs in ["/img-../admin", "/img-a/../../secret", "/img-../images-x/y"] {
        let out = evaluate(&rules, &get(climbs).view());
        assert!(
            matches!(out.answer, Some(Answer::Respond { status: 400, .. })),
            "{climbs}: {out:?}"
        );
        assert_eq!(out.path, None, "{climbs}");
    }
    let out = evaluate(&rules, &get("/q/x").view());
    assert_eq!(out.path.as_deref(), Some("/search?term=x"));
    assert_eq!(
        out.matched,
        vec![2, 3],
        "later rules match the path, not its query"
    );
}

#[test]
fn client_text_is_reflected_only_into_plain_text() {
    let e = errors(
        r#"rules = [ { respond = { body = "<p>$request_uri</p>", content_type = "text/html" } }, { request_headers = { add = { "Host" = "x" }, remove = ["host"] } } ]"#,
    );
    assert!(e.contains("use them only in a text/plain body"), "{e}");
    assert!(e.contains("a second Host"), "{e}");
    assert!(e.contains("every request has one Host"), "{e}");
}

#[test]
fn regions_match_the_region_the_client_is_routed_to() {
    let rules = compile(
        r#"rules = [ { match = { regions = ["r"] }, response_headers = { set = { "X-Region" = "r" } } } ]"#,
    );
    assert!(rules.needs_region);
    let mut r = get("/");
    assert!(evaluate(&rules, &r.view()).is_empty(), "region unknown");
    r.region = Some("r");
    assert_eq!(evaluate(&rules, &r.view()).matched, vec![0]);
    r.region = Some("other");
    assert!(evaluate(&rules, &r.view()).is_empty());
    let e = errors(r#"rules = [ { match = { regions = ["mars"] }, deny = true } ]"#);
    assert!(
        e.contains("\"mars\" is not a region of this service; its regions: r"),
        "{e}"
    );
}

#[test]
fn ports_split_off_hosts() {
    assert_eq!(split_port("a.test:8080"), ("a.test", Some("8080")));
    assert_eq!(split_port("a.test"), ("a.test", None));
    assert_eq!(split_port("[::1]:80"), ("[::1]", Some("80")));
    assert_eq!(split_port("[::1]"), ("[::1]", None));
}
