//! Review RK: an adversarial second look at review RG (a replacement standing in for a
//! failing origin, bounded placement rounds, `ttl`, deadlines on tokio's clock).
//!
//! Each test names a defect and fails if it is there.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::{CacheMode, MemcacheLayer};

use support::{Watch, bounded, send};

/// Process A's revalidation of a stale entry (a validator, no `stale-if-error`), held at its origin
/// while process B (same memcached) refreshes the URL with a fresh response that says
/// `refreshed_with`, then failed with a 503: A's answer to a request with `headers`.
async fn a_revalidation_failing_after_a_refresh(
    refreshed_with: &'static str,
    headers: &[(&str, &str)],
) -> support::Answer {
    let backend = MemoryBackend::new();
    let process = |backend: &MemoryBackend| -> MemcacheLayer<MemoryBackend> {
        support::layer(backend.clone())
            .namespace("review-rk-fresh-replacement")
            .mode(CacheMode::Origin)
    };
    let (a_layer, b_layer) = (process(&backend), process(&backend));
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
                    // Stale as stored: its revalidation goes to the origin.
                    let mut page = Response::new(Full::new(Bytes::from("before")));
                    let fields = page.headers_mut();
                    fields.insert("cache-control", HeaderValue::from_static("max-age=60"));
                    fields.insert("age", HeaderValue::from_static("120"));
                    // Kept for its revalidation.
                    fields.insert("etag", HeaderValue::from_static("\"1\""));
                    return Ok::<_, Infallible>(page);
                }
                // The revalidation: held until the test lets it fail.
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
                let mut down = Response::new(Full::new(Bytes::from("origin down")));
                *down.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok(down)
            }
        }
    }));
    let b = b_layer.layer(tower::service_fn(move |_request: Request<()>| async move {
        let mut response = Response::new(Full::new(Bytes::from("refreshed")));
        let value = HeaderValue::from_static(refreshed_with);
        response.headers_mut().insert("cache-control", value);
        Ok::<_, Infallible>(response)
    }));
    let url = "http://site.example/refreshed";
    let first = bounded("A's fill", send(&a, Method::GET, url, &[])).await;
    assert_eq!(first.body, "before");
    support::stores(&a_watch, 1).await;
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
    support::eventually("A's revalidation at its origin", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let b_answer = bounded("B's request", send(&b, Method::GET, url, &[])).await;
    assert_eq!(b_answer.body, "refreshed");
    support::stores(&b_watch, 1).await;
    release.add_permits(1);
    bounded("A's answer", revalidating).await.unwrap()
}

/// Defect: review RG let what memcached holds once the origin failed stand in, but only
/// when it was usable *stale* (`stale-if-error`, `stale_if_unreachable`). Another
/// process's refresh that stored a fresh response without `stale-if-error` over the
/// stale entry still left the client the origin's 503, though any request arriving at
/// that moment was given that fresh response as a hit. A response the request's own
/// directives accept as it is now answers (the request's `no-cache` still gets the 503,
/// see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_response_stored_during_a_failing_revalidation_answers_it() {
    let answer = a_revalidation_failing_after_a_refresh("max-age=600", &[]).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "refreshed"),
        "the origin's failure, though memcached held a fresh response ({})",
        answer.cache_status()
    );
    let status = answer.cache_status();
    assert!(
        status.contains("fwd=stale; fwd-status=503; ttl=") && status.contains("stored-meanwhile"),
        "{status}"
    );
}

/// The request's own directives still rule what may answer it: with `no-cache` (it wants
/// the origin's word) or a `min-fresh` the refreshed response does not meet, the origin's
/// failure passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replacement_does_not_answer_a_request_its_directives_refuse() {
    for directives in ["no-cache", "min-fresh=3600", "max-age=0"] {
        let headers = [("cache-control", directives)];
        let answer = a_revalidation_failing_after_a_refresh("max-age=600", &headers).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{directives}: {answer:?}"
        );
        assert_eq!(answer.body, "origin down", "{directives}");
    }
}
