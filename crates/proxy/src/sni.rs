//! Reading the server name (SNI) from a TLS ClientHello without terminating TLS, for
//! `tls_passthrough` listeners (RFC 8446 §4.1.2, RFC 6066 §3).

/// Outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// More bytes are needed (the ClientHello is not complete yet).
    Incomplete,
    /// A ClientHello; the server name, if it sent one.
    Found(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

/// Largest ClientHello accepted (records may fragment it; 16 KiB is the record limit).
pub const MAX_HELLO: usize = 16 * 1024 + 5;

/// Parses the ClientHello at the start of `buf`, which may span several records.
pub fn client_hello_sni(buf: &[u8]) -> Sni {
    HelloReader::default().advance(buf)
}

/// Reads a ClientHello as its bytes arrive: each call goes on from the records it has already
/// taken in. Parsing the whole buffer again on every read made a hello sent as 16 K one-byte
/// records, a byte at a time, cost 16 K walks over up to 16 K records (about 134 M record
/// steps and as many bytes copied per connection); here each record is taken in once.
#[derive(Debug, Default)]
pub struct HelloReader {
    /// Where the next record starts in the buffer.
    pos: usize,
    /// The handshake bytes of the records taken in.
    hs: Vec<u8>,
}

impl HelloReader {
    /// Looks at `buf`, the connection's bytes so far (the same start on every call, longer
    /// each time).
    pub fn advance(&mut self, buf: &[u8]) -> Sni {
        loop {
            let pos = self.pos;
            if buf.len() < pos + 5 {
                return Sni::Incomplete;
            }
            if buf[pos] != 22 || buf[pos + 1] != 3 {
                return if pos == 0 {
                    Sni::NotTls
                } else {
                    Sni::Incomplete
                };
            }
            let len = usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
            if len == 0 || len > 16 * 1024 {
                return Sni::NotTls;
            }
            if buf.len() < pos + 5 + len {
                return Sni::Incomplete;
            }
            self.hs.extend_from_slice(&buf[pos + 5..pos + 5 + len]);
            self.pos = pos + 5 + len;
            let hs = &self.hs;
            if hs.len() >= 4 {
                if hs[0] != 1 {
                    return Sni::NotTls;
                }
                let body =
                    (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
                if body > MAX_HELLO {
                    return Sni::NotTls;
                }
                if hs.len() >= 4 + body {
                    return match parse_hello(&hs[4..4 + body]) {
                        Some(name) => Sni::Found(name),
                        None => Sni::NotTls,
                    };
                }
            }
        }
    }
}

/// A cursor that refuses to read past its slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// `Some(None)`: a valid ClientHello without SNI; `None`: malformed.
fn parse_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.0.is_empty() {
        return Some(None); // no extensions
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind == 0 {
            let mut list = Reader(data);
            let list_len = list.u16()?;
            let mut names = Reader(list.take(list_len)?);
            while !names.0.is_empty() {
                let name_type = names.u8()?;
                let n = names.u16()?;
                let name = names.take(n)?;
                if name_type == 0 {
                    let s = std::str::from_utf8(name).ok()?;
                    if s.is_empty()
                        || !s.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
                        })
                    {
                        return None;
                    }
                    return Some(Some(s.to_ascii_lowercase()));
                }
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given extensions block.
    fn hello(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni_ext(name: &str) -> Vec<u8> {
        let n = name.as_bytes();
        let mut list = vec![0];
        list.extend_from_slice(&(n.len() as u16).to_be_bytes());
        list.extend_from_slice(n);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(&data);
        ext
    }

    #[test]
    fn finds_the_name() {
        let mut exts = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats first
        exts.extend(sni_ext("Video.Example.com"));
        let h = hello(&exts);
        assert_eq!(
            client_hello_sni(&h),
            Sni::Found(Some("video.example.com".into()))
        );
        for cut in 0..h.len() {
            assert_eq!(client_hello_sni(&h[..cut]), Sni::Incomplete, "cut {cut}");
        }
        assert_eq!(client_hello_sni(&hello(&[])), Sni::Found(None));
    }

    /// The first answer that is not `Incomplete`, fed a byte at a time.
    fn byte_by_byte(buf: &[u8]) -> Sni {
        let mut reader = HelloReader::default();
        for end in 1..=buf.len() {
            let got = reader.advance(&buf[..end]);
            if got != Sni::Incomplete {
                return got;
            }
        }
        Sni::Incomplete
    }

    /// A real ClientHello (openssl s_client, also the fuzzer's seed), and every single-byte
    /// corruption and truncation of it: an answer each time, never a panic, and the same answer
    /// read a byte at a time.
    #[test]
    fn a_real_hello_and_its_corruptions() {
        let real = include_bytes!("../../../fuzz/seeds/client_hello_sni/openssl-hello");
        assert_eq!(
            client_hello_sni(real),
            Sni::Found(Some("video.example.com".into()))
        );
        let mut buf = real.to_vec();
        for i in 0..buf.len() {
            let orig = buf[i];
            for v in [0, 0xff, orig ^ 1, orig.wrapping_add(0x80)] {
                buf[i] = v;
                let whole = client_hello_sni(&buf);
                if let Sni::Found(Some(name)) = &whole {
                    assert!(!name.is_empty());
                }
                assert_eq!(byte_by_byte(&buf), whole, "byte {i} = {v}");
            }
            buf[i] = orig;
            let _ = client_hello_sni(&buf[..i]);
        }
    }

    #[test]
    fn fragmented_over_two_records() {
        let h = hello(&sni_ext("a.example"));
        let hs = &h[5..];
        let (x, y) = hs.split_at(10);
        let mut two = vec![22, 3, 1, 0, x.len() as u8];
        two.extend_from_slice(x);
        two.extend_from_slice(&[22, 3, 1, (y.len() >> 8) as u8, y.len() as u8]);
        two.extend_from_slice(y);
        assert_eq!(client_hello_sni(&two), Sni::Found(Some("a.example".into())));
    }

    /// Records already taken in are not read again: the bytes of the first are overwritten
    /// (here with what is not TLS) before the second arrives, and the reader, which does not
    /// look back, still finds the name. (Parsing from the start on every read looked back at
    /// every record, and was quadratic in a hello sent one byte per record.)
    #[test]
    fn each_record_is_taken_in_once() {
        let h = hello(&sni_ext("a.example"));
        let hs = &h[5..];
        let (x, y) = hs.split_at(10);
        let mut two = vec![22, 3, 1, 0, x.len() as u8];
        two.extend_from_slice(x);
        let first = two.len();
        two.extend_from_slice(&[22, 3, 1, (y.len() >> 8) as u8, y.len() as u8]);
        two.extend_from_slice(y);
        let mut reader = HelloReader::default();
        for end in 0..first + 3 {
            assert_eq!(reader.advance(&two[..end]), Sni::Incomplete, "at {end}");
        }
        two[..first].fill(b'G');
        assert_eq!(reader.advance(&two), Sni::Found(Some("a.example".into())));
        assert_eq!(
            client_hello_sni(&two),
            Sni::NotTls,
            "from the start, it is not"
        );
    }

    /// A hello in one-byte records, fed a byte at a time, is read whole.
    #[test]
    fn a_hello_in_one_byte_records_fed_a_byte_at_a_time() {
        let h = hello(&sni_ext("tiny.example"));
        let mut split = Vec::new();
        for &b in &h[5..] {
            split.extend_from_slice(&[22, 3, 1, 0, 1, b]);
        }
        let mut reader = HelloReader::default();
        let mut found = Sni::Incomplete;
        for end in 1..=split.len() {
            found = reader.advance(&split[..end]);
            if found != Sni::Incomplete {
                assert_eq!(end, split.len());
            }
        }
        assert_eq!(found, Sni::Found(Some("tiny.example".into())));
    }

    #[test]
    fn refuses_what_is_not_a_hello() {
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n\r\n"), Sni::NotTls);
        let mut h = hello(&sni_ext("ok.example"));
        h[5] = 2; // ServerHello
        assert_eq!(client_hello_sni(&h), Sni::NotTls);
        let bad = hello(&sni_ext("bad name"));
        assert_eq!(client_hello_sni(&bad), Sni::NotTls);
        let mut truncated = hello(&sni_ext("x.example"));
        let n = truncated.len();
        truncated[n - 3] = 0xff; // name length past the end
        assert_eq!(client_hello_sni(&truncated), Sni::NotTls);
    }
}
