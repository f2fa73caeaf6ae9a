//! Review RG: an adversarial second look at coalescing waits and stale stand-ins (the one
//! `lease_wait` per request of commit 1720c17, the proxy's loop check against a leader's
//! followers, `Cache-Status` of a fresh stand-in, the re-read of a stand-in).
//!
//! Each test names an attack or defect and fails if it works.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Layer;
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::{Watch, bounded, send};

/// Pulls `ttl` out of a `Cache-Status` member.
fn ttl(cache_status: &str) -> Option<&str> {
    cache_status
        .split(';')
        .map(str::trim)
        .find_map(|param| param.strip_prefix("ttl="))
}

/// RFC 9211 §2.4: `ttl` is the response's remaining freshness lifetime, negative only
/// when it is stale. A fresh entry standing in for a failing origin (the request asked
/// for the origin with `max-age=0`, the origin answered 503, the entry's
/// `stale-if-error` let it stand in) said `ttl=-0`: its staleness, zero, with a minus
/// sign, so a monitor took a fresh stand-in for a stale one and could not tell how long
/// it stays fresh. It now says its remaining lifetime.
#[tokio::test]
async fn a_fresh_entry_standing_in_for_a_failing_origin_says_its_remaining_lifetime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from("page")));
                if call > 0 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                response.headers_mut().insert(
                    "cache-control",
                    HeaderValue::from_static("max-age=600, stale-if-error=600"),
                );
                Ok::<_, Infallible>(response)
            }
        }
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let url = "http://site.example/fresh-stand-in";
    bounded("fill", send(&service, Method::GET, url, &[])).await;
    watch.settled().await;
    let answer = bounded(
        "stand-in",
        send(
            &service,
            Method::GET,
            url,
            &[("cache-control", "max-age=0")],
        ),
    )
    .await;
    assert_eq!(answer.body, "page", "{answer:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "it went forward");
    let said = answer.cache_status();
    assert!(said.contains("fwd-status=503"), "{said}");
    assert!(said.ends_with("detail=stale-if-error"), "{said}");
    let ttl: i64 = ttl(said)
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl: {said}"));
    assert!(
        !said.contains("ttl=-"),
        "a fresh stand-in said it was stale: {said}"
    );
    // Fresh for 600 s from its fill a moment ago (bounded from above only by its
    // lifetime; a loaded machine may take seconds between the two requests).
    assert!((500..=600).contains(&ttl), "{said}");
}
