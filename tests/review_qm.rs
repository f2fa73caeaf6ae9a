//! Review QM: a second look at the changes merged last (reviews QK, QL, Qi, Qh): safe
//! methods spelled in another case, a returning server's settings, `Vary` values matched
//! byte for byte, failed revalidations answered stale, and the memcached evictions count.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tower_memcache::backend::MemoryBackend;

/// A GET that a framework runs as a DELETE (`X-HTTP-Method-Override`) invalidates as the
/// DELETE would (review E). Review QK stopped `get` (a safe method in another case) from
/// invalidating, on the ground that servers upper-case the method and answer it as a GET;
/// but such a server then honours the override as it does for a GET, and `get` was never
/// looked at for an override (only GET and HEAD were). A client (or a library that
/// lower-cases its method) deleting a page through `get` + override left the deleted page
/// served from the cache, to everyone, for its whole lifetime.
#[tokio::test]
async fn a_lower_case_get_overridden_to_delete_invalidates_as_a_get_would() {
    use tower::Layer;

    let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .header("cache-control", "public, max-age=60")
                .body(http_body_util::Full::new(Bytes::from_static(b"the page")))
                .unwrap(),
        )
    }));
    for (path, spelling) in [("/a", "GET"), ("/b", "get"), ("/c", "Get"), ("/d", "head")] {
        let url = format!("http://shop.example{path}");
        support::send(&service, Method::GET, &url, &[]).await;
        support::stores(&watch, 1).await;
        let hit = support::send(&service, Method::GET, &url, &[]).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        let method = Method::from_bytes(spelling.as_bytes()).unwrap();
        support::send(
            &service,
            method,
            &url,
            &[("x-http-method-override", "DELETE")],
        )
        .await;
        watch.settled().await;
        let after = support::send(&service, Method::GET, &url, &[]).await;
        assert!(
            !after.cache_status().contains("hit"),
            "{spelling} overridden to DELETE left the page stored: {}",
            after.cache_status()
        );
    }
}

