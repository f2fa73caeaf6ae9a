//! The sweep: every combination of the axes is a point, and each point is one replay of
//! the trace against a fresh cache.
//!
//! **Adding an axis**: a field in [`PointSpec`], a loop in [`Axes::points`], its use where
//! [`run_point`] builds the cache (through `replay::replay`'s layer), a flag in `cli.rs`,
//! and a column in `report::COLUMNS` (the table, CSV and JSON follow from it; the chart
//! draws one line per value of the other axes, see `report::write_svg`). The near tier's
//! size went in that way.
//!
//! **memcached operations.** Each point reads every server's `stats` before and after the
//! replay and counts, per server, the change in
//! `cmd_get + cmd_set + cmd_touch + cmd_flush + delete_hits + delete_misses + incr_hits +
//! incr_misses + decr_hits + decr_misses` ([`OPERATION_STATS`]). That is memcached's own
//! accounting: `cmd_get` counts **keys** (a lookup is one multi-get of two keys, the entry
//! and the namespace generation, so it counts 2, or less when lookups queued on one
//! connection were merged into one line, which lists the generation once), `cmd_set` counts every storage command
//! (`set`, `add`, `cas`, ...; `cas_*` are a subset of it and are not added again),
//! `touch_*` likewise within `cmd_touch`. The purges the lab itself sends to expire
//! entries in trace time (standing for memcached's own expiry, which costs no command)
//! are taken off: what one costs (a purge deletes on every server and writes store
//! epochs, for more than one spelling of the URI) is measured before the replay, by
//! purging a path the trace never requests, and taken off once per expired entry (from
//! the sum exactly; from each server's count, for the busiest share, an even share of it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use serde::Serialize;
use tower_memcache::backend::{Backend, MemoryBackend, ServerStats, TcpBackend};
use tower_memcache::cache::NearCache;

use super::memcached;
use super::replay::{self, Measured, Settings};
use super::trace::{self, Trace};

/// The stats whose changes are counted as memcached operations (see the module's doc).
pub const OPERATION_STATS: [&str; 10] = [
    "cmd_get",
    "cmd_set",
    "cmd_touch",
    "cmd_flush",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
];

/// A near tier in front of memcached (`--near-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NearTier {
    /// Its bound in bytes (`NearCache::new`'s `max_bytes`).
    #[serde(rename = "near_bytes")]
    pub bytes: u64,
    /// How long after its lookup an entry may be answered from it, ms of trace time (of
    /// wall time without `--timing`).
    #[serde(rename = "near_staleness_ms")]
    pub staleness_ms: u64,
}

/// The values of every axis at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PointSpec {
    /// Cache lifetime, seconds of trace time.
    pub lifetime_s: u64,
    /// The near tier, if any (`near_bytes` and `near_staleness_ms` in JSON, absent when
    /// off).
    #[serde(flatten)]
    pub near: Option<NearTier>,
    /// memcached's `-m` (or the in-memory backend's limit); `None` for running servers.
    pub memory_mb: Option<u64>,
}

/// The values each axis takes.
#[derive(Debug, Clone)]
pub struct Axes {
    /// `--lifetime`.
    pub lifetimes_s: Vec<u64>,
    /// `--near-cache` (a single `None`: no near tier).
    pub near: Vec<Option<NearTier>>,
    /// `--memory`, or a single `None`.
    pub memory_mb: Vec<Option<u64>>,
}

impl Axes {
    /// Every combination, lifetime outermost, then the near tier (the table groups rows by
    /// both; memory innermost, the chart's x axis).
    pub fn points(&self) -> Vec<PointSpec> {
        let mut points = Vec::new();
        for &lifetime_s in &self.lifetimes_s {
            for &near in &self.near {
                for &memory_mb in &self.memory_mb {
                    points.push(PointSpec {
                        lifetime_s,
                        near,
                        memory_mb,
                    });
                }
            }
        }
        points
    }
}

/// Where the cache lives.
#[derive(Debug, Clone)]
pub enum Target {
    /// memcached servers the lab starts for each point, each with the point's memory.
    Spawn {
        /// How many (`--servers`); the layer's `TcpBackend` spreads keys over them.
        servers: usize,
        /// The memcached binary.
        binary: String,
        /// `-I` in KiB, when not memcached's default.
        item_size_kb: Option<u64>,
        /// More arguments (`--memcached-args`).
        extra_args: Vec<String>,
        /// The ports of the last point's servers, tried first for the next point's (the
        /// same ring, so that the busiest server's share compares across points).
        ports: Arc<Mutex<Vec<u16>>>,
    },
    /// Servers already running (`--memcache`), shared by every point.
    Running {
        /// Comma-separated `host:port` list.
        servers: String,
    },
    /// The crate's `MemoryBackend`, an exact LRU over bytes, with the point's memory as its
    /// limit: what memcached would do without slab classes.
    Memory,
}

