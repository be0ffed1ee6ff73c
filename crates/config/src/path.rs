//! Request paths as routes and caches see them, and as the origin gets them: normalised once,
//! before routing, so that `/pub/../admin` cannot match the `/pub` service and then reach
//! `/admin` at the origin. The rule (RFC 3986 §6.2.2, as nginx applies it, but
//! for `%2F`, which nginx decodes and this keeps escaped, as Envoy does):
//!
//! 1. percent-encoded unreserved characters are decoded (`%41` is `A`, `%2e` is `.`); other
//!    escapes are kept, with upper-case hex (`%2f` stays an escaped slash, as `%2F`);
//! 2. runs of slashes become one (`//a///b` is `/a/b`), as nginx's `merge_slashes on`;
//! 3. dot segments are removed (`/a/./b/../c` is `/a/c`; nothing climbs above `/`).
//!
//! A path that an origin could read as another path than the one routed is refused
//! ([`BadPath`], answered 400): a `%` not followed by two hex digits (nginx refuses it too; kept
//! as it came, `%2%65` decoded to `%2e`, a new escape that matched no dot segment here and is
//! `.` to nginx and URL parsers at the origin), a backslash, escaped or not (a separator to
//! IIS, and not a URL character at all), a dot segment with `;` parameters (`..;` is `..` to
//! Tomcat, Jetty and Spring) or beside an escaped slash (`..%2F` is `../` to nginx, which
//! decodes it first), and an escaped NUL (nginx refuses it).
//!
//! The query is left as it is.

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("a '%' not followed by two hex digits")]
    BadEscape,
    #[error("a backslash")]
    Backslash,
    #[error("a dot segment with ';' parameters")]
    DotSegmentParameters,
    #[error("a dot segment beside an escaped slash")]
    DotSegmentEscapedSlash,
    #[error("an escaped NUL")]
    Nul,
}

/// The normalised form of `path`, or `None` when it is already normal (the common case: one
/// scan, no allocation).
pub fn normalize(path: &str) -> Result<Option<String>, BadPath> {
    if !needs_work(path.as_bytes()) {
        return Ok(None);
    }
    if path.contains('\\') {
        return Err(BadPath::Backslash);
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let absolute = decoded.starts_with('/');
    let trailing = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || decoded == "."
        || decoded == "..";
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s if matches!(s.split_once(';'), Some(("." | "..", _))) => {
                return Err(BadPath::DotSegmentParameters);
            }
            // `%2F` stays escaped here (as Envoy keeps it), but nginx and Python's servers
            // decode it before resolving dot segments: `/pub/..%2Fadmin` is `/admin` to them.
            s if s.contains("%2F")
                && s.split("%2F")
                    .any(|piece| matches!(piece.split(';').next(), Some("." | ".."))) =>
            {
                return Err(BadPath::DotSegmentEscapedSlash);
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    if absolute || out.is_empty() {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    Ok((s != path).then_some(s))
}

/// Whether the path has an escape, a backslash, a dot segment (with parameters too) or a
/// repeated slash.
fn needs_work(p: &[u8]) -> bool {
    let mut prev = b'/';
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' | b'\\' => return true,
            b'/' if prev == b'/' && i > 0 => return true,
            b'.' if prev == b'/' => {
                let ends = |b: Option<&u8>| matches!(b, None | Some(b'/' | b';'));
                let next = p.get(i + 1);
                if ends(next) || (next == Some(&b'.') && ends(p.get(i + 2))) {
                    return true;
                }
            }
            _ => {}
        }
        prev = b;
    }
    false
}

fn decode_unreserved(p: &str) -> Result<String, BadPath> {
    let b = p.as_bytes();
    // Bytes: a path may hold raw UTF-8 (httparse and `http::Uri` take it), copied as it came.
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadPath::BadEscape);
            };
            let c = h * 16 + l;
            match c {
                b'\\' => return Err(BadPath::Backslash),
                0 => return Err(BadPath::Nul),
                _ => {}
            }
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c);
            } else {
                out.push(b'%');
                out.push(b"0123456789ABCDEF"[usize::from(h)]);
                out.push(b"0123456789ABCDEF"[usize::from(l)]);
            }
            i += 3;
            continue;
        }
        // Each byte as it came: a raw UTF-8 sequence stays whole (its bytes are never `%`).
        // Pushed as a `char`, each of its bytes became a character of its own (`é` as `Ã©`).
        out.push(b[i]);
        i += 1;
    }
    // Valid: the input's bytes in order, and ASCII in place of each `%XX`.
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// [`normalize`] for `path[?query]`: the path normalised, the query kept as it is.
pub fn normalize_target(target: &str) -> Result<Option<String>, BadPath> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Ok(normalize(path)?.map(|n| match query {
        Some(q) => format!("{n}?{q}"),
        None => n,
    }))
}

