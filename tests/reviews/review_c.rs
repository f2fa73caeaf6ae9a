//! Review C: consistency across several processes (independent layers over one memcached,
//! each with its own `Shared` and near tier or none), races inside one process, and the
//! bounds an attacker can push (waiters, background work, near-tier memory).

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::refused_writes::PlainWritesRefused;
use support::versioned::Svc;
use support::{Answer, Watch};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";
const HIT: &str = "tower-memcache; hit";

/// The origin: `path vN`, fresh for ten minutes, tagged `news`.
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Origin {
    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let version = self.version.load(Ordering::SeqCst);
        let body = format!("{} v{version}", request.uri().path());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
        headers.insert("surrogate-key", HeaderValue::from_static("news"));
        response
    }
}

/// One process's layer over `backend`: the same namespace and tag header in every process.
fn process<B: Backend>(backend: B, near: Option<&NearCache>) -> MemcacheLayer<B> {
    let layer = MemcacheLayer::new(backend)
        .namespace("review-c")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    match near {
        Some(near) => layer.near_cache(near.clone()),
        None => layer,
    }
}

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    support::versioned::serving(layer, move |request: &Request<()>| origin.respond(request))
}

async fn get(svc: &Svc, path: &str) -> Answer {
    support::send(svc, Method::GET, &format!("http://site.example{path}"), &[]).await
}

/// Fills `path` and reads it from memcached again (the second lookup knows its stripe's
/// store epoch, so what it keeps can be confirmed), then checks that past the bound it is
/// confirmed, not read again.
async fn keep_confirmable(svc: &Svc, watch: &Watch, path: &str, bound: Duration) {
    get(svc, path).await;
    watch.settled().await;
    let hit = get(svc, path).await;
    assert_eq!(hit.header("cache-status"), Some(HIT), "{path}");
    tokio::time::sleep(bound + Duration::from_millis(30)).await;
    let confirmed = get(svc, path).await;
    assert_eq!(
        confirmed.header("cache-status"),
        Some(NEAR_HIT),
        "{path}: confirmed from its epoch"
    );
}

