//! Review KK: a reflecting origin and a hostile memcached, at the layer's level.
//!
//! - What the layer reads of memcached under its own keys: entries whose fields the layer
//!   never writes (a cookie kept while the layer shared cookies, then replayed after the
//!   operator turned that off; hop-by-hop fields), generations and tag marks that are not
//!   numbers, a tag purged by a process whose clock runs far ahead, a placeholder waited
//!   for until the end of time. A bad value is a miss, and costs a miss, not the cache.
//! - What an origin that reflects request input into the response fields the cache reads
//!   (`Cache-Control`, the tag header, `Location`) can make the cache do.
//!
//! Each test fails if the defect it names returns.

use crate::support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method};
use tower::Layer;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::FLAG_HTTP_ENTRY;
use tower_memcache::key::{build_key, md5_hex};

use support::scripted_service::{Origin, Reply};
use support::{Answer, Watch, assert_hit, send};

const NAMESPACE: &str = "review-kk";

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend).namespace(NAMESPACE)
}

/// The key of one of the layer's generations (`storage::internal_key`): `g:` and the md5
/// of namespace and name.
fn internal_key(base: &str) -> String {
    format!("g:{}", md5_hex(&[NAMESPACE.as_bytes(), base.as_bytes()]))
}

fn tag_key(tag: &str) -> String {
    internal_key(&format!("\0tag\0{tag}"))
}

fn primary_key(url: &str) -> String {
    build_key(Some(NAMESPACE), &format!("GET {url}")[..])
}

fn is_hit(answer: &Answer) -> bool {
    answer.cache_status().starts_with("tower-memcache; hit")
}

// ---------------------------------------------------------------------------------------
// Values under the layer's keys that the layer would not write
// ---------------------------------------------------------------------------------------

/// `share_set_cookie(true)` stores a response's cookie and replays it to everyone. An
/// operator who turns it off again (a session cookie was being shared, say) expects no
/// hit to carry a cookie any more; but the entries stored meanwhile stayed in memcached
/// (up to 30 days) and were replayed as they were, `Set-Cookie` and all, to every client,
/// by every process sharing the namespace. An entry that holds a field the layer would not
/// store now is not one of its entries: a miss, refilled without the cookie.
async fn a_cookie_shared_before_is_not_replayed_once_cookies_are_not_shared<B>(backend: B)
where
    B: Backend + Clone,
{
    let origin = Origin::numbered(200, &[("set-cookie", "session=alice"), ("x-page", "home")]);
    let sharing = layer(backend.clone()).share_set_cookie(true);
    let svc = origin.service(&sharing);
    let url = "http://review-kk.test/shared-cookie";
    send(&svc, Method::GET, url, &[]).await;
    support::stores(&Watch::of(&sharing), 1).await;
    let replayed = send(&svc, Method::GET, url, &[]).await;
    assert!(is_hit(&replayed), "{replayed:?}");
    assert_eq!(replayed.header("set-cookie"), Some("session=alice"));

    // The operator's fix: the same namespace, cookies no longer shared.
    let fixed = layer(backend);
    let svc = origin.service(&fixed);
    for attempt in 0..3 {
        let answer = send(&svc, Method::GET, url, &[]).await;
        assert!(
            !(is_hit(&answer) && answer.headers.contains_key("set-cookie")),
            "attempt {attempt}: a stored cookie replayed: {answer:?}"
        );
        Watch::of(&fixed).settled().await;
    }
}

