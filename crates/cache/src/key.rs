//! Cache keys: what the origin saw. The URL part is `scheme://authority/path?query`, the
//! authority in lower case without a trailing dot or the scheme's default port, the query as the
//! service's key rules say; the variant part is the request headers that select a stored
//! response (configured key headers and the response's Vary), Accept-Encoding normalised.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use streamgate_config::KeyQuery;

/// The primary key: `scheme://host[:port]/path?query`. A port is kept unless it is the
/// scheme's default: `Host: app.test:1337` reaches the origin as such, and an origin that
/// reflects the Host field answers differently than for `app.test`.
pub fn url_key(scheme: &str, host: &str, path_and_query: &str, rule: &KeyQuery) -> String {
    let mut key = String::new();
    url_key_into(&mut key, scheme, host, path_and_query, rule);
    key
}

/// [`url_key`] written into `key` (emptied first), so a caller can reuse its memory.
pub fn url_key_into(
    key: &mut String,
    scheme: &str,
    host: &str,
    path_and_query: &str,
    rule: &KeyQuery,
) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    key.clear();
    key.reserve(scheme.len() + 3 + host.len() + path_and_query.len());
    push_origin(key, scheme, host);
    key.push_str(if path.is_empty() { "/" } else { path });
    match (rule, query) {
        (KeyQuery::All, Some(q)) if !q.is_empty() => {
            key.push('?');
            key.push_str(q);
        }
        (KeyQuery::Only(keep), Some(q)) => {
            // Parameters are matched as origins may read them, and the key errs toward more:
            // - `;` separates for some origins and not for others (PHP, Express and Python
            //   since 3.9.2 read `id=1;x=2` as one `id`), so a `&`-separated piece is kept
            //   whole when any `;`-separated part of it is a keyed name: `?id=1;x=<script>`
            //   is not `?id=1`, and `?utm=x;id=evil` is not `?utm=x`;
            // - names are compared percent-decoded and without regard to case (ASP.NET reads
            //   `ID` as `id`), so `?id=1&I%44=2` cannot hide a second `id` from the key.
            let mut pieces: Vec<&str> = q
                .split('&')
                .filter(|piece| {
                    piece.split(';').any(|kv| {
                        let name = kv.split('=').next().unwrap_or("");
                        keep.iter().any(|k| decoded_eq(name, k))
                    })
                })
                .collect();
            // By name only, and stably: `?id=1&id=2` and `?id=2&id=1` differ to origins that
            // take the first or the last `id`.
            pieces.sort_by_cached_key(|p| param_name(p.split(['=', ';']).next().unwrap_or("")));
            if !pieces.is_empty() {
                key.push('?');
                key.push_str(&pieces.join("&"));
            }
        }
        _ => {}
    }
}

/// Whether `raw` and `name` are one parameter to some origin (see [`param_name`]).
fn decoded_eq(raw: &str, name: &str) -> bool {
    param_name(raw) == param_name(name)
}

/// A parameter's name as the most lenient origin reads it: percent-decoded (`+` a space), in
/// lower case (ASP.NET), without leading spaces, an array's name without its brackets (`id[]`,
/// `id[0]`: PHP and Express's qs), and `.`, a space or an unclosed `[` as `_` (PHP reads
/// `page.id` and `page[id` as `page_id`). Names that one origin reads as one are one here, so
/// none of them can be left out of a key that lists the other.
fn param_name(raw: &str) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out.make_ascii_lowercase();
    let start = out.iter().position(|&c| c != b' ').unwrap_or(out.len());
    out.drain(..start);
    if let Some(open) = out.iter().position(|&c| c == b'[') {
        if out[open..].contains(&b']') {
            out.truncate(open);
        } else {
            out[open] = b'_';
        }
    }
    for c in &mut out {
        if matches!(*c, b'.' | b' ') {
            *c = b'_';
        }
    }
    out
}

/// `host` as the cache key spells it (lower case, no trailing dot, no default or zero-padded
/// port), if the client spelt it otherwise. The proxy forwards this spelling: with the
/// client's, `Host: APP.test.:080` shared the key of `app.test` while an origin matching Host
/// exactly answered it otherwise (a redirect to the canonical name, another site's page), and
/// that answer was served to everyone asking for `app.test`.
pub fn respelt_host(scheme: &str, host: &str) -> Option<String> {
    if spelt_as_keyed(scheme, host.as_bytes()) {
        return None;
    }
    let mut k = String::with_capacity(scheme.len() + 3 + host.len());
    push_origin(&mut k, scheme, host);
    let spelt = &k[scheme.len() + 3..];
    (spelt != host).then(|| spelt.to_string())
}

