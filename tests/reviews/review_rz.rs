//! Review RZ: "bounded everything" against a client that tries to exhaust the cache with
//! many cheap requests: the layer's per-layer budgets (`fill_buffer`), the single flight
//! and its waiters, a URL's variants, and the near tier's admission. Costs are counted
//! (origin calls, entries, bytes), and waits measured on tokio's paused clock, never on
//! the wall clock.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tower::{Layer, ServiceExt};
use tower_memcache::backend::MemoryBackend;

/// The body of [`two_frames`].
type TwoFrames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A cacheable page of two frames of `half` bytes each, sent at once (the origin is fast).
fn two_frames(half: usize) -> Response<TwoFrames> {
    let frames = vec![
        Ok(Frame::data(Bytes::from(vec![b'a'; half]))),
        Ok(Frame::data(Bytes::from(vec![b'b'; half]))),
    ];
    Response::builder()
        .header("cache-control", "public, max-age=600")
        .header("content-length", (2 * half).to_string())
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

/// DESIGN: "One client's latency is bounded by the origin's, never by another client's
/// reading speed." A body being stored is read at the origin's pace while the layer's
/// `fill_buffer` has room; past it, the fill follows its client. Clients that stop
/// reading (an attacker's, a few dozen connections with shut windows) spend that budget
/// for everyone, and from then on every request waiting for a URL's refill waited for
/// whichever client led it, however slowly that one read: `coalesce_timeout` (5 s), after
/// which they all went to the origin at once. Now a fill that has waited 100 ms in all for
/// its client hands its flight (and its placeholder's wait) on: the requests waiting for
/// it elect a leader of their own.
#[tokio::test(start_paused = true)]
async fn a_stalled_fill_past_the_budget_does_not_hold_its_followers() {
    const HALF: usize = 256 * 1024;
    const COALESCE: Duration = Duration::from_secs(30);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = support::layer(MemoryBackend::new())
        .fill_buffer(64 * 1024)
        .coalesce_timeout(COALESCE);
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(two_frames(HALF)) }
        }
    }));
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };

    // The budget spent: a client that reads nothing of another page.
    let hog = service.clone().oneshot(get("/hog")).await.unwrap();
    // The hot page's refill, led by a client that reads nothing either.
    let leader = service.clone().oneshot(get("/hot")).await.unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Requests for the hot page wait for that refill.
    const FOLLOWERS: usize = 10;
    let started = tokio::time::Instant::now();
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            tokio::spawn({
                let service = service.clone();
                async move {
                    let response = service.oneshot(get("/hot")).await.unwrap();
                    let status = response
                        .headers()
                        .get("cache-status")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    (status, body.len(), tokio::time::Instant::now())
                }
            })
        })
        .collect();
    for follower in followers {
        let (status, len, answered) = follower.await.unwrap();
        assert_eq!(len, 2 * HALF, "{status:?}");
        let waited = answered - started;
        assert!(
            waited < COALESCE / 2,
            "a follower waited {waited:?} (coalesce_timeout {COALESCE:?}) for a client that \
             reads nothing: {status:?}"
        );
    }
    // One more call for the hot page, by the follower that took the lead: the others
    // waited for it (whose client reads), not each for itself.
    let calls = calls.load(Ordering::SeqCst);
    assert!(calls <= 3, "{calls} origin calls for {FOLLOWERS} followers");
    drop((hog, leader));
    watch.settled().await;
}

