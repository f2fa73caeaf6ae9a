//! Review QN: time and numbers as a hostile or careless origin, client or memcached bends
//! them: `Date`, `Age`, `Expires` and delta-seconds at their limits, refreshes, lifetimes
//! and the arithmetic of durations. Each test names the defect it would catch.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

/// `now + offset_secs` as an IMF-fixdate.
fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let time = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs.unsigned_abs())
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(time)
}

/// RFC 9110 §6.6.1: "A recipient with a clock that receives a response message without a
/// Date header field MUST record the time it was received and append a corresponding Date
/// header field". A 304 without `Date` freshens a stored response whose `Date` is two
/// minutes old (stale: `max-age=60`): the refresh kept the stored `Date`, its apparent age
/// (two minutes) outran the lifetime the 304 renewed, and the entry was stale again the
/// moment it was refreshed. Every request then went to the origin, and hits reported the
/// old `Age`.
#[tokio::test]
async fn a_304_without_date_freshens_the_entry_from_now() {
    support::bounded("304 without Date", async {
        let layer = support::layer(MemoryBackend::new())
            .namespace("review-qn-304-date")
            .mode(CacheMode::Origin);
        let watch = support::Watch::of(&layer);
        let calls = Arc::new(AtomicUsize::new(0));
        let old_date = http_date(-120);
        let service = layer.layer(tower::service_fn({
            let calls = Arc::clone(&calls);
            move |request: Request<()>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                let old_date = old_date.clone();
                async move {
                    let response = if request.headers().contains_key("if-none-match") {
                        // A 304 that says the stored response is fresh for another minute,
                        // from a server without a clock (no Date).
                        Response::builder()
                            .status(StatusCode::NOT_MODIFIED)
                            .header("cache-control", "max-age=60")
                            .header("etag", "\"v1\"")
                            .body(Full::new(Bytes::new()))
                    } else {
                        Response::builder()
                            .header("cache-control", "max-age=60")
                            .header("etag", "\"v1\"")
                            .header("date", old_date)
                            .body(Full::new(Bytes::from(format!("call {call}"))))
                    };
                    Ok::<_, Infallible>(response.unwrap())
                }
            }
        }));
        let url = "http://review-qn.test/page";
        let first = support::send(&service, Method::GET, url, &[]).await;
        assert_eq!(first.status, StatusCode::OK);
        support::stores(&watch, 1).await;
        // Stale (two minutes old, fresh for one): revalidated, and the 304 refreshes it.
        let second = support::send(&service, Method::GET, url, &[]).await;
        assert_eq!(second.body, "call 0");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "revalidated");
        support::stores(&watch, 2).await;
        // Fresh for a minute from the refresh: a hit, young.
        let third = support::send(&service, Method::GET, url, &[]).await;
        assert_eq!(third.body, "call 0");
        support::assert_hit(third.cache_status());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "answered from the cache");
        let age: u64 = third
            .header("age")
            .unwrap_or("x")
            .parse()
            .unwrap_or(u64::MAX);
        assert!(age < 60, "Age {age} after a refresh just now");
    })
    .await;
}

/// A handler's `x-memcache-lifetime` that is no plain number of seconds (a fraction, a
/// negative number, a unit, a list, or the field twice with different values) was
/// ignored, and the route's lifetime (an hour by default) applied instead: a response the
/// handler meant to be fresh for half a second, or not at all, was answered from the
/// cache for an hour. Like an invalid `max-age` (RFC 9111 §4.2.1), such a value now
/// means stale at once, and of several values the smallest rules.
#[tokio::test]
async fn a_lifetime_header_that_is_no_number_of_seconds_never_lengthens_the_lifetime() {
    support::bounded("lifetime header", async {
        let cases: [&[&str]; 7] = [
            &["0.5"],
            &["-1"],
            &["30s"],
            &["60, 0"],
            &["1e3"],
            &["60", "0"],
            &["0", "60"],
        ];
        for values in cases {
            let layer = support::layer(MemoryBackend::new()).namespace("review-qn-lifetime");
            let watch = support::Watch::of(&layer);
            let calls = Arc::new(AtomicUsize::new(0));
            let service = layer.layer(tower::service_fn({
                let calls = Arc::clone(&calls);
                move |_request: Request<()>| {
                    let call = calls.fetch_add(1, Ordering::SeqCst);
                    let mut response =
                        Response::new(Full::new(Bytes::from(format!("call {call}"))));
                    for value in values {
                        response
                            .headers_mut()
                            .append("x-memcache-lifetime", value.parse().unwrap());
                    }
                    async move { Ok::<_, Infallible>(response) }
                }
            }));
            let url = "http://review-qn.test/lifetime";
            let first = support::send(&service, Method::GET, url, &[]).await;
            assert_eq!(first.header("x-memcache-lifetime"), None, "{values:?}");
            watch.settled().await;
            let second = support::send(&service, Method::GET, url, &[]).await;
            assert_eq!(second.body, "call 1", "{values:?} answered from the cache");
        }
        // A plain number still rules (the test can fail).
        let layer = support::layer(MemoryBackend::new()).namespace("review-qn-lifetime");
        let watch = support::Watch::of(&layer);
        let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"kept")));
            response
                .headers_mut()
                .insert("x-memcache-lifetime", "60".parse().unwrap());
            Ok::<_, Infallible>(response)
        }));
        let url = "http://review-qn.test/kept";
        support::send(&service, Method::GET, url, &[]).await;
        support::stores(&watch, 1).await;
        let hit = support::send(&service, Method::GET, url, &[]).await;
        support::assert_hit(hit.cache_status());
    })
    .await;
}
