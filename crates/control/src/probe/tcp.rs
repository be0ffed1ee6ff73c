//! TCP probe: the backend accepts a connection within the timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{Outcome, Probe};

#[derive(Debug, Clone, Copy, Default)]
pub struct TcpProbe;

impl Probe for TcpProbe {
    async fn check(&self, backend: SocketAddr, timeout: Duration) -> Outcome {
        let started = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(backend)).await {
            Ok(Ok(_)) => Outcome::Healthy {
                rtt: started.elapsed(),
            },
            Ok(Err(e)) => Outcome::connect_failed(&e),
            Err(_) => Outcome::Unhealthy {
                reason: format!("connect timed out after {timeout:?}"),
            },
        }
    }
}
