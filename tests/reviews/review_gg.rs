//! Review GG: a gap-finding review of surfaces the earlier reviews touched least. Each test
//! is one scenario a client (or a monitor, or an attacker) can play with an ordinary HTTP
//! client, and fails if the cache then answers what it must not, or asks the origin what it
//! need not.
//!
//! - A HEAD response refreshing a stored GET response (RFC 9111 §4.3.5) when neither
//!   carries a validator: nothing ties the HEAD's metadata to the stored body, so a HEAD
//!   (an uptime monitor's, or an attacker's, sent each time the entry goes stale) gave an
//!   old body a new lifetime, however the page had changed at the origin. The same for
//!   a 304 answering a client's own condition (`If-None-Match: *`).
//!
//! - Coalescing: a request whose answer is kept out of the cache by what it asked (its
//!   `no-store`, a `Range`, its own conditions, a made-up `Authorization`) led the
//!   requests waiting for the URL, which then learnt nothing and went to the origin all
//!   at once.
//!
//! - The hit-rate lab reads access logs an operator hands it, whose bytes may be anything
//!   a client put in a request line or a log shipper mangled: a line must be skipped as
//!   malformed, never panic the lab.

use crate::support;

/// The lab's log parser, included as `tests/hit_rate_lab.rs` includes the lab (its own
/// unit tests come along).
#[allow(dead_code)]
#[path = "../../examples/hit_rate/lab/access_log.rs"]
mod access_log;

use http::{Method, StatusCode};

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::CacheMode;

use support::Watch;
use support::personal::{Origin, Reply, Seen, Svc};

fn service_of<B: Backend>(layer: MemcacheLayer<B>, origin: &Origin) -> (Svc, Watch) {
    support::personal::service_of(layer, origin, "review-gg")
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    support::personal::send(svc, method, "review-gg.test", path, headers).await
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    send(svc, Method::GET, path, headers).await
}

/// A layer in origin mode (the origin's headers decide, as in the reverse proxy).
fn origin_mode(origin: &Origin) -> (Svc, Watch) {
    service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        origin,
    )
}

fn cache_status(seen: &Seen) -> &str {
    seen.headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// HEAD refreshes without validators (RFC 9111 §4.3.5)
// ---------------------------------------------------------------------------------------

/// The page changes at the origin (same length, as a price or a score does); the stored
/// response has no `ETag` or `Last-Modified`. A HEAD that reaches the origin (the entry
/// stale inside `stale-while-revalidate`, refreshed in the background with the HEAD; or a
/// HEAD with `no-cache`) got a 200 with the new page's fields and no validator either,
/// and the cache took it for the stored body's: the old page was stored again, fresh for
/// the new lifetime, and every GET after it got the old page. A GET in its place would
/// have fetched the new one. Without a validator on both sides, a HEAD says nothing about
/// the stored body, and must not freshen it.
#[tokio::test]
async fn a_head_without_validators_never_freshens_an_old_body() {
    for (label, stored_cc, head_headers) in [
        (
            "stale-while-revalidate",
            &b"max-age=1, stale-while-revalidate=600"[..],
            &[][..],
        ),
        (
            "no-cache HEAD",
            &b"max-age=600"[..],
            &[("cache-control", &b"no-cache"[..])][..],
        ),
    ] {
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[
                    ("cache-control", stored_cc),
                    ("age", b"5"),
                    ("content-length", b"8"),
                ],
                "price 10",
            )
        });
        let (svc, watch) = origin_mode(&origin);
        assert_eq!(get(&svc, "/p", &[]).await.body, "price 10");
        watch.settled().await;
        // The page changes: a new price, the same length, fresh for ten minutes.
        origin.then(|request, _| {
            let body = if request.method() == Method::HEAD {
                ""
            } else {
                "price 99"
            };
            let mut reply = Reply::ok(
                &[("cache-control", b"max-age=600"), ("content-length", b"8")],
                body,
            );
            reply.status = 200;
            reply
        });
        let head = send(&svc, Method::HEAD, "/p", head_headers).await;
        assert_eq!(head.status, StatusCode::OK, "{label}");
        watch.settled().await;
        let after = get(&svc, "/p", &[]).await;
        let age: u64 = after
            .headers
            .get("age")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        assert!(
            after.body != "price 10" || age >= 5,
            "{label}: the old page was dated anew by a HEAD that says nothing of it: {} {after:?}",
            cache_status(&after)
        );
        if label == "stale-while-revalidate" {
            // Served stale once more, and refreshed in the background with that GET.
            watch.settled().await;
            assert_eq!(get(&svc, "/p", &[]).await.body, "price 99", "{label}");
        }
    }
}

