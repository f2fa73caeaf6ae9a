//! Review RR: consistency across a cluster of memcached servers that fail as operators see
//! them fail (stopped, resumed, refusing a command, losing a request), with `flush_all`
//! (`Purger::purge_all`, the seed API's "invalidate all") the write under attack: a flush
//! a server missed is made before it serves again, whenever it missed it, and a server
//! that cannot take one is not kept out of use for it; and purges across a partition
//! (a relay that loses what is sent, where a stopped memcached would take it late), past
//! the bound on keys reset on rejoin too. Real servers, each test its own; every wait is
//! bounded and polls.
#![cfg(feature = "tcp")]

use crate::support;

use support::{bounded, eventually};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_memcache::backend::{Backend, Lifetime, TcpBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer};

use support::versioned::{Svc, get, service};

/// A backend over `addrs` that marks a server down and probes it back quickly.
fn quick_to_rejoin(addrs: &[String]) -> TcpBackend {
    TcpBackend::builder()
        .servers(addrs.iter().cloned())
        .timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

/// A backend straight to one server, to see what it holds.
fn direct(addr: &str) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A TCP relay in front of a memcached: what a client sends is passed on, except that
/// a chunk holding a `delete` waits while deletes are held, and one holding a
/// `flush_all` is lost while flushes are lost (the network, or a server that never got
/// it), and every chunk is lost while the relay is cut (a partition: unlike a stopped
/// memcached, which takes what waits in its socket when it continues, the server never
/// gets what was sent meanwhile). Replies pass unchanged.
struct Relay {
    addr: String,
    hold_deletes: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    lose_flushes: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap().to_string(),
            hold_deletes: Arc::default(),
            held: Arc::default(),
            lose_flushes: Arc::default(),
            cut: Arc::default(),
        };
        let (hold, held, lose, cut) = (
            Arc::clone(&relay.hold_deletes),
            Arc::clone(&relay.held),
            Arc::clone(&relay.lose_flushes),
            Arc::clone(&relay.cut),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let (hold, held, lose, cut) =
                    (hold.clone(), held.clone(), lose.clone(), cut.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let holds = |word: &[u8]| chunk.windows(word.len()).any(|w| w == word);
                        if cut.load(Ordering::SeqCst)
                            || (lose.load(Ordering::SeqCst) && holds(b"flush_all"))
                        {
                            continue;
                        }
                        if hold.load(Ordering::SeqCst) && holds(b"delete ") {
                            held.fetch_add(1, Ordering::SeqCst);
                            while hold.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                        if to_server.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        relay
    }
}

/// A server started with `-F` (memcached refuses `flush_all`: `CLIENT_ERROR flush_all not
/// allowed`) cannot take a flush, ever. A `purge_all` while it is up, or while it is
/// marked down, says it failed; but the server must come back in use after an outage. It
/// did not: the refusal (or the outage) left a flush owed, its rejoin tried to make it,
/// was refused, and gave up, forever: every key of that server a miss from then on (or
/// moved onto the others), far more than its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_flush_all_comes_back_after_an_outage() {
    let test = "review_rr::refuses_flush";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test, "-F");
    bounded(test, async {
        let backend = quick_to_rejoin(&[a.addr(), b.addr()]);
        backend.reset_on_rejoin("rr-generation");
        // Refused while up: an error, and nothing a rejoin could make up for.
        assert!(backend.flush_all().await.is_err());
        assert!(!backend.is_server_down(1));

        b.signal(Signal::SIGSTOP);
        backend
            .set_on_every_server("rr-generation", "1".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert!(backend.is_server_down(1));
        // Missed while down: owed, and refused when made.
        assert!(backend.flush_all().await.is_err());
        b.signal(Signal::SIGCONT);
        eventually("the server that refuses flush_all back in use", || {
            !backend.is_server_down(1)
        })
        .await;
        // Reset all the same.
        assert_eq!(direct(&b.addr()).get("rr-generation").await.unwrap(), None);
    })
    .await;
}

/// A `flush_all` made while a server's reset on rejoin is under way (it answers again,
/// and its registered keys are being deleted). Such a server takes writes every server
/// must take; the flush was refused at once instead (the server counted as down), owed,
/// and the reset under way, which had already looked for an owed flush, finished without
/// it: the server came back in use holding what the flush removed everywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_made_while_a_server_rejoins_holds_there() {
    let test = "review_rr::flush_while_rejoining";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let relay = Relay::start(b.addr()).await;
        let backend = quick_to_rejoin(&[a.addr(), relay.addr.clone()]);
        backend.reset_on_rejoin("rr-generation");
        let direct_b = direct(&b.addr());
        direct_b
            .set("before-the-flush", "old".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();

        b.signal(Signal::SIGSTOP);
        backend
            .set_on_every_server("rr-generation", "1".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert!(backend.is_server_down(1));
        relay.hold_deletes.store(true, Ordering::SeqCst);
        b.signal(Signal::SIGCONT);
        // The probe got its answer; its reset's deletes wait in the relay.
        eventually("the reset under way", || {
            relay.held.load(Ordering::SeqCst) > 0
        })
        .await;
        assert!(backend.is_server_down(1), "not back before its reset");

        let flushing = tokio::spawn({
            let backend = backend.clone();
            async move { backend.flush_all().await }
        });
        // A moment for the flush to be sent (or refused); then the reset goes on.
        tokio::time::sleep(Duration::from_millis(50)).await;
        relay.hold_deletes.store(false, Ordering::SeqCst);
        // Its outcome first: a flush that failed there marks the server down for another
        // reset before it returns.
        let _ = flushing.await.unwrap();
        eventually("the server back in use", || !backend.is_server_down(1)).await;
        assert_eq!(
            direct_b.get("before-the-flush").await.unwrap(),
            None,
            "the server serves a value from before a flush made while it rejoined"
        );
    })
    .await;
}

