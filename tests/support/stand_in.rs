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

/// What happens to the URL while process A's revalidation is at its origin
/// ([`revalidation_failing_across_processes`]).
#[derive(Clone, Copy, Debug)]
pub enum Meanwhile {
    /// Process B refreshes it (stored over A's stale entry, no purge).
    Refreshed,
    /// A purge, then process B fills it anew.
    PurgedAndRefilled,
    /// A purge, and nothing since.
    Purged,
}

/// Two processes over one memcached (reviews RG and RK): process A stores `first`
/// (stale on arrival), then revalidates it for a request with `headers`, held at A's
/// origin while `meanwhile` happens through process B, whose origin answers
/// `"refreshed"` with `Cache-Control: refreshed_with`; then A's origin fails with a 503.
/// Returns A's answer.
pub async fn revalidation_failing_across_processes(
    first: fn() -> Response<Full<Bytes>>,
    meanwhile: Meanwhile,
    refreshed_with: &'static str,
    headers: &[(&str, &str)],
) -> Answer {
    use tower::Layer;
    let backend = tower_memcache::backend::MemoryBackend::new();
    let process = || {
        super::layer(backend.clone())
            .namespace("stand-in-across-processes")
            .mode(tower_memcache::CacheMode::Origin)
    };
    let (a_layer, b_layer) = (process(), process());
    let (a_watch, b_watch) = (Watch::of(&a_layer), Watch::of(&b_layer));
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let a = a_layer.clone().layer(tower::service_fn({
        let (calls, release) = (Arc::clone(&calls), Arc::clone(&release));
        move |_request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let release = Arc::clone(&release);
            async move {
                if call == 0 {
                    return Ok::<_, Infallible>(first());
                }
                // The revalidation: held until the test lets it fail.
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
                Ok(origin_down())
            }
        }
    }));
    let b = b_layer.layer(tower::service_fn(move |_request: Request<()>| async move {
        let mut response = Response::new(Full::new(Bytes::from("refreshed")));
        let value = http::HeaderValue::from_static(refreshed_with);
        response.headers_mut().insert("cache-control", value);
        Ok::<_, Infallible>(response)
    }));
    let url = "http://site.example/across-processes";
    let stored = super::bounded("A's fill", send(&a, Method::GET, url, &[])).await;
    assert_eq!(stored.status, StatusCode::OK);
    super::stores(&a_watch, 1).await;
    let owned: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let revalidating = tokio::spawn({
        let a = a.clone();
        async move {
            let fields: Vec<(&str, &str)> = owned
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            send(&a, Method::GET, url, &fields).await
        }
    });
    super::eventually("A's revalidation at its origin", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    if matches!(meanwhile, Meanwhile::Purged | Meanwhile::PurgedAndRefilled) {
        a_layer.purger().purge_uri(url).await.unwrap();
    }
    if matches!(
        meanwhile,
        Meanwhile::Refreshed | Meanwhile::PurgedAndRefilled
    ) {
        let b_answer = super::bounded("B's request", send(&b, Method::GET, url, &[])).await;
        assert_eq!(b_answer.body, "refreshed", "{meanwhile:?}");
        super::stores(&b_watch, 1).await;
    }
    release.add_permits(1);
    super::bounded("A's answer", revalidating).await.unwrap()
}
