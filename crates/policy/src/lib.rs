//! streamgate-policy: a service's `[[services.rules]]` applied to one request.
//!
//! [`evaluate`] is a pure function of the compiled rules and the request's facts. It returns
//! what the proxy must do: answer itself (deny, a fixed response, a redirect), forward to a
//! rewritten path, and which request and response header edits to make. The proxy applies the
//! outcome; `/explain` shows it.
//!
//! A request that matches no rule costs no allocation: conditions compare borrowed strings,
//! header lookups use `HeaderMap::get(&str)`, and a regex is tried last, with `is_match` (the
//! `rules` criterion bench counts allocations to keep this so).

pub mod encoding;
mod expand;
pub use streamgate_config::path;

use std::net::IpAddr;

use http::HeaderMap;
use streamgate_config::rules::{HeaderEdits, Match, Piece, Rule, Rules, Scheme, Template};

pub use expand::{Late, finish};
use expand::{Vars, expand, expand_early};

/// What the rules see of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub scheme: Scheme,
    pub method: &'a str,
    /// Without the port.
    pub host: &'a str,
    /// The port the client named in Host, if any.
    pub port: Option<&'a str>,
    /// Normalised path, as routing saw it.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client: IpAddr,
    /// Looked up by the caller only when [`Rules::needs_country`].
    pub country: Option<&'a str>,
    /// The region the service's region policy ranks first for this client; asked by the caller
    /// only when [`Rules::needs_region`].
    pub region: Option<&'a str>,
    pub service: &'a str,
}

/// A header edit, in the order the rules gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<V> {
    Remove(String),
    Set(String, V),
    Add(String, V),
}

/// The rules answer the request themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 403, by the named rule.
    Deny {
        rule: String,
    },
    Respond {
        status: u16,
        body: String,
        content_type: String,
    },
    Redirect {
        status: u16,
        location: String,
    },
}

/// What evaluating the rules decided. `Default` (nothing matched) holds no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Indexes into `Rules::list` of the rules that matched, in order.
    pub matched: Vec<usize>,
    /// The path after rewrites, when a rule rewrote it.
    pub path: Option<String>,
    pub answer: Option<Answer>,
    /// Edits of the head sent to the backend, values expanded.
    pub request: Vec<Edit<String>>,
    /// Edits of the response; values may still read `$backend` and `$region`.
    pub response: Vec<Edit<Template>>,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        self.matched.is_empty()
    }
}

/// Applies `rules` to `req`. `request_id` is generated on first use and shared by every
/// template of the request.
pub fn evaluate(rules: &Rules, req: &Request<'_>) -> Outcome {
    let mut out = Outcome::default();
    let mut request_id = None;
    for (i, rule) in rules.list.iter().enumerate() {
        // A rewrite may give the path a query of its own; rules match the path.
        let path = out
            .path
            .as_deref()
            .map_or(req.path, |p| p.split('?').next().unwrap_or(p));
        if !matches(&rule.when, req, path) {
            continue;
        }
        out.matched.push(i);
        let captures = rule
            .when
            .path_regex
            .as_ref()
            .and_then(|re| re.0.captures(path))
            .map(|c| {
                (0..c.len())
                    .map(|g| c.get(g).map_or("", |m| m.as_str()).to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut vars = Vars {
            req,
            path,
            captures: &captures,
            request_id: &mut request_id,
        };
        if let Some(answer) = answer(rule, &mut vars) {
            edits(
                &rule.response_headers,
                &mut vars,
                &mut out.response,
                expand_early,
            );
            out.answer = Some(answer);
            return out;
        }
        let rewritten = rule.rewrite.as_ref().map(|rw| {
            if let Some(t) = &rw.path {
                return expand(t, &mut vars);
            }
            // Only whole segments: "/api" strips "/api/x" and "/api", not "/apix".
            let rest = rw
                .strip_prefix
                .as_deref()
                .and_then(|p| path.strip_prefix(p.trim_end_matches('/')))
                .filter(|r| r.is_empty() || r.starts_with('/'))
                .unwrap_or(path);
            let rest = if rest.is_empty() { "/" } else { rest };
            match rw.add_prefix.as_deref() {
                None => rest.to_string(),
                Some(p) => format!("{}{rest}", p.trim_end_matches('/')),
            }
        });
        edits(&rule.request_headers, &mut vars, &mut out.request, expand);
        edits(
            &rule.response_headers,
            &mut vars,
            &mut out.response,
            expand_early,
        );
        if let Some(p) = rewritten {
            // Captures can start mid-segment (`^/img-(.*)$` on `/img-../x`): the result is
            // normalised again, so no dot segment reaches later rules, the cache key or the
            // origin.
            let p = match normalize_rewrite(p) {
                Ok(p) => p,
                // A capture joined to the template's text can make what the client's path
                // could not: `/$1;v` with `..` captured.
                Err(why) => {
                    out.answer = Some(Answer::Respond {
                        status: 400,
                        body: format!("400 bad request: the rewritten path has {why}\n"),
                        content_type: "text/plain; charset=utf-8".into(),
                    });
                    return out;
                }
            };
            // ...and may not climb out of the directory the template wrote: `/images/$1`
            // stays under `/images/`. Routing chose this service for the client's path, not
            // for wherever its dot segments lead on the same backend.
            if let Some(dir) = rule
                .rewrite
                .as_ref()
                .and_then(|rw| rw.path.as_ref())
                .map(written_dir)
                && !p.starts_with(&*dir)
            {
                out.answer = Some(Answer::Respond {
                    status: 400,
                    body: format!("400 bad request: the path may not leave {dir}\n"),
                    content_type: "text/plain; charset=utf-8".into(),
                });
                return out;
            }
            out.path = Some(p);
        }
        if rule.last {
            break;
        }
    }
    out
}

/// `host[:port]` split; an IPv6 literal keeps its brackets.
pub fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    }
}

/// The directory a rewrite template writes its path under, normalised: its leading text up to
/// the last `/` before the first variable or capture (`/images/` of `/images/$1`; `/` when it
/// starts with a variable, or when its variables are all in the query).
fn written_dir(t: &Template) -> std::borrow::Cow<'_, str> {
    let literal = match t.pieces.as_slice() {
        [Piece::Text(text), _, ..] if !text.contains('?') => text.rfind('/').map(|i| &text[..=i]),
        _ => None,
    };
    match literal {
        // Normalised (an allocation) only when it needs it: most templates are written plain.
        // One it would refuse is kept as written: no path normalised would start with it.
        Some(dir) => path::normalize(dir)
            .ok()
            .flatten()
            .map_or(std::borrow::Cow::Borrowed(dir), Into::into),
        None => std::borrow::Cow::Borrowed("/"),
    }
}

