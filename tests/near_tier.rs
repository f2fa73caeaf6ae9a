//! The near tier (`MemcacheLayer::near_cache`): what it answers, for how long, and what
//! makes it forget. Each scenario runs on MemoryBackend and on a private memcached (see
//! `on_every_backend!`). "Another process" is a second layer over the same backend with
//! a near tier of its own; a change made behind every layer's back is a write straight to
//! the backend.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::{Answer, Watch};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, NearCache, ResponseBody};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";
const HIT: &str = "tower-memcache; hit";

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The origin: a version counter bumped by the test, answered in every body; paths ask for
/// their headers (`/short` fresh for 1 s, `/tagged` carries a tag, `/vary` varies on
/// `Accept-Encoding`, `/two` on two sets of headers depending on `Origin`).
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Origin {
    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let path = request.uri().path();
        let encoding = request
            .headers()
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity");
        let body = format!("{path} v{} {encoding}", self.version.load(Ordering::SeqCst));
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        let max_age = if path == "/short" {
            "max-age=1"
        } else {
            "max-age=600"
        };
        headers.insert("cache-control", HeaderValue::from_static(max_age));
        headers.insert("etag", HeaderValue::from_static("\"e1\""));
        if path == "/tagged" {
            headers.insert("surrogate-key", HeaderValue::from_static("news"));
        }
        if path == "/vary" {
            headers.insert("vary", HeaderValue::from_static("accept-encoding"));
        }
        if path == "/two" {
            let vary = if request.headers().contains_key("origin") {
                "accept-encoding, origin"
            } else {
                "accept-encoding"
            };
            headers.insert("vary", HeaderValue::from_static(vary));
        }
        response
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn layer<B: Backend>(backend: B, near: &NearCache) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("near")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")))
        .near_cache(near.clone())
}

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let response = origin.respond(&request);
            async move { Ok::<_, Infallible>(response) }
        });
    tower::util::BoxCloneSyncService::new(svc)
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    support::send(svc, method, &format!("http://site.example{path}"), headers).await
}

async fn get(svc: &Svc, path: &str) -> Answer {
    send(svc, Method::GET, path, &[]).await
}

/// Stores `path` (unless it is) and reads it from memcached, which keeps it in the near
/// tier.
async fn warm(svc: &Svc, watch: &Watch, path: &str, headers: &[(&str, &str)]) {
    send(svc, Method::GET, path, headers).await;
    watch.settled().await;
    let hit = send(svc, Method::GET, path, headers).await;
    let status = hit.header("cache-status").unwrap_or("");
    assert!(status == HIT || status == NEAR_HIT, "{path}: {status}");
}

/// A hit read from memcached is kept; the next is answered from the near tier with the
/// same body, headers and an `Age`, and counted; memcached is not asked (an entry deleted
/// behind the layer's back is still answered, within the bound).
async fn a_hot_entry_is_answered_without_memcached<B: Backend>(backend: B) {
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend.clone(), &near);
    let (svc, watch) = (service(&layer, &Origin::default()), Watch::of(&layer));
    warm(&svc, &watch, "/page", &[]).await;
    let from_memcached = get(&svc, "/page").await;
    assert_eq!(
        from_memcached.header("cache-status").unwrap_or(""),
        NEAR_HIT
    );
    assert_eq!(from_memcached.body, "/page v0 identity");
    assert_eq!(from_memcached.header("etag"), Some("\"e1\""));
    assert!(from_memcached.header("age").is_some());
    assert_eq!(near.entries(), 1);
    // Gone from memcached, by someone who does not tell this process: still answered.
    backend.flush_all().await.unwrap();
    assert_eq!(
        get(&svc, "/page")
            .await
            .header("cache-status")
            .unwrap_or(""),
        NEAR_HIT
    );
    // A conditional request and a HEAD are answered from it as from any hit.
    let revalidated = send(&svc, Method::GET, "/page", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(
        (
            revalidated.status.as_u16(),
            revalidated.header("cache-status").unwrap_or("")
        ),
        (304, NEAR_HIT)
    );
    let head = send(&svc, Method::HEAD, "/page", &[]).await;
    assert_eq!(
        (
            head.header("cache-status").unwrap_or(""),
            head.body.as_str()
        ),
        (NEAR_HIT, "")
    );
    let snapshot = watch.snapshot();
    assert_eq!(snapshot.near_hits, 4, "{snapshot:?}");
    assert!(snapshot.hits >= 5, "{snapshot:?}");
}

