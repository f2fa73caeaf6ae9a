//! Review OO: what the documentation promises (README, SECURITY.md, rustdoc "Defaults
//! to …") against what the code does, from a user's and an operator's side.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CacheMode, FLAG_HTTP_ENTRY, MemcacheLayer};

/// The HTTP entries the backend holds (live ones only).
fn http_entries(backend: &MemoryBackend) -> usize {
    backend
        .entries()
        .iter()
        .filter(|(_, item)| item.flags == FLAG_HTTP_ENTRY)
        .count()
}

/// `keep_stale`'s rustdoc, the README ("Stale entries with validators stay in memcached
/// for `keep_stale` (60 s) after their windows") and `backend_ttl`'s own comment all say
/// the time is *added* after the freshness and the stale windows. The code took the
/// larger of the windows and `keep_stale`, so an entry with `stale-while-revalidate` as
/// long as `keep_stale` left memcached the moment its window closed, and the next request
/// downloaded the whole body again instead of revalidating it.
#[tokio::test]
async fn keep_stale_counts_after_the_stale_windows() {
    let backend = MemoryBackend::new();
    let layer = MemcacheLayer::new(backend.clone())
        .mode(CacheMode::Origin)
        .keep_stale(Duration::from_secs(3));
    let background = layer.background();
    let calls = Arc::new(AtomicUsize::new(0));
    let conditional = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(tower::service_fn({
        let (calls, conditional) = (Arc::clone(&calls), Arc::clone(&conditional));
        move |request: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let revalidating = request.headers().contains_key("if-none-match");
            if revalidating {
                conditional.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                let builder = Response::builder()
                    .header("cache-control", "max-age=1, stale-while-revalidate=3")
                    .header("etag", "\"v1\"");
                Ok::<_, Infallible>(if revalidating {
                    builder.status(304).body(String::new()).unwrap()
                } else {
                    builder.body("the page".to_string()).unwrap()
                })
            }
        }
    }));
    let request = || {
        Request::get("http://example.com/page")
            .body(String::new())
            .unwrap()
    };
    let first = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), 200);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "the page");
    background.idle().await;
    assert_eq!(http_entries(&backend), 1, "stored");

    // Fresh for 1 s, then 3 s of stale-while-revalidate, then keep_stale's 3 s: gone at
    // 7 s (at 4 s when it was the larger of the two). At 5.5 s (1.5 s from either end, for
    // a loaded machine) it must still be in memcached, and the request past its windows
    // revalidated.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(
        http_entries(&backend),
        1,
        "the stale entry left memcached before keep_stale ran out after its windows"
    );
    let mut service = service;
    let later = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    assert_eq!(later.status(), 200);
    assert_eq!(
        conditional.load(Ordering::SeqCst),
        1,
        "past its windows the entry is revalidated, not downloaded again"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The README: "Convenience methods never fail, as in the seeds … Every one has a `try_*`
/// twin that returns the error." `set_raw` had none (only `try_set_raw_with_lifetime`).
#[tokio::test]
async fn set_raw_has_a_try_twin() {
    use tower_memcache::MemcacheClient;

    let backend = MemoryBackend::new();
    let client = MemcacheClient::new(backend.clone()).with_namespace("oo");
    let key = client.try_set_raw("raw", "bytes").await.unwrap();
    assert_eq!(key, client.build_key("raw"));
    assert_eq!(client.query_raw("raw").await.unwrap(), "bytes");
    backend.set_unreachable(true);
    assert!(client.try_set_raw("raw", "other").await.is_err());
}
