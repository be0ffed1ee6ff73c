//! `[services.cache]`: sizes, key rules, purge peers, the status header, targeted cache control.

use std::time::Duration;

use super::Ctx;
use crate::model::*;
use crate::raw::*;

pub(super) fn cache(raw: &S<RawCache>, svc: &str, ctx: &mut Ctx<'_>) -> CacheSpec {
    let c = raw.get_ref();
    let p = format!("{svc}.cache");
    let size = |v: &S<SizeText>, key: &str, ctx: &mut Ctx<'_>| -> Option<u64> {
        match crate::units::parse_size(v.get_ref()) {
            Ok(0) => {
                ctx.err(v.span(), format!("{p}.{key}"), "must be more than zero");
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                ctx.err(v.span(), format!("{p}.{key}"), e);
                None
            }
        }
    };
    let max_size = ctx
        .required(&c.max_size, &raw.span(), format!("{p}.max_size"))
        .and_then(|v| size(v, "max_size", ctx))
        .unwrap_or(1 << 20);
    let max_object_size = match &c.max_object_size {
        None => (max_size / 8).clamp(1, 64 << 20),
        Some(v) => {
            let n = size(v, "max_object_size", ctx).unwrap_or(1);
            if n > max_size {
                ctx.err(
                    v.span(),
                    format!("{p}.max_object_size"),
                    "must not be larger than max_size",
                );
            }
            n
        }
    };
    let key_query = match &c.key_query {
        None => KeyQuery::All,
        Some(v) => match v.get_ref() {
            RawKeyQuery::Mode(m) if m == "all" => KeyQuery::All,
            RawKeyQuery::Mode(m) if m == "ignore" => KeyQuery::Ignore,
            RawKeyQuery::Params(list) => {
                let mut list = list.clone();
                list.sort();
                list.dedup();
                KeyQuery::Only(list)
            }
            RawKeyQuery::Mode(m) => {
                ctx.err(
                    v.span(),
                    format!("{p}.key_query"),
                    format!("\"{m}\" is not a key rule; expected \"all\", \"ignore\" or a list of parameter names"),
                );
                KeyQuery::All
            }
        },
    };
    let mut key_headers = Vec::new();
    for (i, h) in c.key_headers.iter().enumerate() {
        let name = h.get_ref().trim().to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            ctx.err(
                h.span(),
                format!("{p}.key_headers[{i}]"),
                format!("\"{}\" is not a header name", h.get_ref()),
            );
        } else {
            key_headers.push(name);
        }
    }
    let mut purge_from = Vec::new();
    for (i, t) in c.purge_from.iter().enumerate() {
        let s = t.get_ref().trim();
        match super::parse_net(s) {
            Some(n) => purge_from.push(n),
            None => ctx.err(
                t.span(),
                format!("{p}.purge_from[{i}]"),
                format!("\"{s}\" is not an address or CIDR; expected e.g. \"127.0.0.1/32\""),
            ),
        }
    }
    let status_header = match &c.status_header {
        None => "x-cache".to_string(),
        Some(v) => {
            let n = v.get_ref().trim().to_ascii_lowercase();
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                ctx.err(
                    v.span(),
                    format!("{p}.status_header"),
                    format!("\"{}\" is not a header name", v.get_ref()),
                );
            }
            n
        }
    };
    let max_variants = match &c.max_variants {
        None => 32,
        Some(v) => ctx
            .int_in(v, format!("{p}.max_variants"), 1, 1024)
            .unwrap_or(32) as usize,
    };
    let max_fill_bytes = match &c.max_fill_bytes {
        // Half the cache: recordings are transient, and a budget of a few objects would let a
        // few slow clients (who keep theirs open) turn every other miss uncacheable.
        None => (max_size / 2).max(max_object_size),
        Some(v) => size(v, "max_fill_bytes", ctx).unwrap_or(max_object_size),
    };
    let mut targeted_fields = Vec::new();
    let own = c
        .targeted_field
        .as_ref()
        .map_or("streamgate-cache-control".to_string(), |v| {
            v.get_ref().trim().to_ascii_lowercase()
        });
    if !own.is_empty() {
        if !own.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            if let Some(v) = &c.targeted_field {
                ctx.err(
                    v.span(),
                    format!("{p}.targeted_field"),
                    format!(
                        "\"{}\" is not a header name; expected e.g. \"StreamGate-Cache-Control\", or \"\" for none",
                        v.get_ref()
                    ),
                );
            }
        } else if own == "cache-control" {
            if let Some(v) = &c.targeted_field {
                ctx.err(
                    v.span(),
                    format!("{p}.targeted_field"),
                    "must not be Cache-Control: a targeted field overrides it",
                );
            }
        } else {
            targeted_fields.push(own);
        }
    }
    if c.cdn_cache_control.unwrap_or(true)
        && !targeted_fields.iter().any(|f| f == "cdn-cache-control")
    {
        targeted_fields.push("cdn-cache-control".to_string());
    }
    CacheSpec {
        max_size,
        max_object_size,
        default_ttl: ctx.duration(&c.default_ttl, format!("{p}.default_ttl"), Duration::ZERO),
        heuristic_freshness: c.heuristic_freshness.unwrap_or(true),
        key_query,
        key_headers,
        purge_from,
        status_header,
        lock_timeout: ctx.duration(
            &c.lock_timeout,
            format!("{p}.lock_timeout"),
            Duration::from_secs(5),
        ),
        max_variants,
        max_fill_bytes,
        targeted_fields,
    }
}