/// A value under an entry's key whose fields include ones the layer never stores
/// (`Transfer-Encoding`, `Connection`, `Upgrade`): from another tool or a corrupt write,
/// it was replayed as stored, to every client. Over HTTP/2 a connection-specific field
/// makes hyper reset the stream (each hit of the URL failed); over HTTP/1.1 a
/// `Transfer-Encoding: gzip` relabels an identity body. Such a value is a miss, and the
/// next fill replaces it.
#[tokio::test]
async fn an_entry_with_hop_by_hop_fields_is_a_miss_and_replaced() {
    let backend = MemoryBackend::new();
    // Names of the same lengths as the hop-by-hop ones, so that the stored bytes can be
    // edited in place (bincode prefixes each with its length).
    let origin = Origin::numbered(
        200,
        &[
            ("xransfer-encoding", "gzip"),
            ("xonnection", "close"),
            ("xpgrade", "websocket"),
        ],
    );
    let cache = layer(backend.clone());
    let svc = origin.service(&cache);
    let url = "http://review-kk.test/hop";
    send(&svc, Method::GET, url, &[]).await;
    support::stores(&Watch::of(&cache), 1).await;
    let key = primary_key(url);
    let item = backend.peek(&key).expect("the entry");
    assert_eq!(item.flags, FLAG_HTTP_ENTRY);
    let mut bytes = item.value.to_vec();
    for (from, to) in [
        (&b"xransfer-encoding"[..], &b"transfer-encoding"[..]),
        (b"xonnection", b"connection"),
        (b"xpgrade", b"upgrade"),
    ] {
        let at = bytes
            .windows(from.len())
            .position(|window| window == from)
            .expect("the field in the entry");
        bytes[at..at + to.len()].copy_from_slice(to);
    }
    backend
        .set(&key, Bytes::from(bytes), FLAG_HTTP_ENTRY, Lifetime::NEVER)
        .await
        .unwrap();
    let answer = send(&svc, Method::GET, url, &[]).await;
    for name in ["transfer-encoding", "connection", "upgrade"] {
        assert!(
            !answer.headers.contains_key(name),
            "a stored {name} replayed: {answer:?}"
        );
    }
    assert!(!is_hit(&answer), "{answer:?}");
    Watch::of(&cache).settled().await;
    let again = send(&svc, Method::GET, url, &[]).await;
    assert_hit(again.cache_status());
    assert_eq!(again.header("xransfer-encoding"), Some("gzip"));
}

/// `url`'s page, answered with `headers`, asked for three times through a layer over
/// `backend` that holds `value` under `key` (as another writer left it), the first two
/// stores let land: the third answer, and the origin (which counts its calls).
async fn asked_past<B>(
    backend: B,
    headers: &[(&'static str, &'static str)],
    url: &str,
    key: &str,
    value: Bytes,
) -> (Answer, Origin)
where
    B: Backend + Clone,
{
    let origin = Origin::numbered(200, headers);
    let cache = layer(backend.clone());
    let svc = origin.service(&cache);
    backend.set(key, value, 0, Lifetime::NEVER).await.unwrap();
    for _ in 0..2 {
        send(&svc, Method::GET, url, &[]).await;
        Watch::of(&cache).settled().await;
    }
    (send(&svc, Method::GET, url, &[]).await, origin)
}

/// The namespace generation of a server holding something that is not a number (another
/// tool's write, a corrupt value): every lookup read it as absent, its `add` of a fresh one
/// failed (the key is taken), and nothing was ever stored on that server again: read on
/// every lookup, the value never aged out. Now such a value is replaced by a fresh
/// generation (which is what a namespace purge writes: only misses).
async fn a_namespace_generation_that_is_no_number_does_not_end_caching<B>(backend: B)
where
    B: Backend + Clone,
{
    let (answer, origin) = asked_past(
        backend,
        &[],
        "http://review-kk.test/generation",
        &internal_key("\0generation"),
        Bytes::from_static(b"not a number"),
    )
    .await;
    assert_hit(answer.cache_status());
    assert!(origin.calls() <= 2, "{} calls", origin.calls());
}

/// The same for a tag: a tag's mark that is not a number made every store of a response
/// carrying the tag fail (the read saw no mark, the `add` of one found the key taken), for
/// as long as the value stayed, and every request for those pages went to the origin.
/// Now such a mark is replaced by a purge of the tag at that moment.
async fn a_tag_mark_that_is_no_number_does_not_end_caching_of_its_pages<B>(backend: B)
where
    B: Backend + Clone,
{
    let (answer, _) = asked_past(
        backend,
        &[("surrogate-key", "news")],
        "http://review-kk.test/tag-garbage",
        &tag_key("news"),
        Bytes::from_static(b"garbage"),
    )
    .await;
    assert_hit(answer.cache_status());
}

/// A tag purged by a process whose clock runs an hour ahead (a VM resumed with a stale
/// offset, a bad NTP source) carries a purge time an hour in everyone else's future: every
/// store of a page with that tag, by every other process, was refused as "requested
/// before the purge" for that hour, and every request for those pages went to the origin.
/// The purge did happen before the mark was read, so a mark from past the tolerated skew
/// is replaced by a purge at the reader's now: fills requested after it are stored.
async fn a_tag_purged_by_a_clock_far_ahead_does_not_end_caching_of_its_pages<B>(backend: B)
where
    B: Backend + Clone,
{
    let hour_ahead = SystemTime::now() + Duration::from_secs(3600);
    let nanos = hour_ahead.duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let (answer, _) = asked_past(
        backend,
        &[("surrogate-key", "sports")],
        "http://review-kk.test/tag-future",
        &tag_key("sports"),
        Bytes::from(nanos.to_string()),
    )
    .await;
    assert_hit(answer.cache_status());
}

