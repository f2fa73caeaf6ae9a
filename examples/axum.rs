//! The demo: an axum app whose responses are cached in memcached by `MemcacheLayer`.
//!
//! ```sh
//! cargo run --example axum                                   # in-memory backend
//! MEMCACHE_SERVERS=127.0.0.1:11211 cargo run --example axum  # real memcached
//! LISTEN=127.0.0.1:8080 cargo run --example axum             # another address
//! NEAR_CACHE_MB=64 cargo run --example axum                  # with a near tier
//! ```
//!
//! `NEAR_CACHE_MB` puts a near tier of that many MiB in front of the backend
//! (`MemcacheLayer::near_cache`), each entry at most `NEAR_STALENESS_MS` (default 1000)
//! behind memcached: hot pages then answer with `cache-status: tower-memcache; hit;
//! detail=near`.
//!
//! Then try `curl -i http://127.0.0.1:3000/slow/7` twice: the first answer takes 100 ms
//! and says `cache-status: tower-memcache; fwd=uri-miss; stored`, the second is instant
//! with `cache-status: tower-memcache; hit` and the same origin run count.
//!
//! With `--features metrics`, `curl http://127.0.0.1:3000/metrics` shows the layer's
//! metrics in Prometheus' text format (`tower_memcache_requests_total{namespace="demo",outcome="hit"}`, …).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use http::header;
use tower_memcache::backend::{Backend, MemoryBackend, TcpBackend};
use tower_memcache::cache::CacheStats;
use tower_memcache::cache::MemcacheLayer;
use tower_memcache::cache::NearCache;
use tower_memcache::cache::RouteMatch;

#[derive(Clone)]
struct AppState {
    origin_runs: Arc<AtomicU64>,
    stats: CacheStats,
    backend: &'static str,
}

fn app<B: Backend>(backend: B, backend_name: &'static str, near: Option<NearCache>) -> Router {
    let mut layer = MemcacheLayer::new(backend)
        .namespace("demo")
        .route(RouteMatch::Prefix("/slow/".into()), Duration::from_secs(30))
        .route(RouteMatch::Exact("/clock".into()), Duration::from_secs(2))
        .no_cache(RouteMatch::Exact("/stats".into()));
    if let Some(near) = near {
        layer = layer.near_cache(near);
    }
    let state = AppState {
        origin_runs: Arc::default(),
        stats: layer.stats(),
        backend: backend_name,
    };
    Router::new()
        .route("/", get(index))
        .route("/slow/{id}", get(slow))
        .route("/clock", get(clock))
        .route("/private", get(private))
        .route("/stats", get(stats))
        .with_state(state)
        .layer(layer)
}

async fn index() -> &'static str {
    "Hello from tower-memcache! Cached for the default hour.\n"
}

async fn slow(State(state): State<AppState>, Path(id): Path<String>) -> String {
    // Simulated origin work: what the cache saves.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runs = state.origin_runs.fetch_add(1, Ordering::Relaxed) + 1;
    format!("item {id}: origin has run {runs} times\n")
}

async fn clock() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{millis}\n")
}

async fn private() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "private")],
        "Only for you: never stored in a shared cache.\n",
    )
}

async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let s = state.stats.snapshot();
    Json(serde_json::json!({
        "backend": state.backend,
        "hits": s.hits,
        "misses": s.misses,
        "bypasses": s.bypasses,
        "stores": s.stores,
        "store_failures": s.store_failures,
        "backend_errors": s.backend_errors,
        "coalesced": s.coalesced,
        "bytes_served": s.bytes_served,
        "hit_ratio": s.hit_ratio(),
        "origin_runs": state.origin_runs.load(Ordering::Relaxed),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_string())
        .parse()?;
    let near = match std::env::var("NEAR_CACHE_MB") {
        Ok(mb) => {
            let staleness = std::env::var("NEAR_STALENESS_MS").map_or(Ok(1000), |ms| ms.parse())?;
            let (mb, staleness) = (mb.parse::<u64>()?, Duration::from_millis(staleness));
            println!("near tier: {mb} MiB, at most {staleness:?} behind memcached");
            Some(NearCache::new(mb << 20, staleness))
        }
        Err(_) => None,
    };
    let router = match std::env::var("MEMCACHE_SERVERS") {
        Ok(servers) if !servers.trim().is_empty() => {
            let backend = TcpBackend::builder().server_list(&servers).build()?;
            println!(
                "backend: memcached at {}",
                backend.server_names().join(", ")
            );
            app(backend, "memcached", near)
        }
        _ => {
            println!("backend: in-memory (set MEMCACHE_SERVERS=host:port for memcached)");
            app(MemoryBackend::new(), "memory", near)
        }
    };
    // The recorder goes in before the first request: the layer registers its metrics with
    // the recorder of its first count. The route is added outside the cache layer.
    #[cfg(feature = "metrics")]
    let router = {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        router.route("/metrics", get(move || std::future::ready(handle.render())))
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("listening on {url}");
    println!("try:");
    println!("  curl -i {url}/slow/7    # twice: 100 ms origin work, then a hit");
    println!("  curl -i {url}/clock     # cached for 2 s");
    println!("  curl -i {url}/private   # Cache-Control: private, never stored");
    println!("  curl {url}/stats        # the layer's counters (never cached)");
    #[cfg(feature = "metrics")]
    println!("  curl {url}/metrics      # the same, for Prometheus");
    axum::serve(listener, router).await?;
    Ok(())
}