/// Why a path written in the config cannot be compared with request paths, which are
/// normalised before anything matches them: `/admin%2f` or `/a//b` would never match, and a
/// deny rule written so would deny nothing. `None`: it is in normal form.
pub fn not_as_matched(path: &str) -> Option<String> {
    match normalize(path) {
        Ok(None) => None,
        Ok(Some(normal)) => Some(format!(
            "request paths are matched normalised, so \"{path}\" would not match as written: \
             write \"{normal}\""
        )),
        Err(why) => Some(format!(
            "\"{path}\" has {why}: requests with such a path are refused (400)"
        )),
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::{BadPath, normalize};

    #[test]
    fn the_documented_rule() {
        let cases = [
            ("/", None),
            ("/video/1.ts", None),
            ("/a.b/c..d/.e", None),
            ("/pub/../admin", Some("/admin")),
            ("/pub/%2e%2e/admin", Some("/admin")),
            // Raw UTF-8 stays as it came when something else is normalised.
            ("/caf\u{e9}/%41", Some("/caf\u{e9}/A")),
            ("/caf\u{e9}/x/../%7e", Some("/caf\u{e9}/~")),
            ("/pub/%2E%2E/%2e/admin", Some("/admin")),
            ("/%70ub/x", Some("/pub/x")),
            ("/a//b///c", Some("/a/b/c")),
            ("//a", Some("/a")),
            ("/a/./b/../c", Some("/a/c")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/a/..", Some("/")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/a%2fb", Some("/a%2Fb")),
            ("/a%2Fb", None),
            ("/caf%C3%A9", None),
            ("/x%41%7E", Some("/xA~")),
            ("/x;a=1/y", None),
            ("/x/a..;b/.c;d", None),
            ("/a/%3B/..", Some("/a/")),
            // An escaped `;` is not a parameter's: the segment is not a dot segment.
            ("/%2e%2e%3Bx", Some("/..%3Bx")),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path).unwrap().as_deref(), want, "{path}");
        }
        // Paths an origin could read as another: refused, and nothing decoded makes a new
        // escape (`%2` then `%65` was `%2e`).
        let refused = [
            ("/bad%zz", BadPath::BadEscape),
            ("/bad%4", BadPath::BadEscape),
            ("/bad%", BadPath::BadEscape),
            ("/pub/%2%65%2%65/admin", BadPath::BadEscape),
            ("/%%32%65", BadPath::BadEscape),
            ("/a%2%66b", BadPath::BadEscape),
            ("/a\\b", BadPath::Backslash),
            ("/pub/..\\admin", BadPath::Backslash),
            ("/pub/..;/admin", BadPath::DotSegmentParameters),
            ("/pub/.;x", BadPath::DotSegmentParameters),
            ("/pub/%2e%2e;x/admin", BadPath::DotSegmentParameters),
            ("/pub/..;", BadPath::DotSegmentParameters),
            ("/pub/..%2Fadmin", BadPath::DotSegmentEscapedSlash),
            ("/pub/a%2F..", BadPath::DotSegmentEscapedSlash),
            ("/pub/%2e%2e%2fadmin", BadPath::DotSegmentEscapedSlash),
            ("/pub/.%2Fx", BadPath::DotSegmentEscapedSlash),
            ("/pub/..;x%2Fadmin", BadPath::DotSegmentParameters),
            ("/pub/x%2F..;y", BadPath::DotSegmentEscapedSlash),
            ("/a%5Cb", BadPath::Backslash),
            ("/a%5cb", BadPath::Backslash),
            ("/a%00b", BadPath::Nul),
        ];
        for (path, why) in refused {
            assert_eq!(normalize(path), Err(why), "{path}");
        }
    }

    /// What normalising gives is normal: nothing in it decodes into a dot segment or another
    /// escape a second time (the stray `%` of `%2%65` broke this). Random paths over the
    /// characters that matter.
    #[test]
    fn a_normalised_path_is_normal() {
        const ALPHABET: &[u8] = b"/.%2eEfF6543a;\\";
        let mut rng = fastrand::Rng::with_seed(9111);
        for _ in 0..200_000 {
            let len = rng.usize(1..18);
            let mut p = String::from("/");
            p.extend((0..len).map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())])));
            if let Ok(Some(n)) = normalize(&p) {
                assert_eq!(normalize(&n), Ok(None), "{p} -> {n}");
            }
        }
    }
}
