//! Review QA: the near tier under faults and across processes, and the purges that must
//! reach it: a URI purge whose first spelling fails (failed before its fix), and another
//! process's purge while the page's memcached hangs (held; kept as a regression test).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use support::refused_writes::PlainWritesRefused;
use support::versioned::{Svc, service};
use support::{Answer, Watch};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";

fn layer<B: Backend>(backend: B, near: &NearCache) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("review-qa")
        .mode(CacheMode::Origin)
        .near_cache(near.clone())
}

async fn get(svc: &Svc, path: &str) -> Answer {
    support::send(svc, Method::GET, &format!("http://site.example{path}"), &[]).await
}

/// Stores `path`, reads it from memcached (kept) and checks the next answer is a near hit.
async fn warm(svc: &Svc, watch: &Watch, path: &str) {
    get(svc, path).await;
    watch.settled().await;
    get(svc, path).await;
    let near = get(svc, path).await;
    assert_eq!(near.header("cache-status"), Some(NEAR_HIT), "warm {path}");
}

/// An operator purges the public `https://` URL of a page that a layer behind a TLS
/// terminator keys `http://`. The purge reaches three spellings: the URI as given, the
/// layer's own scheme, the Host-less one. When the first one's invalidation fails (its
/// store epoch refused; its delete landed), the purge must still reach the others before
/// it returns the error: the page the layer actually serves is the second spelling, and a
/// retry fails the same way on a server that keeps refusing. Before the fix the purge
/// stopped at the first error: memcached and this process's near tier kept answering the
/// purged page, retry after retry.
#[tokio::test]
async fn a_uri_purge_whose_first_spelling_fails_still_reaches_the_layers_own_page() {
    // The origin: `path vN`, fresh for ten minutes.
    let version = Arc::new(AtomicU64::new(0));
    let backend = PlainWritesRefused {
        inner: MemoryBackend::new(),
        fail: Arc::new(AtomicU64::new(0)),
    };
    let near = NearCache::new(16 << 20, Duration::from_secs(600));
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &version), Watch::of(&here));
    warm(&svc, &watch, "/page").await;
    version.store(1, Ordering::SeqCst);
    // Every epoch write refused from now on: each retry fails alike.
    backend.fail.store(u64::MAX, Ordering::SeqCst);
    for attempt in 0..3 {
        let purged = here.purger().purge_uri("https://site.example/page").await;
        assert!(
            purged.is_err(),
            "attempt {attempt}: the epoch writes failed"
        );
    }
    backend.fail.store(0, Ordering::SeqCst);
    let after = get(&svc, "/page").await;
    assert_eq!(
        after.body,
        "/page v1",
        "the purged page still answered ({})",
        after.header("cache-status").unwrap_or("")
    );
    // Nor from memcached, to a process without a near tier.
    let elsewhere = MemcacheLayer::new(backend.inner.clone())
        .namespace("review-qa")
        .mode(CacheMode::Origin);
    let from_memcached = get(&service(&elsewhere, &version), "/page").await;
    assert_eq!(from_memcached.body, "/page v1");
}

/// Another process purges a page while the page's memcached (one of two) hangs
/// (SIGSTOP: the purge marks it down and returns); this process, whose near tier holds the
/// page and which sends that server nothing while it hangs, must stop answering the page
/// within its bound once the server is back and the purging process has reset it. (Held:
/// the reset orphans what the tier would confirm; a regression test.)
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_purge_while_memcached_hangs_holds_for_a_near_tier() {
    use nix::sys::signal::Signal;
    use tower_memcache::backend::TcpBackend;
    let Some(first) = support::Memcached::start("review_qa::hang") else {
        return;
    };
    let second = memcached_or_skip!("review_qa::hang");
    let backend = || {
        TcpBackend::builder()
            .servers([first.addr(), second.addr()])
            .timeout(Duration::from_millis(200))
            .probe_interval(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    // A page whose primary key lives on the second server.
    let ring = backend();
    let path = (0..1000)
        .map(|i| format!("/hung{i}"))
        .find(|path| {
            let key = tower_memcache::key::build_key(
                Some("review-qa"),
                &format!("GET http://site.example{path}"),
            );
            ring.server_for_key(&key) == Some(1)
        })
        .expect("a page on the second server");
    // The origin: `path vN`, fresh for ten minutes.
    let version = Arc::new(AtomicU64::new(0));
    let bound = Duration::from_millis(300);
    let near = NearCache::new(16 << 20, bound);
    let here = layer(backend(), &near);
    let (svc, watch) = (service(&here, &version), Watch::of(&here));
    let purger_backend = backend();
    let other = MemcacheLayer::new(purger_backend.clone())
        .namespace("review-qa")
        .mode(CacheMode::Origin);
    warm(&svc, &watch, &path).await;
    second.signal(Signal::SIGSTOP);
    version.store(1, Ordering::SeqCst);
    let purged = other
        .purger()
        .purge_uri(&format!("http://site.example{path}"))
        .await;
    second.signal(Signal::SIGCONT);
    assert!(purged.is_ok(), "{purged:?}");
    // The purging process probes the server back and resets it.
    let key = tower_memcache::key::build_key(
        Some("review-qa"),
        &format!("GET http://site.example{path}"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !purger_backend.is_available(&key) {
        assert!(std::time::Instant::now() < deadline, "memcached not back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(bound + Duration::from_millis(50)).await;
    for round in 0..3 {
        let page = get(&svc, &path).await;
        assert_eq!(
            page.body,
            format!("{path} v1"),
            "round {round}: {}",
            page.header("cache-status").unwrap_or("")
        );
    }
}
