//! Counters of what the cache layer did, kept with a few relaxed atomic adds per request,
//! and a plain snapshot to read them. With the `metrics` feature the same events also go
//! to the [`metrics`](https://docs.rs/metrics) facade (see [`METRIC_NAMES`]).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    shards: [Shard; SHARDS],
    #[cfg(feature = "metrics")]
    exported: exported::Exported,
}

/// Shards of the counters. Each thread adds to one of its own (threads take them in turn),
/// so that threads answering hits at once do not pass one cache line back and forth with
/// every add (measured: a few percent of a near-tier hit's CPU on two cores); a snapshot
/// sums them.
const SHARDS: usize = 8;

/// One shard, on cache lines of its own (128 bytes: a pair of 64-byte lines, which some
/// processors fetch together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
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
    near_hits: AtomicU64,
    mismatched_not_modified: AtomicU64,
    stood_in: AtomicU64,
}

/// The shard this thread counts into.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

/// A point-in-time copy of [`CacheStats`].
///
/// Each request the layer saw counts once in `hits`, `misses` or `bypasses` (so their sum
/// is the requests, and [`hit_ratio`](Self::hit_ratio) their share answered from the
/// cache); the other counters overlap them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests answered from the cache: fresh, stale (see `stale`), a 304 to the client's
    /// own conditions, a range of the entry, a wait for another request's response, and
    /// a stored response the origin validated (its 304 to the layer's validators).
    pub hits: u64,
    /// Cacheable requests the origin answered: nothing usable stored, a revalidation the
    /// origin answered itself (a new 200, an error, a 304 to the client's own
    /// conditions), a lookup that failed; also an `only-if-cached` request answered 504.
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
    /// Requests that waited for another request's response to the same key, in this
    /// process or (a placeholder in memcached) in another; each once, however it ended.
    pub coalesced: u64,
    /// Body bytes sent from the cache.
    pub bytes_served: u64,
    /// Hits answered with a stale response (`stale-while-revalidate`, `stale-if-error`,
    /// `max-stale`); also counted in `hits`. A response the origin has just validated is
    /// not stale, whatever its lifetime.
    pub stale: u64,
    /// Conditional requests the layer sent to revalidate a stored response. A client's
    /// also counts as a hit (the origin validated the stored response, or it stood in for
    /// a failed origin) or a miss (the origin answered); a background refresh (after a
    /// `stale-while-revalidate` hit) counts here alone.
    pub revalidations: u64,
    /// URIs, tags and namespaces invalidated (unsafe methods and purges).
    pub invalidations: u64,
    /// Hits answered from the near tier, without asking the backend; also counted in
    /// `hits`.
    pub near_hits: u64,
    /// Revalidations the origin answered with a 304 naming another representation than
    /// the stored one (another strong `ETag`, another `Last-Modified`: RFC 9111 §4.3.4).
    /// The stored response was removed, and a client's request sent again without the
    /// layer's validators. Many of them point at an origin whose servers disagree (a
    /// deploy in progress behind a load balancer) or that stamps new validators on 304s.
    pub mismatched_not_modified: u64,
    /// Requests a stored response answered after the origin failed their revalidation
    /// (`stale-if-error`, `stale_if_unreachable`, or a response stored meanwhile:
    /// `Cache-Status: …; fwd=…; detail=stale-if-error` and the like, no hit by RFC 9211
    /// §2.1); also counted in `hits` (answered from the cache; the stale ones in `stale`
    /// too) and `revalidations`. Many of them mean the origin is failing, though the hit
    /// ratio holds.
    pub stood_in: u64,
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
            self.shard().$field.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            self.inner.exported.handles().$field.increment(1);
        }
    )*};
}

