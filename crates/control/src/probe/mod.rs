//! Active health probes: one check of one backend, behind a small trait so the prober loop can
//! be driven by anything that answers "healthy or not, and how fast".

mod http;
mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use http::HttpProbe;
pub use tcp::TcpProbe;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Healthy {
        rtt: Duration,
    },
    Unhealthy {
        reason: String,
    },
    /// The probe could not be made: this daemon is short of descriptors or memory
    /// ([`streamgate_balance::shortage`]). Says nothing of the backend, so it counts neither
    /// way.
    NotMade {
        reason: String,
    },
}

impl Outcome {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Outcome::Healthy { .. })
    }
}

impl Outcome {
    /// A failed connect: [`Outcome::NotMade`] when the failure is this daemon's own shortage.
    pub fn connect_failed(e: &std::io::Error) -> Outcome {
        let reason = format!("connect: {e}");
        if streamgate_balance::shortage::is_local_shortage(e) {
            Outcome::NotMade { reason }
        } else {
            Outcome::Unhealthy { reason }
        }
    }
}

/// One health check of one backend.
pub trait Probe: Send + Sync + 'static {
    fn check(&self, backend: SocketAddr, timeout: Duration)
    -> impl Future<Output = Outcome> + Send;
}

/// The probe a service's `[services.health]` asks for.
#[derive(Debug, Clone)]
pub enum AnyProbe {
    Http(HttpProbe),
    Tcp(TcpProbe),
}

impl AnyProbe {
    /// The probe `kind` names, speaking to backends as `upstream` says.
    pub fn from_config(
        kind: &streamgate_config::HealthKind,
        upstream: &streamgate_config::Upstream,
    ) -> AnyProbe {
        match kind {
            streamgate_config::HealthKind::Tcp => AnyProbe::Tcp(TcpProbe),
            streamgate_config::HealthKind::Http(p) => {
                AnyProbe::Http(HttpProbe::new(p.clone(), upstream))
            }
        }
    }
}

impl Probe for AnyProbe {
    async fn check(&self, backend: SocketAddr, timeout: Duration) -> Outcome {
        match self {
            AnyProbe::Http(p) => p.check(backend, timeout).await,
            AnyProbe::Tcp(p) => p.check(backend, timeout).await,
        }
    }
}
