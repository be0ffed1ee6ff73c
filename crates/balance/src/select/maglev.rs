//! `consistent_hash`: Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4), as Envoy's `maglev` load balancer does it.
//!
//! Why Maglev rather than a ring (Karger et al. 1997; nginx's `hash ... consistent`, Envoy's
//! `ring_hash`): a pick is one hash of the key, a modulo and an array read — O(1), no binary
//! search over vnodes, no allocation — and every backend holds within a fraction of a percent
//! of its share of the table, where a ring needs hundreds of vnodes per backend to come close.
//! The price is slightly more than the ideal 1/N of keys moving when a backend is added or
//! removed (the paper's Figure 13; the tests bound it), which a load balancer takes for the
//! balance.
//!
//! The table is built with the routing table, off the hot path: each backend walks its own
//! permutation of the slots (offset and skip from a hash of its address) and takes the next free
//! one in turn, a backend of weight w taking w/max turns per round (Envoy's weighted fill).
//! Backends are filled in the order of their address hashes, not the file's, so reordering the
//! file moves nothing. Hashes are SipHash-1-3 with fixed keys: every StreamGate, after every
//! restart, maps a key to the same backend.
//!
//! A key whose backend is unusable (down, drained, ejected or already tried) walks on along the
//! table to the next usable entry. Only that backend's keys move, spread over the others in
//! proportion to their weights; every other key stays where it was.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13x128};

use super::{Select, first_usable};
use crate::table::Backend;

/// Table sizes, primes as Maglev needs (every skip then visits every slot); the first at least
/// `SLOTS_PER_BACKEND` times the backend count is used. 65537 is Envoy's default.
const SIZES: [usize; 3] = [65_537, 655_373, 6_553_577];
/// The paper keeps M ≫ N: at 100 slots per backend a backend's share is within about 1% of the
/// ideal.
const SLOTS_PER_BACKEND: usize = 100;
/// Table entries tried past an unusable one before scanning the backends in order. At 64, a key
/// falls through to the scan only when nearly all backends are out.
const WALK: usize = 64;

/// Fixed SipHash keys: part of the mapping from keys to backends, so never to change.
const KEY_HASH: (u64, u64) = (0x5374_7265_616d_4761, 0x7465_2d68_6173_6821);
const BACKEND_HASH: (u64, u64) = (0x6d61_676c_6576_2d70, 0x6572_6d75_7461_7465);
const STICKY_HASH: (u64, u64) = (0x7374_6963_6b79_2d63, 0x6f6f_6b69_652d_6964);

/// The stable hash of a request's key (a header's or cookie's value, the URI).
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(KEY_HASH.0, KEY_HASH.1);
    h.write(bytes);
    h.finish()
}

/// The stable hash of a client address; an IPv4 address written as IPv6 (`::ffff:a.b.c.d`)
/// hashes as the IPv4 address, so a dual-stack listener does not split one client.
#[inline]
pub fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => key_hash(&v4.octets()),
        IpAddr::V6(v6) => key_hash(&v6.octets()),
    }
}

/// What the sticky cookie carries for a backend: opaque (not its address) and the same on every
/// StreamGate, so a cookie set by one PoP is honoured by another.
pub fn sticky_id(address: SocketAddr) -> u64 {
    let mut h = SipHasher13::new_with_keys(STICKY_HASH.0, STICKY_HASH.1);
    h.write(address.to_string().as_bytes());
    h.finish()
}

#[derive(Debug)]
pub struct Maglev {
    /// Backend index per slot.
    table: Box<[u32]>,
}

impl Maglev {
    pub fn new(backends: &[Backend]) -> Maglev {
        let size = SIZES
            .iter()
            .copied()
            .find(|&m| m >= backends.len() * SLOTS_PER_BACKEND)
            .unwrap_or(SIZES[SIZES.len() - 1]);
        Maglev::with_size(backends, size)
    }

    /// A table of `size` slots (a prime).
    pub fn with_size(backends: &[Backend], size: usize) -> Maglev {
        let members: Vec<(SocketAddr, u32)> =
            backends.iter().map(|b| (b.address, b.weight)).collect();
        Maglev {
            table: populate(&members, size).into_boxed_slice(),
        }
    }

