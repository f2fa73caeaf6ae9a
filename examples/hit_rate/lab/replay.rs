//! One replay of a trace through `MemcacheLayer` over a backend.
//!
//! The origin is a `service_fn` that answers each request with the status and body size
//! the trace gives it (the request names its index in `x-lab-id`) and echoes that index in
//! its response, which the cache stores with the entry: a response that comes back with
//! another request's index was served without an origin call, a hit (from memcached, or
//! from another request's flight).
//!
//! **Expiry in trace time.** Lifetimes are in the trace's clock: a log spanning two hours
//! replayed in seconds must still see its 60 s entries expire, and free their memory. The
//! origin notes when (in trace time) it answered each storable GET. Before sending a
//! request at trace time `t`, the replay deletes (`Purger::purge_uri`) every entry
//! stored at `t - lifetime` or earlier and not stored again since: the entries memcached
//! would have expired by then, since the origin's responses carry no validator and the
//! layer gives memcached the lifetime as the item's time to live. A request for such a
//! path therefore misses and refills, as it would in production. The layer's own lifetime
//! is `lifetime` of wall time (divided by the speed-up with `--timing`), so it never
//! expires an entry the trace still holds fresh unless the replay runs slower than the
//! trace did. The ideal line (`trace::ideal`) applies the same rule without evictions.
//!
//! **The near tier** (`--near-cache`) is the crate's `NearCache`, given to the layer (and
//! so to its purger: an expiry delete also drops the entry from the tier, as memcached's
//! own expiry would make the next re-check miss). Its staleness bound is a wall-clock
//! bound (it reads `Instant`), so it is given the trace-time bound divided by the
//! speed-up with `--timing`; as fast as possible, it is wall time, and the replay's own
//! speed decides how many requests one bound covers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::{ServiceExt, service_fn};
use tower_memcache::backend::{Backend, ServerStats};
use tower_memcache::cache::{MemcacheLayer, NearCache, StatsSnapshot};

use super::trace::{LAB_STATUSES, Trace};

/// The request header naming the request's index in the trace, and the response header
/// echoing the index of the request the origin answered.
const ID_HEADER: &str = "x-lab-id";

/// The largest body the origin hands out; larger logged sizes are sent as this many
/// bytes (they are far above any entry-size limit, so they pass through unstored either
/// way) and counted at their logged size.
const MAX_BODY: u64 = 64 << 20;

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Time the origin takes per call.
    pub origin_latency: Duration,
    /// `Some(speedup)`: send each request at its trace time divided by `speedup`; `None`:
    /// as fast as the layer answers.
    pub timing: Option<f64>,
    /// The layer's `max_entry_size`.
    pub max_entry: u64,
    /// Timeout of lookups (layer) and of each memcached operation (backend).
    pub backend_timeout: Duration,
    /// Requests after which the servers' stats are read again (0: only before), so that
    /// memcached operations can be counted without the cold start.
    pub warmup: usize,
}

/// Where a replay stood after its warm-up requests.
#[derive(Debug, Clone)]
pub struct WarmUp {
    /// Requests answered by then (the warm-up).
    pub requests: u64,
    /// Entries the replay had expired by then.
    pub expired: u64,
    /// The servers' stats then.
    pub stats: Vec<ServerStats>,
}

/// What one replay measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered without an origin call.
    pub hits: u64,
    /// Trace bytes of every request.
    pub bytes: u64,
    /// Trace bytes of the hits.
    pub hit_bytes: u64,
    /// Calls that reached the origin.
    pub origin_calls: u64,
    /// Entries deleted because they expired in trace time.
    pub expired: u64,
    /// The layer's counters.
    pub stats: StatsSnapshot,
    /// From the first request sent to the last answer.
    pub wall: Duration,
    /// Median and 99th percentile of the time to a whole response.
    pub p50: Duration,
    /// See `p50`.
    pub p99: Duration,
    /// With `--timing`: the furthest a request was sent behind its schedule.
    pub max_lag: Duration,
    /// With a warm-up: where the replay stood after it.
    pub warm: Option<WarmUp>,
}

