//! Review SE: a second look at the consistency changes of reviews RZ and RW, as an attacker
//! and as an operator running several processes on one memcached namespace.
//!
//! - RZ: a fill past a spent `fill_buffer` that has waited 100 ms for its client hands its
//!   flight on and ends its placeholder's wait, keeping its token. A purge that returned
//!   while such a fill was in flight must hold against that fill's late store and against
//!   its heir's, and a stalled fill whose client goes away must leave nothing held.
//! - RW: a CAS of 0 (memcached `-C`) reads as no CAS. What a lookup read there is still
//!   what memcached holds: a placeholder put there after a purge must not read as "nothing
//!   known", which let a request that came after another process's purge share a
//!   response produced before it.
//!
//! Real memcached (started by the tests) and tokio's multi-threaded runtime where the
//! races are between processes and tasks; every wait is bounded.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

use tower_memcache::backend::Backend;
use tower_memcache::key::build_key;

use support::Watch;
use support::db::{self, Db};

const NAMESPACE: &str = "review-se";

/// Without CAS (`-C`), every item memcached answers has CAS 0, and review RW read each as
/// "nothing known" (as a lookup that failed): a flight led by a request that found
/// another process's placeholder was unguarded, and a flight unguarded by memcached
/// admits any request whose lookup knows nothing either, as long as this process made no
/// purge since (nothing in memcached could show one). But those lookups did read
/// memcached: after another process's purge, the placeholder its next request put there
/// read as "nothing known" too, and a request that came after the purge returned joined
/// the flight under way and was answered the page as it was before the purge. A
/// placeholder read without CAS keeps its token: only requests that saw the leader's own
/// join it.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cas_a_purge_by_another_process_holds_against_a_flight_under_way() {
    let Some(memcached) = support::Memcached::start_with_args(
        "review_se::without_cas_a_purge_by_another_process_holds",
        &["-C"],
    ) else {
        return;
    };
    let backend = support::patient_backend([memcached.addr()]);
    let db = Db::default();
    let gate = db.hold();
    // Two processes on one namespace.
    let here = support::layer(backend.clone()).namespace(NAMESPACE);
    let there = support::layer(backend.clone()).namespace(NAMESPACE);
    let watch = Watch::of(&here);
    let (svc_here, svc_there) = (db::service(&here, &db), db::service(&there, &db));
    let key = build_key(Some(NAMESPACE), "GET http://site.example/p");

    support::bounded("the race", async {
        // The other process refills the page: its placeholder is in memcached (an `add`,
        // which `-C` takes; nothing can replace or release it).
        let theirs = db::spawn_get(&svc_there, "/p", &[]);
        gate.arrivals(1).await;
        // A request here finds it and goes to the origin alongside: the page as it is.
        let before = db::spawn_get(&svc_here, "/p", &[]);
        gate.arrivals(2).await;
        // The page changes, and the other process purges it (the key deleted on every
        // server: the count of this process's purges, which stands for memcached when a
        // flight could not read it, does not move).
        db.bump();
        backend.delete(&key).await.unwrap();
        // Its next request for the page puts a placeholder there again.
        let theirs_after = db::spawn_get(&svc_there, "/p", &[]);
        gate.arrivals(3).await;
        // A request here after the purge returned: it goes to the origin itself, or
        // waits for a request under way (the bug).
        let after = db::spawn_get(&svc_here, "/p", &[]);
        support::eventually("the request after the purge goes or waits", || {
            db.calls() >= 4 || watch.snapshot().coalesced >= 1
        })
        .await;
        gate.open();
        let after = db::joined(after).await;
        assert_eq!(
            after.body,
            "/p v1",
            "a request that came after another process's purge returned was answered the \
             page from before it ({})",
            after.cache_status()
        );
        for handle in [theirs, before, theirs_after] {
            db::joined(handle).await;
        }
    })
    .await;
    watch.settled().await;
}

/// README: "Concurrent misses for one variant of a key in one process wait (bounded) for
/// the first", whatever memcached does. Without CAS, review RW read the first request's
/// placeholder as "nothing known", which a flight guarded by that placeholder does not
/// admit: the next miss led a flight of its own, unguarded, to the origin beside the
/// first. The placeholder's token is the first request's: they wait for it.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cas_concurrent_misses_in_one_process_wait_for_the_first() {
    const OTHERS: u64 = 4;
    let Some(memcached) = support::Memcached::start_with_args(
        "review_se::without_cas_concurrent_misses_wait",
        &["-C"],
    ) else {
        return;
    };
    let backend = support::patient_backend([memcached.addr()]);
    let db = Db::default();
    let gate = db.hold();
    let layer = support::layer(backend).namespace(NAMESPACE);
    let watch = Watch::of(&layer);
    let svc = db::service(&layer, &db);
    support::bounded("the misses", async {
        let first = db::spawn_get(&svc, "/c", &[]);
        gate.arrivals(1).await;
        let others: Vec<_> = (0..OTHERS)
            .map(|_| db::spawn_get(&svc, "/c", &[]))
            .collect();
        support::eventually("the others wait or go", || {
            watch.snapshot().coalesced >= OTHERS || db.calls() >= 2
        })
        .await;
        gate.open();
        for handle in std::iter::once(first).chain(others) {
            assert_eq!(db::joined(handle).await.body, "/c v0");
        }
        assert_eq!(
            db.calls(),
            1,
            "concurrent misses in one process went to the origin beside the first"
        );
    })
    .await;
    watch.settled().await;
}

