//! Review RN: the stored entry's journey, field by field, through the paths the fewest
//! reviews walked: what another process wrote into an entry's fields (its receipt time,
//! from a clock of its own; the request fields it is selected by, under a configuration
//! of its own), and what the layer makes of them when it reads them back.
//!
//! Each test names the attack or defect and fails if it is there.

use crate::support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use tower::Layer;

use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, FLAG_HTTP_ENTRY};
use tower_memcache::key::build_key;

use support::scripted_service::Origin;
use support::{Watch, send};

const NAMESPACE: &str = "review-rn";

fn primary_key(url: &str) -> String {
    build_key(Some(NAMESPACE), &format!("GET {url}")[..])
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// Moves the receipt time of the entry under `key` (stored between `from` and `to`, in
/// milliseconds since the epoch) by `shift` milliseconds, as a process whose clock is that
/// far off would have written it. bincode writes a `u64` of this size as `0xfd` and eight
/// little-endian bytes; no other field of the entry holds a value in that window.
async fn shift_receipt(backend: &MemoryBackend, key: &str, from: u64, to: u64, shift: i64) {
    let item = backend.peek(key).expect("the entry");
    assert_eq!(item.flags, FLAG_HTTP_ENTRY);
    let mut bytes = item.value.to_vec();
    let at = (0..bytes.len().saturating_sub(9))
        .find(|&at| {
            bytes[at] == 0xfd && {
                let mut le = [0u8; 8];
                le.copy_from_slice(&bytes[at + 1..at + 9]);
                (from..=to).contains(&u64::from_le_bytes(le))
            }
        })
        .expect("the entry's receipt time");
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at + 1..at + 9]);
    let moved = u64::from_le_bytes(le).saturating_add_signed(shift);
    bytes[at + 1..at + 9].copy_from_slice(&moved.to_le_bytes());
    backend
        .set(key, Bytes::from(bytes), FLAG_HTTP_ENTRY, Lifetime::NEVER)
        .await
        .unwrap();
}

/// Processes sharing memcached with a clock far ahead of this one's (a VM resumed with a
/// stale offset, a bad NTP source): an entry one of them stored carries its receipt time
/// from that clock. Read here, its age counted from a time still to come: zero, however
/// long it had been stored, so a page the origin let be reused for one second was served
/// as fresh, unrevalidated, for the hour the writer's clock ran ahead (for as long as
/// memcached kept it: its `stale-if-error` window, `keep_stale`). An entry received past
/// the tolerated clock skew is not one whose age this process can tell: a miss.
#[tokio::test]
async fn an_entry_stored_by_a_clock_far_ahead_is_not_fresh_past_its_lifetime() {
    let backend = MemoryBackend::new();
    let origin = Origin::numbered(
        200,
        &[
            ("cache-control", "max-age=1, stale-if-error=3600"),
            ("etag", "\"v1\""),
        ],
    );
    let cache = support::layer(backend.clone())
        .namespace(NAMESPACE)
        .mode(CacheMode::Origin);
    let svc = cache.layer(origin.clone());
    let url = "http://review-rn.test/ahead";
    let before = now_ms();
    send(&svc, Method::GET, url, &[]).await;
    support::stores(&Watch::of(&cache), 1).await;
    let after = now_ms();
    // As written by a process whose clock runs an hour ahead.
    shift_receipt(&backend, &primary_key(url), before, after, 3_600_000).await;
    // Well past the one second the origin allowed (a longer wait only makes it older).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = origin.calls();
    let answer = send(&svc, Method::GET, url, &[]).await;
    assert_ne!(
        answer.cache_status(),
        support::HIT,
        "a 1 s page served fresh 2.5 s after it was stored: {answer:?}"
    );
    assert_eq!(
        origin.calls(),
        calls + 1,
        "the origin was not asked: {answer:?}"
    );
}

/// An operator finds that a page differs by tenant and adds `key_headers(["x-tenant"])`,
/// rolling the change out process by process. The entries the old processes stored (one
/// tenant's page, under the URL alone, or as a variant selected by `Vary` fields only)
/// stayed in memcached, and the new processes selected them by the fields the entries
/// named: none of them the key header, so every tenant was answered with the page stored
/// for the first, for as long as the entry lived (an hour by default; up to 30 days). An
/// entry not selected by every key header the layer keys by now is a miss, refilled per
/// tenant.
#[tokio::test]
async fn entries_stored_before_a_key_header_was_added_are_not_served_across_it() {
    let backend = MemoryBackend::new();
    for (url, headers) in [
        (
            "http://review-rn.test/varied",
            &[("vary", "accept-language")][..],
        ),
        ("http://review-rn.test/plain", &[][..]),
    ] {
        let origin = Origin::numbered(200, headers);
        // The process before the change: no key header.
        let old = support::layer(backend.clone()).namespace(NAMESPACE);
        let old_svc = old.layer(origin.clone());
        let first = send(&old_svc, Method::GET, url, &[("x-tenant", "alice")]).await;
        assert_eq!(first.body, "call 1");
        support::stores(&Watch::of(&old), 1).await;
        // The process after it, over the same memcached and namespace.
        let new = support::layer(backend.clone())
            .namespace(NAMESPACE)
            .key_headers([http::HeaderName::from_static("x-tenant")]);
        let new_svc = new.layer(origin.clone());
        let bob = send(&new_svc, Method::GET, url, &[("x-tenant", "bob")]).await;
        assert_ne!(
            bob.body, "call 1",
            "{url}: alice's page answered bob's request: {bob:?}"
        );
        assert_eq!(origin.calls(), 2, "{url}");
        // The new process's own entries hit, per tenant.
        Watch::of(&new).settled().await;
        let again = send(&new_svc, Method::GET, url, &[("x-tenant", "bob")]).await;
        assert_eq!(again.body, bob.body, "{url}: {again:?}");
        support::assert_hit(again.cache_status());
    }
}