fn layer(backend: TcpBackend) -> MemcacheLayer<TcpBackend> {
    support::layer(backend)
        .namespace("rr")
        .mode(CacheMode::Origin)
}

const PAGES: usize = 24;

async fn every_page(svc: &Svc, layer: &MemcacheLayer<TcpBackend>) -> Vec<String> {
    let mut bodies = Vec::with_capacity(PAGES);
    for i in 0..PAGES {
        bodies.push(get(svc, &format!("http://site.example/page/{i}")).await.0);
    }
    layer.background().idle().await;
    bodies
}

/// A `purge_all` whose `flush_all` one server never got (lost on the way, the server up
/// and answering everything else): the purge says it failed, truthfully; but the server
/// stayed in use, one timeout short of the failure threshold, with the flush noted as owed
/// for a rejoin that never came, and kept answering the pages from before the purge. (And
/// the layer gave up on the flush at its lookup timeout, before the backend had judged
/// the server, so nothing was even owed.) A server that misses a flush is now marked down
/// at once, as for every other write every server must take, and flushed before it serves
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_missed_a_purge_all_does_not_serve_what_it_removed() {
    let test = "review_rr::lost_flush";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let relay = Relay::start(b.addr()).await;
        let backend = quick_to_rejoin(&[a.addr(), relay.addr.clone()]);
        let layer = layer(backend.clone());
        let version = Arc::new(AtomicU64::new(0));
        let svc = service(&layer, &version);
        every_page(&svc, &layer).await;
        let before = every_page(&svc, &layer).await;
        assert!(before.iter().all(|body| body.ends_with(" v0")));

        relay.lose_flushes.store(true, Ordering::SeqCst);
        version.store(1, Ordering::SeqCst);
        assert!(
            layer.purger().purge_all().await.is_err(),
            "a flush that did not reach every server"
        );
        relay.lose_flushes.store(false, Ordering::SeqCst);
        eventually("the server back in use", || !backend.is_server_down(1)).await;
        for body in every_page(&svc, &layer).await {
            assert!(body.ends_with(" v1"), "{body}: from before the purge_all");
        }
    })
    .await;
}

