//! Review QO: memcached's own eviction and expiry as an adversary to "a purge that
//! returned holds". Purges rest on bookkeeping keys beside the entries (namespace and tag
//! generations, store epochs, placeholders); memcached evicts a small key in a busy slab
//! class before a large entry in a quiet one, and `-M` refuses writes instead. Each test
//! evicts or starves one such key while the entry it guards survives, and checks that the
//! purged response is not served again, or that the purge reports its failure.
//!
//! On `MemoryBackend` an eviction is modelled by deleting the one key memcached would
//! have evicted; on a real memcached (`-m` tiny) the tests evict it with memcached's own
//! LRU, by flooding the tag key's slab class. Skips without memcached unless
//! `MEMCACHED_REQUIRED=1`.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use support::db::{Db, get, joined, serves_only_the_new_version, service, spawn_get};
use support::{Memcached, Watch};
use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer};
use tower_memcache::key::md5_hex;

const NAMESPACE: &str = "review-qo";

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace(NAMESPACE)
        .mode(CacheMode::Origin)
}

/// The key of a tag's generation (the layout of `storage::internal_key`).
fn tag_key(tag: &str) -> String {
    format!(
        "g:{}",
        md5_hex(&[NAMESPACE.as_bytes(), format!("\0tag\0{tag}").as_bytes()])
    )
}

/// The key of the namespace's tag-purge mark (written by every tag purge, read by stores).
fn tag_purges_key() -> String {
    format!("g:{}", md5_hex(&[NAMESPACE.as_bytes(), b"\0tag purges"]))
}

/// The key of the namespace generation.
fn generation_key() -> String {
    format!("g:{}", md5_hex(&[NAMESPACE.as_bytes(), b"\0generation"]))
}

const TAGGED: &[(&str, &str)] = &[("cache-control", "max-age=600"), ("surrogate-key", "news")];

/// A fill of a tagged page is under way; a purge of its tag returns; memcached then evicts
/// the tag's generation (small, in a busy slab class) while nothing else changes; the
/// fill's response, produced before the purge, must not be stored and served.
/// `evict` evicts `key` as memcached would.
async fn a_tag_generation_evicted_after_its_purge_does_not_admit_an_older_fill<B, F, Fut>(
    backend: B,
    evict: F,
) where
    B: Backend,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = Db::default();
    db.fields("/t", TAGGED);
    db.fields("/w", TAGGED);
    let layer = layer(backend.clone());
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    // The tag exists on the server (another page carries it).
    assert_eq!(get(&svc, "/w").await.body, "/w v0");
    watch.settled().await;
    assert!(
        backend.get(&tag_key("news")).await.ok().flatten().is_some(),
        "the tag's generation exists (the test computes its key right)"
    );
    let gate = db.hold();
    let filling = spawn_get(&svc, "/t", &[]);
    gate.arrivals(1).await;
    db.bump();
    support::bounded("tag purge", layer.purger().purge_tag("news"))
        .await
        .expect("tag purge");
    evict(tag_key("news")).await;
    gate.open();
    assert_eq!(
        joined(filling).await.body,
        "/t v0",
        "its own client gets it"
    );
    serves_only_the_new_version(&svc, &watch, "/t", &[], "/t v1").await;
}

/// The same, when another page's fill (requested after the purge) recreates the evicted
/// tag's generation before the older fill stores: the recreated "created" mark must not
/// vouch for a response requested before the purge.
async fn a_tag_generation_recreated_after_an_eviction_does_not_admit_an_older_fill<B: Backend>(
    backend: B,
) {
    let db = Db::default();
    db.fields("/t", TAGGED);
    db.fields("/w", TAGGED);
    db.fields("/x", TAGGED);
    let layer = layer(backend.clone());
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/w").await.body, "/w v0");
    watch.settled().await;
    let gate = db.hold();
    let filling = spawn_get(&svc, "/t", &[]);
    gate.arrivals(1).await;
    db.bump();
    support::bounded("tag purge", layer.purger().purge_tag("news"))
        .await
        .expect("tag purge");
    // Evicted; then a fill of another page, requested after the purge, creates it anew.
    backend.delete(&tag_key("news")).await.expect("evict");
    let other = spawn_get(&svc, "/x", &[]);
    gate.arrivals(2).await;
    gate.open();
    assert_eq!(joined(other).await.body, "/x v1");
    watch.settled().await;
    assert!(
        backend.get(&tag_key("news")).await.ok().flatten().is_some(),
        "the later fill recreated the tag's generation"
    );
    assert_eq!(
        joined(filling).await.body,
        "/t v0",
        "its own client gets it"
    );
    serves_only_the_new_version(&svc, &watch, "/t", &[], "/t v1").await;
}

