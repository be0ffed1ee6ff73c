//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop headers stop here, forwarding headers are
//! added.

use std::net::IpAddr;

use crate::upstream::codec::{LastFields, join_list};
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use smallvec::SmallVec;

/// Kept with the HTTP/1.1 codec, which needs it too (upstream does not depend on http).
pub use crate::upstream::codec::lists_token;

/// The name StreamGate uses in Via.
pub const VIA_NAME: &str = "streamgate";

/// A request whose Via already names [`VIA_NAME`] more than this many times is refused (508):
/// it is going round in a loop (a backend, or a name resolving to one, that leads back to this
/// proxy). Two allows tiers of StreamGates in front of each other (edge, shield, ...) and stops a
/// loop after three passes, where each pass would otherwise open one more connection forever.
pub const MAX_OWN_VIA_HOPS: usize = 2;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static VIA: HeaderName = header::VIA;

/// Removes hop-by-hop headers: the fixed list and any named in Connection.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the fields notes which hop-by-hop names are present: most messages have
    // none, and most of the rest only `Connection: keep-alive` (every nginx response). A
    // removal per listed name hashes each; with the list below, this function was 8% of a
    // proxied request's instructions (callgrind) before it removed only what it found.
    let mut present = 0u16;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name);
    }
    if present == 0 {
        return;
    }
    // Names listed in Connection are hop-by-hop too, on every Connection line. The lists are
    // kept by reference count (no copy) while the fields they name are removed.
    if present & CONNECTION_BIT != 0 {
        let lists: SmallVec<[HeaderValue; 2]> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::CONNECTION);
        for list in &lists {
            // Split as bytes: a byte that is not text elsewhere on the line must not hide the
            // names listed beside it.
            for name in list
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
            {
                // By name as text: parsed on the stack, never allocated; not a field name,
                // nothing to remove.
                if let Ok(name) = std::str::from_utf8(name)
                    && !name.is_empty()
                    && !name.eq_ignore_ascii_case("keep-alive")
                    && !never_nominated(name)
                {
                    headers.remove(name);
                }
            }
        }
    }
    for (i, name) in hop_by_hop().into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // TE: only "trailers" may cross (gRPC needs it); anything else is hop-by-hop.
    if present & TE_BIT != 0
        && let Some(te) = headers.get(header::TE)
    {
        let keep = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if keep {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

const CONNECTION_BIT: u16 = 1 << 8;
const TE_BIT: u16 = 1 << 9;

/// Which hop-by-hop field `name` is, as a bit: bit i for `hop_by_hop()[i]`, then Connection
/// and TE; 0 for an end-to-end field.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    if name == header::CONNECTION {
        return CONNECTION_BIT;
    }
    if name == header::TE {
        return TE_BIT;
    }
    hop_by_hop()
        .iter()
        .position(|h| *h == name)
        .map_or(0, |i| 1 << i)
}

/// The fields that are always hop-by-hop (besides Connection, the fields it names, and TE).
/// `Expect` is one here: StreamGate's server answers `100-continue` itself when the body is
/// wanted, and a backend asked again could answer a final status without reading the body it is
/// then sent, keeping a connection that the body's bytes would prefix (nginx and Envoy drop it
/// too).
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::TRAILER,
        &header::EXPECT,
    ]
}

/// Forwarding fields a client may not set: they tell the origin who the client is, how it came
/// and what it asked for, which only a proxy we trust can know. Frameworks read each of these
/// (Rails, Symfony, IIS, Akamai and Cloudflare conventions); an origin that believes one from a
/// client can be made to answer, and the cache to store, a response for everyone.
const CLIENT_FORWARDING: [&str; 17] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-real-ip",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-host",
    "x-original-host",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
];

/// Fields a `Connection` line may not remove: who the client is and which host it asked for.
/// Behind a trusted balancer, `Connection: X-Forwarded-For` would drop the balancer's list
/// after the client's address was read from it, and the origin would see the balancer as the
/// client (the "hop-by-hop abuse" that bypasses origins trusting internal addresses). Nor
/// Content-Length, which the limits read (this proxy writes the backend's framing itself):
/// `Connection: Content-Length` hid a 2 KiB body from `max_body = "1KiB"`.
fn never_nominated(name: &str) -> bool {
    name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("via")
        || name.eq_ignore_ascii_case("content-length")
        || CLIENT_FORWARDING.iter().any(|f| spelled_as(name, f))
}

