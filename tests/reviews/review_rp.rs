//! Review RP: an adversarial second look at reviews RL and RN (no-store flights, route-rule
//! folds, entries read back with a clock far ahead or without a key header). Each test
//! names an attack or defect and fails if it works.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

use support::Watch;
use support::flood::{self, Fields};
use support::paced_origin::{Pace, Paced};
use support::scripted_service::{self, Reply};

/// The flood's request: a reload that keeps its answer from being stored.
const NO_CACHE_NO_STORE: Fields = &[("cache-control", "no-cache, no-store")];

/// Whether `request` holds the validator `"v1"`.
fn holds_v1(request: &http::Request<()>) -> bool {
    request
        .headers()
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .any(|value| value.as_bytes().windows(4).any(|w| w == b"\"v1\""))
}

/// A page's header lines: any cache may keep it for ten minutes, with the validator
/// `"v1"`, and `fields`.
fn v1_fields(fields: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("cache-control", "max-age=600".to_owned()),
        ("etag", "\"v1\"".to_owned()),
    ];
    headers.extend(scripted_service::lines(fields));
    headers
}

/// An origin that counts its calls and answers each after `delay`: a page any cache may
/// keep for ten minutes with the validator `"v1"` (and `fields`), or, when it `validates`,
/// a 304 to a request that holds it (as a real origin answers a revalidation).
fn validating_origin(
    calls: Arc<AtomicUsize>,
    delay: Duration,
    fields: &'static [(&'static str, &'static str)],
    validates: bool,
) -> Paced {
    Paced::new(calls, Pace::Every(delay), move |request, call| {
        let headers = v1_fields(fields);
        if validates && holds_v1(request) && call > 1 {
            Reply::with_status(304, headers, Bytes::new())
        } else {
            Reply::ok(headers, "page v1")
        }
    })
}

/// Origin load past coalescing, review RL's fix defeated by a 304: a flood of
/// `no-cache, no-store` requests for a stored page with a validator. The leader of their
/// flight revalidates the stored response with its `ETag`, as any real origin answers
/// such a request with a 304, and the refreshed response, refused for the backend by the
/// leader's own `no-store`, was handed to nobody: every follower went to the origin on
/// its own, so the flood again cost one origin call per request.
#[tokio::test]
async fn a_no_store_flood_shares_a_304_revalidation() {
    support::bounded("no-cache, no-store flood answered 304", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = support::layer(MemoryBackend::new());
        let watch = Watch::of(&layer);
        let service = layer.layer(validating_origin(
            calls.clone(),
            Duration::from_millis(300),
            &[],
            true,
        ));
        let url = "http://shop.example/validated";
        assert_eq!(
            support::send(&service, http::Method::GET, url, &[])
                .await
                .body,
            "page v1"
        );
        support::stores(&watch, 1).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        for answer in flood::burst(&service, url, 30, |_| NO_CACHE_NO_STORE).await {
            assert_eq!(answer.status, http::StatusCode::OK);
            assert_eq!(answer.body, "page v1");
        }
        watch.settled().await;
        let total = calls.load(Ordering::SeqCst);
        // About one (the burst's leader's); a loaded machine spreading the burst out may
        // add a round or two, never one per request.
        assert!(
            total <= 7,
            "30 no-cache, no-store requests cost {} origin calls",
            total - 1
        );
    })
    .await;
}

/// An origin whose first call answers at once and later ones once `gate` lets them (and a
/// round trip later): a page
/// any cache may keep for ten minutes, tagged `news`, with the validator `"v1"` (a 304 to a
/// request that holds it), whose body names the call.
fn gated_validating_origin(calls: Arc<AtomicUsize>, gate: Arc<Semaphore>) -> Paced {
    // An origin's round trip, in which requests that retry join a flight.
    let pace = Pace::AfterFirst {
        gate,
        then: Duration::from_millis(200),
    };
    Paced::new(calls, pace, |request, call| {
        let headers = v1_fields(&[("surrogate-key", "news")]);
        if holds_v1(request) {
            Reply::with_status(304, headers, Bytes::new())
        } else {
            Reply::ok(headers, format!("call {call}"))
        }
    })
}

/// The fix above must keep a purge that returned: a `no-store` request that looks after a
/// tag purge finds the tagged entry gone but memcached's item unchanged, and joins the
/// flight of one that went out before the purge. The stored response that flight's 304
/// refreshes (tagged with the purged tag) goes only to the requests that joined before
/// its request went out; the later one gets the page anew.
#[tokio::test]
async fn a_no_store_flight_s_304_does_not_carry_a_response_past_a_tag_purge() {
    support::bounded("tag purge during a no-store revalidation", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let layer = support::layer(MemoryBackend::new());
        let service = layer
            .clone()
            .layer(gated_validating_origin(calls.clone(), gate.clone()));
        let (leading, after) = support::no_store_flight::tag_purge_during_flight(
            &layer,
            service,
            "http://site.example/tagged",
            &calls,
            &gate,
        )
        .await;
        // Its own client's: the stored response, revalidated.
        assert_eq!(leading.body, "call 1");
        assert_eq!(
            after.body,
            "call 3",
            "a response from before the purge: {:?}",
            after.headers.get("cache-status")
        );
    })
    .await;
}

