//! Review WW: what operators read to measure the cache must be true. Every request counts
//! once in the snapshot, as a hit, a miss or a bypass (so `hit_ratio` is what it says),
//! the specialised counters (`stale`, `coalesced`) count what their docs promise, and
//! `Cache-Status` says what happened. A `MemoryBackend` and a gated "database" origin
//! (`support::db`); no timing: waits poll what they wait for, each bounded.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::Watch;
use support::db::{Db, Svc, get, joined, send, service, spawn_get};
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer, StatsSnapshot};

fn layer(backend: MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend)
        .namespace("review-ww")
        .mode(CacheMode::Origin)
}

/// Every request the snapshot saw, counted once in one of its three buckets.
fn counted(snapshot: &StatsSnapshot) -> u64 {
    snapshot.hits + snapshot.misses + snapshot.bypasses
}

/// Sends `method path` with `headers` and waits for the layer's background work.
async fn settled_send(
    svc: &Svc,
    watch: &Watch,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> support::Answer {
    let answer = send(svc, method, path, headers).await;
    watch.settled().await;
    answer
}

/// RFC 9111 §5.2.1.7: `only-if-cached` with nothing usable stored gets a 504 from the
/// cache. It is a request like any other: it missed, and was counted nowhere, so that
/// a client sending it at will kept its requests out of every count (`hit_ratio`, and
/// `tower_memcache_requests_total`, "one outcome per request").
#[tokio::test]
async fn only_if_cached_504_counts_as_a_miss() {
    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let db = Db::default();
    let svc = service(&layer, &db);
    let only = [("cache-control", "only-if-cached")];
    let answer = settled_send(&svc, &watch, Method::GET, "/none", &only).await;
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.cache_status(),
        "tower-memcache; detail=only-if-cached"
    );
    let snapshot = watch.snapshot();
    assert_eq!((snapshot.hits, snapshot.misses), (0, 1), "{snapshot:?}");
    // A stale entry does not satisfy it either (`max-age=0` in the request): a miss.
    get(&svc, "/stored").await;
    watch.settled().await;
    let stale_only = [("cache-control", "max-age=0, only-if-cached")];
    let answer = settled_send(&svc, &watch, Method::GET, "/stored", &stale_only).await;
    assert_eq!(answer.status, 504);
    let snapshot = watch.snapshot();
    assert_eq!((snapshot.hits, snapshot.misses), (0, 3), "{snapshot:?}");
    assert_eq!(db.calls(), 1);
}

/// A stored response revalidated with the origin and replaced by its 200 is answered by
/// the origin: a miss in the snapshot, as a first fetch is. It was counted only in
/// `revalidations`, outside `hits + misses`, so an origin whose pages change on every
/// revalidation (or fail them) left `hit_ratio()` at 1.0 after a single hit.
#[tokio::test]
async fn a_revalidation_the_origin_answers_counts_as_a_miss() {
    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let db = Db::default();
    // Stored, stale at once: each later request revalidates.
    db.fields("/r", &[("cache-control", "max-age=0")]);
    let svc = service(&layer, &db);
    let first = settled_send(&svc, &watch, Method::GET, "/r", &[]).await;
    assert_eq!(first.cache_status(), "tower-memcache; fwd=uri-miss; stored");
    // The page changes each time: each revalidation gets a 200 from the origin.
    for round in 0..3 {
        db.bump();
        let again = settled_send(&svc, &watch, Method::GET, "/r", &[]).await;
        assert_eq!(again.body, format!("/r v{}", round + 1));
        assert_eq!(again.cache_status(), "tower-memcache; fwd=stale; stored");
    }
    let snapshot = watch.snapshot();
    assert_eq!(snapshot.revalidations, 3, "{snapshot:?}");
    assert_eq!((snapshot.hits, snapshot.misses), (0, 4), "{snapshot:?}");
    assert_eq!(snapshot.hit_ratio(), 0.0);
    // A 304 to the layer's validators answers from the stored response: a hit (and one
    // more revalidation), not also a miss.
    let validated = settled_send(&svc, &watch, Method::GET, "/r", &[]).await;
    assert_eq!(
        validated.cache_status(),
        "tower-memcache; fwd=stale; fwd-status=304"
    );
    let snapshot = watch.snapshot();
    assert_eq!(snapshot.revalidations, 4, "{snapshot:?}");
    assert_eq!((snapshot.hits, snapshot.misses), (1, 4), "{snapshot:?}");
    assert_eq!(db.calls(), 5);
}

