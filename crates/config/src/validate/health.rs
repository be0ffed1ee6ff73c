//! Active and passive health checks and region failover.

use super::*;

pub(super) fn health(raw: &S<RawHealth>, svc: &str, ctx: &mut Ctx<'_>) -> HealthCheck {
    let h = raw.get_ref();
    let p = format!("{svc}.health");
    let kind_name = h
        .kind
        .as_ref()
        .map(|k| k.get_ref().as_str())
        .unwrap_or("http");
    let kind = match kind_name {
        "tcp" => {
            for (key, v) in [
                ("path", &h.path),
                ("method", &h.method),
                ("host", &h.host),
                ("expect_status", &h.expect_status),
                ("body_contains", &h.body_contains),
            ] {
                if let Some(v) = v {
                    ctx.err(
                        v.span(),
                        format!("{p}.{key}"),
                        "only http health checks take this key",
                    );
                }
            }
            HealthKind::Tcp
        }
        "http" => {
            let path = match &h.path {
                None => "/".to_string(),
                Some(v) if v.get_ref().starts_with('/') => v.get_ref().clone(),
                Some(v) => {
                    ctx.err(
                        v.span(),
                        format!("{p}.path"),
                        format!("\"{}\" must start with '/'", v.get_ref()),
                    );
                    "/".to_string()
                }
            };
            let method = match &h.method {
                None => "GET".to_string(),
                Some(v) => {
                    let m = v.get_ref().to_ascii_uppercase();
                    if !["GET", "HEAD", "OPTIONS"].contains(&m.as_str()) {
                        ctx.err(
                            v.span(),
                            format!("{p}.method"),
                            format!("method \"{}\" not allowed for probes; expected one of GET, HEAD, OPTIONS", v.get_ref()),
                        );
                    }
                    m
                }
            };
            let expect_status = match &h.expect_status {
                None => (200, 399),
                Some(v) => parse_status_range(v.get_ref()).unwrap_or_else(|| {
                    ctx.err(
                        v.span(),
                        format!("{p}.expect_status"),
                        format!("\"{}\" is not a status range; expected e.g. \"200\", \"200-399\" or \"2xx\"", v.get_ref()),
                    );
                    (200, 399)
                }),
            };
            if let Some(v) = &h.body_contains
                && method == "HEAD"
            {
                ctx.err(
                    v.span(),
                    format!("{p}.body_contains"),
                    "an answer to HEAD has no body, so this could never match; use method = \"GET\" or remove body_contains",
                );
            }
            HealthKind::Http(HttpProbe {
                method,
                path,
                host: h.host.as_ref().map(|v| v.get_ref().clone()),
                expect_status,
                body_contains: h.body_contains.as_ref().map(|v| v.get_ref().clone()),
            })
        }
        other => {
            let span = h.kind.as_ref().map(|k| k.span()).unwrap_or(raw.span());
            ctx.err(
                span,
                format!("{p}.kind"),
                format!("unknown kind \"{other}\"; expected one of http, tcp"),
            );
            HealthKind::Tcp
        }
    };
    let interval = ctx.duration(&h.interval, format!("{p}.interval"), Duration::from_secs(2));
    let timeout = ctx.duration(&h.timeout, format!("{p}.timeout"), Duration::from_secs(1));
    for (key, v, d) in [
        ("interval", &h.interval, interval),
        ("timeout", &h.timeout, timeout),
    ] {
        if let Some(v) = v
            && d < Duration::from_millis(10)
        {
            ctx.err(v.span(), format!("{p}.{key}"), "must be at least 10ms");
        }
    }
    let count = |v: &Option<S<i64>>, key: &str, default: u32, ctx: &mut Ctx<'_>| -> NonZeroU32 {
        v.as_ref()
            .and_then(|v| ctx.int_in(v, format!("{p}.{key}"), 1, 100))
            .and_then(|n| NonZeroU32::new(n as u32))
            .or(NonZeroU32::new(default))
            .unwrap_or(NonZeroU32::MIN)
    };
    let rise = count(&h.rise, "rise", 2, ctx);
    let fall = count(&h.fall, "fall", 3, ctx);
    HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
    }
}

pub(super) fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let (lo, hi) = if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().ok()?;
        // `657xx` must be refused, not wrapped round into range.
        let lo = c.checked_mul(100)?;
        (lo, lo.checked_add(99)?)
    } else if let Some((a, b)) = s.split_once('-') {
        (a.trim().parse().ok()?, b.trim().parse().ok()?)
    } else {
        let n = s.parse().ok()?;
        (n, n)
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

pub(super) fn outlier(raw: Option<&RawOutlier>, svc: &str, ctx: &mut Ctx<'_>) -> Outlier {
    let d = Outlier::default();
    let Some(o) = raw else { return d };
    let p = format!("{svc}.outlier");
    let consecutive_failures = match &o.consecutive_failures {
        None => d.consecutive_failures,
        Some(v) => ctx
            .int_in(v, format!("{p}.consecutive_failures"), 0, 1000)
            .map(|n| NonZeroU32::new(n as u32))
            .unwrap_or(d.consecutive_failures),
    };
    let consecutive_connect_failures = match &o.consecutive_connect_failures {
        None => d.consecutive_connect_failures,
        Some(v) => ctx
            .int_in(v, format!("{p}.consecutive_connect_failures"), 0, 1000)
            .map(|n| NonZeroU32::new(n as u32))
            .unwrap_or(d.consecutive_connect_failures),
    };
    let base_ejection = ctx.duration(
        &o.base_ejection,
        format!("{p}.base_ejection"),
        d.base_ejection,
    );
    let max_ejection = ctx.duration(
        &o.max_ejection,
        format!("{p}.max_ejection"),
        d.max_ejection.max(base_ejection),
    );
    if max_ejection < base_ejection
        && let Some(v) = &o.max_ejection
    {
        ctx.err(
            v.span(),
            format!("{p}.max_ejection"),
            "must be at least base_ejection",
        );
    }
    let max_ejection_percent = match &o.max_ejection_percent {
        None => d.max_ejection_percent,
        Some(v) => ctx
            .int_in(v, format!("{p}.max_ejection_percent"), 1, 100)
            .map_or(d.max_ejection_percent, |n| n as u8),
    };
    Outlier {
        consecutive_failures,
        consecutive_connect_failures,
        base_ejection,
        max_ejection,
        max_ejection_percent,
    }
}

pub(super) fn failover(raw: Option<&RawFailover>, svc: &str, ctx: &mut Ctx<'_>) -> Failover {
    let d = Failover::default();
    let Some(f) = raw else { return d };
    let p = format!("{svc}.failover");
    let when_all_down = ctx.named(
        f.when_all_down.as_ref(),
        format!("{p}.when_all_down"),
        "policy",
        d.when_all_down,
    );
    Failover {
        hold_down: ctx.duration(&f.hold_down, format!("{p}.hold_down"), d.hold_down),
        ramp: ctx.duration(&f.ramp, format!("{p}.ramp"), d.ramp),
        when_all_down,
        latency_tolerance: ctx.duration(
            &f.latency_tolerance,
            format!("{p}.latency_tolerance"),
            d.latency_tolerance,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status_range;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200"), Some((200, 200)));
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("2xx"), Some((200, 299)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("700"), None);
        // Not wrapped round into range (657 * 100 overflows u16).
        assert_eq!(parse_status_range("657xx"), None);
        assert_eq!(parse_status_range("6xx"), None);
        assert_eq!(parse_status_range("ok"), None);
    }
}
