//! Small configurations that several test files start from.

use crate::{Config, Failover, Geo, Health, Listener, Origin, Region, Service, Timeouts};

/// Listener `web`, `region` and `service` (`proxy.rs`, `backend_failures.rs`).
pub fn web(region: Region, service: Service) -> Config {
    Config::new()
        .listener(Listener::http("web"))
        .region(region)
        .service(service)
}

/// The region `local`, empty.
pub fn local() -> Region {
    Region::new("local")
}

/// The service `app` on `web` over `local`.
pub fn app() -> Service {
    Service::new("app").listeners(&["web"]).regions(&["local"])
}

/// `listener`, the region `r` of origin `o`, and `service` (`hardening.rs`,
/// `http2_hardening.rs`).
pub fn over_origin(o: &Origin, listener: Listener, service: Service) -> Config {
    Config::new()
        .listener(listener)
        .region(Region::new("r").backends(&[(o, 1)]))
        .service(service)
}

/// The service `s` on `web` over `r`.
pub fn service_s() -> Service {
    Service::new("s").listeners(&["web"]).regions(&["r"])
}

/// [`over_origin`] on `web` with [`service_s`] and `timeouts`.
pub fn timed(o: &Origin, timeouts: Timeouts) -> Config {
    over_origin(o, Listener::http("web"), service_s()).timeouts(timeouts)
}

/// A TCP config: the synthetic city database with loopback trusted (PROXY headers), then
/// `listener`, `region` and `service` (`l4_tls.rs`, `proxy_protocol.rs`).
pub fn tcp(region: Region, listener: Listener, service: Service) -> Config {
    Config::new()
        .geo(Geo::fixture("geo/streamgate-synthetic-city.mmdb").trusted_proxies(&["127.0.0.1/32"]))
        .listener(listener)
        .region(region)
        .service(service)
}

/// The TCP service "echo" on listener "l4" over region "r".
pub fn echo_service() -> Service {
    Service::new("echo").listeners(&["l4"]).regions(&["r"])
}

/// Two regions in priority order with active health checks every 200 ms (fall 3, rise 2, 1 s
/// probe timeout).
pub fn failover_config(us: &[&Origin], eu: &[&Origin], hold_down: &str) -> Config {
    Config::new()
        .listener(Listener::http("web"))
        .region(Region::new("us-east").origins(us))
        .region(Region::new("eu-west").origins(eu))
        .service(api(
            &["us-east", "eu-west"],
            Failover::new().hold_down(hold_down),
        ))
}

/// The service of [`failover_config`] over `regions`.
pub fn api(regions: &[&str], failover: Failover) -> Service {
    Service::new("api")
        .listeners(&["web"])
        .regions(regions)
        .region_policy("failover")
        .backend_policy("round_robin")
        .health(
            Health::new()
                .kind("http")
                .path("/healthz")
                .interval("200ms")
                // A dead origin refuses at once, so this does not slow detection. A live one on a
                // loaded 2-core CI machine can take over 150 ms to answer, and three such probes
                // in a row (the old 150 ms timeout) fail a healthy region over: an extra
                // `failovers_total` in the test that counts them.
                .timeout("1s")
                .rise(2)
                .fall(3),
        )
        .failover(failover)
}

/// Regions `a` and `b` (failover, health checks every 100 ms, fall 2, rise 1) behind the
/// service `web` for `example.com`, with the synthetic city database and loopback trusted
/// (`observability.rs`, `access_log.rs`).
pub fn two_regions(a: &[&Origin], b: &[&Origin]) -> Config {
    Config::new()
        .geo(Geo::fixture("geo/streamgate-synthetic-city.mmdb").trusted_proxies(&["127.0.0.1/32"]))
        .listener(Listener::http("web"))
        .region(Region::new("a").origins(a))
        .region(Region::new("b").origins(b))
        .service(
            Service::new("web")
                .listeners(&["web"])
                .hosts(&["example.com"])
                .regions(&["a", "b"])
                .region_policy("failover")
                .health(
                    Health::new()
                        .path("/healthz")
                        .interval("100ms")
                        .fall(2)
                        .rise(1),
                )
                .failover(Failover::new().hold_down("200ms")),
        )
}
