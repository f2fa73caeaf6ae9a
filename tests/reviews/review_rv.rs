//! Review RV: consistency across memcached servers and time: variant indexes, purges, and
//! servers that die and come back.
//!
//! Two first fills of one URL's variants, by two processes (here two layers on one
//! backend), both went out under the same placeholder (the second went alongside the
//! first: leases off, or a lease wait that ran out). The first store put the URL's variant
//! index over the placeholder; the second found that index where its placeholder had been
//! and was refused, so the second variant was never stored (every request for it a miss
//! until a later fill). An index put over a placeholder now takes the placeholder's token
//! as its id, so a fill still holding that token knows the index replaced its own
//! placeholder, with no purge since, and stores its variant under it; an index written
//! after a purge has another id, and refuses it as before. An index changed between a
//! store's check and its compare-and-swap is read again and merged; an index of another
//! URL in the key is replaced rather than stored under.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use support::db::{Db, joined, send, service, spawn_get};
use support::{Watch, assert_hit};
use tower_memcache::backend::{Backend, BackendError, CasOutcome, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer};

/// A layer of one "process" on the shared backend (flights of its own).
fn process<B: Backend>(backend: B, leases: bool) -> MemcacheLayer<B> {
    let layer = support::layer(backend)
        .namespace("review-rv")
        .mode(CacheMode::Origin);
    if leases {
        // Waits for another process's placeholder run out at once: the request goes
        // alongside its holder, as after a slow origin's whole `lease_wait`.
        layer.lease_wait(Duration::ZERO, Duration::from_millis(1))
    } else {
        layer.lease(None)
    }
}

/// An origin whose `/v` varies on `Accept-Language`.
fn varying_db() -> Db {
    let db = Db::default();
    db.fields(
        "/v",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "accept-language"),
        ],
    );
    db
}

/// Two processes fill two variants of `/v` side by side under one placeholder, the `en`
/// one stored first: afterwards both variants are hits, from either process.
async fn both_first_fills_of_a_urls_variants_are_stored<B: Backend + Clone>(
    backend: B,
    leases: bool,
) {
    let (db_en, db_fr) = (varying_db(), varying_db());
    let (one, two) = (process(backend.clone(), leases), process(backend, leases));
    let (watch_one, watch_two) = (Watch::of(&one), Watch::of(&two));
    let (svc_one, svc_two) = (service(&one, &db_en), service(&two, &db_fr));
    let (gate_en, gate_fr) = (db_en.hold(), db_fr.hold());
    let en = spawn_get(&svc_one, "/v", &[("accept-language", "en")]);
    gate_en.arrivals(1).await;
    // Its lookup finds the placeholder of `en`'s fill, and goes alongside it.
    let fr = spawn_get(&svc_two, "/v", &[("accept-language", "fr")]);
    gate_fr.arrivals(1).await;
    gate_en.open();
    assert_eq!(joined(en).await.body, "/v v0 en");
    watch_one.settled().await;
    gate_fr.open();
    assert_eq!(joined(fr).await.body, "/v v0 fr");
    watch_two.settled().await;
    for svc in [&svc_one, &svc_two] {
        for language in ["en", "fr"] {
            let answer = send(svc, Method::GET, "/v", &[("accept-language", language)]).await;
            assert_eq!(answer.body, format!("/v v0 {language}"));
            assert_hit(answer.cache_status());
        }
    }
    assert_eq!(
        (db_en.calls(), db_fr.calls()),
        (1, 1),
        "one origin call per variant"
    );
}

async fn both_first_fills_without_leases<B: Backend + Clone>(backend: B) {
    both_first_fills_of_a_urls_variants_are_stored(backend, false).await;
}

async fn both_first_fills_after_a_lease_wait<B: Backend + Clone>(backend: B) {
    both_first_fills_of_a_urls_variants_are_stored(backend, true).await;
}

