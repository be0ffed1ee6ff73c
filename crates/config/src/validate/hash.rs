//! `[services.hash]`: the key of the `consistent_hash` backend policy and its sticky cookie.

use super::Ctx;
use crate::model::*;
use crate::raw::*;

/// The hash policy of a service: `Some` exactly when `policy` is `consistent_hash` (its key
/// defaults to the client address). Every problem is reported, with `fallback` values standing
/// in so that checking goes on.
pub(super) fn hash(
    raw: Option<&S<RawHash>>,
    policy: BackendPolicy,
    kind: ServiceKind,
    svc: &str,
    ctx: &mut Ctx<'_>,
) -> Option<HashPolicy> {
    let p = format!("{svc}.hash");
    if policy != BackendPolicy::ConsistentHash {
        if let Some(t) = raw {
            ctx.err(
                t.span(),
                &p,
                format!(
                    "applies only to backend_policy = \"consistent_hash\"; this service uses \"{policy}\""
                ),
            );
        }
        return None;
    }
    let Some(t) = raw else {
        return Some(HashPolicy::default());
    };
    let t = t.get_ref();
    let key = match &t.key {
        None => HashKey::ClientIp,
        Some(v) => match parse_key(v.get_ref()) {
            Ok(key) => {
                if kind != ServiceKind::Http && key != HashKey::ClientIp {
                    ctx.err(
                        v.span(),
                        format!("{p}.key"),
                        format!(
                            "a {} service sees no requests, only connections: it can hash on \
                             \"client_ip\" only, not \"{}\"",
                            kind_name(kind),
                            v.get_ref()
                        ),
                    );
                }
                key
            }
            Err(why) => {
                ctx.err(v.span(), format!("{p}.key"), why);
                HashKey::ClientIp
            }
        },
    };
    let cookie = t.cookie.as_ref().and_then(|v| {
        if kind != ServiceKind::Http {
            ctx.err(
                v.span(),
                format!("{p}.cookie"),
                format!("a {} service has no cookies to set", kind_name(kind)),
            );
            return None;
        }
        if !is_token(v.get_ref()) {
            ctx.err(
                v.span(),
                format!("{p}.cookie"),
                format!(
                    "\"{}\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                    v.get_ref()
                ),
            );
            return None;
        }
        Some(StickyCookie {
            name: v.get_ref().clone(),
            ttl: None,
        })
    });
    let ttl = ctx.duration(&t.cookie_ttl, format!("{p}.cookie_ttl"), Default::default());
    if let Some(v) = &t.cookie_ttl {
        if t.cookie.is_none() {
            ctx.err(
                v.span(),
                format!("{p}.cookie_ttl"),
                "a cookie_ttl needs its cookie (the sticky cookie's name)",
            );
        } else if ttl.is_zero() {
            ctx.err(
                v.span(),
                format!("{p}.cookie_ttl"),
                "must be longer than zero; leave it out for a session cookie",
            );
        }
    }
    let cookie = cookie.map(|c| StickyCookie {
        ttl: (!ttl.is_zero()).then_some(ttl),
        ..c
    });
    Some(HashPolicy { key, cookie })
}

/// A key as written, or why it is not one.
pub(crate) fn parse_key(s: &str) -> Result<HashKey, String> {
    let key = HashKey::parse(s)
        .ok_or_else(|| format!("unknown key \"{s}\"; expected one of {}", HashKey::FORMS))?;
    match &key {
        HashKey::Header(name) if !is_token(name) => Err(format!(
            "\"{s}\": \"{name}\" is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
        )),
        HashKey::Cookie(name) if !is_token(name) => Err(format!(
            "\"{s}\": \"{name}\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        )),
        _ => Ok(key),
    }
}

fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Http => "http",
        ServiceKind::Tcp => "tcp",
        ServiceKind::TlsPassthrough => "tls_passthrough",
    }
}

/// RFC 9110 §5.6.2 token: what header names and (RFC 6265 §4.1.1) cookie names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let table: &[(&str, Result<HashKey, &str>)] = &[
            ("client_ip", Ok(HashKey::ClientIp)),
            ("uri", Ok(HashKey::Uri)),
            ("header:X-User", Ok(HashKey::Header("x-user".into()))),
            ("cookie:session", Ok(HashKey::Cookie("session".into()))),
            ("cookie:Session", Ok(HashKey::Cookie("Session".into()))),
            ("header:", Err("is not a header name")),
            ("header:a b", Err("is not a header name")),
            ("cookie:a=b", Err("is not a cookie name")),
            ("query:x", Err("unknown key")),
            ("ip", Err("unknown key")),
            ("", Err("unknown key")),
        ];
        for (text, want) in table {
            match (parse_key(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn keys_print_as_written() {
        for text in ["client_ip", "uri", "header:x-user", "cookie:Sid"] {
            assert_eq!(HashKey::parse(text).unwrap().to_string(), text);
        }
    }
}
