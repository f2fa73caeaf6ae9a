//! Review Z: an adversarial review of two changes to the TCP backend's connecting: a
//! connect given up at its caller's deadline finishing in a task of its own (its failure
//! counted, its success kept as the slot's connection), and a new connection's
//! `stats settings` query running on past its caller's deadline. Attacked with a host
//! whose connects hang, flapping while such a connect is under way, and a server that
//! answers its connects late.
#![cfg(feature = "tcp")]

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::fake_memcached;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_memcache::backend::{Backend, TcpBackend};

/// [`fake_memcached::black_hole`], or `None` where the accept queue never fills.
async fn black_hole() -> Option<(String, TcpListener, Vec<std::net::TcpStream>)> {
    let hole = fake_memcached::black_hole().await;
    hole.full.then_some((hole.addr, hole.listener, hole.queued))
}

/// Serves `listener` from now on as a memcached would (see [`fake_memcached::serve`]):
/// settings answered at once, a get of key `hold` after [`HOLD`]. The get lines read and
/// the connections accepted.
fn serve(listener: TcpListener) -> (Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>) {
    let served = fake_memcached::serve(listener, |_| Duration::ZERO, HOLD);
    (served.lines, served.accepted)
}

const HOLD: Duration = Duration::from_millis(150);

/// A connect given up by its caller goes on in the background, and its failure counts
/// against the server. One begun before an outage (a black-holed host) that fails after
/// the server came back (its probe connected on a fresh SYN while the old one waited to
/// be sent again) said nothing about the server now in use: it counted all the same, and
/// with a failure threshold of one marked the server that had just come back down again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_begun_before_an_outage_that_fails_after_the_return_counts_nothing() {
    let Some((addr, listener, _queued)) = black_hole().await else {
        return;
    };
    let started = Instant::now();
    let connect_timeout = Duration::from_millis(700);
    let first = TcpBackend::builder()
        .server(&addr)
        .connections_per_server(1)
        .timeout(Duration::from_millis(30))
        .connect_timeout(connect_timeout)
        .failure_threshold(1)
        .probe_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    // Given up while connecting, before the backend's timeout: counts nothing, and the
    // connect goes on in the background until the connect timeout.
    let given_up = first
        .get_many_by_key_ordered("r", &["a"], Duration::from_millis(10))
        .await;
    assert!(given_up.is_err(), "{given_up:?}");
    assert!(!first.is_server_down(0));
    // A sibling's caller waits past the backend's timeout: the server is marked down.
    let marker = first.sibling();
    let _ = marker
        .get_many_by_key_ordered("r", &["b"], Duration::from_millis(60))
        .await;
    assert!(
        first.is_server_down(0),
        "the black hole was never marked down"
    );
    // Its probe ends with it (its own slot is held by its own hung connect).
    drop(marker);
    let outages = first.outages();
    // The host answers again; a third sibling's probe puts it back.
    let _served = serve(listener);
    let third = first.sibling();
    while third.is_server_down(0) {
        assert!(
            started.elapsed() < connect_timeout - Duration::from_millis(100),
            "the server did not come back in time for the test"
        );
        let _ = third.get("c").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first connect, its SYN not sent again yet, fails at its connect timeout.
    tokio::time::sleep_until(started + connect_timeout + Duration::from_millis(100)).await;
    // A call given up before the timeout counts what nobody was told of.
    let _ = first
        .get_many_by_key_ordered("r", &["hold"], Duration::from_millis(10))
        .await;
    assert!(
        !first.is_server_down(0),
        "a connect begun before the outage marked the returned server down"
    );
    assert_eq!(first.outages(), outages);
}

/// A connect given up by its caller and finished in the background becomes the slot's
/// connection, without the `stats settings` query that tells memcached from a proxy: such
/// a connection never merged queued gets (nor learnt the item size limit) for as long
/// as it lived, on a server whose connects are slow (a SYN dropped once, a listener
/// whose accept queue was full a moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_a_background_connect_made_merges_gets() {
    let Some((addr, listener, queued)) = black_hole().await else {
        return;
    };
    let memcached = support::one_connection_backend_with(
        &addr,
        Duration::from_millis(500),
        Duration::from_secs(3),
        1000,
    );
    // Given up while connecting: the connect goes on in the background.
    let given_up = memcached
        .get_many_by_key_ordered("r", &["a"], Duration::from_millis(20))
        .await;
    assert!(given_up.is_err(), "{given_up:?}");
    // The host accepts again; the connect's SYN, sent again, is answered.
    let (lines, accepted) = serve(listener);
    let until = Instant::now() + Duration::from_secs(3);
    while *accepted.lock().unwrap() <= queued.len() {
        assert!(Instant::now() < until, "the background connect never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    fake_memcached::gets_queued_behind_a_held_one(&memcached, &lines).await;
    assert_eq!(
        *accepted.lock().unwrap(),
        queued.len() + 1,
        "the gets went to another connection than the background connect's"
    );
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|line| line.split(' ').count() > 2),
        "gets queued behind another were never merged: {lines:?}"
    );
}

