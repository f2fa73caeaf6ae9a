//! Review RI: a sibling variant missing after cancelled requests. Traced to the first use
//! of a namespace on a server: the lookup that creates the namespace generation wrote its
//! tag-purge mark after it, so a tagged fill by another request that read the new
//! generation in between found no mark, took that for an eviction that may hide a tag
//! purge, and wrote a purge of its own: every tagged fill requested before it (a clock
//! skew's margin later in other processes) was refused. In `review_l`'s merged-lookups
//! test, part 2 shared part 1's namespace and started within that margin.

use crate::support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use tokio::sync::{Notify, oneshot};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};
use tower_memcache::cache::CacheMode;

/// MemoryBackend that holds the first `add` of a value marked as created (the namespace's
/// tag-purge mark that a namespace's first lookup writes) until released.
#[derive(Clone)]
struct HeldMark {
    inner: MemoryBackend,
    hold: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    reached: Arc<Notify>,
}

impl Backend for HeldMark {
    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        if value.ends_with(b"c") {
            let held = self.hold.lock().unwrap().take();
            if let Some(release) = held {
                self.reached.notify_one();
                let _ = release.await;
            }
        }
        self.inner.add(key, value, flags, lifetime).await
    }

    forward_to_inner!(
        get, get_many, set, cas, delete, touch, incr, flush_all, stats
    );
}

/// A request that finds the namespace new on its server (its generation absent) creates
/// it; another request's tagged fill that runs while that lookup is still writing is
/// stored, as any fill with no purge since its request went out. Before, the fill found
/// the generation but not yet its tag-purge mark, wrote a tag purge that nobody made, and
/// was refused (with every tagged fill of other processes for a second after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_fill_racing_a_namespaces_first_lookup_is_stored() {
    let (release, held) = oneshot::channel();
    let backend = HeldMark {
        inner: MemoryBackend::new(),
        hold: Arc::new(Mutex::new(Some(held))),
        reached: Arc::new(Notify::new()),
    };
    let reached = Arc::clone(&backend.reached);
    let layer = MemcacheLayer::new(backend)
        .namespace("review-ri-first-use")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|request: Request<()>| async move {
            let mut response = Response::new(Full::new(Bytes::from(request.uri().to_string())));
            let headers = response.headers_mut();
            headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
            headers.insert("surrogate-key", HeaderValue::from_static("news"));
            Ok::<_, Infallible>(response)
        });
    let svc = tower::util::BoxCloneSyncService::new(svc);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { support::send(&svc, Method::GET, "http://site.example/a", &[]).await }
    });
    // The first lookup is creating the namespace on the server.
    tokio::time::timeout(Duration::from_secs(5), reached.notified())
        .await
        .expect("the first lookup writes the namespace's tag-purge mark");
    let url = "http://site.example/b";
    let answer = support::send(&svc, Method::GET, url, &[]).await;
    assert_eq!(answer.body, url);
    tokio::time::timeout(Duration::from_secs(5), layer.background().idle())
        .await
        .expect("the fill's store ends");
    let _ = release.send(());
    let answer = first.await.expect("the first request ends");
    assert_eq!(answer.body, "http://site.example/a");
    tokio::time::timeout(Duration::from_secs(5), layer.background().idle())
        .await
        .expect("the stores end");
    let again = support::send(&svc, Method::GET, url, &[]).await;
    assert!(
        again.cache_status().starts_with("tower-memcache; hit"),
        "the fill racing the namespace's creation was not stored: {}",
        again.cache_status()
    );
}
