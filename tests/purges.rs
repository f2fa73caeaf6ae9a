//! Purges that hold, and coalescing that helps: tried against a gated origin, a
//! "database" whose version a request reads when it arrives and which the test bumps while
//! that request's response is still held at the gate. After a purge or an invalidation has
//! returned, no response produced before it may be served. Each scenario runs on
//! MemoryBackend and on a private memcached (see `on_every_backend!`).

mod support;

use support::db::{Db, Svc, get, joined, send, serves_only_the_new_version, service, spawn_get};
use support::{Watch, assert_hit, stores};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::{Notify, Semaphore};
use tower_memcache::backend::{
    Backend, BackendError, CasOutcome, Item, Lifetime, ServerStats, UnreachableReason,
};
use tower_memcache::cache::{CacheMode, MemcacheLayer};

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("purges")
        .mode(CacheMode::Origin)
}

// ---------------------------------------------------------------------------------------
// A purge or an invalidation that returned is never undone by a fill that was under way.

async fn a_uri_purge_during_a_fill_is_not_undone_by_its_store<B: Backend>(backend: B) {
    let db = Db::default();
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let filling = spawn_get(&svc, "/p", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer
        .purger()
        .purge_uri("http://site.example/p")
        .await
        .unwrap();
    gate.open();
    assert_eq!(
        joined(filling).await.body,
        "/p v0",
        "its own client gets it"
    );
    serves_only_the_new_version(&svc, &watch, "/p", &[], "/p v1").await;
}

async fn a_tag_purge_during_a_fill_is_not_undone_by_its_store<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/t",
        &[("cache-control", "max-age=600"), ("surrogate-key", "news")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let filling = spawn_get(&svc, "/t", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_tag("news").await.unwrap();
    gate.open();
    assert_eq!(joined(filling).await.body, "/t v0");
    serves_only_the_new_version(&svc, &watch, "/t", &[], "/t v1").await;
}

async fn an_invalidation_by_a_post_during_a_fill_is_not_undone<B: Backend>(backend: B) {
    let db = Db::default();
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let filling = spawn_get(&svc, "/p", &[]);
    gate.arrivals(1).await;
    db.bump();
    // The POST goes through the same gate: let it (and the held GET) through, and wait for
    // the POST's answer, which comes after its invalidation.
    let post = {
        let svc = svc.clone();
        tokio::spawn(async move { send(&svc, Method::POST, "/p", &[]).await })
    };
    gate.arrivals(2).await;
    gate.open();
    let post = joined(post).await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(joined(filling).await.body, "/p v0");
    serves_only_the_new_version(&svc, &watch, "/p", &[], "/p v1").await;
}

async fn a_304_after_a_purge_does_not_bring_the_entry_back<B: Backend>(backend: B) {
    let db = Db::default();
    // Stored, stale at once, revalidated with its validator.
    db.fields("/r", &[("cache-control", "max-age=0")]);
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/r").await.body, "/r v0");
    stores(&watch, 1).await;
    let gate = db.hold();
    // The origin reads version 0 when the revalidation arrives, and will answer 304.
    let revalidating = spawn_get(&svc, "/r", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer
        .purger()
        .purge_uri("http://site.example/r")
        .await
        .unwrap();
    gate.open();
    let answer = joined(revalidating).await;
    assert_eq!(answer.body, "/r v0", "{}", answer.cache_status());
    watch.settled().await;
    db.fields("/r", &[("cache-control", "max-age=600")]);
    let after = get(&svc, "/r").await;
    assert_eq!(after.body, "/r v1", "{}", after.cache_status());
}

async fn a_namespace_purge_during_the_first_fill_after_a_cold_start_holds<B: Backend>(backend: B) {
    let db = Db::default();
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let filling = spawn_get(&svc, "/cold", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_namespace().await.unwrap();
    gate.open();
    assert_eq!(joined(filling).await.body, "/cold v0");
    serves_only_the_new_version(&svc, &watch, "/cold", &[], "/cold v1").await;
}

async fn a_flush_during_a_fill_is_not_undone_by_its_store<B: Backend>(backend: B) {
    let db = Db::default();
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let filling = spawn_get(&svc, "/p", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_all().await.unwrap();
    gate.open();
    assert_eq!(joined(filling).await.body, "/p v0");
    serves_only_the_new_version(&svc, &watch, "/p", &[], "/p v1").await;
}

/// A fill whose lookup timed out saw no generation: it must not be stored under one read
/// after a purge.
#[tokio::test]
async fn a_namespace_purge_during_a_fill_whose_lookup_timed_out_holds() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let db = Db::default();
    let layer = layer(backend.clone()).lookup_timeout(Duration::from_millis(30));
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    backend.set_latency(Duration::from_millis(100));
    let filling = spawn_get(&svc, "/slow", &[]);
    gate.arrivals(1).await;
    backend.set_latency(Duration::ZERO);
    db.bump();
    layer.purger().purge_namespace().await.unwrap();
    gate.open();
    assert_eq!(joined(filling).await.body, "/slow v0");
    serves_only_the_new_version(&svc, &watch, "/slow", &[], "/slow v1").await;
}

async fn a_request_sent_after_a_purge_does_not_join_the_older_flight<B: Backend>(backend: B) {
    let db = Db::default();
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let first = spawn_get(&svc, "/f", &[]);
    gate.arrivals(1).await;
    // Sent before the purge: may share the first request's response.
    let early = spawn_get(&svc, "/f", &[]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.bump();
    layer
        .purger()
        .purge_uri("http://site.example/f")
        .await
        .unwrap();
    let late = spawn_get(&svc, "/f", &[]);
    gate.arrivals(2).await;
    gate.open();
    let late = joined(late).await;
    assert_eq!(late.body, "/f v1", "{}", late.cache_status());
    assert_eq!(joined(first).await.body, "/f v0");
    // Concurrent with the purge: either version is a correct answer.
    let early = joined(early).await;
    assert!(
        early.body == "/f v0" || early.body == "/f v1",
        "{}",
        early.body
    );
    assert!(!late.cache_status().contains("collapsed"));
    serves_only_the_new_version(&svc, &watch, "/f", &[], "/f v1").await;
}

async fn a_request_sent_after_a_tag_purge_does_not_get_the_older_flights_response<B: Backend>(
    backend: B,
) {
    let db = Db::default();
    db.fields(
        "/g",
        &[("cache-control", "max-age=600"), ("surrogate-key", "g")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let first = spawn_get(&svc, "/g", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_tag("g").await.unwrap();
    // Its lookup cannot know the tags of a response not yet produced: it joins the flight,
    // and must not be handed the older response.
    let late = spawn_get(&svc, "/g", &[]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    assert_eq!(joined(first).await.body, "/g v0");
    let late = joined(late).await;
    assert_eq!(late.body, "/g v1", "{}", late.cache_status());
    serves_only_the_new_version(&svc, &watch, "/g", &[], "/g v1").await;
}

async fn a_request_after_a_purge_does_not_get_a_background_refresh_begun_before_it<B: Backend>(
    backend: B,
) {
    let db = Db::default();
    db.fields(
        "/s",
        &[("cache-control", "max-age=0, stale-while-revalidate=600")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/s").await.body, "/s v0");
    stores(&watch, 1).await;
    let gate = db.hold();
    // Served stale at once; its refresh waits at the origin with version 0.
    let stale = get(&svc, "/s").await;
    assert_eq!(stale.body, "/s v0");
    gate.arrivals(1).await;
    db.bump();
    layer
        .purger()
        .purge_uri("http://site.example/s")
        .await
        .unwrap();
    let late = spawn_get(&svc, "/s", &[]);
    gate.arrivals(2).await;
    gate.open();
    let late = joined(late).await;
    assert_eq!(late.body, "/s v1", "{}", late.cache_status());
    watch.settled().await;
    let again = get(&svc, "/s").await;
    assert_eq!(again.body, "/s v1", "{}", again.cache_status());
}

// ---------------------------------------------------------------------------------------
// Coalescing and leases that help.

async fn followers_of_another_variant_elect_a_leader_of_their_own<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/v",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "accept-language"),
        ],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let en = spawn_get(&svc, "/v", &[("accept-language", "en")]);
    gate.arrivals(1).await;
    let fr: Vec<_> = (0..20)
        .map(|_| spawn_get(&svc, "/v", &[("accept-language", "fr")]))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    assert_eq!(joined(en).await.body, "/v v0 en");
    for answer in fr {
        assert_eq!(joined(answer).await.body, "/v v0 fr");
    }
    assert_eq!(db.calls(), 2, "one origin call per variant");
    watch.settled().await;
    assert_hit(
        send(&svc, Method::GET, "/v", &[("accept-language", "fr")])
            .await
            .cache_status(),
    );
}

async fn variants_of_several_vary_header_sets_coexist<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/c",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "accept-encoding"),
        ],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let plain = [("accept-encoding", "gzip")];
    let cors = [
        ("accept-encoding", "gzip"),
        ("origin", "https://app.example"),
    ];
    // The CORS answer first: the plain one, stored after it, must not drop it.
    assert_eq!(
        send(&svc, Method::GET, "/c", &cors).await.body,
        "/c v0 cors"
    );
    stores(&watch, 1).await;
    assert_eq!(send(&svc, Method::GET, "/c", &plain).await.body, "/c v0");
    stores(&watch, 2).await;
    let calls = db.calls();
    for round in 0..20 {
        let (headers, body): (&[(&str, &str)], _) = if round % 2 == 0 {
            (&plain, "/c v0")
        } else {
            (&cors, "/c v0 cors")
        };
        let answer = send(&svc, Method::GET, "/c", headers).await;
        assert_hit(answer.cache_status());
        assert_eq!(answer.body, body);
    }
    assert_eq!(db.calls(), calls, "20 requests, no origin call");
}

/// A backend that stops answering once `die` is set: a process that crashed while its
/// request was at the origin, leaving its placeholder behind.
#[derive(Clone)]
struct Dying<B> {
    inner: B,
    dead: Arc<AtomicBool>,
}

impl<B: Backend> Dying<B> {
    fn check(&self) -> Result<(), BackendError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(BackendError::Unreachable {
                server: "dead process".into(),
                reason: UnreachableReason::Injected,
            });
        }
        Ok(())
    }
}

impl<B: Backend> Backend for Dying<B> {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        self.check()?;
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
        self.check()?;
        self.inner.get_many(keys).await
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.check()?;
        self.inner.set(key, value, flags, lifetime).await
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.check()?;
        self.inner.add(key, value, flags, lifetime).await
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        self.check()?;
        self.inner.cas(key, value, flags, lifetime, cas).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn touch(&self, key: &str, lifetime: Lifetime) -> Result<bool, BackendError> {
        self.check()?;
        self.inner.touch(key, lifetime).await
    }

    async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        self.check()?;
        self.inner.incr(key, delta).await
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        self.check()?;
        self.inner.flush_all().await
    }

    async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
        self.check()?;
        self.inner.stats().await
    }
}

async fn a_dead_processs_lease_makes_one_request_wait_not_every_one<B: Backend>(backend: B) {
    let db = Db::default();
    // Not storable: nothing ever replaces the placeholders.
    db.fields("/d", &[("cache-control", "private")]);
    let dead = Arc::new(AtomicBool::new(false));
    let crashed = layer(Dying {
        inner: backend.clone(),
        dead: Arc::clone(&dead),
    })
    .lease(Some(Duration::from_secs(30)));
    let crashed = service(&crashed, &db);
    let gate = db.hold();
    let orphan = spawn_get(&crashed, "/d", &[]);
    gate.arrivals(1).await;
    dead.store(true, Ordering::SeqCst);
    gate.open();
    joined(orphan).await;
    // Another process: waits for the orphaned placeholder at most its lease wait, once.
    let survivor = layer(backend).lease_wait(Duration::from_millis(400), Duration::from_millis(10));
    let survivor = service(&survivor, &db);
    let started = Instant::now();
    get(&survivor, "/d").await;
    let first = started.elapsed();
    assert!(
        first >= Duration::from_millis(350),
        "waited for the orphan: {first:?}"
    );
    for _ in 0..3 {
        let started = Instant::now();
        get(&survivor, "/d").await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(200),
            "the next request waited {waited:?} (the first {first:?})"
        );
    }
}

on_every_backend!("purges";
    a_uri_purge_during_a_fill_is_not_undone_by_its_store,
    a_tag_purge_during_a_fill_is_not_undone_by_its_store,
    an_invalidation_by_a_post_during_a_fill_is_not_undone,
    a_304_after_a_purge_does_not_bring_the_entry_back,
    a_namespace_purge_during_the_first_fill_after_a_cold_start_holds,
    a_flush_during_a_fill_is_not_undone_by_its_store,
    a_request_sent_after_a_purge_does_not_join_the_older_flight,
    a_request_sent_after_a_tag_purge_does_not_get_the_older_flights_response,
    a_request_after_a_purge_does_not_get_a_background_refresh_begun_before_it,
    followers_of_another_variant_elect_a_leader_of_their_own,
    variants_of_several_vary_header_sets_coexist,
    a_dead_processs_lease_makes_one_request_wait_not_every_one,
);

// ---------------------------------------------------------------------------------------
// Review (wip-review): requests that arrive after a purge returned and still get a
// response whose request went to the origin before it.

/// A leader whose own lookup timed out leads a flight with no mark: every later request
/// joins it, even one sent after a purge, and is handed the leader's older response (its
/// store fails for want of a generation, and a failed store publishes to every follower).
#[tokio::test]
async fn review_a_request_after_a_purge_does_not_join_a_flight_whose_lookup_timed_out() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let db = Db::default();
    let layer = layer(backend.clone()).lookup_timeout(Duration::from_millis(30));
    let svc = service(&layer, &db);
    let gate = db.hold();
    backend.set_latency(Duration::from_millis(100));
    let first = spawn_get(&svc, "/ut", &[]);
    gate.arrivals(1).await;
    backend.set_latency(Duration::ZERO);
    db.bump();
    layer
        .purger()
        .purge_uri("http://site.example/ut")
        .await
        .unwrap();
    let late = spawn_get(&svc, "/ut", &[]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    assert_eq!(joined(first).await.body, "/ut v0");
    let late = joined(late).await;
    assert_eq!(late.body, "/ut v1", "{}", late.cache_status());
}

/// A leader whose store fails (here: the backend is slow at that moment) publishes its
/// response to every follower, even one that joined after a tag purge returned (its lookup
/// saw the leader's placeholder, which a tag purge does not touch).
#[tokio::test]
async fn review_a_failed_store_does_not_hand_a_tag_purged_response_to_later_followers() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let db = Db::default();
    db.fields(
        "/ft",
        &[("cache-control", "max-age=600"), ("surrogate-key", "ft")],
    );
    let layer = layer(backend.clone()).lookup_timeout(Duration::from_millis(30));
    let svc = service(&layer, &db);
    let gate = db.hold();
    let first = spawn_get(&svc, "/ft", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_tag("ft").await.unwrap();
    let late = spawn_get(&svc, "/ft", &[]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The leader's store check times out: StoreOutcome::Failed.
    backend.set_latency(Duration::from_millis(100));
    gate.open();
    assert_eq!(joined(first).await.body, "/ft v0");
    let late = joined(late).await;
    backend.set_latency(Duration::ZERO);
    assert_eq!(late.body, "/ft v1", "{}", late.cache_status());
}

/// A namespace purge after a tag purge: the leader's store is Overtaken (checked before
/// the tags), and Overtaken publishes to every follower, including one that joined after
/// the tag purge returned.
#[tokio::test]
async fn review_an_overtaken_store_does_not_hand_a_tag_purged_response_to_later_followers() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let db = Db::default();
    db.fields(
        "/nt",
        &[("cache-control", "max-age=600"), ("surrogate-key", "nt")],
    );
    let layer = layer(backend.clone());
    let svc = service(&layer, &db);
    let gate = db.hold();
    let first = spawn_get(&svc, "/nt", &[]);
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_tag("nt").await.unwrap();
    let late = spawn_get(&svc, "/nt", &[]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    layer.purger().purge_namespace().await.unwrap();
    gate.open();
    assert_eq!(joined(first).await.body, "/nt v0");
    let late = joined(late).await;
    assert_eq!(late.body, "/nt v1", "{}", late.cache_status());
}

/// A backend whose `cas` can be held: the store's verification read has passed, its cas
/// has not landed yet.
#[derive(Clone)]
struct HeldCas<B> {
    inner: B,
    hold: Arc<AtomicBool>,
    reached: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl<B: Backend> Backend for HeldCas<B> {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
        self.inner.get_many(keys).await
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.inner.set(key, value, flags, lifetime).await
    }
    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.inner.add(key, value, flags, lifetime).await
    }
    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        if flags == tower_memcache::cache::FLAG_HTTP_ENTRY
            && self.hold.swap(false, Ordering::SeqCst)
        {
            self.reached.notify_one();
            self.release.acquire().await.unwrap().forget();
        }
        self.inner.cas(key, value, flags, lifetime, cas).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key).await
    }
    async fn touch(&self, key: &str, lifetime: Lifetime) -> Result<bool, BackendError> {
        self.inner.touch(key, lifetime).await
    }
    async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        self.inner.incr(key, delta).await
    }
    async fn flush_all(&self) -> Result<(), BackendError> {
        self.inner.flush_all().await
    }
    async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
        self.inner.stats().await
    }
}