/// A memcached whose first connection answers `stats` only after `first_stats_after`
/// (reading nothing meanwhile), later connections at once; gets all miss, one of key
/// `hold` answered after [`HOLD`]. Records the get lines and counts the `stats` asked.
async fn slow_first_settings(
    first_stats_after: Duration,
) -> (String, Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let after = move |n: usize| {
        if n == 0 {
            first_stats_after
        } else {
            Duration::ZERO
        }
    };
    let served = fake_memcached::serve(listener, after, HOLD);
    (addr, served.lines, served.stats_asked)
}

/// A new connection's `stats settings` query that outlasts the connection's stall check
/// (a memcached that pauses a moment as a connection opens, behind a connect timeout
/// longer than twice the backend's timeout) ends with the connection closed by this
/// client, not by the server: it was taken for a server that closes connections on
/// `stats` (twemproxy), and no later connection asked again until the server was marked
/// down and up, so none merged gets nor learnt the item size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_query_that_stalls_does_not_stop_later_connections_asking() {
    let (addr, lines, stats) = slow_first_settings(Duration::from_millis(400)).await;
    let memcached = support::one_connection_backend_with(
        &addr,
        Duration::from_millis(50),
        Duration::from_secs(1),
        1000,
    );
    // The first connection stalls on its settings query and is closed by its stall check.
    let _ = memcached.get("first").await;
    let _ = memcached.get("second").await;
    fake_memcached::gets_queued_behind_a_held_one(&memcached, &lines).await;
    assert!(
        *stats.lock().unwrap() >= 2,
        "no connection after the stalled one asked stats settings"
    );
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|line| line.split(' ').count() > 2),
        "gets queued behind another were never merged: {lines:?}"
    );
}

/// A memcached that accepts connections and never answers (a stopped process).
async fn mute() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A server that accepts and never answers, behind callers bounded tighter than the
/// backend's timeout and a connect timeout longer than the stall check: each new
/// connection's `stats settings` query, running on in a task of its own, is still waiting
/// when the stall check ends the connection, and the stall must count all the same (and
/// the query, which the server did not refuse, must not be given up for good). Held: a
/// guard for the settings query's handling of a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_server_behind_a_long_connect_timeout_and_tight_callers_is_marked_down() {
    let addr = mute().await;
    let memcached = support::one_connection_backend_with(
        &addr,
        Duration::from_millis(50),
        Duration::from_secs(1),
        2,
    );
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && !memcached.is_server_down(0) {
        let outcome = memcached
            .get_many_by_key_ordered("r", &["k"], Duration::from_millis(20))
            .await;
        assert!(outcome.is_err(), "{outcome:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        memcached.is_server_down(0),
        "a server that never answers stayed in use for 2 s of lookups"
    );
}

/// A connect finished in the background runs on its caller's runtime. That runtime shut
/// down mid-connect (a per-thread runtime ending) drops the task: the slot's connecting
/// lock it held is released, so callers on another runtime connect the slot again rather
/// than wait on it for ever. Held.
#[test]
fn a_background_connect_dropped_with_its_runtime_releases_the_slot() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some((addr, listener, queued)) = main.block_on(black_hole()) else {
        return;
    };
    let memcached = support::one_connection_backend_with(
        &addr,
        Duration::from_millis(500),
        Duration::from_secs(5),
        1000,
    );
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let given_up =
        doomed.block_on(memcached.get_many_by_key_ordered("r", &["a"], Duration::from_millis(20)));
    assert!(given_up.is_err(), "{given_up:?}");
    // The connect goes on in the background, on the runtime now dropped.
    drop(doomed);
    main.block_on(async {
        let (_, accepted) = serve(listener);
        // The queue drained: a new connect is answered at once.
        while *accepted.lock().unwrap() < queued.len() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let got = memcached.get("b").await;
        assert!(got.is_ok(), "{got:?}");
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "the slot waited {:?} for a connect dropped with its runtime",
            started.elapsed()
        );
    });
}
