//! Review QP: an adversarial second look at the newest changes: the tag-purge mark (review
//! QO), the lifetime header and 304/HEAD refreshes without `Date` (review QN), and the
//! method spellings (`trace`, `get` with an override).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use support::db::{Db, get, service};
use support::{Watch, assert_hit};
use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer};

const NAMESPACE: &str = "review-qp";

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace(NAMESPACE)
        .mode(CacheMode::Origin)
}

const TAGGED: &[(&str, &str)] = &[("cache-control", "max-age=600"), ("surrogate-key", "news")];

/// Two servers, one of which stops answering writes made on every server while armed: the
/// write lands on the other one (as `TcpBackend` writes each server on its own) and the
/// call reports the failure.
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
            return Err(BackendError::Server("the other server timed out".into()));
        }
        Ok(())
    }
}

/// A tag purge whose first write (the tag-purge mark) fails on one server of several:
/// review QO made it skip the tag's generation bump on every server, so the tagged pages
/// on the servers that answered were still served after a purge that (unlike before)
/// changed nothing the lookups read. The purge reports its failure either way; it must
/// still purge what it can reach.
#[tokio::test]
async fn a_tag_purge_whose_mark_fails_on_one_server_still_purges_the_others() {
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
