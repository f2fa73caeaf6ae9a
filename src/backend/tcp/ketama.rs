//! Weighted ketama consistent hashing, compatible with libmemcached.
//!
//! This module holds the continuum ("ring") that maps a key to one of the
//! configured memcached servers. It mirrors libmemcached's weighted ketama
//! distribution (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`, i.e.
//! `MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED` with MD5 as key and
//! distribution hash; see `update_continuum` in libmemcached's `hosts.cc` and
//! `dispatch_host` in `hash.cc`) so that this client and libmemcached-based
//! clients (PHP's memcached extension, pylibmc, ...) agree on which server
//! holds a key when they share a pool. It is a reimplementation from the
//! algorithm's description, not a port of libmemcached's code.
//!
//! The algorithm:
//!
//! - every live server gets `floor(weight / total_weight * 40 * live_count) * 4`
//!   points, computed in single precision as libmemcached does;
//! - the points of a server come from MD5 digests of `host-i` (when the port is
//!   the default 11211) or `host:port-i`, for `i` in `0..points / 4`; each
//!   digest yields four points, the little-endian `u32`s of its four 4-byte
//!   chunks;
//! - the points are sorted by (value, server index);
//! - a key hashes to the little-endian `u32` of the first four bytes of its
//!   MD5 digest and goes to the first point at or after that hash, wrapping
//!   around to the first point.
//!
//! `tests/fixtures/ketama.txt`, generated from libmemcached itself by
//! `tests/fixtures/gen_ketama_fixture.py`, pins this behaviour.

use md5::{Digest, Md5};

/// libmemcached's `MEMCACHED_DEFAULT_PORT`: servers on this port are hashed
/// without the port in their point names.
const DEFAULT_PORT: u16 = 11211;

/// libmemcached's `MEMCACHED_POINTS_PER_SERVER_KETAMA`: the number of points an
/// average-weight server gets.
const POINTS_PER_SERVER: f32 = 160.0;

/// Each MD5 digest of a point name yields this many points.
const POINTS_PER_HASH: usize = 4;

/// One server of the pool, as far as key distribution is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerSpec {
    /// Host name or IP address, exactly as configured: it is part of the
    /// hashed point names, so `cache-1` and `cache-1.example` give different
    /// rings even if they resolve to the same address.
    pub host: String,
    /// TCP port. 0 is treated as the default port 11211, as libmemcached does.
    pub port: u16,
    /// Relative share of the keys. Should be at least 1; 0 is treated as 1, as
    /// libmemcached does.
    pub weight: u32,
}

/// The ketama continuum for a list of servers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ring {
    /// `(point, server index)`, sorted. The server index is a position in the
    /// slice the ring was built from.
    points: Vec<(u32, u32)>,
    /// Set when exactly one server is live. Every key then goes to it, so the
    /// lookup skips hashing, as libmemcached does for a single server.
    only: Option<usize>,
}

impl Ring {
    /// Builds the ring over all `servers`. An empty slice gives a ring on
    /// which [`Ring::server_for`] always returns `None`.
    pub(crate) fn new(servers: &[ServerSpec]) -> Ring {
        Ring::without(servers, &[])
    }

    /// Builds the ring over the servers whose `excluded` flag is not set
    /// (missing flags count as not excluded), still reporting indices into
    /// `servers`.
    ///
    /// This matches libmemcached's "remove failed servers" (auto-eject) mode:
    /// the ring is recomputed as if only the live servers were configured,
    /// so their count and total weight set the point counts, keys of the
    /// excluded servers spread over the others, and most keys of live servers
    /// stay where they were. With no live server the ring picks nothing.
    pub(crate) fn without(servers: &[ServerSpec], excluded: &[bool]) -> Ring {
        let is_live = |index: usize| !excluded.get(index).copied().unwrap_or(false);
        let live: Vec<(usize, &ServerSpec)> = servers
            .iter()
            .enumerate()
            .filter(|&(index, _)| is_live(index))
            .collect();

        if let [(index, _)] = live.as_slice() {
            return Ring {
                points: Vec::new(),
                only: Some(*index),
            };
        }

        let total_weight: u64 = live
            .iter()
            .map(|(_, s)| u64::from(effective_weight(s)))
            .sum();
        let point_counts: Vec<usize> = live
            .iter()
            .map(|(_, s)| point_count(effective_weight(s), total_weight, live.len()))
            .collect();

        let mut points = Vec::with_capacity(point_counts.iter().sum());
        for (&(index, server), &count) in live.iter().zip(&point_counts) {
            // Server indices fit in u32 in any real pool; a pool too large for
            // that could not be addressed by libmemcached either.
            let Ok(index) = u32::try_from(index) else {
                continue;
            };
            push_server_points(&mut points, server, index, count);
        }
        // Sorting the tuples orders equal points by server index, the same
        // tie-break as libmemcached's continuum comparator, so duplicate points
        // always go to the lower index.
        points.sort_unstable();

        Ring { points, only: None }
    }

