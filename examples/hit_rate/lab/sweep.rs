//! The sweep: every combination of the axes is a point, and each point is one replay of
//! the trace against a fresh cache.
//!
//! **Adding an axis** (the near tier's size, next): a field in [`PointSpec`], a loop in
//! [`Axes::points`], its use where [`run_point`] builds the cache (through
//! `replay::replay`'s layer), a flag in `cli.rs`, and a column in `report::COLUMNS` (the
//! table, CSV and JSON follow from it; the chart draws one line per value of the other
//! axes, see `report::write_svg`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use serde::Serialize;
use tower_memcache::backend::{Backend, MemoryBackend, TcpBackend};

use super::memcached;
use super::replay::{self, Measured, Settings};
use super::trace::{self, Trace};

/// The values of every axis at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PointSpec {
    /// Cache lifetime, seconds of trace time.
    pub lifetime_s: u64,
    /// memcached's `-m` (or the in-memory backend's limit); `None` for running servers.
    pub memory_mb: Option<u64>,
}

/// The values each axis takes.
#[derive(Debug, Clone)]
pub struct Axes {
    /// `--lifetime`.
    pub lifetimes_s: Vec<u64>,
    /// `--memory`, or a single `None`.
    pub memory_mb: Vec<Option<u64>>,
}

impl Axes {
    /// Every combination, lifetime outermost (the table groups rows by lifetime).
    pub fn points(&self) -> Vec<PointSpec> {
        let mut points = Vec::new();
        for &lifetime_s in &self.lifetimes_s {
            for &memory_mb in &self.memory_mb {
                points.push(PointSpec {
                    lifetime_s,
                    memory_mb,
                });
            }
        }
        points
    }
}

/// Where the cache lives.
#[derive(Debug, Clone)]
pub enum Target {
    /// A memcached the lab starts for each point, with the point's memory.
    Spawn {
        /// The memcached binary.
        binary: String,
        /// `-I` in KiB, when not memcached's default.
        item_size_kb: Option<u64>,
        /// More arguments (`--memcached-args`).
        extra_args: Vec<String>,
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
    let (measured, counts) = match target {
        Target::Memory => {
            let mut builder = MemoryBackend::builder();
            if let Some(mb) = spec.memory_mb {
                builder = builder.memory_limit(usize::try_from(mb << 20).unwrap_or(usize::MAX));
            }
            let backend = builder.build();
            let measured = replay::replay(
                backend.clone(),
                namespace,
                trace,
                lifetime,
                settings,
                progress,
            )
            .await?;
            let counts = server_counts(&backend, &[]).await?;
            (measured, Some(counts))
        }
        Target::Spawn {
            binary,
            item_size_kb,
            extra_args,
        } => {
            let memory_mb = spec
                .memory_mb
                .ok_or("a spawned memcached needs a memory size")?;
            let server =
                memcached::Server::start(binary, memory_mb, *item_size_kb, extra_args).await?;
            let backend = tcp_backend(&server.addr(), settings)?;
            let measured = replay::replay(
                backend.clone(),
                namespace,
                trace,
                lifetime,
                settings,
                progress,
            )
            .await?;
            let counts = server_counts(&backend, &[server.addr()]).await?;
            drop(server);
            (measured, Some(counts))
        }
        Target::Running { servers } => {
            let backend = tcp_backend(servers, settings)?;
            let addrs: Vec<String> = servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let before = server_counts(&backend, &addrs).await?;
            let measured = replay::replay(
                backend.clone(),
                namespace,
                trace,
                lifetime,
                settings,
                progress,
            )
            .await?;
            let mut counts = server_counts(&backend, &addrs).await?;
            counts.evictions = counts.evictions.saturating_sub(before.evictions);
            (measured, Some(counts))
        }
    };
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    let ideal = trace::ideal(trace, lifetime_ms, settings.max_entry);
    Ok(point(spec, &measured, ideal, counts))
}

fn point(
    spec: PointSpec,
    m: &Measured,
    ideal: trace::Ideal,
    counts: Option<ServerCounts>,
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
        evictions: counts.map(|c| c.evictions),
        items: counts.map(|c| c.items),
        malloced_mb: counts.map(|c| c.malloced as f64 / (1024.0 * 1024.0)),
        store_failures: m.stats.store_failures,
        backend_errors: m.stats.backend_errors,
        expired: m.expired,
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

/// What memcached says about itself, summed over the servers.
#[derive(Debug, Clone, Copy)]
struct ServerCounts {
    evictions: u64,
    items: u64,
    malloced: u64,
}

/// `evictions` and `curr_items` (read with the backend's `stats`) and `total_malloced`
/// (`stats slabs`, on a connection of its own to each of `addrs`).
async fn server_counts(backend: &impl Backend, addrs: &[String]) -> Result<ServerCounts, String> {
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
    Ok(ServerCounts {
        evictions: sum("evictions"),
        items: sum("curr_items"),
        malloced,
    })
}