/// Whether `name` is the field `lower` (given in lower case with `-`), in any case and with
/// any mix of `-` and `_`: CGI-style stacks (and IIS) read `X_Forwarded_For` as the same
/// variable, so a check that missed the spelling would let the field through.
fn spelled_as(name: &str, lower: &str) -> bool {
    lower.len() == name.len()
        && lower
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
}

/// Whether `name` is a forwarding field, also spelt with underscores.
fn is_client_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    // Most fields start with none of these: the common case costs one comparison.
    if !n.starts_with('x') && !n.starts_with('f') && !n.starts_with('t') {
        return false;
    }
    CLIENT_FORWARDING.iter().any(|f| spelled_as(n, f))
}

/// Whether `name` replaces the request's URL in the origin's framework.
fn is_url_override(name: &HeaderName) -> bool {
    ["x-original-url", "x-rewrite-url"]
        .iter()
        .any(|f| spelled_as(name.as_str(), f))
}

/// Removes every field `matches` picks; a pass over the names first, as most requests carry
/// none and then nothing is allocated.
fn remove_matching(headers: &mut HeaderMap, matches: fn(&HeaderName) -> bool) {
    if !headers.keys().any(matches) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|k| matches(k)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Fields that replace the request's URL in the origin's framework (IIS's URL Rewrite, Symfony,
/// Zend): no balancer sets them for the origin behind it, so they are a client's even when a
/// trusted balancer passes them on, and they are removed whoever the peer is. Behind a trusted
/// balancer (which passes on what the client sent), `X-Original-URL: /admin` would have
/// reached the origin with the balancer's trust and its answer stored under a public URL.
pub fn strip_url_overrides(headers: &mut HeaderMap) {
    remove_matching(headers, is_url_override);
}

/// Removes the forwarding fields of a request from a peer that is not a trusted proxy, so an
/// origin (and what it answers, which the cache shares) never sees a client's claims as ours.
pub fn strip_client_forwarding(headers: &mut HeaderMap) {
    remove_matching(headers, is_client_forwarding);
}

/// A client's address as an X-Forwarded-For element, formatted once for its connection: every
/// request on it forwards the same value. Formatting it per request was 3 of the 16 allocations
/// of a proxied HTTP/1.1 request (benches/benches/allocs.rs).
#[derive(Debug, Clone)]
pub struct ForwardedFor {
    value: HeaderValue,
    /// The peer is a trusted balancer whose PROXY header named no client: its requests'
    /// forwarding fields are the client's, not the balancer's.
    unvouched: bool,
}

impl ForwardedFor {
    pub fn new(peer: IpAddr) -> ForwardedFor {
        // An address always makes a valid field value; shared from the start, so the clone
        // each request takes costs no allocation.
        let value =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_canonical().to_string()))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        ForwardedFor {
            value,
            unvouched: false,
        }
    }

    /// See [`crate::accept::Behind::unknown`].
    pub fn unvouched(self) -> ForwardedFor {
        ForwardedFor {
            unvouched: true,
            ..self
        }
    }

    /// Whether a trusted peer's forwarding fields may be believed on this connection.
    pub fn vouched(&self) -> bool {
        !self.unvouched
    }
}

/// Adds X-Forwarded-For (appending the peer this request came from), -Proto, -Host and Via to
/// a request about to go upstream.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    peer: &ForwardedFor,
    https: bool,
    host: Option<&HeaderValue>,
    version: Version,
) {
    // Every line, as nginx's `$proxy_add_x_forwarded_for` joins them, then this hop.
    append_to_list(headers, &X_FORWARDED_FOR, &peer.value);
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(h) = host {
        // The host as text, as it always was: a value that is not text is sent empty.
        let v = if h.to_str().is_ok() {
            h.clone()
        } else {
            HeaderValue::from_static("")
        };
        headers.insert(&X_FORWARDED_HOST, v);
    }
    append_via(headers, version);
}

