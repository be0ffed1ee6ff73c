//! Host + path matching of requests to services, per listener.
//!
//! Like nginx's server_name: an exact host wins over the longest `*.suffix`, which wins over `*`.
//! Inside the chosen host, the longest matching path prefix wins.

use std::collections::HashMap;

use streamgate_config::HostPattern;

/// Path prefixes of one host, longest first, each with its service index.
#[derive(Debug, Default)]
struct Routes(Vec<(Box<str>, usize)>);

impl Routes {
    fn add(&mut self, prefix: &str, service: usize) {
        self.0.push((prefix.into(), service));
        self.0.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(p, _)| path.starts_with(&**p))
            .map(|(_, s)| *s)
    }
}

/// The services reachable through one listener.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, Routes>,
    /// `.example.com` suffixes, longest first.
    suffixes: Vec<(Box<str>, Routes)>,
    any: Option<Routes>,
}

/// Why a request matched no service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No service claims this host on this listener.
    Host,
    /// The host is claimed but none of its path prefixes match.
    Path,
}

impl Router {
    pub fn add(&mut self, host: &HostPattern, prefix: &str, service: usize) {
        match host {
            HostPattern::Any => self
                .any
                .get_or_insert_with(Routes::default)
                .add(prefix, service),
            HostPattern::Exact(h) => self
                .exact
                .entry(h.as_str().into())
                .or_default()
                .add(prefix, service),
            HostPattern::Suffix(s) => match self.suffixes.iter_mut().find(|(x, _)| **x == **s) {
                Some((_, r)) => r.add(prefix, service),
                None => {
                    let mut r = Routes::default();
                    r.add(prefix, service);
                    self.suffixes.push((s.as_str().into(), r));
                    self.suffixes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
                }
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty() && self.any.is_none()
    }

    /// The service for `host` (as sent: may carry a port or upper case) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Result<usize, NoRoute> {
        let name = normalise_host(host);
        let name: &str = &name;
        let routes = if let Some(r) = self.exact.get(name) {
            Some(r)
        } else if let Some((_, r)) = self
            .suffixes
            .iter()
            .find(|(s, _)| name.len() > s.len() && name.ends_with(&**s))
        {
            Some(r)
        } else {
            self.any.as_ref()
        };
        routes.ok_or(NoRoute::Host)?.find(path).ok_or(NoRoute::Path)
    }
}

/// Strips a port and a trailing dot and lower-cases, borrowing when nothing changes.
fn normalise_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_beats_suffix_beats_any_and_longest_prefix_wins() {
        let mut r = Router::default();
        r.add(&pat("*"), "/", 0);
        r.add(&pat("*.example.com"), "/", 1);
        r.add(&pat("*.cdn.example.com"), "/", 2);
        r.add(&pat("api.example.com"), "/", 3);
        r.add(&pat("api.example.com"), "/v2/", 4);
        assert_eq!(r.route("other.org", "/x"), Ok(0));
        assert_eq!(r.route("www.example.com", "/x"), Ok(1));
        assert_eq!(r.route("a.cdn.example.com", "/x"), Ok(2));
        assert_eq!(r.route("API.Example.com:8080", "/x"), Ok(3));
        assert_eq!(r.route("api.example.com.", "/v2/users"), Ok(4));
        assert_eq!(
            r.route("example.com", "/"),
            Ok(0),
            "*.example.com does not match the bare name"
        );
    }

    #[test]
    fn unclaimed_hosts_and_paths() {
        let mut r = Router::default();
        r.add(&pat("video.example.com"), "/v/", 0);
        assert_eq!(r.route("evil.example.net", "/v/1"), Err(NoRoute::Host));
        assert_eq!(r.route("video.example.com", "/admin"), Err(NoRoute::Path));
        assert_eq!(r.route("[::1]:8080", "/"), Err(NoRoute::Host));
    }
}
