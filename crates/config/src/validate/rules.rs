//! `[[services.rules]]`: rules and their actions checked and compiled (templates) once per
//! config, every error reported with its line; their conditions are in validate/rule_match.rs.

use std::ops::Range;

use super::Ctx;
use super::rule_match::{header_name, matcher, scheme};
use crate::raw::{RawHeaderEdits, RawRedirect, RawRespond, RawRewrite, RawRule, S};
use crate::rules::{HeaderEdits, Redirect, Respond, Rewrite, Rule, Rules, Template, Var};

pub(super) fn rules(
    raw: &S<Vec<S<RawRule>>>,
    svc: &str,
    has_geo: bool,
    regions: &[String],
    ctx: &mut Ctx<'_>,
) -> Rules {
    let mut list = Vec::new();
    for (i, r) in raw.get_ref().iter().enumerate() {
        let p = format!("{svc}.rules[{i}]");
        if let Some(rule) = rule(r, i, &p, has_geo, regions, ctx) {
            list.push(rule);
        }
    }
    let needs_country = list.iter().any(|r| {
        !r.when.countries.is_empty() || templates(r).any(|t| t.vars().any(|v| v == Var::Country))
    });
    let needs_region = list.iter().any(|r| !r.when.regions.is_empty());
    Rules {
        list,
        needs_country,
        needs_region,
    }
}

fn templates(r: &Rule) -> impl Iterator<Item = &Template> {
    let edits = |e: &HeaderEdits| e.set.len() + e.add.len();
    let mut all: Vec<&Template> =
        Vec::with_capacity(edits(&r.request_headers) + edits(&r.response_headers) + 4);
    for e in [&r.request_headers, &r.response_headers] {
        all.extend(e.set.iter().chain(e.add.iter()).map(|(_, t)| t));
    }
    all.extend(r.respond.as_ref().map(|x| &x.body));
    if let Some(rd) = &r.redirect {
        all.extend(rd.host.iter().chain(rd.path.iter()));
    }
    all.extend(r.rewrite.as_ref().and_then(|x| x.path.as_ref()));
    all.into_iter()
}

fn rule(
    raw: &S<RawRule>,
    i: usize,
    p: &str,
    has_geo: bool,
    regions: &[String],
    ctx: &mut Ctx<'_>,
) -> Option<Rule> {
    let span = raw.span();
    let r = raw.get_ref();
    let errors_before = ctx.errors.len();
    let name = r
        .name
        .as_ref()
        .map_or_else(|| format!("rule {}", i + 1), |n| n.get_ref().clone());
    let when = r
        .when
        .as_ref()
        .map(|m| matcher(m, &format!("{p}.match"), has_geo, regions, ctx))
        .unwrap_or_default();
    let captures = when
        .path_regex
        .as_ref()
        .map_or(0, |re| re.0.captures_len() - 1);
    let tpl = |t: &S<String>, key: &str, after_routing: bool, ctx: &mut Ctx<'_>| {
        template(t, &format!("{p}.{key}"), captures, after_routing, ctx)
    };
    let respond = r.respond.as_ref().map(|x| respond(x, p, &tpl, ctx));
    let redirect = r.redirect.as_ref().map(|x| redirect(x, p, &tpl, ctx));
    let rewrite = r.rewrite.as_ref().map(|x| rewrite(x, p, &tpl, ctx));
    let request_headers = r
        .request_headers
        .as_ref()
        .map_or_else(HeaderEdits::default, |e| {
            edits(e, &format!("{p}.request_headers"), captures, false, ctx)
        });
    let response_headers = r
        .response_headers
        .as_ref()
        .map_or_else(HeaderEdits::default, |e| {
            edits(e, &format!("{p}.response_headers"), captures, true, ctx)
        });
    let rule = Rule {
        name,
        when,
        deny: r.deny.unwrap_or(false),
        respond,
        redirect,
        rewrite,
        request_headers,
        response_headers,
        last: r.last.unwrap_or(false),
    };
    let terminal = [rule.deny, rule.respond.is_some(), rule.redirect.is_some()];
    if terminal.iter().filter(|&&t| t).count() > 1 {
        ctx.err(
            span.clone(),
            p,
            "a rule answers in one way: give only one of deny, respond and redirect",
        );
    }
    // From the file: an action whose every entry was refused is reported already.
    let does_something = r.deny == Some(true)
        || r.respond.is_some()
        || r.redirect.is_some()
        || r.rewrite.is_some()
        || r.request_headers.is_some()
        || r.response_headers.is_some();
    if !does_something {
        ctx.err(
            span,
            p,
            "the rule has no action: add deny, respond, redirect, rewrite, request_headers or \
             response_headers",
        );
    }
    (ctx.errors.len() == errors_before).then_some(rule)
}

