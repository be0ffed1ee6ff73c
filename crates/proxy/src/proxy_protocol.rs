//! The PROXY protocol (HAProxy's, versions 1 and 2): the first bytes of a connection from a load
//! balancer say who the real client is. Parsed from trusted peers, sent to backends that want it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Longest v2 payload accepted (addresses plus TLVs).
const V2_MAX_PAYLOAD: usize = 4096;

/// The addresses a PROXY header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Outcome of parsing the start of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `None` for LOCAL / UNKNOWN (use the socket's addresses).
    Header {
        addresses: Option<Addresses>,
        len: usize,
    },
}

/// Parses a v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        return if buf.len() < 16 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let v1_len = buf.len().min(6);
    if buf[..v1_len] == b"PROXY "[..v1_len] {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::V1("no CRLF within 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.get(1).copied() {
        Some("UNKNOWN") => Ok(Parsed::Header {
            addresses: None,
            len,
        }),
        Some(family @ ("TCP4" | "TCP6")) => {
            if parts.len() != 6 {
                return Err(ProxyHeaderError::V1("expected 6 fields"));
            }
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s.parse().map_err(|_| ProxyHeaderError::V1("bad address"))?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(ProxyHeaderError::V1("address does not match the family")),
                }
            };
            let port = |s: &str| -> Result<u16, ProxyHeaderError> {
                if s.len() > 1 && s.starts_with('0') {
                    return Err(ProxyHeaderError::V1("bad port"));
                }
                s.parse().map_err(|_| ProxyHeaderError::V1("bad port"))
            };
            let source = SocketAddr::new(ip(parts[2])?, port(parts[4])?);
            let destination = SocketAddr::new(ip(parts[3])?, port(parts[5])?);
            Ok(Parsed::Header {
                addresses: Some(Addresses {
                    source,
                    destination,
                }),
                len,
            })
        }
        _ => Err(ProxyHeaderError::V1("unknown protocol family")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    let command = ver_cmd & 0x0f;
    let family = buf[13];
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::V2("header longer than 4096 bytes"));
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let p = &buf[16..len];
    match command {
        0 => {
            return Ok(Parsed::Header {
                addresses: None,
                len,
            });
        } // LOCAL: health check from the balancer
        1 => {}
        _ => return Err(ProxyHeaderError::V2("unknown command")),
    }
    let addresses = match family {
        0x11 | 0x12 => {
            if p.len() < 12 {
                return Err(ProxyHeaderError::V2("IPv4 addresses truncated"));
            }
            let src = Ipv4Addr::new(p[0], p[1], p[2], p[3]);
            let dst = Ipv4Addr::new(p[4], p[5], p[6], p[7]);
            Some(Addresses {
                source: SocketAddr::new(IpAddr::V4(src), u16::from_be_bytes([p[8], p[9]])),
                destination: SocketAddr::new(IpAddr::V4(dst), u16::from_be_bytes([p[10], p[11]])),
            })
        }
        0x21 | 0x22 => {
            if p.len() < 36 {
                return Err(ProxyHeaderError::V2("IPv6 addresses truncated"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&p[..16]);
            d.copy_from_slice(&p[16..32]);
            Some(Addresses {
                source: SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(s)),
                    u16::from_be_bytes([p[32], p[33]]),
                ),
                destination: SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(d)),
                    u16::from_be_bytes([p[34], p[35]]),
                ),
            })
        }
        // UNSPEC or UNIX sockets: no IP addresses to use.
        _ => None,
    };
    Ok(Parsed::Header { addresses, len })
}

/// Reads a PROXY header from the start of `io` (within `timeout`); returns its addresses and the
/// bytes read after it, which belong to the application.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> io::Result<(Option<Addresses>, Bytes)> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            match parse(&buf) {
                Ok(Parsed::Header { addresses, len }) => {
                    let _ = buf.split_to(len);
                    return Ok((addresses, buf.freeze()));
                }
                Ok(Parsed::Incomplete) => {
                    if io.read_buf(&mut buf).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed inside the PROXY header",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time"))?
}

