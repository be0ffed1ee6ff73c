//! Whether a backend's `101 Switching Protocols` answers what the request asked for.
//!
//! A 101 hands the client's connection to whatever the backend speaks next, so it is taken only
//! as RFC 9110 §15.2.2 and §7.8 allow it: to a request that asked for an upgrade, naming (in its
//! own `Upgrade` field) only protocols the request offered. Anything else (a 101 to a plain GET,
//! a switch to a protocol nobody asked for) would turn an HTTP exchange into an unchecked byte
//! stream that no rule, route or limit sees: the backend's error, answered 502.
//!
//! For an HTTP/2 WebSocket (RFC 8441) StreamGate makes the HTTP/1.1 handshake itself, key and
//! all, so it also checks the backend's `Sec-WebSocket-Accept` (RFC 6455 §4.2.2), as the client
//! would have; an HTTP/1.1 client checks its own.

use http::header::{self, HeaderMap, HeaderValue};

/// RFC 6455 §1.3: appended to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a 101 cannot be passed on, if it cannot. `offered`: the request's `Upgrade` as sent to the
/// backend (None: it asked for no upgrade). `key`: the `Sec-WebSocket-Key` StreamGate made for an
/// HTTP/2 WebSocket, whose accept it checks.
pub(crate) fn refusal(
    offered: Option<&HeaderValue>,
    answered: &HeaderMap,
    key: Option<&HeaderValue>,
) -> Option<&'static str> {
    let Some(offered) = offered else {
        return Some("switched protocols on a request that asked for no upgrade");
    };
    let offered: Vec<&[u8]> = tokens(offered.as_bytes()).collect();
    // Every Upgrade line of the answer: a second one may name what the first did not.
    let mut chosen = answered
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .peekable();
    if chosen.peek().is_none() {
        return Some("switched protocols without naming one in Upgrade");
    }
    if !chosen.all(|c| offered.iter().any(|o| o.eq_ignore_ascii_case(c))) {
        return Some("switched to a protocol the request did not offer");
    }
    if let Some(key) = key {
        let ok = answered
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|a| a.as_bytes() == websocket_accept(key.as_bytes()).as_bytes());
        if !ok {
            return Some("answered the WebSocket handshake with a wrong Sec-WebSocket-Accept");
        }
    }
    None
}

/// The non-empty, trimmed entries of a comma-separated list.
fn tokens(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `Sec-WebSocket-Accept` for `key`: base64 of the SHA-1 of the key and the GUID (RFC 6455
/// §4.2.2). SHA-1 comes from aws-lc-rs, the crypto the project's TLS already builds.
fn websocket_accept(key: &[u8]) -> String {
    use aws_lc_rs::digest;
    use base64::Engine as _;
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_accept_of_rfc_6455s_example_key() {
        // RFC 6455 §1.3's worked example.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_101_is_passed_on_only_when_it_answers_the_request() {
        const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
        const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        // ((request's Upgrade, response's Upgrade, response's accept), key we made, passed on)
        type Row = (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let rows: &[(Row, Option<&str>, bool)] = &[
            ((Some("websocket"), Some("websocket"), None), None, true),
            ((Some("websocket"), Some("WebSocket"), None), None, true),
            (
                (Some("foo/2, websocket"), Some("websocket"), None),
                None,
                true,
            ),
            ((Some("websocket"), Some(" websocket ,"), None), None, true),
            // Asked for nothing: a plain GET answered 101.
            ((None, Some("websocket"), None), None, false),
            // Upgrade missing, empty, or naming something not offered.
            ((Some("websocket"), None, None), None, false),
            ((Some("websocket"), Some(" , "), None), None, false),
            ((Some("websocket"), Some("h2c"), None), None, false),
            (
                (Some("websocket"), Some("websocket|h2c"), None),
                None,
                false,
            ),
            (
                (Some("websocket, foo"), Some("websocket|foo"), None),
                None,
                true,
            ),
            (
                (Some("websocket"), Some("websocket, h2c"), None),
                None,
                false,
            ),
            ((Some("websockets"), Some("websocket"), None), None, false),
            // An HTTP/2 WebSocket's handshake: the accept must match the key StreamGate sent.
            (
                (Some("websocket"), Some("websocket"), Some(ACCEPT)),
                Some(KEY),
                true,
            ),
            (
                (Some("websocket"), Some("websocket"), None),
                Some(KEY),
                false,
            ),
            (
                (Some("websocket"), Some("websocket"), Some("AAAA")),
                Some(KEY),
                false,
            ),
        ];
        for &((offered, chosen, accept), key, passed) in rows {
            let mut answered = HeaderMap::new();
            // "a|b": two Upgrade lines.
            for c in chosen.into_iter().flat_map(|c| c.split('|')) {
                answered.append(header::UPGRADE, HeaderValue::from_str(c).unwrap());
            }
            if let Some(a) = accept {
                answered.insert(
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(a).unwrap(),
                );
            }
            let offered = offered.map(|o| HeaderValue::from_str(o).unwrap());
            let key = key.map(HeaderValue::from_static);
            let got = refusal(offered.as_ref(), &answered, key.as_ref());
            assert_eq!(
                got.is_none(),
                passed,
                "{offered:?} {chosen:?} {accept:?} {key:?}: {got:?}"
            );
        }
    }
}
