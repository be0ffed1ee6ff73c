//! Content-coding negotiation (RFC 9110 §12.5.3): which of the codings a service offers a
//! client's Accept-Encoding prefers. Allocation-free; runs on every request of a service that
//! compresses.

use http::HeaderMap;
use http::header::{ACCEPT_ENCODING, HeaderValue};
use streamgate_config::model::Encoding;

/// The coding of `offered` with the highest q-value in the request's Accept-Encoding; a tie
/// goes to the one `offered` lists first. `None`: send the identity. A coding the field does
/// not name takes the q-value of `*`, if given; `q=0` refuses.
pub fn negotiate(headers: &HeaderMap, offered: &[Encoding]) -> Option<Encoding> {
    let values = headers.get_all(ACCEPT_ENCODING);
    let accept = || values.iter().map(HeaderValue::as_bytes);
    let mut best: Option<(Encoding, u16)> = None;
    for &e in offered {
        let q = q_of(accept(), e.token().as_bytes())
            .or_else(|| {
                (e == Encoding::Gzip)
                    .then(|| q_of(accept(), b"x-gzip"))
                    .flatten()
            })
            .or_else(|| q_of(accept(), b"*"))
            .unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

/// The q-value (in thousandths) `accept` gives `token`, if it names it.
fn q_of<'a>(accept: impl Iterator<Item = &'a [u8]>, token: &[u8]) -> Option<u16> {
    for value in accept {
        for element in value.split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let name = trim(parts.next().unwrap_or(b""));
            if !name.eq_ignore_ascii_case(token) {
                continue;
            }
            let mut q = 1000;
            for param in parts {
                let param = trim(param);
                if param.len() >= 2 && param[..2].eq_ignore_ascii_case(b"q=") {
                    q = qvalue(trim(&param[2..])).unwrap_or(0);
                }
            }
            return Some(q);
        }
    }
    None
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// `0`, `0.5`, `1.000` as thousandths; anything else is not a q-value.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    #[test]
    #[allow(clippy::unwrap_used)]
    fn negotiation_table() {
        use Encoding::*;
        let cases: [(&[&str], &[Encoding], Option<Encoding>); 14] = [
            (&["gzip, deflate, br, zstd"], &ALL, Some(Zstd)),
            (&["gzip, deflate, br"], &ALL, Some(Brotli)),
            (&["gzip"], &ALL, Some(Gzip)),
            (&["GZIP"], &ALL, Some(Gzip)),
            (&["x-gzip"], &ALL, Some(Gzip)),
            (&["br;q=0.5, gzip;q=0.8"], &ALL, Some(Gzip)),
            (&["br;q=1.0, gzip;q=1"], &ALL, Some(Brotli)),
            (&["zstd;q=0, br;q=0"], &ALL, None),
            (&["*"], &ALL, Some(Zstd)),
            (&["*;q=0.1, gzip"], &ALL, Some(Gzip)),
            (&["identity"], &ALL, None),
            (&[""], &ALL, None),
            (&["gzip", "br"], &[Gzip, Brotli], Some(Gzip)),
            (&["br;q=2, gzip;q=0.x"], &ALL, None),
        ];
        for (accept, offered, want) in cases {
            let mut h = HeaderMap::new();
            for v in accept {
                h.append(ACCEPT_ENCODING, v.parse().unwrap());
            }
            let got = negotiate(&h, offered);
            assert_eq!(got, want, "{accept:?} offered {offered:?}");
        }
        assert_eq!(negotiate(&HeaderMap::new(), &ALL), None);
    }

    #[test]
    fn qvalues() {
        for (v, want) in [
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.125", Some(125)),
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("1.5", None),
            ("0.1234", None),
            ("", None),
        ] {
            assert_eq!(qvalue(v.as_bytes()), want, "{v}");
        }
    }
}