impl CacheStats {
    fn shard(&self) -> &Shard {
        &self.inner.shards[thread_shard()]
    }

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
        /// Counts a conditional request sent to revalidate.
        record_revalidation => revalidations,
        /// Counts an invalidation.
        record_invalidation => invalidations,
        /// Counts a hit answered from the near tier (its `hits` is counted as any hit's).
        record_near_hit => near_hits,
        /// Counts a 304 for another representation than the stored one.
        record_mismatched_not_modified => mismatched_not_modified,
        /// Counts a stored response standing in for a failing origin (its hit is counted
        /// as any answer's from the cache).
        record_stood_in => stood_in,
    }

    /// Counts a hit that sent `body_bytes` from the cache; `stale`: a stale response
    /// (counted in `hits` and in `stale`).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn record_hit(&self, body_bytes: usize, stale: bool) {
        let bytes = self.count_served(body_bytes, stale);
        #[cfg(feature = "metrics")]
        {
            let handles = self.inner.exported.handles();
            // The outcomes are exclusive: a stale hit is not also a `hit`.
            if stale {
                handles.stale.increment(1);
            } else {
                handles.hits.increment(1);
            }
            handles.bytes_served.increment(bytes);
        }
    }

    /// Counts what a request answered from the cache after its revalidation (a 304, or a
    /// stale response standing in for a failed origin): a hit in the snapshot, as any
    /// answer from the cache, but not a second outcome in `tower_memcache_requests_total`,
    /// where the request already counts as `revalidate`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn record_served(&self, body_bytes: usize, stale: bool) {
        let bytes = self.count_served(body_bytes, stale);
        #[cfg(feature = "metrics")]
        self.inner.exported.handles().bytes_served.increment(bytes);
    }

    /// The snapshot's side of an answer from the cache: a hit (and a stale one), and its
    /// body bytes, which it returns.
    fn count_served(&self, body_bytes: usize, stale: bool) -> u64 {
        let bytes = u64::try_from(body_bytes).unwrap_or(u64::MAX);
        let shard = self.shard();
        shard.hits.fetch_add(1, Ordering::Relaxed);
        shard.bytes_served.fetch_add(bytes, Ordering::Relaxed);
        if stale {
            shard.stale.fetch_add(1, Ordering::Relaxed);
        }
        bytes
    }

    /// Counts, in the snapshot's `misses`, a client's revalidation that the cache did not
    /// answer (the origin's 200, its error, a 304 to the client's own conditions): the
    /// origin answered it, as it answers a miss. `tower_memcache_requests_total` counted
    /// it already, as `revalidate`. Without it, the snapshot's buckets did not add up to
    /// the requests, and `hit_ratio` left out every such request.
    pub(crate) fn record_revalidation_miss(&self) {
        self.shard().misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a conditional request the layer sent on its own (a background refresh) for a
    /// request already counted: in the snapshot's `revalidations`, in no request outcome.
    pub(crate) fn record_background_revalidation(&self) {
        self.shard().revalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Labels this layer's metrics with `namespace="…"` (the `metrics` feature); without a
    /// call, or with an empty namespace, they carry no such label. Only counts made after
    /// the call carry it: the layer calls it while it is being built.
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
    pub(crate) fn label_namespace(&self, namespace: &str) {
        #[cfg(feature = "metrics")]
        self.inner.exported.set_namespace(namespace);
        #[cfg(not(feature = "metrics"))]
        let _ = namespace;
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let sum = |field: fn(&Shard) -> &AtomicU64| {
            self.inner
                .shards
                .iter()
                .map(|shard| field(shard).load(Ordering::Relaxed))
                .fold(0, u64::wrapping_add)
        };
        StatsSnapshot {
            hits: sum(|c| &c.hits),
            misses: sum(|c| &c.misses),
            bypasses: sum(|c| &c.bypasses),
            stores: sum(|c| &c.stores),
            store_failures: sum(|c| &c.store_failures),
            backend_errors: sum(|c| &c.backend_errors),
            coalesced: sum(|c| &c.coalesced),
            bytes_served: sum(|c| &c.bytes_served),
            stale: sum(|c| &c.stale),
            revalidations: sum(|c| &c.revalidations),
            invalidations: sum(|c| &c.invalidations),
            near_hits: sum(|c| &c.near_hits),
            mismatched_not_modified: sum(|c| &c.mismatched_not_modified),
            stood_in: sum(|c| &c.stood_in),
        }
    }
}

/// The names of the metrics the layer and the TCP backend emit with the `metrics` feature,
/// with their labels, in Prometheus' conventions (units in names, `_total` for counters).
///
/// Every metric of the layer carries `namespace="…"` when the layer has a namespace
/// ([`MemcacheLayer::namespace`](crate::MemcacheLayer::namespace)). They are registered
/// with the recorder installed when the layer (or the backend's server) first counts
/// something: install yours (`metrics::set_global_recorder`, or an exporter's `install`)
/// before the first request.
///
/// ```
/// use tower_memcache::cache::METRIC_NAMES;
///
/// assert!(METRIC_NAMES.iter().any(|(name, _)| *name == "tower_memcache_requests_total"));
/// ```
pub const METRIC_NAMES: &[(&str, &str)] = &[
    (
        "tower_memcache_requests_total",
        "counter; one outcome per request: outcome=\"hit\" (fresh), \"stale\" (a stale response served), \"miss\", \"revalidate\" (its stored response revalidated with the origin, whatever the answer), \"bypass\" (not handled by the cache); the layer's own background requests are not counted",
    ),
    (
        "tower_memcache_coalesced_requests_total",
        "counter; requests that waited for another's response to the same key, in this process or (its placeholder) in another; each once, and each also ends as one of the outcomes above",
    ),
    (
        "tower_memcache_near_hits_total",
        "counter; hits answered from the near tier without asking the backend (each also counted as outcome=\"hit\" above)",
    ),
    (
        "tower_memcache_mismatched_not_modified_total",
        "counter; revalidations answered with a 304 for another representation than the stored one (RFC 9111 §4.3.4): the stored response removed, a client's request sent again",
    ),
    (
        "tower_memcache_stood_in_total",
        "counter; requests a stored response answered after the origin failed their revalidation (stale-if-error, stale_if_unreachable, or a response stored meanwhile; each also counted as outcome=\"revalidate\" above)",
    ),
    ("tower_memcache_stores_total", "counter; entries written"),
    (
        "tower_memcache_store_failures_total",
        "counter; entries the backend refused or failed to write",
    ),
    (
        "tower_memcache_invalidations_total",
        "counter; URIs, tags and namespaces invalidated",
    ),
    (
        "tower_memcache_backend_errors_total",
        "counter; backend operations of the layer that failed or timed out",
    ),
    (
        "tower_memcache_bytes_served_total",
        "counter; body bytes sent from the cache",
    ),
    (
        "tower_memcache_backend_request_duration_seconds",
        "histogram; server=\"host:port\": one TCP backend request, sent to answered or failed",
    ),
    (
        "tower_memcache_backend_server_up",
        "gauge; server=\"host:port\": 1 while the TCP backend uses the server, 0 while it is marked down",
    ),
    (
        "tower_memcache_memcached_evictions_total",
        "counter; server=\"host:port\": items memcached evicted to make room (its `evictions` stat, added up as read by `record_backend_gauges`: it goes on counting when a server restarts and its stat starts again at 0)",
    ),
    (
        "tower_memcache_memcached_items",
        "gauge; server=\"host:port\": items held (`curr_items`), as last read",
    ),
    (
        "tower_memcache_memcached_bytes",
        "gauge; server=\"host:port\": bytes held (`bytes`), as last read",
    ),
    (
        "tower_memcache_memcached_limit_bytes",
        "gauge; server=\"host:port\": the memory memcached may use (`limit_maxbytes`, its -m)",
    ),
    (
        "tower_memcache_near_cache_bytes",
        "gauge; bytes held by the near tier, as last read by `record_backend_gauges`",
    ),
    (
        "tower_memcache_near_cache_entries",
        "gauge; URLs held by the near tier, as last read",
    ),
];

/// Sets the gauges that are read rather than counted (the `metrics` feature): each
/// memcached server's evictions, items and bytes from its `stats`, and the near tier's
/// size. Call it every few seconds (or when scraped) with what
/// [`Backend::stats`](crate::backend::Backend::stats) returned; the proxy does every 10 s.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use tower_memcache::backend::ServerStats;
/// use tower_memcache::cache::{NearCache, record_backend_gauges};
///
/// let stats = ServerStats {
///     server: "127.0.0.1:11211".into(),
///     stats: HashMap::from([("evictions".to_string(), "12".to_string())]),
/// };
/// let near = NearCache::new(1 << 20, Duration::from_secs(1));
/// record_backend_gauges(&[stats], Some(&near));
/// ```
#[cfg(feature = "metrics")]
pub fn record_backend_gauges(
    servers: &[crate::backend::ServerStats],
    near: Option<&super::NearCache>,
) {
    for server in servers {
        let labels = [("server", server.server.clone())];
        if let Some(evictions) = server.get_u64("evictions") {
            // When the process started (see `evictions_since_last_read`).
            let started = server
                .get_u64("time")
                .zip(server.get_u64("uptime"))
                .and_then(|(time, uptime)| time.checked_sub(uptime));
            let since = evictions_since_last_read(&server.server, evictions, started);
            metrics::counter!("tower_memcache_memcached_evictions_total", &labels).increment(since);
        }
        let gauges = [
            ("curr_items", "tower_memcache_memcached_items"),
            ("bytes", "tower_memcache_memcached_bytes"),
            ("limit_maxbytes", "tower_memcache_memcached_limit_bytes"),
        ];
        for (stat, name) in gauges {
            if let Some(value) = server.get_u64(stat) {
                // Gauges are f64: exact to 2^53 bytes, far beyond any memcached.
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(name, &labels).set(value as f64);
            }
        }
    }
    if let Some(near) = near {
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!("tower_memcache_near_cache_bytes").set(near.weight() as f64);
            metrics::gauge!("tower_memcache_near_cache_entries").set(near.entries() as f64);
        }
    }
}

