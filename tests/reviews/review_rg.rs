//! Review RG: an adversarial second look at coalescing waits and stale stand-ins (the one
//! `lease_wait` per request of commit 1720c17, the proxy's loop check against a leader's
//! followers, `Cache-Status` of a fresh stand-in, the re-read of a stand-in).
//!
//! Each test names an attack or defect and fails if it works.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::{CacheMode, MemcacheLayer};

use support::stand_in::{self, Meanwhile};
use support::{Watch, bounded, send};
use tower_memcache::backend::{Backend, BackendError, CasOutcome, Item, Lifetime};

/// Pulls `ttl` out of a `Cache-Status` member.
fn ttl(cache_status: &str) -> Option<&str> {
    cache_status
        .split(';')
        .map(str::trim)
        .find_map(|param| param.strip_prefix("ttl="))
}

/// RFC 9211 §2.4: `ttl` is the response's remaining freshness lifetime, negative only
/// when it is stale. A fresh entry standing in for a failing origin (the request asked
/// for the origin with `max-age=0`, the origin answered 503, the entry's
/// `stale-if-error` let it stand in) said `ttl=-0`: its staleness, zero, with a minus
/// sign, so a monitor took a fresh stand-in for a stale one and could not tell how long
/// it stays fresh. It now says its remaining lifetime.
#[tokio::test]
async fn a_fresh_entry_standing_in_for_a_failing_origin_says_its_remaining_lifetime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from("page")));
                if call > 0 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                response.headers_mut().insert(
                    "cache-control",
                    HeaderValue::from_static("max-age=600, stale-if-error=600"),
                );
                Ok::<_, Infallible>(response)
            }
        }
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let url = "http://site.example/fresh-stand-in";
    bounded("fill", send(&service, Method::GET, url, &[])).await;
    watch.settled().await;
    let answer = bounded(
        "stand-in",
        send(
            &service,
            Method::GET,
            url,
            &[("cache-control", "max-age=0")],
        ),
    )
    .await;
    assert_eq!(answer.body, "page", "{answer:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "it went forward");
    let said = answer.cache_status();
    assert!(said.contains("fwd-status=503"), "{said}");
    assert!(said.ends_with("detail=stale-if-error"), "{said}");
    let ttl: i64 = ttl(said)
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl: {said}"));
    assert!(
        !said.contains("ttl=-"),
        "a fresh stand-in said it was stale: {said}"
    );
    // Fresh for 600 s from its fill a moment ago (bounded from above only by its
    // lifetime; a loaded machine may take seconds between the two requests).
    assert!((500..=600).contains(&ttl), "{said}");
}

/// A stale response, usable when the origin fails.
fn stale_page(body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("max-age=60, stale-if-error=600"),
    );
    headers.insert("age", HeaderValue::from_static("120"));
    response
}

/// Process A's revalidation of [`stale_page`], failing after `meanwhile` happened through
/// process B, whose refill is usable on error too.
async fn a_revalidation_failing_after(meanwhile: Meanwhile) -> support::Answer {
    let first = || stale_page("before");
    let refill = "max-age=60, stale-if-error=600";
    stand_in::revalidation_failing_across_processes(first, meanwhile, refill, &[]).await
}

/// A stale entry replaced while its revalidation was at the origin (another process
/// refreshed the URL: no purge) stood in for nothing: `still_held` wanted the very entry
/// the lookup had read, so the client got the origin's 503 though memcached held a
/// newer response, usable on error, that any request arriving then would have been
/// given. The stand-in is now what memcached holds when the origin has failed, read
/// then: a purge that returned still holds (what a purge removed is never read again,
/// and what was stored after it is the cache's current answer, as for any lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_replaced_during_its_revalidation_lets_the_replacement_stand_in() {
    let answer = a_revalidation_failing_after(Meanwhile::Refreshed).await;
    assert_eq!(
        answer.body,
        "refreshed",
        "the origin's failure, though memcached held a usable response ({})",
        answer.cache_status()
    );
    // Fresh as refilled: it answers as any lookup then would (review RK's detail).
    assert!(
        answer.cache_status().ends_with("detail=stored-meanwhile"),
        "{}",
        answer.cache_status()
    );
    // After a purge, what was filled since stands in, never what the purge removed.
    let answer = a_revalidation_failing_after(Meanwhile::PurgedAndRefilled).await;
    assert_eq!(answer.body, "refreshed", "{}", answer.cache_status());
    // And after a purge alone, the origin's failure passes.
    let answer = a_revalidation_failing_after(Meanwhile::Purged).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert_eq!(answer.body, "origin down");
}

