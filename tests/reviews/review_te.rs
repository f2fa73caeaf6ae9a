//! Review TE: range requests, conditional requests and HEAD from untrusted clients,
//! answered from the cache (`cache::range`, `answer`, `revalidate`, `stored`, the near
//! tier) and forwarded by it on a miss: what of a client's range asking reaches the
//! origin, and what the origin's answer to it does to the requests waiting for it.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request};
use support::paced_origin::{Pace, Paced};
use support::scripted_service::{Reply, lines};
use support::{Watch, send};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

const PAGE: &str = "0123456789abcdefghij";

/// An origin as Apache httpd is: it honours `Request-Range` (the pre-standard draft's
/// name of `Range`, kept "for backwards-compatibility with Netscape Navigator 2-3") when
/// the request has no `Range`, and answers it with a 206. It records whether any request
/// reached it with the field.
fn apache(calls: &Arc<AtomicUsize>, seen: &Arc<AtomicUsize>, pace: Pace) -> Paced {
    let seen = Arc::clone(seen);
    Paced::new(Arc::clone(calls), pace, move |request: &Request<()>, _| {
        let headers = lines(&[("cache-control", "max-age=600"), ("etag", "\"v1\"")]);
        let asked = request
            .headers()
            .get("range")
            .or_else(|| request.headers().get("request-range"));
        if request.headers().contains_key("request-range") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        match asked {
            Some(_) => {
                let mut headers = headers;
                headers.push(("content-range", format!("bytes 0-0/{}", PAGE.len())));
                Reply::with_status(206, headers, &PAGE[..1])
            }
            None => Reply::ok(headers, PAGE),
        }
    })
}

/// A client's `Request-Range` is in no key and named by no `Vary`, yet an origin that
/// honours it answers a part: relayed, the page was not stored (the client's range set
/// reached the origin past the §17.15 check on `Range`), and every request waiting for
/// the one that carried it went to the origin on its own when the part came back (a
/// `Range` leader's followers elect another; this one's were left with nothing).
#[tokio::test]
async fn a_request_range_field_is_not_relayed_and_does_not_scatter_a_flight() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let origin = apache(&calls, &seen, Pace::Every(Duration::from_millis(300)));
    let layer = support::layer(MemoryBackend::new())
        .namespace("te-request-range")
        .mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let svc = tower::Layer::layer(&layer, origin);
    let url = "http://site.example/page";
    let many = format!("bytes={}", vec!["0-"; 64].join(","));
    let leader = {
        let svc = svc.clone();
        let many = many.clone();
        tokio::spawn(async move {
            send(&svc, Method::GET, url, &[("request-range", many.as_str())]).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let followers: Vec<_> = (0..4)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, Method::GET, url, &[]).await })
        })
        .collect();
    let leader = support::bounded("the leader", leader).await.unwrap();
    for follower in followers {
        let follower = support::bounded("a follower", follower).await.unwrap();
        assert_eq!(follower.status, 200);
        assert_eq!(follower.body, PAGE);
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "Request-Range reached the origin"
    );
    assert_eq!(leader.status, 200, "{leader:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the flight scattered");
    watch.settled().await;
    let again = send(&svc, Method::GET, url, &[]).await;
    support::assert_hit(again.cache_status());
}

/// A GET the layer does not look up (a method-override field, a body, a route it does not
/// cache) went to the origin with its `Range` as it came, however abusive: the RFC 9110
/// §17.15 check stood on the miss path alone, and one field made any request bypass it
/// (an origin that honours every range sends the page once per range, per request of a
/// few bytes). Ignored as on a miss (§14.2 lets any server ignore `Range`): the origin
/// sends the whole.
#[tokio::test]
async fn an_abusive_range_set_is_not_relayed_on_a_bypassed_get() {
    let origin = support::scripted_service::Origin::new(|_| {
        (200, lines(&[("cache-control", "max-age=600")]), PAGE)
    });
    let layer = support::layer(MemoryBackend::new())
        .namespace("te-bypass-range")
        .mode(CacheMode::Origin);
    let svc = origin.service(&layer);
    let many = format!("bytes={}", vec!["0-"; 64].join(","));
    let asks: [&[(&str, &str)]; 3] = [
        &[("x-http-method-override", "GET")],
        &[("content-length", "0"), ("x-method-override", "GET")],
        &[("upgrade", "websocket")],
    ];
    for ask in asks {
        for field in ["range", "request-range"] {
            let mut fields = ask.to_vec();
            fields.push((field, many.as_str()));
            let got = send(&svc, Method::GET, "http://site.example/bypassed", &fields).await;
            assert_eq!(got.status, 200, "{fields:?}");
            assert!(
                origin.last_request_header(field).is_none(),
                "{field} relayed with {ask:?}"
            );
        }
    }
    // A valid range set of a bypassed GET is the origin's, as before.
    let fields = [("x-http-method-override", "GET"), ("range", "bytes=0-4")];
    send(&svc, Method::GET, "http://site.example/bypassed", &fields).await;
    assert_eq!(
        origin.last_request_header("range").as_deref(),
        Some("bytes=0-4")
    );
}

/// The background refresh a `stale-while-revalidate` answer starts is the cache's own
/// request for the whole: it went with the client's `Request-Range`, and an origin that
/// honours it answered a part that refreshed nothing (the entry stayed stale, and the
/// next request started the same refresh).
#[tokio::test]
async fn a_background_refresh_goes_without_the_clients_request_range() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    let origin = Paced::new(
        Arc::clone(&calls),
        Pace::Every(Duration::ZERO),
        move |request: &Request<()>, call| {
            let headers = vec![
                (
                    "cache-control",
                    "max-age=0, stale-while-revalidate=600".to_owned(),
                ),
                ("etag", format!("\"v{call}\"")),
            ];
            if request.headers().contains_key("request-range") {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut headers = headers;
                headers.push(("content-range", format!("bytes 0-0/{}", PAGE.len())));
                return Reply::with_status(206, headers, &PAGE[..1]);
            }
            Reply::ok(headers, PAGE)
        },
    );
    let layer = support::layer(MemoryBackend::new())
        .namespace("te-swr-request-range")
        .mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let svc = tower::Layer::layer(&layer, origin);
    let url = "http://site.example/stale";
    send(&svc, Method::GET, url, &[]).await;
    watch.settled().await;
    let stale = send(&svc, Method::GET, url, &[("request-range", "bytes=0-0")]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("etag"), Some("\"v1\""), "not answered stale");
    watch.settled().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no background refresh");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "Request-Range refreshed with"
    );
    let next = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(
        next.header("etag"),
        Some("\"v2\""),
        "the refresh stored nothing"
    );
}
