use std::path::Path;
use std::time::Duration;

use super::*;

const GOOD: &str = r#"
[runtime]
workers = 2

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[regions]]
name = "us-east"
location = { lat = 39.0, lon = -77.5 }
countries = ["us", "CA"]
backends = [ { address = "127.0.0.1:9001", weight = 3 }, { address = "127.0.0.1:9002" } ]

[[regions]]
name = "eu-west"
backends = [ { address = "127.0.0.1:9101" } ]

[[services]]
name = "video"
listeners = ["web"]
hosts = ["video.example.com", "*.cdn.example.com"]
path_prefix = "/v/"
regions = ["us-east", "eu-west"]
backend_policy = "least_conn"

[services.timeouts]
connect = "250ms"
"#;

fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
    parse(Path::new("demo.toml"), text)
}

fn messages(text: &str) -> Vec<String> {
    parse_str(text)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn parses_the_contract_keys() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.runtime.workers.map(|w| w.get()), Some(2));
    assert_eq!(c.listeners[0].listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.listeners[0].protocol, Protocol::Http);
    let us = &c.regions[0];
    assert_eq!(us.countries, vec!["US", "CA"]);
    assert_eq!(us.backends[0].weight.get(), 3);
    assert_eq!(us.backends[1].weight.get(), 1);
    let s = &c.services[0];
    assert_eq!(s.backend_policy, BackendPolicy::LeastConn);
    assert_eq!(s.region_policy, RegionPolicy::Failover);
    assert_eq!(
        s.hosts,
        vec![
            HostPattern::Exact("video.example.com".into()),
            HostPattern::Suffix(".cdn.example.com".into())
        ]
    );
    assert_eq!(s.timeouts.connect, Duration::from_millis(250));
    assert_eq!(
        s.timeouts.upstream_response,
        Timeouts::default().upstream_response
    );
    assert_ne!(c.source.digest, 0);
}

#[test]
fn names_file_line_and_key_path_with_what_was_expected() {
    let text = GOOD.replace("\"least_conn\"", "\"leastconn\"");
    let line = text.lines().position(|l| l.contains("leastconn")).unwrap() + 1;
    assert_eq!(
        messages(&text),
        vec![format!(
            "demo.toml:{line}: services[0].backend_policy: unknown policy \"leastconn\"; expected one of round_robin, least_conn, latency, random, consistent_hash"
        )]
    );
}

#[test]
fn reports_every_error_at_once() {
    let text = r#"
[runtime]
workers = 0

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[regions]]
name = "empty"

[[services]]
name = "a"
listeners = ["web", "nope"]
regions = ["missing"]
region_policy = "nearest"

[services.timeouts]
connect = "3 parsecs"
"#;
    let errs = messages(text);
    assert_eq!(
        errs,
        vec![
            "demo.toml:3: runtime.workers: 0 is out of range; expected 1 to 1024",
            "demo.toml:10: listeners[1].name: duplicate listener name \"web\"",
            "demo.toml:11: listeners[1].listen: 127.0.0.1:8080 is already used by listeners[0].listen",
            "demo.toml:13: regions[0].backends: region \"empty\" has no backends; add backends = [{ address = \"127.0.0.1:9001\" }]",
            "demo.toml:18: services[0].listeners[1]: no listener named \"nope\"; defined listeners: web, web",
            "demo.toml:19: services[0].regions[0]: no region named \"missing\"; defined regions: empty",
            "demo.toml:20: services[0].region_policy: unknown policy \"nearest\"; expected one of geo, latency, failover",
            "demo.toml:23: services[0].timeouts.connect: \"3 parsecs\": unknown unit \" parsecs\"; expected one of us, ms, s, m, h, d",
        ]
    );
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let text = GOOD.replace("path_prefix = \"/v/\"", "path_prefx = \"/v/\"");
    let errs = messages(&text);
    assert_eq!(errs.len(), 1);
    let line = text.lines().position(|l| l.contains("path_prefx")).unwrap() + 1;
    assert!(
        errs[0].starts_with(&format!(
            "demo.toml:{line}: services[0].path_prefx: unknown field `path_prefx`"
        )),
        "{errs:?}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let errs = messages("[runtime]\nworkers = = 2\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("demo.toml:2: "), "{errs:?}");
}

