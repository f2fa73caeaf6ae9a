//! Review QP: an adversarial second look at the newest changes: the tag-purge mark (review
//! QO), the lifetime header and 304/HEAD refreshes without `Date` (review QN), and the
//! method spellings (`trace`, `get` with an override).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use support::db::{Db, get, service};
use support::{Watch, assert_hit};
use tower_memcache::backend::{Advanced, Backend, BackendError, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer};

const NAMESPACE: &str = "review-qp";

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace(NAMESPACE)
        .mode(CacheMode::Origin)
}

const TAGGED: &[(&str, &str)] = &[("cache-control", "max-age=600"), ("surrogate-key", "news")];

/// Two servers, one of which hangs on writes made on every server while armed: the write
/// lands on the other one at once (as `TcpBackend` writes each server on its own), and
/// the call answers only when the hung server's operation timeout, longer than the
/// purge's deadline, ends it.
#[derive(Clone)]
struct OneServerFails {
    inner: MemoryBackend,
    armed: Arc<AtomicBool>,
}

impl Backend for OneServerFails {
    forward_to_inner!(
        get, get_many, server_of, set, add, cas, delete, touch, incr, flush_all, stats
    );

    async fn set_on_every_server(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.inner.set(key, value, flags, lifetime).await?;
        if self.armed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// Purges advance generations (review SX): the same hang.
    async fn advance_on_every_server(
        &self,
        key: &str,
        stamp: u64,
        lifetime: Lifetime,
    ) -> Result<Advanced, BackendError> {
        let advanced = self
            .inner
            .advance_on_every_server(key, stamp, lifetime)
            .await?;
        if self.armed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(advanced)
    }
}

/// A tag purge whose first write (the tag-purge mark) misses the purge's deadline, one
/// server hung: review QO made it skip the tag's generation bump on every server, so the
/// tagged pages on the servers that answered were still served after a purge that
/// (unlike before the mark) changed nothing the lookups read. The purge reports its
/// failure either way; it must still purge what it can reach. (Time paused: the
/// deadlines pass at once.)
#[tokio::test(start_paused = true)]
async fn a_tag_purge_whose_mark_misses_its_deadline_still_purges_the_servers_that_took_it() {
    let backend = OneServerFails {
        inner: MemoryBackend::new(),
        armed: Arc::default(),
    };
    let db = Db::default();
    db.fields("/t", TAGGED);
    let layer = layer(backend.clone());
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/t").await.body, "/t v0");
    watch.settled().await;
    assert_hit(get(&svc, "/t").await.cache_status());
    db.bump();
    backend.armed.store(true, Ordering::SeqCst);
    let purged = support::bounded("tag purge", layer.purger().purge_tag("news")).await;
    assert!(purged.is_err(), "the purge reports the server that failed");
    backend.armed.store(false, Ordering::SeqCst);
    let after = get(&svc, "/t").await;
    assert_eq!(
        after.body,
        "/t v1",
        "the reachable server's copy is purged ({})",
        after.cache_status()
    );
}

/// The same against two real memcached servers, one of which hangs (SIGSTOP) before the
/// purge, with an operation timeout longer than the purge's deadline (a slow network's
/// setting): the mark's write misses the deadline, and the tag's pages on the server that
/// answered must not be served from the cache any more.
#[tokio::test]
async fn a_tag_purge_with_one_memcached_hung_purges_the_live_ones() {
    let test = "review_qp::tag_purge_one_hung";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    let backend = tower_memcache::backend::TcpBackend::builder()
        .servers([a.addr(), b.addr()])
        .timeout(std::time::Duration::from_secs(6))
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("backend");
    let db = Db::default();
    let paths: Vec<String> = (0..12).map(|i| format!("/p{i}")).collect();
    for path in &paths {
        db.fields(path, TAGGED);
    }
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    for path in &paths {
        assert_eq!(get(&svc, path).await.body, format!("{path} v0"));
    }
    watch.settled().await;
    for path in &paths {
        assert_hit(get(&svc, path).await.cache_status());
    }
    db.bump();
    b.signal(nix::sys::signal::Signal::SIGSTOP);
    let purged = support::bounded("tag purge", layer.purger().purge_tag("news")).await;
    assert!(purged.is_err(), "the purge reports the hung server");
    for path in &paths {
        let after = get(&svc, path).await;
        assert_eq!(after.body, format!("{path} v1"), "{}", after.cache_status());
    }
}