/// Sends the whole trace through a fresh layer over `backend`, with `near` in front of it
/// if given.
pub async fn replay<B: Backend>(
    backend: B,
    namespace: String,
    trace: &Arc<Trace>,
    lifetime: Duration,
    near: Option<NearCache>,
    settings: &Settings,
    progress: &ProgressBar,
) -> Result<Measured, String> {
    let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    let wall_lifetime = match settings.timing {
        Some(speedup) => lifetime.div_f64(speedup),
        None => lifetime,
    };
    let mut layer = MemcacheLayer::new(backend.clone())
        .namespace(namespace)
        .default_lifetime(wall_lifetime)
        .statuses(LAB_STATUSES)
        .max_entry_size(usize::try_from(settings.max_entry).unwrap_or(usize::MAX))
        .lookup_timeout(settings.backend_timeout);
    if let Some(near) = near {
        // The purger below comes from this layer: the lab's expiry deletes reach the tier.
        layer = layer.near_cache(near);
    }
    let stats = layer.stats();
    let background = layer.background();
    let purger = layer.purger();

    // When the origin last answered a storable GET of each path, in trace ms + 1 (0: never).
    let stored_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..trace.paths.len()).map(|_| AtomicU64::new(0)).collect());
    // The same stores in the order the origin answered them, trace time and path: nearly
    // in trace order (only requests in flight together can swap), so the front is the
    // next to expire. At most one entry per request.
    let stores: Arc<Mutex<VecDeque<(u64, u32)>>> = Arc::new(Mutex::new(VecDeque::new()));
    let origin_calls = Arc::new(AtomicU64::new(0));
    let zeros = Bytes::from(vec![0u8; trace.max_size().min(MAX_BODY) as usize]);
    let origin = {
        let trace = Arc::clone(trace);
        let stored_at = Arc::clone(&stored_at);
        let stores = Arc::clone(&stores);
        let calls = Arc::clone(&origin_calls);
        let latency = settings.origin_latency;
        let max_entry = settings.max_entry;
        let caches = lifetime_ms > 0;
        service_fn(move |request: Request<()>| {
            let trace = Arc::clone(&trace);
            let stored_at = Arc::clone(&stored_at);
            let stores = Arc::clone(&stores);
            let calls = Arc::clone(&calls);
            let zeros = zeros.clone();
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                let id = request
                    .headers()
                    .get(ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok());
                let Some((id, access)) = id.and_then(|id| Some((id, *trace.requests.get(id)?)))
                else {
                    // Only the replay below sends requests, always with an index.
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    return Ok::<_, Infallible>(response);
                };
                if caches && access.fills(max_entry) {
                    stored_at[access.path as usize].fetch_max(access.at_ms + 1, Ordering::Relaxed);
                    if let Ok(mut stores) = stores.lock() {
                        stores.push_back((access.at_ms, access.path));
                    }
                }
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let body = if request.method() == Method::HEAD {
                    Bytes::new()
                } else {
                    zeros.slice(..access.size.min(MAX_BODY) as usize)
                };
                let mut response = Response::new(Full::new(body));
                *response.status_mut() =
                    StatusCode::from_u16(access.status).unwrap_or(StatusCode::OK);
                response
                    .headers_mut()
                    .insert(ID_HEADER, HeaderValue::from(id));
                Ok(response)
            }
        })
    };
    let service = tower::Layer::layer(&layer, origin);

    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut measured = Measured::default();
    let mut latencies: Vec<u32> = Vec::with_capacity(trace.requests.len());
    let started = tokio::time::Instant::now();
    let absorb = |result: Result<Result<Sent, String>, tokio::task::JoinError>,
                  measured: &mut Measured,
                  latencies: &mut Vec<u32>|
     -> Result<(), String> {
        let sent = result.map_err(|e| format!("request task failed: {e}"))??;
        measured.requests += 1;
        measured.bytes += sent.size;
        if sent.hit {
            measured.hits += 1;
            measured.hit_bytes += sent.size;
        }
        latencies.push(u32::try_from(sent.latency.as_micros()).unwrap_or(u32::MAX));
        progress.inc(1);
        Ok(())
    };

    for (index, access) in trace.requests.iter().enumerate() {
        if let Some(speedup) = settings.timing {
            let due = started + Duration::from_millis(access.at_ms).div_f64(speedup);
            let now = tokio::time::Instant::now();
            if due > now {
                tokio::time::sleep_until(due).await;
            } else {
                measured.max_lag = measured.max_lag.max(now - due);
            }
        }
        if index == settings.warmup && index > 0 {
            // Everything before has landed (answers and stores): read the servers now.
            while let Some(result) = tasks.join_next().await {
                absorb(result, &mut measured, &mut latencies)?;
            }
            if tokio::time::timeout(Duration::from_secs(10), background.idle())
                .await
                .is_err()
            {
                tracing::warn!("background stores still running after 10 s of warm-up");
            }
            let stats = backend
                .stats()
                .await
                .map_err(|e| format!("memcached stats after the warm-up: {e}"))?;
            measured.warm = Some(WarmUp {
                requests: measured.requests,
                expired: measured.expired,
                stats,
            });
        }
        // A permit first: with one request in flight, the one before has finished its
        // lookup when this one's expiries run.
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| format!("semaphore: {e}"))?;
        // Expire what memcached would have expired by this request's trace time: this
        // request's own path exactly, and the others from the queue (whose order can be
        // a little off: requests in flight together reach the origin in any order).
        let own = &stored_at[access.path as usize];
        let at = own.load(Ordering::Relaxed);
        if at > 0 && access.at_ms >= (at - 1).saturating_add(lifetime_ms) {
            expire(
                &purger,
                &background,
                trace,
                access.path,
                own,
                at,
                &mut measured,
            )
            .await;
        }
        while let Some((at, path)) = next_expired(&stores, access.at_ms, lifetime_ms) {
            expire(
                &purger,
                &background,
                trace,
                path,
                &stored_at[path as usize],
                at + 1,
                &mut measured,
            )
            .await;
        }
        let request = Request::builder()
            .method(if access.head {
                Method::HEAD
            } else {
                Method::GET
            })
            .uri(trace.uri(access.path))
            .header(ID_HEADER, index)
            .body(())
            .map_err(|e| format!("request {index}: {e}"))?;
        let service = service.clone();
        let size = access.size;
        tasks.spawn(async move {
            let sent = Instant::now();
            let response = match service.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let served_by = response
                .headers()
                .get(ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            match response.into_body().collect().await {
                Ok(_) => {}
                Err(never) => match never {},
            }
            drop(permit);
            Ok(Sent {
                hit: served_by != Some(index),
                size,
                latency: sent.elapsed(),
            })
        });
        while let Some(result) = tasks.try_join_next() {
            absorb(result, &mut measured, &mut latencies)?;
        }
    }
    while let Some(result) = tasks.join_next().await {
        absorb(result, &mut measured, &mut latencies)?;
    }
    measured.wall = started.elapsed();

    // Stores run in the background: let the last ones land before memcached is asked
    // for its evictions.
    if tokio::time::timeout(Duration::from_secs(10), background.idle())
        .await
        .is_err()
    {
        tracing::warn!("background stores still running after 10 s");
    }
    measured.stats = stats.snapshot();
    measured.origin_calls = origin_calls.load(Ordering::Relaxed);
    latencies.sort_unstable();
    measured.p50 = percentile(&latencies, 0.50);
    measured.p99 = percentile(&latencies, 0.99);
    Ok(measured)
}