/// A URI purge in process X whose store-epoch write memcached refused (the delete landed):
/// if it returns `Ok`, process Y's near tier must stop answering the purged response
/// within `max_staleness` of that return. Before the fix, the purge returned `Ok` and Y
/// confirmed its entry by the unchanged epoch until X's second epoch write, a lookup
/// timeout later (here 1 s: five times the bound).
#[tokio::test]
async fn a_uri_purge_whose_epoch_write_was_refused_does_not_return_ok_and_leave_it_in_near_tiers() {
    let origin = Origin::default();
    let memory = MemoryBackend::new();
    let bound = Duration::from_millis(200);
    let near = NearCache::new(16 << 20, bound);
    let y = process(memory.clone(), Some(&near));
    let (y_svc, y_watch) = (service(&y, &origin), Watch::of(&y));
    let x_backend = PlainWritesRefused {
        inner: memory,
        fail: Arc::new(AtomicU64::new(0)),
    };
    let x = process(x_backend.clone(), None).lookup_timeout(Duration::from_secs(1));
    keep_confirmable(&y_svc, &y_watch, "/purged", bound).await;
    origin.version.store(1, Ordering::SeqCst);
    x_backend.fail.store(1, Ordering::SeqCst);
    let purged = x.purger().purge_uri("http://site.example/purged").await;
    let returned = Instant::now();
    assert_eq!(
        x_backend.fail.load(Ordering::SeqCst),
        0,
        "the epoch write was refused"
    );
    if purged.is_err() {
        // The caller knows the purge may not hold everywhere (and will retry).
        return;
    }
    // Y is asked now and then, as a hot page is; past the bound it must have the new one.
    let mut last = String::new();
    while returned.elapsed() < bound + Duration::from_millis(150) {
        let answer = get(&y_svc, "/purged").await;
        last = format!(
            "{} ({}) {:?} after the purge returned",
            answer.body,
            answer.header("cache-status").unwrap_or(""),
            returned.elapsed()
        );
        if returned.elapsed() > bound + Duration::from_millis(20) {
            assert_eq!(answer.body, "/purged v1", "{last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.starts_with("/purged v1"), "{last}");
}

/// A layer (no near tier) whose origin names `tags` in `Surrogate-Key`, at version
/// `version`.
fn tagged_service(
    layer: &MemcacheLayer<MemoryBackend>,
    tags: String,
    version: Arc<AtomicU64>,
) -> Svc {
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let body = format!(
                "{} v{}",
                request.uri().path(),
                version.load(Ordering::SeqCst)
            );
            let mut response = Response::new(Full::new(Bytes::from(body)));
            let headers = response.headers_mut();
            headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
            headers.insert("surrogate-key", HeaderValue::from_str(&tags).unwrap());
            async move { Ok::<_, Infallible>(response) }
        });
    tower::util::BoxCloneSyncService::new(svc)
}

/// A response naming more tags than the layer keeps (32), or a tag longer than it keeps
/// (128 bytes): a purge of any tag it named must still hold. The layer used to store it
/// with the first 32 tags (in sorted order) only, so `purge_tag` of a later one returned
/// `Ok` and the entry stayed.
#[tokio::test]
async fn a_purge_of_any_tag_a_response_named_holds_however_many_it_named() {
    let long = "l".repeat(129);
    let many: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    for (tags, purged) in [
        (many.join(" "), "t39".to_string()),
        (format!("short {long}"), long.clone()),
        // Not visible ASCII, yet a tag `purge_tag` can name.
        ("short café".to_string(), "café".to_string()),
    ] {
        let memory = MemoryBackend::new();
        let layer = process(memory, None);
        let version = Arc::new(AtomicU64::new(0));
        let (svc, watch) = (
            tagged_service(&layer, tags, Arc::clone(&version)),
            Watch::of(&layer),
        );
        get(&svc, "/tagged").await;
        watch.settled().await;
        get(&svc, "/tagged").await;
        version.store(1, Ordering::SeqCst);
        let purge = layer.purger().purge_tag(&purged).await;
        assert!(purge.is_ok(), "{purge:?}");
        let after = get(&svc, "/tagged").await;
        assert_eq!(
            after.body,
            "/tagged v1",
            "tag {}… purged: still answered ({})",
            purged.chars().take(4).collect::<String>(),
            after.header("cache-status").unwrap_or("")
        );
    }
}

/// Three processes serve one entry inside its `stale-while-revalidate` window, twice each,
/// while the origin is slow: each sends one refresh (one per key at a time in a process),
/// and the processes are not coordinated (the refresh takes no placeholder; it guards its
/// store by the stale entry's CAS value), so three in all: not one per stale request.
/// (Review C found the doc promising coordination across processes; the doc was wrong.)
#[tokio::test]
async fn a_stale_while_revalidate_refresh_is_sent_once_per_process() {
    let memory = MemoryBackend::new();
    let calls = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let processes: Vec<_> = (0..3).map(|_| process(memory.clone(), None)).collect();
    let services: Vec<Svc> = processes
        .iter()
        .map(|layer| {
            let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
            let svc = tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(move |_request: Request<()>| {
                    let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
                    async move {
                        // The first call answers at once; refreshes wait for the gate.
                        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                        if !first {
                            let _held = gate.acquire().await;
                        }
                        let mut response = Response::new(Full::new(Bytes::from("page")));
                        response.headers_mut().insert(
                            "cache-control",
                            HeaderValue::from_static("max-age=1, stale-while-revalidate=60"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
            tower::util::BoxCloneSyncService::new(svc)
        })
        .collect();
    get(&services[0], "/swr").await;
    Watch::of(&processes[0]).settled().await;
    let held = gate.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for svc in services.iter().chain(&services) {
        let stale = get(svc, "/swr").await;
        assert_eq!(stale.body, "page");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refreshes = calls.load(Ordering::SeqCst) - 1;
    drop(held);
    assert_eq!(
        refreshes, 3,
        "background refreshes sent by three processes, each asked twice"
    );
}
