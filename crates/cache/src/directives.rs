//! Cache-Control directives (RFC 9111 §5.2), from a request's Cache-Control (and Pragma) or from a
//! response's targeted field (RFC 9213 CDN-Cache-Control and StreamGate's own) or Cache-Control.
//!
//! Every number is delta-seconds: digits only, saturating at 2^31 (RFC 9111 §1.2.2), so no
//! value a client or an origin sends can overflow later arithmetic.

use http::header::{self, HeaderMap, HeaderName};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: "2147483648 (2^31)").
pub const DELTA_MAX: u64 = 1 << 31;

/// The RFC 9213 field every CDN reads.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Parses delta-seconds: one or more digits; values past 2^31 are 2^31. `None` if not digits.
pub fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        n = n * 10 + u64::from(b - b'0');
        if n >= DELTA_MAX {
            return Some(DELTA_MAX);
        }
    }
    Some(n)
}

/// Cache-Control directives a shared cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// Unqualified `no-cache`: every use needs revalidation.
    pub no_cache: bool,
    /// `no-cache="field, ..."`: the named fields are not stored (RFC 9111 §5.2.2.4).
    pub no_cache_fields: bool,
    /// Unqualified `private`: not stored by a shared cache.
    pub private: bool,
    /// `private="field, ..."`: the named fields are not stored (RFC 9111 §5.2.2.7).
    pub private_fields: bool,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request only.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
    /// The directives came from a targeted field (RFC 9213): Cache-Control and Expires do not
    /// count for this cache.
    pub targeted: bool,
}

/// One `name[=value]` member of a directive list; `value` without its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

/// The members of a comma-separated list, honouring quoted strings (`private="a, b"` is one
/// member). Empty members are skipped. Malformed input yields what can be read, never panics.
pub fn members(s: &str) -> impl Iterator<Item = Member<'_>> {
    let mut rest = s;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            // The member ends at the first comma outside a quoted string.
            let bytes = rest.as_bytes();
            let (mut i, mut quoted, mut escaped) = (0, false, false);
            while i < bytes.len() {
                let b = bytes[i];
                if quoted {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        quoted = false;
                    }
                } else if b == b'"' {
                    quoted = true;
                } else if b == b',' {
                    break;
                }
                i += 1;
            }
            let item = rest[..i].trim();
            rest = rest.get(i + 1..).unwrap_or("");
            if item.is_empty() {
                continue;
            }
            return Some(match item.split_once('=') {
                Some((n, v)) => {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .map_or(v, |v| v.strip_suffix('"').unwrap_or(v));
                    Member {
                        name: n.trim(),
                        value: Some(v),
                    }
                }
                None => Member {
                    name: item,
                    value: None,
                },
            });
        }
    })
}

