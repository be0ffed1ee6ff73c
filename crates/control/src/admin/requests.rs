//! The admin API's JSON request bodies, read into what the handlers act on. Pure functions of
//! the bytes: the `admin_json` fuzz target (fuzz/) and the seed test below feed them anything.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::Value;
use streamgate_cache::key::{purge_prefixes, split_url};

/// Most URLs one prefetch call takes.
pub const MAX_PREFETCH: usize = 10_000;

/// A body the API refuses, with the status and the message the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        message: message.into(),
    }
}

fn json(body: &[u8]) -> Result<Value, Refused> {
    // serde_json stops nesting at 128 levels, so a deep body is an error, not a stack overflow.
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// What `POST /cache/purge` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeWhat {
    /// One URL (`http://host/path`, or `host/path` for both schemes).
    Url(String),
    /// Key prefixes (two for a prefix given without a scheme).
    Prefixes(Vec<String>),
    Tag(String),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    pub what: PurgeWhat,
    /// Only this service's cache; all of them when absent.
    pub service: Option<String>,
    /// `"scope": "fleet"`: what to publish for every PoP.
    pub fleet: Option<streamgate_fleet::Target>,
}

/// `{"url"|"prefix"|"tag": "...", "all": true, "service": "...", "scope": "local"|"fleet"}`
pub fn purge(body: &[u8]) -> Result<PurgeRequest, Refused> {
    use streamgate_fleet::Target;
    let v = json(body)?;
    let text = |name: &str| v.get(name).and_then(Value::as_str);
    let fleet = match v.get("scope") {
        None => false,
        Some(s) if s.as_str() == Some("local") => false,
        Some(s) if s.as_str() == Some("fleet") => true,
        Some(_) => {
            return Err(bad(
                "scope is \"local\" (this PoP, the default) or \"fleet\"",
            ));
        }
    };
    let what = if let Some(url) = text("url") {
        if split_url(url).is_none() {
            return Err(bad(
                "url must look like http://host/path (or host/path for both schemes)",
            ));
        }
        PurgeWhat::Url(url.to_string())
    } else if let Some(prefix) = text("prefix") {
        PurgeWhat::Prefixes(purge_prefixes(prefix).ok_or_else(|| {
            bad("prefix must look like http://host/path (or host/path for both schemes)")
        })?)
    } else if let Some(tag) = text("tag") {
        PurgeWhat::Tag(tag.to_string())
    } else if v.get("all").and_then(Value::as_bool) == Some(true) {
        PurgeWhat::All
    } else {
        return Err(bad(
            "expected one of {\"url\": ...}, {\"prefix\": ...}, {\"tag\": ...}, {\"all\": true}",
        ));
    };
    let fleet = fleet.then(|| match &what {
        PurgeWhat::Url(u) => Target::Url(u.clone()),
        PurgeWhat::Prefixes(_) => Target::Prefix(text("prefix").unwrap_or_default().to_string()),
        PurgeWhat::Tag(t) => Target::Tag(t.clone()),
        PurgeWhat::All => Target::All,
    });
    // Checked as every PoP will check it, before anything is purged here.
    if let Some(target) = &fleet {
        streamgate_fleet::check_purge(text("service"), target)
            .map_err(|e| bad(format!("for the fleet: {e}")))?;
    }
    Ok(PurgeRequest {
        what,
        service: text("service").map(str::to_string),
        fleet,
    })
}

/// `{"address": "IP:port"}` of `POST /backends/drain` and `/backends/undrain`.
pub fn backend_address(body: &[u8]) -> Result<SocketAddr, Refused> {
    let v = json(body)?;
    let address = v
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("expected {\"address\": \"IP:port\"}"))?;
    address
        .parse()
        .map_err(|_| bad(format!("\"{address}\" is not IP:port")))
}

