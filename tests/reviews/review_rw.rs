//! Review RW: a memcached that sends garbage, or that another writer shares.
//!
//! memcached is trusted to keep data, not to be well-formed: the values under the keys the
//! layer reads may have been cut short or extended by another writer (a client's `append`
//! on a key it took for its own, a copying tool with a size limit, a value truncated on
//! its way through a proxy). The entry format framed the metadata but not the body: bytes
//! that kept an entry's metadata whole decoded as that entry with a shorter or longer
//! body, and every hit answered it as the stored response, `Content-Length` set to what
//! was there (a stored length that disagrees is dropped for the body's). An entry now
//! carries its body's length, and one whose body is not that long is a miss, refilled by
//! the next store.
//!
//! A memcached started with `-C` (CAS disabled) answers CAS 0 and refuses every `cas`:
//! the layer cannot store there, and must not hold requests for placeholders nobody can
//! replace or release either.
//!
//! Each test fails if the defect it names returns.

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::FLAG_HTTP_ENTRY;
use tower_memcache::key::build_key;

use support::scripted_service::{Origin, Reply, lines};
use support::{Answer, Watch, assert_hit, assert_not_hit, send};

const NAMESPACE: &str = "review-rw";

/// A page long enough to be cut, naming the origin's call.
fn page(call: usize) -> String {
    format!("page {call}: {}", "the whole document ".repeat(8))
}

/// An origin whose pages name their call and carry their length, as most origins send.
fn origin() -> Origin {
    Origin::replying(|_, call| {
        let body = page(call);
        let length = body.len().to_string();
        Reply::ok(
            lines(&[("content-type", "text/plain")])
                .into_iter()
                .chain([("content-length", length)])
                .collect(),
            body,
        )
    })
}

/// `url`'s page stored through a layer over `backend`, its stored value then replaced by
/// `edit(value)` (as another writer left it, the entry's flags kept), asked for again
/// twice: the two answers, and the origin.
async fn asked_after_an_edit(
    backend: MemoryBackend,
    url: &str,
    edit: impl FnOnce(&[u8]) -> Vec<u8>,
) -> (Answer, Answer, Origin) {
    let origin = origin();
    let cache = support::layer(backend.clone()).namespace(NAMESPACE);
    let svc = origin.service(&cache);
    let first = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(first.body, page(1));
    support::stores(&Watch::of(&cache), 1).await;
    let key = build_key(Some(NAMESPACE), &format!("GET {url}")[..]);
    let stored = backend.peek(&key).expect("the stored entry");
    assert_eq!(stored.flags, FLAG_HTTP_ENTRY);
    backend
        .set(
            &key,
            Bytes::from(edit(&stored.value)),
            FLAG_HTTP_ENTRY,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    let edited = send(&svc, Method::GET, url, &[]).await;
    Watch::of(&cache).settled().await;
    let healed = send(&svc, Method::GET, url, &[]).await;
    (edited, healed, origin)
}

/// An entry whose value lost its last bytes decoded as the entry with a shorter body, and
/// every hit answered the cut page as a complete `200` (its `Content-Length` the cut
/// length), for as long as memcached kept it. A miss now, and the next store replaces it.
#[tokio::test]
async fn an_entry_cut_short_is_a_miss_not_a_shorter_page() {
    let (edited, healed, origin) =
        asked_after_an_edit(MemoryBackend::new(), "http://review-rw.test/cut", |value| {
            value[..value.len() - 20].to_vec()
        })
        .await;
    assert_not_hit(edited.cache_status());
    assert_eq!(edited.body, page(2), "a cut entry answered");
    assert_hit(healed.cache_status());
    assert_eq!(healed.body, page(2));
    assert_eq!(origin.calls(), 2);
}

/// The same for bytes appended to an entry's value (memcached's `append`, by a client
/// that took the key for its own): they were answered as part of the page, to everyone.
#[tokio::test]
async fn bytes_appended_to_an_entry_are_not_answered_as_its_page() {
    let (edited, healed, origin) = asked_after_an_edit(
        MemoryBackend::new(),
        "http://review-rw.test/appended",
        |value| [value, b"<script>alert(1)</script>"].concat(),
    )
    .await;
    assert_not_hit(edited.cache_status());
    assert_eq!(edited.body, page(2), "an extended entry answered");
    assert_hit(healed.cache_status());
    assert_eq!(healed.body, page(2));
    assert_eq!(origin.calls(), 2);
}

/// memcached started with `-C` (CAS disabled, eight bytes saved per item) answers every
/// `gets` with CAS 0 and refuses every `cas` (`EXISTS`): nothing the layer stores by
/// compare-and-swap lands there, a placeholder included once it is in. A first request's
/// placeholder could neither be replaced by its entry nor released, and every request
/// for the URL from another process found it armed and waited `lease_wait` (2 s) for a
/// fill that was over, then went to the origin all the same. A CAS of 0 is none (memcached
/// numbers from 1): the slot reads as unknown, which nobody waits for.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn a_memcached_without_cas_makes_nobody_wait_for_a_fill_that_cannot_store() {
    let Some(memcached) =
        support::Memcached::start_with_args("review_rw::memcached_without_cas", &["-C"])
    else {
        return;
    };
    let backend = support::patient_backend([memcached.addr()]);
    let origin = origin();
    let url = "http://review-rw.test/no-cas";
    // Two processes sharing the namespace.
    let first = support::layer(backend.clone()).namespace(NAMESPACE);
    let second = support::layer(backend).namespace(NAMESPACE);
    let answer = send(&origin.service(&first), Method::GET, url, &[]).await;
    assert_eq!(answer.body, page(1));
    Watch::of(&first).settled().await;
    let started = Instant::now();
    let answer = send(&origin.service(&second), Method::GET, url, &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.body, page(2));
    assert!(
        took < Duration::from_secs(1),
        "waited {took:?} for a placeholder nobody could fill"
    );
}