/// `path[?query]` with its path normalised as the client's was before routing.
fn normalize_rewrite(p: String) -> Result<String, path::BadPath> {
    Ok(path::normalize_target(&p)?.unwrap_or(p))
}

/// Whether a request's `method` is the rule's `wanted`; a HEAD is a GET, as in nginx's
/// `limit_except`, since most frameworks answer it with the GET handler, side effects and all.
/// (Methods in lower case never get here: the proxy refuses them with 400, as nginx does,
/// since backends that upper-case methods would run `delete` as a DELETE no rule matched.)
fn method_matches(wanted: &str, method: &str) -> bool {
    wanted == method || (wanted == "GET" && method == "HEAD")
}

/// Whether every condition of `m` holds. Allocation-free; the regex goes last.
pub fn matches(m: &Match, req: &Request<'_>, path: &str) -> bool {
    m.scheme.is_none_or(|s| s == req.scheme)
        && (m.hosts.is_empty() || m.hosts.iter().any(|h| h.matches(req.host)))
        && m.path.as_deref().is_none_or(|p| p == path)
        && m.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        && (m.methods.is_empty() || m.methods.iter().any(|x| method_matches(x, req.method)))
        && m.headers.iter().all(|(name, want)| {
            let mut values = req.headers.get_all(name.as_str()).iter();
            match want {
                None => values.next().is_some(),
                Some(w) => values.any(|v| v.as_bytes() == w.as_bytes()),
            }
        })
        && m.client_matches(req.client)
        && (m.countries.is_empty()
            || req
                .country
                .is_some_and(|c| m.countries.iter().any(|x| x == c)))
        && (m.regions.is_empty() || req.region.is_some_and(|r| m.regions.iter().any(|x| x == r)))
        && m.path_regex.as_ref().is_none_or(|re| re.0.is_match(path))
}

fn answer(rule: &Rule, vars: &mut Vars<'_, '_>) -> Option<Answer> {
    if rule.deny {
        return Some(Answer::Deny {
            rule: rule.name.clone(),
        });
    }
    if let Some(r) = &rule.respond {
        return Some(Answer::Respond {
            status: r.status,
            body: expand(&r.body, vars),
            content_type: r.content_type.clone(),
        });
    }
    let r = rule.redirect.as_ref()?;
    let req = vars.req;
    let scheme = r.scheme.unwrap_or(req.scheme);
    let host = r
        .host
        .as_ref()
        .map_or_else(|| req.host.to_string(), |h| expand(h, vars));
    // A host made from captures could carry userinfo or a path (`new.test@evil.test`): only a
    // plain name or IP literal is sent.
    if !plain_host(&host) {
        return Some(Answer::Respond {
            status: 400,
            body: "400 Bad Request: the redirect target is not a valid host\n".into(),
            content_type: "text/plain; charset=utf-8".into(),
        });
    }
    let port = match (r.port, req.port) {
        (Some(p), _) => Some(p.to_string()),
        // A new scheme has its own default port.
        (None, Some(p)) if scheme == req.scheme => Some(p.to_string()),
        _ => None,
    };
    let mut path = r
        .path
        .as_ref()
        .map_or_else(|| vars.path.to_string(), |p| expand(p, vars));
    // `path = "$1"` of `^/old(.*)$` on `/old@evil.test` would otherwise make the host
    // `new.test@evil.test`: the path always starts the URL's path.
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let mut location = format!("{}://{host}", scheme.as_str());
    let default_port = match scheme {
        Scheme::Http => "80",
        Scheme::Https => "443",
    };
    if let Some(p) = port.filter(|p| p != default_port) {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&path);
    if r.keep_query
        && let Some(q) = req.query.filter(|q| !q.is_empty())
    {
        location.push(if path.contains('?') { '&' } else { '?' });
        location.push_str(q);
    }
    Some(Answer::Redirect {
        status: r.status,
        location,
    })
}

/// A DNS name or a bracketed IP literal: nothing that ends the authority or names a user.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        || (h.starts_with('[')
            && h.ends_with(']')
            && h[1..h.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')))
}

fn edits<V>(
    e: &HeaderEdits,
    vars: &mut Vars<'_, '_>,
    out: &mut Vec<Edit<V>>,
    value: fn(&Template, &mut Vars<'_, '_>) -> V,
) {
    out.extend(e.remove.iter().map(|n| Edit::Remove(n.clone())));
    for (n, t) in &e.set {
        let v = value(t, vars);
        out.push(Edit::Set(n.clone(), v));
    }
    for (n, t) in &e.add {
        let v = value(t, vars);
        out.push(Edit::Add(n.clone(), v));
    }
}

#[cfg(test)]
mod tests;