/// Origin load past coalescing through a credentialed leader: a request with
/// `Authorization` (any made-up value) leads the flight of `no-cache` requests for a
/// stored public page, and the origin answers its revalidation with a 304. That refresh
/// answers the leader's credentials (RFC 9111 §3.5) and is kept from the others, rightly,
/// but the flight then ended with nothing learnt: every follower without credentials went
/// to the origin on its own, where a full answer to the same leader elects one of them to
/// lead instead. One attacker's request ahead of each burst of reloads cost one origin
/// call per reload.
#[tokio::test]
async fn a_credentialed_leader_s_304_lets_its_followers_elect_another() {
    support::bounded("credentialed leader answered 304", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let layer = support::layer(MemoryBackend::new());
        let watch = Watch::of(&layer);
        let service = layer.layer(gated_validating_origin(calls.clone(), gate.clone()));
        let url = "http://site.example/public";
        let get = |headers| flood::spawn_get(&service, url, headers);
        assert_eq!(get(&[]).await.unwrap().body, "call 1");
        support::stores(&watch, 1).await;

        for reload in [
            &[("cache-control", "no-cache")][..],
            &[("cache-control", "no-cache, no-store")][..],
        ] {
            let before = calls.load(Ordering::SeqCst);
            let coalesced = watch.snapshot().coalesced;
            let credentials: &'static [(&'static str, &'static str)] =
                if reload.len() == 1 && reload[0].1 == "no-cache" {
                    &[("cache-control", "no-cache"), ("authorization", "Bearer x")]
                } else {
                    &[
                        ("cache-control", "no-cache, no-store"),
                        ("authorization", "Bearer x"),
                    ]
                };
            let leading = get(credentials);
            support::eventually("the credentialed request reached the origin", || {
                calls.load(Ordering::SeqCst) == before + 1
            })
            .await;
            let reload: &'static [(&'static str, &'static str)] = reload;
            let followers: Vec<_> = (0..10).map(|_| get(reload)).collect();
            support::eventually("the reloads joined its flight", || {
                watch.snapshot().coalesced >= coalesced + 10
            })
            .await;
            gate.add_permits(64);
            assert_eq!(leading.await.unwrap().body, "call 1");
            for follower in followers {
                assert_eq!(follower.await.unwrap().body, "call 1");
            }
            watch.settled().await;
            // Shut again for the next round.
            gate.forget_permits(gate.available_permits());
            let cost = calls.load(Ordering::SeqCst) - before;
            // The leader's and one elected among the reloads; a loaded machine may add a
            // round, never one per reload.
            assert!(
                cost <= 4,
                "{reload:?}: 10 reloads behind a credentialed leader cost {cost} origin calls"
            );
        }
    })
    .await;
}

/// RL's flood, against a tagged page (`Surrogate-Key`): a `no-store` flight's tagged answer
/// (a new page or a 304's refresh) went only to the requests that joined before its
/// request went out, so that a tag purge holds. In a flood nearly all join while the
/// leader's request is out: each was sent back to look the URL up again, up to three
/// times, and then went to the origin on its own, a call per request again (and four
/// waits longer). The answer now goes to those that joined before a read of its tags
/// showed none purged since its request went out, as a store's does.
#[tokio::test]
async fn a_no_store_flood_shares_a_tagged_answer() {
    tagged_flood(MemoryBackend::new).await;
}

/// [`a_no_store_flood_shares_a_tagged_answer`] against a private memcached (the tags read
/// on the URL's server, as a store reads them).
#[cfg(feature = "tcp")]
#[tokio::test]
async fn a_no_store_flood_shares_a_tagged_answer_over_tcp() {
    let server = memcached_or_skip!("review_rp::a_no_store_flood_shares_a_tagged_answer_over_tcp");
    tagged_flood(|| {
        server.flush_all();
        tower_memcache::backend::TcpBackend::builder()
            .server(server.addr())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    })
    .await;
}

async fn tagged_flood<B: tower_memcache::backend::Backend>(backend: impl Fn() -> B) {
    support::bounded("no-cache, no-store flood on a tagged page", async {
        for validates in [true, false] {
            let calls = Arc::new(AtomicUsize::new(0));
            let layer = support::layer(backend());
            let watch = Watch::of(&layer);
            let origin = validating_origin(
                calls.clone(),
                Duration::from_millis(300),
                &[("surrogate-key", "news")],
                validates,
            );
            let service = layer.layer(origin);
            let url = "http://shop.example/tagged";
            support::send(&service, http::Method::GET, url, &[]).await;
            support::stores(&watch, 1).await;
            for answer in flood::burst(&service, url, 30, |_| NO_CACHE_NO_STORE).await {
                assert_eq!(answer.body, "page v1");
            }
            watch.settled().await;
            let total = calls.load(Ordering::SeqCst);
            assert!(
                total <= 7,
                "answered 304: {validates}; 30 no-cache, no-store requests cost {} origin calls",
                total - 1
            );
        }
    })
    .await;
}