    /// The backend for a key hash: its table entry, or the next usable one along the table.
    #[inline]
    pub fn select_key<F: Fn(&Backend) -> bool>(
        &self,
        key: u64,
        backends: &[Backend],
        usable: F,
    ) -> Option<usize> {
        let len = self.table.len();
        if len == 0 || backends.is_empty() {
            return None;
        }
        let slot = (key % len as u64) as usize;
        for step in 0..WALK.min(len) {
            let i = self.table[(slot + step) % len] as usize;
            if i < backends.len() && usable(&backends[i]) {
                return Some(i);
            }
        }
        first_usable(
            backends,
            self.table[slot] as usize % backends.len(),
            &usable,
        )
    }

    /// The index each slot maps to, for tests.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> &[u32] {
        &self.table
    }
}

impl Select for Maglev {
    /// Without a key (a caller that has none): a random slot, so load still follows the table.
    #[inline]
    fn select<F: Fn(&Backend) -> bool>(&self, backends: &[Backend], usable: F) -> Option<usize> {
        self.select_key(fastrand::u64(..), backends, usable)
    }
}

/// The Maglev lookup table: `size` slots, each the index of a member.
fn populate(members: &[(SocketAddr, u32)], size: usize) -> Vec<u32> {
    if members.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = size as u64;
    // (offset, skip) of each member's permutation: slot j of it is (offset + j * skip) mod M.
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|(address, _)| {
            let mut h = SipHasher13x128::new_with_keys(BACKEND_HASH.0, BACKEND_HASH.1);
            h.write(address.to_string().as_bytes());
            let h = h.finish128();
            (h.h1 % m, h.h2 % (m - 1) + 1)
        })
        .collect();
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| (perms[i], members[i].0));
    let weights: Vec<u64> = members
        .iter()
        .map(|(_, w)| u64::from((*w).max(1)))
        .collect();
    let max_weight = weights.iter().copied().max().unwrap_or(1);

    let mut table = vec![u32::MAX; size];
    let mut next: Vec<u64> = perms.iter().map(|&(offset, _)| offset).collect();
    let mut credit = vec![0u64; members.len()];
    let mut filled = 0;
    loop {
        for &i in &order {
            // A member of weight w takes a slot in w of every max_weight rounds.
            credit[i] += weights[i];
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let skip = perms[i].1;
            loop {
                let slot = next[i] as usize;
                next[i] = (next[i] + skip) % m;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    break;
                }
            }
            filled += 1;
            if filled == size {
                return table;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{all, backends};
    use super::*;

    const KEYS: u64 = 10_000;

    fn keys() -> impl Iterator<Item = u64> {
        (0..KEYS).map(|k| key_hash(format!("user-{k}").as_bytes()))
    }

    /// The backend address each key maps to.
    fn mapping(b: &[Backend], usable: impl Fn(&Backend) -> bool + Copy) -> Vec<SocketAddr> {
        let m = Maglev::new(b);
        keys()
            .map(|k| b[m.select_key(k, b, usable).unwrap()].address)
            .collect()
    }

    fn moved(a: &[SocketAddr], b: &[SocketAddr]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn adding_a_sixth_backend_moves_about_a_sixth_of_the_keys() {
        let five = backends(&[1; 5]);
        let six = backends(&[1; 6]);
        let (before, after) = (mapping(&five, all), mapping(&six, all));
        let moved = moved(&before, &after);
        let ideal = KEYS as f64 / 6.0;
        eprintln!("adding a sixth backend moved {moved} of {KEYS} keys (ideal {ideal:.0})");
        assert!(
            (0.5 * ideal..=1.6 * ideal).contains(&(moved as f64)),
            "{moved} of {KEYS} moved; ideal {ideal:.0}"
        );
        // Nearly every key that moved went to the new backend; Maglev shuffles a few between
        // the old ones (the paper's Figure 13).
        let to_new = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b && **b == six[5].address)
            .count();
        assert!(
            to_new as f64 >= 0.9 * moved as f64,
            "{to_new} of the {moved} moved keys went to the new backend"
        );
    }

    #[test]
    fn removing_a_backend_moves_its_keys_and_almost_nothing_else() {
        let five = backends(&[1; 5]);
        let four = backends(&[1; 4]);
        let (before, after) = (mapping(&five, all), mapping(&four, all));
        let gone = five[4].address;
        let its_keys = before.iter().filter(|&&a| a == gone).count();
        let others_moved = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| **a != gone && a != b)
            .count();
        assert!(
            (0.5 * KEYS as f64 / 5.0..=1.5 * KEYS as f64 / 5.0).contains(&(its_keys as f64)),
            "{its_keys}"
        );
        eprintln!("removing one of five: its {its_keys} keys moved, and {others_moved} others");
        // Maglev trades a little disruption for balance; the paper measures a few percent.
        assert!(
            others_moved as f64 <= 0.03 * KEYS as f64,
            "{others_moved} keys of remaining backends moved"
        );
    }

    #[test]
    fn keys_and_slots_are_balanced() {
        let b = backends(&[1; 5]);
        let m = Maglev::new(&b);
        for i in 0..5u32 {
            let slots = m.slots().iter().filter(|&&s| s == i).count() as f64;
            let share = slots / m.slots().len() as f64;
            assert!((share - 0.2).abs() < 0.2 * 0.02, "backend {i}: {share}");
        }
        let mut hits = [0u64; 5];
        for k in keys() {
            hits[m.select_key(k, &b, all).unwrap()] += 1;
        }
        for h in hits {
            // 2000 expected; the spread of 10 000 random keys is about 40.
            assert!((1800..=2200).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let weights = [1u32, 2, 3, 4];
        let b = backends(&weights);
        let m = Maglev::new(&b);
        for (i, w) in weights.iter().enumerate() {
            let slots = m.slots().iter().filter(|&&s| s as usize == i).count() as f64;
            let share = slots / m.slots().len() as f64;
            let want = f64::from(*w) / 10.0;
            assert!((share - want).abs() < want * 0.02, "backend {i}: {share}");
        }
    }

    #[test]
    fn an_unusable_backend_sends_only_its_keys_elsewhere() {
        let b = backends(&[1; 5]);
        let down = b[2].address;
        let before = mapping(&b, all);
        let after = mapping(&b, |x: &Backend| x.address != down);
        let mut received = [0usize; 5];
        for (x, y) in before.iter().zip(&after) {
            if *x == down {
                assert_ne!(*y, down);
                received[b.iter().position(|z| z.address == *y).unwrap()] += 1;
            } else {
                assert_eq!(x, y, "a key of a usable backend moved");
            }
        }
        // Spread over the others, not all piled on one neighbour.
        for (i, r) in received.iter().enumerate() {
            if i != 2 {
                assert!(*r > 250, "{received:?}");
            }
        }
        assert_eq!(Maglev::new(&b).select_key(7, &b, |_| false), None);
        let one = b[4].address;
        assert_eq!(
            Maglev::new(&b).select_key(7, &b, |x: &Backend| x.address == one),
            Some(4),
            "the last usable backend is found past the walk"
        );
    }

    #[test]
    fn the_file_order_of_backends_does_not_matter() {
        let b = backends(&[1, 2, 1, 3]);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(mapping(&b, all), mapping(&reversed, all));
    }

    #[test]
    fn hashes_are_fixed_across_builds_and_platforms() {
        // Changing these would move every key of every deployment: the values are pinned.
        assert_eq!(key_hash(b"u1"), key_hash(b"u1"));
        assert_ne!(key_hash(b"u1"), key_hash(b"u2"));
        assert_eq!(
            ip_hash("::ffff:10.0.0.1".parse().unwrap()),
            ip_hash("10.0.0.1".parse().unwrap())
        );
        let pinned = [key_hash(b""), key_hash(b"u1")];
        assert_eq!(pinned, PINNED, "{pinned:x?}");
    }

    const PINNED: [u64; 2] = [0x4991_1e41_446c_de82, 0xc5c4_1516_385a_a605];

    #[test]
    fn a_region_without_backends_picks_nothing() {
        let m = Maglev::new(&[]);
        assert_eq!(m.select_key(1, &[], all), None);
        assert_eq!(m.select(&[], all), None);
    }
}