/// The same through a 304: a client's own conditional (`If-None-Match: *`, which an
/// origin such as Go's `http.ServeContent` answers 304 whenever the page exists, with no
/// validator to send) reaches the origin when the entry is stale (a refresh in the
/// background with the client's request) or with `no-cache`. The 304 answers the client's
/// condition, not the stored body, which has no validator the cache could have sent; it
/// freshened the old page all the same.
#[tokio::test]
async fn a_304_to_a_clients_own_condition_never_freshens_a_body_without_validators() {
    for (label, stored_cc, extra) in [
        (
            "stale-while-revalidate",
            &b"max-age=1, stale-while-revalidate=600"[..],
            &[][..],
        ),
        (
            "no-cache",
            &b"max-age=600"[..],
            &[("cache-control", &b"no-cache"[..])][..],
        ),
    ] {
        let origin = Origin::new(move |_, _| {
            Reply::ok(&[("cache-control", stored_cc), ("age", b"5")], "price 10")
        });
        let (svc, watch) = origin_mode(&origin);
        assert_eq!(get(&svc, "/p", &[]).await.body, "price 10");
        watch.settled().await;
        // The page changes; the origin answers `If-None-Match: *` with a 304, as the page
        // exists, and sends no validator (it has none).
        origin.then(|request, _| {
            if request.headers().contains_key("if-none-match") {
                support::personal::not_modified(&[("cache-control", b"max-age=600")])
            } else {
                Reply::ok(&[("cache-control", b"max-age=600")], "price 99")
            }
        });
        let mut headers = vec![("if-none-match", &b"*"[..])];
        headers.extend_from_slice(extra);
        get(&svc, "/p", &headers).await;
        watch.settled().await;
        let after = get(&svc, "/p", &[]).await;
        let age: u64 = after
            .headers
            .get("age")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        assert!(
            after.body != "price 10" || age >= 5,
            "{label}: the old page was dated anew by a 304 to the client's own condition: {} {after:?}",
            cache_status(&after)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The hit-rate lab's log parser
// ---------------------------------------------------------------------------------------

/// A time zone of four bytes that are not four ASCII digits (`+1é1`: a two-byte character
/// where the hours end) was sliced by byte offset, through the middle of the character: a
/// panic, which ended the lab's run on one mangled line. Every malformed time is now a
/// malformed line.
#[test]
fn a_log_line_with_a_mangled_time_zone_is_malformed_not_a_panic() {
    for zone in ["+1é1", "-é12", "+12é", "+ é1"] {
        let line = format!("10.0.0.1 - - [10/Oct/2000:13:55:36 {zone}] \"GET / HTTP/1.1\" 200 5");
        let parsed = std::panic::catch_unwind(|| access_log::parse_line(line.as_bytes()).is_ok());
        assert_eq!(parsed.ok(), Some(false), "{zone:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Coalescing behind a request that cannot fill
// ---------------------------------------------------------------------------------------

/// Concurrent misses for a URL wait for the first one's response instead of all going to
/// the origin. A request with `Cache-Control: no-store` cannot leave an entry behind, yet
/// it led the wait: the requests that came during its trip to the origin waited for it,
/// learnt nothing, and then went to the origin all at once, uncoordinated. One such
/// request sent as a hot entry expires (any client can send it, as often as it likes)
/// turned the requests waiting behind it into a stampede. It now goes alone, and the
/// others coalesce behind one of their own.
#[tokio::test]
async fn a_no_store_request_never_leads_the_requests_waiting_for_a_url() {
    let origin = Origin::new(|_, _| Reply::ok(&[("cache-control", b"max-age=600")], "page"));
    origin
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let (svc, watch) = origin_mode(&origin);
    let attacker = {
        let svc = svc.clone();
        tokio::spawn(async move { get(&svc, "/hot", &[("cache-control", b"no-store")]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { get(&svc, "/hot", &[]).await })
        })
        .collect();
    assert_eq!(attacker.await.unwrap().body, "page");
    for request in waiting {
        assert_eq!(request.await.unwrap().body, "page");
    }
    watch.settled().await;
    assert!(
        origin.calls() <= 2,
        "{} origin calls: the requests waiting behind the no-store one went all at once",
        origin.calls()
    );
}

/// The same with credentials: a response to a request with `Authorization` is stored only
/// when it says it may be shared (RFC 9111 §3.5), so a made-up `Authorization: Bearer x`
/// on a request for a public page (`max-age`, no `public`) keeps its answer out of the
/// cache just as `no-store` does, and the requests waiting behind it went to the origin
/// all at once. They now elect a leader of their own (those without credentials, whose
/// answer can be stored).
#[tokio::test]
async fn a_request_with_credentials_refused_a_store_does_not_stampede_those_without() {
    let origin = Origin::new(|_, _| Reply::ok(&[("cache-control", b"max-age=600")], "page"));
    origin
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let (svc, watch) = origin_mode(&origin);
    let attacker = {
        let svc = svc.clone();
        tokio::spawn(async move { get(&svc, "/hot", &[("authorization", b"Bearer x")]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { get(&svc, "/hot", &[]).await })
        })
        .collect();
    assert_eq!(attacker.await.unwrap().body, "page");
    for request in waiting {
        assert_eq!(request.await.unwrap().body, "page");
    }
    watch.settled().await;
    assert!(
        origin.calls() <= 2,
        "{} origin calls: the requests waiting behind the authenticated one went all at once",
        origin.calls()
    );
}

/// And with a request whose answer is a part or a 304 to its own condition, neither
/// stored: a `Range: bytes=0-0`, or an `If-None-Match` with the page's current `ETag`
/// (public, and sent by every browser that has the page), at the head of the requests
/// that missed the URL.
#[tokio::test]
async fn a_range_or_conditional_request_at_the_head_does_not_stampede_the_others() {
    for (label, head) in [
        ("conditional", ("if-none-match", &b"\"v1\""[..])),
        ("range", ("range", &b"bytes=0-0"[..])),
    ] {
        let origin = Origin::new(|request, _| {
            if request.headers().contains_key("if-none-match") {
                return support::personal::not_modified(&[
                    ("cache-control", b"max-age=600"),
                    ("etag", b"\"v1\""),
                ]);
            }
            if request.headers().contains_key("range") {
                let mut part = Reply::ok(
                    &[
                        ("cache-control", b"max-age=600"),
                        ("etag", b"\"v1\""),
                        ("content-range", b"bytes 0-0/4"),
                    ],
                    "p",
                );
                part.status = 206;
                return part;
            }
            Reply::ok(
                &[("cache-control", b"max-age=600"), ("etag", b"\"v1\"")],
                "page",
            )
        });
        origin
            .delay_ms
            .store(300, std::sync::atomic::Ordering::SeqCst);
        let (svc, watch) = origin_mode(&origin);
        let first = {
            let svc = svc.clone();
            tokio::spawn(async move { get(&svc, "/hot", &[head]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { get(&svc, "/hot", &[]).await })
            })
            .collect();
        first.await.unwrap();
        for request in waiting {
            assert_eq!(request.await.unwrap().body, "page", "{label}");
        }
        watch.settled().await;
        assert!(
            origin.calls() <= 3,
            "{label}: {} origin calls: the requests waiting behind it went all at once",
            origin.calls()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Cache-poisoned denial of service: errors with explicit freshness
// ---------------------------------------------------------------------------------------

/// An origin that stamps `public, max-age=600` on every response (a blanket
/// `add_header ... always`), and fails a request for what no key holds: an oversize field
/// (431), an `Expect` it does not know (417), a malformed cookie (400), a rate limit (429),
/// its own upstream refusing the request (502, 503). Stored, that error answered every
/// client of the URL for ten minutes ("Your Cache Has Fallen", CPDoS). An error is stored
/// only when `statuses` lists it: a 404 still is, and one the operator lists.
#[tokio::test]
async fn an_error_a_client_provokes_is_not_stored_for_everyone() {
    for status in [400, 417, 429, 431, 500, 502, 503] {
        let origin = Origin::new(move |request, _| {
            let mut reply = Reply::ok(&[("cache-control", b"public, max-age=600")], "page");
            if request.headers().contains_key("x-oversize") {
                reply.status = status;
                reply.body = "error".into();
            }
            reply
        });
        let (svc, watch) = origin_mode(&origin);
        let attacker = get(&svc, "/home", &[("x-oversize", b"AAAA")]).await;
        assert_eq!(attacker.status.as_u16(), status);
        watch.settled().await;
        let innocent = get(&svc, "/home", &[]).await;
        assert_eq!(
            (innocent.status, innocent.body.as_str()),
            (StatusCode::OK, "page"),
            "{status}: {}",
            cache_status(&innocent)
        );
    }
    // A 404 is stored (a heuristically cacheable status, in `statuses` by default), and
    // so is an error the operator lists.
    for (status, statuses) in [(404, None), (503, Some(vec![200, 503]))] {
        let origin = Origin::new(move |_, _| {
            let mut reply = Reply::ok(&[("cache-control", b"public, max-age=600")], "error");
            reply.status = status;
            reply
        });
        let mut layer = MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin);
        if let Some(statuses) = statuses {
            layer = layer.statuses(statuses);
        }
        let (svc, watch) = service_of(layer, &origin);
        get(&svc, "/gone", &[]).await;
        watch.settled().await;
        let again = get(&svc, "/gone", &[]).await;
        support::assert_hit(cache_status(&again));
        assert_eq!(origin.calls(), 1, "{status}");
    }
}