/// A memcached whose compare-and-swap never matches the unique its `gets` gave (a proxy
/// that sends the two to different replicas; a server that sends garbage uniques), each
/// reply a moment late.
#[derive(Clone)]
struct CasNeverMatches {
    inner: MemoryBackend,
}

/// How late each of its replies is: well inside the lookup timeout.
const LATE: std::time::Duration = std::time::Duration::from_millis(25);

impl Backend for CasNeverMatches {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        tokio::time::sleep(LATE).await;
        self.inner.get(key).await
    }

    async fn get_many(
        &self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, Item>, BackendError> {
        tokio::time::sleep(LATE).await;
        self.inner.get_many(keys).await
    }

    async fn cas(
        &self,
        _key: &str,
        _value: Bytes,
        _flags: u32,
        _lifetime: Lifetime,
        _cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        tokio::time::sleep(LATE).await;
        Ok(CasOutcome::Exists)
    }

    forward_to_inner!(set, add, delete, touch, incr, flush_all, stats);
}

/// Defect: the placement loop's rounds that neither wait nor change anything were
/// bounded by a count made for `lease_wait`'s polls (`lease_wait / lease_poll + 4`, 204
/// for a 1 s wait polled every 5 ms), not by time. Against a placeholder past its hold
/// (its process's request slow, or its process gone: it stays five minutes) on a
/// memcached whose compare-and-swap never matches, each round armed it again, was told
/// someone else had, and read it again, dead as before: two round trips a round, 204
/// rounds, about 10 s for a request whose waits are bounded by one `lease_wait` (1 s).
/// Such rounds now end after a few, and the request goes to its origin unguarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_swap_that_never_matches_holds_a_request_no_longer_than_a_lease_wait() {
    const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
    let memory = MemoryBackend::new();
    // Process A's request holds the URL's placeholder, then outlasts its hold.
    let a_layer = MemcacheLayer::new(memory.clone())
        .namespace("review-rg-cas")
        .lease(Some(std::time::Duration::from_millis(50)));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let a = a_layer.layer(tower::service_fn({
        let release = Arc::clone(&release);
        move |_request: Request<()>| {
            let release = Arc::clone(&release);
            async move {
                let _ = release.acquire().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("A's"))))
            }
        }
    }));
    let url = "http://site.example/cas";
    let slow = tokio::spawn({
        let a = a.clone();
        async move { send(&a, Method::GET, url, &[]).await }
    });
    // Its placeholder in place, and past its hold.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let b_layer = MemcacheLayer::new(CasNeverMatches {
        inner: memory.clone(),
    })
    .namespace("review-rg-cas")
    .lease_wait(LEASE_WAIT, std::time::Duration::from_millis(5));
    let b = b_layer.layer(tower::service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("B's"))))
    }));
    let started = std::time::Instant::now();
    let answer = bounded("B's answer", send(&b, Method::GET, url, &[])).await;
    let took = started.elapsed();
    assert_eq!(answer.body, "B's");
    release.add_permits(1);
    bounded("A's answer", slow).await.unwrap();
    // One `lease_wait` and a margin for a loaded machine: the rounds took 204 × 50 ms.
    assert!(
        took < LEASE_WAIT + std::time::Duration::from_secs(2),
        "held {took:?} by a placeholder nobody waits for (lease_wait {LEASE_WAIT:?})"
    );
}