/// `{"region": "name"}` of `POST /services/{name}/primary`.
pub fn region(body: &[u8]) -> Result<String, Refused> {
    let v = json(body)?;
    v.get("region")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad("expected {\"region\": \"name\"}"))
}

/// `{"point": "streamgate-….snap"}` of `POST /snapshots/restore`: the point's file name or its
/// creation time in unix ms.
pub fn point(body: &[u8]) -> Result<String, Refused> {
    let v = json(body)?;
    v.get("point")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .ok_or_else(|| bad("expected {\"point\": \"streamgate-….snap\"} (see GET /snapshots)"))
}

/// `{"urls": ["http://host/path", ...], "deadline_seconds": N}` of `POST /cache/prefetch`. An
/// entry that is not a string is kept as "" so that its place in the answer reports it.
pub fn prefetch_urls(body: &[u8]) -> Result<Prefetch, Refused> {
    let v = json(body)?;
    let urls = v
        .get("urls")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("expected {\"urls\": [\"http://host/path\", ...]}"))?;
    if urls.len() > MAX_PREFETCH {
        return Err(Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("at most {MAX_PREFETCH} URLs per call"),
        });
    }
    let deadline = match v.get("deadline_seconds") {
        None => PREFETCH_DEADLINE,
        Some(d) => d
            .as_u64()
            .filter(|s| (1..=PREFETCH_DEADLINE.as_secs()).contains(s))
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                bad(format!(
                    "deadline_seconds: expected a whole number of seconds from 1 to {}",
                    PREFETCH_DEADLINE.as_secs()
                ))
            })?,
    };
    Ok(Prefetch {
        urls: urls
            .iter()
            .map(|u| u.as_str().unwrap_or("").to_string())
            .collect(),
        deadline,
    })
}

/// What `POST /cache/prefetch` asks for.
#[derive(Debug)]
pub struct Prefetch {
    pub urls: Vec<String>,
    /// The whole call's time: URLs not fetched by then are answered "not fetched".
    pub deadline: std::time::Duration,
}

