//! Review TK: a second, adversarial look at three fixes merged within the hour.
//!
//! - Review TF: a variant written over what its lookup read under its key (`add` over
//!   nothing, `cas` over a value), so the older of two answers in flight never lands over
//!   the newer. Found: a URL's first fill (no index yet: its lookup read no variant key)
//!   still wrote its variant with a plain `set`; two first fills alongside under one
//!   placeholder token (another process's lease wait ran out, or leases off), the older
//!   answer, landing last, replaced the newer one in memcached, where for a plain entry
//!   the first to land is kept.
//! - Review TJ: a coded response is selected by `Accept-Encoding` even without `Vary`.
//! - Review TD: a tag generation created by a clock far ahead is rewritten as a purge now.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CacheMode, ResponseBody};

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// Two processes' first fills of one URL's variant (no index yet) go alongside under one
/// placeholder token: the first process's is held at the origin, the second's waits out
/// its lease wait (or, `leases` off, goes at once), re-arms the placeholder and is
/// answered and stored; then the first's answer, older, comes back. The newer must stay.
async fn two_first_fills_of_a_variant(leases: bool) {
    let store = MemoryBackend::new();
    let calls = Arc::new(AtomicU64::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let origin = {
        let (calls, release) = (Arc::clone(&calls), Arc::clone(&release));
        move |request: Request<()>| {
            let version = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let release = Arc::clone(&release);
            let lang = request.headers().get("accept-language").cloned();
            async move {
                if version == 1 {
                    let _ = tokio::time::timeout(Duration::from_secs(3), release.notified()).await;
                }
                let lang = lang.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
                let response = Response::builder()
                    .header("cache-control", "max-age=600")
                    .header("vary", "accept-language")
                    .body(Full::new(Bytes::from(format!("{lang} v{version}"))))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    };
    let process = |store: &MemoryBackend| {
        let mut layer = MemcacheLayer::new(store.clone())
            .mode(CacheMode::Origin)
            .lease_wait(Duration::from_millis(100), Duration::from_millis(10));
        if !leases {
            layer = layer.lease(None);
        }
        let watch = support::Watch::of(&layer);
        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(origin.clone());
        (tower::util::BoxCloneSyncService::new(svc) as Svc, watch)
    };
    let ((first, first_watch), (second, second_watch)) = (process(&store), process(&store));
    let get = |svc: &Svc, lang: &str| {
        let request = Request::get("http://site.example/news").header("accept-language", lang);
        let response = svc.clone().oneshot(request.body(()).unwrap());
        async move {
            let body = response.await.unwrap().into_body().collect().await.unwrap();
            String::from_utf8_lossy(&body.to_bytes()).into_owned()
        }
    };
    let held = tokio::spawn(get(&first, "fr"));
    support::eventually("the first at the origin", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(&second, "fr").await, "fr v2");
    second_watch.settled().await;
    assert_eq!(get(&second, "fr").await, "fr v2", "the newer stored");
    release.notify_one();
    assert_eq!(held.await.unwrap(), "fr v1");
    first_watch.settled().await;
    assert_eq!(
        get(&second, "fr").await,
        "fr v2",
        "the older first fill replaced the newer one"
    );
    assert_eq!(get(&first, "fr").await, "fr v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Default leases: the second process's lease wait ran out, and it re-armed the first's
/// placeholder (same token) and went alongside.
#[tokio::test]
async fn an_older_first_fill_of_a_variant_does_not_replace_a_newer_one() {
    two_first_fills_of_a_variant(true).await;
}

/// Leases off: the second process goes alongside the first's live placeholder at once.
#[tokio::test]
async fn an_older_first_fill_of_a_variant_without_leases_does_not_replace_a_newer_one() {
    two_first_fills_of_a_variant(false).await;
}
