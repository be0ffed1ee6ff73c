//! `[services.compression]` on the data path: the client's Accept-Encoding reduced to the one
//! coding it will get ([`normalize_request`]), so a cache varies on at most one value per
//! coding; a backend's identity response then compressed with it ([`response`]).

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use streamgate_config::{Compression, Encoding};
use streamgate_policy::encoding::negotiate;

use super::headers::lists_token;
use crate::upstream::{Compressing, Encoder, EncoderMemory, NotStarted, UpstreamBody};

/// Replaces Accept-Encoding with the coding negotiated from it (none: the field is removed).
/// A range request gets the identity: a range of a compressed body is not what clients mean.
pub(crate) fn normalize_request(h: &mut HeaderMap, c: &Compression) {
    let chosen = if h.contains_key(header::RANGE) {
        None
    } else {
        negotiate(h, &c.encodings)
    };
    match chosen {
        Some(e) => {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(e.token()));
        }
        None => {
            h.remove(header::ACCEPT_ENCODING);
        }
    }
}

/// The coding a request normalised by [`normalize_request`] accepts.
pub(crate) fn accepted(h: &HeaderMap) -> Option<Encoding> {
    Encoding::from_token(h.get(header::ACCEPT_ENCODING)?.to_str().ok()?)
}

/// Whether a response is one to compress: a whole 200 of a listed type, not encoded already,
/// not marked no-transform, not declared shorter than `min_size`.
fn compressible(status: StatusCode, h: &HeaderMap, c: &Compression) -> bool {
    status == StatusCode::OK
        && !encoded(h)
        && !h.contains_key(header::CONTENT_RANGE)
        && !lists_token(h, &header::CACHE_CONTROL, "no-transform")
        && h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| c.compresses_type(t))
        && h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|n| n >= c.min_size)
}

/// Whether the fields name a content coding other than the identity.
pub(crate) fn encoded(h: &HeaderMap) -> bool {
    h.get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// `Vary: Accept-Encoding`, unless the field lists it (or `*`) already.
fn vary_on_encoding(h: &mut HeaderMap) {
    let listed =
        lists_token(h, &header::VARY, "accept-encoding") || lists_token(h, &header::VARY, "*");
    if !listed {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// Marks a response that would have been compressed for its client, had the encoders at work
/// not held the service's `max_memory` already. Counted as `limited_total{limit="compression"}`;
/// a cache does not store it, so that the coding's copy is made by a later request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uncompressed;

/// Compresses a backend's response for a client that accepts `accepted`. Every response that
/// could be compressed (or came encoded) varies on Accept-Encoding, so that a cache never gives
/// one client's coding to another.
pub(crate) fn response(
    resp: Response<UpstreamBody>,
    accepted: Option<Encoding>,
    c: &Compression,
    memory: &Arc<EncoderMemory>,
    client: std::net::IpAddr,
    head: bool,
) -> Response<UpstreamBody> {
    let (mut parts, body) = resp.into_parts();
    // The labels added below are this proxy's: a backend that names Vary or Content-Encoding
    // in Connection (for its own hop) must not have them stripped after they are added, which
    // would give a cache gzip bytes that vary on nothing, or a client gzip bytes unlabelled.
    super::headers::strip_hop_by_hop(&mut parts.headers);
    if encoded(&parts.headers) {
        vary_on_encoding(&mut parts.headers);
        return Response::from_parts(parts, body);
    }
    if !compressible(parts.status, &parts.headers, c) {
        return Response::from_parts(parts, body);
    }
    vary_on_encoding(&mut parts.headers);
    let Some(e) = accepted else {
        return Response::from_parts(parts, body);
    };
    let body = if head {
        body
    } else {
        match Encoder::new(e, c, memory, client) {
            Ok(enc) => UpstreamBody::Compressed(Box::new(Compressing::new(body, enc))),
            Err(NotStarted::Busy) => {
                // Sent as it came, and not stored: the next request for it is compressed.
                parts.extensions.insert(Uncompressed);
                return Response::from_parts(parts, body);
            }
            Err(NotStarted::Failed(err)) => {
                tracing::warn!(error = %err, encoding = e.token(), "cannot start an encoder; sending identity");
                return Response::from_parts(parts, body);
            }
        }
    };
    let h = &mut parts.headers;
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(e.token()),
    );
    h.remove(header::CONTENT_LENGTH);
    // Ranges are served from the identity (see `normalize_request`): a client that resumed a
    // compressed download with one would append identity bytes to gzip ones. nginx's gzip
    // clears Accept-Ranges too.
    h.remove(header::ACCEPT_RANGES);
    // Another representation: a strong validator of the identity body would be a lie
    // (RFC 9110 §8.8.1), as nginx's gzip also makes it weak.
    if let Some(tag) = h.get(header::ETAG)
        && tag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, v);
        }
    }
    Response::from_parts(parts, body)
}