#[test]
fn wrong_types_name_the_key() {
    let errs = messages(&GOOD.replace("workers = 2", "workers = \"two\""));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("demo.toml:3: runtime.workers: "),
        "{errs:?}"
    );
}

#[test]
fn duplicate_routes_and_bad_hosts() {
    let text = format!(
        "{GOOD}\n[[services]]\nname = \"copy\"\nlisteners = [\"web\"]\nhosts = [\"video.example.com\", \"bad host\"]\npath_prefix = \"/v/\"\nregions = [\"eu-west\"]\n"
    );
    let errs = messages(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("services[1].hosts[1]: invalid host pattern \"bad host\""),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("services[1].path_prefix: listener \"web\", host \"video.example.com\", path \"/v/\" is already routed to service \"video\""),
        "{errs:?}"
    );
}

#[test]
fn geo_policy_needs_a_database_and_admin_off_loopback_needs_a_token() {
    let text = GOOD.replace("backend_policy = \"least_conn\"", "region_policy = \"geo\"")
        + "\n[admin]\nlisten = \"0.0.0.0:9901\"\n";
    let errs = messages(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("region_policy: policy \"geo\" needs a [geo] table"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("admin.listen: 0.0.0.0:9901 is reachable off this machine"),
        "{errs:?}"
    );
}

#[test]
fn health_check_keys() {
    let text = format!(
        "{GOOD}\n[services.health]\nkind = \"http\"\npath = \"/healthz\"\nexpect_status = \"2xx\"\ninterval = \"200ms\"\nfall = 3\n"
    );
    let c = parse_str(&text).unwrap();
    let h = c.services[0].health.as_ref().unwrap();
    assert_eq!(h.interval, Duration::from_millis(200));
    assert_eq!(h.fall.get(), 3);
    assert_eq!(h.rise.get(), 2);
    match &h.kind {
        HealthKind::Http(p) => {
            assert_eq!(p.path, "/healthz");
            assert_eq!(p.expect_status, (200, 299));
        }
        HealthKind::Tcp => panic!("expected http"),
    }
    let bad = format!("{GOOD}\n[services.health]\nkind = \"tcp\"\npath = \"/x\"\n");
    assert!(
        messages(&bad)[0]
            .contains("services[0].health.path: only http health checks take this key")
    );
    let head = format!(
        "{GOOD}\n[services.health]\nkind = \"http\"\nmethod = \"HEAD\"\nbody_contains = \"ok\"\n"
    );
    let line = head
        .lines()
        .position(|l| l.starts_with("body_contains"))
        .unwrap()
        + 1;
    assert_eq!(
        messages(&head),
        [format!(
            "demo.toml:{line}: services[0].health.body_contains: an answer to HEAD has no body, so this could never match; use method = \"GET\" or remove body_contains"
        )]
    );
}

#[test]
fn port_zero_listeners_may_repeat() {
    let text = GOOD.replace("127.0.0.1:8080", "127.0.0.1:0")
        + "\n[[listeners]]\nname = \"web2\"\nlisten = \"127.0.0.1:0\"\n";
    parse_str(&text).unwrap();
}

#[test]
fn diff_reports_changes() {
    let a = parse_str(GOOD).unwrap();
    let b = parse_str(
        &GOOD
            .replace("127.0.0.1:9002", "127.0.0.1:9003")
            .replace("workers = 2", "workers = 3"),
    )
    .unwrap();
    let d = diff::diff(&a, &b);
    assert_eq!(
        d.backends_added,
        vec![("us-east".to_string(), "127.0.0.1:9003".parse().unwrap())]
    );
    assert_eq!(
        d.backends_removed,
        vec![("us-east".to_string(), "127.0.0.1:9002".parse().unwrap())]
    );
    assert_eq!(d.needs_restart, vec!["runtime.workers".to_string()]);
    assert!(diff::diff(&a, &a).is_empty());
    // The connection budget is set when the listeners start.
    let m = parse_str(&GOOD.replace("workers = 2", "workers = 2\nmax_connections = 5000")).unwrap();
    assert_eq!(m.runtime.max_connections.map(|n| n.get()), Some(5000));
    assert_eq!(
        diff::diff(&a, &m).needs_restart,
        ["runtime.max_connections"]
    );
    assert_eq!(
        messages(&GOOD.replace("workers = 2", "workers = 2\nmax_connections = 0")),
        ["demo.toml:4: runtime.max_connections: 0 is out of range; expected 1 to 10000000"]
    );
    let p = parse_str(&format!("[admin]\nmax_connections_per_client = 3\n{GOOD}")).unwrap();
    assert_eq!(p.admin.max_connections_per_client, Some(3));
    assert_eq!(
        diff::diff(&a, &p).needs_restart,
        ["admin.max_connections_per_client"]
    );
    // The fleet link is made at start.
    let f = parse_str(&format!(
        "{GOOD}\n[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\npop = \"fra1\"\n"
    ))
    .unwrap();
    assert_eq!(diff::diff(&a, &f).needs_restart, vec!["fleet".to_string()]);
    // Listener settings read when it starts accepting are named.
    let c = parse_str(&GOOD.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nmax_connections = 10\nmax_headers = 64",
    ))
    .unwrap();
    assert_eq!(
        diff::diff(&a, &c).needs_restart,
        [
            "listeners \"web\" max_connections",
            "listeners \"web\" max_headers"
        ]
    );
}

