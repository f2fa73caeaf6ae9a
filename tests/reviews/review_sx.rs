//! Review SX: concurrent purges of one tag (two processes sharing a namespace, or two
//! tasks of one) writing its generation, and the namespace's tag-purge mark, on every
//! server. Each write was last-writer-wins: purge A stamped its time, purge B (begun
//! later) stamped a later one and landed first, A's write landed last, and the tag (or
//! mark) ended at A's time. A fill whose request went out between A's stamp and B's purge
//! was then judged against A's purge alone, and stored although B's purge had returned.
//! Now a purge advances each server's value to the larger of its stamp and the value
//! there plus one (`Backend::advance_on_every_server`), and a process compares its fills
//! with what its purges wrote over as well as with its own purge.
//!
//! Two processes are two layers on one namespace, one of them over a backend that holds
//! one write on a gate; over `MemoryBackend` and over a private memcached (skipped
//! without one, unless `MEMCACHED_REQUIRED=1`). The generation write itself is checked on
//! real servers too: one started with `-C` (no CAS values), and through twemproxy.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::sync::Semaphore;
use tower::Layer;

use tower_memcache::backend::{Backend, BackendError, CasOutcome, Lifetime, MemoryBackend};
use tower_memcache::key::md5_hex;

use support::gate::Gate;
use support::paced_origin::{Pace, Paced};
use support::scripted_service::{Reply, lines};

const NAMESPACE: &str = "review-sx";

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

