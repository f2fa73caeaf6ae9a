//! Review RD: an adversarial second look at session 38 (the stale stand-in's re-read,
//! `revalidate::still_held`; the coalescing succession; the best-effort background cap;
//! invalidation of dot segments). Each test names an attack or defect and fails if it
//! works.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower_memcache::backend::{Backend, BackendError, Item, MemoryBackend};
use tower_memcache::cache::CacheMode;

use support::stand_in::{self, URL};
use support::{Watch, send};

/// MemoryBackend whose reads fail while `down` is set, as a memcached that died (or is
/// marked down) after a purge reached it.
#[derive(Clone)]
struct Unreadable {
    inner: MemoryBackend,
    down: Arc<AtomicBool>,
}

impl Unreadable {
    fn new() -> (Self, Arc<AtomicBool>) {
        let down = Arc::new(AtomicBool::new(false));
        let backend = Self {
            inner: MemoryBackend::new(),
            down: Arc::clone(&down),
        };
        (backend, down)
    }

    fn check(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::Timeout {
                server: "memory".into(),
                after: Duration::from_millis(100),
            });
        }
        Ok(())
    }
}

impl Backend for Unreadable {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        self.check()?;
        self.inner.get(key).await
    }

    async fn get_many(
        &self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, Item>, BackendError> {
        self.check()?;
        self.inner.get_many(keys).await
    }

    forward_to_inner!(set, add, cas, delete, touch, incr, flush_all, stats);
}

/// Attack: a purge (this process's own) returns while a revalidation of a stale entry is
/// at the origin; then memcached becomes unreadable (it died after taking the purge, or
/// an attacker slows it past the layer's timeout), and the origin fails. The stale entry
/// the request read before the purge stood in for the origin (`stale-if-error`): the
/// re-read that must show memcached still holds it failed, and failing open served what
/// the purge had removed, after it returned. A backend that cannot be read is a miss:
/// nothing is known to be held, so nothing stands in (the origin's answer passes, as it
/// would had the lookup itself failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_entry_does_not_stand_in_when_memcached_cannot_be_read_again() {
    let (backend, down) = Unreadable::new();
    let layer = support::layer(backend)
        .namespace("review-rd-unreadable-stand-in")
        .mode(CacheMode::Origin);
    // Once the purge returned (memcached took it), memcached cannot be read.
    let answer = stand_in::revalidation_failing_after_a_purge(layer, || {
        down.store(true, Ordering::SeqCst);
    })
    .await;
    stand_in::assert_purged_not_served(&answer);
}

/// Attack: a client that leads a slow URL's flight and hangs up again and again, each
/// time with one of its own requests waiting to take the flight over, holds a waiting
/// request that may not lead (`Cache-Control: no-store`) round after round. Such a
/// request is let go when the flight is handed on, and looked the URL up again with a
/// fresh `coalesce_timeout` each time (three times over): it waited four times the bound
/// the documentation promises ("`coalesce_timeout` in all, however many leaders go away
/// in turn"). The same for every round a wait sends a request back to its lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_held_no_longer_than_coalesce_timeout_by_leaders_that_hang_up() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    // Each leader hangs up three quarters of a timeout after the one before.
    const HANG_UP_EVERY: Duration = Duration::from_millis(1500);
    let layer = support::layer(MemoryBackend::new())
        .namespace("review-rd-hang-up-rounds")
        .mode(CacheMode::Origin)
        .coalesce_timeout(TIMEOUT);
    let watch = Watch::of(&layer);
    let (attacker_calls, victim_calls) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn({
            let (attacker_calls, victim_calls) =
                (Arc::clone(&attacker_calls), Arc::clone(&victim_calls));
            move |request: Request<()>| {
                let victim = request.headers().contains_key("x-victim");
                let (attacker_calls, victim_calls) =
                    (Arc::clone(&attacker_calls), Arc::clone(&victim_calls));
                async move {
                    if victim {
                        victim_calls.fetch_add(1, Ordering::SeqCst);
                    } else {
                        // The attacker's URL is slow: its client hangs up first.
                        attacker_calls.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("answer"))))
                }
            }
        });
    let attacker = |svc: &_| {
        let svc = Clone::clone(svc);
        tokio::spawn(async move { send(&svc, Method::GET, URL, &[]).await })
    };
    let mut leading = attacker(&svc);
    support::eventually("the attacker leads", || {
        attacker_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let arrived = tokio::time::Instant::now();
    let victim = tokio::spawn({
        let svc = svc.clone();
        async move {
            let headers = [("cache-control", "no-store"), ("x-victim", "1")];
            send(&svc, Method::GET, URL, &headers).await
        }
    });
    support::eventually("the victim waits", || watch.snapshot().coalesced == 1).await;
    let mut next_hang_up = arrived + HANG_UP_EVERY;
    for round in 1..=4_u64 {
        // The attacker's next request waits too, to take the flight over.
        let heir = attacker(&svc);
        support::eventually("the attacker's next request waits", || {
            watch.snapshot().coalesced == 1 + round
        })
        .await;
        tokio::time::sleep_until(next_hang_up).await;
        if victim_calls.load(Ordering::SeqCst) > 0 {
            heir.abort();
            break;
        }
        leading.abort();
        leading = heir;
        next_hang_up += HANG_UP_EVERY;
        support::eventually("the attacker's next request took the flight over", || {
            attacker_calls.load(Ordering::SeqCst) as u64 == 1 + round
                || victim_calls.load(Ordering::SeqCst) > 0
        })
        .await;
    }
    let answer = support::bounded("the victim's answer", victim)
        .await
        .unwrap();
    let waited = arrived.elapsed();
    leading.abort();
    assert_eq!(answer.body, "answer");
    assert_eq!(victim_calls.load(Ordering::SeqCst), 1);
    // Bounded by one timeout (and a margin for a loaded machine), not one per leader.
    assert!(
        waited < TIMEOUT + Duration::from_millis(1500),
        "the waiting request was held {waited:?} by leaders that hung up in turn (coalesce_timeout {TIMEOUT:?})"
    );
}