#[test]
fn upstream_and_l4_keys_are_checked_against_the_service_kind() {
    // PROXY headers to an HTTP service's backends would be read as a broken request.
    let text = format!("{GOOD}\n[services.upstream]\nsend_proxy = \"v2\"\n");
    let line = text.lines().position(|l| l.contains("send_proxy")).unwrap() + 1;
    assert_eq!(
        messages(&text),
        vec![format!(
            "demo.toml:{line}: services[0].upstream.send_proxy: only tcp and tls_passthrough services send PROXY headers; HTTP services name the client in X-Forwarded-For and Forwarded"
        )]
    );
    // TLS settings without a TLS protocol, and an unknown protocol.
    let text = format!("{GOOD}\n[services.upstream]\nprotocol = \"spdy\"\n");
    assert!(messages(&text)[0].contains(
        "services[0].upstream.protocol: unknown protocol \"spdy\"; expected one of http1, h2c, https, h2"
    ));
    let text = format!("{GOOD}\n[services.upstream]\ntls_server_name = \"origin.example\"\n");
    assert!(messages(&text)[0].contains("TLS settings need protocol = \"https\" or \"h2\""));
    let ok = format!(
        "{GOOD}\n[services.upstream]\nprotocol = \"h2\"\ntls_server_name = \"origin.example\"\ntls_verify = false\n"
    );
    let c = parse_str(&ok).unwrap();
    assert_eq!(c.services[0].upstream.protocol, UpstreamProtocol::H2);
    assert!(!c.services[0].upstream.tls.verify);
}

#[test]
fn snapshot_keys_with_defaults_and_their_errors() {
    let c = parse_str(&format!("{GOOD}\n[snapshots]\ndir = \"/var/lib/sg\"\n")).unwrap();
    let s = c.snapshots.unwrap();
    assert_eq!(s.dir, Path::new("/var/lib/sg"));
    assert_eq!(s.interval, Duration::from_secs(300));
    assert_eq!(s.keep.get(), 12);
    assert!(parse_str(GOOD).unwrap().snapshots.is_none());

    let text =
        format!("{GOOD}\n[snapshots]\ndir = \"/var/lib/sg\"\ninterval = \"10ms\"\nkeep = 0\n");
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(
        messages(&text),
        vec![
            format!(
                "demo.toml:{}: snapshots.interval: must be at least 1s",
                line("interval")
            ),
            format!(
                "demo.toml:{}: snapshots.keep: 0 is out of range; expected 1 to 10000",
                line("keep")
            ),
        ]
    );
    let missing = messages(&format!("{GOOD}\n[snapshots]\ninterval = \"1m\"\n"));
    assert!(
        missing.len() == 1 && missing[0].contains("snapshots") && missing[0].contains("dir"),
        "{missing:?}"
    );
}