/// Whether [`push_origin`] would write `host` as it is: checked without writing it, since every
/// request asks (a Host with a port took the writing path, about 900 instructions a request
/// in `benches/scripts/instructions.sh`, whose Host is `127.0.0.1:18180`).
pub fn spelt_as_keyed(scheme: &str, host: &[u8]) -> bool {
    // One pass: no upper case, and where the port starts (the last `:` outside brackets). An
    // empty port (`[::1]:`, `host:`) is left to `push_origin` to judge.
    let b = host;
    if b.last() == Some(&b':') {
        return false;
    }
    let mut colon = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'A'..=b'Z' => return false,
            b':' => colon = Some(i),
            b']' => colon = None,
            _ => {}
        }
    }
    let (name, port) = match colon {
        Some(i) if i + 1 < b.len() && b[i + 1..].iter().all(u8::is_ascii_digit) => {
            (&b[..i], &b[i + 1..])
        }
        _ => (b, &b""[..]),
    };
    name.last() != Some(&b'.')
        && port.first() != Some(&b'0')
        && port != default_port(scheme).as_bytes()
}

fn default_port(scheme: &str) -> &'static str {
    match scheme {
        "https" => "443",
        _ => "80",
    }
}

/// Appends `scheme://authority` normalised: lower case, no trailing dot on the name, no default
/// port (80 for http, 443 for https).
fn push_origin(key: &mut String, scheme: &str, host: &str) {
    let (name, port) = split_port(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    key.push_str(scheme);
    key.push_str("://");
    let start = key.len();
    key.push_str(name);
    key[start..].make_ascii_lowercase();
    let default = default_port(scheme);
    if let Some(p) = port {
        let p = p.trim_start_matches('0');
        if p != default {
            key.push(':');
            key.push_str(if p.is_empty() { "0" } else { p });
        }
    }
}

/// `host` and its port, if it has one (`[v6]:port`, `name:port`).
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => (
                &host[..=i],
                host[i + 1..].strip_prefix(':').filter(|p| is_port(p)),
            ),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if is_port(p) => (h, Some(p)),
        _ => (host, None),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

/// The URL keys a purge of `url` means: `http://host/path` purges that scheme's key;
/// `host/path` without a scheme purges both schemes. `None` if there is no host.
/// The path is normalised as a request's is before its key is made: a purge of `/%7Euser`
/// or `/a//b` names the object stored for `/~user` or `/a/b` (it purged nothing before).
pub fn purge_keys(url: &str, rule: &KeyQuery) -> Option<Vec<String>> {
    let (schemes, host, path_and_query) = split_url(url)?;
    // A path requests could not have (refused with 400) keeps its spelling: it names nothing.
    let normal = streamgate_config::path::normalize_target(path_and_query)
        .ok()
        .flatten();
    let path_and_query = normal.as_deref().unwrap_or(path_and_query);
    Some(
        schemes
            .iter()
            .map(|s| url_key(s, host, path_and_query, rule))
            .collect(),
    )
}

/// The key prefixes a purge by prefix means (the path is taken as is, query and all).
pub fn purge_prefixes(url: &str) -> Option<Vec<String>> {
    let (schemes, host, path) = split_url(url)?;
    Some(
        schemes
            .iter()
            .map(|s| {
                let mut k = String::new();
                push_origin(&mut k, s, host);
                k.push_str(path);
                k
            })
            .collect(),
    )
}

/// `(schemes, host, path)` of `http://host/path`, `https://...` or a bare `host/path`.
pub fn split_url(url: &str) -> Option<(&'static [&'static str], &str, &str)> {
    let (schemes, rest): (&'static [&'static str], &str) =
        if let Some(r) = url.strip_prefix("http://") {
            (&["http"], r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (&["https"], r)
        } else {
            (&["http", "https"], url)
        };
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) => return None,
        None => (rest, "/"),
    };
    (!host.is_empty()).then_some((schemes, host, path))
}

/// The request's values of `names`, which a stored variant must match.
pub fn selectors(names: &[HeaderName], req: &HeaderMap) -> Vec<(HeaderName, Option<HeaderValue>)> {
    names
        .iter()
        .map(|n| (n.clone(), selector_value(req, n)))
        .collect()
}

/// The value of one selecting header as variants compare it: all lines joined by ", ", and
/// Accept-Encoding reduced to the set of codings it accepts, so that the many spellings
/// browsers send of the same preference share one variant.
pub fn selector_value(req: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let joined = joined(req, name)?;
    if name == header::ACCEPT_ENCODING {
        return Some(normalised_accept_encoding(&joined));
    }
    Some(joined)
}

