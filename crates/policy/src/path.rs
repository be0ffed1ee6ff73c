//! Request paths as routes and caches see them, and as the origin gets them: normalised once,
//! before routing, so that `/pub/../admin` cannot match the `/pub` service and then reach
//! `/admin` at the origin. The rule (RFC 3986 §6.2.2, as nginx applies it):
//!
//! 1. percent-encoded unreserved characters are decoded (`%41` is `A`, `%2e` is `.`); other
//!    escapes are kept, with upper-case hex (`%2f` stays an escaped slash, as `%2F`);
//! 2. runs of slashes become one (`//a///b` is `/a/b`), as nginx's `merge_slashes on`;
//! 3. dot segments are removed (`/a/./b/../c` is `/a/c`; nothing climbs above `/`).
//!
//! The query is left as it is.

/// The normalised form of `path`, or `None` when it is already normal (the common case: one
/// scan, no allocation).
pub fn normalize(path: &str) -> Option<String> {
    if !needs_work(path.as_bytes()) {
        return None;
    }
    let decoded = decode_unreserved(path);
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
    (s != path).then_some(s)
}

/// Whether the path has an escape, a dot segment or a repeated slash.
fn needs_work(p: &[u8]) -> bool {
    let mut prev = b'/';
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' => return true,
            b'/' if prev == b'/' && i > 0 => return true,
            b'.' if prev == b'/' => {
                let next = p.get(i + 1).copied();
                if matches!(next, None | Some(b'/'))
                    || (next == Some(b'.') && matches!(p.get(i + 2), None | Some(b'/')))
                {
                    return true;
                }
            }
            _ => {}
        }
        prev = b;
    }
    false
}

fn decode_unreserved(p: &str) -> String {
    let b = p.as_bytes();
    // Bytes: a path may hold raw UTF-8 (httparse and `http::Uri` take it), copied as it came.
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let c = h * 16 + l;
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
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::normalize;

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
            ("/bad%zz", None),
            ("/bad%4", None),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path).as_deref(), want, "{path}");
        }
    }
}