/// The longest a prefetch call runs, and its default: 10 000 URLs of a slow origin, eight at a
/// time and 60 s each, held an admin slot (and its operator's script) for a day.
pub const PREFETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Every parser above and the operator-state file's, on one input: for the fuzz target and the
/// seed test. Panics only if a property fails: no request is read from a body that is not a
/// JSON object.
pub fn parse_all(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::overrides::Overrides>(data);
    let object = serde_json::from_slice::<Value>(data).is_ok_and(|v| v.is_object());
    let accepted = [
        purge(data).is_ok(),
        backend_address(data).is_ok(),
        region(data).is_ok(),
        prefetch_urls(data).is_ok(),
        point(data).is_ok(),
    ];
    for (i, ok) in accepted.into_iter().enumerate() {
        assert!(
            !ok || object,
            "parser {i} accepted a body that is not a JSON object"
        );
    }
    if let Ok(PurgeRequest {
        what: PurgeWhat::Prefixes(p),
        ..
    }) = purge(data)
    {
        assert!(matches!(p.len(), 1 | 2), "{p:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: [&[u8]; 3] = [
        include_bytes!("../../../../fuzz/seeds/admin_json/purge"),
        include_bytes!("../../../../fuzz/seeds/admin_json/requests"),
        include_bytes!("../../../../fuzz/seeds/admin_json/overrides"),
    ];

    #[test]
    fn bodies_are_read_or_refused_with_the_right_status() {
        let cases: Vec<(&str, Result<PurgeWhat, StatusCode>)> = vec![
            (
                r#"{"url": "http://a.test/x"}"#,
                Ok(PurgeWhat::Url("http://a.test/x".into())),
            ),
            (
                r#"{"prefix": "a.test/img/"}"#,
                Ok(PurgeWhat::Prefixes(vec![
                    "http://a.test/img/".into(),
                    "https://a.test/img/".into(),
                ])),
            ),
            (r#"{"tag": "t1"}"#, Ok(PurgeWhat::Tag("t1".into()))),
            (r#"{"all": true}"#, Ok(PurgeWhat::All)),
            (r#"{"all": false}"#, Err(StatusCode::BAD_REQUEST)),
            (r#"{"url": 7}"#, Err(StatusCode::BAD_REQUEST)),
            (r#"{"url": "/no-host"}"#, Err(StatusCode::BAD_REQUEST)),
            ("[1,2]", Err(StatusCode::BAD_REQUEST)),
            ("{", Err(StatusCode::BAD_REQUEST)),
        ];
        for (body, want) in cases {
            let got = purge(body.as_bytes()).map(|p| p.what).map_err(|r| r.status);
            assert_eq!(got, want, "{body}");
        }
        // For the fleet: what every PoP would take, or nothing (a purge the others drop must
        // not be purged here and reported as published).
        let long_url = format!(r#"{{"url": "http://a.test/{}""#, "x".repeat(9000));
        let long_service = format!(r#"{{"all": true, "service": "{}""#, "s".repeat(200));
        for (body, taken) in [
            (r#"{"tag": "t1""#.to_string(), true),
            (r#"{"tag": "a\u0001b""#.to_string(), false),
            (r#"{"all": true, "service": "two words""#.to_string(), false),
            (long_url, false),
            (long_service, false),
        ] {
            let local = format!("{body}}}");
            assert!(purge(local.as_bytes()).is_ok(), "{local}");
            let fleet = format!(r#"{body}, "scope": "fleet"}}"#);
            let got = purge(fleet.as_bytes()).map_err(|r| r.status);
            assert_eq!(got.is_ok(), taken, "{fleet}");
            if !taken {
                assert_eq!(got.err(), Some(StatusCode::BAD_REQUEST));
            }
        }
        assert_eq!(
            backend_address(br#"{"address": "[::1]:80"}"#),
            Ok("[::1]:80".parse().unwrap())
        );
        assert!(backend_address(br#"{"address": "host:80"}"#).is_err());
        assert_eq!(region(br#"{"region": "eu"}"#), Ok("eu".into()));
        let p = prefetch_urls(br#"{"urls": ["http://a/b", 3]}"#).unwrap();
        assert_eq!(p.urls, vec!["http://a/b".to_string(), String::new()]);
        assert_eq!(p.deadline, PREFETCH_DEADLINE);
        let deadlines = [
            ("1", Some(1)),
            ("600", Some(600)),
            ("0", None),
            ("601", None),
            ("1.5", None),
            ("\"60\"", None),
        ];
        for (given, want) in deadlines {
            let body = format!(r#"{{"urls": [], "deadline_seconds": {given}}}"#);
            let got = prefetch_urls(body.as_bytes())
                .ok()
                .map(|p| p.deadline.as_secs());
            assert_eq!(got, want, "{given}");
        }
        let many = format!(r#"{{"urls": [{}"x"]}}"#, "\"x\",".repeat(MAX_PREFETCH));
        assert_eq!(
            prefetch_urls(many.as_bytes())
                .map(|_| ())
                .map_err(|r| r.status),
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        // 10 000 nested arrays: an error, not a stack overflow.
        let deep = format!(r#"{{"urls": {}}}"#, "[".repeat(10_000));
        assert!(prefetch_urls(deep.as_bytes()).is_err());
    }

    /// Every seed, every truncation and every single-byte change of it: an answer each time.
    #[test]
    fn seeds_and_their_corruptions() {
        for seed in SEEDS {
            parse_all(seed);
            for cut in 0..seed.len() {
                parse_all(&seed[..cut]);
            }
            for i in 0..seed.len() {
                for b in [0u8, b'"', b',', b'{', b'[', b'\\', b'9', 0xff] {
                    let mut s = seed.to_vec();
                    s[i] = b;
                    parse_all(&s);
                }
            }
        }
    }
}
