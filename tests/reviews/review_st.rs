//! Review ST: a second look at reviews SN (the proxy's stalled-client watch counting the
//! response bytes a client takes, HTTP/2 uploads cut by a reset, the proxy's own refusals
//! discarding the body) and SO (an invalidation writing its store epoch on every server).
//! Skips without memcached unless `MEMCACHED_REQUIRED=1`.

#![cfg_attr(not(feature = "tcp"), allow(dead_code, unused_imports))]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tower_memcache::backend::Backend;

/// Fills `addr` (a memcached run with `-M`) with small items, of the size of a store
/// epoch's, until it refuses one for memory: from then on it refuses every new item of
/// that size, as a full `-M` memcached whose small items fill their pages does.
async fn fill_small_items(addr: &str) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    for batch in 0..200 {
        let mut request = Vec::new();
        for i in 0..500 {
            // 34 bytes of key and 20 of value: an epoch's `g:` and md5, and a u64.
            let key = format!("fill:{batch:08}:{i:020}");
            request.extend_from_slice(format!("set {key} 0 0 20\r\n{:020}\r\n", i).as_bytes());
        }
        write.write_all(&request).await.unwrap();
        let mut refused = false;
        for _ in 0..500 {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.starts_with("SERVER_ERROR") {
                refused = true;
            } else {
                assert_eq!(line, "STORED");
            }
        }
        if refused {
            return;
        }
    }
    panic!("memcached never ran out of memory");
}

/// memcached out of memory (`-M`) refuses the store epoch an invalidation writes. Review
/// VV's promise: such a server keeps serving what it holds and is not taken for down,
/// which would cost every hit. Since review SO the epoch is written on every server, as
/// a write every server must take: a refusal marked the server down, so any client able
/// to send a POST to a cached URL took the whole server out of the cache (and, at its
/// rejoin, had its contents orphaned), again with each POST.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_refused_for_memory_does_not_take_the_server_down() {
    let test = "review_st::an_invalidation_refused_for_memory_does_not_take_the_server_down";
    let server = memcached_or_skip!(test, "-M", "-m", "2");
    let backend = tower_memcache::TcpBackend::builder()
        .servers([server.addr()])
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let layer = support::layer(backend.clone());
    let watch = support::Watch::of(&layer);
    let version = Arc::new(AtomicU64::new(1));
    let svc = support::versioned::service(&layer, &version);
    support::bounded(test, async {
        for path in ["/posted", "/kept"] {
            let url = format!("http://site.example{path}");
            support::versioned::get(&svc, &url).await;
            watch.settled().await;
            let (_, status) = support::versioned::get(&svc, &url).await;
            support::assert_hit(&status);
        }
        fill_small_items(&server.addr()).await;

        let posted = support::send(&svc, Method::POST, "http://site.example/posted", &[]).await;
        assert!(posted.status.is_success());
        watch.settled().await;

        assert_eq!(
            backend.outages(),
            0,
            "a POST's epoch write refused for memory marked the server down"
        );
        let (_, status) = support::versioned::get(&svc, "http://site.example/kept").await;
        support::assert_hit(&status);
        // The invalidation still holds: the posted URL is no hit.
        let (_, status) = support::versioned::get(&svc, "http://site.example/posted").await;
        support::assert_not_hit(&status);
    })
    .await;
}