/// One point's results, with the ideal beside them.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The axes' values.
    #[serde(flatten)]
    pub spec: PointSpec,
    /// Requests replayed.
    pub requests: u64,
    /// Requests answered without an origin call.
    pub hits: u64,
    /// `hits / requests`.
    pub hit_ratio: f64,
    /// The same for an infinite cache.
    pub ideal_hit_ratio: f64,
    /// Body bytes of every request.
    pub bytes: u64,
    /// Body bytes of the hits.
    pub hit_bytes: u64,
    /// `hit_bytes / bytes`.
    pub byte_hit_ratio: f64,
    /// The same for an infinite cache.
    pub ideal_byte_hit_ratio: f64,
    /// Calls that reached the origin.
    pub origin_calls: u64,
    /// Origin calls of an infinite cache (its misses).
    pub ideal_origin_calls: u64,
    /// memcached's `evictions` (summed over servers; for running servers, during the point).
    pub evictions: Option<u64>,
    /// memcached's `curr_items` at the end.
    pub items: Option<u64>,
    /// memcached's `total_malloced` at the end, MiB: the memory it really took, which is
    /// more than `-m` when there are more slab classes in use than MB (memcached gives
    /// every slab class its first 1 MiB page whatever the limit). The in-memory backend
    /// says its `bytes` in use.
    pub malloced_mb: Option<f64>,
    /// Entries the layer could not store (memcached out of memory, too large).
    pub store_failures: u64,
    /// Backend operations that failed or timed out (each lookup one a miss).
    pub backend_errors: u64,
    /// Entries purged because they expired in trace time.
    pub expired: u64,
    /// Hits answered from the near tier, without asking memcached (also in `hits`).
    pub near_hits: u64,
    /// `near_hits / requests`.
    pub near_hit_ratio: f64,
    /// The near tier's bytes at the end (`NearCache::weight`); `None` without one.
    pub near_weight: Option<u64>,
    /// The near tier's URLs at the end (`NearCache::entries`).
    pub near_entries: Option<u64>,
    /// memcached servers.
    pub servers: usize,
    /// memcached operations during the replay (after its `--warmup` requests), summed over
    /// the servers (see the module's doc for what counts: keys for gets, commands
    /// otherwise).
    pub memcached_ops: Option<u64>,
    /// `memcached_ops / requests` (both after `--warmup`).
    pub ops_per_request: Option<f64>,
    /// The busiest server's share of `memcached_ops` (its operations over the sum; 1 with
    /// one server).
    pub busiest_share: Option<f64>,
    /// Wall time of the replay.
    pub seconds: f64,
    /// Requests per second of wall time.
    pub requests_per_s: f64,
    /// Median time to a whole response, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// With `--timing`: the furthest behind its schedule a request was sent, ms.
    pub max_lag_ms: u64,
}

