//! Review RQ: an attacker's second look at the last session (hit-for-miss, entry format 5
//! and the same-settings fast path, review RN's checks on entries read back, no-store
//! flights). Each test names an attack or defect and fails if it works.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

use support::{Watch, bounded, eventually};

/// How a test's origin answers its `n`th call (from 1): status and header lines; the body
/// is `page` (none for a 304).
type Script = fn(usize, &http::Request<()>) -> (u16, &'static [(&'static str, &'static str)]);

/// An origin that counts its calls and answers each once `gate` lets it (a permit per
/// call), as `script` says.
fn gated_origin(
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    script: Script,
) -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: http::Request<()>| {
        let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            gate.acquire().await.unwrap().forget();
            let (status, fields) = script(call, &request);
            let mut response = http::Response::builder().status(status);
            for (name, value) in fields {
                response = response.header(*name, *value);
            }
            let body = if status == 304 { "" } else { "page" };
            Ok::<_, std::convert::Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
        }
    })
}

/// `max-age=0, must-revalidate`, whoever asks.
fn must_revalidate(
    _: usize,
    _: &http::Request<()>,
) -> (u16, &'static [(&'static str, &'static str)]) {
    (200, &[("cache-control", "max-age=0, must-revalidate")])
}

/// A page the layer's route keeps for an hour, whose origin says `max-age=0,
/// must-revalidate` (a common default), answered to a made-up `Authorization`: RFC 9111
/// §3.5 leaves an authenticated request's response only its own lifetime (none here), so
/// it is not stored. That was taken for the page's own doing: the URL was remembered as
/// never stored, and for a minute its anonymous requests (each of which stores the page)
/// went to the origin side by side, up to 8 at a time per process, instead of one for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_authorization_does_not_get_a_storable_page_remembered_as_unstored() {
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(1)));
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let origin = gated_origin(Arc::clone(&calls), Arc::clone(&gate), must_revalidate);
    let service = layer.layer(origin);
    let url = "http://site.example/front";
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let service = service.clone();
        tokio::spawn(async move { support::send(&service, Method::GET, url, headers).await })
    };
    let attacker = get(&[("authorization", "Bearer made-up")]).await.unwrap();
    assert_eq!(attacker.status, http::StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Three anonymous requests at once: one goes to the origin, the others wait for it.
    let anonymous: Vec<_> = (0..3).map(|_| get(&[])).collect();
    bounded("the anonymous requests arrive", async {
        eventually("each is at the origin or waiting", || {
            calls.load(Ordering::SeqCst) - 1 + watch.snapshot().coalesced as usize >= 3
        })
        .await;
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the anonymous requests went to the origin side by side"
    );
    gate.add_permits(16);
    for answer in anonymous {
        let answer = bounded("an anonymous answer", answer).await.unwrap();
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (http::StatusCode::OK, "page")
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The same refusal ends a flight its made-up `Authorization` leads: its followers
/// without credentials could each store the page, so they elect another leader (as for
/// any response refused for the leader's credentials, review RP), rather than each going
/// to the origin on its own (one made-up header ahead of a burst cost a call per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_made_up_authorization_elect_an_anonymous_leader() {
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let origin = gated_origin(Arc::clone(&calls), Arc::clone(&gate), must_revalidate);
    let service = layer.layer(origin);
    let url = "http://site.example/burst";
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let service = service.clone();
        tokio::spawn(async move { support::send(&service, Method::GET, url, headers).await })
    };
    let attacker = get(&[("authorization", "Bearer made-up")]);
    eventually("the attacker's request is at the origin", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let anonymous: Vec<_> = (0..4).map(|_| get(&[])).collect();
    eventually("the anonymous requests wait for it", || {
        watch.snapshot().coalesced >= 4
    })
    .await;
    gate.add_permits(64);
    assert_eq!(
        bounded("the attacker's answer", attacker)
            .await
            .unwrap()
            .status,
        http::StatusCode::OK
    );
    for answer in anonymous {
        let answer = bounded("an anonymous answer", answer).await.unwrap();
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (http::StatusCode::OK, "page")
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the attacker's request and one anonymous leader"
    );
}

/// A page kept two seconds with the validator `"v1"`: a 304 to a request that holds it,
/// else the page; its second call answers `private` (one user's page, once).
fn private_once(
    call: usize,
    request: &http::Request<()>,
) -> (u16, &'static [(&'static str, &'static str)]) {
    const PAGE: &[(&str, &str)] = &[("cache-control", "max-age=2"), ("etag", "\"v1\"")];
    let holds = request
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .is_some_and(|value| value.as_bytes() == b"\"v1\"");
    match call {
        2 => (200, &[("cache-control", "private")]),
        _ if holds => (304, PAGE),
        _ => (200, PAGE),
    }
}

/// Hit-for-miss ends when a response is stored, a 304's refresh too: the URL was still
/// remembered as never stored after one, so for a minute the revalidations of its stored
/// page went to the origin side by side (up to 8 at a time per process) instead of one
/// for all, each answered with the page the first one refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_stored_ends_the_urls_memory_of_a_refusal() {
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(3)));
    let layer = support::layer(MemoryBackend::new()).mode(tower_memcache::cache::CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(gated_origin(
        Arc::clone(&calls),
        Arc::clone(&gate),
        private_once,
    ));
    let url = "http://site.example/news";
    let get = || {
        let service = service.clone();
        tokio::spawn(async move { support::send(&service, Method::GET, url, &[]).await })
    };
    let stale = std::time::Duration::from_millis(2200);
    assert_eq!(get().await.unwrap().body, "page");
    support::stores(&watch, 1).await;
    tokio::time::sleep(stale).await;
    // The revalidation is answered `private`: not stored, the URL remembered.
    assert_eq!(get().await.unwrap().body, "page");
    // The next one's 304 refreshes the stored page.
    let refreshed = get().await.unwrap();
    assert!(
        refreshed.cache_status().contains("fwd=stale"),
        "{}",
        refreshed.cache_status()
    );
    support::stores(&watch, 2).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    tokio::time::sleep(stale).await;
    // Stale again: three requests at once, one revalidation for all.
    let requests: Vec<_> = (0..3).map(|_| get()).collect();
    bounded("the revalidations arrive", async {
        eventually("each is at the origin or waiting", || {
            calls.load(Ordering::SeqCst) - 3 + watch.snapshot().coalesced as usize >= 3
        })
        .await;
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the revalidations went to the origin side by side"
    );
    gate.add_permits(16);
    for answer in requests {
        let answer = bounded("an answer", answer).await.unwrap();
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (http::StatusCode::OK, "page")
        );
    }
}
