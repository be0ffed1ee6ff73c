//! Cache keys: the URL (host without port, path, the query as the service's key rules say), and
//! the request headers that select a variant (configured key headers and the response's Vary).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use streamgate_config::KeyQuery;

/// The primary key: `host/path?query`, host in lower case without a port.
pub fn url_key(host: &str, path_and_query: &str, rule: &KeyQuery) -> String {
    let host = host_part(host);
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut key = String::with_capacity(host.len() + path_and_query.len() + 1);
    key.push_str(host);
    key.make_ascii_lowercase();
    key.push_str(if path.is_empty() { "/" } else { path });
    match (rule, query) {
        (KeyQuery::All, Some(q)) if !q.is_empty() => {
            key.push('?');
            key.push_str(q);
        }
        (KeyQuery::Only(keep), Some(q)) => {
            let mut pairs: Vec<&str> = q
                .split('&')
                .filter(|kv| {
                    keep.iter()
                        .any(|k| kv.split('=').next() == Some(k.as_str()))
                })
                .collect();
            pairs.sort_unstable();
            if !pairs.is_empty() {
                key.push('?');
                key.push_str(&pairs.join("&"));
            }
        }
        _ => {}
    }
    key
}

fn host_part(host: &str) -> &str {
    let h = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// The request's values of `names`, which a stored variant must match.
pub fn selectors(names: &[HeaderName], req: &HeaderMap) -> Vec<(HeaderName, Option<HeaderValue>)> {
    names.iter().map(|n| (n.clone(), joined(req, n))).collect()
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
    fn keys() {
        assert_eq!(
            url_key("Video.Example.com:8080", "/a/b?x=1&y=2", &KeyQuery::All),
            "video.example.com/a/b?x=1&y=2"
        );
        assert_eq!(
            url_key("v.example.com", "/a?x=1", &KeyQuery::Ignore),
            "v.example.com/a"
        );
        let only = KeyQuery::Only(vec!["id".into(), "lang".into()]);
        assert_eq!(
            url_key("h", "/p?utm=9&lang=de&id=3", &only),
            "h/p?id=3&lang=de"
        );
        assert_eq!(url_key("h", "/p?utm=9", &only), "h/p");
        assert_eq!(url_key("[::1]:80", "/", &KeyQuery::All), "[::1]/");
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
        let sel = selectors(&names, &req);
        assert_eq!(sel[0].1.as_ref().unwrap(), "gzip, br");
        assert_eq!(sel[1].1, None);
    }
}