on_every_backend!("review_kk";
    a_cookie_shared_before_is_not_replayed_once_cookies_are_not_shared,
    a_namespace_generation_that_is_no_number_does_not_end_caching,
    a_tag_mark_that_is_no_number_does_not_end_caching_of_its_pages,
    a_tag_purged_by_a_clock_far_ahead_does_not_end_caching_of_its_pages,
    a_placeholder_waited_for_forever_holds_a_request_lease_wait_at_most,
);

// ---------------------------------------------------------------------------------------
// Surfaces that held (regression tests)
// ---------------------------------------------------------------------------------------

/// An origin that reflects the request's `X-Debug` into a second `Cache-Control` line and
/// into the tag header, beside its own `private` page and tag.
fn reflecting() -> Origin {
    Origin::replying(|request, _| {
        let text = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let mut headers = vec![
            ("cache-control", "private, community=\"x\"".to_owned()),
            ("surrogate-key", "account".to_owned()),
        ];
        if let Some(debug) = text("x-debug") {
            headers.push(("cache-control", debug.to_owned()));
            headers.push(("surrogate-key", debug.to_owned()));
        }
        Reply::ok(
            headers,
            format!("page of {}", text("x-user").unwrap_or("nobody")),
        )
    })
}

/// Held: a client's value reflected into `Cache-Control` cannot make a `private` page
/// shared, whether it adds `public, max-age=…` on a line of its own, repeats `max-age`,
/// or opens a quoted string to swallow what follows (an unbalanced quote reads as
/// `no-store`), and the tags it adds to the tag header change nothing of that.
#[tokio::test]
async fn reflected_directives_and_tags_never_share_a_private_page() {
    let backend = MemoryBackend::new();
    let cache = layer(backend.clone()).mode(tower_memcache::CacheMode::Origin);
    let svc = cache.layer(reflecting());
    let many: String = (0..40).map(|n| format!("t{n} ")).collect();
    let long = "x".repeat(200);
    for debug in [
        "public, max-age=31536000",
        "public, s-maxage=31536000, must-understand",
        "max-age=31536000, max-age=31536000",
        "\", public, max-age=600, x=\"",
        "x=\"\\\"",
        many.as_str(),
        long.as_str(),
    ] {
        let url = "http://review-kk.test/account";
        send(
            &svc,
            Method::GET,
            url,
            &[("x-debug", debug), ("x-user", "alice")],
        )
        .await;
        Watch::of(&cache).settled().await;
        let bob = send(&svc, Method::GET, url, &[("x-user", "bob")]).await;
        assert_eq!(bob.body, "page of bob", "{debug:?}: {bob:?}");
        assert!(
            backend
                .peek(&primary_key(url))
                .is_none_or(|item| item.flags != FLAG_HTTP_ENTRY),
            "{debug:?}: stored"
        );
    }
}

/// Held: a placeholder that claims to be waited for until the end of time (another
/// tool's, or a process whose clock is wrong) holds a request `lease_wait` at most; the
/// request then arms it again for itself, fills the URL, and the next request hits.
async fn a_placeholder_waited_for_forever_holds_a_request_lease_wait_at_most<B>(backend: B)
where
    B: Backend + Clone,
{
    const FLAG_PLACEHOLDER: u32 = 0x746d_0103;
    let origin = Origin::numbered(200, &[]);
    let cache =
        layer(backend.clone()).lease_wait(Duration::from_millis(200), Duration::from_millis(20));
    let svc = origin.service(&cache);
    let url = "http://review-kk.test/forever";
    backend
        .set(
            &primary_key(url),
            Bytes::from(format!("7 {}", u64::MAX)),
            FLAG_PLACEHOLDER,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), send(&svc, Method::GET, url, &[]))
        .await
        .expect("answered within its wait");
    assert_eq!(first.body, "call 1");
    Watch::of(&cache).settled().await;
    let again = send(&svc, Method::GET, url, &[]).await;
    assert_hit(again.cache_status());
    assert_eq!(origin.calls(), 1);
}
