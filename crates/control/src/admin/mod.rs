//! The admin API (JSON) and /metrics on their own listener. Off loopback every endpoint but
//! /live and /ready requires `Authorization: Bearer <token>` from `admin.token_file`.

mod cache;
mod clients;
mod explain_rules;
mod fleet;
mod handlers;
mod prefetch;
pub mod requests;
mod snapshots;
mod words;
mod write_deadline;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::Control;

/// Largest admin request body.
const MAX_BODY: usize = 1 << 20;

pub type AdminResponse = Response<Full<Bytes>>;

/// A bearer token, compared in constant time and never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Option<Token> {
        let t = secret.trim();
        (!t.is_empty()).then(|| Token(Arc::from(t.as_bytes())))
    }

    /// Its length in bytes: a short one is warned of at start, since failed guesses are only
    /// logged, not slowed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0;
        // Any difference of length: a cast of the lengths' XOR to a byte once let the token
        // with 256 bytes more through.
        let mut diff = u8::from(expected.len() != presented.len());
        for (i, &b) in expected.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// What bounds the admin and metrics listeners: they face scripts, scrapers and, off loopback,
/// the network, so a client that opens many connections, trickles its head or never sends one
/// is cut off as on the data plane.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// The request head (and a keep-alive connection's next one) must arrive within this; so
    /// must a request body.
    pub request_header: Duration,
    /// `admin.max_connections_per_client` as configured (see [`clients::per_client`]).
    pub max_connections_per_client: Option<usize>,
}

impl AdminLimits {
    pub fn of(config: &streamgate_config::Config) -> AdminLimits {
        AdminLimits {
            max_connections: config.admin.max_connections,
            request_header: config.timeouts.request_header,
            max_connections_per_client: config.admin.max_connections_per_client,
        }
    }
}

