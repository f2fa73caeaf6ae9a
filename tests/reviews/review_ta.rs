//! Review TA: a second look at reviews SX (purges advance generations and the tag-purge
//! mark as max-registers on every server) and SY (the near tier counts its map's tables
//! and takes them off its capacity).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use tokio::sync::Semaphore;
use tower::Layer;

use support::gate::Gate;
use support::paced_origin::{Pace, Paced};
use support::scripted_service::{Origin, Reply, lines};
use support::{Watch, send};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{
    Advanced, Backend, BackendError, CasOutcome, Lifetime, MemoryBackend,
};
use tower_memcache::cache::NearCache;
use tower_memcache::key::md5_hex;

const NAMESPACE: &str = "review-ta";

/// A generation or mark key of the namespace (`Storage::internal_key`).
fn internal_key(base: &str) -> String {
    format!("g:{}", md5_hex(&[NAMESPACE.as_bytes(), base.as_bytes()]))
}

fn tag_key(tag: &str) -> String {
    internal_key(&format!("\0tag\0{tag}"))
}

fn tag_purges_key() -> String {
    internal_key("\0tag purges")
}

/// `inner`, with the first write to the gate's key held at the gate, and purges stamped
/// `behind` nanoseconds earlier than this process's clock says (another host's clock, a
/// little behind: within the skew the layer allows).
#[derive(Clone)]
struct Held<B> {
    inner: B,
    gate: Arc<Gate>,
    behind: u64,
}

impl<B: Backend> Backend for Held<B> {
    forward_to_inner!(get, get_many, delete, touch, incr, flush_all, stats);

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.gate.pass(key).await;
        self.inner.set(key, value, flags, lifetime).await
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.gate.pass(key).await;
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
        self.gate.pass(key).await;
        self.inner.cas(key, value, flags, lifetime, cas).await
    }
}

/// [`Held`], whose advances take their stamps from a clock `behind` this one.
#[derive(Clone)]
struct Behind<B> {
    inner: Held<B>,
}

impl<B: Backend> Backend for Behind<B> {
    forward_to_inner!(
        get, get_many, set, add, cas, delete, touch, incr, flush_all, stats
    );

    async fn advance_on_every_server(
        &self,
        key: &str,
        stamp: u64,
        lifetime: Lifetime,
    ) -> Result<Advanced, BackendError> {
        let stamp = stamp.saturating_sub(self.inner.behind);
        self.inner
            .advance_on_every_server(key, stamp, lifetime)
            .await
    }
}

/// A small tier filled by a scan of tiny pages: its weight (what the metrics gauge shows)
/// stays within its capacity.
#[tokio::test]
async fn a_small_tier_scanned_by_tiny_pages_weighs_no_more_than_its_capacity() {
    for capacity in [8_u64 << 10, 32 << 10, 128 << 10, 1 << 20] {
        let near = NearCache::new(capacity, Duration::from_secs(600));
        let layer = MemcacheLayer::new(MemoryBackend::new()).near_cache(near.clone());
        let origin = Origin::replying(|_: &Request<()>, _| {
            Reply::ok(vec![("cache-control", "max-age=600".to_owned())], &b""[..])
        });
        let service = origin.service(&layer);
        let mut worst = 0;
        for i in 0..2000 {
            let path = format!("/p/{i}");
            send(&service, Method::GET, &path, &[]).await;
            Watch::of(&layer).settled().await;
            send(&service, Method::GET, &path, &[]).await;
            worst = worst.max(near.weight());
        }
        eprintln!(
            "capacity {capacity}: worst weight {worst}, now {}, {} entries, max entry {}",
            near.weight(),
            near.entries(),
            near.max_entry_weight()
        );
        assert!(
            worst <= capacity,
            "capacity {capacity}: the tier weighed {worst}"
        );
    }
}

