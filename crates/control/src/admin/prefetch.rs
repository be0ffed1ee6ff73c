//! `POST /cache/prefetch`: warms the cache by requesting URLs through the daemon's own
//! listeners, so each goes the normal way (routing, forwarding, cache fill, coalescing) and is
//! stored under the key a client of that scheme would use: `http://` URLs through a plain HTTP
//! listener, `https://` URLs through an HTTPS one (a bare `host/path` is prefetched as http).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use streamgate_cache::key::split_url;
use streamgate_config::{Protocol, UpstreamTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::info;

use super::requests;
use super::{AdminResponse, error, json_response, refused};
use crate::Control;

/// Where prefetches of each scheme go: a listener of the daemon's own.
#[derive(Debug, Clone, Copy)]
struct Targets {
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
}

pub(super) async fn prefetch(control: &Control, body: &Bytes) -> AdminResponse {
    let (urls, within) = match requests::prefetch_urls(body) {
        Ok(p) => (p.urls, p.deadline),
        Err(r) => return refused(r),
    };
    let deadline = tokio::time::Instant::now() + within;
    let targets = {
        let table = control.table.load();
        let of = |protocol: Protocol| {
            let names: Vec<&str> = table
                .config
                .listeners
                .iter()
                .filter(|l| l.protocol == protocol)
                .map(|l| l.name.as_str())
                .collect();
            control
                .listeners()
                .into_iter()
                .find(|(n, _)| names.contains(&n.as_str()))
                .map(|(_, a)| a)
        };
        Targets {
            http: of(Protocol::Http),
            https: of(Protocol::Https),
        }
    };
    if targets.http.is_none() && targets.https.is_none() {
        return error(
            StatusCode::CONFLICT,
            "no HTTP or HTTPS listener to prefetch through",
        );
    }
    let mut results = Vec::with_capacity(urls.len());
    // A few at a time: prefetch warms the cache, it should not flood the origin.
    for chunk in urls.chunks(8) {
        if tokio::time::Instant::now() >= deadline {
            // Answered, not dropped: the caller sees which to send again.
            let why = format!(
                "not fetched: the prefetch's deadline of {} s passed first; send it again",
                within.as_secs()
            );
            results.extend(chunk.iter().map(|u| json!({"url": u, "error": why})));
            continue;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, u) in chunk.iter().enumerate() {
            let url = u.clone();
            tasks.spawn(async move { (i, url.clone(), fetch_one(targets, &url, deadline).await) });
        }
        let mut out: Vec<(usize, Value)> = Vec::new();
        while let Some(Ok((i, url, r))) = tasks.join_next().await {
            out.push((
                i,
                match r {
                    Ok((status, cache, bytes)) => {
                        json!({"url": url, "status": status, "cache": cache, "bytes": bytes})
                    }
                    Err(e) => json!({"url": url, "error": e}),
                },
            ));
        }
        out.sort_by_key(|(i, _)| *i);
        results.extend(out.into_iter().map(|(_, v)| v));
    }
    let ok = results
        .iter()
        .filter(|r| {
            r.get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| s < 400)
        })
        .count();
    info!(urls = results.len(), ok, "cache prefetch");
    json_response(StatusCode::OK, json!({ "results": results, "ok": ok }))
}

async fn fetch_one(
    targets: Targets,
    url: &str,
    deadline: tokio::time::Instant,
) -> Result<(u16, Option<String>, usize), String> {
    let (schemes, host, path) = split_url(url).ok_or("not an http://host/path URL")?;
    let https = schemes == ["https"];
    let run = async {
        let addr = if https { targets.https } else { targets.http };
        let addr = addr.ok_or(if https {
            "no HTTPS listener to prefetch https:// URLs through"
        } else {
            "no plain HTTP listener to prefetch http:// URLs through"
        })?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        if https {
            let tls = tokio_rustls::TlsConnector::from(own_listener_tls()?);
            let name = ServerName::try_from(server_name(host).to_string())
                .map_err(|e| format!("{host}: {e}"))?;
            let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
            request(stream, host, path).await
        } else {
            request(tcp, host, path).await
        }
    };
    // 60 s a URL, and none past the call's deadline.
    let by = deadline.min(tokio::time::Instant::now() + Duration::from_secs(60));
    tokio::time::timeout_at(by, run)
        .await
        .map_err(|_| "timed out (60 s a URL, or the prefetch's deadline)".to_string())?
}

async fn request<S>(
    stream: S,
    host: &str,
    path: &str,
) -> Result<(u16, Option<String>, usize), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "streamgate-prefetch")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Counted as it passes, never gathered: a prefetch of multi-gigabyte objects (eight at a
    // time) held each whole in memory only to report its length.
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.map_err(|e| e.to_string())?.data_ref() {
            len += data.len();
        }
    }
    Ok((status, cache, len))
}

/// The name to ask for by SNI: the host without its port.
fn server_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// A TLS client for the daemon's own HTTPS listener. It connects to an address the daemon
/// itself bound and only reads back what its own cache answered, so the certificate (the
/// daemon's, chosen by SNI) proves nothing here and is not verified (handshake signatures still
/// are): the backend client of `tls_verify = false`, HTTP/1.1.
fn own_listener_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    let settings = UpstreamTls {
        verify: false,
        ..UpstreamTls::default()
    };
    streamgate_tls::client_config(&settings, false).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn sni_is_the_host_without_its_port() {
        assert_eq!(server_name("cdn.example.com:8443"), "cdn.example.com");
        assert_eq!(server_name("cdn.example.com"), "cdn.example.com");
        assert_eq!(server_name("[::1]:443"), "::1");
    }
}
