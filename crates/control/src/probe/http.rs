//! HTTP probe: a request on a fresh connection, spoken the way the service speaks to its
//! backends (HTTP/1.1, h2c, HTTPS or HTTP/2 over TLS); healthy if the status is in range and,
//! when asked, the body contains a string.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use streamgate_config::{HttpProbe as Spec, Upstream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Outcome, Probe};

/// Largest probe body read when looking for `body_contains`.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HttpProbe {
    spec: Spec,
    h2: bool,
    tls: Tls,
}

#[derive(Debug, Clone)]
enum Tls {
    Off,
    On {
        config: std::sync::Arc<rustls::ClientConfig>,
        /// `None`: the backend's IP address.
        server_name: Option<ServerName<'static>>,
    },
    /// The service's TLS settings cannot be used (the config check catches this first).
    Broken(String),
}

impl HttpProbe {
    /// A probe speaking `upstream`'s protocol, with its TLS settings.
    pub fn new(spec: Spec, upstream: &Upstream) -> HttpProbe {
        let tls = if upstream.protocol.is_tls() {
            let server_name = upstream
                .tls
                .server_name
                .as_ref()
                .map(|n| ServerName::try_from(n.clone()));
            match (
                streamgate_tls::client_config(&upstream.tls, upstream.protocol.is_h2()),
                server_name.transpose(),
            ) {
                (Ok(config), Ok(server_name)) => Tls::On {
                    config,
                    server_name,
                },
                (Err(e), _) => Tls::Broken(e.to_string()),
                (_, Err(e)) => Tls::Broken(format!("tls_server_name: {e}")),
            }
        } else {
            Tls::Off
        };
        HttpProbe {
            spec,
            h2: upstream.protocol.is_h2(),
            tls,
        }
    }

    /// The check over `stream`, connected to `backend` since `started`.
    async fn run(
        &self,
        stream: TcpStream,
        backend: SocketAddr,
        started: Instant,
    ) -> Result<Duration, String> {
        let _ = stream.set_nodelay(true);
        let host = self
            .spec
            .host
            .clone()
            .unwrap_or_else(|| backend.to_string());
        let resp = match &self.tls {
            Tls::Off => self.exchange(stream, &host, "http").await?,
            Tls::Broken(e) => return Err(e.clone()),
            Tls::On {
                config,
                server_name,
            } => {
                let name = server_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(backend.ip().into()));
                let s = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                self.exchange(s, &host, "https").await?
            }
        };
        let rtt = started.elapsed();
        let status = resp.status().as_u16();
        let (lo, hi) = self.spec.expect_status;
        if !(lo..=hi).contains(&status) {
            return Err(format!("status {status}, expected {lo}-{hi}"));
        }
        if let Some(needle) = &self.spec.body_contains {
            let body = first_bytes(resp.into_body(), MAX_BODY).await?;
            if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                return Err(format!(
                    "body does not contain {needle:?} in its first {MAX_BODY} bytes"
                ));
            }
        }
        Ok(rtt)
    }

    /// Sends the probe request over `io` with HTTP/1.1 or HTTP/2.
    async fn exchange<I>(
        &self,
        io: I,
        host: &str,
        scheme: &str,
    ) -> Result<http::Response<Incoming>, String>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io = TokioIo::new(io);
        let req = Request::builder()
            .method(self.spec.method.as_str())
            .header(header::USER_AGENT, "streamgate-health");
        if self.h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let req = req
                .uri(format!("{scheme}://{host}{}", self.spec.path))
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let req = req
                .uri(self.spec.path.as_str())
                .header(header::HOST, host)
                .header(header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))
        }
    }
}

impl Probe for HttpProbe {
    async fn check(&self, backend: SocketAddr, timeout: Duration) -> Outcome {
        let probe = async {
            let started = Instant::now();
            let stream = match TcpStream::connect(backend).await {
                Ok(s) => s,
                Err(e) => return Outcome::connect_failed(&e),
            };
            match self.run(stream, backend, started).await {
                Ok(rtt) => Outcome::Healthy { rtt },
                Err(reason) => Outcome::Unhealthy { reason },
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or_else(|_| Outcome::Unhealthy {
                reason: format!("no answer within {timeout:?}"),
            })
    }
}

/// The body's first `max` bytes (all of a shorter one): a larger health page is looked at, not
/// refused, and the rest is not read.
async fn first_bytes(mut body: Incoming, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let room = max - out.len();
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(out)
}
