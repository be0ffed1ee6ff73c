//! The command line's client of a running daemon's admin API: `admin.listen` and the bearer
//! token of `admin.token_file`, from the same config file the daemon runs with.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use streamgate_config::Config;
use tokio::net::TcpStream;

/// Sends one request to the daemon's admin API; the answer's status and JSON body.
pub fn call(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value)> {
    let token = match &config.admin.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("admin.token_file: cannot read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let addr = config.admin.listen;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| Ok(r?))
            .with_context(|| {
                format!(
                    "cannot reach the daemon's admin API at {addr} (admin.listen); is it running?"
                )
            })?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        if let Some(t) = &token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let resp = tokio::time::timeout(
            Duration::from_secs(600),
            tx.send_request(req.body(Full::new(body))?),
        )
        .await
        .context("the admin API did not answer within 10 minutes")??;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes).trim().to_string() }),
        );
        if status == StatusCode::UNAUTHORIZED {
            bail!("the admin API refused the token (admin.token_file): {json}");
        }
        Ok((status, json))
    })
}
