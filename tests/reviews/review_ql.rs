//! Review QL: the work the cache does on its own behalf and the stale answers it gives:
//! stale-while-revalidate refreshes, stale-if-error and `stale_if_unreachable`,
//! revalidations answered with 304s, HEAD refreshes, and what the requests that wait on a
//! revalidation get when it fails.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Notify, Semaphore};
use tower::{Layer, ServiceExt};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CacheMode, OriginUnreachable};

// ---------------------------------------------------------------------------------------
// Followers of a failed revalidation.

/// How the origin fails a revalidation in [`followers_of_a_failed_revalidation`].
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// A 503: the stored response's `stale-if-error` stands in.
    ServiceUnavailable,
    /// A gateway's own 504 marked `OriginUnreachable` (the reverse proxy's answer at
    /// `--upstream-timeout`): `stale_if_unreachable` stands in.
    Unreachable,
}

struct Gate {
    calls: AtomicUsize,
    arrived: Notify,
    leader_may_fail: Semaphore,
    later: AtomicUsize,
    later_arrived: Notify,
}

/// A stale entry is revalidated by one request while others wait for it; the origin fails
/// the revalidation and the stale response stands in for it. The failure is something
/// learnt (as an inner service error is, see review TT): the waiting requests must go on
/// their own at once. Dropped without a word, the leader looked like a client gone, and
/// its followers elected one leader after another, each waiting for the failing origin
/// in turn: behind the reverse proxy (a hung origin answered 504 after
/// `--upstream-timeout`, 60 s), the last client of a hot page waited several times that
/// for the stale copy `--stale-if-unreachable` promised at once.
async fn followers_of_a_failed_revalidation(failure: Failure) {
    let layer = support::layer(MemoryBackend::new())
        .namespace("review-ql")
        .mode(CacheMode::Origin)
        .stale_if_unreachable(Some(Duration::from_secs(600)))
        .coalesce_timeout(Duration::from_secs(60))
        .lease_wait(Duration::from_secs(60), Duration::from_millis(50));
    let watch = support::Watch::of(&layer);
    let gate = Arc::new(Gate {
        calls: AtomicUsize::new(0),
        arrived: Notify::new(),
        leader_may_fail: Semaphore::new(0),
        later: AtomicUsize::new(0),
        later_arrived: Notify::new(),
    });
    let service = layer.layer(tower::service_fn({
        let gate = Arc::clone(&gate);
        move |_request: Request<()>| {
            let gate = Arc::clone(&gate);
            async move {
                let call = gate.calls.fetch_add(1, Ordering::SeqCst);
                if call == 0 {
                    // Stored, stale at once, with a stale-if-error window.
                    let response = Response::builder()
                        .header("cache-control", "max-age=0, stale-if-error=600")
                        .header("etag", "\"v1\"")
                        .body(Full::new(Bytes::from_static(b"stored page")))
                        .unwrap();
                    return Ok::<_, Infallible>(response);
                }
                if call == 1 {
                    gate.arrived.notify_one();
                    let _ = gate.leader_may_fail.acquire().await;
                } else {
                    // The followers' own revalidations fail once both have come: in
                    // parallel, not one waiting for the other's.
                    gate.later.fetch_add(1, Ordering::SeqCst);
                    gate.later_arrived.notify_waiters();
                    loop {
                        let notified = gate.later_arrived.notified();
                        if gate.later.load(Ordering::SeqCst) >= 2 {
                            break;
                        }
                        notified.await;
                    }
                }
                let mut response = Response::new(Full::new(Bytes::from_static(b"origin down")));
                match failure {
                    Failure::ServiceUnavailable => {
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    Failure::Unreachable => {
                        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                        response.extensions_mut().insert(OriginUnreachable);
                    }
                }
                Ok(response)
            }
        }
    }));
    let send = || {
        let service = service.clone();
        tokio::spawn(async move {
            let request = Request::get("http://shop.example/hot").body(()).unwrap();
            let response = service.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        })
    };
    let (status, body) = send().await.unwrap();
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"stored page"[..])
    );
    support::stores(&watch, 1).await;

    let leader = send();
    gate.arrived.notified().await;
    let followers = [send(), send()];
    tokio::time::timeout(Duration::from_secs(10), async {
        while watch.snapshot().coalesced < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("two requests waiting for the revalidation");
    gate.leader_may_fail.add_permits(1);
    let (status, body) = leader.await.unwrap();
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"stored page"[..]),
        "{failure:?}: the leader's stale answer"
    );
    for follower in followers {
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), follower)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{failure:?}: a follower waited for another follower's turn at a failing origin"
                )
            })
            .unwrap();
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, &b"stored page"[..]),
            "{failure:?}"
        );
    }
    watch.settled().await;
}

#[tokio::test]
async fn followers_of_a_revalidation_answered_by_stale_if_error_do_not_wait_in_turn() {
    followers_of_a_failed_revalidation(Failure::ServiceUnavailable).await;
}

#[tokio::test]
async fn followers_of_a_revalidation_answered_stale_for_an_unreachable_origin_do_not_wait_in_turn()
{
    followers_of_a_failed_revalidation(Failure::Unreachable).await;
}
