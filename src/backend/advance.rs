//! A value every server holds (a generation, a purge time) advanced as a max-register:
//! what [`Backend::advance_on_every_server`] writes, and its default for a single store.

use std::time::Duration;

use bytes::Bytes;

use super::{Backend, BackendError, CasOutcome, Item, Lifetime};

/// What [`Backend::advance_on_every_server`] left in the key.
///
/// ```
/// use tower_memcache::backend::{Advanced, Backend, Lifetime, MemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_memcache::backend::BackendError> {
/// let backend = MemoryBackend::new();
/// let first = backend.advance_on_every_server("generation", 100, Lifetime::NEVER).await?;
/// assert_eq!((first.value, first.absorbed), (100, None));
/// // A stamp below the value held (a clock set back): the value still moves on.
/// let second = backend.advance_on_every_server("generation", 40, Lifetime::NEVER).await?;
/// assert_eq!((second.value, second.absorbed), (101, Some(100)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Advanced {
    /// The key's value for this advance: the one it wrote (the stamp, or what the server
    /// held plus one), or one at least the stamp that another writer put there while it
    /// tried. Over several servers, the highest.
    pub value: u64,
    /// The highest value written by others that `value` stands for too, on any server:
    /// the decimal number the advance replaced, or the one another writer put there in
    /// its stead. `None` when there was none (absent keys, and values that are no
    /// decimal number).
    pub absorbed: Option<u64>,
}

impl Advanced {
    /// The outcome of an advance, for backends that implement
    /// [`Backend::advance_on_every_server`] themselves.
    ///
    /// ```
    /// use tower_memcache::backend::Advanced;
    ///
    /// let advanced = Advanced::new(301, Some(300));
    /// assert_eq!((advanced.value, advanced.absorbed), (301, Some(300)));
    /// ```
    pub fn new(value: u64, absorbed: Option<u64>) -> Self {
        Self { value, absorbed }
    }

    /// The outcome over two servers: the highest of each.
    pub(crate) fn merge(self, other: Self) -> Self {
        Self {
            value: self.value.max(other.value),
            absorbed: self.absorbed.max(other.absorbed),
        }
    }
}

/// Rounds of read and conditional write one server gets (each lost to another writer)
/// before the advance there gives up with [`BackendError::Contended`]. With
/// [`Advance::back_off`]'s random waits, concurrent advances land in a random order, and each
/// round's winner settles every advance of a lower stamp: a burst of N advances needs
/// about ln N rounds.
pub(crate) const ADVANCE_ROUNDS: usize = 16;

/// The write one round of an advance makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// The key is absent.
    Add,
    /// Over the item read, by its CAS value.
    Cas(u64),
    /// Over an item read with no CAS value (memcached run with `-C`).
    Set,
}

/// What a round does, given what it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Writes `advanced.value` so, or (lost to another writer) reads again.
    Write(Write, Advanced),
    /// Another writer moved the key past the stamp since the first read: nothing to do.
    Done(Advanced),
}

/// One advance of a key on one server, round by round.
pub(crate) struct Advance {
    stamp: u64,
    /// What the first round read (`None` inside: absent), once it has.
    first: Option<Option<Bytes>>,
}

impl Advance {
    pub(crate) fn new(stamp: u64) -> Self {
        Self { stamp, first: None }
    }

    /// The round's write over `read` (what its `gets` found).
    pub(crate) fn plan(&mut self, read: Option<&Item>) -> Plan {
        let current = read.and_then(|item| counter(&item.value));
        match &self.first {
            None => self.first = Some(read.map(|item| item.value.clone())),
            // Lost a round: a value past the stamp, written since the first read (so
            // another than any value read before this advance began), holds this
            // advance's stamp as its own write would.
            Some(first) => {
                let changed = first.as_ref() != read.map(|item| &item.value);
                if let Some(current) = current.filter(|&c| changed && c >= self.stamp) {
                    return Plan::Done(Advanced {
                        value: current,
                        absorbed: Some(current),
                    });
                }
            }
        }
        let advanced = Advanced {
            value: next_value(self.stamp, current),
            absorbed: current,
        };
        let write = match read {
            None => Write::Add,
            // memcached numbers CAS values from 1; 0 (or none) is a store without them.
            Some(item) => item
                .cas
                .filter(|&cas| cas != 0)
                .map_or(Write::Set, Write::Cas),
        };
        Plan::Write(write, advanced)
    }

