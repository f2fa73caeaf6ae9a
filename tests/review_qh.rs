//! Review QH: a second look at the changes of reviews QE, QF and QG and at the proxy's
//! own answers (TRACE, OPTIONS `Max-Forwards`), as an adversary and as an operator would
//! meet them. Every wait is bounded.
#![cfg(feature = "tcp")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tower_memcache::backend::{Backend, TcpBackend};

/// Bounds every test: none may hang.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 30 s"))
}

/// A memcached restart closes the `stats settings` queries of two slots' new connections
/// (`connections_per_server(2)`: the second slot connected under load, the first
/// reconnecting after the restart closed it), then the server answers as memcached. Each
/// slot saw one closed query, none two in a row, so the server is not taken for a proxy
/// without `stats`. Counted per server, the two slots' closes made "two in a row", and
/// `flush_all` (`Purger::purge_all`) and `stats` were refused as unsupported until the
/// server happened to be marked down and up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_closed_by_one_restart_do_not_disable_flush_all() {
    use tokio::sync::Notify;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Gets held on the first connection; the restart (its close); the first slot's new
    // query seen.
    let held = Arc::new(AtomicUsize::new(0));
    let restart = Arc::new(Notify::new());
    let both_asked = Arc::new(Notify::new());
    let server_held = Arc::clone(&held);
    tokio::spawn(async move {
        for connection in 0..32 {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let held = Arc::clone(&server_held);
            let (restart, both_asked) = (Arc::clone(&restart), Arc::clone(&both_asked));
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                loop {
                    let line = tokio::select! {
                        line = lines.next_line() => match line {
                            Ok(Some(line)) => line,
                            _ => return,
                        },
                        // The restart closes the first connection.
                        _ = restart.notified(), if connection == 0 => return,
                    };
                    let reply: &[u8] = match (connection, line.trim_end()) {
                        // An empty listing: the connection is used as is (gets unmerged).
                        (0, "stats settings") => b"END\r\n",
                        (0, line) if line.starts_with("get") && line.contains(" hold") => {
                            held.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        // The second slot's query: the restart begins; its close waits
                        // for the first slot's new query, so both are closed together.
                        (1, "stats settings") => {
                            restart.notify_one();
                            let _ =
                                tokio::time::timeout(Duration::from_secs(5), both_asked.notified())
                                    .await;
                            return;
                        }
                        (2, "stats settings") => {
                            both_asked.notify_one();
                            return;
                        }
                        (_, "stats settings") => {
                            // Back after the restart; a moment after the closes, so both
                            // are seen before a query is answered.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            b"STAT item_size_max 1048576\r\nEND\r\n"
                        }
                        (_, "stats") => b"STAT pid 1\r\nEND\r\n",
                        (_, "flush_all") => b"OK\r\n",
                        (_, line) if line.starts_with("get") => b"END\r\n",
                        _ => b"ERROR\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let backend = TcpBackend::builder()
        .server(addr)
        .connections_per_server(2)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10))
        .failure_threshold(100)
        .build()
        .unwrap();
    assert_eq!(bounded("warm", backend.get("warm")).await.unwrap(), None);
    // Enough requests outstanding on the first slot's connection that the next spills
    // to the second slot.
    let holds: Vec<_> = (0..32)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move { backend.get(&format!("hold{i}")).await })
        })
        .collect();
    bounded("gets held", async {
        while held.load(Ordering::SeqCst) < 32 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let spill = tokio::spawn({
        let backend = backend.clone();
        async move { backend.get("spill").await }
    });
    // The restart closed the first connection under the held gets.
    for hold in holds {
        assert!(bounded("held get", hold).await.unwrap().is_err());
    }
    // The first slot connects again, its query closed by the same restart.
    let again = bounded("get again", backend.get("again")).await;
    assert!(again.is_ok(), "{again:?}");
    let spilled = bounded("spilled get", spill).await.unwrap();
    assert!(spilled.is_ok(), "{spilled:?}");
    let flushed = bounded("flush_all", backend.flush_all()).await;
    assert!(
        flushed.is_ok(),
        "flush_all refused after one restart: {flushed:?}"
    );
    let stats = bounded("stats", backend.stats()).await;
    assert!(stats.is_ok(), "stats refused after one restart: {stats:?}");
}
