//! `streamgate demo`: three loopback origins, one per region, each answering with its region's
//! name, behind the real daemon running config/demo.toml.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The demo config: `config/demo.toml` of this source tree, or of the working directory.
pub fn default_config_path() -> PathBuf {
    let in_tree = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/demo.toml"
    ));
    if in_tree.exists() {
        in_tree
    } else {
        PathBuf::from("config/demo.toml")
    }
}

/// A demo origin: answers every request with `hello from <region>` and echoes what it saw.
pub async fn start_origin(region: String, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("demo origin for {region}: cannot bind {addr}; is another demo running?")
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let region = region.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let region = region.clone();
                    async move { Ok::<_, Infallible>(answer(&region, bound, &req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn answer(region: &str, addr: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let body = format!(
        "hello from {region} (origin {addr})\npath: {}\nx-forwarded-for: {}\nvia: {}\n",
        req.uri().path(),
        header("x-forwarded-for"),
        header("via"),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-demo-region", region)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
