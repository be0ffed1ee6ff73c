//! Pooled keep-alive connections to backends (hyper-util's client), one pool per distinct
//! connect-timeout/idle setting so that pools survive reloads.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::http::body::RequestBody;

/// The HTTP/1.1 client to backends.
pub type HttpClient = Client<HttpConnector, RequestBody>;

/// Settings that need a client of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Clients by settings, created on first use and kept for the life of the process.
#[derive(Debug, Default)]
pub struct Upstreams {
    clients: ArcSwap<Vec<(PoolKey, HttpClient)>>,
}

impl Upstreams {
    /// The client for `key`: a lock-free lookup, creating it the first time.
    pub fn client(&self, key: PoolKey) -> HttpClient {
        if let Some((_, c)) = self.clients.load().iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let client = build(key);
        self.clients.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(k, _)| *k == key) {
                list.push((key, client.clone()));
            }
            Arc::new(list)
        });
        self.clients
            .load()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.clone())
            .unwrap_or(client)
    }
}

fn build(key: PoolKey) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(1024)
        // The proxy sets Host itself (the client's), not the backend address.
        .set_host(false)
        .retry_canceled_requests(true)
        .build(connector)
}