/// Purge A (this process, of another tag) is under way, its write of the namespace's
/// tag-purge mark held; a fill of a page tagged `news` goes out here; purge B (another
/// process, its clock a few milliseconds behind) of `news` reads the mark before A's write
/// lands and tries to write after it: A's value is past B's stamp, so B's advance stops
/// there, and returns. The tag's generation is evicted before the fill's store, which asks
/// the mark: the value there is A's, but stands for B's purge too (made after the fill's
/// request), so the page must not be stored.
#[tokio::test]
async fn a_purge_settled_by_a_local_write_under_way_holds_for_the_local_fills() {
    settled_by_a_local_write("sports", tag_purges_key(), true).await;
}

/// The same with the tag's own generation: purge A (this process) of `news` too, its
/// write of the tag's generation held; B's advance of it stops at A's value, and the
/// fill's store, which compares the generation with its request, must not be stored.
#[tokio::test]
async fn a_tag_generation_settled_by_a_local_write_under_way_holds_for_the_local_fills() {
    settled_by_a_local_write("news", tag_key("news"), false).await;
}

/// Purge A (this process, of `tag_here`), its write of `gated` held; a fill of a page
/// tagged `news`; purge B (another process, its clock behind) of `news`, its write of
/// `gated` held until A's landed; then (`evicted`) the tag's generation evicted.
async fn settled_by_a_local_write(tag_here: &'static str, gated: String, evicted: bool) {
    let backend = MemoryBackend::new();
    let gate_here = Gate::new(gated.clone());
    let gate_there = Gate::new(gated);
    let here = support::layer(Held {
        inner: backend.clone(),
        gate: Arc::clone(&gate_here),
        behind: 0,
    })
    .namespace(NAMESPACE);
    let there = support::layer(Behind {
        inner: Held {
            inner: backend.clone(),
            gate: Arc::clone(&gate_there),
            behind: Duration::from_millis(50).as_nanos() as u64,
        },
    })
    .namespace(NAMESPACE);
    let watch = Watch::of(&here);
    let calls = Arc::new(AtomicUsize::new(0));
    let origin_gate = Arc::new(Semaphore::new(0));
    let origin = Paced::new(
        Arc::clone(&calls),
        Pace::First(Arc::clone(&origin_gate)),
        |_, call| {
            Reply::ok(
                lines(&[
                    ("cache-control", "public, max-age=60"),
                    ("surrogate-key", "news"),
                ]),
                format!("version {call}"),
            )
        },
    );
    let service_here = here.layer(origin.clone());
    let service_there = there.layer(origin);
    let url = "http://site.example/front-page";

    support::bounded("review_ta::settled_by_a_local_write", async {
        // Purge A: stamped, its write of the mark held.
        let purger = here.purger();
        let purge_a = tokio::spawn(async move { purger.purge_tag(tag_here).await });
        gate_here.caught().await;
        // The fill: its request goes out after A's stamp.
        let service = service_here.clone();
        let fill =
            tokio::spawn(async move { support::send(&service, Method::GET, url, &[]).await });
        support::eventually("the fill's request reaches the origin", || {
            calls.load(Ordering::SeqCst) == 1
        })
        .await;
        // Purge B, in another process, after the request went out: it reads the mark, its
        // write is held; A's write lands; then B's.
        let purger = there.purger();
        let purge_b = tokio::spawn(async move { purger.purge_tag("news").await });
        gate_there.caught().await;
        gate_here.release();
        purge_a.await.unwrap().unwrap();
        gate_there.release();
        purge_b.await.unwrap().unwrap();
        if evicted {
            backend.delete(&tag_key("news")).await.unwrap();
        }
        // The response produced before B's purge comes back and is offered for storage.
        origin_gate.add_permits(1);
        let first = fill.await.unwrap();
        assert_eq!(first.body, "version 1");
        watch.settled().await;

        let there = support::send(&service_there, Method::GET, url, &[]).await;
        let here = support::send(&service_here, Method::GET, url, &[]).await;
        for after in [there, here] {
            assert_ne!(
                after.body,
                "version 1",
                "a response requested before a purge that returned was served after it ({})",
                after.cache_status()
            );
        }
    })
    .await;
}
