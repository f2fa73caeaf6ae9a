//! Review RA: the coalescing succession (a leader gone unfinished hands its flight to a
//! follower, which leads it on): what the heir knows of the URL when it takes the lead.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

use support::stand_in::{self, URL, origin_down, stale_on_arrival};
use support::{Watch, send};

/// Attack: a purge issued while requests wait for a leader whose client then hangs up.
/// The follower that takes the flight over led it from the lookup it made before it
/// waited: it still held the stale entry the purge removed, and when the origin failed it
/// served that entry as `stale-if-error`, after the purge had returned (a response whose
/// request went out before the purge). The heir must lead from what memcached holds when
/// it takes the lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_heir_does_not_serve_an_entry_purged_while_it_waited() {
    let layer = support::layer(MemoryBackend::new())
        .namespace("review-ra-heir-purge")
        .mode(CacheMode::Origin)
        .coalesce_timeout(Duration::from_secs(30));
    let watch = Watch::of(&layer);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn({
            let calls = Arc::clone(&calls);
            move |_request: Request<()>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let response: Result<_, Infallible> = match call {
                        0 => Ok(stale_on_arrival()),
                        // The leader's request: its client hangs up before an answer.
                        1 => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                        // The heir's: the origin fails.
                        _ => Ok(origin_down()),
                    };
                    response
                }
            }
        });
    let first = send(&svc, Method::GET, URL, &[]).await;
    assert_eq!(first.body, "before the purge");
    support::stores(&watch, 1).await;

    let leader = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, Method::GET, URL, &[]).await }
    });
    support::eventually("the leader reached the origin", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let heir = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, Method::GET, URL, &[]).await }
    });
    support::eventually("the second request waits for the leader", || {
        watch.snapshot().coalesced == 1
    })
    .await;
    layer.purger().purge_uri(URL).await.unwrap();
    // The leader's client hangs up: the waiting request takes its flight over.
    leader.abort();
    let answer = support::bounded("the heir's answer", heir).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the heir went to the origin"
    );
    stand_in::assert_purged_not_served(&answer);
}

/// The same without any handover: a request revalidating a stale entry whose origin call
/// is under way when a purge returns, and which then fails, stood in the entry it had read
/// before the purge (`stale-if-error`), after the purge had returned. A stale response
/// stands in for a failing origin only if memcached still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_that_fails_after_a_purge_does_not_serve_the_purged_entry() {
    let layer = support::layer(MemoryBackend::new())
        .namespace("review-ra-revalidation-purge")
        .mode(CacheMode::Origin);
    let answer = stand_in::revalidation_failing_after_a_purge(layer, || {}).await;
    stand_in::assert_purged_not_served(&answer);
}
