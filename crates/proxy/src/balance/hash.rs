//! Consistent hashing over a backend's endpoints: a ring (Ketama-style, 100 points per
//! endpoint) and Maglev (a lookup table of prime size). Both are built once per endpoint-set
//! change and keyed by endpoint address, so a key keeps its endpoint while the set is stable,
//! and a change moves only about 1/N of the keys.
//!
//! Pure data structures; the key is hashed by [`hash_key`].

use std::net::SocketAddr;

/// Points each endpoint places on the ring.
const RING_POINTS: u32 = 100;
/// Maglev table size: a prime well above the endpoint count (Envoy's default is 65537).
const MAGLEV_SIZE: usize = 65_537;

/// FNV-1a, then a murmur-style finaliser so nearby inputs spread over the whole range.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn addr_hash(addr: &SocketAddr, salt: u64) -> u64 {
    let mut buf = [0u8; 26];
    let ip: [u8; 16] = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    buf[..16].copy_from_slice(&ip);
    buf[16..18].copy_from_slice(&addr.port().to_be_bytes());
    buf[18..26].copy_from_slice(&salt.to_be_bytes());
    hash_key(&buf)
}

/// A hash ring: sorted points, each naming an endpoint index.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let mut points: Vec<(u64, usize)> = addrs
            .iter()
            .enumerate()
            .flat_map(|(i, a)| (0..RING_POINTS).map(move |p| (addr_hash(a, u64::from(p)), i)))
            .collect();
        points.sort_unstable();
        Self { points }
    }

    /// Endpoint indexes in ring order from the key's point: the first is the key's home; the
    /// rest are where it goes when the home is unavailable.
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(h, _)| *h < key);
        let n = self.points.len();
        (0..n).map(move |k| self.points[(start + k) % n].1)
    }
}

/// A Maglev lookup table (Eisenbud et al., 2016).
#[derive(Clone, Debug, Default)]
pub struct Maglev {
    /// Endpoint indexes; `u32` halves the table (256 KiB) against `usize`.
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let n = addrs.len();
        if n == 0 {
            return Self::default();
        }
        let m = MAGLEV_SIZE as u64;
        let perms: Vec<(u64, u64)> = addrs
            .iter()
            .map(|a| (addr_hash(a, 0xabcd) % m, addr_hash(a, 0x1234) % (m - 1) + 1))
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        'fill: loop {
            for (i, (offset, skip)) in perms.iter().enumerate() {
                let mut c = ((offset + next[i] * skip) % m) as usize;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = ((offset + next[i] * skip) % m) as usize;
                }
                // Endpoint counts are far below 2^32.
                table[c] = u32::try_from(i).unwrap_or(u32::MAX - 1);
                next[i] += 1;
                filled += 1;
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    /// The key's endpoint index, then fallbacks (neighbouring table slots) when unavailable.
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let n = self.table.len();
        let start = if n == 0 { 0 } else { (key % n as u64) as usize };
        (0..n).map(move |k| self.table[(start + k) % n] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| ([10, 0, 0, 1], 8000 + i).into()).collect()
    }

    fn spread(home: impl Fn(u64) -> usize, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for k in 0..10_000u64 {
            counts[home(hash_key(&k.to_be_bytes()))] += 1;
        }
        counts
    }

    #[test]
    fn ring_is_stable_and_balanced_enough() {
        let a = addrs(4);
        let ring = Ring::new(&a);
        let again = Ring::new(&a);
        for k in 0..1000u64 {
            let key = hash_key(&k.to_be_bytes());
            assert_eq!(ring.walk(key).next(), again.walk(key).next());
        }
        for c in spread(|k| ring.walk(k).next().unwrap(), 4) {
            assert!((1_500..=3_500).contains(&c), "ring share {c}");
        }
    }

    #[test]
    fn ring_change_moves_few_keys() {
        let four = addrs(4);
        let five = addrs(5);
        let (r4, r5) = (Ring::new(&four), Ring::new(&five));
        let moved = (0..10_000u64)
            .filter(|k| {
                let key = hash_key(&k.to_be_bytes());
                let a = four[r4.walk(key).next().unwrap()];
                let b = five[r5.walk(key).next().unwrap()];
                a != b
            })
            .count();
        // Ideal is 1/5 = 2,000; every moved key must have gone to the new endpoint.
        assert!(moved < 3_000, "moved {moved}");
    }

    #[test]
    fn maglev_is_stable_balanced_and_minimally_disruptive() {
        let four = addrs(4);
        let five = addrs(5);
        let (m4, m5) = (Maglev::new(&four), Maglev::new(&five));
        for c in spread(|k| m4.walk(k).next().unwrap(), 4) {
            assert!((2_000..=3_000).contains(&c), "maglev share {c}");
        }
        let moved = (0..10_000u64)
            .filter(|k| {
                let key = hash_key(&k.to_be_bytes());
                four[m4.walk(key).next().unwrap()] != five[m5.walk(key).next().unwrap()]
            })
            .count();
        assert!(moved < 3_000, "moved {moved}");
        assert!(Maglev::new(&[]).walk(1).next().is_none());
    }
}