/// As above, with a purge of the URL after the first store and a fill of `en` after it
/// (a new index): the `fr` response, produced before the purge, is not stored under the
/// new index, and `fr` is fetched anew.
async fn a_variant_produced_before_a_purge_is_not_stored_under_the_index_after_it<
    B: Backend + Clone,
>(
    backend: B,
) {
    let (db_en, db_fr) = (varying_db(), varying_db());
    let (one, two) = (process(backend.clone(), false), process(backend, false));
    let (watch_one, watch_two) = (Watch::of(&one), Watch::of(&two));
    let (svc_one, svc_two) = (service(&one, &db_en), service(&two, &db_fr));
    let (gate_en, gate_fr) = (db_en.hold(), db_fr.hold());
    let en = spawn_get(&svc_one, "/v", &[("accept-language", "en")]);
    gate_en.arrivals(1).await;
    let fr = spawn_get(&svc_two, "/v", &[("accept-language", "fr")]);
    gate_fr.arrivals(1).await;
    gate_en.open();
    assert_eq!(joined(en).await.body, "/v v0 en");
    watch_one.settled().await;
    db_en.bump();
    db_fr.bump();
    one.purger()
        .purge_uri("http://site.example/v")
        .await
        .unwrap();
    let en = send(&svc_one, Method::GET, "/v", &[("accept-language", "en")]).await;
    assert_eq!(en.body, "/v v1 en");
    watch_one.settled().await;
    gate_fr.open();
    assert_eq!(joined(fr).await.body, "/v v0 fr", "its own client gets it");
    watch_two.settled().await;
    let fr = send(&svc_one, Method::GET, "/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "/v v1 fr", "{}", fr.cache_status());
    let en = send(&svc_two, Method::GET, "/v", &[("accept-language", "en")]).await;
    assert_eq!(en.body, "/v v1 en");
    assert_hit(en.cache_status());
}

on_every_backend!("review_rv";
    both_first_fills_without_leases,
    both_first_fills_after_a_lease_wait,
    a_variant_produced_before_a_purge_is_not_stored_under_the_index_after_it,
);

/// The flags of a variant index (`FLAG_VARIANT_INDEX`, crate-private).
const INDEX_FLAGS: u32 = 0x746d_0102;

/// MemoryBackend on which, once armed, another store rewrites the URL's variant index
/// (the same bytes, so the same id: a sibling variant's store of another process) between
/// a store's check read and its compare-and-swap of the index.
#[derive(Clone)]
struct IndexRewrittenBeforeCas {
    inner: MemoryBackend,
    armed: Arc<AtomicBool>,
}

impl Backend for IndexRewrittenBeforeCas {
    async fn cas(
        &self,
        key: &str,
        value: bytes::Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        if flags == INDEX_FLAGS && self.armed.swap(false, Ordering::SeqCst) {
            if let Some(item) = self.inner.get(key).await? {
                self.inner
                    .set(key, item.value, item.flags, Lifetime::NEVER)
                    .await?;
            }
        }
        self.inner.cas(key, value, flags, lifetime, cas).await
    }

    forward_to_inner!(
        get, get_many, set, add, delete, touch, incr, flush_all, stats
    );
}

/// A variant of a new `Vary` name set, whose store finds the URL's index rewritten since
/// its check read it (same id), is merged into it and stored. Before, the index's
/// compare-and-swap failed and the variant was dropped: a miss for every such request
/// until a later fill.
#[tokio::test]
async fn a_variant_whose_index_changed_since_its_check_is_merged_and_stored() {
    let backend = IndexRewrittenBeforeCas {
        inner: MemoryBackend::new(),
        armed: Arc::new(AtomicBool::new(false)),
    };
    let db = Db::default();
    db.fields(
        "/c",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "accept-encoding"),
        ],
    );
    let layer = process(backend.clone(), true);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let plain = [("accept-encoding", "gzip")];
    let cors = [
        ("accept-encoding", "gzip"),
        ("origin", "https://app.example"),
    ];
    assert_eq!(
        send(&svc, Method::GET, "/c", &cors).await.body,
        "/c v0 cors"
    );
    watch.settled().await;
    backend.armed.store(true, Ordering::SeqCst);
    assert_eq!(send(&svc, Method::GET, "/c", &plain).await.body, "/c v0");
    watch.settled().await;
    assert!(
        !backend.armed.load(Ordering::SeqCst),
        "the index was rewritten"
    );
    for (headers, body) in [(&plain[..], "/c v0"), (&cors[..], "/c v0 cors")] {
        let answer = send(&svc, Method::GET, "/c", headers).await;
        assert_eq!(answer.body, body);
        assert_hit(answer.cache_status());
    }
    assert_eq!(db.calls(), 2, "one origin call per variant");
}