/// A page of two frames of `half` bytes each, sent at once, its first bytes naming the
/// version it was produced from.
type TwoFrames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn two_frames(version: u64, half: usize) -> Response<TwoFrames> {
    let mut first = format!("v{version}:").into_bytes();
    first.resize(half, b'a');
    let frames = vec![
        Ok(Frame::data(Bytes::from(first))),
        Ok(Frame::data(Bytes::from(vec![b'b'; half]))),
    ];
    Response::builder()
        .header("cache-control", "public, max-age=600")
        .header("content-length", (2 * half).to_string())
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

/// The version a page of [`two_frames`] names.
fn version_of(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == b':').unwrap_or(0);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

const HALF: usize = 256 * 1024;

/// An origin of [`two_frames`] pages whose version the test bumps; calls of `/hot` after
/// the first read their version when they arrive, then wait for the gate.
#[derive(Clone)]
struct Versioned {
    version: Arc<AtomicU64>,
    hot_calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Default for Versioned {
    fn default() -> Self {
        Self {
            version: Arc::default(),
            hot_calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

/// The layered origin, boxed so that tasks can share it.
type Svc = tower::util::BoxCloneSyncService<
    Request<()>,
    Response<tower_memcache::cache::ResponseBody<TwoFrames>>,
    Infallible,
>;

impl Versioned {
    /// This origin behind `layer`.
    fn behind<B: Backend>(&self, layer: &tower_memcache::MemcacheLayer<B>) -> Svc {
        let origin = self.clone();
        let service = tower::service_fn(move |request: Request<()>| {
            let origin = origin.clone();
            async move {
                let version = origin.version.load(Ordering::SeqCst);
                if request.uri().path() == "/hot"
                    && origin.hot_calls.fetch_add(1, Ordering::SeqCst) > 0
                {
                    if let Ok(permit) = origin.gate.acquire().await {
                        permit.forget();
                    }
                }
                Ok::<_, Infallible>(two_frames(version, HALF))
            }
        });
        tower::util::BoxCloneSyncService::new(layer.layer(service))
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// A client that reads `/hot` to its end, in a task of its own: the version it got.
fn read(service: &Svc) -> tokio::task::JoinHandle<String> {
    let service = service.clone();
    tokio::spawn(async move {
        let response = service.oneshot(get("/hot")).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        version_of(&body)
    })
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://shop.example{path}"))
        .body(())
        .unwrap()
}

/// RZ's hand-off under a purge: the hot page's refill is led by a client that reads
/// nothing past a spent `fill_buffer`, so its fill hands its flight on (a request that
/// reads takes the lead and goes to the origin) and ends its placeholder's wait, keeping
/// its token. Then the page changes and is purged. Neither the stalled fill, which
/// stores once its client reads at last, nor its heir, whose response was produced
/// before the purge too, may put the old page back; a request after the purge gets the
/// new one, and so does the cache from then on.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_holds_against_a_stalled_fill_and_its_heir() {
    stalled_fill_and_its_heir_then_a_purge("review_se::stalled_fill_and_purge").await;
}

/// The same with a near tier, which must see the stores and the purge in memcached's
/// order: a late store refused there must leave nothing here either.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_holds_against_a_stalled_fill_and_its_heir_in_the_near_tier() {
    let _near = support::NearTier::on();
    stalled_fill_and_its_heir_then_a_purge("review_se::stalled_fill_and_purge_near").await;
}

#[cfg(feature = "tcp")]
async fn stalled_fill_and_its_heir_then_a_purge(test: &str) {
    let Some(memcached) = support::Memcached::start(test) else {
        return;
    };
    let backend = support::patient_backend([memcached.addr()]);
    let origin = Versioned::default();
    let layer = support::layer(backend)
        .namespace(NAMESPACE)
        .fill_buffer(64 * 1024)
        .coalesce_timeout(Duration::from_secs(30));
    let watch = Watch::of(&layer);
    let purger = layer.purger();
    let service = origin.behind(&layer);
    support::bounded("the stalled fill and the purge", async {
        // The budget spent by a client that reads nothing of another page.
        let hog = service.clone().oneshot(get("/hog")).await.unwrap();
        // The hot page's refill, led by a client that reads nothing either.
        let stalled = service.clone().oneshot(get("/hot")).await.unwrap();
        // A client that reads: it follows the stalled fill, then leads on to the origin
        // (held there, its response the page as it is).
        let started = std::time::Instant::now();
        let heir = read(&service);
        support::eventually("the heir reaches the origin", || {
            origin.hot_calls.load(Ordering::SeqCst) >= 2
        })
        .await;
        // Handed on, not after `coalesce_timeout` (30 s): the race under test.
        assert!(started.elapsed() < Duration::from_secs(5), "not handed on");
        // The page changes, and is purged.
        origin.version.store(1, Ordering::SeqCst);
        purger
            .purge_uri("http://shop.example/hot")
            .await
            .expect("purged");
        // A request after the purge: to the origin for the new page.
        let after = read(&service);
        support::eventually("the request after the purge reaches the origin", || {
            origin.hot_calls.load(Ordering::SeqCst) >= 3
        })
        .await;
        origin.open();
        assert_eq!(heir.await.unwrap(), "v0");
        assert_eq!(after.await.unwrap(), "v1", "answered the purged page");
        // The stalled client reads at last: its fill completes and tries to store.
        let body = stalled.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(version_of(&body), "v0");
        drop(hog);
        watch.settled().await;
        for _ in 0..2 {
            let again = read(&service).await.unwrap();
            assert_eq!(again, "v1", "the purged page came back");
            watch.settled().await;
        }
    })
    .await;
}

/// The same across processes: the stalled fill (no request of its own process waits for
/// it) ends its placeholder's wait, and a request of another process arms the placeholder
/// again, same token, and goes to the origin alongside. The page changes and is purged:
/// neither process's late store of the old page may land, in either order.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_holds_against_a_stalled_fill_and_another_process_alongside_it() {
    let Some(memcached) = support::Memcached::start("review_se::stalled_fill_across_processes")
    else {
        return;
    };
    let backend = support::patient_backend([memcached.addr()]);
    let origin = Versioned::default();
    let process = || {
        support::layer(backend.clone())
            .namespace(NAMESPACE)
            .fill_buffer(64 * 1024)
            .lease(Some(Duration::from_secs(30)))
            .lease_wait(Duration::from_secs(20), Duration::from_millis(10))
    };
    let (one, other) = (process(), process());
    let (watch_one, watch_other) = (Watch::of(&one), Watch::of(&other));
    let purger = one.purger();
    let (here, there) = (origin.behind(&one), origin.behind(&other));
    support::bounded("the stalled fill, the other process and the purge", async {
        let hog = here.clone().oneshot(get("/hog")).await.unwrap();
        let stalled = here.clone().oneshot(get("/hot")).await.unwrap();
        // The other process finds the placeholder, its wait ended, and goes alongside.
        let started = std::time::Instant::now();
        let alongside = read(&there);
        support::eventually("the other process reaches the origin", || {
            origin.hot_calls.load(Ordering::SeqCst) >= 2
        })
        .await;
        // Its wait ended by the stall, not after `lease_wait` (20 s): the race under test.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the wait was not ended"
        );
        origin.version.store(1, Ordering::SeqCst);
        purger
            .purge_uri("http://shop.example/hot")
            .await
            .expect("purged");
        let after = read(&there);
        support::eventually("the request after the purge reaches the origin", || {
            origin.hot_calls.load(Ordering::SeqCst) >= 3
        })
        .await;
        origin.open();
        assert_eq!(alongside.await.unwrap(), "v0");
        assert_eq!(after.await.unwrap(), "v1", "answered the purged page");
        watch_other.settled().await;
        let body = stalled.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(version_of(&body), "v0");
        drop(hog);
        watch_one.settled().await;
        for service in [&here, &there] {
            assert_eq!(
                read(service).await.unwrap(),
                "v1",
                "the purged page came back"
            );
        }
    })
    .await;
    watch_one.settled().await;
    watch_other.settled().await;
}

/// A stalled fill whose client goes away leaves nothing held: its placeholder is waited
/// for by nobody (another process goes at once), and its flight is gone (a request here
/// leads at once). (The `fill_buffer` bytes its queue held go back with the client's
/// end: `fill::reader`'s own tests.)
#[tokio::test(start_paused = true)]
async fn a_stalled_fill_whose_client_goes_releases_all_it_holds() {
    const LONG: Duration = Duration::from_secs(30);
    let backend = tower_memcache::backend::MemoryBackend::new();
    let origin = Versioned::default();
    origin.open();
    let process = || {
        support::layer(backend.clone())
            .namespace(NAMESPACE)
            .fill_buffer(64 * 1024)
            .coalesce_timeout(LONG)
            .lease(Some(LONG))
            .lease_wait(LONG, Duration::from_millis(20))
    };
    let (one, other) = (process(), process());
    let watch = Watch::of(&one);
    let (here, there) = (origin.behind(&one), origin.behind(&other));
    let hog = here.clone().oneshot(get("/hog")).await.unwrap();
    let stalled = here.clone().oneshot(get("/hot")).await.unwrap();
    // Past its grace: handed on (nobody followed) and its placeholder's wait ended.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for service in [&there, &here] {
        let started = tokio::time::Instant::now();
        assert_eq!(read(service).await.unwrap(), "v0");
        let waited = started.elapsed();
        assert!(
            waited < LONG / 2,
            "waited {waited:?} for a fill whose client is gone"
        );
    }
    drop(hog);
    watch.settled().await;
}
