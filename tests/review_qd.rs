//! Review QD: memcached as an adversary and the public client API (`MemcacheClient`,
//! `Backend`, `TcpBackend`): what a value read back costs the reader's memory, whatever the
//! server sent before it.
#![cfg(feature = "tcp")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::Memcached;
use tower_memcache::MemcacheClient;
use tower_memcache::backend::{Lifetime, TcpBackend};

/// This process's resident memory, in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

/// Held by a test while it measures this process's memory: the others wait.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A memcached holding a 900 KiB raw value `large` and a 16-byte one `small`, and a client
/// on one connection to it; `None` (skipped) without the binary.
async fn large_and_small(
    name: &str,
) -> Option<(Memcached, TcpBackend, MemcacheClient<TcpBackend>)> {
    let memcached = Memcached::start(name)?;
    let backend = TcpBackend::builder()
        .server(memcached.addr())
        .connections_per_server(1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let client = MemcacheClient::new(backend.clone());
    let large = Bytes::from(vec![b'x'; 900 * 1024]);
    client
        .try_set_raw_with_lifetime("large", large, Lifetime::NEVER)
        .await
        .unwrap();
    client
        .try_set_raw_with_lifetime("small", "sixteen bytes ok", Lifetime::NEVER)
        .await
        .unwrap();
    Some((memcached, backend, client))
}

/// Reads `small` 32 times with `read` (which reads `large` too, in its own way) and keeps
/// every copy; asserts they hold under 8 MiB of this process's memory. Bounded: 60 s.
async fn keep_32_small_values<F, Fut>(what: &str, mut read: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Bytes>,
{
    let measured = async {
        // Warm up: the connection and its buffers exist before counting.
        for _ in 0..2 {
            read().await;
        }
        let Some(before) = rss_kib() else {
            eprintln!("SKIP: no /proc/self/statm");
            return;
        };
        let mut kept = Vec::new();
        for _ in 0..32 {
            let small = read().await;
            assert_eq!(&small[..], b"sixteen bytes ok");
            kept.push(small);
        }
        let held = rss_kib().unwrap_or(0).saturating_sub(before);
        // The 32 values and their handles, and what the allocator keeps of the large
        // replies it was given back (a few of them), may stay.
        assert!(
            held < 8 * 1024,
            "{what}: 32 kept values of 16 bytes hold {held} KiB"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), measured)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 60 s"));
}

/// A value read from memcached is a view of the connection's read buffer (no copy per
/// hit). After a large reply that buffer has grown to megabytes, and the small replies
/// read next landed in what was left of it: each small value kept (a raw value an
/// application keeps, a tiny cached page a slow client does not read) held the whole
/// megabytes alive, while every budget counts the value's own bytes. Alternating large
/// and small reads, a reader kept 32 small values and with them some 30 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_value_kept_does_not_hold_the_buffer_of_a_large_reply_before_it() {
    let _measuring = MEASURING.lock().await;
    let Some((_memcached, _backend, client)) =
        large_and_small("review_qd::small_value_after_large").await
    else {
        return;
    };
    keep_32_small_values("small values after large ones", || async {
        let large = client.try_query_raw("large").await.unwrap();
        assert_eq!(large.map(|value| value.len()), Some(900 * 1024));
        client.try_query_raw("small").await.unwrap().unwrap()
    })
    .await;
}

/// The same through one reply: a large and a small value read together (two callers'
/// gets queued on one connection, merged into one line or answered back to back, as a
/// lookup's keys are) arrive in one read, and the small value was a view of the large
/// one's allocation: kept, it held the large value's megabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_value_read_with_a_large_one_does_not_hold_it() {
    let _measuring = MEASURING.lock().await;
    let Some((_memcached, _backend, client)) =
        large_and_small("review_qd::small_value_with_large").await
    else {
        return;
    };
    keep_32_small_values("small values read with large ones", || async {
        let (large, small) =
            tokio::join!(client.try_query_raw("large"), client.try_query_raw("small"));
        assert_eq!(large.unwrap().map(|value| value.len()), Some(900 * 1024));
        small.unwrap().unwrap()
    })
    .await;
}