/// The other side of the hand-off above: a fill that waits a moment for a client that
/// reads (the budget spent by others) keeps its flight. Handed on at its first wait, every
/// leader gave its followers away as soon as its reader was a frame ahead of its client,
/// and each heir sent the same request to the origin again.
#[tokio::test(start_paused = true)]
async fn a_fill_whose_client_reads_keeps_its_followers_past_the_budget() {
    const HALF: usize = 256 * 1024;
    const FOLLOWERS: usize = 10;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = support::layer(MemoryBackend::new())
        .fill_buffer(64 * 1024)
        // Other processes' placeholders are not waited for: a follower handed the lead
        // goes to the origin at once, and shows in the count.
        .lease(None);
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn({
        let calls = Arc::clone(&calls);
        move |request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // The hot page comes a moment later: its followers are all waiting by then.
                if request.uri().path() == "/hot" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, Infallible>(two_frames(HALF))
            }
        }
    }));
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };
    let hog = service.clone().oneshot(get("/hog")).await.unwrap();
    let requests: Vec<_> = (0..=FOLLOWERS)
        .map(|_| {
            tokio::spawn({
                let service = service.clone();
                async move {
                    let response = service.oneshot(get("/hot")).await.unwrap();
                    // Read as a client on a good link reads: a frame, a moment, the next.
                    let mut body = response.into_body();
                    let mut len = 0;
                    while let Some(frame) = body.frame().await {
                        len += frame.unwrap().into_data().map_or(0, |data| data.len());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    len
                }
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 2 * HALF);
    }
    let calls = calls.load(Ordering::SeqCst);
    assert_eq!(
        calls, 2,
        "{calls} origin calls: the hot page's leader read its body, yet its followers \
         went to the origin"
    );
    drop(hog);
    watch.settled().await;
}

/// The same across processes: a request of another process finds the stalled fill's
/// placeholder, which it waited for `lease_wait` before; its wait is ended with the flight
/// (the placeholder keeps its token: the stalled fill may still store over it).
#[tokio::test(start_paused = true)]
async fn a_stalled_fill_past_the_budget_does_not_hold_other_processes() {
    const HALF: usize = 256 * 1024;
    const LEASE_WAIT: Duration = Duration::from_secs(30);
    let backend = MemoryBackend::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(two_frames(HALF)) }
        }
    });
    let process = || {
        support::layer(backend.clone())
            .fill_buffer(64 * 1024)
            .lease_wait(LEASE_WAIT, Duration::from_millis(20))
    };
    let (one, other) = (process(), process());
    let watch = support::Watch::of(&one);
    let one = one.layer(origin.clone());
    let other = other.layer(origin);
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };
    let hog = one.clone().oneshot(get("/hog")).await.unwrap();
    let stalled = one.clone().oneshot(get("/hot")).await.unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    let response = other.oneshot(get("/hot")).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 2 * HALF);
    let waited = tokio::time::Instant::now() - started;
    assert!(
        waited < LEASE_WAIT / 2,
        "another process waited {waited:?} (lease_wait {LEASE_WAIT:?}) for a fill whose \
         client reads nothing"
    );
    drop((hog, stalled));
    watch.settled().await;
}

/// A cacheable page answering `body`, varying on `vary` when given.
fn page(body: String, vary: Option<&'static str>) -> Response<http_body_util::Full<Bytes>> {
    let mut response = Response::builder().header("cache-control", "public, max-age=600");
    if let Some(vary) = vary {
        response = response.header("vary", vary);
    }
    response
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap()
}

