//! Review SM: an adversarial second look at review SL (a clock set back while the process
//! runs), as an operator running several processes on one memcached namespace whose
//! clocks are skewed or stepped (NTP corrections, VM resumes), and as an attacker who can
//! time requests: generation stamps that restart from the clock, tag purge times compared
//! with requests' times across a step (and the one second SL tolerates), the near tier's
//! check of entries received ahead, the refusal of fills sent before a step, and the
//! other places that mix the wall clock with the monotonic one.
//!
//! The defect found (this process's own tag purges ordered with its requests by the wall
//! clock with no margin, which a step back of less than a second, or any step back undone
//! before the store, reorders) needs a clock this process can move, so its tests are unit
//! tests beside the code:
//! `cache::storage::store::tests::a_tag_purged_here_after_a_small_set_back_refuses_a_fill_sent_before_it`,
//! `cache::storage::store::tests::a_tag_purged_here_while_the_clock_was_set_back_refuses_a_fill_sent_before_it`
//! and
//! `cache::storage::store::tests::a_shared_response_is_cut_off_at_its_request_by_a_tag_purged_here_after_a_small_set_back`.
//! Here, what other hosts write, crafted as they would write it: each test fails if the
//! behaviour it names regresses.

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::Layer;

use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::FLAG_HTTP_ENTRY;
use tower_memcache::key::{build_key, md5_hex};

use support::{Watch, send};

const NAMESPACE: &str = "review-sm";
const TAGGED: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("surrogate-key", "news")];

fn tag_key(tag: &str) -> String {
    let base = format!("\0tag\0{tag}");
    format!("g:{}", md5_hex(&[NAMESPACE.as_bytes(), base.as_bytes()]))
}

fn primary_key(url: &str) -> String {
    build_key(Some(NAMESPACE), &format!("GET {url}")[..])
}

/// A tag purge as a process whose clock reads `ahead` of this one's writes it, now: its
/// own time as the tag's generation, which is returned.
async fn purge_from_a_clock_ahead(backend: &MemoryBackend, ahead: Duration) -> String {
    let purged_at = (SystemTime::now() + ahead)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    backend
        .set(
            &tag_key("news"),
            Bytes::from(purged_at.to_string()),
            0,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    purged_at.to_string()
}

/// The tag's generation as memcached holds it.
fn tag_generation(backend: &MemoryBackend) -> Option<String> {
    let item = backend.peek(&tag_key("news"))?;
    Some(String::from_utf8_lossy(&item.value).into_owned())
}

fn stored(backend: &MemoryBackend, url: &str) -> bool {
    backend
        .peek(&primary_key(url))
        .is_some_and(|item| item.flags == FLAG_HTTP_ENTRY)
}

/// Held: a tag purged during a fill by a process whose clock runs just under the tolerated
/// second ahead of this one (its purge time still to come here, yet no time out of any
/// tolerated clock: not taken for a bad mark and rewritten) refuses the store of the
/// response it came after, and the next request goes to the origin.
#[tokio::test]
async fn a_tag_purged_during_a_fill_by_a_clock_just_ahead_refuses_its_store() {
    let backend = MemoryBackend::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let purged = Arc::new(Mutex::new(None));
    let (counted, purger, written) = (Arc::clone(&calls), backend.clone(), Arc::clone(&purged));
    let origin = tower::service_fn(move |_request: Request<()>| {
        let (backend, calls, written) =
            (purger.clone(), Arc::clone(&counted), Arc::clone(&written));
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let at = purge_from_a_clock_ahead(&backend, Duration::from_millis(800)).await;
            *written.lock().unwrap() = Some(at);
            let mut response = Response::builder();
            for (name, value) in TAGGED {
                response = response.header(*name, *value);
            }
            Ok::<_, Infallible>(
                response
                    .body(Full::new(Bytes::from(format!("call {call}"))))
                    .unwrap(),
            )
        }
    });
    let cache = support::layer(backend.clone()).namespace(NAMESPACE);
    let svc = cache.layer(origin);
    let url = "http://review-sm.test/ahead-during";
    let first = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(first.body, "call 1");
    Watch::of(&cache).settled().await;
    assert!(
        !stored(&backend, url),
        "a response the tag purge came after was stored"
    );
    assert_eq!(
        tag_generation(&backend),
        purged.lock().unwrap().clone(),
        "a purge from a clock within the tolerated second was rewritten as a bad mark"
    );
    let second = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(second.body, "call 2", "{second:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Held: a tag purge from a clock just ahead, before a request, refuses the fills of its
/// pages only until its time (and the tolerated second) has passed on this clock: a store
/// is refused by a purge "after" its request for a second or two, never for good, and
/// the page is then stored and a hit.
#[tokio::test]
async fn a_tag_purge_from_a_clock_just_ahead_refuses_fills_for_a_moment_only() {
    let backend = MemoryBackend::new();
    purge_from_a_clock_ahead(&backend, Duration::from_millis(800)).await;
    let origin = support::scripted_service::Origin::numbered(200, TAGGED);
    let cache = support::layer(backend.clone()).namespace(NAMESPACE);
    let watch = Watch::of(&cache);
    let svc = origin.service(&cache);
    let url = "http://review-sm.test/ahead-before";
    send(&svc, Method::GET, url, &[]).await;
    watch.settled().await;
    assert!(
        !stored(&backend, url),
        "a fill requested within a second of a purge from another clock was stored"
    );
    // The purge's time and the second's margin are past on this clock.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    send(&svc, Method::GET, url, &[]).await;
    watch.settled().await;
    assert!(
        stored(&backend, url),
        "the page was not stored once the purge was past"
    );
    let again = send(&svc, Method::GET, url, &[]).await;
    support::assert_hit(again.cache_status());
    assert_eq!(origin.calls(), 2);
}