/// A tag purge that lands between the store's verification read and its cas: the store
/// succeeds (lookups then see the tag's new generation, fine), but the leader publishes
/// with no cutoff, so a follower whose lookup (after the purge returned) saw the leader's
/// placeholder is handed the older response.
#[tokio::test]
async fn review_a_tag_purge_between_the_store_check_and_its_cas_holds_for_followers() {
    let hold = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let backend = HeldCas {
        inner: tower_memcache::backend::MemoryBackend::new(),
        hold: Arc::clone(&hold),
        reached: Arc::clone(&reached),
        release: Arc::clone(&release),
    };
    let db = Db::default();
    db.fields(
        "/ct",
        &[("cache-control", "max-age=600"), ("surrogate-key", "ct")],
    );
    let layer = layer(backend);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let first = spawn_get(&svc, "/ct", &[]);
    gate.arrivals(1).await;
    hold.store(true, Ordering::SeqCst);
    let held = reached.notified();
    gate.open();
    assert_eq!(joined(first).await.body, "/ct v0");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the store reached its cas");
    db.bump();
    layer.purger().purge_tag("ct").await.unwrap();
    let late = spawn_get(&svc, "/ct", &[]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.add_permits(1);
    let late = joined(late).await;
    assert_eq!(late.body, "/ct v1", "{}", late.cache_status());
}

/// Two processes, steady traffic, an origin slower than the lease wait: each waiter whose
/// wait ran out takes the live holder's placeholder over, so the holder's store fails; the
/// next waiter in the other process does the same to it. Nothing is ever stored.
#[tokio::test]
async fn review_an_origin_slower_than_the_lease_wait_still_gets_stored() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = |calls: Arc<AtomicUsize>| {
        move |_request: Request<()>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut response = Response::new(Full::new(Bytes::from("slow page")));
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=600"));
                Ok::<_, Infallible>(response)
            }
        }
    };
    let process = |backend: tower_memcache::backend::MemoryBackend| -> Svc {
        let layer =
            layer(backend).lease_wait(Duration::from_millis(100), Duration::from_millis(10));
        tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(layer)
                .service_fn(origin(Arc::clone(&calls))),
        )
    };
    let (a, b) = (process(backend.clone()), process(backend.clone()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        tasks.push(spawn_get(&a, "/slow", &[]));
        tokio::time::sleep(Duration::from_millis(20)).await;
        tasks.push(spawn_get(&b, "/slow", &[]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hits = 0;
    for task in tasks {
        if joined(task).await.cache_status().contains("hit") {
            hits += 1;
        }
    }
    let calls = calls.load(Ordering::SeqCst);
    assert!(
        hits > 0 && calls <= 6,
        "{calls} origin calls, {hits} hits in 3 s"
    );
}

// ---------------------------------------------------------------------------------------
// Review 2 (wip-review): the fixes of 6dd11cc.

/// A holder whose origin is slower than the other process's lease wait: the waiter demotes
/// the placeholder (same token, `until_ms` 0) and goes alongside it. `guarded` compares the
/// whole placeholder (token and `until_ms`), so neither the holder (its lease's `until`)
/// nor the waiter (the `until` it saw before demoting) matches the demoted one: both
/// stores are Overtaken, and the next request misses.
#[tokio::test]
async fn review2_a_demoted_placeholder_is_still_stored_over_by_its_holder_or_the_waiter() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = |calls: Arc<AtomicUsize>| {
        move |_request: Request<()>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut response = Response::new(Full::new(Bytes::from("slow page")));
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=600"));
                Ok::<_, Infallible>(response)
            }
        }
    };
    let process = |backend: tower_memcache::backend::MemoryBackend| -> Svc {
        let layer =
            layer(backend).lease_wait(Duration::from_millis(100), Duration::from_millis(10));
        tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(layer)
                .service_fn(origin(Arc::clone(&calls))),
        )
    };
    let (a, b) = (process(backend.clone()), process(backend.clone()));
    let holder = spawn_get(&a, "/demoted", &[]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiter = spawn_get(&b, "/demoted", &[]);
    joined(holder).await;
    joined(waiter).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = get(&a, "/demoted").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{}", after.cache_status());
    assert_hit(after.cache_status());
}

