//! Answers built by the cache: from a stored object (a hit, a revalidated or stale copy) and,
//! for a response still arriving from the origin, the client's view of it (206 for its range,
//! 304 for its condition) while the whole is recorded.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use streamgate_cache::ask::{ClientAsk, Validators, View, retain_304, view};
use streamgate_cache::decide::CacheStatus;
use streamgate_cache::entry::ServedHead;
use streamgate_cache::key::url_key_into;
use streamgate_cache::{ServiceCache, Variant};
use streamgate_config::KeyQuery;
use streamgate_telemetry::{DataType, code_class_index};

use super::HttpProxy;
use super::body::{Completion, PendingLog, ProxyBody};
use super::headers::append_via;
use super::request::Outbound;
use crate::io::ActiveRequest;

/// One request's business with a service's cache: the cache, the request's key, and what the
/// client asked for beyond the representation (range, conditions).
#[derive(Debug)]
pub(crate) struct CacheRequest {
    pub cache: Arc<ServiceCache>,
    pub key: Key,
    pub ask: ClientAsk,
}

/// Longest key whose memory is kept for the next request.
const MAX_KEPT_KEY: usize = 4096;

thread_local! {
    static SPARE_KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A request's cache key, written into memory the previous key on this thread gave back when
/// it was dropped. A hit builds, uses and drops its key without waiting, so the next request
/// finds it: a key of its own was 1 of the 9 allocations of a cache hit
/// (benches/benches/allocs.rs).
#[derive(Debug)]
pub(crate) struct Key(String);

impl Key {
    pub(crate) fn url(scheme: &str, host: &str, path_and_query: &str, rule: &KeyQuery) -> Key {
        let mut key = SPARE_KEY
            .try_with(|k| std::mem::take(&mut *k.borrow_mut()))
            .unwrap_or_default();
        url_key_into(&mut key, scheme, host, path_and_query, rule);
        Key(key)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let key = std::mem::take(&mut self.0);
        if key.capacity() <= MAX_KEPT_KEY {
            // Thread teardown may have taken the slot already: the key is then freed.
            let _ = SPARE_KEY.try_with(|k| {
                let mut k = k.borrow_mut();
                if k.capacity() < key.capacity() {
                    *k = key;
                }
            });
        }
    }
}

/// `Age` values below this many seconds are slices of a static table: formatting one was 2 of
/// the 9 allocations of a cache hit (benches/benches/allocs.rs).
const STATIC_AGES: u64 = 1000;
/// "0" to "999" one after the other: 10 of one digit, 90 of two, 900 of three.
static AGE_DIGITS: [u8; 2890] = age_digits();

const fn age_digits() -> [u8; 2890] {
    let mut out = [0u8; 2890];
    let (mut n, mut i) = (0u64, 0);
    while n < STATIC_AGES {
        if n >= 100 {
            out[i] = b'0' + (n / 100) as u8;
            i += 1;
        }
        if n >= 10 {
            out[i] = b'0' + (n / 10 % 10) as u8;
            i += 1;
        }
        out[i] = b'0' + (n % 10) as u8;
        i += 1;
        n += 1;
    }
    out
}

/// An `Age` field value.
fn age_value(secs: u64) -> HeaderValue {
    let (start, len) = match secs {
        0..=9 => (secs, 1),
        10..=99 => (10 + (secs - 10) * 2, 2),
        100..STATIC_AGES => (190 + (secs - 100) * 3, 3),
        _ => return HeaderValue::from(secs),
    };
    let digits = &AGE_DIGITS[start as usize..(start + len) as usize];
    HeaderValue::from_maybe_shared(Bytes::from_static(digits))
        .unwrap_or_else(|_| HeaderValue::from(secs))
}

/// How one answer from a stored object is served.
#[derive(Debug)]
pub(crate) struct Served<'a> {
    pub status: CacheStatus,
    /// Counted as served from the edge (`None`: the origin's answer was counted already).
    pub data_type: Option<DataType>,
    /// Fields for this client only, added to the stored ones (a 304's Set-Cookie).
    pub personal: Option<&'a HeaderMap>,
    /// The object's current age.
    pub age: Duration,
}

