//! A memcached host that drops connection attempts (powered off, or a firewall that drops
//! rather than refuses): connects hang until their timeout, and the server must still be
//! marked down, so one such server of N costs only its share of hits, not a lookup
//! timeout on each of its requests forever.

#![cfg(feature = "tcp")]

use std::net::TcpStream;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::time::Instant;
use tower_memcache::backend::{Backend, TcpBackend};

/// A loopback address whose connects hang: a listener with a backlog of one that never
/// accepts, its queue filled first, so the kernel drops further handshakes' first packets
/// (as a host that is gone does). Kept open while the returned guards live.
fn black_hole() -> (String, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filling = Vec::new();
    // Fill the accept queue: once full, connect attempts time out instead of completing.
    while filling.len() < 8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => filling.push(stream),
            Err(_) => break,
        }
    }
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "connects to the full listener still complete"
    );
    (addr.to_string(), listener, filling)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down() {
    let (addr, _listener, _filling) = black_hole();
    let memcached = TcpBackend::builder()
        .server(&addr)
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut lookups = 0;
    while Instant::now() < until && !memcached.is_server_down(0) {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(2),
            memcached.get_many_by_key_ordered("r", &["g", "e"], Duration::from_millis(50)),
        )
        .await
        .expect("a read outlived its deadline");
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
        lookups += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        memcached.is_server_down(0),
        "a server whose connects hang stayed in use for 3 s ({lookups} lookups, each paying its limit)"
    );
    // Marked down, its keys fail fast: a miss, not a wait.
    let started = Instant::now();
    let outcome = memcached
        .get_many_by_key_ordered("r", &["g", "e"], Duration::from_millis(50))
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "a lookup on the server marked down took {:?}",
        started.elapsed()
    );
}
