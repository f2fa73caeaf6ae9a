//! Counters of what the cache layer did, kept with a few relaxed atomic adds per request,
//! and a plain snapshot to read them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every clone of a layer and its services.
///
/// ```
/// use tower_memcache::MemcacheLayer;
/// use tower_memcache::backend::MemoryBackend;
///
/// let layer = MemcacheLayer::new(MemoryBackend::new());
/// let stats = layer.stats();
/// let snapshot = stats.snapshot();
/// assert_eq!((snapshot.hits, snapshot.misses), (0, 0));
/// assert_eq!(snapshot.hit_ratio(), 0.0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CacheStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stores: AtomicU64,
    store_failures: AtomicU64,
    backend_errors: AtomicU64,
    coalesced: AtomicU64,
    bytes_served: AtomicU64,
    stale: AtomicU64,
    revalidations: AtomicU64,
    invalidations: AtomicU64,
}

/// A point-in-time copy of [`CacheStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests answered from the cache.
    pub hits: u64,
    /// Cacheable requests that were not in the cache (or could not be looked up).
    pub misses: u64,
    /// Requests the cache did not handle (method, route rule, request directives).
    pub bypasses: u64,
    /// Entries written to the backend.
    pub stores: u64,
    /// Entries the backend refused or failed to write.
    pub store_failures: u64,
    /// Backend operations that failed or timed out: lookups (each one became a miss), and
    /// also stores, leases and purges (a failed store counts here and in
    /// `store_failures`).
    pub backend_errors: u64,
    /// Requests that waited for another request's response to the same key.
    pub coalesced: u64,
    /// Body bytes sent from the cache.
    pub bytes_served: u64,
    /// Hits answered with a stale response (`stale-while-revalidate`, `stale-if-error`,
    /// `max-stale`); also counted in `hits`.
    pub stale: u64,
    /// Conditional requests the layer sent to revalidate a stored response.
    pub revalidations: u64,
    /// URIs, tags and namespaces invalidated (unsafe methods and purges).
    pub invalidations: u64,
}

impl StatsSnapshot {
    /// Hits divided by hits plus misses; 0 when there were neither.
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

macro_rules! recorders {
    ($($(#[$doc:meta])* $name:ident => $field:ident),* $(,)?) => {$(
        $(#[$doc])*
        pub(crate) fn $name(&self) {
            self.inner.$field.fetch_add(1, Ordering::Relaxed);
        }
    )*};
}

impl CacheStats {
    recorders! {
        /// Counts a cacheable request that missed.
        record_miss => misses,
        /// Counts a request the cache did not handle.
        record_bypass => bypasses,
        /// Counts an entry written.
        record_store => stores,
        /// Counts an entry the backend did not take.
        record_store_failure => store_failures,
        /// Counts a failed or timed-out backend operation.
        record_backend_error => backend_errors,
        /// Counts a request that waited for another's response.
        record_coalesced => coalesced,
        /// Counts a stale response served (also count the hit).
        record_stale => stale,
        /// Counts a conditional request sent to revalidate.
        record_revalidation => revalidations,
        /// Counts an invalidation.
        record_invalidation => invalidations,
    }

    /// Counts a hit that sent `body_bytes` from the cache.
    pub(crate) fn record_hit(&self, body_bytes: usize) {
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
        self.inner
            .bytes_served
            .fetch_add(body_bytes as u64, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.inner;
        StatsSnapshot {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            bypasses: c.bypasses.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            store_failures: c.store_failures.load(Ordering::Relaxed),
            backend_errors: c.backend_errors.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            bytes_served: c.bytes_served.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            revalidations: c.revalidations.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_the_hit_ratio() {
        let stats = CacheStats::default();
        stats.record_hit(1024);
        stats.record_miss();
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.hits, 1);
        assert_eq!(snapshot.bytes_served, 1024);
        assert_eq!(snapshot.hit_ratio(), 0.5);
    }
}
