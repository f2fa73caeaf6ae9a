//! Review SU: a systematic cancellation sweep of `MemcacheLayer`. tower and hyper drop a
//! response future (or its body) at any point when the client goes away; for each
//! scenario the harness polls one request's whole exchange (the response future, then
//! its body, frame by frame) exactly N times, drops it, for every N up to the poll count
//! of the full run, and then checks the invariants:
//! - the next identical request is answered correctly and promptly (no wait on a
//!   placeholder or flight the dropped request left);
//! - an unsafe request the origin answered with success invalidates the cached entry,
//!   however soon after that its client went (RFC 9111 §4.4);
//! - a purge dropped midway leaves nothing stuck: a later purge that returns holds;
//! - nothing panics and the layer's background work ends.
//!
//! Paths: a miss and its fill (alone, streamed, with a follower, and the follower itself
//! dropped), a hit, a near-tier hit (answered from the tier, and confirmed with memcached),
//! a stale-while-revalidate answer and its refresh, a conditional revalidation (304
//! merged; with a follower, and the follower dropped), a range request after a miss, an
//! unsafe-method invalidation, and `Purger` calls, over `MemoryBackend` on a paused clock,
//! answering at once and with a millisecond per call; a miss, a hit, a revalidation, a
//! stale answer, an invalidation and purges over `TcpBackend` (with a near tier) against a
//! real memcached. The layer ages entries by the wall clock, which the paused clock does
//! not move: stale entries come stale from the origin (`Age`).

// Most of the scaffolding serves the memcached scenarios too.
#![cfg_attr(not(feature = "tcp"), allow(dead_code, unused_imports))]

use crate::support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache, ResponseBody};

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Chunks>>, Infallible>;

