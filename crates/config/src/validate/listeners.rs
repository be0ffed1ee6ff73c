//! Listeners: addresses, protocols, certificates, limits.

use super::*;

pub(super) fn listeners(raw: &[S<RawListener>], admin: &Admin, ctx: &mut Ctx<'_>) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
    addrs.insert(admin.listen, "admin.listen".into());
    for (i, l) in raw.iter().enumerate() {
        let l = l.get_ref();
        let p = format!("listeners[{i}]");
        name(&l.name, format!("{p}.name"), &mut names, "listener", ctx);
        let listen = socket_addr(&l.listen, format!("{p}.listen"), ctx);
        if let Some(a) = listen
            && a.port() != 0
            && let Some(other) = addrs.insert(a, format!("{p}.listen"))
        {
            ctx.err(
                l.listen.span(),
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
            .map_or(128, |n| n as usize);
        let mut certificates = Vec::new();
        match (&l.certificates, protocol) {
            (Some(list), Protocol::Https) => {
                if list.get_ref().is_empty() {
                    ctx.err(list.span(), format!("{p}.certificates"), "an https listener needs at least one certificate");
                }
                for (j, c) in list.get_ref().iter().enumerate() {
                    let c = c.get_ref();
                    let cert = ctx.existing_file(&c.cert, format!("{p}.certificates[{j}].cert"), "certificate");
                    let key = ctx.existing_file(&c.key, format!("{p}.certificates[{j}].key"), "private key");
                    certificates.push(CertPair { cert, key });
                }
            }
            (Some(list), _) => ctx.err(list.span(), format!("{p}.certificates"), "only https listeners take certificates"),
            (None, Protocol::Https) => ctx.err(
                l.name.span(),
                format!("{p}.certificates"),
                "an https listener needs certificates = [{ cert = \"site.pem\", key = \"site.key\" }]",
            ),
            (None, _) => {}
        }
        out.push(Listener {
            name: l.name.get_ref().clone(),
            listen: listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            protocol,
            max_connections,
            max_connections_per_client,
            max_header_bytes,
            max_headers,
            certificates,
            proxy_protocol: l.proxy_protocol.unwrap_or(false),
        });
    }
    out
}
