//! A request matched to its service and rewritten for the backend ([`HttpProxy::prepare`]):
//! Host checked, path normalised, hop-by-hop and untrusted forwarding fields removed. The
//! result, [`Outbound`], is what the cache and the origin path both work from.

use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Version};
use http_body::Body as _;
use streamgate_balance::stats::nanos_at;
use streamgate_balance::{ClientFacts, NoRoute, RoutingTable, Service};
use streamgate_config::rules::Template;
use streamgate_policy::{Answer, Edit};
use streamgate_telemetry::access_log::AccessRecord;
use tracing::debug;

use super::HttpProxy;

/// A client's request as the handler takes it. The body is `None` for a request read by our
/// own HTTP/1.1 server ([`super::h1`]), which serves only requests without a body.
pub type ClientRequest = Request<Option<hyper::body::Incoming>>;
use super::body::{PendingLog, RequestBody, Upload};
use super::error::ProxyError;
use super::headers::{
    ForwardedFor, MAX_OWN_VIA_HOPS, client_ip, is_trusted, lists_token, own_via_hops,
    strip_client_forwarding, strip_hop_by_hop, strip_url_overrides,
};
use super::rules::edit_request;

/// A request matched to its service and rewritten for the backend.
#[derive(Debug)]
pub(crate) struct Outbound<'t> {
    pub service: &'t Service,
    /// The client's address; its geo lookup waits for the first fetch (a cache hit needs none).
    pub facts: ClientFacts,
    /// The head as it goes upstream: hop-by-hop removed, HTTP/1.1; forwarding headers are added
    /// by the first fetch.
    pub parts: Parts,
    pub forwarded: bool,
    /// The client connection once upgraded (WebSocket), when the request asks for an upgrade.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub host: HeaderValue,
    pub path_and_query: PathAndQuery,
    pub body: RequestBody,
    pub client_version: Version,
    pub peer: SocketAddr,
    /// `peer` as X-Forwarded-For says it, made once for the connection.
    pub forwarded_for: ForwardedFor,
    pub started: Instant,
    /// Rules will edit the response: the origin path marks who answered ([`ServedBy`]).
    ///
    /// [`ServedBy`]: super::rules::ServedBy
    pub served_by: bool,
    /// The answer goes to an HTTP/1.1 client of our own server with nothing reading or editing
    /// its fields on the way: the backend's may be forwarded as it sent them.
    pub raw_answer: bool,
}

/// A request matched to its service: forwarded, or answered by one of its rules.
// Boxing `Forward`, the variant of nearly every request, would cost an allocation per request
// to save stack space in one frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Prepared<'t> {
    Forward {
        out: Outbound<'t>,
        /// Response header edits of the rules that matched.
        response_edits: Vec<Edit<Template>>,
    },
    Answer {
        answer: Answer,
        response_edits: Vec<Edit<Template>>,
    },
}

impl HttpProxy {
    pub(crate) fn log_skeleton(&self, req: &ClientRequest, peer: SocketAddr) -> AccessRecord {
        AccessRecord::arriving(
            self.listener.clone(),
            peer.ip().to_canonical(),
            match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            req.method().as_str().to_string(),
            request_host(req)
                .ok()
                .map(|h| host_str(&h).to_string())
                .unwrap_or_default(),
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
        )
    }