#[test]
fn cache_safety_keys_with_defaults_and_their_errors() {
    let c = parse_str(&format!("{GOOD}\n[services.cache]\nmax_size = \"64MiB\"\n")).unwrap();
    let spec = c.services[0].cache.clone().unwrap();
    assert_eq!(spec.max_variants, 32);
    assert_eq!(spec.max_fill_bytes, 32 << 20, "half of max_size");
    assert_eq!(
        spec.targeted_fields,
        ["streamgate-cache-control", "cdn-cache-control"]
    );
    let c = parse_str(&format!(
        "{GOOD}\n[services.cache]\nmax_size = \"64MiB\"\nmax_object_size = \"48MiB\"\n\
         targeted_field = \"\"\ncdn_cache_control = false\n"
    ))
    .unwrap();
    let spec = c.services[0].cache.clone().unwrap();
    assert_eq!(spec.max_fill_bytes, 48 << 20, "at least max_object_size");
    assert!(spec.targeted_fields.is_empty());

    let text = format!(
        "{GOOD}\n[services.cache]\nmax_size = \"64MiB\"\nmax_variants = 0\n\
         max_fill_bytes = \"lots\"\ntargeted_field = \"Cache-Control\"\n"
    );
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let got = messages(&text);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[0],
        format!(
            "demo.toml:{}: services[0].cache.max_variants: 0 is out of range; expected 1 to 1024",
            line("max_variants")
        )
    );
    assert!(
        got[1].starts_with(&format!(
            "demo.toml:{}: services[0].cache.max_fill_bytes:",
            line("max_fill_bytes")
        )),
        "{got:?}"
    );
    assert_eq!(
        got[2],
        format!(
            "demo.toml:{}: services[0].cache.targeted_field: must not be Cache-Control: a targeted field overrides it",
            line("targeted_field")
        )
    );
}

#[test]
fn consistent_hash_keys_with_defaults_and_their_errors() {
    let hashed = GOOD.replace("\"least_conn\"", "\"consistent_hash\"");
    let c = parse_str(&hashed).unwrap();
    assert_eq!(c.services[0].backend_policy, BackendPolicy::ConsistentHash);
    assert_eq!(c.services[0].hash, Some(HashPolicy::default()), "client_ip");
    let c = parse_str(&format!(
        "{hashed}\n[services.hash]\nkey = \"header:X-User\"\ncookie = \"sg_backend\"\ncookie_ttl = \"1h\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.services[0].hash,
        Some(HashPolicy {
            key: HashKey::Header("x-user".into()),
            cookie: Some(StickyCookie {
                name: "sg_backend".into(),
                ttl: Some(Duration::from_secs(3600)),
            }),
        })
    );
    assert_eq!(parse_str(GOOD).unwrap().services[0].hash, None);

    // Every problem at once, each on its line.
    let text = format!(
        "{GOOD}\n[services.hash]\nkey = \"query:id\"\ncookie = \"a b\"\ncookie_ttl = \"0s\"\n"
    );
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(
        messages(&text),
        vec![format!(
            "demo.toml:{}: services[0].hash: applies only to backend_policy = \"consistent_hash\"; this service uses \"least_conn\"",
            at("[services.hash]")
        )]
    );
    let text = format!(
        "{hashed}\n[services.hash]\nkey = \"query:id\"\ncookie = \"a b\"\ncookie_ttl = \"0s\"\n"
    );
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(
        messages(&text),
        vec![
            format!(
                "demo.toml:{}: services[0].hash.key: unknown key \"query:id\"; expected one of \"client_ip\", \"uri\", \"header:NAME\", \"cookie:NAME\"",
                at("key = ")
            ),
            format!(
                "demo.toml:{}: services[0].hash.cookie: \"a b\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                at("cookie = ")
            ),
            format!(
                "demo.toml:{}: services[0].hash.cookie_ttl: must be longer than zero; leave it out for a session cookie",
                at("cookie_ttl")
            ),
        ]
    );
    let text = format!("{hashed}\n[services.hash]\ncookie_ttl = \"1h\"\n");
    assert!(messages(&text)[0].contains("a cookie_ttl needs its cookie"));

    // A TCP service sees connections, not requests.
    let l4 = r#"
[[listeners]]
name = "db"
listen = "127.0.0.1:5432"
protocol = "tcp"

[[regions]]
name = "r"
backends = [ { address = "127.0.0.1:9001" } ]

[[services]]
name = "pg"
listeners = ["db"]
regions = ["r"]
backend_policy = "consistent_hash"

[services.hash]
key = "header:X-User"
cookie = "sg"
"#;
    let errors = messages(l4);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains(
            "services[0].hash.key: a tcp service sees no requests, only connections: it can hash on \"client_ip\" only, not \"header:X-User\""
        ),
        "{errors:?}"
    );
    assert!(errors[1].contains("services[0].hash.cookie: a tcp service has no cookies to set"));
    let ok = l4.replace(
        "key = \"header:X-User\"\ncookie = \"sg\"",
        "key = \"client_ip\"",
    );
    assert_eq!(
        parse_str(&ok).unwrap().services[0].hash,
        Some(HashPolicy::default())
    );
}

