//! Review SH: an adversarial second look at the two changes merged this morning.
//!
//! - Review SE: on a memcached without CAS (`-C`), a placeholder read with CAS 0 keeps its
//!   token (`Slot::Uncas`), a flight admits such a lookup by that token, and a request
//!   goes around such a placeholder without waiting.
//! - Commit 136a921: an origin's `Connection` no longer drops the fields the cache decides
//!   by (`cache::decides_caching`) from the layer's entries and hits.
//!
//! Every wait is bounded (`support::bounded`), every origin counts its calls.

use crate::support;

use http::{HeaderName, Method};
use support::scripted_service::{Origin, Reply, lines};
use support::{Watch, send, stores};
use tower_memcache::backend::MemoryBackend;

/// A field on the layer's own target list (RFC 9213, `targeted_cache_control`) rules the
/// layer's decisions as much as `Cache-Control` does, whatever its name: the proxy keeps
/// such a field from an origin's `Connection` (review QG), the layer did not. Named by
/// `Connection`, `Edge-Control: no-cache` ruled the first store (revalidate before every
/// reuse) but was left out of the entry; the 304 that refreshed it was merged into those
/// fields and judged by them, by its `Cache-Control: max-age=600` for browsers, and the
/// page was served ten minutes unrevalidated.
#[tokio::test]
async fn connection_cannot_drop_a_targeted_field_the_layer_rules_by() {
    let edge = HeaderName::from_static("edge-control");
    let layer = support::layer(MemoryBackend::new()).targeted_cache_control([edge]);
    let watch = Watch::of(&layer);
    let fields = [
        ("cache-control", "public, max-age=600"),
        ("edge-control", "no-cache"),
        ("etag", "\"v1\""),
        ("connection", "edge-control"),
    ];
    let origin = Origin::replying(move |request, _| {
        let status = if request.headers().contains_key("if-none-match") {
            304
        } else {
            200
        };
        Reply::with_status(status, lines(&fields), "page")
    });
    let svc = origin.service(&layer);
    support::bounded("three requests", async {
        for n in 1..=3 {
            let answer = send(&svc, Method::GET, "http://site.example/e", &[]).await;
            assert_eq!(answer.body, "page");
            assert_eq!(
                origin.calls(),
                n,
                "request {n} was answered by an entry its ruling field has revalidated \
                 before every reuse ({})",
                answer.cache_status()
            );
            assert_eq!(
                answer.header("edge-control"),
                Some("no-cache"),
                "request {n}"
            );
            stores(&watch, 1).await;
        }
    })
    .await;
}

/// `Content-Encoding` says what the stored bytes are (RFC 9111 §3.2's own example of a
/// field kept for the stored response's integrity), and is meant for every recipient of
/// the content (RFC 9110 §7.6.1: never a connection option). Named by an origin's
/// `Connection`, the miss went out labelled `gzip`, and the entry was stored without the
/// label: every hit served the compressed bytes as if they were the page.
#[tokio::test]
async fn connection_cannot_strip_the_coding_of_the_stored_bytes() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let origin = Origin::new(|_| {
        (
            200,
            lines(&[
                ("cache-control", "public, max-age=600"),
                ("content-encoding", "gzip"),
                ("connection", "content-encoding"),
            ]),
            "\u{1f}compressed",
        )
    });
    let svc = origin.service(&layer);
    support::bounded("two requests", async {
        let miss = send(&svc, Method::GET, "http://site.example/z", &[]).await;
        stores(&watch, 1).await;
        let hit = send(&svc, Method::GET, "http://site.example/z", &[]).await;
        assert_eq!(hit.body, miss.body);
        assert_eq!(
            hit.header("content-encoding"),
            miss.header("content-encoding"),
            "the hit labels its bytes otherwise than the miss did ({})",
            hit.cache_status()
        );
    })
    .await;
}

/// The same origin answer through the proxy: the label stays (it dropped it before the
/// cache saw the response, and every client, the miss's too, got the compressed bytes
/// unlabelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_the_coding_connection_names() {
    let answer = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Encoding: gzip\r\nConnection: content-encoding\r\nContent-Length: 4\r\n\r\n\x1fzip";
    let (origin, _seen) = support::origin::scripted_origin(answer, true).await;
    let proxy = support::proxy::start_proxy(origin, &[]);
    support::bounded("the miss and the hit", async {
        let head = "GET /z HTTP/1.1\r\nHost: shop.example\r\n";
        let miss = support::proxy::raw_text(&proxy, head).await;
        assert!(miss.contains("content-encoding: gzip"), "{miss:?}");
        let body = support::proxy::until_cached(&proxy, head).await;
        assert_eq!(body, "\u{1f}zip");
        let hit = support::proxy::raw_text(&proxy, head).await;
        assert!(hit.contains("content-encoding: gzip"), "{hit:?}");
    })
    .await;
}

/// Review SE's flights on a memcached without CAS admit a lookup by the token of the
/// placeholder it read, as a purge of the URL deletes that placeholder. A tag purge does
/// not: the placeholder another process put there before it is still read after it. A
/// request here that came after the tag purge returned joins the flight under way there
/// (it saw the same placeholder) and must still not be answered the page from before
/// the purge: the leader's store check finds the tag purged since its request, and hands
/// its response only to those that joined before its request went out.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cas_a_tag_purge_holds_against_a_flight_its_placeholder_outlived() {
    use support::db::{self, Db};
    const NAMESPACE: &str = "review-sh";
    let Some(memcached) =
        support::Memcached::start_with_args("review_sh::without_cas_a_tag_purge_holds", &["-C"])
    else {
        return;
    };
    let backend = support::patient_backend([memcached.addr()]);
    let db = Db::default();
    db.fields(
        "/t",
        &[("cache-control", "max-age=600"), ("surrogate-key", "shelf")],
    );
    let gate = db.hold();
    let here = support::layer(backend.clone()).namespace(NAMESPACE);
    let there = support::layer(backend.clone()).namespace(NAMESPACE);
    let watch = Watch::of(&here);
    let (svc_here, svc_there) = (db::service(&here, &db), db::service(&there, &db));
    support::bounded("the race", async {
        // The other process refills the page: its placeholder stays (nothing can end it).
        let theirs = db::spawn_get(&svc_there, "/t", &[]);
        gate.arrivals(1).await;
        // A request here goes alongside it: the page as it is.
        let before = db::spawn_get(&svc_here, "/t", &[]);
        gate.arrivals(2).await;
        // The page changes and its tag is purged (the placeholder is not deleted).
        db.bump();
        there.purger().purge_tag("shelf").await.unwrap();
        // A request here after the purge returned: it reads the same placeholder.
        let after = db::spawn_get(&svc_here, "/t", &[]);
        support::eventually("the request after the purge goes or waits", || {
            db.calls() >= 3 || watch.snapshot().coalesced >= 1
        })
        .await;
        // It joined the flight here (it read the placeholder the flight is guarded by).
        assert_eq!(watch.snapshot().coalesced, 1, "the attack needs the join");
        gate.open();
        let after = db::joined(after).await;
        assert_eq!(
            after.body,
            "/t v1",
            "a request that came after a tag purge returned was answered the page from \
             before it ({})",
            after.cache_status()
        );
        for handle in [theirs, before] {
            db::joined(handle).await;
        }
    })
    .await;
    watch.settled().await;
}