/// One backend shared by more namespaces than it keeps keys to reset on rejoin
/// (`MAX_RESET_ON_REJOIN_KEYS`: a layer per tenant, or namespaces named after a deploy,
/// over a process's life). The namespace past the bound had its generation key ignored
/// (a warning at start-up): a server that missed its purge while stopped came back with
/// the old generation, and every page purged there was served again after the purge had
/// returned `Ok`. Past the bound, a rejoining server is now flushed instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_holds_for_a_namespace_past_the_reset_on_rejoin_bound() {
    let test = "review_rr::many_namespaces";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let relay = Relay::start(b.addr()).await;
        let backend = quick_to_rejoin(&[a.addr(), relay.addr.clone()]);
        // Each layer registers its namespace's generation when it first makes a purger or
        // a service.
        for tenant in 0..tower_memcache::backend::MAX_RESET_ON_REJOIN_KEYS {
            let _ = MemcacheLayer::new(backend.clone())
                .namespace(format!("tenant-{tenant}"))
                .purger();
        }
        let layer = layer(backend.clone());
        let version = Arc::new(AtomicU64::new(0));
        let svc = service(&layer, &version);
        every_page(&svc, &layer).await;
        let before = every_page(&svc, &layer).await;
        assert!(before.iter().all(|body| body.ends_with(" v0")));

        relay.cut.store(true, Ordering::SeqCst);
        version.store(1, Ordering::SeqCst);
        layer.purger().purge_namespace().await.unwrap();
        assert!(backend.is_server_down(1), "the cut server is marked down");
        relay.cut.store(false, Ordering::SeqCst);
        eventually("the server back in use", || !backend.is_server_down(1)).await;
        for _ in 0..2 {
            for body in every_page(&svc, &layer).await {
                assert!(body.ends_with(" v1"), "{body}: from before the purge");
            }
        }
    })
    .await;
}

/// Purges made while a server is cut off (what was sent to it lost, not waiting in its
/// socket as for a stopped memcached, which takes it when it continues) hold once it is
/// back: with its keys failing or moved to the other server meanwhile, with a near tier,
/// and after a second outage brings the copies made during the first one back into use.
async fn purges_hold_across_a_partition(remove_failed: bool) {
    let test = "review_rr::partition";
    let a = memcached_or_skip!(test);
    let b = memcached_or_skip!(test);
    bounded(test, async {
        let relay = Relay::start(b.addr()).await;
        let backend = TcpBackend::builder()
            .servers([a.addr(), relay.addr.clone()])
            .timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(200))
            .probe_interval(Duration::from_millis(50))
            .remove_failed_servers(remove_failed)
            .build()
            .unwrap();
        let layer = layer(backend.clone()).near_cache(tower_memcache::cache::NearCache::new(
            1 << 20,
            Duration::from_millis(200),
        ));
        let version = Arc::new(AtomicU64::new(0));
        let svc = service(&layer, &version);
        let expect = |bodies: Vec<String>, v: u64, when: &str| {
            for body in bodies {
                assert!(body.ends_with(&format!(" v{v}")), "{when}: {body}");
            }
        };
        every_page(&svc, &layer).await;
        expect(every_page(&svc, &layer).await, 0, "filled");
        for (outage, purge) in ["namespace", "uri", "namespace again"].iter().enumerate() {
            relay.cut.store(true, Ordering::SeqCst);
            // Found down by the pages' own lookups (and refilled on the other server, with
            // `remove_failed_servers`), then purged.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !backend.is_server_down(1) {
                assert!(Instant::now() < deadline, "the cut server not marked down");
                every_page(&svc, &layer).await;
            }
            every_page(&svc, &layer).await;
            let v = outage as u64 + 1;
            version.store(v, Ordering::SeqCst);
            if *purge == "uri" {
                for i in 0..PAGES {
                    let uri = format!("http://site.example/page/{i}");
                    layer.purger().purge_uri(&uri).await.unwrap();
                }
            } else {
                layer.purger().purge_namespace().await.unwrap();
            }
            expect(every_page(&svc, &layer).await, v, "while cut");
            relay.cut.store(false, Ordering::SeqCst);
            eventually("the server back in use", || !backend.is_server_down(1)).await;
            expect(every_page(&svc, &layer).await, v, "back");
            expect(every_page(&svc, &layer).await, v, "back, again");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_hold_across_a_partition_of_a_server_kept_in_the_ring() {
    purges_hold_across_a_partition(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_hold_across_a_partition_of_a_server_removed_from_the_ring() {
    purges_hold_across_a_partition(true).await;
}
