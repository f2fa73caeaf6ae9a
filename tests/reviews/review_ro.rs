//! Review RO: processes sharing one memcached namespace while configured differently (a
//! rolling deploy, a canary, two services that share a namespace by mistake). An entry
//! one process wrote under its settings is read by another under its own: what the
//! reader's settings would have refused to store, or would keep out of an entry, must not
//! be served by it on the writer's word.
//!
//! Each test stores through a layer configured one way and reads through a layer
//! configured another way, both over one `MemoryBackend` and namespace, and fails if the
//! defect it names is there.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderName, Method};
use tokio::sync::Semaphore;
use tower::Layer;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode};

use support::paced_origin::{Pace, Paced};
use support::scripted_service::{Origin, Reply};
use support::{Watch, send};

const NAMESPACE: &str = "review-ro";

/// A process's layer over `backend`, in origin mode in the shared namespace: each test
/// configures the writer and the reader apart from there.
fn process(backend: &MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend.clone())
        .namespace(NAMESPACE)
        .mode(CacheMode::Origin)
}

/// A response field as an origin sends it.
type Field = (&'static str, &'static str);

/// Stores `url`'s answer through `writer` (its first request: a miss) and waits for the
/// store to land.
async fn store_through(writer: &MemcacheLayer<MemoryBackend>, origin: &Origin, url: &str) {
    let svc = writer.clone().layer(origin.clone());
    let first = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(first.body, "call 1", "{url}: {first:?}");
    support::stores(&Watch::of(writer), 1).await;
}

fn cdn() -> [HeaderName; 1] {
    [CDN_CACHE_CONTROL]
}

/// `url`'s page, answered with `headers`, stored by a process ruled by the targeted
/// fields `writer`, then asked of one ruled by `reader`: the reader's answer, and the
/// origin (which counts its calls).
async fn stored_apart(
    url: &str,
    headers: &[Field],
    writer: &[HeaderName],
    reader: &[HeaderName],
) -> (support::Answer, Origin) {
    let backend = MemoryBackend::new();
    let origin = Origin::numbered(200, headers);
    let writer = process(&backend).targeted_cache_control(writer.to_vec());
    store_through(&writer, &origin, url).await;
    let reader = process(&backend).targeted_cache_control(reader.to_vec());
    let svc = reader.layer(origin.clone());
    (send(&svc, Method::GET, url, &[]).await, origin)
}

/// `url`'s page, answered with `status` and `headers`, stored by a process whose layer
/// `writer` configures from one in the shared namespace: the layer of a process of the
/// default settings, to read it back, and the origin (which counts its calls).
async fn stored_by(
    url: &str,
    status: u16,
    headers: &[Field],
    writer: impl FnOnce(MemcacheLayer<MemoryBackend>) -> MemcacheLayer<MemoryBackend>,
) -> (MemcacheLayer<MemoryBackend>, Origin) {
    let backend = MemoryBackend::new();
    let origin = Origin::numbered(status, headers);
    let shared = || support::layer(backend.clone()).namespace(NAMESPACE);
    store_through(&writer(shared()), &origin, url).await;
    (shared(), origin)
}

/// Cache-poisoned denial of service across a rolling change: an operator finds that
/// clients get a `400` (an oversize field the key does not hold) stored for everyone, and
/// narrows `statuses` to the defaults. The processes the change reached served the `400`
/// the old ones had stored all the same, for its whole lifetime: a lookup trusted the
/// writer's admission. An entry whose status the reader would not store is a miss.
#[tokio::test]
async fn a_status_the_reader_does_not_store_is_not_served_from_another_writers_entry() {
    let url = "http://review-ro.test/poisoned";
    let cached = [("cache-control", "max-age=600")];
    // The process after the change: the default statuses (no 400).
    let (new, origin) = stored_by(url, 400, &cached, |old| old.statuses([200, 400])).await;
    let svc = new.layer(origin.clone());
    let answer = send(&svc, Method::GET, url, &[]).await;
    assert_ne!(
        answer.body, "call 1",
        "a 400 the reader never stores was served from another process's entry: {answer:?}"
    );
    assert_eq!(origin.calls(), 2, "the origin was not asked: {answer:?}");
}