/// The value of the sample `name{server="…"}` in a Prometheus text exposition.
#[cfg(feature = "metrics")]
fn server_sample(text: &str, name: &str, server: &str) -> Option<f64> {
    let series = format!("{name}{{server=\"{server}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
}

/// Review Qi counts `evictions` read below the last read as a restart, whole. But reads
/// arrive out of order: `record_backend_gauges` is to be called "when scraped", and two
/// scrapes at once (a pair of Prometheus servers, as HA setups run) each read `stats`,
/// the older answer recorded last. Taken for a restart, it added the server's whole
/// eviction count again: the counter jumped by millions on a busy cache, an alert on
/// `rate()` for nothing. And a real restart whose new process evicted more than the old
/// one had (read between the two) counted only the difference. memcached says when it
/// started (`time` - `uptime`): a restart is a new start, not a smaller number.
#[cfg(feature = "metrics")]
#[test]
fn memcached_evictions_read_out_of_order_are_not_taken_for_a_restart() {
    use std::collections::HashMap;
    use tower_memcache::backend::ServerStats;
    use tower_memcache::cache::record_backend_gauges;

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // A name no other test of this process reads.
    let server = "review-qm-evictions:11211";
    // memcached's `time` and `uptime` for a process started at `started`, read at `now`.
    let read = |evictions: u64, started: u64, now: u64| {
        let stats = ServerStats {
            server: server.into(),
            stats: HashMap::from([
                ("evictions".to_string(), evictions.to_string()),
                ("time".to_string(), now.to_string()),
                ("uptime".to_string(), (now - started).to_string()),
                ("pid".to_string(), "1".to_string()),
            ]),
        };
        metrics::with_local_recorder(&recorder, || record_backend_gauges(&[stats], None));
    };
    let counted = || {
        server_sample(
            &handle.render(),
            "tower_memcache_memcached_evictions_total",
            server,
        )
    };
    let started = 1_700_000_000;
    read(1_000_000, started, started + 100);
    assert_eq!(counted(), Some(1_000_000.0));
    read(1_000_500, started, started + 110);
    assert_eq!(counted(), Some(1_000_500.0));
    // A scrape's answer from a moment before, recorded after the other one's.
    read(1_000_400, started, started + 109);
    assert_eq!(
        counted(),
        Some(1_000_500.0),
        "an older read was taken for a restart"
    );
    read(1_000_600, started, started + 120);
    assert_eq!(counted(), Some(1_000_600.0));
    // Restarted (at started + 200) and, by the next read, evicted more than the old
    // process had: all of it is new.
    let again = started + 200;
    read(2_000_000, again, again + 60);
    assert_eq!(
        counted(),
        Some(3_000_600.0),
        "a restart counted by difference"
    );
    read(2_000_100, again, again + 70);
    assert_eq!(counted(), Some(3_000_700.0));
}

/// A `stats settings` query that costs its connection once is a restart, twice in a row
/// on one slot a proxy (review Qh), and a server back from an outage starts counting
/// again (review QK resets the count when its reset begins). But only the slots of the
/// sibling whose probe saw it return were reset: a sibling (the proxy runs one per
/// thread) whose slot had one closed query from before the outage kept it, and the first
/// closed query after the return (memcached restarting once more) took the server for a
/// proxy. From then on `flush_all` was refused unsent as unsupported: the purge of
/// everything left that server's values, with nothing owed to make up for it.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siblings_closed_settings_query_before_an_outage_does_not_count_after_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tower_memcache::backend::{Backend, TcpBackend};

    #[derive(Default)]
    struct Script {
        /// The next `stats settings` closes its connection (a restart), once.
        close_next: AtomicBool,
        /// ... and the server hangs from then on (it answers nothing, and closes each
        /// connection once `hung` is cleared).
        hang_after: AtomicBool,
        hung: AtomicBool,
        flushes: AtomicUsize,
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(Script::default());
    tokio::spawn({
        let script = Arc::clone(&script);
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if script.hung.load(Ordering::SeqCst) {
                            while script.hung.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            return;
                        }
                        let reply: &[u8] = match line.trim_end() {
                            "stats settings" if script.close_next.swap(false, Ordering::SeqCst) => {
                                if script.hang_after.load(Ordering::SeqCst) {
                                    script.hung.store(true, Ordering::SeqCst);
                                }
                                return;
                            }
                            "stats settings" => b"STAT item_size_max 1048576\r\nEND\r\n",
                            "version" => b"VERSION 1.6.21\r\n",
                            "flush_all" => {
                                script.flushes.fetch_add(1, Ordering::SeqCst);
                                b"OK\r\n"
                            }
                            line if line.starts_with("get") => b"END\r\n",
                            _ => b"ERROR\r\n",
                        };
                        if write.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    let first = TcpBackend::builder()
        .server(addr.to_string())
        .connections_per_server(1)
        .failure_threshold(2)
        .probe_interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let other = first.sibling();
    // The first sibling's query is closed (one on its slot), and the server hangs as it
    // connects again: a failure.
    script.hang_after.store(true, Ordering::SeqCst);
    script.close_next.store(true, Ordering::SeqCst);
    assert!(
        support::bounded("a get in the outage", first.get("a"))
            .await
            .is_err()
    );
    // The other sibling's failure marks it down; its probe watches for the return.
    assert!(
        support::bounded("the other get", other.get("a"))
            .await
            .is_err()
    );
    assert!(first.is_server_down(0), "not marked down");
    // Past every query's own bound: none of them is pending when the server comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    script.hang_after.store(false, Ordering::SeqCst);
    script.hung.store(false, Ordering::SeqCst);
    support::bounded("back in use", async {
        while first.is_server_down(0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // It restarts once more as the first sibling connects: one closed query, after the
    // return.
    script.close_next.store(true, Ordering::SeqCst);
    let got = support::bounded("a get after the return", first.get("a")).await;
    assert_eq!(got.unwrap(), None);
    let flushed = support::bounded("flush_all", first.flush_all()).await;
    assert!(flushed.is_ok(), "taken for a proxy: {flushed:?}");
    assert_eq!(script.flushes.load(Ordering::SeqCst), 1);
}
