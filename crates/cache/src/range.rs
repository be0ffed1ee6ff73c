//! Range requests answered from a stored whole object (RFC 9110 §14): one byte range gets 206,
//! an unsatisfiable one 416; several ranges get the whole object (allowed, and simpler for
//! players, which ask for one range at a time).

/// What to send for a `Range` header against an object of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    Full,
    /// Inclusive byte positions.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

pub fn range_reply(range: Option<&str>, len: u64) -> RangeReply {
    let Some(spec) = range.map(str::trim) else {
        return RangeReply::Full;
    };
    let Some(set) = spec.strip_prefix("bytes=") else {
        return RangeReply::Full;
    };
    if set.contains(',') {
        return RangeReply::Full;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeReply::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(b) {
            Some(0) => RangeReply::Unsatisfiable,
            Some(n) if len > 0 => RangeReply::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Some(_) => RangeReply::Unsatisfiable,
            None => RangeReply::Full,
        },
        // bytes=N-: from N to the end.
        (false, true) => match parse(a) {
            Some(s) if s < len => RangeReply::Partial {
                start: s,
                end: len - 1,
            },
            Some(_) => RangeReply::Unsatisfiable,
            None => RangeReply::Full,
        },
        (false, false) => match (parse(a), parse(b)) {
            (Some(s), Some(e)) if s <= e && s < len => RangeReply::Partial {
                start: s,
                end: e.min(len - 1),
            },
            (Some(s), Some(e)) if s <= e => RangeReply::Unsatisfiable,
            _ => RangeReply::Full,
        },
        (true, true) => RangeReply::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        let p = |start, end| RangeReply::Partial { start, end };
        assert_eq!(range_reply(None, 100), RangeReply::Full);
        assert_eq!(range_reply(Some("bytes=0-9"), 100), p(0, 9));
        assert_eq!(range_reply(Some("bytes=90-200"), 100), p(90, 99));
        assert_eq!(range_reply(Some("bytes=95-"), 100), p(95, 99));
        assert_eq!(range_reply(Some("bytes=-10"), 100), p(90, 99));
        assert_eq!(range_reply(Some("bytes=-500"), 100), p(0, 99));
        assert_eq!(
            range_reply(Some("bytes=100-"), 100),
            RangeReply::Unsatisfiable
        );
        assert_eq!(
            range_reply(Some("bytes=200-300"), 100),
            RangeReply::Unsatisfiable
        );
        assert_eq!(
            range_reply(Some("bytes=-0"), 100),
            RangeReply::Unsatisfiable
        );
        assert_eq!(range_reply(Some("bytes=0-1,5-6"), 100), RangeReply::Full);
        assert_eq!(range_reply(Some("items=0-1"), 100), RangeReply::Full);
        assert_eq!(
            range_reply(Some("bytes=9-3"), 100),
            RangeReply::Full,
            "invalid: ignored"
        );
    }
}
