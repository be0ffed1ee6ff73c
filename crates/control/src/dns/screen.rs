//! What of a DNS answer may become backends. An answer is whatever the name's zone (or anyone
//! who can spoof or poison it) says: it is screened before any address reaches the table.
//! Unspecified, multicast and broadcast addresses are never usable; loopback and link-local ones
//! (the host itself, the cloud metadata service at 169.254.169.254) only with
//! `[dns] allow_local`; and a name gives at most `[dns] max_addresses` backends.

use std::net::IpAddr;

use streamgate_config::Dns;

/// Why an address of an answer was not used: the `reason` label of
/// `dns_addresses_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dropped {
    /// Unspecified (0.0.0.0/8, ::), multicast or broadcast: not a host to connect to.
    Unusable,
    /// Loopback or link-local, without `allow_local`.
    Local,
    /// Past `max_addresses`.
    OverCap,
}

impl Dropped {
    pub(crate) const ALL: [Dropped; 3] = [Dropped::Unusable, Dropped::Local, Dropped::OverCap];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::Unusable => "unusable",
            Dropped::Local => "local",
            Dropped::OverCap => "over_cap",
        }
    }
}

/// An answer after screening.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screened {
    /// Sorted, deduplicated, at most `max_addresses`.
    pub kept: Vec<IpAddr>,
    /// Every address not kept, with why, in sorted order.
    pub dropped: Vec<(IpAddr, Dropped)>,
}

impl Screened {
    /// How many were dropped for `why`.
    pub(crate) fn count(&self, why: Dropped) -> usize {
        self.dropped.iter().filter(|(_, d)| *d == why).count()
    }
}

/// Cloud metadata and platform services outside the link-local ranges: AWS's and Google
/// Cloud's IPv6 metadata endpoints (unique-local addresses), Alibaba Cloud's metadata service and
/// Azure's WireServer. Their answers carry the machine's credentials or configuration.
const METADATA: [IpAddr; 4] = [
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
];