    /// Matches the request to a service and rewrites its head for the backend.
    pub(crate) fn prepare<'t>(
        &self,
        table: &'t RoutingTable,
        mut req: ClientRequest,
        peer: SocketAddr,
        forwarded_for: ForwardedFor,
        started: Instant,
        log: &mut Option<Box<PendingLog>>,
    ) -> Result<Prepared<'t>, ProxyError> {
        if req.version() == Version::HTTP_2 {
            if h2_too_many_fields(&req, self.max_headers) {
                self.limited.count(crate::limits::Limit::Header);
                return Err(ProxyError::TooManyFields {
                    max: self.max_headers,
                });
            }
            join_cookie_crumbs(req.headers_mut());
        }
        let trusted = table
            .config
            .geo
            .as_ref()
            .map_or(&[][..], |g| &g.trusted_proxies[..]);
        let peer_trusted = forwarded_for.vouched() && is_trusted(peer.ip().to_canonical(), trusted);
        // First: neither routing, the rules nor the backend sees forwarding fields from a
        // client that only a trusted balancer may set.
        if !peer_trusted {
            strip_client_forwarding(req.headers_mut());
        } else {
            strip_url_overrides(req.headers_mut());
        }
        // Method names are case-sensitive (RFC 9110 §9.1) and every registered one is upper
        // case. A `delete` would pass a rule for DELETE and be run as one by backends that
        // upper-case methods (Django, Flask, PHP); nginx refuses such methods with 400 too.
        if req
            .method()
            .as_str()
            .bytes()
            .any(|b| b.is_ascii_lowercase())
        {
            return Err(ProxyError::InvalidMethod);
        }
        // RFC 8441: an HTTP/2 CONNECT with :protocol = websocket opens a WebSocket; it goes to
        // the backend as an HTTP/1.1 Upgrade. Plain CONNECT (forward proxying) is not served.
        let h2_websocket = req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if req.method() == Method::CONNECT && !h2_websocket {
            return Err(ProxyError::MethodNotAllowed {
                method: req.method().to_string(),
            });
        }
        if h2_websocket {
            // From here on (access checks, rules, `$method`) it is the request the backend
            // gets: a GET upgrading to websocket, as an HTTP/1.1 client sends it, so a rule
            // that refuses GET on a path refuses HTTP/2 WebSockets too. Envoy's codec
            // translates it before any filter likewise.
            *req.method_mut() = Method::GET;
        }
        let mut host = request_host(&req)?;
        // RFC 9112 §3.2: a valid authority. A Host with a path in it would make the cache key
        // of one URL the key of another.
        if !valid_authority(host.as_bytes()) {
            return Err(ProxyError::InvalidHost);
        }

        // From here on the Host field is the host routed by, which the rules see and the
        // backend gets: an absolute-form target's or HTTP/2's authority (a Host line it
        // overrules does not pass a rule matching `headers.host`), or an HTTP/1.0 request's
        // empty one. An origin-form request's Host is that host already (and no Connection
        // line can remove it), so it is left as it is: one header-map write less per request.
        if req.uri().authority().is_some() || host.is_empty() {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        // A request that has come round to us again (a backend, or a name that resolves to one,
        // leads back here) would be forwarded once more at every pass, a connection each, until
        // something gives out: refused before it is routed, answered 508, never forwarded.
        let hops = own_via_hops(req.headers());
        if hops > MAX_OWN_VIA_HOPS {
            self.loops.inc();
            return Err(ProxyError::LoopDetected { hops });
        }
        // Routed and forwarded as normalised (http::path): what matched is what the origin gets.
        let normal = streamgate_policy::path::normalize(req.uri().path()).map_err(|why| {
            debug!(path = req.uri().path(), %why, "path refused");
            ProxyError::InvalidPath
        })?;
        let route_path = normal.as_deref().unwrap_or(req.uri().path());
        let service = match table.route(&self.listener, host_str(&host), route_path) {
            Ok(s) => s,
            Err(NoRoute::Host) => {
                return Err(ProxyError::UnknownHost {
                    listener: self.listener.to_string(),
                });
            }
            Err(NoRoute::Path) => {
                return Err(ProxyError::UnknownPath {
                    listener: self.listener.to_string(),
                });
            }
        };
        service.state.note_request(nanos_at(started));
        // A service with a cache: one spelling of each host, the key's, from here on, matched
        // by rules and forwarded (see `respelt_host`). Not asked for the others: the check
        // alone cost 380 instructions of a proxied request's 25 000 here.
        let respelt_path: String;
        let route_path = if service.spec.cache.is_some()
            && !streamgate_cache::key::spelt_as_keyed(self.scheme(), host.as_bytes())
        {
            respelt_path = route_path.to_owned();
            respell(&mut req, &mut host, self.scheme());
            respelt_path.as_str()
        } else {
            route_path
        };

        let ip = client_ip(peer.ip(), req.headers(), trusted);
        if let Some(l) = log.as_mut() {
            l.record.service = Some(service.name.clone());
            l.record.client = ip.to_canonical();
        }
        if let Err(denied) = crate::access::check(&service.spec.access, ip, || {
            let db = self.geo.load();
            let facts = db.as_ref()?.lookup(ip)?;
            Some(facts.country?.to_string())
        }) {
            self.metrics
                .access_denied
                .with_label_values(&[&service.name, denied.as_str()])
                .inc();
            return Err(ProxyError::Forbidden {
                service: service.name.to_string(),
                reason: denied.as_str(),
            });
        }
        // Behind a trusted TLS-terminating balancer, the scheme the client used is its word.
        let forwarded_https = peer_trusted
            && req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let mut rules = self.evaluate_rules(
            service,
            &req,
            ip,
            forwarded_https,
            host_str(&host),
            route_path,
        );
        if let Some(answer) = rules.answer.take() {
            if let Answer::Deny { rule } = &answer {
                debug!(service = %service.name, rule = %rule, "denied by a rule");
                self.metrics
                    .access_denied
                    .with_label_values(&[&service.name, "rule"])
                    .inc();
            }
            return Ok(Prepared::Answer {
                answer,
                response_edits: rules.response,
            });
        }
        let mut facts = ClientFacts {
            ip: Some(ip),
            ..ClientFacts::default()
        };

        // HTTP/1.1 Upgrade (WebSocket): the Upgrade header goes on to the backend. Not one to
        // h2c: HTTP/2 cleartext through a proxy is a way past it ("h2c smuggling": the backend's
        // HTTP/2 connection would carry requests no rule or route saw). Ignored, as a server
        // may ignore any Upgrade (RFC 9110 §7.8); Envoy forwards no upgrade it is not told to.
        let upgrade_to = (req.version() == Version::HTTP_11
            && lists_token(req.headers(), &header::CONNECTION, "upgrade")
            && !lists_token(req.headers(), &header::UPGRADE, "h2c"))
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
        .or_else(|| h2_websocket.then(|| HeaderValue::from_static("websocket")));
        let upgrade = upgrade_to.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = upgrade_to {
            parts.headers.insert(header::UPGRADE, u);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // After CONNECT the stream itself is the tunnel; no body goes ahead of the upgrade.
        let body = body.filter(|b| !h2_websocket && !b.is_end_stream());
        if h2_websocket {
            // HTTP/2 has no key/accept handshake; HTTP/1.1 needs one.
            let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            if let Ok(v) = HeaderValue::from_str(&key) {
                parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
            }
            parts
                .headers
                .entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
        parts.version = Version::HTTP_11;
        edit_request(&mut parts.headers, &rules.request);
        if let Some(c) = &service.spec.compression {
            super::compress::normalize_request(&mut parts.headers, c);
        }
        let path_and_query = match rules.path.take().or(normal) {
            None => match parts.uri.path_and_query() {
                // `GET http://a.test?x=1` has the path `/` but the target `?x=1`: the backend
                // would get `GET ?x=1`, which routes and rules did not see.
                Some(pq) if pq.as_str().starts_with('?') => {
                    PathAndQuery::from_maybe_shared(Bytes::from(format!("/{}", pq.as_str())))
                        .map_err(|_| ProxyError::InvalidPath)?
                }
                Some(pq) => pq.clone(),
                None => PathAndQuery::from_static("/"),
            },
            Some(p) => {
                // A rewrite's own query comes first, the client's after it.
                let pq = match parts.uri.query() {
                    Some(q) if p.contains('?') => format!("{p}&{q}"),
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                };
                PathAndQuery::from_maybe_shared(Bytes::from(pq))
                    .map_err(|_| ProxyError::InvalidPath)?
            }
        };
        if let Some(hash) = &service.spec.hash {
            (facts.key, facts.sticky) =
                super::hash_key::hash_facts(hash, &parts.headers, path_and_query.as_str());
        }
        let body = match body {
            None => RequestBody::Empty,
            Some(body) => {
                let upload = Upload::new(
                    service.spec.limits.max_body,
                    client_version == Version::HTTP_2,
                );
                if let Some(l) = log.as_mut() {
                    l.bytes_in = Some(upload.clone());
                }
                RequestBody::Stream(body, upload)
            }
        };
        let served_by = !rules.response.is_empty();
        let out = Outbound {
            service,
            forwarded: false,
            upgrade,
            facts,
            parts,
            host,
            path_and_query,
            body,
            client_version,
            peer,
            forwarded_for,
            started,
            served_by,
            raw_answer: false,
        };
        Ok(Prepared::Forward {
            out,
            response_edits: rules.response,
        })
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or the Host header.
fn request_host(req: &ClientRequest) -> Result<HeaderValue, ProxyError> {
    // One lookup for the field and for a second line of it: RFC 9112 §3.2 asks for a 400 to
    // either, and to an HTTP/1.1 request without one, whatever the target's form (nginx
    // refuses an absolute-form request with two Host lines as "duplicate host header").
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(ProxyError::InvalidHost);
    }
    // HTTP/1.1 must send Host; HTTP/2 `:authority` or Host (RFC 9113 §8.3.1: a request with
    // neither is malformed); HTTP/1.0 may send neither, and only a catch-all service takes it.
    let named = match req.version() {
        Version::HTTP_10 => true,
        Version::HTTP_11 => first.is_some(),
        _ => first.is_some() || req.uri().authority().is_some(),
    };
    if !named {
        return Err(ProxyError::MissingHost);
    }
    // An absolute-form target or HTTP/2's `:authority` names the host (RFC 9112 §3.2.2).
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::InvalidHost);
    }
    Ok(first.cloned().unwrap_or(HeaderValue::from_static("")))
}

