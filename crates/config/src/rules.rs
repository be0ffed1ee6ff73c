//! `[[services.rules]]`: what a service does to a request before it is routed to a backend
//! (redirect, rewrite, header edits, a fixed answer, deny), compiled once per config.
//!
//! Rules run in file order. A rule applies when every condition of its `match` holds; an empty
//! `match` always holds. A matching rule's actions run in a fixed order: deny, respond,
//! redirect (each ends the evaluation and answers), then rewrite, request_headers and
//! response_headers. Later rules see the path an earlier rewrite produced. `last = true` stops
//! the evaluation after the rule.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::host::HostPattern;

/// A service's rules and what evaluating them needs to know beforehand.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rules {
    pub list: Vec<Rule>,
    /// A rule matches on the client's country or a template reads `$country`: the geo database
    /// is consulted (only then).
    pub needs_country: bool,
    /// A rule matches on the client's region: the service's region order is asked (only then).
    pub needs_region: bool,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// From the file, or `rule N` (1-based) when unnamed; shown by /explain.
    pub name: String,
    pub when: Match,
    /// Answer 403.
    pub deny: bool,
    pub respond: Option<Respond>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Stop evaluating after this rule when it matches.
    pub last: bool,
}

impl Rule {
    /// The rule answers the request itself (deny, respond or redirect).
    pub fn is_terminal(&self) -> bool {
        self.deny || self.respond.is_some() || self.redirect.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Conditions of a rule; all that are set must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    pub scheme: Option<Scheme>,
    pub hosts: Vec<HostPattern>,
    /// The path equals this.
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<Pattern>,
    /// Upper-case method names.
    pub methods: Vec<String>,
    /// Each header must be present (`None`) or have exactly this value.
    pub headers: Vec<(String, Option<String>)>,
    pub clients: Vec<IpNet>,
    /// ISO 3166-1 alpha-2, upper case.
    pub countries: Vec<String>,
    /// Regions of the service: the one its region policy ranks first for this client (geo:
    /// the nearest by the geo database) must be one of them.
    pub regions: Vec<String>,
}

impl Match {
    /// Whether `client` is in one of `clients` (true when the list is empty).
    pub fn client_matches(&self, client: IpAddr) -> bool {
        let ip = client.to_canonical();
        self.clients.is_empty() || self.clients.iter().any(|n| n.contains(&ip))
    }
}

/// A compiled regular expression; equal when the source is.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.0.as_str())
    }
}

/// `respond = { status, body, content_type }`
#[derive(Debug, Clone, PartialEq)]
pub struct Respond {
    pub status: u16,
    pub body: Template,
    pub content_type: String,
}

/// `redirect = { status, scheme, host, port, path, keep_query }`: unset parts are the
/// request's own. A changed scheme without a port drops the request's port.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub status: u16,
    pub scheme: Option<Scheme>,
    pub host: Option<Template>,
    pub port: Option<u16>,
    pub path: Option<Template>,
    pub keep_query: bool,
}

/// `rewrite = { strip_prefix, add_prefix, path }`: `path` replaces the whole path; otherwise
/// `strip_prefix` is taken off (when the path starts with it) and `add_prefix` put in front.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rewrite {
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub path: Option<Template>,
}

/// `request_headers` / `response_headers = { set, add, remove }`, applied remove, set, add.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderEdits {
    /// Lower-case names.
    pub remove: Vec<String>,
    pub set: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// A value with `$variables` and `$1`..`$9` (captures of the rule's `path_regex`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
    Capture(usize),
}

/// The variables a template may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    ClientIp,
    Country,
    Scheme,
    Method,
    /// Without the port.
    Host,
    Path,
    Query,
    /// Path and query as the client sent them (`$request_uri`).
    RequestUri,
    Service,
    RequestId,
    /// The backend and region that answered (empty for an answer from the cache or a rule):
    /// response headers only.
    Backend,
    Region,
}

const VARS: &[(&str, Var)] = &[
    ("client_ip", Var::ClientIp),
    ("country", Var::Country),
    ("scheme", Var::Scheme),
    ("method", Var::Method),
    ("host", Var::Host),
    ("path", Var::Path),
    ("query", Var::Query),
    ("request_uri", Var::RequestUri),
    ("service", Var::Service),
    ("request_id", Var::RequestId),
    ("backend", Var::Backend),
    ("region", Var::Region),
];

impl Var {
    pub fn name(self) -> &'static str {
        VARS.iter().find(|(_, v)| *v == self).map_or("", |(n, _)| n)
    }

    /// Known before a backend is picked.
    pub fn before_routing(self) -> bool {
        !matches!(self, Var::Backend | Var::Region)
    }
}

impl Template {
    /// Parses `text`: `$name` (letters, digits and `_`, or `${name}`), `$1`..`$9`, `$$` for a
    /// dollar sign.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(r) = rest.strip_prefix('$') {
                lit.push('$');
                rest = r;
                continue;
            }
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("\"${{\" without \"}}\" in \"{text}\""))?;
                (&r[..end], &r[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            let piece = if let Ok(n) = name.parse::<usize>() {
                if !(1..=9).contains(&n) {
                    return Err(format!("${name}: captures are $1 to $9"));
                }
                Piece::Capture(n)
            } else if let Some((_, v)) = VARS.iter().find(|(n, _)| *n == name) {
                Piece::Var(*v)
            } else {
                let known: Vec<String> = VARS.iter().map(|(n, _)| format!("${n}")).collect();
                return Err(format!(
                    "unknown variable \"${name}\" (write $$ for a dollar sign); known: {}",
                    known.join(", ")
                ));
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(piece);
            rest = after;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Template { pieces })
    }

    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(*v),
            _ => None,
        })
    }

    /// The highest capture the template reads (0: none).
    pub fn max_capture(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Capture(n) => *n,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// The text when the template has no variables.
    pub fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }
}

impl HostPattern {
    /// Whether `host` (without port; any case; a fully qualified name's trailing dot
    /// ignored, as routing ignores it) matches. Allocation-free.
    pub fn matches(&self, host: &str) -> bool {
        // `admin.example.com.` reaches the service `admin.example.com` routes to: a rule on
        // that name must hold for it too, or the dot walks past its deny or redirect.
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        let t = Template::parse("a$host-${path}x$1$$").unwrap();
        assert_eq!(
            t.pieces,
            vec![
                Piece::Text("a".into()),
                Piece::Var(Var::Host),
                Piece::Text("-".into()),
                Piece::Var(Var::Path),
                Piece::Text("x".into()),
                Piece::Capture(1),
                Piece::Text("$".into()),
            ]
        );
        assert_eq!(t.max_capture(), 1);
        assert_eq!(
            Template::parse("max-age=1").unwrap().as_literal(),
            Some("max-age=1")
        );
        for bad in ["$nope", "${host", "$0", "$10"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns_match_without_allocating() {
        let cases = [
            ("*", "x.test", true),
            ("a.test", "A.Test", true),
            ("a.test", "b.test", false),
            ("*.a.test", "x.a.test", true),
            ("*.a.test", "a.test", false),
            ("*.a.test", "xa.test", false),
            // A fully qualified name's dot, on either side.
            ("a.test", "a.test.", true),
            ("*.a.test", "x.a.test.", true),
            ("a.test.", "a.test", true),
            ("a.test", "a.test..", false),
        ];
        for (p, h, want) in cases {
            assert_eq!(HostPattern::parse(p).unwrap().matches(h), want, "{p} {h}");
        }
    }
}
