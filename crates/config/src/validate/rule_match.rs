//! `[[services.rules]]` conditions: the `match` table, and the scheme and header-name checks
//! that the actions (validate/rules.rs) share with it.

use std::ops::Range;

use super::Ctx;
use crate::host::HostPattern;
use crate::raw::{RawMatch, S};
use crate::rules::{Match, Pattern, Scheme};

/// Headers that frame the message or belong to one connection: a rule that set them would
/// desynchronise the connection or smuggle a second request.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

pub(super) fn matcher(
    raw: &S<RawMatch>,
    p: &str,
    has_geo: bool,
    regions: &[String],
    ctx: &mut Ctx<'_>,
) -> Match {
    let m = raw.get_ref();
    let mut out = Match {
        scheme: m
            .scheme
            .as_ref()
            .and_then(|s| scheme(s, &format!("{p}.scheme"), ctx)),
        ..Match::default()
    };
    for (i, h) in m.hosts.iter().enumerate() {
        match HostPattern::parse(h.get_ref()) {
            Ok(pat) => out.hosts.push(pat),
            Err(e) => ctx.err(h.span(), format!("{p}.hosts[{i}]"), e),
        }
    }
    for (key, value, slot) in [
        ("path", &m.path, &mut out.path),
        ("path_prefix", &m.path_prefix, &mut out.path_prefix),
    ] {
        if let Some(v) = value {
            if !v.get_ref().starts_with('/') {
                ctx.err(v.span(), format!("{p}.{key}"), "a path starts with \"/\"");
            } else if let Some(why) = crate::path::not_as_matched(v.get_ref()) {
                ctx.err(v.span(), format!("{p}.{key}"), why);
            } else {
                *slot = Some(v.get_ref().clone());
            }
        }
    }
    if let Some(re) = &m.path_regex {
        match regex::Regex::new(re.get_ref()) {
            Ok(r) => out.path_regex = Some(Pattern(r)),
            Err(e) => ctx.err(
                re.span(),
                format!("{p}.path_regex"),
                format!("not a regular expression: {e}"),
            ),
        }
    }
    for (i, meth) in m.methods.iter().enumerate() {
        let up = meth.get_ref().trim().to_ascii_uppercase();
        if !up.is_empty() && up.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
            out.methods.push(up);
        } else {
            ctx.err(
                meth.span(),
                format!("{p}.methods[{i}]"),
                format!("\"{}\" is not a method name, e.g. \"GET\"", meth.get_ref()),
            );
        }
    }
    if let Some(h) = &m.headers {
        for (name, value) in h.get_ref() {
            let key = format!("{p}.headers.{name}");
            let Some(lower) = header_name(name, h.span(), &key, ctx) else {
                continue;
            };
            match value.as_str() {
                Some("*") => out.headers.push((lower, None)),
                Some(v) => out.headers.push((lower, Some(v.to_string()))),
                None => ctx.err(
                    h.span(),
                    key,
                    "a header condition is a string: the exact value, or \"*\" for any",
                ),
            }
        }
    }
    for (i, c) in m.clients.iter().enumerate() {
        let s = c.get_ref().trim();
        match super::parse_net(s) {
            Some(n) => out.clients.push(n),
            None => ctx.err(
                c.span(),
                format!("{p}.clients[{i}]"),
                format!("\"{s}\" is not an address or CIDR; expected e.g. \"203.0.113.0/24\""),
            ),
        }
    }
    for (i, c) in m.countries.iter().enumerate() {
        let up = c.get_ref().trim().to_ascii_uppercase();
        if up.len() == 2 && up.bytes().all(|b| b.is_ascii_uppercase()) {
            out.countries.push(up);
        } else {
            ctx.err(
                c.span(),
                format!("{p}.countries[{i}]"),
                format!(
                    "\"{}\" is not a country code; expected ISO 3166-1 alpha-2, e.g. \"DE\"",
                    c.get_ref()
                ),
            );
        }
    }
    for (i, r) in m.regions.iter().enumerate() {
        if regions.iter().any(|x| x == r.get_ref()) {
            out.regions.push(r.get_ref().clone());
        } else {
            ctx.err(
                r.span(),
                format!("{p}.regions[{i}]"),
                format!(
                    "\"{}\" is not a region of this service; its regions: {}",
                    r.get_ref(),
                    regions.join(", ")
                ),
            );
        }
    }
    if !m.countries.is_empty() && !has_geo {
        ctx.err(
            m.countries[0].span(),
            format!("{p}.countries"),
            "countries come from the geo database: add [geo] database = \"…\"",
        );
    }
    out
}

pub(super) fn scheme(s: &S<String>, key: &str, ctx: &mut Ctx<'_>) -> Option<Scheme> {
    match s.get_ref().as_str() {
        "http" => Some(Scheme::Http),
        "https" => Some(Scheme::Https),
        other => {
            ctx.err(
                s.span(),
                key,
                format!("scheme \"{other}\": expected \"http\" or \"https\""),
            );
            None
        }
    }
}

/// A header name rules may touch, lower-cased.
pub(super) fn header_name(
    name: &str,
    span: Range<usize>,
    key: &str,
    ctx: &mut Ctx<'_>,
) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let token = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        ctx.err(span, key, format!("\"{name}\" is not a header name"));
        return None;
    }
    if FRAMING.contains(&lower.as_str()) {
        ctx.err(
            span,
            key,
            format!("{name} frames the message and is StreamGate's to set; rules cannot touch it"),
        );
        return None;
    }
    Some(lower)
}