/// Past `max_staleness` an entry is checked in memcached again: a purge by another
/// process (a layer with its own tier) shows within the bound, and not before.
async fn another_process_purge_shows_within_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_millis(400));
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let elsewhere = layer(
        backend,
        &NearCache::new(1 << 20, Duration::from_millis(400)),
    );
    warm(&svc, &watch, "/page", &[]).await;
    origin.bump();
    elsewhere
        .purger()
        .purge_uri("http://site.example/page")
        .await
        .unwrap();
    let before = get(&svc, "/page").await;
    assert_eq!(
        (
            before.header("cache-status").unwrap_or(""),
            before.body.as_str()
        ),
        (NEAR_HIT, "/page v0 identity")
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let after = get(&svc, "/page").await;
    assert_eq!(
        after.body,
        "/page v1 identity",
        "{}",
        after.header("cache-status").unwrap_or("")
    );
    assert_ne!(after.header("cache-status").unwrap_or(""), NEAR_HIT);
}

/// This process's purges, invalidations and refreshes apply to its near tier before they
/// return: the next request never gets what they removed.
async fn local_purges_apply_at_once<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend, &near);
    let (svc, watch, purger) = (service(&layer, &origin), Watch::of(&layer), layer.purger());
    let fresh_after = |answer: &Answer, version: u64, what: &str| {
        assert!(
            answer.body.contains(&format!(" v{version} ")),
            "{what}: {} ({})",
            answer.body,
            answer.header("cache-status").unwrap_or("")
        );
    };
    let mut version = 0;
    for what in ["uri", "tag", "namespace", "all", "post", "no-cache refresh"] {
        let path = if what == "tag" { "/tagged" } else { "/page" };
        warm(&svc, &watch, path, &[]).await;
        assert_eq!(
            get(&svc, path).await.header("cache-status").unwrap_or(""),
            NEAR_HIT,
            "{what}"
        );
        origin.bump();
        version += 1;
        match what {
            "uri" => purger.purge_uri("http://site.example/page").await.unwrap(),
            "tag" => purger.purge_tag("news").await.unwrap(),
            "namespace" => purger.purge_namespace().await.unwrap(),
            "all" => purger.purge_all().await.unwrap(),
            "post" => {
                let posted = send(&svc, Method::POST, path, &[]).await;
                assert!(posted.status.is_success());
            }
            _ => {
                // The origin's new response replaces the stored one; the near tier's
                // copy goes with it once the store is done.
                let refreshed =
                    send(&svc, Method::GET, path, &[("cache-control", "no-cache")]).await;
                fresh_after(&refreshed, version, what);
                watch.settled().await;
            }
        }
        fresh_after(&get(&svc, path).await, version, what);
        watch.settled().await;
    }
}

/// Only fresh entries are answered from the near tier; a stale one goes to memcached and
/// the origin as without it, and a request that asks for the origin gets it.
async fn only_fresh_entries_and_willing_requests<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend, &near);
    let (svc, watch) = (service(&layer, &origin), Watch::of(&layer));
    warm(&svc, &watch, "/short", &[]).await;
    assert_eq!(
        get(&svc, "/short")
            .await
            .header("cache-status")
            .unwrap_or(""),
        NEAR_HIT
    );
    let calls = origin.calls();
    let no_cache = send(
        &svc,
        Method::GET,
        "/short",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert!(
        no_cache
            .header("cache-status")
            .unwrap_or("")
            .contains("fwd=request"),
        "{}",
        no_cache.header("cache-status").unwrap_or("")
    );
    assert_eq!(origin.calls(), calls + 1);
    let max_age_0 = send(
        &svc,
        Method::GET,
        "/short",
        &[("cache-control", "max-age=0")],
    )
    .await;
    assert_ne!(max_age_0.header("cache-status").unwrap_or(""), NEAR_HIT);
    watch.settled().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(&svc, "/short").await;
    assert_ne!(stale.header("cache-status").unwrap_or(""), NEAR_HIT);
    assert!(
        !stale.header("cache-status").unwrap_or("").starts_with(HIT)
            || stale.header("cache-status").unwrap_or("").contains("ttl=-")
    );
}