/// Deletes `path`'s entry if `stored_at` still says it was stored at `at` (trace ms + 1):
/// stored again since, it expires later.
///
/// Once the stores under way have landed (10 s at most): memcached's own expiry never
/// meets the store of the entry it expires, while a purge that did (a replay faster than
/// the stores) cost the extra writes that make a purge hold against fills in flight, and
/// those were counted as the cache's operations (`sweep::calibrate` measures a purge
/// alone).
async fn expire<B: Backend>(
    purger: &tower_memcache::cache::Purger<B>,
    background: &tower_memcache::cache::Background,
    trace: &Trace,
    path: u32,
    stored_at: &AtomicU64,
    at: u64,
    measured: &mut Measured,
) {
    if stored_at
        .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        if tokio::time::timeout(Duration::from_secs(10), background.idle())
            .await
            .is_err()
        {
            tracing::warn!("background stores still running after 10 s: expiring anyway");
        }
        measured.expired += 1;
        if let Err(e) = purger.purge_uri(&trace.uri(path)).await {
            tracing::warn!(error = %e, "deleting an expired entry failed");
        }
    }
}

/// Takes the oldest store if it has expired at trace time `now_ms`.
fn next_expired(
    stores: &Mutex<VecDeque<(u64, u32)>>,
    now_ms: u64,
    lifetime_ms: u64,
) -> Option<(u64, u32)> {
    let mut stores = stores.lock().ok()?;
    let &(at, _) = stores.front()?;
    if now_ms >= at.saturating_add(lifetime_ms) {
        stores.pop_front()
    } else {
        None
    }
}

/// One request's outcome.
struct Sent {
    hit: bool,
    size: u64,
    latency: Duration,
}

/// The `p`-quantile of sorted microseconds (nearest rank).
fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Duration::from_micros(u64::from(sorted[rank.clamp(1, sorted.len()) - 1]))
}