/// The origin's body: its bytes in `parts` frames, each after a millisecond (the
/// first at once), so that a fill's body has points to be dropped at.
struct Chunks {
    parts: std::collections::VecDeque<Bytes>,
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Chunks {
    fn new(bytes: Bytes, parts: usize) -> Self {
        let size = bytes.len().div_ceil(parts.max(1)).max(1);
        let parts = bytes
            .chunks(size)
            .map(|part| bytes.slice_ref(part))
            .collect();
        Self { parts, wait: None }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(wait) = self.wait.as_mut() {
            std::task::ready!(wait.as_mut().poll(cx));
        }
        let Some(part) = self.parts.pop_front() else {
            return Poll::Ready(None);
        };
        self.wait = (!self.parts.is_empty())
            .then(|| Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        Poll::Ready(Some(Ok(http_body::Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }
}

/// The origin: a GET answers `path vN` (N the data version), with the `reuse` headers
/// and an `ETag` of the version; a conditional GET whose `If-None-Match` names the current
/// version answers 304; a `Range` GET answers 206 of the range `bytes=0-3`; a POST makes
/// a new version and answers 200. Every call waits `delay` first (a pending point).
#[derive(Clone)]
struct Origin {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    delay: Duration,
    reuse: &'static str,
    /// Frames of a 200's body.
    parts: usize,
}

impl Origin {
    fn new(reuse: &'static str) -> Self {
        Self {
            version: Arc::new(AtomicU64::new(1)),
            calls: Arc::default(),
            delay: Duration::from_millis(3),
            reuse,
            parts: 1,
        }
    }

    fn body(&self, path: &str) -> String {
        format!("{path} v{}", self.version.load(Ordering::SeqCst))
    }

    fn service<B: Backend>(&self, layer: &MemcacheLayer<B>) -> Svc {
        let origin = self.clone();
        let svc = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |request: Request<()>| {
                let origin = origin.clone();
                async move {
                    origin.calls.fetch_add(1, Ordering::SeqCst);
                    if !origin.delay.is_zero() {
                        tokio::time::sleep(origin.delay).await;
                    }
                    if request.method() == Method::POST {
                        origin.version.fetch_add(1, Ordering::SeqCst);
                        return Ok::<_, Infallible>(Response::new(Chunks::new(
                            Bytes::from("done"),
                            1,
                        )));
                    }
                    let version = origin.version.load(Ordering::SeqCst);
                    let etag = format!("\"v{version}\"");
                    let body = origin.body(request.uri().path());
                    let mut builder = Response::builder()
                        .header("cache-control", origin.reuse)
                        .header("etag", &etag);
                    // The layer ages entries by the wall clock, which the paused tokio
                    // clock does not move: a short-lived answer comes already stale.
                    if origin.reuse.starts_with("max-age=1") {
                        builder = builder.header("age", "5");
                    }
                    let response = if request
                        .headers()
                        .get("if-none-match")
                        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
                    {
                        builder.status(304).body(Chunks::new(Bytes::new(), 1))
                    } else if request.headers().contains_key("range") {
                        let part = body.as_bytes()[..4].to_vec();
                        builder
                            .status(206)
                            .header("content-range", format!("bytes 0-3/{}", body.len()))
                            .body(Chunks::new(Bytes::from(part), 1))
                    } else {
                        builder.body(Chunks::new(Bytes::from(body), origin.parts))
                    };
                    Ok(response.unwrap())
                }
            });
        tower::util::BoxCloneSyncService::new(svc)
    }
}

fn request(method: Method, url: &str, headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

/// One client's exchange: the response, then its body read frame by frame.
async fn exchange(svc: Svc, request: Request<()>) -> (u16, String) {
    let response = svc.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls `future` at most `polls` times, letting the runtime run (timers, spawned tasks)
/// between polls, and drops it if it has not completed. `Ok` with the output and the
/// polls it took, or `Err(())` when dropped.
async fn poll_then_drop<F: Future>(future: F, polls: usize) -> Result<(F::Output, usize), ()> {
    let mut future = pin!(future);
    for poll in 1..=polls {
        let once = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
        if let Poll::Ready(output) = once {
            return Ok((output, poll));
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(())
}

/// How many polls the whole exchange takes when nobody drops it.
const FULL_RUN_BOUND: usize = 2_000;

/// Bounds the virtual time of one check: far below the lease wait (2 s) and the
/// coalesce timeout (5 s) a dropped request's leftovers would cost.
async fn prompt<T>(what: &str, future: impl Future<Output = T>) -> T {
    let started = tokio::time::Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not end"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "{what}: took {took:?} after a dropped request"
    );
    output
}

async fn settled(layer: &MemcacheLayer<impl Backend>) {
    tokio::time::timeout(Duration::from_secs(30), layer.background().idle())
        .await
        .expect("background work did not end");
}

/// One scenario of the sweep: `prepare` builds a fresh layer and origin (and fills what
/// the path needs), `victim` is the request dropped after N polls, `check` the
/// invariants after the drop.
struct Scenario {
    name: &'static str,
    reuse: &'static str,
    near: bool,
    /// Requests answered in full before the victim (filling the cache).
    before: Vec<Request<()>>,
    /// Virtual time to let pass before the victim.
    age: Duration,
    victim: fn() -> Request<()>,
    /// A request started alongside the victim (a coalescing follower), if any.
    follower: Option<fn() -> Request<()>>,
    /// Frames of the origin's 200 bodies.
    parts: usize,
    /// Whether the other request starts first (the victim is the follower).
    follows: bool,
    /// How long the near tier (when `near`) answers before it confirms with memcached.
    near_for: Duration,
}

struct Fixture {
    layer: MemcacheLayer<MemoryBackend>,
    origin: Origin,
    svc: Svc,
}

/// A memcached call's round trip in the slow runs: each call a point to drop at.
const SLOW: Duration = Duration::from_millis(1);

async fn prepare(scenario: &Scenario, before: &[Request<()>], latency: Duration) -> Fixture {
    let backend = MemoryBackend::new();
    backend.set_latency(latency);
    // The origin's headers rule freshness (the reverse proxy's mode).
    let mut layer = MemcacheLayer::new(backend).mode(CacheMode::Origin);
    if scenario.near {
        layer = layer.near_cache(NearCache::new(1 << 20, scenario.near_for));
    }
    let mut origin = Origin::new(scenario.reuse);
    origin.parts = scenario.parts;
    let svc = origin.service(&layer);
    for request in before {
        let request = clone_request(request);
        let (status, _) = exchange(svc.clone(), request).await;
        assert!(status < 400);
        settled(&layer).await;
    }
    tokio::time::sleep(scenario.age).await;
    Fixture { layer, origin, svc }
}

fn clone_request(request: &Request<()>) -> Request<()> {
    let mut copy = Request::builder()
        .method(request.method().clone())
        .uri(request.uri().clone())
        .body(())
        .unwrap();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// The sweep over a backend that answers at once, then over one that takes [`SLOW`].
async fn sweep(scenario: Scenario) {
    for latency in [Duration::ZERO, SLOW] {
        sweep_with(&scenario, latency).await;
    }
}

/// The scenario's other request, spawned; when the victim follows, run up to its first
/// wait (so that it leads).
async fn start_other(
    scenario: &Scenario,
    fixture: &Fixture,
) -> Option<tokio::task::JoinHandle<(u16, String)>> {
    let make = scenario.follower?;
    let other = tokio::spawn(exchange(fixture.svc.clone(), make()));
    if scenario.follows {
        tokio::task::yield_now().await;
    }
    Some(other)
}

async fn sweep_with(scenario: &Scenario, latency: Duration) {
    let before: Vec<Request<()>> = scenario.before.iter().map(clone_request).collect();
    // The full run: how many polls it takes.
    let fixture = prepare(scenario, &before, latency).await;
    let other = start_other(scenario, &fixture).await;
    let (_, total) = poll_then_drop(
        exchange(fixture.svc.clone(), (scenario.victim)()),
        FULL_RUN_BOUND,
    )
    .await
    .unwrap_or_else(|()| panic!("{}: the full run did not end", scenario.name));
    if let Some(other) = other {
        other.await.unwrap();
    }
    eprintln!("{} ({latency:?}): {total} polls", scenario.name);
    settled(&fixture.layer).await;
    for polls in 0..total {
        let what = format!(
            "{} ({latency:?}) dropped after {polls} polls",
            scenario.name
        );
        let fixture = prepare(scenario, &before, latency).await;
        let follower = start_other(scenario, &fixture).await;
        let dropped =
            poll_then_drop(exchange(fixture.svc.clone(), (scenario.victim)()), polls).await;
        assert!(dropped.is_err(), "{what}: ended early");
        if let Some(follower) = follower {
            let (status, body) = prompt(&format!("{what}: its follower"), follower)
                .await
                .unwrap();
            assert_eq!(status, 200, "{what}: follower");
            assert_eq!(body, fixture.origin.body("/page"), "{what}: follower");
        }
        // What the dropped request left running (a store, a refresh, an unsafe
        // request's invalidation) ends first: a request racing it has no order to keep.
        settled(&fixture.layer).await;
        check(&what, scenario, &fixture).await;
        settled(&fixture.layer).await;
        assert_eq!(fixture.layer.background().running(), 0, "{what}");
        // Each request counts once in hits, misses or bypasses: every one that got its
        // answer, the dropped one at most once.
        let stats = fixture.layer.stats().snapshot();
        let counted = stats.hits + stats.misses + stats.bypasses;
        let answered = (before.len() + usize::from(scenario.follower.is_some()) + 3) as u64;
        assert!(
            (answered..=answered + 1).contains(&counted),
            "{what}: {counted} counted of {answered} answered: {stats:?}"
        );
    }
}

/// After a drop: the same URL is answered with the origin's current representation,
/// promptly, twice (the second time from the cache when it is reusable), and a range
/// of it too.
async fn check(what: &str, scenario: &Scenario, fixture: &Fixture) {
    let current = fixture.origin.body("/page");
    for round in 0..2 {
        let (status, body) = prompt(
            &format!("{what}: GET {round}"),
            exchange(
                fixture.svc.clone(),
                request(Method::GET, "http://localhost/page", &[]),
            ),
        )
        .await;
        assert_eq!(status, 200, "{what}: GET {round}");
        assert_eq!(body, current, "{what}: GET {round} ({})", scenario.name);
        settled(&fixture.layer).await;
    }
    let (status, body) = prompt(
        &format!("{what}: range"),
        exchange(
            fixture.svc.clone(),
            request(
                Method::GET,
                "http://localhost/page",
                &[("range", "bytes=0-3")],
            ),
        ),
    )
    .await;
    assert_eq!(status, 206, "{what}: range");
    assert_eq!(body, current[..4], "{what}: range");
}

fn get() -> Request<()> {
    request(Method::GET, "http://localhost/page", &[])
}

fn fresh() -> &'static str {
    "max-age=600"
}

#[tokio::test(start_paused = true)]
async fn a_miss_and_its_fill_dropped_at_every_point() {
    sweep(Scenario {
        name: "miss",
        reuse: fresh(),
        near: false,
        before: vec![],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_coalescing_leader_dropped_at_every_point_hands_over() {
    sweep(Scenario {
        name: "leader with a follower",
        reuse: fresh(),
        near: false,
        before: vec![],
        age: Duration::ZERO,
        victim: get,
        follower: Some(get),
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_streamed_fill_dropped_at_every_point() {
    sweep(Scenario {
        name: "streamed miss",
        reuse: fresh(),
        near: false,
        before: vec![],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 4,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_streamed_fill_with_a_follower_dropped_at_every_point() {
    sweep(Scenario {
        name: "streamed miss with a follower",
        reuse: fresh(),
        near: true,
        before: vec![],
        age: Duration::ZERO,
        victim: get,
        follower: Some(get),
        parts: 4,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_streamed_revalidation_with_a_follower_dropped_at_every_point() {
    sweep(Scenario {
        name: "streamed revalidation with a follower",
        reuse: "max-age=1",
        near: false,
        before: vec![get()],
        age: Duration::ZERO,
        victim: || {
            request(
                Method::GET,
                "http://localhost/page",
                &[("cache-control", "no-cache")],
            )
        },
        follower: Some(get),
        parts: 4,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_coalesced_follower_dropped_at_every_point() {
    sweep(Scenario {
        name: "follower",
        reuse: fresh(),
        near: true,
        before: vec![],
        age: Duration::ZERO,
        victim: get,
        follower: Some(get),
        parts: 4,
        follows: true,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_of_a_revalidation_dropped_at_every_point() {
    sweep(Scenario {
        name: "follower of a revalidation",
        reuse: "max-age=1",
        near: false,
        before: vec![get()],
        age: Duration::ZERO,
        victim: get,
        follower: Some(get),
        parts: 4,
        follows: true,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_hit_dropped_at_every_point() {
    sweep(Scenario {
        name: "hit",
        reuse: fresh(),
        near: false,
        before: vec![get()],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_near_hit_dropped_at_every_point() {
    sweep(Scenario {
        name: "near hit",
        reuse: fresh(),
        near: true,
        before: vec![get(), get()],
        age: Duration::from_secs(2),
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

/// The near tier keeps entries a microsecond of real time: each near hit is confirmed
/// with memcached first (the paused clock does not move `std::time::Instant`).
#[tokio::test(start_paused = true)]
async fn a_near_hit_being_confirmed_dropped_at_every_point() {
    sweep(Scenario {
        name: "near hit confirmed",
        reuse: fresh(),
        near: true,
        before: vec![get(), get()],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_micros(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_while_revalidate_answer_dropped_at_every_point() {
    sweep(Scenario {
        name: "stale while revalidate",
        reuse: "max-age=1, stale-while-revalidate=600",
        near: false,
        before: vec![get()],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_revalidation_dropped_at_every_point() {
    sweep(Scenario {
        name: "revalidation",
        reuse: "max-age=1",
        near: false,
        before: vec![get()],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_revalidation_with_a_follower_dropped_at_every_point() {
    sweep(Scenario {
        name: "revalidation with a follower",
        reuse: "max-age=1",
        near: false,
        before: vec![get()],
        age: Duration::ZERO,
        victim: get,
        follower: Some(get),
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_range_request_after_a_miss_dropped_at_every_point() {
    sweep(Scenario {
        name: "range after a miss",
        reuse: fresh(),
        near: false,
        before: vec![],
        age: Duration::ZERO,
        victim: || {
            request(
                Method::GET,
                "http://localhost/page",
                &[("range", "bytes=0-3")],
            )
        },
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_request_dropped_at_every_point() {
    sweep(Scenario {
        name: "POST",
        reuse: fresh(),
        near: true,
        before: vec![get(), get()],
        age: Duration::ZERO,
        victim: || request(Method::POST, "http://localhost/page", &[]),
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    })
    .await;
}

/// A purge dropped after N polls, for every N: then a purge that returns holds, and
/// the next request is answered promptly with what the origin says now.
#[tokio::test(start_paused = true)]
async fn purges_dropped_at_every_point() {
    let scenario = Scenario {
        name: "purge",
        reuse: fresh(),
        near: true,
        before: vec![get(), get()],
        age: Duration::ZERO,
        victim: get,
        follower: None,
        parts: 1,
        follows: false,
        near_for: Duration::from_secs(1),
    };
    let before: Vec<Request<()>> = scenario.before.iter().map(clone_request).collect();
    for (kind, latency) in (0..3).flat_map(|kind| [(kind, Duration::ZERO), (kind, SLOW)]) {
        let run = |purger: tower_memcache::cache::Purger<MemoryBackend>| async move {
            match kind {
                0 => purger.purge_uri("http://localhost/page").await,
                1 => purger.purge_tag("none").await,
                _ => purger.purge_namespace().await,
            }
        };
        let fixture = prepare(&scenario, &before, latency).await;
        let (_, total) = poll_then_drop(run(fixture.layer.purger()), FULL_RUN_BOUND)
            .await
            .expect("purge did not end");
        for polls in 0..total {
            let what = format!("purge {kind} ({latency:?}) dropped after {polls} polls");
            let fixture = prepare(&scenario, &before, latency).await;
            let _ = poll_then_drop(run(fixture.layer.purger()), polls).await;
            fixture.origin.version.fetch_add(1, Ordering::SeqCst);
            prompt(
                &what,
                fixture.layer.purger().purge_uri("http://localhost/page"),
            )
            .await
            .unwrap();
            check(&what, &scenario, &fixture).await;
            settled(&fixture.layer).await;
        }
    }
}

/// The memcached sweep: a layer with a near tier over `TcpBackend`, the entry filled and
/// confirmed, then `victim` dropped after N polls for every N up to its full run.
#[cfg(feature = "tcp")]
async fn tcp_sweep(name: &str, filled: bool, reuse: &'static str, victim: fn() -> Request<()>) {
    let Some(memcached) = support::Memcached::start(name) else {
        assert!(!support::memcached_required(), "memcached required");
        return;
    };
    let mut total = None;
    let mut polls = 0;
    let mut dropped = 0;
    while total.is_none_or(|total| polls < total) {
        memcached.flush_all();
        let layer = MemcacheLayer::new(support::patient_backend([memcached.addr()]))
            .mode(CacheMode::Origin)
            .namespace(format!("su{polls}"))
            .near_cache(NearCache::new(1 << 20, Duration::from_secs(1)));
        let mut origin = Origin::new(reuse);
        origin.delay = Duration::ZERO;
        let svc = origin.service(&layer);
        for _ in 0..if filled { 2 } else { 0 } {
            exchange(svc.clone(), get()).await;
            settled(&layer).await;
        }
        let what = format!("{name} dropped after {polls} polls");
        match poll_then_drop(
            exchange(svc.clone(), victim()),
            total.map_or(FULL_RUN_BOUND, |_| polls),
        )
        .await
        {
            Ok((_, took)) if total.is_none() => {
                eprintln!("{name}: {took} polls");
                total = Some(took);
                polls = 0;
                continue;
            }
            // Over sockets the polls a run takes vary with the machine's load (a reply
            // ready at the first poll or only at a later one): a run that ended within
            // N polls was not dropped, and is checked as a whole run is.
            Ok(_) => {}
            Err(()) if total.is_none() => panic!("{name}: the full run did not end"),
            Err(()) => dropped += 1,
        }
        settled(&layer).await;
        let current = origin.body("/page");
        for round in 0..2 {
            let (status, body) =
                tokio::time::timeout(Duration::from_secs(1), exchange(svc.clone(), get()))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: GET {round} took over a second"));
            assert_eq!(status, 200, "{what}: GET {round}");
            assert_eq!(body, current, "{what}: GET {round}");
            settled(&layer).await;
        }
        polls += 1;
    }
    assert!(dropped > 0, "{name}: every run ended before it was dropped");
}

#[cfg(feature = "tcp")]
#[tokio::test]
async fn over_memcached_an_unsafe_request_dropped_at_every_point_still_invalidates() {
    tcp_sweep("review_su::post", true, fresh(), || {
        request(Method::POST, "http://localhost/page", &[])
    })
    .await;
}

#[cfg(feature = "tcp")]
#[tokio::test]
async fn over_memcached_a_hit_dropped_at_every_point() {
    tcp_sweep("review_su::hit", true, fresh(), get).await;
}

#[cfg(feature = "tcp")]
#[tokio::test]
async fn over_memcached_a_revalidation_dropped_at_every_point() {
    tcp_sweep("review_su::revalidation", true, "max-age=1", get).await;
}

#[cfg(feature = "tcp")]
#[tokio::test]
async fn over_memcached_a_stale_while_revalidate_answer_dropped_at_every_point() {
    tcp_sweep(
        "review_su::swr",
        true,
        "max-age=1, stale-while-revalidate=600",
        get,
    )
    .await;
}

#[cfg(feature = "tcp")]
#[tokio::test]
async fn over_memcached_a_miss_dropped_at_every_point() {
    tcp_sweep("review_su::miss", false, fresh(), get).await;
}

/// The sweep's failing point, minimised: the origin has answered a POST with success
/// (the data changed) and the layer is deleting the cached entry in memcached when the
/// client goes. The invalidation must still happen: it was cut off with the dropped
/// response future, and the old page stayed a fresh hit for its whole lifetime.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn a_post_whose_client_goes_during_its_invalidation_still_invalidates() {
    let Some(memcached) = support::Memcached::start("review_su::post_once") else {
        assert!(!support::memcached_required(), "memcached required");
        return;
    };
    for near in [false, true] {
        memcached.flush_all();
        let mut layer = MemcacheLayer::new(support::patient_backend([memcached.addr()]))
            .mode(CacheMode::Origin);
        if near {
            layer = layer.near_cache(NearCache::new(1 << 20, Duration::from_secs(1)));
        }
        let mut origin = Origin::new(fresh());
        origin.delay = Duration::ZERO;
        let svc = origin.service(&layer);
        // Stored, then a hit (with a near tier, kept there too).
        for _ in 0..2 {
            exchange(svc.clone(), get()).await;
            settled(&layer).await;
        }
        // One poll: the origin answers at once, the invalidation waits for memcached.
        let post = poll_then_drop(
            exchange(
                svc.clone(),
                request(Method::POST, "http://localhost/page", &[]),
            ),
            1,
        )
        .await;
        assert!(post.is_err(), "the POST ended in one poll");
        assert_eq!(
            origin.version.load(Ordering::SeqCst),
            2,
            "the POST reached the origin"
        );
        settled(&layer).await;
        let (status, body) = exchange(svc.clone(), get()).await;
        assert_eq!(status, 200);
        assert_eq!(body, "/page v2", "near tier: {near}");
    }
}

/// Purges over memcached, each dropped after N polls for every N: the layer is left
/// sound (the next requests answered at once), and a purge that then returns holds.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn over_memcached_purges_dropped_at_every_point() {
    let Some(memcached) = support::Memcached::start("review_su::purges") else {
        assert!(!support::memcached_required(), "memcached required");
        return;
    };
    let mut round = 0;
    for kind in 0..3 {
        let mut total = None;
        let mut polls = 0;
        let mut dropped = 0;
        while total.is_none_or(|total| polls < total) {
            round += 1;
            let layer = MemcacheLayer::new(support::patient_backend([memcached.addr()]))
                .mode(CacheMode::Origin)
                .namespace(format!("su-purge{round}"))
                .near_cache(NearCache::new(1 << 20, Duration::from_secs(1)));
            let mut origin = Origin::new(fresh());
            origin.delay = Duration::ZERO;
            let svc = origin.service(&layer);
            for _ in 0..2 {
                exchange(svc.clone(), get()).await;
                settled(&layer).await;
            }
            let purger = layer.purger();
            let purge = async move {
                match kind {
                    0 => purger.purge_uri("http://localhost/page").await,
                    1 => purger.purge_tag("none").await,
                    _ => purger.purge_namespace().await,
                }
            };
            let what = format!("purge {kind} dropped after {polls} polls");
            match poll_then_drop(purge, total.map_or(FULL_RUN_BOUND, |_| polls)).await {
                Ok((_, took)) if total.is_none() => {
                    total = Some(took);
                    continue;
                }
                // As in `tcp_sweep`: a run that ended within N polls was not dropped.
                Ok(_) => {}
                Err(()) if total.is_none() => panic!("purge {kind}: the full run did not end"),
                Err(()) => dropped += 1,
            }
            settled(&layer).await;
            origin.version.fetch_add(1, Ordering::SeqCst);
            tokio::time::timeout(
                Duration::from_secs(1),
                layer.purger().purge_uri("http://localhost/page"),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: the next purge took over a second"))
            .unwrap();
            for round in 0..2 {
                let (status, body) =
                    tokio::time::timeout(Duration::from_secs(1), exchange(svc.clone(), get()))
                        .await
                        .unwrap_or_else(|_| panic!("{what}: GET {round} took over a second"));
                assert_eq!(status, 200, "{what}: GET {round}");
                assert_eq!(body, origin.body("/page"), "{what}: GET {round}");
                settled(&layer).await;
            }
            polls += 1;
        }
        assert!(
            dropped > 0,
            "purge {kind}: every run ended before it was dropped"
        );
    }
}

/// Followers dropped while they wait give their place back: with room for two waiting
/// requests, five that joined and went leave room for two more, which share the
/// leader's one origin call.
#[tokio::test(start_paused = true)]
async fn followers_dropped_while_waiting_leave_room_for_others() {
    let layer = MemcacheLayer::new(MemoryBackend::new())
        .mode(CacheMode::Origin)
        .max_coalesced(2);
    let mut origin = Origin::new(fresh());
    origin.delay = Duration::from_millis(50);
    let svc = origin.service(&layer);
    let leader = tokio::spawn(exchange(svc.clone(), get()));
    tokio::task::yield_now().await;
    for _ in 0..5 {
        let gone = poll_then_drop(exchange(svc.clone(), get()), 2).await;
        assert!(gone.is_err());
    }
    let others: Vec<_> = (0..2)
        .map(|_| tokio::spawn(exchange(svc.clone(), get())))
        .collect();
    for other in others {
        assert_eq!(other.await.unwrap(), (200, "/page v1".to_owned()));
    }
    assert_eq!(leader.await.unwrap(), (200, "/page v1".to_owned()));
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1, "one origin call");
    settled(&layer).await;
}