impl Directives {
    /// A request's directives: every Cache-Control line, or `Pragma: no-cache` when there is
    /// none (RFC 9111 §5.4).
    pub fn of_request(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        // Most requests carry neither: one pass over their few fields instead of two lookups.
        if !headers
            .keys()
            .any(|k| k == header::CACHE_CONTROL || k == header::PRAGMA)
        {
            return d;
        }
        if !d.apply_all(headers, &header::CACHE_CONTROL)
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|s| members(s).any(|m| m.name.eq_ignore_ascii_case("no-cache")))
            })
        {
            d.no_cache = true;
        }
        d
    }

    /// A response's directives for this cache: the first of `targets` (in order) that carries
    /// a valid, non-empty value, else Cache-Control (RFC 9213 §2.1).
    pub fn of_response(headers: &HeaderMap, targets: &[HeaderName]) -> Directives {
        let mut d = Directives::default();
        match chosen_target(headers, targets) {
            Some(t) => {
                d.apply_all(headers, t);
                d.targeted = true;
            }
            None => {
                d.apply_all(headers, &header::CACHE_CONTROL);
            }
        }
        d
    }

    /// Applies every member of every `name` line; true if there was any member.
    ///
    /// Malformed lists fail closed, as a shared cache must: a line with bytes beyond ASCII is
    /// read with them replaced (skipping the line skipped its `private`), and a member whose
    /// name is not a token (`private no-store`, `no-store;private`) still counts for every
    /// `no-store`, `no-cache` or `private` word in it, as nginx and Varnish find them anywhere
    /// in the value. Read as one unknown directive, such a member let one user's answer be
    /// stored and served to the next.
    fn apply_all(&mut self, headers: &HeaderMap, name: &HeaderName) -> bool {
        let mut any = false;
        for v in headers.get_all(name) {
            let v = String::from_utf8_lossy(v.as_bytes());
            for m in members(&v) {
                any = true;
                // A well-formed name is applied; one that is not is only scanned for words.
                let name = if is_token(m.name) {
                    self.apply(m);
                    ""
                } else {
                    m.name
                };
                // A value with a space or a quote in it is either a quoted list of field names
                // (`private="set-cookie, x-user"`, whose words are never these three) or a
                // member run into the next (`no-cache="x" private`): scanned either way.
                let spaced = m
                    .value
                    .is_some_and(|v| v.contains(|c: char| c.is_whitespace() || c == '"'));
                if name.is_empty() && !spaced {
                    continue;
                }
                let text = [name, m.value.unwrap_or("")];
                let words = text
                    .iter()
                    .flat_map(|t| t.split(|c: char| c.is_whitespace() || c == ';' || c == '"'));
                for word in words.filter(|w| !w.is_empty()) {
                    if ["no-store", "no-cache", "private"]
                        .iter()
                        .any(|d| word.eq_ignore_ascii_case(d))
                    {
                        self.apply(Member {
                            name: word,
                            value: None,
                        });
                    }
                }
            }
        }
        any
    }

    fn apply(&mut self, m: Member<'_>) {
        let secs = || m.value.and_then(delta_seconds);
        let is = |n: &str| m.name.eq_ignore_ascii_case(n);
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            match m.value {
                Some(v) if !v.trim().is_empty() => self.no_cache_fields = true,
                _ => self.no_cache = true,
            }
        } else if is("private") {
            match m.value {
                Some(v) if !v.trim().is_empty() => self.private_fields = true,
                _ => self.private = true,
            }
        } else if is("public") {
            self.public = true;
        } else if is("max-age") {
            // An invalid max-age makes the response stale (RFC 9111 §4.2.1).
            self.max_age = Some(secs().unwrap_or(0));
        } else if is("s-maxage") {
            self.s_maxage = Some(secs().unwrap_or(0));
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate = secs();
        } else if is("stale-if-error") {
            self.stale_if_error = secs();
        } else if is("max-stale") {
            self.max_stale = Some(secs().unwrap_or(DELTA_MAX));
        } else if is("min-fresh") {
            self.min_fresh = secs();
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        }
    }
}

/// The first of `targets` with a valid, non-empty value: the field whose directives count.
fn chosen_target<'t>(headers: &HeaderMap, targets: &'t [HeaderName]) -> Option<&'t HeaderName> {
    targets.iter().find(|t| {
        headers.contains_key(*t)
            && valid_list(headers, t)
            && headers
                .get_all(*t)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| members(s).next().is_some()))
    })
}

/// An RFC 9110 §5.6.2 token: what a directive's name is.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A targeted field is a Structured Field dictionary (RFC 9213 §2.1, RFC 8941 §3.2): keys are
/// lower-case tokens. A field that does not parse so is ignored, as if absent.
fn valid_list(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(name).iter().all(|v| {
        v.to_str().is_ok_and(|s| {
            members(s).all(|m| {
                let key = m.name.split(';').next().unwrap_or("").trim();
                !key.is_empty()
                    && key
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
                    && key.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'_' | b'-' | b'.' | b'*')
                    })
            })
        })
    })
}

