//! `[services.hash]`: what the `consistent_hash` backend policy hashes, and its sticky cookie.

use std::time::Duration;

/// The key a `consistent_hash` service maps to a backend. The same key reaches the same backend
/// on every StreamGate and after every restart, while that backend is usable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// The client's address (the one geo routing and access rules use: X-Forwarded-For or the
    /// PROXY header from a trusted proxy, else the peer). The only key of tcp and
    /// tls_passthrough services.
    ClientIp,
    /// The value of this request header (lower case); a request without it hashes its client
    /// address.
    Header(String),
    /// The value of this cookie; a request without it hashes its client address.
    Cookie(String),
    /// The path and query as forwarded (normalised), as nginx's `hash $request_uri consistent`.
    Uri,
}

impl HashKey {
    /// The accepted spellings, for error messages and the docs.
    pub const FORMS: &'static str = "\"client_ip\", \"uri\", \"header:NAME\", \"cookie:NAME\"";

    /// `client_ip`, `uri`, `header:NAME` or `cookie:NAME`; `None` when it is none of them.
    /// A name's validity is checked by the caller, which reports it with its own words.
    pub fn parse(s: &str) -> Option<HashKey> {
        match s {
            "client_ip" => Some(HashKey::ClientIp),
            "uri" => Some(HashKey::Uri),
            _ => match s.split_once(':')? {
                ("header", name) => Some(HashKey::Header(name.to_ascii_lowercase())),
                ("cookie", name) => Some(HashKey::Cookie(name.to_string())),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// A cookie StreamGate sets naming the backend that answered, so a client stays on it while it
/// is usable even when its hash key changes (HAProxy's `cookie NAME insert`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StickyCookie {
    pub name: String,
    /// `Max-Age`; `None`: a session cookie.
    pub ttl: Option<Duration>,
}

/// `[services.hash]` of a `consistent_hash` service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HashPolicy {
    pub key: HashKey,
    pub cookie: Option<StickyCookie>,
}

impl Default for HashPolicy {
    fn default() -> Self {
        HashPolicy {
            key: HashKey::ClientIp,
            cookie: None,
        }
    }
}
