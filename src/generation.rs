//! Generation stamps: the values that namespace, tag and store-epoch generations take, for
//! the cache layer and for `MemcacheClient`'s versioned namespaces alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The last stamp given in this process.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A clock further behind the last stamp than this (in nanoseconds: the second of clock
/// skew the cache tolerates between processes) was set back, not read twice in one tick.
const SET_BACK: u64 = 1_000_000_000;

/// A number no earlier call in any process is likely to have produced: the clock in
/// nanoseconds, strictly increasing within this process (two calls in one clock tick still
/// differ) while the clock is not set back. Never a counter: a generation memcached
/// evicted and wrote afresh must not equal the one it replaces.
///
/// Tag purge times are such stamps, compared with other processes' clocks: after the
/// clock was set back (it ran ahead, an NTP step or an operator set it right), stamps
/// taken on from the last one stayed as far ahead as it had run, and every tag this
/// process purged meanwhile had its pages refused by every store (a purge "after" their
/// requests) until the clock caught up. They start again from the clock instead: a fill
/// whose request went out before the step is not compared with them (`Storage::store`).
pub(crate) fn unique() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(next(now, last))
        })
        .unwrap_or(now);
    next(now, previous)
}

/// The stamp after `last` when the clock reads `now`.
fn next(now: u64, last: u64) -> u64 {
    if last > now.saturating_add(SET_BACK) {
        now
    } else {
        now.max(last.saturating_add(1))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// As if this process's clock had run `ahead` of the right time, given stamps then, and
    /// been set right since (an NTP step, an operator): the last stamp is that far ahead.
    pub(crate) fn clock_set_back(ahead: Duration) {
        let ran = SystemTime::now() + ahead;
        let ran = u64::try_from(ran.duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap();
        super::LAST.fetch_max(ran, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{next, unique};

    #[test]
    fn stamps_increase_strictly_even_within_one_clock_tick() {
        let stamps: Vec<u64> = (0..10_000).map(|_| unique()).collect();
        assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]));
    }

    /// Review SL: a clock set back by more than the tolerated skew gives stamps from its
    /// time again; within it (a tick, a small step), stamps still increase.
    #[test]
    fn stamps_follow_a_clock_set_back_past_the_tolerated_skew() {
        let now = 1_800_000_000_000_000_000;
        assert_eq!(next(now, now + 3_600_000_000_000), now);
        assert_eq!(next(now, now + 500_000_000), now + 500_000_001);
        assert_eq!(next(now, now), now + 1);
        assert_eq!(next(now, now - 5), now);
    }
}
