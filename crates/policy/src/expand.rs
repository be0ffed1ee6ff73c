//! `$variables` and `$1`..`$9` in rule templates, expanded against one request.

use std::fmt::Write as _;
use std::net::SocketAddr;

use streamgate_config::rules::{Piece, Template, Var};

use crate::Request;

/// What a template may read while the request is evaluated.
pub(crate) struct Vars<'r, 'a> {
    pub req: &'r Request<'a>,
    /// The path as the rule saw it (after earlier rewrites).
    pub path: &'r str,
    /// Capture groups of the rule's `path_regex` (index 0: the whole match).
    pub captures: &'r [String],
    /// Generated on first use: one id per request.
    pub request_id: &'r mut Option<String>,
}

/// Known once the response is on its way back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Late<'a> {
    pub backend: Option<SocketAddr>,
    pub region: Option<&'a str>,
}

/// 128 random bits as 32 hex digits, as nginx's `$request_id`.
fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn push_var(out: &mut String, v: Var, vars: &mut Vars<'_, '_>) {
    let req = vars.req;
    match v {
        Var::ClientIp => {
            let _ = write!(out, "{}", req.client.to_canonical());
        }
        Var::Country => out.push_str(req.country.unwrap_or("")),
        Var::Scheme => out.push_str(req.scheme.as_str()),
        Var::Method => out.push_str(req.method),
        Var::Host => out.push_str(req.host),
        Var::Path => out.push_str(vars.path),
        Var::Query => out.push_str(req.query.unwrap_or("")),
        Var::RequestUri => {
            out.push_str(req.path);
            if let Some(q) = req.query {
                out.push('?');
                out.push_str(q);
            }
        }
        Var::Service => out.push_str(req.service),
        Var::RequestId => out.push_str(vars.request_id.get_or_insert_with(new_request_id)),
        // Validation keeps these out of templates expanded before routing.
        Var::Backend | Var::Region => {}
    }
}

/// Expands every variable and capture.
pub(crate) fn expand(t: &Template, vars: &mut Vars<'_, '_>) -> String {
    let mut out = String::new();
    for p in &t.pieces {
        match p {
            Piece::Text(s) => out.push_str(s),
            Piece::Capture(n) => out.push_str(vars.captures.get(*n).map_or("", String::as_str)),
            Piece::Var(v) => push_var(&mut out, *v, vars),
        }
    }
    out
}

/// Expands what the request knows; `$backend` and `$region` stay for
/// [`finish`].
pub(crate) fn expand_early(t: &Template, vars: &mut Vars<'_, '_>) -> Template {
    let mut pieces = Vec::new();
    let mut text = String::new();
    for p in &t.pieces {
        match p {
            Piece::Var(v) if !v.before_routing() => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Var(*v));
            }
            Piece::Text(s) => text.push_str(s),
            Piece::Capture(n) => text.push_str(vars.captures.get(*n).map_or("", String::as_str)),
            Piece::Var(v) => push_var(&mut text, *v, vars),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Template { pieces }
}

/// The value of a response edit once the response's origin is known.
pub fn finish(t: &Template, late: &Late<'_>) -> String {
    let mut out = String::new();
    for p in &t.pieces {
        match p {
            Piece::Text(s) => out.push_str(s),
            Piece::Var(Var::Backend) => {
                if let Some(b) = late.backend {
                    let _ = write!(out, "{b}");
                }
            }
            Piece::Var(Var::Region) => out.push_str(late.region.unwrap_or("")),
            Piece::Var(_) | Piece::Capture(_) => {}
        }
    }
    out
}
