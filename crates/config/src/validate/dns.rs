//! `[dns]` and backend addresses written as `host:port`.

use super::*;
use crate::dns::{MAX_ADDRESSES_LIMIT, is_host_name};

/// What a backend's `address` names: an address, or a host name to resolve.
pub(super) enum Written {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

/// Reads a backend `address`: `IP:port`, `[IPv6]:port` or `host:port`; anything else is an
/// error that says which of the three it was meant to be.
pub(super) fn backend_address(value: &S<String>, path: &str, ctx: &mut Ctx<'_>) -> Option<Written> {
    let text = value.get_ref().trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(Written::Ip(a));
    }
    let problem = match text.rsplit_once(':') {
        _ if text.starts_with('[') || text.parse::<IpAddr>().is_ok() => {
            "is not an address; expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\"".to_string()
        }
        None if is_host_name(text) => format!(
            "has no port; expected host:port such as \"{}:443\"",
            text.trim_end_matches('.')
        ),
        Some((host, port)) if is_host_name(host) => match port.parse::<u16>() {
            Ok(p) if p != 0 => {
                return Some(Written::Name {
                    host: host.to_ascii_lowercase(),
                    port: p,
                });
            }
            _ => format!("has no valid port (\"{port}\"); expected 1 to 65535"),
        },
        _ => "is neither an address nor a host name; expected IP:port such as \"127.0.0.1:8080\" or host:port such as \"origin.example.com:443\"".to_string(),
    };
    ctx.err(value.span(), path, format!("\"{text}\" {problem}"));
    None
}