/// What [`add_forwarding`] puts in a map, as fields written after the request's own instead
/// (see [`LastFields`]), for a request whose map nothing else reads them from.
pub fn last_fields<'a>(
    peer: &'a ForwardedFor,
    https: bool,
    host: &'a HeaderValue,
    version: Version,
) -> LastFields<'a> {
    // The host as text, as `add_forwarding` sends it: a value that is not text is sent empty.
    let host = if host.to_str().is_ok() {
        host.as_bytes()
    } else {
        b""
    };
    let proto: &[u8] = if https { b"https" } else { b"http" };
    LastFields {
        joined: [
            (&X_FORWARDED_FOR, peer.value.as_bytes()),
            (&VIA, via_hop(version).as_bytes()),
        ],
        set: [(&X_FORWARDED_PROTO, proto), (&X_FORWARDED_HOST, host)],
    }
}

/// How many hops of `headers`' Via (every line, comma-separated) were received by a proxy
/// calling itself [`VIA_NAME`]: `1.1 streamgate`, `2 streamgate (comment)`. A client can claim
/// more than there were, which only gets its own request refused.
///
/// Read as bytes: a line with obs-text (a comment in Latin-1, say) is not text to `to_str`, and
/// skipping it would not count a hop of ours on it, so such a loop would never be refused.
pub fn own_via_hops(headers: &HeaderMap) -> usize {
    headers
        .get_all(header::VIA)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .filter(|hop| {
            let mut words = hop
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty());
            let _protocol = words.next();
            words
                .next()
                .is_some_and(|by| by.eq_ignore_ascii_case(VIA_NAME.as_bytes()))
        })
        .count()
}

/// Appends this hop to Via.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    append_to_list(
        headers,
        &header::VIA,
        &HeaderValue::from_static(via_hop(version)),
    );
}

/// This hop in a Via list, for a message received with `version`.
pub fn via_hop(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 streamgate",
        Version::HTTP_2 => "2 streamgate",
        Version::HTTP_3 => "3 streamgate",
        _ => "1.1 streamgate",
    }
}

/// Appends `item` to the comma-separated list `name`, all of whose lines become one: a hop of
/// ours on a later Via line must still be counted at the next pass (see [`own_via_hops`]).
/// One lookup when the list is absent (the usual case). Every line goes on as its bytes (as
/// nginx's `$proxy_add_x_forwarded_for`), empty ones aside.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, item: &HeaderValue) {
    match headers.entry(name) {
        http::header::Entry::Vacant(v) => {
            v.insert(item.clone());
        }
        http::header::Entry::Occupied(mut o) => {
            let mut joined = Vec::new();
            join_list(&mut joined, o.iter(), item.as_bytes());
            // Field values joined by ", " are a field value: this cannot fail. Were it to,
            // this hop alone is better than the old lines without it.
            let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined))
                .unwrap_or_else(|_| item.clone());
            o.insert(v);
        }
    }
}

/// The client address to believe: the socket peer, or, when the peer is a trusted proxy, the
/// nearest untrusted address in X-Forwarded-For.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // Walk right to left: each hop was appended by the proxy before it.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        // Split as bytes, not as text: a balancer appends the address it saw to the line the
        // client sent, so bytes a client put on its own side (non-ASCII, say) must not hide
        // the elements to their right. Only the element read is parsed.
        let elements = value
            .as_bytes()
            .rsplit(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            // Empty elements name no hop (a list may have them, RFC 9110 §5.6.1).
            .filter(|p| !p.is_empty());
        for part in elements {
            let Some(ip) = std::str::from_utf8(part).ok().and_then(parse_forwarded_ip) else {
                return client;
            };
            client = ip.to_canonical();
            if !is_trusted(client, trusted) {
                return client;
            }
        }
    }
    client
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// An X-Forwarded-For element: a bare address, or one with a port ("1.2.3.4:5", "[::1]:5").
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