#[test]
fn compression_memory_defaults_and_must_hold_one_encoder() {
    let c = parse_str(&format!("{GOOD}\n[services.compression]\n")).unwrap();
    let spec = c.services[0].compression.clone().unwrap();
    assert_eq!(spec.max_memory, 256 << 20);
    // (levels, encodings, max_memory, accepted?)
    let table = [
        ("", "\"gzip\"", "\"512KiB\"", true),
        ("", "\"gzip\"", "\"300KiB\"", false),
        ("brotli_level = 4", "\"br\", \"gzip\"", "\"6MiB\"", true),
        ("brotli_level = 9", "\"br\", \"gzip\"", "\"6MiB\"", false),
        ("zstd_level = 19", "\"zstd\"", "\"64MiB\"", false),
        ("zstd_level = 19", "\"gzip\"", "\"1MiB\"", true),
    ];
    for (levels, encodings, max, ok) in table {
        let text = format!(
            "{GOOD}\n[services.compression]\nencodings = [{encodings}]\n{levels}\nmax_memory = {max}\n"
        );
        match parse_str(&text) {
            Ok(_) => assert!(ok, "{levels} {encodings} {max}: accepted"),
            Err(e) => {
                assert!(!ok, "{levels} {encodings} {max}: {e:?}");
                let line = text.lines().position(|l| l.contains("max_memory")).unwrap() + 1;
                let got = e.0[0].to_string();
                assert!(
                    got.starts_with(&format!(
                        "demo.toml:{line}: services[0].compression.max_memory:"
                    )) && got.contains("raise it to at least"),
                    "{got}"
                );
            }
        }
    }
}

#[test]
fn max_ejection_percent_is_a_share_of_a_region() {
    let outlier = |v: &str| format!("{GOOD}\n[services.outlier]\nmax_ejection_percent = {v}\n");
    let errs = messages(&outlier("0"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("outlier.max_ejection_percent: 0 is out of range; expected 1 to 100"),
        "{errs:?}"
    );
    let cfg = parse_str(&outlier("20")).unwrap();
    assert_eq!(cfg.services[0].outlier.max_ejection_percent, 20);
}

#[test]
fn strict_sni_is_for_https_listeners() {
    let text = GOOD.replacen(
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"127.0.0.1:8080\"\nstrict_sni = true\n",
        1,
    );
    let errs = messages(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("demo.toml:8: listeners[0].strict_sni: only https listeners"),
        "{errs:?}"
    );
}

#[test]
fn rule_header_values_hold_no_control_characters() {
    // TOML escapes, as an operator would write them.
    for (value, refused) in [
        (r"a\tb", false),
        (r"caf\u00e9", false),
        (r"a\u0001b", true),
        (r"a\u007fb", true),
        (r"a\rb", true),
        (r"a\u0000", true),
    ] {
        let text = format!(
            "{GOOD}\n[[services.rules]]\nname = \"r\"\nrequest_headers = {{ set = {{ \"X-User\" = \"{value}\" }} }}\n"
        );
        let errors = parse_str(&text)
            .err()
            .map(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>());
        match (refused, errors) {
            (false, None) => {}
            (true, Some(e)) => assert!(
                e.len() == 1
                    && e[0].contains("request_headers.set.X-User")
                    && e[0].contains("no control characters"),
                "{value}: {e:?}"
            ),
            (refused, e) => panic!("{value}: refused {refused}, errors {e:?}"),
        }
    }
}
