//! `[services.limits]`: the largest request body and the request rates a service accepts.

use super::Ctx;
use crate::model::*;
use crate::raw::*;

pub(super) fn limits(raw: &S<RawLimits>, svc: &str, ctx: &mut Ctx<'_>) -> Limits {
    let l = raw.get_ref();
    let p = format!("{svc}.limits");
    let d = Limits::default();
    let max_body = match &l.max_body {
        None => d.max_body,
        Some(v) => match crate::units::parse_size(v.get_ref()) {
            Ok(n) => n,
            Err(e) => {
                ctx.err(v.span(), format!("{p}.max_body"), e);
                d.max_body
            }
        },
    };
    let rate = |per: &Option<S<i64>>, burst: &Option<S<i64>>, name: &str, ctx: &mut Ctx<'_>| {
        let per_second = per
            .as_ref()
            .and_then(|v| ctx.int_in(v, format!("{p}.{name}"), 1, 10_000_000))?
            as u32;
        let burst_name = if name == "rate" {
            "burst"
        } else {
            "client_burst"
        };
        let burst = burst
            .as_ref()
            .and_then(|v| ctx.int_in(v, format!("{p}.{burst_name}"), 1, 100_000_000))
            .map_or(per_second, |b| b as u32);
        Some(Rate { per_second, burst })
    };
    let service_rate = rate(&l.rate, &l.burst, "rate", ctx);
    let client_rate = rate(&l.client_rate, &l.client_burst, "client_rate", ctx);
    for (burst, without, name) in [
        (&l.burst, l.rate.is_none(), "burst"),
        (&l.client_burst, l.client_rate.is_none(), "client_burst"),
    ] {
        if let (Some(b), true) = (burst, without) {
            ctx.err(
                b.span(),
                format!("{p}.{name}"),
                format!(
                    "a burst needs its rate ({})",
                    name.trim_end_matches("burst").to_string() + "rate"
                ),
            );
        }
    }
    Limits {
        max_body,
        rate: service_rate,
        client_rate,
    }
}