/// Accepts connections within `limits` until `shutdown` and serves each with `svc`.
async fn accept_loop<S>(
    listener: TcpListener,
    (what, metrics): (&'static str, &streamgate_telemetry::Metrics),
    limits: AdminLimits,
    mut shutdown: watch::Receiver<bool>,
    svc: impl Fn() -> S,
) where
    S: hyper::service::Service<Request<Incoming>, Response = AdminResponse, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_client = listener
        .local_addr()
        .ok()
        .and_then(|a| clients::per_client(limits.max_connections_per_client, a));
    let clients = Arc::new(clients::Clients::default());
    // As the proxy's listeners count theirs: `limited_total{listener,limit}`.
    let refused = metrics
        .limited
        .with_label_values(&[what, "client_connections"]);
    loop {
        let slot = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slot else { return };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // One more than its share: closed at once, and its slot is free again.
        let held = match per_client {
            Some(max) => match clients.take(peer.ip(), max) {
                Some(h) => Some(h),
                None => {
                    refused.inc();
                    debug!(listener = what, peer = %peer, max, "client holds its share of connections; closed");
                    continue;
                }
            },
            None => None,
        };
        let svc = svc();
        tokio::spawn(async move {
            let _slot = slot;
            let _held = held;
            // An answer the client does not read within request_header ends the connection.
            let stream = write_deadline::WriteDeadline::new(stream, limits.request_header);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Some(limits.request_header))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), taking_turns(svc));
            if let Err(e) = conn.await {
                debug!(listener = what, peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Logs requests refused for a missing or wrong token: the first at once, then at most one
/// line a minute with how many there were, so that someone guessing the token is seen without
/// the guesses flooding the log.
fn refused_token(path: &str) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    static LAST: streamgate_telemetry::Throttle = streamgate_telemetry::Throttle::new();
    REFUSED.fetch_add(1, Relaxed);
    if LAST.ready(Duration::from_secs(60)) {
        warn!(
            refused = REFUSED.swap(0, Relaxed),
            path, "admin requests refused: missing or wrong bearer token"
        );
    }
}

/// Requests one admin connection serves before it closes (nginx's `keepalive_requests`
/// bound): clients that keep asking (`GET /live` in a loop needs no token) could otherwise hold
/// every slot for ever and keep an operator waiting in the backlog.
const REQUESTS_PER_CONNECTION: u32 = 100;

/// `svc` with turns: the connection closes after [`REQUESTS_PER_CONNECTION`] answers, and after
/// a refusal (401, 403): a client without the token keeps no slot.
fn taking_turns<S>(
    svc: S,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = AdminResponse,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<AdminResponse, Infallible>> + Send,
> + Send
where
    S: hyper::service::Service<Request<Incoming>, Response = AdminResponse, Error = Infallible>
        + Send,
    S::Future: Send,
{
    let served = std::sync::atomic::AtomicU32::new(0);
    hyper::service::service_fn(move |req| {
        let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let answer = svc.call(req);
        async move {
            let mut r = answer.await?;
            if n >= REQUESTS_PER_CONNECTION
                || matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            {
                r.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            Ok(r)
        }
    })
}

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    token: Arc<arc_swap::ArcSwapOption<Token>>,
    limits: AdminLimits,
    shutdown: watch::Receiver<bool>,
) {
    let own = listener.local_addr().ok();
    let metrics = control.metrics.clone();
    accept_loop(listener, ("admin", &metrics), limits, shutdown, move || {
        let control = control.clone();
        let token = token.clone();
        service_fn(move |req| {
            let control = control.clone();
            let token = token.clone();
            async move {
                // The token of the last reload (a rotated file takes effect without a restart).
                let token = token.load_full();
                let r = handle(&control, token.as_deref(), own, limits.request_header, req).await;
                Ok::<_, Infallible>(r)
            }
        })
    })
    .await;
}

/// Serves only `GET /metrics` (no token) until `shutdown`: a scrape endpoint that can face the
/// network while the admin API stays on loopback.
pub async fn serve_metrics(
    listener: TcpListener,
    control: Arc<Control>,
    limits: AdminLimits,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = control.metrics.clone();
    accept_loop(
        listener,
        ("metrics", &metrics),
        limits,
        shutdown,
        move || {
            let control = control.clone();
            service_fn(move |req: Request<Incoming>| {
                let control = control.clone();
                async move {
                    Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => handlers::metrics(&control),
                        _ => error(
                            StatusCode::NOT_FOUND,
                            "this listener serves GET /metrics only",
                        ),
                    })
                }
            })
        },
    )
    .await;
}

/// Why a state-changing request is refused: a browser on this machine (or on a network that
/// reaches the admin listener) must not be able to drive the admin API from a web page. Forms
/// and simple requests carry a non-JSON Content-Type; a page's fetch carries its Origin. (A
/// DNS-rebound name, whose Host is not this listener's address, is refused for every request:
/// see `handle`.)
fn cross_site(req: &Request<Incoming>) -> Option<&'static str> {
    let h = req.headers();
    if let Some(ct) = h.get(header::CONTENT_TYPE) {
        let json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Some(
                "state-changing requests take a JSON body: send Content-Type: application/json (curl --json)",
            );
        }
    }
    let host = host_of(req);
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        if authority.is_empty() || !authority.eq_ignore_ascii_case(host) {
            return Some("cross-origin requests are not accepted");
        }
    }
    None
}

fn host_of(req: &Request<Incoming>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `localhost`, a loopback address, or the listener's own address, with or without a port.
fn loopback_host(host: &str, own: Option<std::net::SocketAddr>) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || own.is_some_and(|o| o.ip() == ip))
}