/// All values of a header joined by ", " (how Vary compares them), or the single value as is.
pub fn joined(req: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = req.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut s = Vec::from(first.as_bytes());
    for v in std::iter::once(second).chain(values) {
        s.extend_from_slice(b", ");
        s.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&s).ok()
}

/// `gzip, deflate, br` and `br;q=1.0, gzip;q=0.8, deflate` both become `br,deflate,gzip`:
/// codings in lower case, without weights, those refused (q=0) left out, sorted, once each. Two
/// requests with the same set accept the same responses, whatever the origin picks.
pub fn normalised_accept_encoding(v: &HeaderValue) -> HeaderValue {
    let Ok(s) = v.to_str() else {
        return v.clone();
    };
    let mut codings: Vec<String> = s
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!coding.is_empty() && !refused).then_some(coding)
        })
        .collect();
    codings.sort_unstable();
    codings.dedup();
    HeaderValue::from_str(&codings.join(",")).unwrap_or_else(|_| v.clone())
}

/// Field names listed in the response's Vary headers, lower case.
pub fn vary_names(resp: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in resp.get_all(http::header::VARY) {
        let Ok(s) = v.to_str() else { continue };
        for f in s.split(',') {
            if let Ok(n) = HeaderName::from_bytes(f.trim().to_ascii_lowercase().as_bytes())
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_what_the_origin_saw() {
        let all = KeyQuery::All;
        let cases = [
            (
                "http",
                "Video.Example.com:8080",
                "/a/b?x=1&y=2",
                "http://video.example.com:8080/a/b?x=1&y=2",
            ),
            ("http", "app.test:1337", "/", "http://app.test:1337/"),
            ("http", "APP.test.:80", "/", "http://app.test/"),
            ("https", "app.test:443", "/x", "https://app.test/x"),
            ("https", "app.test:80", "/x", "https://app.test:80/x"),
            ("http", "app.test:0080", "/x", "http://app.test/x"),
            ("http", "[::1]:80", "/", "http://[::1]/"),
            ("http", "[::1]:81", "", "http://[::1]:81/"),
            ("http", "h:", "/", "http://h:/"),
        ];
        for (scheme, host, pq, want) in cases {
            assert_eq!(
                url_key(scheme, host, pq, &all),
                want,
                "{scheme} {host} {pq}"
            );
        }
        assert_eq!(
            url_key("http", "v.example.com", "/a?x=1", &KeyQuery::Ignore),
            "http://v.example.com/a"
        );
        let only = KeyQuery::Only(vec!["id".into(), "lang".into()]);
        assert_eq!(
            url_key("http", "h", "/p?utm=9&lang=de&id=3", &only),
            "http://h/p?id=3&lang=de"
        );
        assert_eq!(url_key("http", "h", "/p?utm=9", &only), "http://h/p");
        // What an origin may read as `id` is part of the key.
        assert_eq!(
            url_key("http", "h", "/p?id=1&i%64=2", &only),
            "http://h/p?id=1&i%64=2"
        );
        assert_eq!(
            url_key("http", "h", "/p?utm=x;id=evil&id=1", &only),
            "http://h/p?id=1&utm=x;id=evil"
        );
        // An origin that reads `id=1;x=<script>` as one `id`: not the entry of `?id=1`.
        assert_eq!(
            url_key("http", "h", "/p?id=1;x=%3Cscript%3E", &only),
            "http://h/p?id=1;x=%3Cscript%3E"
        );
        assert_eq!(
            url_key("http", "h", "/p?utm=1;ref=2&id=1", &only),
            "http://h/p?id=1"
        );
        // An origin that reads names in any case (ASP.NET): `ID` is `id`. Same names keep
        // their order (first-wins and last-wins origins).
        assert_eq!(
            url_key("http", "h", "/p?id=1&ID=2&I%44=3", &only),
            "http://h/p?id=1&ID=2&I%44=3"
        );
        assert_eq!(
            url_key("http", "h", "/p?id=2&id=1", &only),
            "http://h/p?id=2&id=1"
        );
        // Arrays (PHP, qs) and PHP's `.` for `_`.
        assert_eq!(
            url_key("http", "h", "/p?id=1&id[]=evil&id%5B0%5D=x", &only),
            "http://h/p?id=1&id[]=evil&id%5B0%5D=x"
        );
        let php = KeyQuery::Only(vec!["page_id".into()]);
        assert_eq!(
            url_key(
                "http",
                "h",
                "/p?page_id=1&page.id=2&page+id=3&pageXid=4",
                &php
            ),
            "http://h/p?page_id=1&page.id=2&page+id=3"
        );
        // PHP drops leading spaces and reads an unclosed `[` as `_`.
        assert_eq!(
            url_key("http", "h", "/p?id=1&+id=2&page[id=3", &only),
            "http://h/p?id=1&+id=2"
        );
        assert_eq!(
            url_key("http", "h", "/p?page[id=3", &php),
            "http://h/p?page[id=3"
        );
        // Aliases keep their order too: ASP.NET reads `1,2` and `2,1`.
        assert_ne!(
            url_key("http", "h", "/p?id=1&ID=2", &only),
            url_key("http", "h", "/p?ID=2&id=1", &only)
        );
        assert_eq!(url_key("http", "h", "/p?%=1&%6", &only), "http://h/p");
    }

    #[test]
    fn purges_name_one_scheme_or_both() {
        let all = KeyQuery::All;
        assert_eq!(
            purge_keys("https://H.example:443/a?b=1", &all).unwrap(),
            ["https://h.example/a?b=1"]
        );
        assert_eq!(
            purge_keys("h.example/a", &all).unwrap(),
            ["http://h.example/a", "https://h.example/a"]
        );
        assert_eq!(
            purge_keys("h.example", &all).unwrap(),
            ["http://h.example/", "https://h.example/"]
        );
        // As the request's path was normalised before its key was made.
        assert_eq!(
            purge_keys("http://h/%7Euser//a/./b?x=%7E", &all).unwrap(),
            [url_key("http", "h", "/~user/a/b?x=%7E", &all)]
        );
        assert_eq!(
            purge_keys("http://h/bad%zz", &all).unwrap(),
            ["http://h/bad%zz"]
        );
        assert_eq!(purge_keys("http:///x", &all), None);
        assert_eq!(purge_keys("h?x", &all), None);
        assert_eq!(
            purge_prefixes("http://h.example:8080/news/").unwrap(),
            ["http://h.example:8080/news/"]
        );
    }

    #[test]
    fn vary_and_selectors() {
        let mut resp = HeaderMap::new();
        resp.append(
            "vary",
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        resp.append("vary", HeaderValue::from_static("accept-encoding"));
        let names = vary_names(&resp);
        assert_eq!(
            names,
            vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ]
        );
        let mut req = HeaderMap::new();
        req.append("accept-encoding", HeaderValue::from_static("gzip"));
        req.append("accept-encoding", HeaderValue::from_static("br"));
        req.append("accept-language", HeaderValue::from_static("de, en"));
        let sel = selectors(&names, &req);
        assert_eq!(sel[0].1.as_ref().unwrap(), "br,gzip");
        assert_eq!(sel[1].1.as_ref().unwrap(), "de, en");
        assert_eq!(selectors(&names, &HeaderMap::new())[0].1, None);
    }

    #[test]
    fn accept_encoding_spellings_share_a_variant() {
        let n = |s: &'static str| normalised_accept_encoding(&HeaderValue::from_static(s));
        let same = [
            "gzip, deflate, br",
            "br,gzip,deflate",
            "BR;q=1.0, gzip;q=0.8, deflate;q=0.1",
            "gzip, deflate, br, gzip",
            "gzip, deflate, br, zstd;q=0",
        ];
        for s in same {
            assert_eq!(n(s), "br,deflate,gzip", "{s}");
        }
        assert_eq!(n("identity"), "identity");
        assert_eq!(n(""), "");
        assert_eq!(n("gzip;q=0"), "");
    }

    #[test]
    fn hosts_are_respelt_as_the_key_spells_them() {
        let cases = [
            ("http", "app.test", None),
            ("http", "app.test:8080", None),
            ("http", "APP.test.:080", Some("app.test")),
            ("http", "app.test:80", Some("app.test")),
            ("https", "app.test:80", None),
            ("https", "app.test:443", Some("app.test")),
            ("http", "app.test.", Some("app.test")),
            ("http", "[::1]:80", Some("[::1]")),
            ("http", "[::1]:8080", None),
            ("http", "[::A]", Some("[::a]")),
            ("http", "app.test:0", None),
            ("http", "app.test:00", Some("app.test:0")),
            ("http", "127.0.0.1:18180", None),
            ("http", "[::1]:", Some("[::1]")),
            ("http", "host:", None),
            ("http", "", None),
        ];
        for (scheme, host, want) in cases {
            assert_eq!(
                respelt_host(scheme, host).as_deref(),
                want,
                "{scheme} {host}"
            );
        }
    }
}