/// Replays `trace` at one point.
pub async fn run_point(
    target: &Target,
    trace: &Arc<Trace>,
    spec: PointSpec,
    settings: &Settings,
    progress: &ProgressBar,
) -> Result<Point, String> {
    let lifetime = Duration::from_secs(spec.lifetime_s);
    let namespace = format!(
        "hit-rate-lab-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    // A fresh tier per point. Its staleness is in trace time like the lifetimes: with
    // `--timing` the wall bound is divided by the speed-up; without, it is wall time.
    let near = spec.near.map(|tier| {
        let staleness = Duration::from_millis(tier.staleness_ms);
        let staleness = match settings.timing {
            Some(speedup) => staleness.div_f64(speedup),
            None => staleness,
        };
        NearCache::new(tier.bytes, staleness)
    });
    // One replay over a backend of any type (a closure would fix one).
    macro_rules! replay {
        ($backend:expr) => {
            replay::replay(
                $backend,
                namespace.clone(),
                trace,
                lifetime,
                near.clone(),
                settings,
                progress,
            )
        };
    }
    let (measured, counts) = match target {
        Target::Memory => {
            let mut builder = MemoryBackend::builder();
            if let Some(mb) = spec.memory_mb {
                builder = builder.memory_limit(usize::try_from(mb << 20).unwrap_or(usize::MAX));
            }
            let backend = builder.build();
            let (before, expiry) = calibrate(&backend, &namespace).await?;
            let measured = replay!(backend.clone()).await?;
            let (before, expired) = window(&measured, before);
            let counts = server_counts(&backend, &[], &before, expired * expiry).await?;
            (measured, counts)
        }
        Target::Spawn {
            servers,
            binary,
            item_size_kb,
            extra_args,
            ports,
        } => {
            let memory_mb = spec
                .memory_mb
                .ok_or("a spawned memcached needs a memory size")?;
            let last = ports.lock().map(|p| p.clone()).unwrap_or_default();
            let mut started = Vec::with_capacity(*servers);
            for i in 0..*servers {
                let preferred = last.get(i).copied();
                started.push(
                    memcached::Server::start(
                        binary,
                        memory_mb,
                        *item_size_kb,
                        extra_args,
                        preferred,
                    )
                    .await?,
                );
            }
            if let Ok(mut ports) = ports.lock() {
                *ports = started.iter().map(memcached::Server::port).collect();
            }
            let addrs: Vec<String> = started.iter().map(memcached::Server::addr).collect();
            let backend = tcp_backend(&addrs.join(","), settings)?;
            let (before, expiry) = calibrate(&backend, &namespace).await?;
            let measured = replay!(backend.clone()).await?;
            let (before, expired) = window(&measured, before);
            let counts = server_counts(&backend, &addrs, &before, expired * expiry).await?;
            drop(started);
            (measured, counts)
        }
        Target::Running { servers } => {
            let backend = tcp_backend(servers, settings)?;
            let addrs: Vec<String> = servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let (before, expiry) = calibrate(&backend, &namespace).await?;
            let evictions_before = server_counts(&backend, &addrs, &before, Cost::NONE)
                .await?
                .evictions;
            let measured = replay!(backend.clone()).await?;
            let (before, expired) = window(&measured, before);
            let mut counts = server_counts(&backend, &addrs, &before, expired * expiry).await?;
            counts.evictions = counts.evictions.saturating_sub(evictions_before);
            (measured, counts)
        }
    };
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    let ideal = trace::ideal(trace, lifetime_ms, settings.max_entry);
    Ok(point(spec, &measured, ideal, counts, near.as_ref()))
}

fn point(
    spec: PointSpec,
    m: &Measured,
    ideal: trace::Ideal,
    counts: ServerCounts,
    near: Option<&NearCache>,
) -> Point {
    let ratio = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };
    let seconds = m.wall.as_secs_f64();
    Point {
        spec,
        requests: m.requests,
        hits: m.hits,
        hit_ratio: ratio(m.hits, m.requests),
        ideal_hit_ratio: ratio(ideal.hits, m.requests),
        bytes: m.bytes,
        hit_bytes: m.hit_bytes,
        byte_hit_ratio: ratio(m.hit_bytes, m.bytes),
        ideal_byte_hit_ratio: ratio(ideal.hit_bytes, m.bytes),
        origin_calls: m.origin_calls,
        ideal_origin_calls: m.requests.saturating_sub(ideal.hits),
        evictions: Some(counts.evictions),
        items: Some(counts.items),
        malloced_mb: Some(counts.malloced as f64 / (1024.0 * 1024.0)),
        store_failures: m.stats.store_failures,
        backend_errors: m.stats.backend_errors,
        expired: m.expired,
        near_hits: m.stats.near_hits,
        near_hit_ratio: ratio(m.stats.near_hits, m.requests),
        near_weight: near.map(NearCache::weight),
        near_entries: near.map(|n| n.entries() as u64),
        servers: counts.servers,
        memcached_ops: counts.ops.map(|(sum, _)| sum),
        ops_per_request: counts.ops.map(|(sum, _)| {
            ratio(
                sum,
                m.requests - m.warm.as_ref().map_or(0, |warm| warm.requests),
            )
        }),
        busiest_share: counts.ops.map(|(sum, max)| ratio(max, sum)),
        seconds,
        requests_per_s: if seconds > 0.0 {
            m.requests as f64 / seconds
        } else {
            0.0
        },
        p50_us: u64::try_from(m.p50.as_micros()).unwrap_or(u64::MAX),
        p99_us: u64::try_from(m.p99.as_micros()).unwrap_or(u64::MAX),
        max_lag_ms: u64::try_from(m.max_lag.as_millis()).unwrap_or(u64::MAX),
    }
}

fn tcp_backend(servers: &str, settings: &Settings) -> Result<TcpBackend, String> {
    TcpBackend::builder()
        .server_list(servers)
        .timeout(settings.backend_timeout)
        .build()
        .map_err(|e| format!("memcached {servers}: {e}"))
}

/// Where memcached operations are counted from: the servers' stats after the warm-up if
/// there was one (else `before`), and the entries the lab expired since.
fn window(measured: &Measured, before: Operations) -> (Operations, u64) {
    match &measured.warm {
        Some(warm) => (
            operations_of(&warm.stats),
            measured.expired.saturating_sub(warm.expired),
        ),
        None => (before, measured.expired),
    }
}

/// What memcached says about itself, summed over the servers.
#[derive(Debug, Clone, Copy)]
struct ServerCounts {
    servers: usize,
    evictions: u64,
    items: u64,
    malloced: u64,
    /// memcached operations during the replay: the sum over servers, and the busiest
    /// server's. `None` when a server did not report them.
    ops: Option<(u64, u64)>,
}