/// `body_within`: the request body must arrive within this (`request_header`), as its head
/// did. What the request then does is not cut short by it: a reload that waits on DNS for a
/// new backend name, or a long prefetch, runs to its end and answers.
async fn handle(
    control: &Control,
    token: Option<&Token>,
    own: Option<std::net::SocketAddr>,
    body_within: Duration,
    req: Request<Incoming>,
) -> AdminResponse {
    let path = req.uri().path().to_string();
    let open = matches!(path.as_str(), "/live" | "/ready");
    if let Some(t) = token
        && !open
    {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        if !presented.is_some_and(|p| t.matches(p)) {
            refused_token(&path);
            let mut r = json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    // Without a token the API is on loopback: a page whose DNS name is rebound to 127.0.0.1
    // must not read it either (/config, /backends, /metrics), so the Host is checked for
    // reads too; the health endpoints stay open to probes by any name.
    if token.is_none() && !open && !loopback_host(host_of(&req), own) {
        warn!(path = %path, "admin request refused: Host is not this listener's address");
        return error(
            StatusCode::FORBIDDEN,
            "Host is not this admin listener's address (use 127.0.0.1 or localhost)",
        );
    }
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && let Some(why) = cross_site(&req)
    {
        warn!(path = %path, reason = why, "admin request refused");
        let status = if why.starts_with("state-changing") {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else {
            StatusCode::FORBIDDEN
        };
        return error(status, why);
    }
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(body_within, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not complete in time",
            );
        }
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["live"]) => json_response(StatusCode::OK, json!({"status": "live"})),
        (&Method::GET, ["ready"]) => handlers::ready(control),
        (&Method::GET, ["metrics"]) => handlers::metrics(control),
        (&Method::GET, ["regions"]) => handlers::regions(control),
        (&Method::GET, ["backends"]) => handlers::backends(control),
        (&Method::POST, ["backends", action @ ("drain" | "undrain" | "follow-fleet")]) => {
            let drained = match *action {
                "drain" => Some(true),
                "undrain" => Some(false),
                _ => None,
            };
            match words::Scope::of(&query) {
                Ok(scope) => words::drain(control, &body, drained, scope).await,
                Err(why) => error(StatusCode::BAD_REQUEST, &why),
            }
        }
        (
            &Method::POST,
            [
                "regions",
                name,
                action @ ("activate" | "deactivate" | "follow-fleet"),
            ],
        ) => {
            let active = match *action {
                "activate" => Some(true),
                "deactivate" => Some(false),
                _ => None,
            };
            match words::Scope::of(&query) {
                Ok(scope) => words::region(control, name, active, scope).await,
                Err(why) => error(StatusCode::BAD_REQUEST, &why),
            }
        }
        (&Method::GET, ["fleet"]) => fleet::view(control),
        (&Method::POST, ["services", name, action @ ("primary" | "follow-fleet")]) => {
            let body = (*action == "primary").then_some(&body);
            match words::Scope::of(&query) {
                Ok(scope) => words::primary(control, name, body, scope).await,
                Err(why) => error(StatusCode::BAD_REQUEST, &why),
            }
        }
        (&Method::POST, ["reload"]) => handlers::reload(control).await,
        (&Method::GET, ["config"]) => handlers::config(control),
        (&Method::GET, ["explain"]) => handlers::explain(control, &query),
        (&Method::GET, ["cache"]) => cache::stats(control),
        (&Method::POST, ["cache", "purge"]) => cache::purge(control, &body).await,
        (&Method::POST, ["cache", "prefetch"]) => prefetch::prefetch(control, &body).await,
        (&Method::GET, ["snapshots"]) => snapshots::list(control).await,
        (&Method::POST, ["snapshots"]) => snapshots::create(control).await,
        (&Method::POST, ["snapshots", "restore"]) => snapshots::restore(control, &body).await,
        (
            _,
            [
                "live" | "ready" | "metrics" | "regions" | "backends" | "config" | "explain"
                | "reload" | "snapshots",
            ],
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed for this path",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such admin endpoint; see docs/operations.md",
        ),
    }
}

pub fn json_response(status: StatusCode, value: Value) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

pub fn error(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, json!({ "error": message }))
}

/// The answer to a body [`requests`] refused.
pub fn refused(r: requests::Refused) -> AdminResponse {
    error(r.status, &r.message)
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn token_matching_and_redaction() {
        let t = Token::new(" s3cret\n").unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret!"));
        assert!(!t.matches(b""));
        // Longer by a multiple of 256 (the lengths' XOR cast to a byte once let it through).
        for extra in [256, 512, 65_536] {
            let mut longer = b"s3cret".to_vec();
            longer.resize(6 + extra, 0);
            assert!(!t.matches(&longer), "{extra} bytes more");
        }
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(Token::new("  ").is_none());
    }
}
