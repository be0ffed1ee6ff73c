//! The admin API (JSON) and /metrics on their own listener. Off loopback every endpoint but
//! /live and /ready requires `Authorization: Bearer <token>` from `admin.token_file`.

mod cache;
mod handlers;
mod prefetch;
mod snapshots;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
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

    fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0;
        let mut diff = (expected.len() ^ presented.len()) as u8;
        for (i, &b) in expected.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    token: Option<Token>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let control = control.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let control = control.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(handle(&control, token.as_ref(), req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(peer = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Serves only `GET /metrics` (no token) until `shutdown`: a scrape endpoint that can face the
/// network while the admin API stays on loopback.
pub async fn serve_metrics(
    listener: TcpListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let control = control.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
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
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(control: &Control, token: Option<&Token>, req: Request<Incoming>) -> AdminResponse {
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
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["live"]) => json_response(StatusCode::OK, json!({"status": "live"})),
        (&Method::GET, ["ready"]) => handlers::ready(control),
        (&Method::GET, ["metrics"]) => handlers::metrics(control),
        (&Method::GET, ["regions"]) => handlers::regions(control),
        (&Method::GET, ["backends"]) => handlers::backends(control),
        (&Method::POST, ["backends", action @ ("drain" | "undrain")]) => {
            handlers::drain(control, &body, *action == "drain")
        }
        (&Method::POST, ["regions", name, action @ ("activate" | "deactivate")]) => {
            handlers::activate(control, name, *action == "activate")
        }
        (&Method::POST, ["services", name, "primary"]) => handlers::primary(control, name, &body),
        (&Method::POST, ["reload"]) => handlers::reload(control).await,
        (&Method::GET, ["config"]) => handlers::config(control),
        (&Method::GET, ["explain"]) => handlers::explain(control, &query),
        (&Method::GET, ["cache"]) => cache::stats(control),
        (&Method::POST, ["cache", "purge"]) => cache::purge(control, &body),
        (&Method::POST, ["cache", "prefetch"]) => prefetch::prefetch(control, &body).await,
        (&Method::GET, ["snapshots"]) => snapshots::list(control).await,
        (&Method::POST, ["snapshots"]) => snapshots::create(control).await,
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

/// Parses a JSON request body.
pub fn parse_body(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
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
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(Token::new("  ").is_none());
    }
}