/// RFC 9213 across processes configured apart: a response that `CDN-Cache-Control`
/// keeps out of this cache (`private`) but `Cache-Control` lets shared caches store
/// (`max-age=600`) was stored by a process without the targeted setting, and the process
/// with it (the reverse proxy's default) served it from that entry to every client. And
/// the other way round: a `Cache-Control: private` page that a targeted writer stored on
/// `CDN-Cache-Control`'s word was served by a process ruled by `Cache-Control`. An entry
/// the reader's own directives refuse is a miss.
#[tokio::test]
async fn a_page_the_readers_ruling_directives_make_private_is_not_served() {
    for (url, headers, writer_targets, reader_targets) in [
        (
            "http://review-ro.test/cdn-private",
            &[
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "private"),
            ][..],
            &[][..],
            &cdn()[..],
        ),
        (
            "http://review-ro.test/cc-private",
            &[
                ("cache-control", "private"),
                ("cdn-cache-control", "max-age=600"),
            ][..],
            &cdn()[..],
            &[][..],
        ),
        (
            "http://review-ro.test/cdn-no-store",
            &[
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "no-store"),
            ][..],
            &[][..],
            &cdn()[..],
        ),
    ] {
        let (answer, origin) = stored_apart(url, headers, writer_targets, reader_targets).await;
        assert_ne!(
            answer.body, "call 1",
            "{url}: a page the reader's directives keep out of shared caches was served \
             from another process's entry: {answer:?}"
        );
        assert_eq!(origin.calls(), 2, "{url}: the origin was not asked");
    }
}

/// A field a targeted `private="…"` keeps out of this cache (`CDN-Cache-Control:
/// private="x-user"`, the requester's name) was stored by a process without the targeted
/// setting, whose `Cache-Control` names no field; the targeted process replayed it,
/// one user's value, to everyone. An entry holding a field the reader's directives keep
/// out is a miss.
#[tokio::test]
async fn a_field_the_readers_directives_keep_out_is_not_replayed() {
    let fields = [
        ("cache-control", "max-age=600"),
        ("cdn-cache-control", "max-age=600, private=\"x-user\""),
        ("x-user", "alice"),
    ];
    let url = "http://review-ro.test/field";
    let (answer, origin) = stored_apart(url, &fields, &[], &cdn()).await;
    assert_ne!(
        answer.body, "call 1",
        "a field the reader keeps out of shared entries was replayed: {answer:?}"
    );
    assert_eq!(origin.calls(), 2);
}

/// `CDN-Cache-Control: no-cache` (revalidate every reuse with the origin, which may
/// check who asks) beside `Cache-Control: max-age=600`: stored by a process without the
/// targeted setting, the entry said "fresh for ten minutes", and the targeted process
/// served it without asking the origin. The reader's own `no-cache` holds: the entry is
/// revalidated with its validator.
#[tokio::test]
async fn a_no_cache_of_the_readers_directives_is_revalidated() {
    let fields = [
        ("cache-control", "max-age=600"),
        ("cdn-cache-control", "no-cache"),
        ("etag", "\"v1\""),
    ];
    let url = "http://review-ro.test/no-cache";
    let (answer, origin) = stored_apart(url, &fields, &[], &cdn()).await;
    assert_eq!(
        origin.calls(),
        2,
        "served without revalidation, against the reader's no-cache: {answer:?}"
    );
    assert_eq!(
        origin.last_request_header("if-none-match").as_deref(),
        Some("\"v1\"")
    );
}