type Tpl<'f> = dyn Fn(&S<String>, &str, bool, &mut Ctx<'_>) -> Option<Template> + 'f;

/// Text that may stand in a URI as is: visible ASCII without the characters RFC 3986 leaves
/// out (a rewrite that produced them would make a request line the origin cannot parse).
fn uri_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b))
}

fn template(
    t: &S<String>,
    key: &str,
    captures: usize,
    after_routing: bool,
    ctx: &mut Ctx<'_>,
) -> Option<Template> {
    let parsed = match Template::parse(t.get_ref()) {
        Ok(x) => x,
        Err(e) => {
            ctx.err(t.span(), key, e);
            return None;
        }
    };
    if parsed.max_capture() > captures {
        ctx.err(
            t.span(),
            key,
            format!(
                "${} reads a capture group, but match.path_regex has {captures}",
                parsed.max_capture()
            ),
        );
        return None;
    }
    if !after_routing && let Some(v) = parsed.vars().find(|v| !v.before_routing()) {
        ctx.err(
            t.span(),
            key,
            format!(
                "${} is known only once a backend answers: use it in response_headers",
                v.name()
            ),
        );
        return None;
    }
    Some(parsed)
}

fn status(
    s: Option<&S<i64>>,
    key: &str,
    default: u16,
    allowed: Range<i64>,
    ctx: &mut Ctx<'_>,
) -> u16 {
    match s {
        None => default,
        Some(v) if allowed.contains(v.get_ref()) => *v.get_ref() as u16,
        Some(v) => {
            ctx.err(
                v.span(),
                key,
                format!(
                    "status {} is not in {}..{}",
                    v.get_ref(),
                    allowed.start,
                    allowed.end - 1
                ),
            );
            default
        }
    }
}

fn respond(raw: &S<RawRespond>, p: &str, tpl: &Tpl<'_>, ctx: &mut Ctx<'_>) -> Respond {
    let r = raw.get_ref();
    let body = r
        .body
        .as_ref()
        .and_then(|b| tpl(b, "respond.body", false, ctx))
        .unwrap_or_default();
    let plain = r.content_type.as_ref().is_none_or(|c| {
        c.get_ref()
            .trim()
            .to_ascii_lowercase()
            .starts_with("text/plain")
    });
    // What the client wrote, reflected into HTML or script, is cross-site scripting.
    let reflects = body.max_capture() > 0
        || body
            .vars()
            .any(|v| matches!(v, Var::Host | Var::Path | Var::Query | Var::RequestUri));
    if reflects && !plain {
        ctx.err(
            r.body.as_ref().map_or(raw.span(), |b| b.span()),
            format!("{p}.respond.body"),
            "$host, $path, $query, $request_uri and captures come from the client: use them \
             only in a text/plain body",
        );
    }
    Respond {
        status: status(
            r.status.as_ref(),
            &format!("{p}.respond.status"),
            200,
            200..600,
            ctx,
        ),
        body,
        content_type: r.content_type.as_ref().map_or_else(
            || "text/plain; charset=utf-8".to_string(),
            |c| c.get_ref().clone(),
        ),
    }
}

fn redirect(raw: &S<RawRedirect>, p: &str, tpl: &Tpl<'_>, ctx: &mut Ctx<'_>) -> Redirect {
    let r = raw.get_ref();
    let st = status(
        r.status.as_ref(),
        &format!("{p}.redirect.status"),
        301,
        300..400,
        ctx,
    );
    if ![301, 302, 303, 307, 308].contains(&st) {
        ctx.err(
            r.status.as_ref().map_or(raw.span(), |s| s.span()),
            format!("{p}.redirect.status"),
            "a redirect is 301, 302, 303, 307 or 308 (307 and 308 keep the method and body)",
        );
    }
    let port = r
        .port
        .as_ref()
        .and_then(|v| match u16::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                ctx.err(v.span(), format!("{p}.redirect.port"), "a port is 1..65535");
                None
            }
        });
    let path = r.path.as_ref().and_then(|x| {
        if !x.get_ref().starts_with('/') && !x.get_ref().starts_with('$') {
            ctx.err(
                x.span(),
                format!("{p}.redirect.path"),
                "a path starts with \"/\"",
            );
        } else if !uri_text(x.get_ref()) {
            ctx.err(
                x.span(),
                format!("{p}.redirect.path"),
                "spaces, quotes, <>\\^`{|} and # cannot stand in a path: percent-encode them",
            );
        }
        tpl(x, "redirect.path", false, ctx)
    });
    let out = Redirect {
        status: st,
        scheme: r
            .scheme
            .as_ref()
            .and_then(|s| scheme(s, &format!("{p}.redirect.scheme"), ctx)),
        host: r
            .host
            .as_ref()
            .and_then(|h| tpl(h, "redirect.host", false, ctx)),
        port,
        path,
        keep_query: r.keep_query.unwrap_or(true),
    };
    if out.scheme.is_none() && out.host.is_none() && out.port.is_none() && out.path.is_none() {
        ctx.err(
            raw.span(),
            format!("{p}.redirect"),
            "the redirect changes nothing and would loop: give scheme, host, port or path",
        );
    }
    out
}