#[tokio::test]
async fn memory_a_tag_generation_evicted_after_its_purge_does_not_admit_an_older_fill() {
    let backend = MemoryBackend::new();
    let evictor = backend.clone();
    a_tag_generation_evicted_after_its_purge_does_not_admit_an_older_fill(
        backend,
        |key| async move {
            evictor.delete(&key).await.expect("evict");
        },
    )
    .await;
}

/// Both small keys a tag purge writes evicted (the tag-purge mark is written just before
/// the tag's generation, so the LRU takes it first): a mark that is gone tells nothing, and
/// the older fill is not stored either.
#[tokio::test]
async fn memory_a_tag_generation_evicted_with_the_tag_purge_mark_does_not_admit_an_older_fill() {
    let backend = MemoryBackend::new();
    let evictor = backend.clone();
    a_tag_generation_evicted_after_its_purge_does_not_admit_an_older_fill(
        backend,
        |key| async move {
            assert!(
                evictor
                    .get(&tag_purges_key())
                    .await
                    .ok()
                    .flatten()
                    .is_some(),
                "the purge wrote the mark (the test computes its key right)"
            );
            evictor.delete(&tag_purges_key()).await.expect("evict");
            evictor.delete(&key).await.expect("evict");
        },
    )
    .await;
}

#[tokio::test]
async fn memory_a_tag_generation_recreated_after_an_eviction_does_not_admit_an_older_fill() {
    a_tag_generation_recreated_after_an_eviction_does_not_admit_an_older_fill(MemoryBackend::new())
        .await;
}

/// Against memcached's own LRU: a tiny memcached whose smallest slab class a flood of
/// small keys fills, until the tag's generation is evicted, while lookups of other pages
/// keep reading the namespace generation (the hottest key: every lookup reads it, where a
/// tag's generation is read only on hits of its pages). The placeholder (a slab class of
/// its own, by its size) and the entries survive.
#[tokio::test]
async fn memcached_lru_evicting_a_purged_tag_generation_does_not_admit_an_older_fill() {
    let Some(server) = Memcached::start_with_args(
        "memcached_lru_evicting_a_purged_tag_generation_does_not_admit_an_older_fill",
        &["-m", "2", "-o", "slab_reassign,slab_automove=0"],
    ) else {
        return;
    };
    let backend = support::one_connection_backend(&server.addr(), Duration::from_secs(2));
    let flooder = backend.clone();
    a_tag_generation_evicted_after_its_purge_does_not_admit_an_older_fill(
        backend,
        |key| async move {
            // Rounds of small sets (each several times what the slab class holds), pipelined;
            // the tag key is looked at only between rounds (a read bumps it in the LRU), and
            // the flood is bounded.
            let value = Bytes::from_static(b"1234567890123456789");
            for round in 0..8u32 {
                for chunk in 0..1024u32 {
                    let sets = (0..64u32).map(|n| {
                        let filler =
                            format!("g:flood-{round:02}-{chunk:04}-{n:02}-0123456789abcdef");
                        let flooder = flooder.clone();
                        let value = value.clone();
                        async move { flooder.set(&filler, value, 0, Lifetime::NEVER).await }
                    });
                    for set in futures_util::future::join_all(sets).await {
                        set.expect("flood set");
                    }
                    // Other pages' lookups.
                    flooder.get(&generation_key()).await.expect("lookup");
                }
                if flooder.get(&key).await.ok().flatten().is_none() {
                    return;
                }
            }
            panic!("memcached never evicted the tag's generation");
        },
    )
    .await;
    drop(server);
}