/// Two layers of one process configured apart (two services sharing a namespace by
/// mistake, or one mounted twice with other settings) and one `NearCache`, as the README
/// asks ("meant to be shared by all the layers of a process"). What one layer kept in the
/// near tier was answered by the other without the checks its memcached lookups make: a
/// layer keyed by `x-tenant` answered bob with the page the other layer stored for
/// alice (review RN's defect, through the near tier), and a layer that does not store
/// `400` answered the other's. A near-tier entry kept by a layer of other settings is not
/// answered by this one (it reads memcached, and judges the entry there).
#[tokio::test]
async fn the_near_tier_answers_a_layer_only_with_what_its_own_settings_admitted() {
    use std::time::Duration;
    use tower_memcache::cache::NearCache;
    let backend = MemoryBackend::new();
    let near = NearCache::new(1 << 20, Duration::from_secs(60));
    let cases: [(&str, u16, &[Field]); 2] = [
        ("http://review-ro.test/near-tenant", 200, &[]),
        (
            "http://review-ro.test/near-400",
            400,
            &[("cache-control", "max-age=600")],
        ),
    ];
    for (url, status, headers) in cases {
        let origin = Origin::numbered(status, headers);
        let writer = tower_memcache::MemcacheLayer::new(backend.clone())
            .namespace(NAMESPACE)
            .statuses([200, 400])
            .near_cache(near.clone());
        let writer_svc = writer.clone().layer(origin.clone());
        let first = send(&writer_svc, Method::GET, url, &[("x-tenant", "alice")]).await;
        assert_eq!(first.body, "call 1");
        support::stores(&Watch::of(&writer), 1).await;
        // Read back through the writer: kept in the near tier.
        let again = send(&writer_svc, Method::GET, url, &[("x-tenant", "alice")]).await;
        assert_eq!(again.body, "call 1", "{url}: {again:?}");
        assert!(near.entries() >= 1, "{url}: kept in the near tier");
        let reader = tower_memcache::MemcacheLayer::new(backend.clone())
            .namespace(NAMESPACE)
            .key_headers([HeaderName::from_static("x-tenant")])
            .near_cache(near.clone());
        let svc = reader.layer(origin.clone());
        let bob = send(&svc, Method::GET, url, &[("x-tenant", "bob")]).await;
        assert_ne!(
            bob.body, "call 1",
            "{url}: the near tier answered with another layer's admission: {bob:?}"
        );
        assert_eq!(origin.calls(), 2, "{url}");
    }
}

/// The near tier keeps a shared `Set-Cookie` (`share_set_cookie(true)`) for the layer
/// that shares it; a layer of the same near tier that does not share cookies never gets
/// it replayed from there. That used to rest on a check of its own at every keep (the
/// cookie kept out of the tier); it rests on the settings number now.
#[tokio::test]
async fn a_cookie_kept_in_the_near_tier_is_replayed_only_where_cookies_are_shared() {
    use std::time::Duration;
    use tower_memcache::cache::NearCache;
    let backend = MemoryBackend::new();
    let near = NearCache::new(1 << 20, Duration::from_secs(60));
    let url = "http://review-ro.test/near-cookie";
    let origin = Origin::numbered(200, &[("set-cookie", "session=alice")]);
    let sharing = tower_memcache::MemcacheLayer::new(backend.clone())
        .namespace(NAMESPACE)
        .share_set_cookie(true)
        .near_cache(near.clone());
    let sharing_svc = sharing.clone().layer(origin.clone());
    send(&sharing_svc, Method::GET, url, &[]).await;
    support::stores(&Watch::of(&sharing), 1).await;
    for _ in 0..2 {
        let replayed = send(&sharing_svc, Method::GET, url, &[]).await;
        assert_eq!(replayed.body, "call 1", "{replayed:?}");
        assert_eq!(replayed.header("set-cookie"), Some("session=alice"));
    }
    assert!(near.entries() >= 1, "kept in the near tier");
    let strict = tower_memcache::MemcacheLayer::new(backend)
        .namespace(NAMESPACE)
        .near_cache(near.clone());
    let strict_svc = strict.layer(origin.clone());
    // Its own requests go to the origin (whose answer carries the cookie to that one
    // client, never stored): the stored answer is never replayed to it.
    for attempt in 0..2 {
        let answer = send(&strict_svc, Method::GET, url, &[]).await;
        assert_ne!(
            answer.body, "call 1",
            "attempt {attempt}: a shared cookie replayed to a layer that does not share: {answer:?}"
        );
        assert!(
            !answer.cache_status().contains("hit"),
            "attempt {attempt}: {answer:?}"
        );
    }
    assert_eq!(origin.calls(), 3);
}