/// The near tier admits what lookups find in memcached, and a flood of pages requested
/// once each (a crawler, or an attacker's scan of every product page: each is filled,
/// then found in memcached once, which is when the tier takes it) must not push out the
/// page every client asks for: its admission keeps a hot set against one-hit scans
/// (S3-FIFO), and its bound counts each entry's heap, not its body alone.
#[tokio::test]
async fn a_flood_of_one_hit_pages_leaves_the_near_tiers_hot_page() {
    const CAPACITY: u64 = 256 * 1024;
    const SCANNED: usize = 1500;
    let near = tower_memcache::cache::NearCache::new(CAPACITY, Duration::from_secs(60));
    let layer = tower_memcache::MemcacheLayer::new(MemoryBackend::new()).near_cache(near.clone());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let body = format!("{}{}", request.uri().path(), "x".repeat(1024));
        Ok::<_, Infallible>(page(body, None))
    }));
    let url = |path: &str| format!("http://shop.example{path}");
    let get = |path: String| {
        let service = service.clone();
        async move { support::send(&service, http::Method::GET, &path, &[]).await }
    };
    // The hot page: filled, found in memcached (kept), then answered by the tier.
    get(url("/hot")).await;
    watch.settled().await;
    get(url("/hot")).await;
    assert!(
        get(url("/hot"))
            .await
            .cache_status()
            .ends_with("detail=near")
    );

    let mut hot_from_near = 0;
    let mut hot_asked = 0;
    for i in 0..SCANNED {
        let scanned = url(&format!("/scan/{i}"));
        get(scanned.clone()).await;
        watch.settled().await;
        // Found in memcached: the near tier takes it.
        get(scanned).await;
        if i % 10 == 9 {
            hot_asked += 1;
            let hot = get(url("/hot")).await;
            assert_eq!(hot.body.len(), 4 + 1024);
            if hot.cache_status().ends_with("detail=near") {
                hot_from_near += 1;
            }
        }
    }
    assert!(
        near.weight() <= near.capacity(),
        "{} bytes kept, over {}",
        near.weight(),
        near.capacity()
    );
    // The scan passed through the tier many times over.
    assert!(
        (near.entries() as u64) * 1024 < CAPACITY,
        "{} entries of over 1 KiB each in {CAPACITY} bytes",
        near.entries()
    );
    assert!(
        hot_from_near >= hot_asked * 9 / 10,
        "the hot page came from the near tier {hot_from_near} times of {hot_asked} during a \
         scan of {SCANNED} one-hit pages"
    );
}

/// A URL whose responses vary on a field the client chooses freely: an attacker cycling
/// `Accept-Language` through many values makes as many variants (each its own memcached
/// item, aged out by memcached's LRU), but the URL's variant index, read on every lookup,
/// stays one small item (a name set, not a value, per `Vary`), and the near tier keeps a
/// few variants of the URL, not one per value.
#[tokio::test]
async fn cycling_a_varied_field_grows_no_index_and_no_near_slot() {
    const VALUES: usize = 400;
    const INDEX_FLAGS: u32 = 0x746d_0102;
    let backend = MemoryBackend::new();
    let near = tower_memcache::cache::NearCache::new(8 << 20, Duration::from_secs(60));
    let layer = tower_memcache::MemcacheLayer::new(backend.clone()).near_cache(near.clone());
    let watch = support::Watch::of(&layer);
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(tower::service_fn({
        let calls = Arc::clone(&calls);
        move |request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let language = request
                .headers()
                .get("accept-language")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            async move { Ok::<_, Infallible>(page(language, Some("Accept-Language"))) }
        }
    }));
    let index = || {
        let indexes: Vec<_> = backend
            .entries()
            .into_iter()
            .filter(|(_, item)| item.flags == INDEX_FLAGS)
            .map(|(_, item)| item.value.len())
            .collect();
        assert_eq!(indexes.len(), 1, "{indexes:?}");
        indexes[0]
    };
    let mut index_len = None;
    for round in 0..2 {
        for i in 0..VALUES {
            let language = format!("x-{i:04}-{}", "q".repeat(200));
            let answer = support::send(
                &service,
                http::Method::GET,
                "http://shop.example/v",
                &[("accept-language", &language)],
            )
            .await;
            assert_eq!(answer.body, language, "round {round}");
            watch.settled().await;
            let len = index();
            assert_eq!(*index_len.get_or_insert(len), len, "the index grew at {i}");
        }
    }
    // One fill per value; the second round is answered from the cache.
    assert_eq!(calls.load(Ordering::SeqCst), VALUES);
    // One slot for the URL, holding a few of its variants.
    assert_eq!(near.entries(), 1);
    assert!(
        near.weight() < 64 * 1024,
        "the near tier holds {} bytes for one URL",
        near.weight()
    );
}