/// `host [":" port]`: a bracketed IP literal, or a name of letters, digits, `-`, `.` and `_`,
/// then digits for the port. Empty is allowed (an HTTP/1.0 request without Host). RFC 3986
/// allows more in a reg-name (sub-delims, percent-encoding), but no DNS name has them, and
/// they are how a Host smuggles a second name past a wildcard route: `evil.test,a.example.test`
/// ends in `.example.test`, and an application reading X-Forwarded-Host as a list takes
/// `evil.test` from it (password-reset links, absolute URLs).
fn valid_authority(h: &[u8]) -> bool {
    let (name, port) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &h[1..end];
        if !inner
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &h[end + 1..] {
            [] => (&h[..0], None),
            [b':', port @ ..] => (&h[..0], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    let name_ok = name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    name_ok && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

pub(crate) fn ambiguous_framing(h: &http::HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH)
}

/// Writes the host as the cache key spells it into the request: off the common path, and out of
/// line.
#[cold]
#[inline(never)]
fn respell(req: &mut ClientRequest, host: &mut HeaderValue, scheme: &str) {
    let respelt = streamgate_cache::key::respelt_host(scheme, host_str(host));
    if let Some(h) = respelt.and_then(|h| HeaderValue::from_str(&h).ok()) {
        req.headers_mut().insert(header::HOST, h.clone());
        *host = h;
    }
}

pub(crate) fn host_str(h: &HeaderValue) -> &str {
    h.to_str().unwrap_or("")
}

/// RFC 9113 §8.2.3: a Cookie an HTTP/2 client split into crumbs (one field per cookie, for
/// HPACK) becomes one field, joined with "; ", before the request goes on: as HTTP/1.1 to most
/// backends, where many applications read only the first Cookie line; and for the sticky
/// cookie of `consistent_hash` and `Vary: Cookie`, which read one value.
fn join_cookie_crumbs(headers: &mut http::HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, crumb) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Valid: each crumb was a valid value, and "; " is one too.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

/// True when an HTTP/2 request has more fields than `max`, counted as HTTP/1.1 counts header
/// lines (hyper holds those to `max_headers`): `:authority` as the Host line, and a Cookie sent
/// as crumbs (RFC 9113 §8.2.3) as one line.
fn h2_too_many_fields(req: &ClientRequest, max: usize) -> bool {
    let headers = req.headers();
    // Every value plus `:authority` is the most there can be: most requests are under the
    // limit at once, without the two lookups below (about 300 instructions per request).
    if headers.len() < max {
        return false;
    }
    let crumbs = headers.get_all(header::COOKIE).iter().count();
    let authority = req.uri().authority().is_some() && !headers.contains_key(header::HOST);
    headers.len() - crumbs.saturating_sub(1) + usize::from(authority) > max
}

#[cfg(test)]
mod tests {
    use super::{join_cookie_crumbs, valid_authority};
    use http::header::{COOKIE, HeaderMap, HeaderValue};

    #[test]
    fn cookie_crumbs_are_joined_into_one_field() {
        let table: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["a=1"], &["a=1"]),
            (&["a=1; b=2"], &["a=1; b=2"]),
            (&["a=1", "b=2", "c=3"], &["a=1; b=2; c=3"]),
            (&["", "b=2"], &["; b=2"]),
        ];
        for (crumbs, want) in table {
            let mut h = HeaderMap::new();
            h.insert("x-other", HeaderValue::from_static("kept"));
            for c in *crumbs {
                h.append(COOKIE, HeaderValue::from_str(c).unwrap());
            }
            join_cookie_crumbs(&mut h);
            let got: Vec<_> = h
                .get_all(COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(&got, want, "{crumbs:?}");
            assert_eq!(h.get("x-other").unwrap(), "kept");
        }
    }

    #[test]
    fn hosts_are_authorities() {
        let good = [
            "app.test",
            "app.test:8080",
            "APP.test.",
            "[::1]:80",
            "[::1]",
            "10.0.0.1",
            "",
            "h:",
            "under_score.test",
        ];
        for ok in good {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        let bad = [
            "a.example/evil",
            "a b",
            "a@b",
            "a.test:80x",
            "[::1",
            "[::1]x",
            "a?b",
            "a#b",
            "evil.test,a.example.test",
            "a;b",
            "a%2eb",
            "a*b",
        ];
        for bad in bad {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