impl HttpProxy {
    /// Answers from a stored object, counted as served by the edge. `spare`: a map whose memory
    /// the answer's fields may take (the request's own, once it is no longer read), or an
    /// empty one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn serve_stored(
        &self,
        c: &CacheRequest,
        v: &Variant,
        out: &Outbound<'_>,
        how: Served<'_>,
        active: ActiveRequest,
        log: &mut Option<Box<PendingLog>>,
        spare: HeaderMap,
    ) -> Response<ProxyBody> {
        set_log_cache(log, how.status);
        if how.data_type.is_some()
            && let Some(l) = log.as_mut()
        {
            l.record.region = Some(streamgate_cache::EDGE.into());
        }
        self.stored_response(&c.cache, v, out, &c.ask, how, active, spare)
    }

    /// Builds a response from a stored object: 304 for a matching condition, 206/416 for a
    /// range, headers only for HEAD.
    #[allow(clippy::too_many_arguments)]
    fn stored_response(
        &self,
        cache: &ServiceCache,
        v: &Variant,
        out: &Outbound<'_>,
        ask: &ClientAsk,
        how: Served<'_>,
        active: ActiveRequest,
        spare: HeaderMap,
    ) -> Response<ProxyBody> {
        let name = cache.status_header.as_ref();
        let head = v.served_head(|stored| prepare_head(v.status, stored, name));
        let mut headers = if head.status_header.as_ref() == name {
            copy_into(spare, &head.headers)
        } else {
            prepare_head(v.status, &v.headers, name).headers
        };
        replace_or_insert(&mut headers, &header::AGE, age_value(how.age.as_secs()));
        let mut code = v.status;
        let mut body = v.body.clone();
        let len = v.body.len() as u64;
        let c_view = view(ask, v.status, &v.validators(), Some(len));
        match c_view {
            View::Full => {}
            View::NotModified | View::PreconditionFailed => {
                code = headers_only(&mut headers, view_status(&c_view));
                body = Bytes::new();
            }
            View::Partial { start, end, len } => {
                code = StatusCode::PARTIAL_CONTENT;
                body = v.body.slice(start as usize..=end as usize);
                set_content_range(&mut headers, start, end, len);
            }
            View::Unsatisfiable { len } => {
                code = StatusCode::RANGE_NOT_SATISFIABLE;
                body = Bytes::new();
                set_unsatisfiable(&mut headers, len);
            }
        }
        if ask.method == http::Method::HEAD {
            body = Bytes::new();
        }
        if let Some(p) = how.personal {
            for (k, val) in p {
                headers.append(k.clone(), val.clone());
            }
        }
        let m = &cache.metrics;
        m.requests[code_class_index(code.as_u16())].inc();
        if let Some(d) = how.data_type {
            m.locality[d.index()].inc();
            m.locality_latency[d.index()].observe(out.started.elapsed().as_secs_f64());
        }
        let mut resp = Response::new(ProxyBody::stored(
            body,
            Completion::serving(active),
            m.served.clone(),
        ));
        if let Some(name) = name {
            replace_or_insert(
                &mut headers,
                name,
                HeaderValue::from_static(how.status.as_str()),
            );
        }
        *resp.status_mut() = code;
        *resp.headers_mut() = headers;
        *resp.version_mut() = out.client_version;
        resp
    }
}

/// Narrows a response still streaming from the origin to what the client asked for: its range
/// (206, sent as soon as those bytes arrive), 304 for a condition that holds, 416 past the
/// end. A range is applied only when the length is known (Content-Length); otherwise the
/// client gets the whole response, as RFC 9110 §14.2 allows.
pub(crate) fn narrow_to_ask(resp: &mut Response<ProxyBody>, ask: &ClientAsk) {
    if ask.is_plain() {
        return;
    }
    let len = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let validators = Validators::of(resp.headers());
    let v = view(ask, resp.status(), &validators, len);
    match v {
        View::Full => {}
        View::NotModified | View::PreconditionFailed => {
            let code = headers_only(resp.headers_mut(), view_status(&v));
            *resp.status_mut() = code;
            resp.body_mut().window(0, 0);
        }
        View::Partial { start, end, len } => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            set_content_range(resp.headers_mut(), start, end, len);
            resp.body_mut().window(start, end - start + 1);
        }
        View::Unsatisfiable { len } => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            set_unsatisfiable(resp.headers_mut(), len);
            resp.body_mut().window(0, 0);
        }
    }
}