/// A demoted placeholder lives FILL_HOLD (300 s) and `place` only `add`s: when neither the
/// holder nor the waiter that demoted it stores (an overloaded origin answering 503s), no
/// request can put a placeholder in place for five minutes, and every process's requests go
/// to the origin at once instead of waiting for one (a release, by contrast, lasts 1 s).
#[tokio::test]
async fn review2_after_a_demoted_fill_fails_the_next_fill_is_still_coalesced_across_processes() {
    let backend = tower_memcache::backend::MemoryBackend::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(true));
    let origin = |calls: Arc<AtomicUsize>, failing: Arc<AtomicBool>| {
        move |_request: Request<()>| {
            let calls = Arc::clone(&calls);
            let failing = Arc::clone(&failing);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut response = if failing.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut response = Response::new(Full::new(Bytes::from("overloaded")));
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response
                } else {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    Response::new(Full::new(Bytes::from("page")))
                };
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=600"));
                if failing.load(Ordering::SeqCst) {
                    response
                        .headers_mut()
                        .insert("cache-control", HeaderValue::from_static("no-store"));
                }
                Ok::<_, Infallible>(response)
            }
        }
    };
    let process = |backend: tower_memcache::backend::MemoryBackend| -> Svc {
        let layer =
            layer(backend).lease_wait(Duration::from_millis(100), Duration::from_millis(10));
        tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(layer)
                .service_fn(origin(Arc::clone(&calls), Arc::clone(&failing))),
        )
    };
    let (a, b) = (process(backend.clone()), process(backend.clone()));
    // The holder (a) and a waiter that demotes its placeholder (b): both get 503s.
    let holder = spawn_get(&a, "/overload", &[]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiter = spawn_get(&b, "/overload", &[]);
    joined(holder).await;
    joined(waiter).await;
    // Well past a release's 1 s: the origin has recovered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    failing.store(false, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    let first = spawn_get(&a, "/overload", &[]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = spawn_get(&b, "/overload", &[]);
    let (first, second) = (joined(first).await, joined(second).await);
    assert_eq!(
        calls.load(Ordering::SeqCst) - before,
        1,
        "{} / {}",
        first.cache_status(),
        second.cache_status()
    );
}