/// Variants: each request gets the variant it selects, from the near tier too; a URL with
/// two sets of selecting headers is not kept (memcached picks among them).
async fn variants_are_kept_apart<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend, &near);
    let (svc, watch) = (service(&layer, &origin), Watch::of(&layer));
    for encoding in ["gzip", "br", "gzip", "br"] {
        let headers = [("accept-encoding", encoding)];
        send(&svc, Method::GET, "/vary", &headers).await;
        watch.settled().await;
        send(&svc, Method::GET, "/vary", &headers).await;
    }
    for encoding in ["gzip", "br"] {
        let answer = send(&svc, Method::GET, "/vary", &[("accept-encoding", encoding)]).await;
        assert_eq!(
            answer.header("cache-status").unwrap_or(""),
            NEAR_HIT,
            "{encoding}"
        );
        assert_eq!(answer.body, format!("/vary v0 {encoding}"));
    }
    let unknown = send(&svc, Method::GET, "/vary", &[("accept-encoding", "zstd")]).await;
    assert_ne!(unknown.header("cache-status").unwrap_or(""), NEAR_HIT);
    assert_eq!(unknown.body, "/vary v0 zstd");

    let cors = [("accept-encoding", "gzip"), ("origin", "https://a.example")];
    // The CORS variant first: the plain request does not select it, so the URL ends up
    // with two sets of selecting headers.
    for headers in [&cors[..], &[("accept-encoding", "gzip")][..]] {
        send(&svc, Method::GET, "/two", headers).await;
        watch.settled().await;
    }
    for _ in 0..2 {
        let answer = send(&svc, Method::GET, "/two", &cors).await;
        assert_eq!(
            answer.header("cache-status").unwrap_or(""),
            HIT,
            "two name sets: asked in memcached"
        );
        let plain = send(&svc, Method::GET, "/two", &[("accept-encoding", "gzip")]).await;
        assert_eq!(plain.header("cache-status").unwrap_or(""), HIT);
    }
}

/// One tier shared by two layers (a server's threads): a purge through one applies to
/// the other's hits at once, and the tier holds no more than its bound.
async fn layers_sharing_a_tier_share_purges_and_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(64 << 10, Duration::from_secs(30));
    let (one, two) = (layer(backend.clone(), &near), layer(backend, &near));
    let (svc_one, svc_two) = (service(&one, &origin), service(&two, &origin));
    let (watch_one, watch_two) = (Watch::of(&one), Watch::of(&two));
    warm(&svc_one, &watch_one, "/page", &[]).await;
    assert_eq!(
        get(&svc_two, "/page")
            .await
            .header("cache-status")
            .unwrap_or(""),
        NEAR_HIT
    );
    origin.bump();
    two.purger()
        .purge_uri("http://site.example/page")
        .await
        .unwrap();
    assert_eq!(get(&svc_one, "/page").await.body, "/page v1 identity");
    watch_one.settled().await;
    watch_two.settled().await;
    for i in 0..300 {
        let path = format!("/many/{i}");
        get(&svc_one, &path).await;
        watch_one.settled().await;
        get(&svc_two, &path).await;
    }
    assert!(near.entries() > 10, "{near:?}");
    assert!(near.weight() <= near.capacity(), "{near:?}");
}

on_every_backend!("near_tier";
    a_hot_entry_is_answered_without_memcached,
    another_process_purge_shows_within_the_bound,
    local_purges_apply_at_once,
    only_fresh_entries_and_willing_requests,
    variants_are_kept_apart,
    layers_sharing_a_tier_share_purges_and_the_bound,
);