/// The status of an answer without a body.
fn view_status(v: &View) -> StatusCode {
    match v {
        View::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        _ => StatusCode::NOT_MODIFIED,
    }
}

/// 304 and 412 carry the representation's cache-state fields and no body.
fn headers_only(headers: &mut HeaderMap, code: StatusCode) -> StatusCode {
    retain_304(headers);
    if code == StatusCode::PRECONDITION_FAILED {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    }
    code
}

fn set_content_range(headers: &mut HeaderMap, start: u64, end: u64, len: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
}

fn set_unsatisfiable(headers: &mut HeaderMap, len: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
}

/// `fields` in `spare`'s memory when it has as many slots (a request's map, from hyper's
/// parser, which reuses the map of the connection's previous answer, usually has): a clone was 2
/// of the 9 allocations of a cache hit (benches/benches/allocs.rs). Otherwise a clone. Either
/// way the answer has the free slots `prepare_head` left in `fields`.
fn copy_into(mut spare: HeaderMap, fields: &HeaderMap) -> HeaderMap {
    if spare.capacity() < fields.capacity() {
        return fields.clone();
    }
    spare.clear();
    for (k, v) in fields {
        spare.append(k.clone(), v.clone());
    }
    spare
}

/// Sets a field the prepared head has a placeholder for. `insert` would first make room for
/// one more name, which a full map does by rebuilding its index.
fn replace_or_insert(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match headers.get_mut(name) {
        Some(v) => *v = value,
        None => {
            headers.insert(name.clone(), value);
        }
    }
}