    /// Returns the index of the server that holds `key`, or `None` when the
    /// ring has no servers.
    ///
    /// Does not allocate: one MD5 of the key and a binary search.
    pub(crate) fn server_for(&self, key: &[u8]) -> Option<usize> {
        if self.only.is_some() {
            return self.only;
        }
        let &(_, first_server) = self.points.first()?;
        let hash = key_hash(key);
        // First point at or after the hash; past the last point the circle
        // wraps around to the first one.
        let at = self.points.partition_point(|&(point, _)| point < hash);
        let server = self
            .points
            .get(at)
            .map_or(first_server, |&(_, server)| server);
        usize::try_from(server).ok()
    }
}

/// The weight libmemcached uses: it stores a configured weight of 0 as 1.
fn effective_weight(server: &ServerSpec) -> u32 {
    server.weight.max(1)
}

/// Number of points for a server of `weight` among `live` servers weighing
/// `total_weight` together.
///
/// libmemcached computes this in `float`, and the result differs from exact
/// arithmetic when the share lands on an integer: 29/60 * 40 * 3 is 58 but
/// comes out as 57.999996 in `f32`, giving 228 points instead of 232. The
/// operations are therefore done in `f32` and in libmemcached's order. Its
/// `+ 1e-10` guard is kept for fidelity, although in `f32` it only matters
/// for values far below 1.
fn point_count(weight: u32, total_weight: u64, live: usize) -> usize {
    // The lossy integer-to-float casts are the point: they reproduce
    // libmemcached's `(float)` casts.
    let pct = weight as f32 / total_weight as f32;
    let digests = pct * POINTS_PER_SERVER / POINTS_PER_HASH as f32 * live as f32 + 1e-10_f32;
    // `floor` of a small non-negative value; `as` saturates rather than wraps
    // should it ever be out of range.
    digests.floor() as usize * POINTS_PER_HASH
}

/// Appends the `count` points of `server` (at `index`) to `points`.
fn push_server_points(points: &mut Vec<(u32, u32)>, server: &ServerSpec, index: u32, count: usize) {
    // libmemcached names the points "host-i" on the default port and
    // "host:port-i" otherwise; it replaces port 0 by the default port when
    // the server is added.
    let prefix = if server.port == DEFAULT_PORT || server.port == 0 {
        format!("{}-", server.host)
    } else {
        format!("{}:{}-", server.host, server.port)
    };
    let mut digits = [0u8; 20];
    for i in 0..count / POINTS_PER_HASH {
        let digest = Md5::new()
            .chain_update(prefix.as_bytes())
            .chain_update(decimal(i, &mut digits))
            .finalize();
        for chunk in digest.chunks_exact(4) {
            if let Ok(bytes) = <[u8; 4]>::try_from(chunk) {
                points.push((u32::from_le_bytes(bytes), index));
            }
        }
    }
}

