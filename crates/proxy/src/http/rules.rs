//! `[[services.rules]]` on the data path: the request's facts handed to
//! [`streamgate_policy::evaluate`], and its outcome applied to the upstream head, to an answer
//! the rules give themselves, and to the response on its way out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use streamgate_balance::Service;
use streamgate_config::rules::{Scheme, Template};
use streamgate_policy::{Answer, Edit, Late, Outcome};
use tracing::debug;

use super::HttpProxy;
use super::body::{Completion, ProxyBody};
use super::request::ClientRequest;
use crate::io::ActiveRequest;

/// Put on a response by the origin path: who answered, for `$backend` and `$region`.
#[derive(Debug, Clone)]
pub(crate) struct ServedBy {
    pub backend: SocketAddr,
    pub region: Arc<str>,
}

impl HttpProxy {
    /// Evaluates the service's rules against the request as routed. `host` may carry a port;
    /// `path` is the normalised path.
    pub(crate) fn evaluate_rules(
        &self,
        service: &Service,
        req: &ClientRequest,
        client: IpAddr,
        forwarded_https: bool,
        host: &str,
        path: &str,
    ) -> Outcome {
        let rules = &service.spec.rules;
        if rules.is_empty() {
            return Outcome::default();
        }
        let geo = (rules.needs_country || rules.needs_region)
            .then(|| self.geo.load().as_ref()?.lookup(client))
            .flatten();
        let country = geo.and_then(|g| g.country);
        let region = rules
            .needs_region
            .then(|| {
                let facts = streamgate_balance::ClientFacts {
                    ip: Some(client),
                    geo,
                    ..Default::default()
                };
                let first = *service.region_order(&facts).as_slice().first()?;
                Some(&*service.regions[usize::from(first)].name)
            })
            .flatten();
        let (name, port) = streamgate_policy::split_port(host);
        let view = streamgate_policy::Request {
            scheme: if self.https || forwarded_https {
                Scheme::Https
            } else {
                Scheme::Http
            },
            method: req.method().as_str(),
            host: name,
            port,
            path,
            query: req.uri().query(),
            headers: req.headers(),
            client,
            country: country.as_ref().map(|c| c.as_str()),
            region,
            service: &service.name,
        };
        streamgate_policy::evaluate(rules, &view)
    }
}

/// Removes the client's fields that are `name` spelt with `_` for `-` (`X_Internal` for
/// `X-Internal`): backends that read fields CGI-style (`HTTP_X_INTERNAL`) take them for the
/// field a rule removed or set. nginx drops such fields by default
/// (`underscores_in_headers off`); Envoy can (`headers_with_underscores_action`).
fn remove_other_spellings(headers: &mut HeaderMap, name: &str) {
    if !name.contains('-') {
        return;
    }
    let same = |k: &HeaderName| {
        let k = k.as_str();
        k.len() == name.len()
            && k.contains('_')
            // The configured name itself may hold a `_`: that field is the one set.
            && !k.eq_ignore_ascii_case(name)
            && k.bytes()
                .zip(name.bytes())
                .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'_' && b == b'-'))
    };
    let others: Vec<HeaderName> = headers.keys().filter(|k| same(k)).cloned().collect();
    for k in others {
        headers.remove(k);
    }
}

/// Applies request-side edits to the head going upstream.
pub(crate) fn edit_request(headers: &mut HeaderMap, edits: &[Edit<String>]) {
    edit(headers, edits, true);
}

/// Applies `edits`; `spellings`: a field removed or set also goes in the client's `_`
/// spellings (requests only: an origin's answer is not read CGI-style).
fn edit(headers: &mut HeaderMap, edits: &[Edit<String>], spellings: bool) {
    for e in edits {
        match e {
            Edit::Remove(n) => {
                headers.remove(n.as_str());
                if spellings {
                    remove_other_spellings(headers, n);
                }
            }
            Edit::Set(n, v) | Edit::Add(n, v) => {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_str(v),
                ) else {
                    // Fails closed: a `set` whose value cannot be sent removes the field
                    // rather than leave it as the client (or the origin) sent it, so a
                    // forged `X-Auth-User` never passes for the rule's. Validation refuses
                    // control bytes in the templates, so only an expansion could get here.
                    debug!(header = %n, "a rule's header value is not a valid field value; the field is removed");
                    if matches!(e, Edit::Set(..)) {
                        headers.remove(n.as_str());
                        if spellings {
                            remove_other_spellings(headers, n);
                        }
                    }
                    continue;
                };
                if matches!(e, Edit::Set(..)) {
                    headers.insert(name, value);
                    if spellings {
                        remove_other_spellings(headers, n);
                    }
                } else {
                    headers.append(name, value);
                }
            }
        }
    }
}