/// What `server` evicted since its last read: memcached's `evictions` counts from the
/// server's start. Not given to the counter as its absolute value: the recorder keeps the
/// larger of the old and the new (a counter only grows), so after a restart (the stat back
/// at 0) the series stood still until the new process had evicted as much as the old one.
/// By server name for the process, as the series is: two callers reading one server add
/// each eviction once.
///
/// A restart is told by the process's start (`time` - `uptime`, `started`), not by a
/// smaller count: reads arrive out of order (two scrapes at once, the older answer
/// recorded last), and an older read taken for a restart added the whole count again; a
/// new process that had evicted more than the old one by the next read was counted by
/// the difference. A read older than the last adds nothing. Without a start (a server
/// that reports none), a count under the last read is taken for a restart, as before.
#[cfg(feature = "metrics")]
fn evictions_since_last_read(server: &str, evictions: u64, started: Option<u64>) -> u64 {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    /// A start one second off is the same process: `time` and `uptime` are whole
    /// seconds, which another implementation may read a tick apart.
    const SAME_START: u64 = 1;
    /// Per server: its process's start, when known, and the highest count read of it.
    type Reads = HashMap<String, (Option<u64>, u64)>;
    static LAST: OnceLock<Mutex<Reads>> = OnceLock::new();
    let mut last = LAST
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some((last_started, before)) = last.get_mut(server) else {
        // First read: the server's whole count, as before.
        last.insert(server.to_string(), (started, evictions));
        return evictions;
    };
    let restarted = match (started, *last_started) {
        (Some(now), Some(then)) => now.abs_diff(then) > SAME_START,
        _ => evictions < *before,
    };
    if restarted {
        (*last_started, *before) = (started, evictions);
        return evictions;
    }
    if started.is_some() {
        *last_started = started;
    }
    let since = evictions.saturating_sub(*before);
    *before = (*before).max(evictions);
    since
}

