//! Finds, in the bytes an HTTP/2 client sends, when a header block is being received, so that
//! `request_header` bounds it as it bounds an HTTP/1.1 head.
//!
//! hyper's HTTP/2 server has no header timer: a client can open a HEADERS frame and send its
//! CONTINUATION frames a byte at a time, holding the connection (RFC 9113 §6.10 forbids any
//! other frame in between, so every other stream of the connection is stuck too) and memory for
//! as long as it likes, while each byte resets any idle timer. Only frame headers are read here
//! (9 bytes per frame; payloads are skipped by length), so the cost per read is a few compares
//! per frame.

/// The client's connection preface (RFC 9113 §3.4) precedes its first frame.
const PREFACE_LEN: u32 = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the client's byte stream stands, frame by frame.
#[derive(Debug, Clone)]
pub(crate) struct HeaderBlocks {
    preface_left: u32,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: u32,
    /// The frame being received carries part of a header block.
    in_head_frame: bool,
    /// A header block began without END_HEADERS: CONTINUATION frames must follow.
    awaiting_continuation: bool,
}

impl Default for HeaderBlocks {
    fn default() -> Self {
        HeaderBlocks {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            in_head_frame: false,
            awaiting_continuation: false,
        }
    }
}

impl HeaderBlocks {
    /// Reads what the client sent next.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        let skip = (self.preface_left as usize).min(bytes.len());
        self.preface_left -= skip as u32;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(bytes.len());
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.in_head_frame = false;
                }
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                self.frame_header_complete();
            }
        }
    }

    fn frame_header_complete(&mut self) {
        let h = &self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let head = matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        if head {
            self.awaiting_continuation = flags & END_HEADERS == 0;
        }
        self.in_head_frame = head && len > 0;
        self.payload_left = len;
    }

    /// Whether part of a header block (or of any frame's 9-byte header) has arrived and the rest
    /// has not: the client owes the end of a request head.
    pub(crate) fn head_open(&self) -> bool {
        self.in_head_frame || self.awaiting_continuation || self.header_len > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload_len: usize) -> Vec<u8> {
        let l = (payload_len as u32).to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, flags, 0, 0, 0, 1];
        f.resize(FRAME_HEADER_LEN + payload_len, 0xAB);
        f
    }

    /// Feeds the parts in turn and records `head_open` after each.
    fn open_after(parts: &[&[u8]]) -> Vec<bool> {
        let mut b = HeaderBlocks::default();
        parts
            .iter()
            .map(|p| {
                b.feed(p);
                b.head_open()
            })
            .collect()
    }

    #[test]
    fn header_blocks_are_found_across_reads() {
        let settings = frame(0x4, 0, 6);
        let headers_end = frame(HEADERS, END_HEADERS | 0x1, 20);
        let headers_more = frame(HEADERS, 0x1, 20);
        let cont_more = frame(CONTINUATION, 0, 3);
        let cont_end = frame(CONTINUATION, END_HEADERS, 3);
        let data = frame(0x0, 0, 100);
        let ping = frame(0x6, 0, 8);
        type Case<'a> = (&'a str, Vec<&'a [u8]>, Vec<bool>);
        let cases: Vec<Case<'_>> = vec![
            ("preface alone", vec![PREFACE], vec![false]),
            (
                "preface split",
                vec![&PREFACE[..5], &PREFACE[5..]],
                vec![false, false],
            ),
            (
                "settings then a whole request head",
                vec![PREFACE, &settings, &headers_end],
                vec![false, false, false],
            ),
            (
                "head split inside its payload",
                vec![PREFACE, &headers_end[..12], &headers_end[12..]],
                vec![false, true, false],
            ),
            (
                "frame header split",
                vec![PREFACE, &ping[..4], &ping[4..]],
                vec![false, true, false],
            ),
            (
                "continuations trickled",
                vec![PREFACE, &headers_more, &cont_more, &cont_more, &cont_end],
                vec![false, true, true, true, false],
            ),
            (
                "an open block stays open until END_HEADERS",
                vec![PREFACE, &headers_more, &cont_end[..10], &cont_end[10..]],
                vec![false, true, true, false],
            ),
            (
                "request body data is not a head",
                vec![PREFACE, &headers_end, &data[..50], &data[50..]],
                vec![false, false, false, false],
            ),
        ];
        for (name, parts, want) in cases {
            assert_eq!(open_after(&parts), want, "{name}");
        }
    }

    #[test]
    fn everything_in_one_read_and_byte_by_byte_agree() {
        let mut all = PREFACE.to_vec();
        all.extend(frame(HEADERS, 0, 30));
        all.extend(frame(CONTINUATION, END_HEADERS, 4));
        all.extend(frame(0x0, 0x1, 1000));
        let mut whole = HeaderBlocks::default();
        whole.feed(&all);
        assert!(!whole.head_open());
        let mut bytes = HeaderBlocks::default();
        let mut opened = 0;
        for b in &all {
            bytes.feed(std::slice::from_ref(b));
            opened += bytes.head_open() as usize;
        }
        assert!(!bytes.head_open());
        // Open from the HEADERS frame's first byte to the CONTINUATION's last, and while the
        // DATA frame's 9-byte header is incomplete.
        assert_eq!(opened, (9 + 30 + 9 + 4 - 1) + (9 - 1));
    }
}