/// A purge that returned, across a change of tag settings: the origin tags its pages
/// with `Surrogate-Key`, and processes configured without tags (`tag_header(None)`, or
/// another header: the processes a rolling change has not reached) stored the field as
/// any other, with no tag to purge by. The processes that read tags answered those
/// entries, and went on answering them after their own `purge_tag("news")` returned
/// `Ok`. An entry holding a field the reading layer consumes (its tag or lifetime
/// header) was not written under its settings: a miss.
#[tokio::test]
async fn a_tag_purge_that_returned_holds_for_entries_stored_without_tags() {
    let url = "http://review-ro.test/tagged";
    let tagged = [("surrogate-key", "news")];
    let (reader, origin) = stored_by(url, 200, &tagged, |writer| writer.tag_header(None)).await;
    let svc = reader.clone().layer(origin.clone());
    reader
        .purger()
        .purge_tag("news")
        .await
        .expect("the tag purge");
    let answer = send(&svc, Method::GET, url, &[]).await;
    assert_ne!(
        answer.body, "call 1",
        "a page tagged `news` was answered after purge_tag(\"news\") returned: {answer:?}"
    );
}

/// A handler keeps a per-user page out of the cache with `x-memcache-lifetime: 0`. A
/// process configured without the lifetime header (or with another name) stored it as
/// any page, the field with it; the processes that honour the header answered it to
/// everyone from that entry. An entry holding the reader's lifetime header is a miss.
#[tokio::test]
async fn a_page_the_readers_lifetime_header_keeps_out_is_not_served() {
    let url = "http://review-ro.test/lifetime-zero";
    let kept_out = [("x-memcache-lifetime", "0")];
    let (reader, origin) =
        stored_by(url, 200, &kept_out, |writer| writer.lifetime_header(None)).await;
    let svc = reader.layer(origin.clone());
    let answer = send(&svc, Method::GET, url, &[]).await;
    assert_ne!(
        answer.body, "call 1",
        "a page its handler kept out of the cache was served: {answer:?}"
    );
    assert_eq!(origin.calls(), 2);
}

/// Two layers cloned from one base layer (so sharing its single flight), one keyed by
/// `x-tenant` and one not, both in one namespace (two services of one process sharing it
/// by mistake). Bob's request through the keyed layer arrived while alice's request
/// through the other was at the origin, joined its flight, and was answered with
/// alice's page: a follower takes its leader's response on the leader's settings. A
/// request joins only flights of layers of its own settings.
#[tokio::test]
async fn a_request_never_follows_a_flight_of_a_layer_configured_otherwise() {
    let backend = MemoryBackend::new();
    let url = "http://review-ro.test/flight";
    // An origin whose first answer waits until the test lets it go.
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let origin = Paced::new(calls.clone(), Pace::First(gate.clone()), |request, _| {
        let tenant = request
            .headers()
            .get("x-tenant")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        Reply::ok(vec![], format!("page of {tenant}"))
    });
    let base = tower_memcache::MemcacheLayer::new(backend.clone())
        .namespace(NAMESPACE)
        .lease(None);
    let plain = base.clone().layer(origin.clone());
    let keyed_layer = base
        .clone()
        .key_headers([HeaderName::from_static("x-tenant")]);
    let keyed = keyed_layer.clone().layer(origin.clone());
    let alice = tokio::spawn({
        let plain = plain.clone();
        async move { send(&plain, Method::GET, url, &[("x-tenant", "alice")]).await }
    });
    support::eventually("alice's request at the origin", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let bob = tokio::spawn({
        let keyed = keyed.clone();
        async move { send(&keyed, Method::GET, url, &[("x-tenant", "bob")]).await }
    });
    // Bob's request either waits for alice's (the defect) or goes to the origin itself.
    let watch = Watch::of(&keyed_layer);
    support::eventually("bob's request waiting or at the origin", || {
        watch.snapshot().coalesced >= 1 || calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    gate.add_permits(1);
    let alice = support::bounded("alice", alice).await.unwrap();
    let bob = support::bounded("bob", bob).await.unwrap();
    assert_eq!(alice.body, "page of alice");
    assert_eq!(
        bob.body, "page of bob",
        "bob was answered with the response alice's request fetched: {bob:?}"
    );
}