pub(super) fn dns(raw: Option<&S<RawDns>>, ctx: &mut Ctx<'_>) -> Dns {
    let base = Dns::default();
    let Some(raw) = raw else { return base };
    let r = raw.get_ref();
    let mut servers = Vec::new();
    for (i, s) in r.servers.iter().enumerate() {
        let text = s.get_ref().trim();
        // nginx's `resolver` takes an address with an optional port; 53 is the DNS port.
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Some(a) => servers.push(a),
            None => ctx.err(
                s.span(),
                format!("dns.servers[{i}]"),
                format!(
                    "\"{text}\" is not a name server address; expected IP or IP:port such as \"10.0.0.2\" or \"127.0.0.1:5353\""
                ),
            ),
        }
    }
    let mut positive = |value: &Option<S<DurationText>>, key: &str, default: Duration| {
        let d = ctx.duration(value, format!("dns.{key}"), default);
        match value {
            Some(v) if d < Duration::from_millis(100) => {
                ctx.err(v.span(), format!("dns.{key}"), "must be at least 100ms");
                default
            }
            _ => d,
        }
    };
    let min_ttl = positive(&r.min_ttl, "min_ttl", base.min_ttl);
    let max_ttl = positive(&r.max_ttl, "max_ttl", base.max_ttl);
    let timeout = positive(&r.timeout, "timeout", base.timeout);
    if min_ttl > max_ttl {
        let at = r
            .max_ttl
            .as_ref()
            .or(r.min_ttl.as_ref())
            .map_or(raw.span(), |v| v.span());
        ctx.err(
            at,
            "dns.max_ttl",
            format!(
                "max_ttl ({max_ttl:?}) is shorter than min_ttl ({min_ttl:?}); expected min_ttl <= max_ttl"
            ),
        );
    }
    let family = match &r.family {
        None => base.family,
        Some(f) => AddressFamily::parse(f.get_ref()).unwrap_or_else(|| {
            ctx.err(
                f.span(),
                "dns.family",
                format!(
                    "unknown address family \"{}\"; expected one of {}",
                    f.get_ref(),
                    AddressFamily::NAMES
                ),
            );
            base.family
        }),
    };
    let max_addresses = r
        .max_addresses
        .as_ref()
        .and_then(|m| ctx.int_in(m, "dns.max_addresses", 1, MAX_ADDRESSES_LIMIT as i64))
        .map_or(base.max_addresses, |m| m as usize);
    Dns {
        servers,
        min_ttl,
        max_ttl,
        timeout,
        family,
        allow_local: r.allow_local.unwrap_or(base.allow_local),
        max_addresses,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::model::*;

    fn file(backends: &str, dns: &str) -> String {
        format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\
             [[regions]]\nname = \"r\"\nbackends = [{backends}]\n\
             [[services]]\nname = \"s\"\nlisteners = [\"web\"]\nregions = [\"r\"]\n{dns}"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match crate::parse(Path::new("sg.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn names_and_addresses_are_told_apart() {
        let text = file(
            r#"{ address = "10.0.0.1:80" }, { address = "Origin.Example.com:443", weight = 4 },
               { address = "[::1]:80" }, { address = "origin.example.com.:80" }"#,
            "",
        );
        let c = crate::parse(Path::new("sg.toml"), &text).unwrap();
        let r = &c.regions[0];
        let ips: Vec<String> = r.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1:80", "[::1]:80"]);
        let names: Vec<(String, u16, u32)> = r
            .named_backends
            .iter()
            .map(|b| (b.host.clone(), b.port, b.weight.get()))
            .collect();
        assert_eq!(
            names,
            [
                ("origin.example.com".to_string(), 443, 4),
                ("origin.example.com.".to_string(), 80, 1)
            ]
        );
        assert_eq!(c.dns, Dns::default());
    }

    #[test]
    fn dns_table_is_read() {
        let text = file(
            r#"{ address = "origin.test:80" }"#,
            "[dns]\nservers = [\"127.0.0.1:5353\", \"10.0.0.2\", \"::1\"]\nmin_ttl = \"2s\"\nmax_ttl = \"1m\"\ntimeout = \"500ms\"\nfamily = \"ipv4\"\n",
        );
        let c = crate::parse(Path::new("sg.toml"), &text).unwrap();
        let servers: Vec<String> = c.dns.servers.iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["127.0.0.1:5353", "10.0.0.2:53", "[::1]:53"]);
        assert_eq!(c.dns.min_ttl, Duration::from_secs(2));
        assert_eq!(c.dns.max_ttl, Duration::from_secs(60));
        assert_eq!(c.dns.timeout, Duration::from_millis(500));
        assert_eq!(c.dns.family, AddressFamily::Ipv4);
        assert!(!c.dns.allow_local);
        assert_eq!(c.dns.max_addresses, 64);

        let text = file(
            r#"{ address = "origin.test:80" }"#,
            "[dns]\nallow_local = true\nmax_addresses = 3\n",
        );
        let c = crate::parse(Path::new("sg.toml"), &text).unwrap();
        assert!(c.dns.allow_local);
        assert_eq!(c.dns.max_addresses, 3);
    }

    #[test]
    fn every_mistake_is_reported_with_its_line_and_key() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                r#"{ address = "origin.example.com" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[0].address: \"origin.example.com\" has no port; expected host:port such as \"origin.example.com:443\"",
                ],
            ),
            (
                r#"{ address = "origin.example.com:0" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[0].address: \"origin.example.com:0\" has no valid port (\"0\"); expected 1 to 65535",
                ],
            ),
            (
                r#"{ address = "origin.example.com:https" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[0].address: \"origin.example.com:https\" has no valid port (\"https\"); expected 1 to 65535",
                ],
            ),
            (
                r#"{ address = "bad_host!:80" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[0].address: \"bad_host!:80\" is neither an address nor a host name; expected IP:port such as \"127.0.0.1:8080\" or host:port such as \"origin.example.com:443\"",
                ],
            ),
            (
                r#"{ address = "10.0.0.300:80" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[0].address: \"10.0.0.300:80\" is neither an address nor a host name; expected IP:port such as \"127.0.0.1:8080\" or host:port such as \"origin.example.com:443\"",
                ],
            ),
            (
                r#"{ address = "10.0.0.1" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[0].address: \"10.0.0.1\" is not an address; expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                ],
            ),
            (
                r#"{ address = "a.test:80" }, { address = "A.test:80" }"#,
                "",
                &[
                    "sg.toml:6: regions[0].backends[1].address: duplicate backend a.test:80 in region \"r\"",
                ],
            ),
            (
                r#"{ address = "a.test:80" }"#,
                "[dns]\nservers = [\"resolver.local\"]\nmin_ttl = \"10ms\"\nfamily = \"both\"\n",
                &[
                    "sg.toml:12: dns.servers[0]: \"resolver.local\" is not a name server address; expected IP or IP:port such as \"10.0.0.2\" or \"127.0.0.1:5353\"",
                    "sg.toml:13: dns.min_ttl: must be at least 100ms",
                    "sg.toml:14: dns.family: unknown address family \"both\"; expected one of any, ipv4, ipv6",
                ],
            ),
            (
                r#"{ address = "a.test:80" }"#,
                "[dns]\nmin_ttl = \"10m\"\nmax_ttl = \"1m\"\n",
                &[
                    "sg.toml:13: dns.max_ttl: max_ttl (60s) is shorter than min_ttl (600s); expected min_ttl <= max_ttl",
                ],
            ),
            (
                r#"{ address = "a.test:80" }"#,
                "[dns]\nserver = [\"10.0.0.2\"]\n",
                &["sg.toml:12: dns.server: unknown field `server`; did you mean `servers`?"],
            ),
            (
                r#"{ address = "a.test:80" }"#,
                "[dns]\nmax_addresses = 0\n",
                &["sg.toml:12: dns.max_addresses: 0 is out of range; expected 1 to 1024"],
            ),
            (
                r#"{ address = "a.test:80" }"#,
                "[dns]\nallow_local = \"yes\"\n",
                &["sg.toml:12: dns.allow_local: invalid type: string \"yes\", expected a boolean"],
            ),
        ];
        for (backends, dns, want) in cases {
            assert_eq!(errors(&file(backends, dns)), *want, "{backends} {dns}");
        }
    }
}