/// A request: method, path and fields.
type Sent = (
    Method,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Requests down every path the layer has for them, on a layer whose `/stale` is stored
/// stale at once: 7 fresh hits (a HEAD, a 304 and a 206 among them), 2 revalidations the
/// origin answers with a 304, 6 misses (an `only-if-cached` 504 among them), 2 bypasses.
const LEDGER: &[Sent] = &[
    (Method::GET, "/a", &[]),                                    // miss, stored
    (Method::GET, "/a", &[]),                                    // hit
    (Method::HEAD, "/a", &[]),                                   // hit
    (Method::HEAD, "/h", &[]),                                   // miss
    (Method::GET, "/a", &[("if-none-match", "\"v0\"")]),         // 304 from the cache
    (Method::GET, "/a", &[("range", "bytes=0-1")]),              // 206 from the entry
    (Method::GET, "/a", &[("if-match", "\"v0\"")]),              // origin precondition
    (Method::GET, "/a", &[("cache-control", "no-cache")]),       // revalidated, 304
    (Method::GET, "/a", &[("cache-control", "no-store")]),       // hit
    (Method::GET, "/a", &[("authorization", "Basic eDp5")]),     // hit
    (Method::GET, "/a", &[("cache-control", "only-if-cached")]), // hit
    (Method::GET, "/b", &[("cache-control", "only-if-cached")]), // 504
    (Method::GET, "/stale", &[]),                                // miss, stored
    (Method::GET, "/stale", &[]),                                // revalidated, 304
    (Method::OPTIONS, "/a", &[]),                                // bypass
    (Method::POST, "/a", &[]),                                   // bypass, invalidates
    (Method::GET, "/a", &[]),                                    // miss
];

/// Every path a request can take counts it once in `hits + misses + bypasses`: the
/// snapshot's three buckets add up to the requests sent, whatever they asked.
#[tokio::test]
async fn every_request_counts_once_in_hits_misses_and_bypasses() {
    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let db = Db::default();
    db.fields("/stale", &[("cache-control", "max-age=0")]);
    let svc = service(&layer, &db);
    let requests = LEDGER;
    for (method, path, headers) in requests {
        let answer = settled_send(&svc, &watch, method.clone(), path, headers).await;
        assert!(answer.header("cache-status").is_some(), "{method} {path}");
    }
    let snapshot = watch.snapshot();
    assert_eq!(counted(&snapshot), requests.len() as u64, "{snapshot:?}");
    let buckets = (snapshot.hits, snapshot.misses, snapshot.bypasses);
    assert_eq!(buckets, (9, 6, 2), "{snapshot:?}");
}

/// `stale` counts hits answered with a stale response. A response the origin has just
/// validated with a 304 is not one, however short its lifetime (`max-age=0`, or a stored
/// `no-cache`, which revalidate on every request): counted `stale`, an operator read "the
/// cache serves stale pages" off a cache that never did.
#[tokio::test]
async fn a_response_validated_by_304_is_not_counted_stale() {
    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let db = Db::default();
    db.fields("/zero", &[("cache-control", "max-age=0")]);
    db.fields("/nc", &[("cache-control", "no-cache")]);
    let svc = service(&layer, &db);
    for path in ["/zero", "/nc"] {
        settled_send(&svc, &watch, Method::GET, path, &[]).await;
        let validated = settled_send(&svc, &watch, Method::GET, path, &[]).await;
        assert_eq!(
            validated.cache_status(),
            "tower-memcache; fwd=stale; fwd-status=304",
            "{path}"
        );
    }
    let snapshot = watch.snapshot();
    assert_eq!(
        (snapshot.hits, snapshot.revalidations),
        (2, 2),
        "{snapshot:?}"
    );
    assert_eq!(snapshot.stale, 0, "{snapshot:?}");
}

/// Polls `done` every 5 ms until it holds; fails after 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Memcached's `cmd_get` as the fake counts it.
async fn gets(backend: &MemoryBackend) -> u64 {
    let stats = backend.stats().await.unwrap();
    stats[0].get_u64("cmd_get").unwrap()
}

/// A request that waits for another process's placeholder and is answered with that
/// process's response (`Cache-Status: …; collapsed`) waited for another request's
/// response to the same key, which is what `coalesced` counts; it was counted only when
/// the request it waited for ran in the same process.
#[tokio::test]
async fn a_request_answered_after_waiting_for_a_placeholder_counts_as_coalesced() {
    let backend = MemoryBackend::new();
    // Two layers over one memcached: two processes.
    let (one, two) = (layer(backend.clone()), layer(backend.clone()));
    let (watch_one, watch_two) = (Watch::of(&one), Watch::of(&two));
    let db = Db::default();
    let (svc_one, svc_two) = (service(&one, &db), service(&two, &db));
    let gate = db.hold();
    let leader = spawn_get(&svc_one, "/lease", &[]);
    gate.arrivals(1).await;
    let before = gets(&backend).await;
    let waiter = spawn_get(&svc_two, "/lease", &[]);
    // Its lookup, then polls of the placeholder: it is waiting.
    eventually("the second process polls the placeholder", || async {
        gets(&backend).await >= before + 3
    })
    .await;
    gate.open();
    let leader = joined(leader).await;
    let waiter = joined(waiter).await;
    assert_eq!(
        leader.cache_status(),
        "tower-memcache; fwd=uri-miss; stored"
    );
    assert_eq!(
        waiter.cache_status(),
        "tower-memcache; fwd=uri-miss; collapsed"
    );
    assert_eq!(db.calls(), 1);
    watch_one.settled().await;
    watch_two.settled().await;
    let snapshot = watch_two.snapshot();
    assert_eq!((snapshot.hits, snapshot.coalesced), (1, 1), "{snapshot:?}");
    assert_eq!(watch_one.snapshot().coalesced, 0);
}

/// A request with a precondition only the origin can judge (`If-Match`,
/// `If-Unmodified-Since`) is never answered from the cache, which does not even look the
/// URL up. `Cache-Status` said `fwd=uri-miss` ("the cache did not contain any responses
/// that matched the request URI", RFC 9211 §2.2) for a URL it held: an operator sorting
/// misses by `fwd` read them as a cold cache. It is the request's own semantics that
/// ruled the cache out: `fwd=request`; still counted as a miss.
#[tokio::test]
async fn a_request_only_the_origin_can_answer_is_not_a_uri_miss() {
    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let db = Db::default();
    let svc = service(&layer, &db);
    settled_send(&svc, &watch, Method::GET, "/p", &[]).await;
    for precondition in [
        ("if-match", "\"v0\""),
        ("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ] {
        let answer = settled_send(&svc, &watch, Method::GET, "/p", &[precondition]).await;
        assert_eq!(
            answer.cache_status(),
            "tower-memcache; fwd=request",
            "{precondition:?}"
        );
    }
    let snapshot = watch.snapshot();
    assert_eq!((snapshot.hits, snapshot.misses), (0, 3), "{snapshot:?}");
}

/// Requests held at an origin until the test opens the gate; counts who arrived.
struct Held {
    arrived: std::sync::atomic::AtomicUsize,
    open: tokio::sync::Semaphore,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            arrived: std::sync::atomic::AtomicUsize::new(0),
            open: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Held {
    async fn pass(&self) {
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(permit) = self.open.acquire().await {
            permit.forget();
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn open(&self) {
        self.open.add_permits(1 << 20);
    }
}

/// A request that waits twice (for another variant's response first, then, looking the
/// URL up again, for a request of its own variant) waited for other requests' responses:
/// one request in `coalesced`, not two. Three requests, one of them leading each round:
/// two waited.
#[tokio::test]
async fn a_request_that_waits_twice_counts_once_as_coalesced() {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;

    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let (en, fr) = (Arc::new(Held::default()), Arc::new(Held::default()));
    let gates = (Arc::clone(&en), Arc::clone(&fr));
    let origin = tower::service_fn(move |request: Request<()>| {
        let (en, fr) = (Arc::clone(&gates.0), Arc::clone(&gates.1));
        async move {
            let language = request
                .headers()
                .get("accept-language")
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_default();
            if language == "en" {
                en.pass().await
            } else {
                fr.pass().await
            }
            let response = Response::builder()
                .header("cache-control", "max-age=600")
                .header("vary", "accept-language")
                .body(Full::new(Bytes::from(language)))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let svc: Svc = tower::util::BoxCloneSyncService::new(tower::Layer::layer(&layer, origin));
    let first = spawn_get(&svc, "/v", &[("accept-language", "en")]);
    eventually("the first request reaches the origin", || {
        let en = Arc::clone(&en);
        async move { en.arrived() == 1 }
    })
    .await;
    // Two requests for the other variant wait for the first (the URL's variants are not
    // known yet).
    let others: Vec<_> = (0..2)
        .map(|_| spawn_get(&svc, "/v", &[("accept-language", "fr")]))
        .collect();
    eventually("both wait for the first", || {
        let watch = watch.clone();
        async move { watch.snapshot().coalesced == 2 }
    })
    .await;
    en.open();
    // The first's response is another variant's: both look again; one goes to the origin
    // for theirs, the other waits for it.
    eventually("one of them reaches the origin", || {
        let fr = Arc::clone(&fr);
        async move { fr.arrived() == 1 }
    })
    .await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fr.open();
    assert_eq!(joined(first).await.body, "en");
    for other in others {
        assert_eq!(joined(other).await.body, "fr");
    }
    watch.settled().await;
    assert_eq!((en.arrived(), fr.arrived()), (1, 1));
    let snapshot = watch.snapshot();
    assert_eq!(snapshot.coalesced, 2, "{snapshot:?}");
    assert_eq!(counted(&snapshot), 3, "{snapshot:?}");
}

/// The same requests in `tower_memcache_requests_total`: one outcome each.
#[cfg(feature = "metrics")]
mod metrics {
    use super::*;

    #[tokio::test]
    async fn every_request_counts_once_in_the_requests_metric() {
        // The only recorder of this test binary, installed before this layer counts.
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
        let namespace = "review-ww-metrics";
        let layer = layer(MemoryBackend::new()).namespace(namespace);
        let watch = Watch::of(&layer);
        let db = Db::default();
        db.fields("/stale", &[("cache-control", "max-age=0")]);
        let svc = service(&layer, &db);
        for (method, path, headers) in LEDGER {
            settled_send(&svc, &watch, method.clone(), path, headers).await;
        }
        let text = handle.render();
        let outcome = |outcome: &str| {
            let labels = [("namespace", namespace), ("outcome", outcome)];
            support::prometheus_sample(&text, "tower_memcache_requests_total", &labels)
                .unwrap_or(0.0)
        };
        let counts = ["hit", "stale", "miss", "revalidate", "bypass"].map(outcome);
        assert_eq!(counts, [7.0, 0.0, 6.0, 2.0, 2.0], "{text}");
        assert_eq!(counts.iter().sum::<f64>(), LEDGER.len() as f64);
    }
}

/// Two layers made from one configured base, each with a namespace of its own (a router
/// per namespace): each counts its own requests. Clones shared one set of counters, so
/// each layer's `stats()` reported the other's traffic too (and with the `metrics`
/// feature, every count carried whichever namespace was set last).
#[tokio::test]
async fn layers_of_different_namespaces_made_from_one_base_count_apart() {
    let base = MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin);
    let (api, web) = (base.clone().namespace("api"), base.clone().namespace("web"));
    let (watch_api, watch_web) = (Watch::of(&api), Watch::of(&web));
    let db = Db::default();
    let svc = service(&api, &db);
    settled_send(&svc, &watch_api, Method::GET, "/x", &[]).await;
    settled_send(&svc, &watch_api, Method::GET, "/x", &[]).await;
    let (api, web) = (watch_api.snapshot(), watch_web.snapshot());
    assert_eq!((api.hits, api.misses, api.stores), (1, 1, 1), "{api:?}");
    assert_eq!(web, StatsSnapshot::default(), "{web:?}");
}