/// The field names a qualified `no-cache="..."` or `private="..."` in `headers` (targeted field
/// or Cache-Control, as chosen by [`Directives::of_response`]) keeps out of the stored copy.
pub fn unstored_fields(
    headers: &HeaderMap,
    d: &Directives,
    targets: &[HeaderName],
) -> Vec<HeaderName> {
    if !d.no_cache_fields && !d.private_fields {
        return Vec::new();
    }
    let source = if d.targeted {
        chosen_target(headers, targets).unwrap_or(&header::CACHE_CONTROL)
    } else {
        &header::CACHE_CONTROL
    };
    let mut out = Vec::new();
    for v in headers.get_all(source) {
        let Ok(v) = v.to_str() else { continue };
        for m in members(v) {
            let qualified =
                m.name.eq_ignore_ascii_case("no-cache") || m.name.eq_ignore_ascii_case("private");
            let Some(list) = m.value.filter(|_| qualified) else {
                continue;
            };
            for f in list.split(',') {
                if let Ok(n) = HeaderName::from_bytes(f.trim().as_bytes())
                    && !out.contains(&n)
                {
                    out.push(n);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn delta_seconds_saturate_at_two_to_the_31() {
        let cases = [
            ("0", Some(0)),
            ("60", Some(60)),
            ("2147483647", Some(2_147_483_647)),
            ("2147483648", Some(DELTA_MAX)),
            ("18446744073709551615", Some(DELTA_MAX)),
            ("99999999999999999999999999999", Some(DELTA_MAX)),
            ("", None),
            ("-1", None),
            ("1.5", None),
            ("+5", None),
            (" 5", None),
        ];
        for (s, want) in cases {
            assert_eq!(delta_seconds(s), want, "{s:?}");
        }
    }

    #[test]
    fn lists_honour_quoted_strings() {
        let got: Vec<_> = members(r#"private="set-cookie, x-user", max-age=60,,  no-cache"#)
            .map(|m| (m.name, m.value))
            .collect();
        assert_eq!(
            got,
            [
                ("private", Some("set-cookie, x-user")),
                ("max-age", Some("60")),
                ("no-cache", None)
            ]
        );
        // An unterminated quote swallows the rest; an escaped quote does not end it.
        let got: Vec<_> = members(r#"a="x\", y", b="open, c"#)
            .map(|m| m.name)
            .collect();
        assert_eq!(got, ["a", "b"]);
    }

    #[test]
    fn request_directives() {
        let d = Directives::of_request(&headers(&[(
            "cache-control",
            "min-fresh=18446744073709551615, max-stale, MAX-AGE=5",
        )]));
        assert_eq!(d.min_fresh, Some(DELTA_MAX));
        assert_eq!(d.max_stale, Some(DELTA_MAX));
        assert_eq!(d.max_age, Some(5));
        assert!(Directives::of_request(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(
            !Directives::of_request(&headers(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-age=5")
            ]))
            .no_cache,
            "Pragma counts only without Cache-Control"
        );
    }

    #[test]
    fn malformed_lists_fail_closed() {
        let private = |d: Directives| d.private;
        let no_store = |d: Directives| d.no_store;
        let no_cache = |d: Directives| d.no_cache;
        type Case = (&'static [u8], fn(Directives) -> bool, bool);
        let cases: [Case; 11] = [
            (b"private no-store", private, true),
            (b"private no-store", no_store, true),
            (b"public, max-age=60 private", private, true),
            (b"no-store;max-age=5", no_store, true),
            (b"max-age=60, no-cache\xe9, private", private, true),
            (b"max-age=60\xff no-store", no_store, true),
            (b"max-age=60 NO-CACHE", no_cache, true),
            (b"no-cache=\"x-debug\" private, max-age=600", private, true),
            (b"private=x no-store", no_store, true),
            // Well formed: nothing invented.
            (
                b"private=\"set-cookie, x-user\", max-age=60",
                private,
                false,
            ),
            (b"max-age=60, x-private-thing", private, false),
        ];
        for (value, get, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_bytes(value).unwrap(),
            );
            let d = Directives::of_response(&h, &[]);
            assert_eq!(get(d), want, "{:?}: {d:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn targeted_fields_take_precedence_in_order() {
        let own = HeaderName::from_static("streamgate-cache-control");
        let targets = [own.clone(), CDN_CACHE_CONTROL.clone()];
        let d = Directives::of_response(
            &headers(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ]),
            &targets,
        );
        assert!(!d.no_store && d.targeted);
        assert_eq!(d.max_age, Some(60));
        let d = Directives::of_response(
            &headers(&[
                ("streamgate-cache-control", "max-age=5"),
                ("cdn-cache-control", "max-age=60"),
            ]),
            &targets,
        );
        assert_eq!(d.max_age, Some(5));
        // Invalid or empty targeted fields are ignored.
        for bad in ["", "Max-Age=60", "max-age=60, ;", "=5"] {
            let d = Directives::of_response(
                &headers(&[("cache-control", "max-age=7"), ("cdn-cache-control", bad)]),
                &targets,
            );
            assert_eq!((d.max_age, d.targeted), (Some(7), false), "{bad:?}");
        }
    }

    #[test]
    fn qualified_private_and_no_cache_name_fields() {
        let h = headers(&[(
            "cache-control",
            r#"max-age=60, private="Set-Cookie, x-user", no-cache="x-debug""#,
        )]);
        let d = Directives::of_response(&h, &[]);
        assert!(!d.private && d.private_fields && !d.no_cache && d.no_cache_fields);
        let names: Vec<_> = unstored_fields(&h, &d, &[])
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        assert_eq!(names, ["set-cookie", "x-user", "x-debug"]);
        // The fields named by the targeted field that counts, not by an empty one before it.
        let targets = [
            HeaderName::from_static("streamgate-cache-control"),
            CDN_CACHE_CONTROL.clone(),
        ];
        let h = headers(&[
            ("streamgate-cache-control", ""),
            ("cdn-cache-control", r#"max-age=60, private="x-user""#),
            ("cache-control", r#"private="x-other""#),
        ]);
        let d = Directives::of_response(&h, &targets);
        assert!(d.targeted && d.private_fields);
        assert_eq!(unstored_fields(&h, &d, &targets), ["x-user"]);
    }
}
