//! Listeners: addresses, protocols, certificates, limits.

use super::*;

/// `max_headers` when the listener does not set it.
pub const DEFAULT_MAX_HEADERS: usize = 100;

pub(super) fn listeners(raw: &[S<RawListener>], admin: &Admin, ctx: &mut Ctx<'_>) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
    addrs.insert(admin.listen, "admin.listen".into());
    for (i, l) in raw.iter().enumerate() {
        let span = l.span();
        let l = l.get_ref();
        let p = format!("listeners[{i}]");
        let listener_name = ctx.required(&l.name, &span, format!("{p}.name"));
        if let Some(n) = listener_name {
            name(n, format!("{p}.name"), &mut names, "listener", ctx);
        }
        let listen_value = ctx.required(&l.listen, &span, format!("{p}.listen"));
        let listen = listen_value.and_then(|v| socket_addr(v, format!("{p}.listen"), ctx));
        if let (Some(a), Some(v)) = (listen, listen_value)
            && a.port() != 0
            && let Some(other) = addrs.insert(a, format!("{p}.listen"))
        {
            ctx.err(
                v.span(),
                format!("{p}.listen"),
                format!("{a} is already used by {other}"),
            );
        }
        let protocol = match &l.protocol {
            None => Protocol::Http,
            Some(v) => match Protocol::parse(v.get_ref()) {
                Some(p) => p,
                None => {
                    ctx.err(
                        v.span(),
                        format!("{p}.protocol"),
                        format!(
                            "unknown protocol \"{}\"; expected one of {}",
                            v.get_ref(),
                            Protocol::NAMES
                        ),
                    );
                    Protocol::Http
                }
            },
        };
        let max_connections = l.max_connections.as_ref().and_then(|m| {
            ctx.int_in(m, format!("{p}.max_connections"), 1, 10_000_000)
                .and_then(|n| NonZeroUsize::new(n as usize))
        });
        let max_connections_per_client = l.max_connections_per_client.as_ref().and_then(|m| {
            ctx.int_in(m, format!("{p}.max_connections_per_client"), 1, 10_000_000)
                .and_then(|n| NonZeroUsize::new(n as usize))
        });
        let max_header_bytes = match &l.max_header_bytes {
            None => 64 * 1024,
            Some(v) => match crate::units::parse_size(v.get_ref()) {
                Ok(n) if (8 * 1024..=1 << 20).contains(&n) => n as usize,
                Ok(_) => {
                    ctx.err(
                        v.span(),
                        format!("{p}.max_header_bytes"),
                        "must be 8KiB to 1MiB",
                    );
                    64 * 1024
                }
                Err(e) => {
                    ctx.err(v.span(), format!("{p}.max_header_bytes"), e);
                    64 * 1024
                }
            },
        };
        let max_headers = l
            .max_headers
            .as_ref()
            .and_then(|m| ctx.int_in(m, format!("{p}.max_headers"), 8, 1024))
            // Envoy's default (HAProxy's is 101). hyper parses up to 100 fields in arrays on
            // the stack and more on the heap: 128 cost two allocations per HTTP/1.1 request
            // and 266 of a proxied request's 35 197 instructions (532 of a hit's 23 477).
            .map_or(DEFAULT_MAX_HEADERS, |n| n as usize);
        let mut certificates = Vec::new();
        match (&l.certificates, protocol) {
            (Some(list), Protocol::Https) => {
                if list.get_ref().is_empty() {
                    ctx.err(list.span(), format!("{p}.certificates"), "an https listener needs at least one certificate");
                }
                for (j, c) in list.get_ref().iter().enumerate() {
                    let cp = format!("{p}.certificates[{j}]");
                    let (cert, key) = (
                        ctx.required(&c.get_ref().cert, &c.span(), format!("{cp}.cert")),
                        ctx.required(&c.get_ref().key, &c.span(), format!("{cp}.key")),
                    );
                    let (Some(cert), Some(key)) = (cert, key) else { continue };
                    let cert = ctx.existing_file(cert, format!("{cp}.cert"), "certificate");
                    let key = ctx.existing_file(key, format!("{cp}.key"), "private key");
                    certificates.push(CertPair { cert, key });
                }
            }
            (Some(list), _) => ctx.err(list.span(), format!("{p}.certificates"), "only https listeners take certificates"),
            (None, Protocol::Https) => ctx.err(
                listener_name.map_or(span.clone(), |n| n.span()),
                format!("{p}.certificates"),
                "an https listener needs certificates = [{ cert = \"site.pem\", key = \"site.key\" }]",
            ),
            (None, _) => {}
        }
        let strict_sni = match &l.strict_sni {
            Some(v) if *v.get_ref() && protocol != Protocol::Https => {
                ctx.err(v.span(), format!("{p}.strict_sni"), "only https listeners choose certificates by SNI; tls_passthrough services are chosen by it already");
                false
            }
            Some(v) => *v.get_ref(),
            None => false,
        };
        out.push(Listener {
            name: listener_name
                .map(|n| n.get_ref().clone())
                .unwrap_or_default(),
            listen: listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            protocol,
            max_connections,
            max_connections_per_client,
            max_header_bytes,
            max_headers,
            certificates,
            strict_sni,
            proxy_protocol: l.proxy_protocol.unwrap_or(false),
        });
    }
    out
}