#[cfg(feature = "metrics")]
mod exported {
    //! The layer's handles into the `metrics` recorder, registered once (the first count)
    //! so that a request costs an atomic load and the recorder's own increments, with no
    //! key building or allocation.

    use std::sync::{Mutex, OnceLock};

    use metrics::{Counter, Label, counter};

    #[derive(Debug, Default)]
    pub(super) struct Exported {
        namespace: Mutex<Option<String>>,
        handles: OnceLock<Handles>,
    }

    #[derive(Debug)]
    pub(super) struct Handles {
        pub(super) hits: Counter,
        pub(super) stale: Counter,
        pub(super) misses: Counter,
        pub(super) revalidations: Counter,
        pub(super) bypasses: Counter,
        pub(super) coalesced: Counter,
        pub(super) stores: Counter,
        pub(super) store_failures: Counter,
        pub(super) invalidations: Counter,
        pub(super) near_hits: Counter,
        pub(super) mismatched_not_modified: Counter,
        pub(super) stood_in: Counter,
        pub(super) backend_errors: Counter,
        pub(super) bytes_served: Counter,
    }

    impl Exported {
        pub(super) fn set_namespace(&self, namespace: &str) {
            let mut slot = self.namespace.lock().unwrap_or_else(|p| p.into_inner());
            *slot = (!namespace.is_empty()).then(|| namespace.to_string());
        }