/// `PROXY TCP4 src dst sport dport\r\n`
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (s, d) = (source.ip().to_canonical(), destination.ip().to_canonical());
    match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) => format!(
            "PROXY TCP4 {s} {d} {} {}\r\n",
            source.port(),
            destination.port()
        ),
        // Mixed families (an IPv6 client named by a balancer that reached us over IPv4):
        // both as IPv6, the IPv4 one mapped, as HAProxy writes them. `UNKNOWN` lost the
        // client's address altogether.
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                v6(s),
                v6(d),
                source.port(),
                destination.port()
            )
        }
    }
    .into_bytes()
}

/// The binary form, command PROXY over TCP.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(0x21);
    match (source.ip().to_canonical(), destination.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &str, d: &str) -> Option<Addresses> {
        Some(Addresses {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
        })
    }

    /// Every single-byte corruption and truncation of valid v1 and v2 headers (the fuzzer's
    /// seeds): an answer each time, never a panic, never a header longer than the input.
    #[test]
    fn corruptions_of_valid_headers() {
        let seeds: [&[u8]; 3] = [
            include_bytes!("../../../fuzz/seeds/proxy_protocol/v1"),
            include_bytes!("../../../fuzz/seeds/proxy_protocol/v2"),
            &encode_v2(
                "[2001:db8::1]:1".parse().unwrap(),
                "[2001:db8::2]:2".parse().unwrap(),
            ),
        ];
        for seed in seeds {
            assert!(matches!(parse(seed), Ok(Parsed::Header { .. })));
            let mut buf = seed.to_vec();
            for i in 0..buf.len() {
                let orig = buf[i];
                for v in [0, 0xff, orig ^ 1, orig.wrapping_add(0x80)] {
                    buf[i] = v;
                    if let Ok(Parsed::Header { len, .. }) = parse(&buf) {
                        assert!(len <= buf.len());
                    }
                }
                buf[i] = orig;
                let _ = parse(&buf[..i]);
            }
        }
    }

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Header {
                addresses: addrs("192.0.2.7:51000", "10.0.0.1:443"),
                len: 41
            })
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(h6),
            Ok(Parsed::Header {
                addresses: addrs("[2001:db8::1]:1", "[2001:db8::2]:2"),
                len: h6.len()
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Header {
                addresses: None,
                len: 15
            })
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(parse(&long).is_err());
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::NotProxy)
        );
    }

    #[test]
    fn v2_round_trips_and_rejects_garbage() {
        for (s, d) in [
            ("192.0.2.7:51000", "10.0.0.1:443"),
            ("[2001:db8::7]:1", "[2001:db8::1]:2"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let h = encode_v2(s, d);
            assert_eq!(
                parse(&h),
                Ok(Parsed::Header {
                    addresses: Some(Addresses {
                        source: s,
                        destination: d
                    }),
                    len: h.len()
                })
            );
            assert_eq!(parse(&h[..h.len() - 1]), Ok(Parsed::Incomplete));
            let v1 = encode_v1(s, d);
            assert_eq!(
                parse(&v1),
                Ok(Parsed::Header {
                    addresses: Some(Addresses {
                        source: s,
                        destination: d
                    }),
                    len: v1.len()
                })
            );
        }
        // Mixed families: both as IPv6 (the IPv4 one mapped), the client's address kept.
        let mixed = encode_v1(
            "[2001:db8::7]:4000".parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
        );
        assert_eq!(
            String::from_utf8(mixed).unwrap(),
            "PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 4000 443\r\n"
        );
        let mut bad = encode_v2("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        bad[12] = 0x31;
        assert_eq!(parse(&bad), Err(ProxyHeaderError::V2("version is not 2")));
        let mut local = encode_v2("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        local[12] = 0x20;
        assert_eq!(
            parse(&local),
            Ok(Parsed::Header {
                addresses: None,
                len: local.len()
            })
        );
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            parse(&short),
            Err(ProxyHeaderError::V2("IPv4 addresses truncated"))
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err());
    }

    #[tokio::test]
    async fn reads_a_header_and_keeps_what_follows() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        use tokio::io::AsyncWriteExt;
        a.write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 5 6\r\nhello")
            .await
            .unwrap();
        let (addrs, rest) = read_header(&mut b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(addrs.unwrap().source, "192.0.2.7:5".parse().unwrap());
        assert_eq!(&rest[..], b"hello");
        let (mut c, mut d) = tokio::io::duplex(1024);
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            read_header(&mut d, Duration::from_secs(1))
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }
}
