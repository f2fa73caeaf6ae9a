//! Review Y: an adversarial review of the last two sessions' changes no review had looked
//! at: the ended placeholder a doubtful lease release adds (`Storage::release_unsure`),
//! the new TCP connection's `stats settings` query bounded by its caller's deadline, the
//! TCP decoder's line-length classification, and a 304 without `ETag` selecting by its
//! `Last-Modified` (RFC 9111 §4.3.4).

mod support;

#[cfg(feature = "tcp")]
mod tcp {
    use std::time::Duration;

    use tokio::net::TcpSocket;
    use tokio::time::Instant;
    use tower_memcache::backend::{Backend, TcpBackend};

    const TIMEOUT: Duration = Duration::from_millis(100);

    /// A memcached host that no longer completes connections: a listener whose accept
    /// queue is full (nothing accepts), so the kernel drops further SYNs and a connect
    /// hangs, as it does to a host gone from the network behind a firewall that drops.
    /// The listener and the queued connections are returned, to be kept open.
    async fn black_hole() -> (String, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..8 {
            let connect = tokio::task::spawn_blocking(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
            });
            match connect.await.unwrap() {
                Ok(stream) => queued.push(stream),
                Err(_) => return (addr.to_string(), listener, queued),
            }
        }
        panic!("the accept queue never filled");
    }

    /// A hung connect behind a layer whose lookup timeout is shorter than the backend's
    /// (the proxy's `--cache-timeout 50ms` with its backend timeout of 100 ms): every
    /// lookup gives up while connecting, which says nothing about the server, and no
    /// connection is ever made whose stall check could. The server must still be marked
    /// down, rather than every request paying the lookup timeout for as long as the host
    /// is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_that_never_completes_a_connect_behind_a_shorter_lookup_timeout_is_marked_down()
    {
        let (addr, _listener, _queued) = black_hole().await;
        let memcached = TcpBackend::builder()
            .server(&addr)
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .build()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && !memcached.is_server_down(0) {
            let outcome = tokio::time::timeout(
                Duration::from_secs(2),
                memcached.get_many_by_key_ordered("r", &["g", "e"], Duration::from_millis(50)),
            )
            .await
            .expect("a read outlived its deadline");
            assert!(outcome.is_err(), "{outcome:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            memcached.is_server_down(0),
            "a host that never completes a connect stayed in use for 2 s of lookups"
        );
    }
}