/// Each server's operations so far ([`OPERATION_STATS`] summed), by server name; `None`
/// for a server that lacks one of them.
type Operations = Vec<(String, Option<u64>)>;

fn operations_of(stats: &[ServerStats]) -> Operations {
    stats
        .iter()
        .map(|server| {
            let ops = OPERATION_STATS
                .iter()
                .map(|name| server.get_u64(name))
                .try_fold(0u64, |sum, value| Some(sum.saturating_add(value?)));
            (server.server.clone(), ops)
        })
        .collect()
}

/// The servers' operations before a replay.
async fn operations(backend: &impl Backend) -> Result<Operations, String> {
    let stats = backend
        .stats()
        .await
        .map_err(|e| format!("memcached stats: {e}"))?;
    Ok(operations_of(&stats))
}

/// What the lab's own operations cost, to be taken off the servers' counts: the
/// operations of one expiry purge (or of as many as were made), summed over the servers.
#[derive(Debug, Clone, Copy)]
struct Cost(u64);

impl Cost {
    const NONE: Self = Self(0);
}

impl std::ops::Mul<Cost> for u64 {
    type Output = Cost;

    fn mul(self, cost: Cost) -> Cost {
        Cost(self.saturating_mul(cost.0))
    }
}

/// A path no trace requests (a log's targets start with `/` and hold no such name).
const CALIBRATION_PATH: &str = "/.hit-rate-lab-expiry-calibration";

/// The servers' operations before a replay, and what one of the lab's expiry purges
/// costs: read around a purge of [`CALIBRATION_PATH`], as the replay's purger (a layer of
/// the point's namespace) sends it. Measured rather than assumed: a purge deletes on every
/// server and writes store epochs, for each spelling of the URI it reaches.
async fn calibrate<B: Backend + Clone>(
    backend: &B,
    namespace: &str,
) -> Result<(Operations, Cost), String> {
    let first = operations(backend).await?;
    let purger = tower_memcache::MemcacheLayer::new(backend.clone())
        .namespace(namespace)
        .purger();
    purger
        .purge_uri(&format!("http://{}{CALIBRATION_PATH}", trace::HOST))
        .await
        .map_err(|e| format!("the expiry purge's calibration: {e}"))?;
    let after = operations(backend).await?;
    let cost = after
        .iter()
        .map(|(server, ops)| {
            let before = first
                .iter()
                .find(|(name, _)| name == server)
                .and_then(|(_, ops)| *ops);
            ops.zip(before)
                .map_or(0, |(after, before)| after.saturating_sub(before))
        })
        .sum();
    Ok((after, Cost(cost)))
}

/// `evictions` and `curr_items` (read with the backend's `stats`), `total_malloced`
/// (`stats slabs`, on a connection of its own to each of `addrs`), and the operations
/// since `before`, less `lab`: the lab's own (its expiry purges), taken off the sum, and
/// an even share of them off each server's count (a purge's deletes reach every server,
/// its epoch writes the servers of the URI's keys: even on average).
async fn server_counts(
    backend: &impl Backend,
    addrs: &[String],
    before: &Operations,
    lab: Cost,
) -> Result<ServerCounts, String> {
    let stats = backend
        .stats()
        .await
        .map_err(|e| format!("memcached stats: {e}"))?;
    if stats.is_empty() {
        return Err("memcached answered no stats".into());
    }
    let sum = |name: &str| stats.iter().filter_map(|s| s.get_u64(name)).sum::<u64>();
    // The in-memory backend has no slabs: its bytes in use.
    let mut malloced = if addrs.is_empty() { sum("bytes") } else { 0 };
    for addr in addrs {
        let slabs = memcached::stats_group(addr, "slabs").await?;
        malloced += slabs
            .iter()
            .find(|(name, _)| name == "total_malloced")
            .and_then(|(_, value)| value.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let per_server: Option<Vec<u64>> = operations_of(&stats)
        .into_iter()
        .map(|(server, after)| {
            let before = before
                .iter()
                .find(|(name, _)| *name == server)
                .map_or(Some(0), |(_, ops)| *ops);
            Some(after?.saturating_sub(before?))
        })
        .collect();
    let servers = u64::try_from(stats.len()).unwrap_or(u64::MAX).max(1);
    let ops = per_server.map(|ops| {
        let sum = ops.iter().sum::<u64>().saturating_sub(lab.0);
        let busiest = ops
            .iter()
            .map(|ops| ops.saturating_sub(lab.0 / servers))
            .max()
            .unwrap_or(0)
            .min(sum);
        (sum, busiest)
    });
    Ok(ServerCounts {
        servers: stats.len(),
        evictions: sum("evictions"),
        items: sum("curr_items"),
        malloced,
        ops,
    })
}