/// The IPv4 address an IPv6 one carries on to, where it is a form that reaches it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some
/// stacks), NAT64's well-known prefix (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002:aabb:ccdd::/48`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let tail =
        || std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // `::` and `::1` are IPv6's own.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail()),
        [0x2002, a, b, ..] => Some(std::net::Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

/// Why `ip` may not be a backend under `dns` (`None`: it may).
pub(crate) fn refuse(ip: IpAddr, dns: &Dns) -> Option<Dropped> {
    // ::ffff:127.0.0.1 is 127.0.0.1 to the socket that connects to it; 64:ff9b::7f00:1 is
    // 127.0.0.1 through a NAT64 gateway: each is judged as the IPv4 address it reaches.
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let local = match ip {
        IpAddr::V4(v4) => {
            if v4.octets()[0] == 0 || v4.is_multicast() || v4.is_broadcast() {
                return Some(Dropped::Unusable);
            }
            v4.is_loopback() || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() || v6.is_multicast() {
                return Some(Dropped::Unusable);
            }
            v6.is_loopback() || v6.is_unicast_link_local()
        }
    };
    ((local || METADATA.contains(&ip)) && !dns.allow_local).then_some(Dropped::Local)
}

/// Screens one answer: refused addresses out, then the first `max_addresses` in sorted order.
pub(crate) fn screen(answer: impl IntoIterator<Item = IpAddr>, dns: &Dns) -> Screened {
    let mut all: Vec<IpAddr> = answer.into_iter().collect();
    all.sort_unstable();
    all.dedup();
    let mut out = Screened::default();
    for ip in all {
        match refuse(ip, dns) {
            Some(why) => out.dropped.push((ip, why)),
            None if out.kept.len() < dns.max_addresses => out.kept.push(ip),
            None => out.dropped.push((ip, Dropped::OverCap)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn addresses_are_refused_by_kind() {
        let strict = Dns::default();
        let local = Dns {
            allow_local: true,
            ..Dns::default()
        };
        let cases: &[(&str, Option<Dropped>, Option<Dropped>)] = &[
            ("10.0.0.1", None, None),
            ("203.0.113.7", None, None),
            ("2001:db8::1", None, None),
            ("0.0.0.0", Some(Dropped::Unusable), Some(Dropped::Unusable)),
            ("0.1.2.3", Some(Dropped::Unusable), Some(Dropped::Unusable)),
            ("::", Some(Dropped::Unusable), Some(Dropped::Unusable)),
            (
                "224.0.0.1",
                Some(Dropped::Unusable),
                Some(Dropped::Unusable),
            ),
            (
                "239.255.255.250",
                Some(Dropped::Unusable),
                Some(Dropped::Unusable),
            ),
            ("ff02::1", Some(Dropped::Unusable), Some(Dropped::Unusable)),
            (
                "255.255.255.255",
                Some(Dropped::Unusable),
                Some(Dropped::Unusable),
            ),
            ("127.0.0.1", Some(Dropped::Local), None),
            ("127.3.2.1", Some(Dropped::Local), None),
            ("::1", Some(Dropped::Local), None),
            ("::ffff:127.0.0.1", Some(Dropped::Local), None),
            ("169.254.169.254", Some(Dropped::Local), None),
            ("fe80::1", Some(Dropped::Local), None),
            ("febf::1", Some(Dropped::Local), None),
            ("fec0::1", None, None),
            // Metadata services outside link-local, and IPv6 forms that reach local IPv4.
            ("fd00:ec2::254", Some(Dropped::Local), None),
            ("fd00:ec2::253", None, None),
            ("100.100.100.200", Some(Dropped::Local), None),
            ("fd20:ce::254", Some(Dropped::Local), None),
            ("168.63.129.16", Some(Dropped::Local), None),
            ("64:ff9b::a9fe:a9fe", Some(Dropped::Local), None),
            ("64:ff9b::7f00:1", Some(Dropped::Local), None),
            ("64:ff9b::cb00:7107", None, None),
            ("::127.0.0.1", Some(Dropped::Local), None),
            ("::169.254.169.254", Some(Dropped::Local), None),
            ("2002:a9fe:a9fe::", Some(Dropped::Local), None),
            ("2002:7f00:1::1", Some(Dropped::Local), None),
            ("2002:cb00:7107::1", None, None),
            (
                "::0.1.2.3",
                Some(Dropped::Unusable),
                Some(Dropped::Unusable),
            ),
        ];
        for (ip, want_strict, want_local) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                refuse(ip, &strict),
                *want_strict,
                "{ip} without allow_local"
            );
            assert_eq!(refuse(ip, &local), *want_local, "{ip} with allow_local");
        }
    }

    #[test]
    fn the_first_addresses_in_sorted_order_are_kept_up_to_the_cap() {
        let dns = Dns {
            max_addresses: 2,
            ..Dns::default()
        };
        let got = screen(
            ips(&[
                "10.0.0.3",
                "169.254.169.254",
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.1",
                "0.0.0.0",
            ]),
            &dns,
        );
        assert_eq!(got.kept, ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(
            got.dropped,
            vec![
                ("0.0.0.0".parse().unwrap(), Dropped::Unusable),
                ("10.0.0.3".parse().unwrap(), Dropped::OverCap),
                ("169.254.169.254".parse().unwrap(), Dropped::Local),
            ]
        );
        assert_eq!(got.count(Dropped::OverCap), 1);
        // The same answer in another order keeps the same addresses.
        let again = screen(ips(&["10.0.0.2", "10.0.0.3", "10.0.0.1"]), &dns);
        assert_eq!(again.kept, got.kept);

        let everything_local = screen(ips(&["127.0.0.1", "::1"]), &Dns::default());
        assert!(everything_local.kept.is_empty());
        assert_eq!(everything_local.count(Dropped::Local), 2);
    }

    #[test]
    fn reasons_are_those_the_metrics_declare() {
        assert_eq!(
            Dropped::ALL.map(Dropped::as_str),
            streamgate_telemetry::DNS_DROPPED
        );
    }
}
