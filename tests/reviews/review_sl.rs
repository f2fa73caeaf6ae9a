//! Review SL: clocks, as an operator running several processes on one memcached namespace
//! sees them. Hosts' clocks differ (a second or so with NTP, minutes on a broken one) and a
//! clock can be set back or forward while a process runs; the layer writes wall-clock
//! times into memcached (placeholders' wait deadlines, tag purge times, an entry's receipt
//! time) and reads other processes' back.
//!
//! The defects found (a clock set back while the process runs) need a clock this process
//! can move, so their tests are unit tests beside the code:
//! `cache::storage::store::tests::a_tag_purged_after_the_clock_was_set_back_leaves_its_pages_cacheable`,
//! `cache::storage::store::tests::a_fill_sent_before_the_clock_was_set_back_is_not_stored_over_a_tag_purge`,
//! `cache::service::tests::a_near_entry_received_past_the_clock_set_back_is_not_answered`,
//! `cache::single_flight::tests::a_follower_that_joins_after_the_cutoff_is_refused_across_a_clock_set_back`
//! and `generation::tests::stamps_follow_a_clock_set_back_past_the_tolerated_skew`. Here,
//! what other hosts write, crafted as they would write it: each test fails if the
//! behaviour it names regresses.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::Layer;

use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::FLAG_HTTP_ENTRY;
use tower_memcache::key::{build_key, md5_hex};

use support::{Watch, send};

const NAMESPACE: &str = "review-sl";

fn tag_key(tag: &str) -> String {
    let base = format!("\0tag\0{tag}");
    format!("g:{}", md5_hex(&[NAMESPACE.as_bytes(), base.as_bytes()]))
}

fn primary_key(url: &str) -> String {
    build_key(Some(NAMESPACE), &format!("GET {url}")[..])
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// An origin that, while it answers, has the tag `news` purged by another process whose
/// clock is `behind` this one's by that much (the purge time it writes is its own now), and
/// answers with a page tagged `news`, reusable for a minute.
fn purged_while_answering(
    backend: MemoryBackend,
    behind: Duration,
) -> (
    impl tower::Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let origin = tower::service_fn(move |_request: Request<()>| {
        let (backend, calls) = (backend.clone(), Arc::clone(&counted));
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let purged_at = nanos(SystemTime::now() - behind);
            backend
                .set(
                    &tag_key("news"),
                    Bytes::from(purged_at.to_string()),
                    0,
                    Lifetime::NEVER,
                )
                .await
                .unwrap();
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .header("surrogate-key", "news")
                    .body(Full::new(Bytes::from(format!("call {call}"))))
                    .unwrap(),
            )
        }
    });
    (origin, calls)
}

/// Held: a tag purged during a fill by a process whose clock is behind this one's, by less
/// than the tolerated second, carries a purge time before the fill's request went out on
/// this clock; the one-second margin for other processes' clocks still refuses the
/// response the purge came after, and the next request goes to the origin.
#[tokio::test]
async fn a_tag_purged_by_a_clock_just_behind_during_a_fill_refuses_its_store() {
    let backend = MemoryBackend::new();
    let (origin, calls) = purged_while_answering(backend.clone(), Duration::from_millis(600));
    let cache = support::layer(backend.clone()).namespace(NAMESPACE);
    let svc = cache.layer(origin);
    let url = "http://review-sl.test/behind";
    let first = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(first.body, "call 1");
    Watch::of(&cache).settled().await;
    assert!(
        backend
            .peek(&primary_key(url))
            .is_none_or(|item| item.flags != FLAG_HTTP_ENTRY),
        "a response the tag purge came after was stored"
    );
    let second = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(second.body, "call 2", "{second:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Held: a tag purged by a process whose clock runs a few seconds behind, well before a
/// request, does not keep that request's response out (the purge time is in the past by
/// every clock), and the page is then a hit.
#[tokio::test]
async fn a_tag_purged_before_a_request_by_a_clock_behind_leaves_the_page_cacheable() {
    let backend = MemoryBackend::new();
    let purged_at = nanos(SystemTime::now() - Duration::from_secs(5));
    backend
        .set(
            &tag_key("news"),
            Bytes::from(purged_at.to_string()),
            0,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    let origin = support::scripted_service::Origin::numbered(
        200,
        &[("cache-control", "max-age=60"), ("surrogate-key", "news")],
    );
    let cache = support::layer(backend.clone()).namespace(NAMESPACE);
    let svc = origin.service(&cache);
    let url = "http://review-sl.test/before";
    send(&svc, Method::GET, url, &[]).await;
    Watch::of(&cache).settled().await;
    let again = send(&svc, Method::GET, url, &[]).await;
    support::assert_hit(again.cache_status());
    assert_eq!(origin.calls(), 1);
}

/// Held: a placeholder whose wait deadline a process with a clock ten seconds behind wrote
/// (already past on this clock) holds no request here: it is armed again for this
/// request, which fills the URL at once (an origin call beside the other process's, the
/// cost of that skew), and the next request hits.
#[tokio::test]
async fn a_placeholder_from_a_clock_behind_holds_no_request() {
    const FLAG_PLACEHOLDER: u32 = 0x746d_0103;
    let backend = MemoryBackend::new();
    let url = "http://review-sl.test/placeholder-behind";
    let until = SystemTime::now() + Duration::from_secs(5) - Duration::from_secs(10);
    let until_ms = until.duration_since(UNIX_EPOCH).unwrap().as_millis();
    backend
        .set(
            &primary_key(url),
            Bytes::from(format!("7 {until_ms}")),
            FLAG_PLACEHOLDER,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    let origin =
        support::scripted_service::Origin::numbered(200, &[("cache-control", "max-age=60")]);
    let cache = support::layer(backend.clone())
        .namespace(NAMESPACE)
        .lease_wait(Duration::from_secs(5), Duration::from_millis(20));
    let svc = origin.service(&cache);
    let started = std::time::Instant::now();
    let first = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(first.body, "call 1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for a placeholder past its deadline",
        started.elapsed()
    );
    Watch::of(&cache).settled().await;
    let again = send(&svc, Method::GET, url, &[]).await;
    support::assert_hit(again.cache_status());
}