/// Applies response-side edits; `$backend` and `$region` come from [`ServedBy`].
pub(crate) fn edit_response(resp: &mut Response<ProxyBody>, edits: &[Edit<Template>]) {
    let served = resp.extensions().get::<ServedBy>().cloned();
    let late = Late {
        backend: served.as_ref().map(|s| s.backend),
        region: served.as_ref().map(|s| &*s.region),
    };
    let finished: Vec<Edit<String>> = edits
        .iter()
        .map(|e| match e {
            Edit::Remove(n) => Edit::Remove(n.clone()),
            Edit::Set(n, t) => Edit::Set(n.clone(), streamgate_policy::finish(t, &late)),
            Edit::Add(n, t) => Edit::Add(n.clone(), streamgate_policy::finish(t, &late)),
        })
        .collect();
    edit(resp.headers_mut(), &finished, false);
}

/// The answer a rule gives itself: 403, a fixed response or a redirect.
pub(crate) fn answer(a: Answer, active: ActiveRequest) -> Response<ProxyBody> {
    let (status, body, content_type, location) = match a {
        Answer::Deny { .. } => (
            StatusCode::FORBIDDEN,
            Bytes::from_static(b"403 Forbidden\n"),
            "text/plain; charset=utf-8".to_string(),
            None,
        ),
        Answer::Respond {
            status,
            body,
            content_type,
        } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            Bytes::from(body),
            content_type,
            None,
        ),
        Answer::Redirect { status, location } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
            Bytes::new(),
            String::new(),
            Some(location),
        ),
    };
    let mut resp = Response::new(ProxyBody::full(body, Completion::serving(active)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(&content_type)
        && !content_type.is_empty()
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(l) = location {
        match HeaderValue::from_str(&l) {
            Ok(v) => {
                h.insert(header::LOCATION, v);
            }
            Err(_) => {
                // Built from a client's Host and path, which are valid field values; a rule's
                // template could still add something that is not.
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn head(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_edits_reach_the_underscore_spellings_and_keep_what_they_set() {
        let mut h = head(&[
            ("x-internal", "a"),
            ("x_internal", "b"),
            ("x_client", "forged"),
        ]);
        edit_request(
            &mut h,
            &[
                Edit::Remove("X-Internal".into()),
                Edit::Set("X-Client".into(), "127.0.0.1".into()),
                // A configured name may hold a `_` itself: the field it sets stays.
                Edit::Set("X-Api_Key".into(), "k".into()),
            ],
        );
        assert!(h.get("x-internal").is_none() && h.get("x_internal").is_none());
        assert!(h.get("x_client").is_none());
        assert_eq!(h.get("x-client").unwrap(), "127.0.0.1");
        assert_eq!(h.get("x-api_key").unwrap(), "k");
    }

    #[test]
    fn a_set_whose_value_cannot_be_sent_removes_the_field_it_meant_to_set() {
        let mut h = head(&[("x-auth-user", "forged"), ("x_auth_user", "forged")]);
        edit_request(
            &mut h,
            &[
                Edit::Set("X-Auth-User".into(), "a\u{1}b".into()),
                Edit::Add("X-Note".into(), "a\u{7f}".into()),
            ],
        );
        assert!(h.get("x-auth-user").is_none() && h.get("x_auth_user").is_none());
        assert!(h.get("x-note").is_none());
    }

    #[test]
    fn answer_edits_touch_the_exact_names_only() {
        let mut resp = Response::new(ProxyBody::empty());
        *resp.headers_mut() = head(&[("x-powered-by", "a"), ("x_powered_by", "b")]);
        edit_response(&mut resp, &[Edit::Remove("X-Powered-By".into())]);
        assert!(resp.headers().get("x-powered-by").is_none());
        assert_eq!(
            resp.headers().get("x_powered_by").unwrap(),
            "b",
            "an origin's own field"
        );
    }
}
