//! `[services.access]`: addresses and countries allowed or denied.

use ipnet::IpNet;

use super::Ctx;
use crate::model::Access;
use crate::raw::{RawAccess, S};

pub(super) fn access(raw: &S<RawAccess>, svc: &str, has_geo: bool, ctx: &mut Ctx<'_>) -> Access {
    let a = raw.get_ref();
    let p = format!("{svc}.access");
    let nets = |list: &[S<String>], key: &str, ctx: &mut Ctx<'_>| -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let s = t.get_ref().trim();
            match super::parse_net(s) {
                Some(n) => out.push(n),
                None => ctx.err(
                    t.span(),
                    format!("{p}.{key}[{i}]"),
                    format!("\"{s}\" is not an address or CIDR; expected e.g. \"203.0.113.0/24\""),
                ),
            }
        }
        out
    };
    let countries = |list: &[S<String>], key: &str, ctx: &mut Ctx<'_>| -> Vec<String> {
        let mut out = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let c = t.get_ref().trim().to_ascii_uppercase();
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                out.push(c);
            } else {
                ctx.err(
                    t.span(),
                    format!("{p}.{key}[{i}]"),
                    format!(
                        "\"{}\" is not a country code; expected ISO 3166-1 alpha-2, e.g. \"DE\"",
                        t.get_ref()
                    ),
                );
            }
        }
        if !list.is_empty() && !has_geo {
            ctx.err(
                list[0].span(),
                format!("{p}.{key}"),
                "countries come from the geo database: add [geo] database = \"…\"",
            );
        }
        out
    };
    Access {
        allow: nets(&a.allow, "allow", ctx),
        deny: nets(&a.deny, "deny", ctx),
        allow_countries: countries(&a.allow_countries, "allow_countries", ctx),
        deny_countries: countries(&a.deny_countries, "deny_countries", ctx),
    }
}