    /// Waits before round `round` (from 1) reads again after losing one: a random time
    /// (a hash of the stamp and the round) of up to 2^round ms, at most 32, so that
    /// advances that lost together do not read and write again together, in the same
    /// order, each round settling only the lowest stamp.
    pub(crate) async fn back_off(&self, round: usize) {
        let span_us = 1_000_u64 << round.clamp(1, 5);
        let mut hash = self.stamp ^ (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // splitmix64's finalizer.
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^= hash >> 31;
        tokio::time::sleep(Duration::from_micros(hash % span_us)).await;
    }
}

/// A value as the advance reads it: a decimal `u64` (ASCII digits, then nothing but the
/// spaces `incr` pads with), or `None` (then overwritten with the stamp, as if absent).
/// `u64::MAX` has no successor, so is read as no number too.
pub(crate) fn counter(value: &[u8]) -> Option<u64> {
    // memcached writes a shorter `incr` result in place, padded with spaces, unless
    // another connection still holds the item (then it stores it unpadded): one number
    // either way, so that the advance does not depend on that race (review TW).
    let end = value.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    let value = &value[..end];
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let parsed = value.iter().try_fold(0_u64, |number, digit| {
        number.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    (parsed != u64::MAX).then_some(parsed)
}

/// What a server holding `current` takes: the larger of the stamp and `current + 1`, so
/// that the value always changes (generations are compared by equality) and never goes
/// below the stamp of a write that returned.
pub(crate) fn next_value(stamp: u64, current: Option<u64>) -> u64 {
    current.map_or(stamp, |current| stamp.max(current.saturating_add(1)))
}

/// The encoded value.
pub(crate) fn encoded(value: u64) -> Bytes {
    Bytes::from(value.to_string())
}

/// [`Backend::advance_on_every_server`]'s default, for a single store: rounds of
/// [`get`](Backend::get) and the write [`Advance::plan`] says ([`add`](Backend::add),
/// [`cas`](Backend::cas), or [`set`](Backend::set) over an item with no CAS value).
pub(crate) async fn on_one_store<B: Backend>(
    backend: &B,
    key: &str,
    stamp: u64,
    lifetime: Lifetime,
) -> Result<Advanced, BackendError> {
    let mut advance = Advance::new(stamp);
    for round in 0..ADVANCE_ROUNDS {
        if round > 0 {
            advance.back_off(round).await;
        }
        let read = backend.get(key).await?;
        let (write, advanced) = match advance.plan(read.as_ref()) {
            Plan::Done(advanced) => return Ok(advanced),
            Plan::Write(write, advanced) => (write, advanced),
        };
        let value = encoded(advanced.value);
        let took = match write {
            Write::Add => backend.add(key, value, 0, lifetime).await?,
            Write::Cas(cas) => {
                backend.cas(key, value, 0, lifetime, cas).await? == CasOutcome::Stored
            }
            Write::Set => {
                backend.set(key, value, 0, lifetime).await?;
                true
            }
        };
        if took {
            return Ok(advanced);
        }
    }
    Err(contended(key))
}

/// The error of a server on which every round of the advance lost to another writer.
pub(crate) fn contended(key: &str) -> BackendError {
    BackendError::Contended {
        key: super::truncate_for_message(key),
        rounds: ADVANCE_ROUNDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    #[test]
    fn counters_are_plain_decimal_numbers_below_the_largest() {
        assert_eq!(counter(b"0"), Some(0));
        assert_eq!(
            counter(b"1765000000000000000"),
            Some(1_765_000_000_000_000_000)
        );
        assert_eq!(counter(b"18446744073709551614"), Some(u64::MAX - 1));
        assert_eq!(counter(b"100 "), Some(100), "padded by incr");
        for bytes in [
            &b""[..],
            b"18446744073709551615",
            b"18446744073709551616",
            b"123c",
            b" 12",
            b"-1",
            b"+1",
            b" ",
            b"1 2",
        ] {
            assert_eq!(counter(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn the_next_value_always_changes_and_never_goes_below_the_stamp() {
        assert_eq!(next_value(10, None), 10);
        assert_eq!(next_value(10, Some(3)), 10);
        assert_eq!(next_value(10, Some(10)), 11);
        assert_eq!(next_value(10, Some(40)), 41);
    }

    #[tokio::test]
    async fn the_default_creates_advances_and_overwrites_what_is_no_number() {
        let backend = MemoryBackend::new();
        let at = |value, absorbed| Advanced { value, absorbed };
        let advance = |stamp| backend.advance_on_every_server("g", stamp, Lifetime::NEVER);
        assert_eq!(advance(50).await.unwrap(), at(50, None));
        assert_eq!(advance(70).await.unwrap(), at(70, Some(50)));
        assert_eq!(advance(60).await.unwrap(), at(71, Some(70)));
        backend
            .set("g", "123c".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!(advance(5).await.unwrap(), at(5, None));
        assert_eq!(&backend.peek("g").unwrap().value[..], b"5");
    }

    fn item(value: &'static str, cas: Option<u64>) -> Item {
        Item {
            value: Bytes::from_static(value.as_bytes()),
            flags: 0,
            cas,
        }
    }

    #[test]
    fn a_round_lost_to_a_write_past_the_stamp_settles_the_advance() {
        let mut advance = Advance::new(50);
        let write = |value, absorbed, write| Plan::Write(write, Advanced { value, absorbed });
        assert_eq!(advance.plan(None), write(50, None, Write::Add));
        // Lost to an add of a lower stamp: again over it.
        let lower = item("40", Some(3));
        assert_eq!(
            advance.plan(Some(&lower)),
            write(50, Some(40), Write::Cas(3))
        );
        // Lost to a write past the stamp: that holds it.
        let higher = item("60", Some(4));
        let done = Advanced {
            value: 60,
            absorbed: Some(60),
        };
        assert_eq!(advance.plan(Some(&higher)), Plan::Done(done));

        // A value past the stamp read first is no write since: it is moved on.
        let mut advance = Advance::new(50);
        assert_eq!(
            advance.plan(Some(&higher)),
            write(61, Some(60), Write::Cas(4))
        );
        let same = item("60", Some(9));
        assert_eq!(
            advance.plan(Some(&same)),
            write(61, Some(60), Write::Cas(9))
        );
        let without_cas = item("60", Some(0));
        assert_eq!(
            advance.plan(Some(&without_cas)),
            write(61, Some(60), Write::Set)
        );
    }
}
