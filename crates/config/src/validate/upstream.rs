//! How a service speaks to its backends, and when it retries.

use super::*;

pub(super) fn upstream(raw: &S<RawUpstream>, svc: &str, ctx: &mut Ctx<'_>) -> Upstream {
    let u = raw.get_ref();
    let p = format!("{svc}.upstream");
    let protocol = ctx.named(
        u.protocol.as_ref(),
        format!("{p}.protocol"),
        "protocol",
        UpstreamProtocol::Http1,
    );
    let send_proxy = ctx.named(
        u.send_proxy.as_ref(),
        format!("{p}.send_proxy"),
        "PROXY version",
        SendProxy::Off,
    );
    let ca_file = u
        .tls_ca_file
        .as_ref()
        .map(|f| ctx.existing_file(f, format!("{p}.tls_ca_file"), "CA file"));
    let client_cert = match (&u.tls_client_cert, &u.tls_client_key) {
        (Some(c), Some(k)) => Some(CertPair {
            cert: ctx.existing_file(c, format!("{p}.tls_client_cert"), "certificate"),
            key: ctx.existing_file(k, format!("{p}.tls_client_key"), "private key"),
        }),
        (Some(c), None) => {
            ctx.err(
                c.span(),
                format!("{p}.tls_client_key"),
                "tls_client_cert needs tls_client_key",
            );
            None
        }
        (None, Some(k)) => {
            ctx.err(
                k.span(),
                format!("{p}.tls_client_cert"),
                "tls_client_key needs tls_client_cert",
            );
            None
        }
        (None, None) => None,
    };
    let tls_keys = [
        &u.tls_ca_file,
        &u.tls_server_name,
        &u.tls_client_cert,
        &u.tls_client_key,
    ];
    if !protocol.is_tls()
        && let Some(v) = tls_keys.into_iter().flatten().next()
    {
        ctx.err(
            v.span(),
            format!("{p}.protocol"),
            "TLS settings need protocol = \"https\" or \"h2\"",
        );
    }
    Upstream {
        protocol,
        send_proxy,
        tls: UpstreamTls {
            ca_file,
            server_name: u.tls_server_name.as_ref().map(|s| s.get_ref().clone()),
            client_cert,
            verify: u.tls_verify.unwrap_or(true),
        },
    }
}

pub(super) fn retry(raw: Option<&RawRetry>, svc: &str, ctx: &mut Ctx<'_>) -> Retry {
    let d = Retry::default();
    let Some(r) = raw else { return d };
    let p = format!("{svc}.retry");
    let attempts = r
        .attempts
        .as_ref()
        .and_then(|v| ctx.int_in(v, format!("{p}.attempts"), 0, 5))
        .map_or(d.attempts, |n| n as u32);
    let budget_ratio = match &r.budget_percent {
        None => d.budget_ratio,
        Some(v) if (0.0..=100.0).contains(v.get_ref()) => v.get_ref() / 100.0,
        Some(v) => {
            ctx.err(
                v.span(),
                format!("{p}.budget_percent"),
                format!("{} is out of range; expected 0 to 100", v.get_ref()),
            );
            d.budget_ratio
        }
    };
    let min_per_second = r
        .min_per_second
        .as_ref()
        .and_then(|v| ctx.int_in(v, format!("{p}.min_per_second"), 0, 1_000_000))
        .map_or(d.min_per_second, |n| n as u32);
    Retry {
        attempts,
        budget_ratio,
        min_per_second,
    }
}
