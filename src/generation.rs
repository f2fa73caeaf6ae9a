//! Generation stamps: the values that namespace, tag and store-epoch generations take, for
//! the cache layer and for `MemcacheClient`'s versioned namespaces alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A number no earlier call in any process is likely to have produced: the clock in
/// nanoseconds, strictly increasing within this process (two calls in one clock tick still
/// differ). Never a counter: a generation memcached evicted and wrote afresh must not
/// equal the one it replaces.
pub(crate) fn unique() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(now);
    now.max(previous.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::unique;

    #[test]
    fn stamps_increase_strictly_even_within_one_clock_tick() {
        let stamps: Vec<u64> = (0..10_000).map(|_| unique()).collect();
        assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
