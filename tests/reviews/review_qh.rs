//! Review QH: a second look at the changes of reviews QE, QF and QG and at the proxy's
//! own answers (TRACE, OPTIONS `Max-Forwards`), as an adversary and as an operator would
//! meet them. Every wait is bounded.
#![cfg(feature = "tcp")]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tower_memcache::backend::{Backend, TcpBackend};

use support::bounded;

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

/// An origin that answers every request with `answer` and closes the connection.
async fn raw_origin(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

/// An event stream is never stored (review QE: its clients waited for another's stream,
/// and one that ended was replayed, old events as new, to every later client), by its
/// `Content-Type`. An origin's `Connection: content-type` (one that reflects a client's
/// `Connection` field does it for any client) hid that field from the cache in the proxy,
/// and the stream was stored and replayed: `Content-Type` decides caching now, so
/// `Connection` cannot hide it.
#[cfg(feature = "proxy")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_hide_an_event_stream_from_the_cache() {
    let answer = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Type: text/event-stream\r\nConnection: content-type\r\nContent-Length: 18\r\n\r\ndata: price 100\r\n\r\n";
    let origin = raw_origin(answer).await;
    let proxy = support::proxy::start_proxy(origin, &[]);
    for _ in 0..2 {
        let response = bounded(
            "event stream",
            support::proxy::raw_text(&proxy, "GET /events HTTP/1.1\r\nHost: shop.example\r\n"),
        )
        .await;
        let cache_status = response
            .lines()
            .find(|line| line.starts_with("cache-status:"))
            .unwrap_or_default();
        assert!(
            !cache_status.contains("stored") && !cache_status.contains("hit"),
            "an event stream stored or replayed: {response:?}"
        );
        assert!(
            response.contains("content-type: text/event-stream"),
            "{response:?}"
        );
    }
}

/// A server taken for a proxy without `stats` (two `stats settings` queries in a row
/// closed their connection: a twemproxy, or a memcached crash-looping then) and then
/// marked down is asked its settings again when it comes back, "it may be another process
/// now" (`finish_rejoin`), but only once its reset was done: the reset's `flush_all`,
/// which `remove_failed_servers` makes on every return (review QF: its keys were written
/// elsewhere meanwhile), was refused as unsupported without being sent, and the memcached
/// that answers there now served its old values. The settings are asked again when the
/// reset begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_from_an_outage_is_flushed_though_once_taken_for_a_proxy() {
    use std::sync::atomic::AtomicBool;
    use support::fake_memcached::{Reply, scripted};
    let broken = Arc::new(AtomicBool::new(false));
    let flushes = Arc::new(AtomicUsize::new(0));
    let addr = scripted({
        let (broken, flushes) = (Arc::clone(&broken), Arc::clone(&flushes));
        move |connection, line| {
            if broken.load(Ordering::SeqCst) {
                return Reply::Close;
            }
            match line {
                // The first two connections' queries closed: taken for a proxy.
                "stats settings" if connection < 2 => Reply::Close,
                "stats settings" => Reply::Send(b"STAT item_size_max 1048576\r\nEND\r\n"),
                "stats" => Reply::Send(b"STAT pid 1\r\nEND\r\n"),
                "version" => Reply::Send(b"VERSION 1.6.21\r\n"),
                "flush_all" => {
                    flushes.fetch_add(1, Ordering::SeqCst);
                    Reply::Send(b"OK\r\n")
                }
                line if line.starts_with("get") => Reply::Send(b"END\r\n"),
                _ => Reply::Send(b"ERROR\r\n"),
            }
        }
    })
    .await;
    let backend = TcpBackend::builder()
        .server(addr)
        .remove_failed_servers(true)
        .failure_threshold(1)
        .probe_interval(Duration::from_millis(50))
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(bounded("first get", backend.get("a")).await.unwrap(), None);
    // Taken for a proxy: no flush_all is sent to it.
    assert!(bounded("flush_all", backend.flush_all()).await.is_err());
    assert_eq!(flushes.load(Ordering::SeqCst), 0);
    // An outage: marked down, out of the ring.
    broken.store(true, Ordering::SeqCst);
    let _ = bounded("get in the outage", backend.get("b")).await;
    bounded("marked down", async {
        while !backend.is_server_down(0) {
            let _ = backend.get("b").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Back (a memcached now), flushed before it serves again.
    broken.store(false, Ordering::SeqCst);
    bounded("back in use", async {
        while backend.is_server_down(0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        flushes.load(Ordering::SeqCst),
        1,
        "back in the ring without the flush its return owes"
    );
    let flushed = bounded("flush_all after the return", backend.flush_all()).await;
    assert!(flushed.is_ok(), "{flushed:?}");
}

/// A twemproxy-like server (every `stats` and `flush_all` closes the connection) comes
/// back from an outage all the same with `remove_failed_servers`: its settings are asked
/// again when its reset begins, two closed queries take it for a proxy again, and the
/// reset's flush is skipped as unsupported rather than sent (sent, it closed the
/// connection, the reset failed and the server never came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_stats_comes_back_from_an_outage() {
    use std::sync::atomic::AtomicBool;
    use support::fake_memcached::{Reply, scripted};
    let broken = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let addr = scripted({
        let (broken, asked) = (Arc::clone(&broken), Arc::clone(&asked));
        move |_, line| {
            if broken.load(Ordering::SeqCst) {
                return Reply::Close;
            }
            match line {
                line if line.starts_with("stats") => {
                    asked.fetch_add(1, Ordering::SeqCst);
                    Reply::Close
                }
                "flush_all" => Reply::Close,
                "version" => Reply::Send(b"VERSION 0.5.0\r\n"),
                line if line.starts_with("get") => Reply::Send(b"END\r\n"),
                _ => Reply::Send(b"ERROR\r\n"),
            }
        }
    })
    .await;
    let backend = TcpBackend::builder()
        .server(addr)
        .remove_failed_servers(true)
        .failure_threshold(1)
        .probe_interval(Duration::from_millis(50))
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(bounded("first get", backend.get("a")).await.unwrap(), None);
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    broken.store(true, Ordering::SeqCst);
    bounded("marked down", async {
        while !backend.is_server_down(0) {
            let _ = backend.get("b").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    broken.store(false, Ordering::SeqCst);
    bounded("back in use", async {
        while backend.is_server_down(0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(bounded("get after", backend.get("a")).await.unwrap(), None);
    // Asked twice more on its return, and not again.
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    assert!(bounded("flush_all", backend.flush_all()).await.is_err());
    assert_eq!(asked.load(Ordering::SeqCst), 4);
}