/// The hash libmemcached's MD5 key hash gives `key`: the little-endian `u32`
/// of the first four digest bytes.
fn key_hash(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Writes `n` in decimal into `buf` and returns the digits, so building the
/// point names does not allocate a string per point.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        // `n % 10` is a single digit, so the cast cannot truncate.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, port: u16, weight: u32) -> ServerSpec {
        ServerSpec {
            host: host.to_owned(),
            port,
            weight,
        }
    }

    fn three_local() -> Vec<ServerSpec> {
        vec![
            spec("127.0.0.1", 11211, 1),
            spec("127.0.0.1", 11212, 1),
            spec("127.0.0.1", 11213, 1),
        ]
    }

    fn points_per_server(ring: &Ring, servers: usize) -> Vec<usize> {
        let mut counts = vec![0; servers];
        for &(_, server) in &ring.points {
            counts[server as usize] += 1;
        }
        counts
    }

    #[test]
    fn known_keys_on_three_local_servers() {
        let ring = Ring::new(&three_local());
        assert_eq!(ring.server_for(b"foo"), Some(0));
        assert_eq!(ring.server_for(b"bar"), Some(1));
        assert_eq!(ring.server_for(b"baz"), Some(1));
    }

    #[test]
    fn single_server_takes_every_key() {
        let ring = Ring::new(&[spec("cache.example", 11300, 7)]);
        for i in 0..1000 {
            assert_eq!(ring.server_for(format!("key-{i}").as_bytes()), Some(0));
        }
        assert_eq!(ring.server_for(b""), Some(0));
    }

    #[test]
    fn empty_ring_picks_nothing() {
        let ring = Ring::new(&[]);
        assert_eq!(ring.server_for(b"foo"), None);
        let all_down = Ring::without(&three_local(), &[true, true, true]);
        assert_eq!(all_down.server_for(b"foo"), None);
    }

    #[test]
    fn equal_weights_get_160_points_each() {
        let ring = Ring::new(&three_local());
        assert_eq!(points_per_server(&ring, 3), vec![160, 160, 160]);
    }

    #[test]
    fn unequal_weights_get_proportional_points() {
        let servers: Vec<ServerSpec> = (1..=5)
            .map(|w| spec(&format!("cache-{w}.example"), 11211, w))
            .collect();
        let ring = Ring::new(&servers);
        // floor(w / 15 * 40 * 5) * 4
        assert_eq!(points_per_server(&ring, 5), vec![52, 104, 160, 212, 264]);
    }

    #[test]
    fn point_count_uses_single_precision() {
        // 29/60 * 40 * 3 is exactly 58, but libmemcached's float arithmetic
        // gives 57.999996 and thus 228 points (the fixture confirms it).
        assert_eq!(point_count(29, 60, 3), 228);
        assert_eq!(point_count(1, 60, 3), 8);
        assert_eq!(point_count(30, 60, 3), 240);
        // A share too small for a single digest gets no points at all.
        assert_eq!(point_count(1, 101, 2), 0);
    }

    #[test]
    fn zero_weight_counts_as_one() {
        let mut servers = three_local();
        servers[1].weight = 0;
        let ring = Ring::new(&servers);
        assert_eq!(points_per_server(&ring, 3), vec![160, 160, 160]);
    }

    #[test]
    fn without_never_returns_an_excluded_server() {
        let servers: Vec<ServerSpec> = (0..6)
            .map(|i| spec(&format!("10.0.0.{i}"), 11211 + i as u16, 1 + i as u32 % 3))
            .collect();
        let patterns: [&[bool]; 4] = [
            &[true],
            &[false, true, false, true],
            &[true, true, true, true, true, false],
            &[false, false, false, false, false, true],
        ];
        for excluded in patterns {
            let ring = Ring::without(&servers, excluded);
            for i in 0..2000 {
                let key = format!("key-{i}");
                let Some(server) = ring.server_for(key.as_bytes()) else {
                    panic!("no server for {key} with {excluded:?}");
                };
                assert!(
                    !excluded.get(server).copied().unwrap_or(false),
                    "{key} went to excluded server {server} with {excluded:?}"
                );
            }
        }
    }

    #[test]
    fn without_nothing_excluded_is_new() {
        let servers = three_local();
        let full = Ring::new(&servers);
        let same = Ring::without(&servers, &[false, false, false]);
        assert_eq!(full.points, same.points);
    }

    #[test]
    fn decimal_formats_like_display() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 39, 123_456, usize::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    /// Parses `host:port:weight`; the host may itself contain ':' (IPv6).
    fn parse_server(entry: &str) -> ServerSpec {
        let mut parts = entry.rsplitn(3, ':');
        let weight = parts.next().and_then(|w| w.parse().ok());
        let port = parts.next().and_then(|p| p.parse().ok());
        let host = parts.next();
        match (host, port, weight) {
            (Some(host), Some(port), Some(weight)) => spec(host, port, weight),
            _ => panic!("bad server entry {entry:?} in fixture"),
        }
    }

    fn parse_hex(hex: &str) -> Vec<u8> {
        let pairs = hex.as_bytes().chunks_exact(2);
        assert!(
            pairs.remainder().is_empty(),
            "odd-length hex key {hex:?} in fixture"
        );
        pairs
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|digits| u8::from_str_radix(digits, 16).ok())
                    .unwrap_or_else(|| panic!("bad hex key {hex:?} in fixture"))
            })
            .collect()
    }

    /// Every mapping libmemcached computed (see
    /// `tests/fixtures/gen_ketama_fixture.py` for the format) must come out the
    /// same here.
    #[test]
    fn matches_libmemcached_fixture() {
        let fixture = include_str!("../../../tests/fixtures/ketama.txt");
        let mut servers: Vec<ServerSpec> = Vec::new();
        let mut excluded: Vec<bool> = Vec::new();
        let mut ring: Option<Ring> = None;
        let mut checked = 0;
        let mut sets = 0;
        for (number, line) in fixture.lines().enumerate() {
            let number = number + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(list) = line.strip_prefix("servers ") {
                servers = list.split(',').map(parse_server).collect();
                excluded = vec![false; servers.len()];
                ring = None;
                sets += 1;
                continue;
            }
            if let Some(list) = line.strip_prefix("excluded ") {
                for index in list.split(',') {
                    let index: usize = index.parse().expect("excluded index");
                    excluded[index] = true;
                }
                ring = None;
                continue;
            }
            let (hex, expected) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("line {number}: not a key line: {line:?}"));
            let expected: usize = expected.parse().expect("server index");
            let key = parse_hex(hex);
            let ring = ring.get_or_insert_with(|| Ring::without(&servers, &excluded));
            let got = ring.server_for(&key);
            assert_eq!(
                got,
                Some(expected),
                "fixture line {number}: key {:?} (hex {hex}) on servers {servers:?} \
                 excluding {excluded:?}: libmemcached picked {expected}, ring picked {got:?}",
                String::from_utf8_lossy(&key),
            );
            checked += 1;
        }
        assert!(
            sets >= 8 && checked >= 3000,
            "fixture too small: {sets} sets, {checked} keys"
        );
    }
}