/// `inner`, with writes to the gate's key passing the gate. Everything else (and every
/// default method, which goes through these) as `inner`.
#[derive(Clone)]
struct Held<B> {
    inner: B,
    gate: Arc<Gate>,
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

/// Purge A (this process, over `held`) is under way, its write of `gated` held; a fill of
/// a page tagged `news` goes out here; purge B (another process) purges the tag and
/// returns; then A's write lands. `evicted`: memcached evicts the tag's generation
/// before the fill's store, which then asks the namespace's tag-purge mark. The page
/// must not be served after B's purge returned: its response was requested before it.
async fn purge_undone_by_an_earlier_one<B: Backend>(backend: B, gated: String, evicted: bool) {
    let gate = Gate::new(gated);
    let held = Held {
        inner: backend.clone(),
        gate: Arc::clone(&gate),
    };
    let here = support::layer(held).namespace(NAMESPACE);
    let there = support::layer(backend.clone()).namespace(NAMESPACE);
    let watch = support::Watch::of(&here);
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

    support::bounded("review_sx::purge_undone", async {
        // Purge A: stamped, its write held.
        let purger = here.purger();
        let purge_a = tokio::spawn(async move { purger.purge_tag("news").await });
        gate.caught().await;
        // The fill: its request goes out after A's stamp.
        let service = service_here.clone();
        let fill =
            tokio::spawn(async move { support::send(&service, Method::GET, url, &[]).await });
        support::eventually("the fill's request reaches the origin", || {
            calls.load(Ordering::SeqCst) == 1
        })
        .await;
        // Purge B, in another process, after the request went out: it returns.
        there.purger().purge_tag("news").await.unwrap();
        // A's write lands last.
        gate.release();
        purge_a.await.unwrap().unwrap();
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

/// The tag's generation: A's write, landing after B's, put A's time back, and the fill
/// (requested after A's purge, before B's) was stored under it.
async fn a_tag_purge_holds_when_an_earlier_purge_lands_after_it<B: Backend>(backend: B) {
    purge_undone_by_an_earlier_one(backend, tag_key("news"), false).await;
}

/// The namespace's tag-purge mark (what a store asks when the tag's generation is
/// missing): A's write, landing after B's, put A's time back in the mark, and a fill
/// that found the generation evicted was stored.
async fn a_tag_purge_holds_past_an_eviction_when_an_earlier_purge_lands_after_it<B: Backend>(
    backend: B,
) {
    purge_undone_by_an_earlier_one(backend, tag_purges_key(), true).await;
}

mod memory {
    use super::*;

    #[tokio::test]
    async fn a_tag_purge_holds_when_an_earlier_purge_lands_after_it() {
        super::a_tag_purge_holds_when_an_earlier_purge_lands_after_it(MemoryBackend::new()).await;
    }

    #[tokio::test]
    async fn a_tag_purge_holds_past_an_eviction_when_an_earlier_purge_lands_after_it() {
        super::a_tag_purge_holds_past_an_eviction_when_an_earlier_purge_lands_after_it(
            MemoryBackend::new(),
        )
        .await;
    }
}

#[cfg(feature = "tcp")]
mod tcp {
    use super::*;

    use support::fake_memcached::{self, Reply as Line};

    const KEY: &str = "g:review-sx";

    async fn held(backend: &tower_memcache::TcpBackend) -> String {
        let item = backend.get(KEY).await.unwrap().expect("a value");
        String::from_utf8(item.value.to_vec()).unwrap()
    }

    /// The generation write on real servers: concurrent advances in any order end at
    /// least at the highest stamp on every server (the last writer does not win), a stamp
    /// below the value held still moves it on, and what is no number is overwritten.
    #[tokio::test]
    async fn concurrent_advances_never_set_a_server_back() {
        let test = "review_sx::tcp::concurrent_advances_never_set_a_server_back";
        let one = memcached_or_skip!(test);
        let two = memcached_or_skip!(test);
        let backend = tower_memcache::TcpBackend::builder()
            .servers([one.addr(), two.addr()])
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        // 64 stamps from 1000 to 1630, sent in an order that is not theirs (as a burst of
        // tag purges writes the namespace's tag-purge mark).
        let stamps: Vec<u64> = (0..64).map(|i| 1000 + (i * 37 % 64) * 10).collect();
        let writes = stamps.iter().map(|&stamp| {
            let backend = backend.clone();
            tokio::spawn(async move {
                backend
                    .advance_on_every_server(KEY, stamp, Lifetime::NEVER)
                    .await
            })
        });
        for (write, stamp) in futures_util::future::join_all(writes)
            .await
            .into_iter()
            .zip(&stamps)
        {
            let advanced = write.unwrap().unwrap();
            assert!(advanced.value >= *stamp, "{stamp}: {advanced:?}");
        }
        for server in [&one, &two] {
            let alone = tower_memcache::TcpBackend::new([server.addr()]).unwrap();
            let value: u64 = held(&alone).await.parse().unwrap();
            assert!(value >= 1630, "a server was set back to {value}");
        }

        let below = backend
            .advance_on_every_server(KEY, 5, Lifetime::NEVER)
            .await
            .unwrap();
        assert!(below.value > 1630 && below.absorbed == Some(below.value - 1));
        backend
            .set_on_every_server(KEY, Bytes::from_static(b"1700c"), 0, Lifetime::NEVER)
            .await
            .unwrap();
        let over = backend
            .advance_on_every_server(KEY, 42, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!((over.value, over.absorbed), (42, None));
        assert_eq!(held(&backend).await, "42");
        assert_eq!(backend.outages(), 0);
    }

    /// A burst of purges of different tags all advance the namespace's tag-purge mark on
    /// every server: each returns, and none takes a server for failed (a compare-and-swap
    /// lost every round would mark it down, its share of hits gone and its contents
    /// orphaned at its rejoin).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_tag_purges_marks_no_server_down() {
        let test = "review_sx::tcp::a_burst_of_tag_purges_marks_no_server_down";
        let one = memcached_or_skip!(test);
        let two = memcached_or_skip!(test);
        let backend = tower_memcache::TcpBackend::builder()
            .servers([one.addr(), two.addr()])
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let purgers = [
            support::layer(backend.clone())
                .namespace(NAMESPACE)
                .purger(),
            support::layer(backend.clone())
                .namespace(NAMESPACE)
                .purger(),
        ];
        let purges = (0..96).map(|i| {
            let purger = purgers[i % 2].clone();
            tokio::spawn(async move { purger.purge_tag(&format!("tag-{i}")).await })
        });
        support::bounded(test, async {
            for purge in futures_util::future::join_all(purges).await {
                purge.unwrap().unwrap();
            }
        })
        .await;
        assert_eq!(backend.outages(), 0);
    }

    /// memcached run with `-C` gives no CAS values (0): the value is set, still moved on.
    #[tokio::test]
    async fn a_server_without_cas_values_is_advanced_by_a_set() {
        let test = "review_sx::tcp::a_server_without_cas_values_is_advanced_by_a_set";
        let server = memcached_or_skip!(test, "-C");
        let backend = super::tcp::backend(&server);
        for (stamp, expected) in [(300, 300), (200, 301), (900, 900)] {
            let advanced = backend
                .advance_on_every_server(KEY, stamp, Lifetime::NEVER)
                .await
                .unwrap();
            assert_eq!(advanced.value, expected);
            assert_eq!(held(&backend).await, expected.to_string());
        }
        assert_eq!(backend.outages(), 0);
    }

    /// Through twemproxy, which passes `gets` and `cas` on to the key's server.
    #[tokio::test]
    async fn generations_are_advanced_through_twemproxy() {
        let test = "review_sx::tcp::generations_are_advanced_through_twemproxy";
        let server = memcached_or_skip!(test);
        let Some(proxy) =
            support::nutcracker::Nutcracker::start(test, std::slice::from_ref(&server))
        else {
            return;
        };
        let backend = tower_memcache::TcpBackend::builder()
            .server(proxy.addr())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        for (stamp, expected) in [(500, 500), (400, 501), (800, 800)] {
            let advanced = backend
                .advance_on_every_server(KEY, stamp, Lifetime::NEVER)
                .await
                .unwrap();
            assert_eq!(advanced.value, expected);
        }
        let direct = super::tcp::backend(&server);
        assert_eq!(held(&direct).await, "800");
        assert_eq!(backend.outages(), 0);
    }

    /// A server that refuses the write for memory (`-M`, full) has the key deleted instead
    /// and stays in use (review ST); one that keeps losing the compare-and-swap is marked
    /// down, as a server that fails a write every server must take; the others take it.
    #[tokio::test]
    async fn a_full_server_deletes_instead_and_a_contended_one_is_marked_down() {
        let test =
            "review_sx::tcp::a_full_server_deletes_instead_and_a_contended_one_is_marked_down";
        let server = memcached_or_skip!(test);
        let deletes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&deletes);
        let full = fake_memcached::scripted(move |_, line| {
            if line.starts_with("gets ") || line.starts_with("stats") {
                Line::Send(b"END\r\n")
            } else if line.starts_with("add ") || line.starts_with("set ") {
                Line::Send(b"SERVER_ERROR out of memory storing object\r\n")
            } else if line.starts_with("delete ") {
                counted.fetch_add(1, Ordering::SeqCst);
                Line::Send(b"DELETED\r\n")
            } else {
                // A data line, answered with the command.
                Line::Send(b"")
            }
        })
        .await;
        let backend = tower_memcache::TcpBackend::builder()
            .servers([server.addr(), full])
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let advanced = backend
            .advance_on_every_server(KEY, 77, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!(advanced.value, 77);
        assert_eq!(deletes.load(Ordering::SeqCst), 1);
        assert_eq!(backend.outages(), 0, "a full server was marked down");

        let contended = fake_memcached::scripted(|_, line| {
            if line.starts_with("gets ") {
                Line::Send(b"VALUE g:review-sx 0 3 9\r\n100\r\nEND\r\n")
            } else if line.starts_with("cas ") {
                Line::Send(b"EXISTS\r\n")
            } else if line.starts_with("stats") {
                Line::Send(b"END\r\n")
            } else {
                Line::Send(b"")
            }
        })
        .await;
        let backend = tower_memcache::TcpBackend::builder()
            .servers([server.addr(), contended])
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let advanced = backend
            .advance_on_every_server(KEY, 70, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!(advanced.value, 78);
        assert_eq!(
            backend.outages(),
            1,
            "a server that missed the write stayed in use"
        );
        assert!(backend.is_server_down(1));
    }

    fn backend(server: &support::Memcached) -> tower_memcache::TcpBackend {
        tower_memcache::TcpBackend::builder()
            .server(server.addr())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_tag_purge_holds_when_an_earlier_purge_lands_after_it() {
        let server = memcached_or_skip!(
            "review_sx::tcp::a_tag_purge_holds_when_an_earlier_purge_lands_after_it"
        );
        super::a_tag_purge_holds_when_an_earlier_purge_lands_after_it(backend(&server)).await;
    }

    #[tokio::test]
    async fn a_tag_purge_holds_past_an_eviction_when_an_earlier_purge_lands_after_it() {
        let server = memcached_or_skip!(
            "review_sx::tcp::a_tag_purge_holds_past_an_eviction_when_an_earlier_purge_lands_after_it"
        );
        super::a_tag_purge_holds_past_an_eviction_when_an_earlier_purge_lands_after_it(backend(
            &server,
        ))
        .await;
    }
}