pub use crate::upstream::is_idempotent;

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn strips_hop_by_hop_and_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed() {
        // Removal goes by the bit each field sets: every listed field, found on its own.
        for name in hop_by_hop().into_iter().chain([&header::CONNECTION]) {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name}");
            assert_eq!(h.get("x-kept").unwrap(), "1", "{name}");
        }
        // `Keep-Alive` named in Connection in any case, and the field itself.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn a_connection_line_cannot_remove_who_the_client_is() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "X-Forwarded-For, host, Via, x_real_ip, forwarded, Content-Length, x-other",
            ),
        );
        for name in [
            "content-length",
            "x-forwarded-for",
            "host",
            "via",
            "x_real_ip",
            "forwarded",
            "x-other",
        ] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-other").is_none());
        for name in [
            "content-length",
            "x-forwarded-for",
            "host",
            "via",
            "x_real_ip",
            "forwarded",
        ] {
            assert_eq!(h.get(name).unwrap(), "1", "{name}");
        }
    }

    #[test]
    fn every_connection_line_names_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-second, ,x-third"),
        );
        // A byte that is not text on a line does not hide the names beside it.
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-fourth, \x80").unwrap(),
        );
        h.insert("x-second", HeaderValue::from_static("1"));
        h.insert("x-third", HeaderValue::from_static("1"));
        h.insert("x-fourth", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-second").is_none());
        assert!(h.get("x-third").is_none());
        assert!(h.get("x-fourth").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn own_via_hops_are_counted_on_every_line() {
        let cases: &[(&[&str], usize)] = &[
            (&[], 0),
            (&["1.1 cdn"], 0),
            (&["1.1 streamgate"], 1),
            (&["1.1 cdn, 2 StreamGate (edge), 1.1 streamgate"], 2),
            (
                &["1.1 streamgate", "1.0 cdn,1.1 streamgate", "2 streamgate"],
                3,
            ),
            // Only the received-by part counts: not a comment, a protocol or a longer name.
            (&["1.1 cdn (streamgate), streamgate, 1.1 streamgate-old"], 0),
            (&["1.1 streamgate:8080"], 0),
        ];
        for (lines, want) in cases {
            let mut h = HeaderMap::new();
            for l in *lines {
                h.append(header::VIA, HeaderValue::from_str(l).unwrap());
            }
            assert_eq!(own_via_hops(&h), *want, "{lines:?}");
        }
        // What this proxy appends is what it counts.
        let mut h = HeaderMap::new();
        for _ in 0..3 {
            append_via(&mut h, Version::HTTP_11);
        }
        assert_eq!(own_via_hops(&h), 3);
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 cdn"));
        add_forwarding(
            &mut h,
            &ForwardedFor::new("::ffff:10.0.0.1".parse().unwrap()),
            false,
            Some(&HeaderValue::from_static("example.com")),
            Version::HTTP_2,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
        assert_eq!(h.get(header::VIA).unwrap(), "1.1 cdn, 2 streamgate");
        let mut first = HeaderMap::new();
        let peer = ForwardedFor::new("::ffff:10.0.0.1".parse().unwrap());
        add_forwarding(&mut first, &peer, true, None, Version::HTTP_11);
        assert_eq!(first.get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert_eq!(first.get("x-forwarded-proto").unwrap(), "https");
        assert!(first.get("x-forwarded-host").is_none());
    }

    #[test]
    fn forwarding_keeps_every_via_and_forwarded_for_line() {
        // Lines after the first were dropped: a hop of ours on a second Via line went
        // uncounted at the next pass (a loop an intermediary that puts its line first would
        // never end), and a trusted proxy's second X-Forwarded-For line was lost.
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("via", "1.1 cdn"),
            ("via", "1.1 streamgate"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.2"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        add_forwarding(
            &mut h,
            &ForwardedFor::new("10.0.0.1".parse().unwrap()),
            false,
            None,
            Version::HTTP_11,
        );
        let all = |name: &str| -> Vec<&str> {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("via"), ["1.1 cdn, 1.1 streamgate, 1.1 streamgate"]);
        assert_eq!(own_via_hops(&h), 2);
        assert_eq!(
            all("x-forwarded-for"),
            ["203.0.113.9, 198.51.100.2, 10.0.0.1"]
        );
    }

    #[test]
    fn via_lines_with_bytes_beyond_ascii_are_counted_and_kept() {
        // obs-text (RFC 9110 §5.5) in a Via comment: the line was skipped when hops were
        // counted and dropped when the request was forwarded, so a loop through an
        // intermediary that writes such a comment never reached the 508.
        let mut h = HeaderMap::new();
        h.append(
            header::VIA,
            HeaderValue::from_bytes(b"1.1 streamgate, 1.1 caf\xe9 (\xe9dge)").unwrap(),
        );
        assert_eq!(own_via_hops(&h), 1);
        append_via(&mut h, Version::HTTP_11);
        let lines: Vec<&[u8]> = h
            .get_all(header::VIA)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            lines,
            [&b"1.1 streamgate, 1.1 caf\xe9 (\xe9dge), 1.1 streamgate"[..]]
        );
        assert_eq!(own_via_hops(&h), 2);
    }

    #[test]
    fn an_untrusted_clients_forwarding_fields_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4;host=evil.example"),
            ("x-real-ip", "1.2.3.4"),
            ("x_forwarded_host", "evil.example"),
            ("x-original-url", "/admin"),
            ("x-forwarded-scheme", "https"),
            ("true-client-ip", "1.2.3.4"),
            ("x-kept", "1"),
            ("x-forwarded", "kept: not a forwarding field"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        strip_client_forwarding(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded", "x-kept"]);
    }

    #[test]
    fn client_ip_believes_only_trusted_peers() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.7, 10.1.2.3"),
        );
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(local, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            stranger,
            "an untrusted peer's header is ignored"
        );
        assert_eq!(client_ip(local, &h, &[]), local);
        let mut garbage = HeaderMap::new();
        garbage.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_ip(local, &garbage, &trusted), local);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn client_ip_skips_empty_list_elements() {
        // A list may have empty elements (RFC 9110 §5.6.1): they name no hop, and nginx's
        // realip skips them too. A non-empty element that is not an address still stops the
        // walk at the last trusted hop.
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let table: &[(&[&str], &str)] = &[
            (&["198.51.100.7, , 10.1.2.3"], "198.51.100.7"),
            (&["198.51.100.7,,10.1.2.3,"], "198.51.100.7"),
            (&["198.51.100.7", "", "10.1.2.3"], "198.51.100.7"),
            (&["198.51.100.7, junk, 10.1.2.3"], "10.1.2.3"),
            (&[" , "], "127.0.0.1"),
            (&["10.9.9.9, , 203.0.113.5"], "203.0.113.5"),
        ];
        for (lines, want) in table {
            let mut h = HeaderMap::new();
            for line in *lines {
                h.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
            }
            assert_eq!(
                client_ip(local, &h, &trusted),
                want.parse::<IpAddr>().unwrap(),
                "{lines:?}"
            );
        }
    }

    /// The forwarding fields written after the map's (`last_fields`) are what `add_forwarding`
    /// puts in the map, field for field, whatever lines of them the request already had.
    #[test]
    fn last_fields_write_what_add_forwarding_puts_in_the_map() {
        use crate::upstream::codec::{RequestFraming, write_request_head};
        let peer = ForwardedFor::new("192.0.2.9".parse().unwrap());
        let table: &[&[(&str, &[u8])]] = &[
            &[],
            &[("host", b"a"), ("accept", b"*/*")],
            &[("x-forwarded-for", b"198.51.100.1"), ("via", b"1.1 cdn")],
            &[
                ("x-forwarded-for", b"198.51.100.1"),
                ("x-forwarded-for", b" "),
                ("x-forwarded-for", b"10.0.0.1, 10.0.0.2"),
            ],
            &[
                ("via", b"1.0 a"),
                ("via", b"1.1 b (caf\xe9)"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"evil"),
            ],
            &[("x-forwarded-hostname", b"kept"), ("vía", b"x")],
        ];
        for fields in table {
            let mut map = HeaderMap::new();
            for (n, v) in *fields {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_bytes(v),
                ) {
                    map.append(n, v);
                }
            }
            for (https, host, version) in [
                (
                    false,
                    HeaderValue::from_static("example.com"),
                    Version::HTTP_11,
                ),
                (
                    true,
                    HeaderValue::from_bytes(b"caf\xe9").unwrap(),
                    Version::HTTP_2,
                ),
            ] {
                let mut in_map = map.clone();
                add_forwarding(&mut in_map, &peer, https, Some(&host), version);
                let mut a = Vec::new();
                write_request_head(
                    &mut a,
                    &Method::GET,
                    "/",
                    &in_map,
                    RequestFraming::Empty,
                    None,
                );
                let last = last_fields(&peer, https, &host, version);
                let mut b = Vec::new();
                write_request_head(
                    &mut b,
                    &Method::GET,
                    "/",
                    &map,
                    RequestFraming::Empty,
                    Some(&last),
                );
                assert_eq!(fields_of(&a), fields_of(&b), "{fields:?}");
            }
        }
    }

    /// A request head's fields: lower-case name, then each value in order.
    fn fields_of(head: &[u8]) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut fields);
        assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
        let mut got: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            match got.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(h.value.to_vec()),
                None => got.push((name, vec![h.value.to_vec()])),
            }
        }
        got.sort_by(|x, y| x.0.cmp(&y.0));
        got
    }
}
