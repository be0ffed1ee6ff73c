//! `consistent_hash` on the request path: the key a request hashes, the sticky cookie it
//! carries, and the cookie StreamGate sets. Pure functions of the head; no allocation but the
//! Set-Cookie value.

use http::HeaderMap;
use http::header::{self, HeaderValue};
use streamgate_balance::select::key_hash;
use streamgate_config::{HashKey, HashPolicy, StickyCookie};

/// The hashes a request gives `consistent_hash`: its key's (`None`: absent, so the client
/// address is hashed instead) and the backend its sticky cookie names, if it carries one that
/// parses.
pub(crate) fn hash_facts(
    policy: &HashPolicy,
    headers: &HeaderMap,
    path_and_query: &str,
) -> (Option<u64>, Option<u64>) {
    let key = match &policy.key {
        HashKey::ClientIp => None,
        HashKey::Uri => Some(key_hash(path_and_query.as_bytes())),
        HashKey::Header(name) => headers.get(name.as_str()).map(|v| key_hash(v.as_bytes())),
        HashKey::Cookie(name) => cookie(headers, name).map(key_hash),
    };
    let sticky = policy
        .cookie
        .as_ref()
        .and_then(|c| cookie(headers, &c.name))
        .and_then(parse_sticky);
    (key, sticky)
}

/// The value of cookie `name` in the request's Cookie fields (HTTP/2 may send several), without
/// DQUOTEs (RFC 6265 §4.1.1); the first wins.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            if n != name.as_bytes() {
                return None;
            }
            Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            })
        })
}

/// A sticky cookie's value: the backend's id as 16 lower-case hex digits.
fn parse_sticky(v: &[u8]) -> Option<u64> {
    // from_str_radix alone would take a leading '+'.
    if v.len() != 16 || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
}

/// The Set-Cookie naming backend `id`: for the whole site, out of scripts' reach, sent on
/// top-level navigation from other sites but not on their sub-requests, over TLS only when the
/// listener is TLS (a cookie marked Secure set over plain HTTP is dropped by browsers).
pub(crate) fn set_cookie(c: &StickyCookie, id: u64, secure: bool) -> Option<HeaderValue> {
    let mut v = format!("{}={id:016x}; Path=/; HttpOnly; SameSite=Lax", c.name);
    if secure {
        v.push_str("; Secure");
    }
    if let Some(ttl) = c.ttl {
        v.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookies_are_found_in_every_cookie_field() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<&'a str>);
        let table: &[Case<'_>] = &[
            (&[("cookie", "a=1; sid=xyz; b=2")], "sid", Some("xyz")),
            (&[("cookie", "sid=\"q\"")], "sid", Some("q")),
            (&[("cookie", "a=1"), ("cookie", "sid=2")], "sid", Some("2")),
            (&[("cookie", "sid=1; sid=2")], "sid", Some("1")),
            (&[("cookie", "xsid=1; sidx=2")], "sid", None),
            (&[("cookie", "Sid=1")], "sid", None),
            (&[("cookie", "sid")], "sid", None),
            (&[("cookie", " sid = v ")], "sid", Some("v")),
            (&[("x-sid", "sid=1")], "sid", None),
            (&[], "sid", None),
        ];
        for (list, name, want) in table {
            let h = headers(list);
            assert_eq!(cookie(&h, name), want.map(str::as_bytes), "{list:?} {name}");
        }
    }

    #[test]
    fn keys_by_kind() {
        let h = headers(&[("x-user", "u1"), ("cookie", "s=abc; sg=00000000000000ff")]);
        let policy = |key: HashKey| HashPolicy {
            key,
            cookie: Some(StickyCookie {
                name: "sg".into(),
                ttl: None,
            }),
        };
        let table = [
            (HashKey::ClientIp, None),
            (HashKey::Uri, Some(key_hash(b"/a?b=1"))),
            (HashKey::Header("x-user".into()), Some(key_hash(b"u1"))),
            (HashKey::Header("x-other".into()), None),
            (HashKey::Cookie("s".into()), Some(key_hash(b"abc"))),
            (HashKey::Cookie("t".into()), None),
        ];
        for (key, want) in table {
            let (got, sticky) = hash_facts(&policy(key.clone()), &h, "/a?b=1");
            assert_eq!(got, want, "{key}");
            assert_eq!(sticky, Some(0xff));
        }
    }

    #[test]
    fn sticky_values() {
        let table: &[(&[u8], Option<u64>)] = &[
            (b"00000000000000ff", Some(255)),
            (b"0123456789abcdef", Some(0x0123_4567_89ab_cdef)),
            (b"ff", None),
            (b"0123456789abcdeg", None),
            (b"0123456789abcdef0", None),
            (b"+123456789abcdef", None),
        ];
        for (v, want) in table {
            assert_eq!(parse_sticky(v), *want, "{v:?}");
        }
    }

    #[test]
    fn set_cookie_attributes() {
        let session = StickyCookie {
            name: "sg".into(),
            ttl: None,
        };
        assert_eq!(
            set_cookie(&session, 255, false).unwrap(),
            "sg=00000000000000ff; Path=/; HttpOnly; SameSite=Lax"
        );
        let lasting = StickyCookie {
            name: "sg".into(),
            ttl: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            set_cookie(&lasting, 1, true).unwrap(),
            "sg=0000000000000001; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=3600"
        );
    }
}
