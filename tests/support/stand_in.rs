//! A stale entry standing in for a failing origin after a purge returned: the scenario of
//! review RA (the purge under way during a revalidation) and review RD (memcached
//! unreadable after the purge), one copy.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::Backend;

use super::{Answer, Watch, send};

/// The URL the scenario caches.
pub const URL: &str = "http://site.example/p";

/// The origin failing.
pub fn origin_down() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from("origin down")));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// The first fill: stale on arrival (its `Age` is past its lifetime), usable when the
/// origin fails.
pub fn stale_on_arrival() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from("before the purge")));
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        "max-age=60, stale-if-error=600".parse().unwrap(),
    );
    headers.insert("age", "120".parse().unwrap());
    response
}

/// [`URL`] stored stale, and a control showing a failing origin stood in for; then a
/// revalidation held at the origin while its URL is purged, `after_purge` run once the
/// purge returned, and the origin failing. Returns the revalidating request's answer.
pub async fn revalidation_failing_after_a_purge<B: Backend + Clone>(
    layer: MemcacheLayer<B>,
    after_purge: impl FnOnce(),
) -> Answer {
    let watch = Watch::of(&layer);
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn({
            let (calls, release) = (Arc::clone(&calls), Arc::clone(&release));
            move |_request: Request<()>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                let release = Arc::clone(&release);
                async move {
                    let response: Result<_, Infallible> = match call {
                        0 => Ok(stale_on_arrival()),
                        // Revalidations: held until the test lets them fail.
                        _ => {
                            if let Ok(permit) = release.acquire().await {
                                permit.forget();
                            }
                            Ok(origin_down())
                        }
                    };
                    response
                }
            }
        });
    let first = send(&svc, Method::GET, URL, &[]).await;
    assert_eq!(first.body, "before the purge");
    super::stores(&watch, 1).await;
    // Without a purge, the failing origin is stood in for (the control).
    release.add_permits(1);
    let control = send(&svc, Method::GET, URL, &[]).await;
    assert_eq!(
        control.body,
        "before the purge",
        "{}",
        control.cache_status()
    );

    let revalidating = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, Method::GET, URL, &[]).await }
    });
    super::eventually("the revalidation reached the origin", || {
        calls.load(Ordering::SeqCst) == 3
    })
    .await;
    layer.purger().purge_uri(URL).await.unwrap();
    after_purge();
    release.add_permits(1);
    super::bounded("the revalidation's answer", revalidating)
        .await
        .unwrap()
}

/// The answer of a request whose stale entry was purged before the origin failed: the
/// origin's failure, not the purged response.
pub fn assert_purged_not_served(answer: &Answer) {
    assert_ne!(
        answer.body,
        "before the purge",
        "a purged response was served after the purge returned ({})",
        answer.cache_status()
    );
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}
