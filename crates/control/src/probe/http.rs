//! HTTP probe: a request on a fresh connection; healthy if the status is in range and, when
//! asked, the body contains a string.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use streamgate_config::HttpProbe as Spec;
use tokio::net::TcpStream;

use super::{Outcome, Probe};

/// Largest probe body read when looking for `body_contains`.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HttpProbe {
    spec: Spec,
}

impl HttpProbe {
    pub fn new(spec: Spec) -> HttpProbe {
        HttpProbe { spec }
    }

    async fn run(&self, backend: SocketAddr) -> Result<Duration, String> {
        let started = Instant::now();
        let stream = TcpStream::connect(backend)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let host = self
            .spec
            .host
            .clone()
            .unwrap_or_else(|| backend.to_string());
        let req = Request::builder()
            .method(self.spec.method.as_str())
            .uri(self.spec.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "streamgate-health")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let rtt = started.elapsed();
        let status = resp.status().as_u16();
        let (lo, hi) = self.spec.expect_status;
        if !(lo..=hi).contains(&status) {
            return Err(format!("status {status}, expected {lo}-{hi}"));
        }
        if let Some(needle) = &self.spec.body_contains {
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                return Err(format!("body does not contain {needle:?}"));
            }
        }
        Ok(rtt)
    }
}

impl Probe for HttpProbe {
    async fn check(&self, backend: SocketAddr, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.run(backend)).await {
            Ok(Ok(rtt)) => Outcome::Healthy { rtt },
            Ok(Err(reason)) => Outcome::Unhealthy { reason },
            Err(_) => Outcome::Unhealthy {
                reason: format!("no answer within {timeout:?}"),
            },
        }
    }
}