fn rewrite(raw: &S<RawRewrite>, p: &str, tpl: &Tpl<'_>, ctx: &mut Ctx<'_>) -> Rewrite {
    let r = raw.get_ref();
    let prefix = |v: &Option<S<String>>, key: &str, ctx: &mut Ctx<'_>| {
        v.as_ref().and_then(|x| {
            if x.get_ref().starts_with('/') && uri_text(x.get_ref()) {
                let why = match key {
                    "strip_prefix" => crate::path::not_as_matched(x.get_ref()),
                    _ => crate::path::normalize(x.get_ref()).err().map(|why| {
                        format!(
                            "\"{}\" has {why}: every rewritten request would be refused (400)",
                            x.get_ref()
                        )
                    }),
                };
                if let Some(why) = why {
                    ctx.err(x.span(), format!("{p}.rewrite.{key}"), why);
                    return None;
                }
                Some(x.get_ref().clone())
            } else {
                ctx.err(
                    x.span(),
                    format!("{p}.rewrite.{key}"),
                    "a prefix starts with \"/\" and has no spaces, quotes, <>\\^`{|} or #",
                );
                None
            }
        })
    };
    let out = Rewrite {
        strip_prefix: prefix(&r.strip_prefix, "strip_prefix", ctx),
        add_prefix: prefix(&r.add_prefix, "add_prefix", ctx),
        path: r.path.as_ref().and_then(|x| {
            if !x.get_ref().starts_with('/') || !uri_text(x.get_ref()) {
                ctx.err(
                    x.span(),
                    format!("{p}.rewrite.path"),
                    "a path starts with \"/\" and has no spaces, quotes, <>\\^`{|} or #",
                );
            }
            tpl(x, "rewrite.path", false, ctx)
        }),
    };
    if out.path.is_some() && (out.strip_prefix.is_some() || out.add_prefix.is_some()) {
        ctx.err(
            raw.span(),
            format!("{p}.rewrite"),
            "path replaces the whole path: give either path or strip_prefix/add_prefix",
        );
    } else if r.path.is_none() && r.strip_prefix.is_none() && r.add_prefix.is_none() {
        ctx.err(
            raw.span(),
            format!("{p}.rewrite"),
            "give path, strip_prefix or add_prefix",
        );
    }
    out
}

fn edits(
    raw: &S<RawHeaderEdits>,
    p: &str,
    captures: usize,
    after_routing: bool,
    ctx: &mut Ctx<'_>,
) -> HeaderEdits {
    let e = raw.get_ref();
    let mut out = HeaderEdits::default();
    for (i, name) in e.remove.iter().enumerate() {
        let key = format!("{p}.remove[{i}]");
        if let Some(n) = header_name(name.get_ref(), name.span(), &key, ctx) {
            if n == "host" {
                ctx.err(
                    name.span(),
                    key,
                    "every request has one Host: set it instead",
                );
                continue;
            }
            out.remove.push(n);
        }
    }
    for (key, table, slot) in [("set", &e.set, &mut out.set), ("add", &e.add, &mut out.add)] {
        let Some(table) = table else { continue };
        for (name, value) in table.get_ref() {
            let k = format!("{p}.{key}.{name}");
            let Some(n) = header_name(name, table.span(), &k, ctx) else {
                continue;
            };
            if key == "add" && n == "host" {
                ctx.err(
                    table.span(),
                    k,
                    "a second Host would make the request invalid: set it",
                );
                continue;
            }
            let Some(v) = value.as_str() else {
                ctx.err(table.span(), k, "a header value is a string");
                continue;
            };
            // What a field value may not hold (RFC 9110 §5.5): a control byte other than
            // HTAB. A value that cannot be sent would leave the field the rule meant to set
            // as the client sent it.
            if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                ctx.err(
                    table.span(),
                    k,
                    "a header value has no control characters (line breaks, NUL, DEL); \
                     write a tab as \\t",
                );
                continue;
            }
            let spanned = S::new(table.span(), v.to_string());
            if let Some(t) = template(&spanned, &k, captures, after_routing, ctx) {
                slot.push((n, t));
            }
        }
    }
    out
}