/// MemoryBackend that notes the keys variant indexes are written to (the primary keys of
/// URLs that vary).
#[derive(Clone, Default)]
struct NotingIndexes {
    inner: MemoryBackend,
    indexes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Backend for NotingIndexes {
    async fn cas(
        &self,
        key: &str,
        value: bytes::Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        if flags == INDEX_FLAGS {
            let mut indexes = self.indexes.lock().unwrap();
            if !indexes.iter().any(|known| known == key) {
                indexes.push(key.to_owned());
            }
        }
        self.inner.cas(key, value, flags, lifetime, cas).await
    }

    forward_to_inner!(
        get, get_many, set, add, delete, touch, incr, flush_all, stats
    );
}

/// A variant index of another URL in a URL's primary key (an md5 collision, or bytes
/// another writer put there) is replaced by the URL's own on its next store. Before, the
/// store put its variant under the foreign index, which every lookup of the URL refuses:
/// "stored" on every request, a miss on every one, for as long as memcached kept it.
#[tokio::test]
async fn a_foreign_variant_index_in_a_urls_key_is_replaced_not_stored_under() {
    let backend = NotingIndexes::default();
    let db = Db::default();
    for path in ["/a", "/b"] {
        db.fields(
            path,
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
        );
    }
    let layer = process(backend.clone(), true);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let en = [("accept-language", "en")];
    for path in ["/a", "/b"] {
        send(&svc, Method::GET, path, &en).await;
        watch.settled().await;
    }
    let keys = backend.indexes.lock().unwrap().clone();
    let [a, b] = <[String; 2]>::try_from(keys).expect("one index per URL");
    // `/a`'s index where `/b`'s was.
    let foreign = backend.inner.peek(&a).expect("the index of /a");
    backend
        .inner
        .set(&b, foreign.value, foreign.flags, Lifetime::NEVER)
        .await
        .unwrap();
    let calls = db.calls();
    let refill = send(&svc, Method::GET, "/b", &en).await;
    assert_eq!(refill.body, "/b v0 en");
    watch.settled().await;
    let again = send(&svc, Method::GET, "/b", &en).await;
    assert_eq!(again.body, "/b v0 en");
    assert_hit(again.cache_status());
    assert_eq!(db.calls(), calls + 1, "refilled once");
    let a = send(&svc, Method::GET, "/a", &en).await;
    assert_hit(a.cache_status());
}

/// Through twemproxy (text protocol, one address): the first fills of two variants are
/// both stored, and a purge between them still holds.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn first_fills_of_variants_through_twemproxy() {
    let Some(memcached) = support::Memcached::start("review_rv::twemproxy") else {
        return;
    };
    let Some(proxy) = support::nutcracker::Nutcracker::start(
        "review_rv::twemproxy",
        std::slice::from_ref(&memcached),
    ) else {
        return;
    };
    let backend = || {
        tower_memcache::backend::TcpBackend::builder()
            .server(proxy.addr())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    support::bounded("twemproxy first fills", async {
        both_first_fills_of_a_urls_variants_are_stored(backend(), false).await;
        memcached.flush_all();
        a_variant_produced_before_a_purge_is_not_stored_under_the_index_after_it(backend()).await;
    })
    .await;
}
