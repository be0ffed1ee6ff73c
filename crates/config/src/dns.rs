//! The model of backends named by host name and of `[dns]`, the settings they are resolved with.
//! Kept out of `model.rs` only for size; `model` re-exports both types.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// A backend written as `host:port`: every address its name resolves to is a backend of the
/// region, with this weight and port, re-resolved on the record's TTL (see [`Dns`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedBackend {
    /// Lower case, as written otherwise (a trailing dot makes it absolute: no search domains).
    pub host: String,
    pub port: u16,
    pub weight: NonZeroU32,
}

impl std::fmt::Display for NamedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Default of `[dns] max_addresses`: more than any sane name gives (a round-robin name rarely
/// has more than a dozen), few enough that a hostile answer cannot blow up the table.
pub const DEFAULT_MAX_ADDRESSES: usize = 64;
/// Upper bound of `[dns] max_addresses`.
pub const MAX_ADDRESSES_LIMIT: usize = 1024;

/// `[dns]`: how backend names are resolved. Read again on every reload (a changed server list
/// takes effect at the next resolution).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dns {
    /// Name servers asked, in order; empty: those of /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// A name is resolved again after its answer's TTL, but never sooner than this...
    pub min_ttl: Duration,
    /// ...and never later than this (nginx's `valid=`, Envoy's `dns_refresh_rate` bound).
    pub max_ttl: Duration,
    /// One resolution (every server and attempt) gives up after this long.
    pub timeout: Duration,
    pub family: AddressFamily,
    /// Loopback (127/8, ::1) and link-local (169.254/16, where cloud metadata services listen,
    /// and fe80::/10) answers become backends only when set: otherwise whoever controls a
    /// name's zone could point the proxy at the host itself or at its metadata service.
    /// Unspecified, multicast and broadcast answers are never used.
    pub allow_local: bool,
    /// At most this many addresses of one name become backends: the first in sorted order (a
    /// stable choice, so re-resolutions do not shuffle which ones).
    pub max_addresses: usize,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            family: AddressFamily::Any,
            allow_local: false,
            max_addresses: DEFAULT_MAX_ADDRESSES,
        }
    }
}

/// Which address records of a name become backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// A and AAAA: every address of either family.
    Any,
    Ipv4,
    Ipv6,
}

impl AddressFamily {
    pub const NAMES: &'static str = "any, ipv4, ipv6";

    pub fn parse(s: &str) -> Option<AddressFamily> {
        Some(match s {
            "any" => AddressFamily::Any,
            "ipv4" => AddressFamily::Ipv4,
            "ipv6" => AddressFamily::Ipv6,
            _ => return None,
        })
    }
}

/// Whether `host` is a DNS name a backend may be written with: dot-separated labels of letters,
/// digits, '-' and '_' (service names such as `_http._tcp` are common in internal zones), each
/// 1 to 63 long and not starting or ending with '-', at most 253 in all, an optional trailing
/// dot, and not all digits (that is a mistyped IPv4 address, not a name).
pub fn is_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let cases: &[(&str, bool)] = &[
            ("origin.example.com", true),
            ("origin.example.com.", true),
            ("origin", true),
            ("_http._tcp.example.com", true),
            ("a-b.c", true),
            ("xn--bcher-kva.example", true),
            ("", false),
            (".", false),
            ("a..b", false),
            ("-a.b", false),
            ("a-.b", false),
            ("a b", false),
            ("a/b", false),
            ("127.0.0.300", false),
            ("10.1", false),
            ("bücher.example", false),
        ];
        for (host, ok) in cases {
            assert_eq!(is_host_name(host), *ok, "{host}");
        }
        assert!(is_host_name(&format!("{}.com", "a".repeat(63))));
        assert!(!is_host_name(&format!("{}.com", "a".repeat(64))));
        assert!(is_host_name(&"a.".repeat(127)));
        assert!(!is_host_name(&"a.".repeat(128)));
    }
}