        pub(super) fn handles(&self) -> &Handles {
            self.handles.get_or_init(|| {
                let namespace = self
                    .namespace
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let base: Vec<Label> = namespace
                    .map(|ns| Label::new("namespace", ns))
                    .into_iter()
                    .collect();
                let outcome = |value: &'static str| {
                    let mut labels = base.clone();
                    labels.push(Label::new("outcome", value));
                    counter!("tower_memcache_requests_total", labels)
                };
                let plain = |name: &'static str| counter!(name, base.clone());
                Handles {
                    hits: outcome("hit"),
                    stale: outcome("stale"),
                    misses: outcome("miss"),
                    revalidations: outcome("revalidate"),
                    bypasses: outcome("bypass"),
                    coalesced: plain("tower_memcache_coalesced_requests_total"),
                    stores: plain("tower_memcache_stores_total"),
                    store_failures: plain("tower_memcache_store_failures_total"),
                    invalidations: plain("tower_memcache_invalidations_total"),
                    near_hits: plain("tower_memcache_near_hits_total"),
                    mismatched_not_modified: plain("tower_memcache_mismatched_not_modified_total"),
                    stood_in: plain("tower_memcache_stood_in_total"),
                    backend_errors: plain("tower_memcache_backend_errors_total"),
                    bytes_served: plain("tower_memcache_bytes_served_total"),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let stats = CacheStats::default();
        // More threads than shards: some share one.
        std::thread::scope(|scope| {
            for thread in 0..3 * SHARDS {
                let stats = &stats;
                scope.spawn(move || {
                    for _ in 0..100 {
                        stats.record_hit(thread, thread % 2 == 0);
                        stats.record_near_hit();
                    }
                });
            }
        });
        let snapshot = stats.snapshot();
        let threads = 3 * SHARDS as u64;
        assert_eq!(snapshot.hits, threads * 100);
        assert_eq!(snapshot.near_hits, threads * 100);
        assert_eq!(snapshot.stale, threads / 2 * 100);
        assert_eq!(snapshot.bytes_served, (0..threads).sum::<u64>() * 100);
        assert_eq!(snapshot.misses, 0);
    }

    #[test]
    fn counters_and_the_hit_ratio() {
        let stats = CacheStats::default();
        stats.record_hit(1024, false);
        stats.record_miss();
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.hits, 1);
        assert_eq!(snapshot.bytes_served, 1024);
        assert_eq!(snapshot.hit_ratio(), 0.5);
    }
}