/// The head every answer from a stored object starts from: its stored headers, Via, and for an
/// identity 200 Accept-Ranges (ranges are served from it; a compressed copy offers none, see
/// `compress::response`), with placeholders for Age and the cache-status header that each
/// answer replaces.
fn prepare_head(
    status: StatusCode,
    stored: &HeaderMap,
    status_header: Option<&HeaderName>,
) -> ServedHead {
    let mut headers = stored.clone();
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    append_via(&mut headers, Version::HTTP_11);
    if status == StatusCode::OK
        && !super::compress::encoded(&headers)
        && !headers.contains_key(header::ACCEPT_RANGES)
    {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(name) = status_header {
        headers.insert(
            name.clone(),
            HeaderValue::from_static(CacheStatus::Hit.as_str()),
        );
    }
    // Kept for the object's lifetime. A clone keeps the index's free slots (not the fields'
    // spare capacity), and each answer (a clone, or a copy into a map with as many slots)
    // inherits them. hyper's HTTP/2 server looks Date and Content-Length up with `entry`, which
    // first makes room for one more name: an answer filled to its capacity (12 names, 6, 24)
    // had its index rebuilt on every hit. So the head keeps a slot for that lookup, one for
    // the Content-Range of a range (206, 416) and one for the Date hyper adds when the origin
    // sent none. (An answer that does gain a name still moves its fields once, as a clone's
    // field vector has no spare room; hits of a whole object from an origin that sends Date,
    // the common case, gain none.) An h2c hit of nginx's 9 fields (12 served) went from
    // 40 409 to 39 179 instructions and from 10 to 8 allocations (benches/benches/allocs.rs).
    // When the index had to double for the slots, it costs 4 bytes per slot it doubled to
    // (64 bytes for 12 names).
    headers.reserve(
        1 + usize::from(status == StatusCode::OK)
            + usize::from(!headers.contains_key(header::DATE)),
    );
    ServedHead {
        status_header: status_header.cloned(),
        headers: headers.clone(),
    }
}

pub(crate) fn set_log_cache(log: &mut Option<Box<PendingLog>>, status: CacheStatus) {
    if let Some(l) = log.as_mut() {
        l.record.cache = Some(status.as_str());
    }
}

/// Sets the cache-status header of an answer the cache did not build from a stored object.
pub(crate) fn with_status_header(
    mut resp: Response<ProxyBody>,
    cache: &ServiceCache,
    status: CacheStatus,
) -> Response<ProxyBody> {
    if let Some(name) = &cache.status_header {
        resp.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_from_the_table_are_the_formatted_ones() {
        for secs in 0..1100 {
            assert_eq!(age_value(secs), HeaderValue::from(secs), "{secs}");
        }
        assert_eq!(age_value(u64::MAX), HeaderValue::from(u64::MAX));
    }

    #[test]
    fn an_answer_from_a_prepared_head_is_never_regrown() {
        // What a hit's answer goes through: the prepared head copied (into the request's map
        // or cloned), a range's Content-Range, then hyper's HTTP/2 server, which looks Date
        // and Content-Length up with `entry` (each first makes room for one more name) and
        // adds Date when the origin sent none. None of it may regrow the map.
        let status = HeaderName::from_static("x-cache");
        for names in 1..=40 {
            for with_date in [true, false] {
                for range in [false, true] {
                    let mut stored = HeaderMap::new();
                    if with_date {
                        stored.insert(header::DATE, HeaderValue::from_static("Mon, 30 Nov 2026"));
                    }
                    stored.insert(header::CONTENT_LENGTH, HeaderValue::from(1024));
                    for i in stored.keys_len()..names {
                        stored.insert(
                            HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
                            HeaderValue::from_static("v"),
                        );
                    }
                    let head = prepare_head(StatusCode::OK, &stored, Some(&status)).headers;
                    // The request's map the answer may be copied into: none, or of each size
                    // hyper's and h2's parsers make.
                    for spare in [0, 6, 12, 24, 48] {
                        let mut answer = copy_into(HeaderMap::with_capacity(spare), &head);
                        let capacity = answer.capacity();
                        replace_or_insert(&mut answer, &header::AGE, age_value(5));
                        if range {
                            set_content_range(&mut answer, 0, 9, 1024);
                        }
                        answer
                            .entry(header::DATE)
                            .or_insert(HeaderValue::from_static("Mon, 30 Nov 2026"));
                        answer
                            .entry(header::CONTENT_LENGTH)
                            .or_insert(HeaderValue::from(10));
                        assert_eq!(
                            answer.capacity(),
                            capacity,
                            "{names} stored names, Date {with_date}, range {range}, spare {spare}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fields_copied_into_a_spare_map_are_the_clones() {
        let mut fields = HeaderMap::new();
        fields.append("set-cookie", HeaderValue::from_static("a=1"));
        fields.append("x-custom", HeaderValue::from_static("x"));
        fields.append("set-cookie", HeaderValue::from_static("b=2"));
        fields.insert(header::AGE, HeaderValue::from_static("0"));
        let mut spare = HeaderMap::with_capacity(16);
        spare.insert(header::HOST, HeaderValue::from_static("request.test"));
        let copied = copy_into(spare, &fields);
        let pairs = |m: &HeaderMap| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&copied), pairs(&fields));
        assert!(copied.capacity() > copied.keys_len());
        // A map with room for exactly these fields and no more: a clone, which keeps the
        // original's room.
        let mut roomy = HeaderMap::new();
        for name in ["a", "b", "c", "d", "e", "f"] {
            roomy.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        roomy.reserve(1);
        let full = HeaderMap::with_capacity(roomy.len());
        assert_eq!(
            full.capacity(),
            roomy.len(),
            "a map with room for exactly these values"
        );
        let copied = copy_into(full, &roomy);
        assert!(copied.capacity() > copied.keys_len());
        assert_eq!(copied.capacity(), roomy.capacity(), "the original's slots");
        // Too small a map: a clone.
        assert_eq!(pairs(&copy_into(HeaderMap::new(), &fields)), pairs(&fields));
    }
}
