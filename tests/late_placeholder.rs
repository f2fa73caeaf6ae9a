//! A placeholder whose `add` lands after the request that sent it stopped waiting for it
//! (its reply timed out, or the request was dropped) must not hold the URL's next
//! requests for `lease_wait`: releasing it in the background used to read the key before
//! the late `add` landed, find nothing to end, and leave the placeholder that came after
//! armed for its whole hold.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};

/// The flags the layer stores its placeholders under (`entry::FLAG_PLACEHOLDER`).
const FLAG_PLACEHOLDER: u32 = 0x746d_0103;

/// MemoryBackend whose placeholder `add`s land `land_after` after they are sent, and whose
/// replies to them take `reply_after`: with a lookup timeout between the two, the layer
/// gives up on the add before it lands.
#[derive(Clone)]
struct LateAdd {
    inner: MemoryBackend,
    land_after: Duration,
    reply_after: Duration,
    late_adds: Arc<AtomicUsize>,
}

impl Backend for LateAdd {
    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        if flags != FLAG_PLACEHOLDER || self.late_adds.fetch_add(1, Ordering::SeqCst) > 0 {
            // Only the first placeholder add is late: the one under test.
            return self.inner.add(key, value, flags, lifetime).await;
        }
        // On its way whatever the caller does: a request written to the socket.
        let landing = tokio::spawn({
            let (inner, key, land_after) = (self.inner.clone(), key.to_string(), self.land_after);
            async move {
                tokio::time::sleep(land_after).await;
                inner.add(&key, value, flags, lifetime).await
            }
        });
        tokio::time::sleep(self.reply_after).await;
        landing
            .await
            .unwrap_or_else(|err| panic!("the late add panicked: {err}"))
    }
    forward_to_inner!(
        get, get_many, set, cas, delete, touch, incr, flush_all, stats
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_add_that_lands_after_its_request_gave_up_holds_nobody() {
    let backend = LateAdd {
        inner: MemoryBackend::new(),
        land_after: Duration::from_millis(300),
        reply_after: Duration::from_millis(600),
        late_adds: Arc::new(AtomicUsize::new(0)),
    };
    let lease_wait = Duration::from_secs(2);
    let layer = MemcacheLayer::new(backend)
        .namespace("late-placeholder")
        .lookup_timeout(Duration::from_millis(100))
        .lease_wait(lease_wait, Duration::from_millis(20));
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let svc = tower::ServiceBuilder::new().layer(layer).service_fn({
        let origin_calls = Arc::clone(&origin_calls);
        move |_request: Request<()>| {
            origin_calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from("page")));
                response
                    .headers_mut()
                    .insert("cache-control", "public, max-age=60".parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        }
    });
    let get = || Request::get("http://example.com/late").body(()).unwrap();

    // The first request gives up on its add after 100 ms and is answered by the origin.
    let first = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(origin_calls.load(Ordering::SeqCst), 1);
    // Its add lands 300 ms after it was sent; its background release ran before that.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let started = Instant::now();
    let second = svc.clone().oneshot(get()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(second.status(), 200);
    assert_eq!(
        origin_calls.load(Ordering::SeqCst),
        2,
        "the second is a miss"
    );
    assert!(
        took < lease_wait / 2,
        "the second request waited {took:?} for a placeholder nobody fills"
    );
}
