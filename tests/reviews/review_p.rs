//! Review P: an adversarial review of the one-pass authority, stored header names read as
//! bytes, a hit's `Content-Length`, the proxy's transfer-coding checks, its off-thread log
//! writers, `--runtime shared` as the default and `--cache-timeout` as the backend's
//! timeouts. Each test fails if the defect it names returns.

use crate::support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::Watch;
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

/// A `HeaderMap` holds at most 24 576 fields' worth of slots, and `HeaderMap::reserve`
/// (and `with_capacity`) panic past it. An entry is a list of fields, as many as its
/// bytes hold: one of 30 000 fields (a few bytes each, far below the item size limit)
/// panicked every request that read it, the hit's `reserve(fields + 3)` being the first
/// to give up. Such an entry comes from a memcached that holds garbage, or from an origin
/// (a handler, a reflecting one) that repeats a field: a `HeaderMap` holds any number of
/// one name's values. Now it is neither stored nor, read back, served: a miss.
#[tokio::test]
async fn an_entry_of_more_fields_than_a_header_map_holds_is_a_miss_not_a_panic() {
    const FIELDS: usize = 30_000;
    let origin = tower::service_fn(|_: Request<()>| async {
        // Slow enough for concurrent requests to wait for this one's entry.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
        let headers = response.headers_mut();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
        let name = HeaderName::from_static("x-many");
        for _ in 0..FIELDS {
            headers.append(name.clone(), HeaderValue::from_static("v"));
        }
        Ok::<_, Infallible>(response)
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let url = "http://example.com/many";
    // Concurrent requests first (followers answered from the leader's entry), then one at
    // a time (hits read back from the backend).
    for (round, concurrent) in [3, 1, 1].into_iter().enumerate() {
        let sent: Vec<_> = (0..concurrent)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { support::send(&service, Method::GET, url, &[]).await })
            })
            .collect();
        for sent in sent {
            let answer = tokio::time::timeout(Duration::from_secs(10), sent)
                .await
                .expect("answered in time");
            let answer = match answer {
                Ok(answer) => answer,
                Err(err) => panic!("round {round}: a request panicked: {err}"),
            };
            assert_eq!(answer.body, "body", "round {round}");
        }
        watch.settled().await;
    }
}

/// The same through a refresh: a 304 merges its fields into the stored response's, and the
/// request is answered from the merged set whether or not it may be stored. A 304 that
/// repeats a field 30 000 times panicked the request it answered (and every request that
/// revalidated). Now the request gets the stored response the 304 confirmed, and the
/// entry, which can no longer be refreshed, is removed.
#[tokio::test]
async fn a_304_of_more_fields_than_an_entry_holds_answers_without_a_panic() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const FIELDS: usize = 30_000;
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
                let headers = response.headers_mut();
                headers.insert("cache-control", HeaderValue::from_static("max-age=0"));
                headers.insert("etag", HeaderValue::from_static("\"v1\""));
                if call > 0 && request.headers().contains_key("if-none-match") {
                    *response.status_mut() = http::StatusCode::NOT_MODIFIED;
                    *response.body_mut() = Full::default();
                    let name = HeaderName::from_static("x-many");
                    let headers = response.headers_mut();
                    for _ in 0..FIELDS {
                        headers.append(name.clone(), HeaderValue::from_static("v"));
                    }
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let url = "http://example.com/refreshed";
    support::send(&service, Method::GET, url, &[]).await;
    support::stores(&watch, 1).await;
    for attempt in 0..2 {
        let sent = {
            let service = service.clone();
            tokio::spawn(async move { support::send(&service, Method::GET, url, &[]).await })
        };
        let answer = match tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("answered in time")
        {
            Ok(answer) => answer,
            Err(err) => panic!("request {attempt} panicked: {err}"),
        };
        assert_eq!(answer.status, http::StatusCode::OK, "request {attempt}");
        assert_eq!(answer.body, "body", "request {attempt}");
        watch.settled().await;
    }
}

/// A `HeaderMap` holds some 24 000 distinct names: a stored response's names and a 304's
/// (each within the bound) merged past it panicked the refresh, for each request that
/// revalidated. Now the merge stops at the bound; the merged set, too large to be stored,
/// is refused as above.
#[tokio::test]
async fn a_304_whose_names_and_the_stored_ones_overflow_a_header_map_does_not_panic() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
                let headers = response.headers_mut();
                headers.insert("cache-control", HeaderValue::from_static("max-age=0"));
                headers.insert("etag", HeaderValue::from_static("\"v1\""));
                let (names, prefix) = if call > 0 && request.headers().contains_key("if-none-match")
                {
                    *response.status_mut() = http::StatusCode::NOT_MODIFIED;
                    *response.body_mut() = Full::default();
                    (24_000, "x-new-")
                } else {
                    (4_000, "x-stored-")
                };
                let headers = response.headers_mut();
                for index in 0..names {
                    let name = HeaderName::from_bytes(format!("{prefix}{index}").as_bytes());
                    headers.append(name.unwrap(), HeaderValue::from_static("v"));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let url = "http://example.com/merged";
    support::send(&service, Method::GET, url, &[]).await;
    support::stores(&watch, 1).await;
    let sent = {
        let service = service.clone();
        tokio::spawn(async move { support::send(&service, Method::GET, url, &[]).await })
    };
    let answer = match tokio::time::timeout(Duration::from_secs(20), sent)
        .await
        .expect("answered in time")
    {
        Ok(answer) => answer,
        Err(err) => panic!("the revalidating request panicked: {err}"),
    };
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(answer.body, "body");
}
