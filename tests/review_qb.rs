//! Review QB: the reverse proxy's side toward its origin. How many requests it has under
//! way there at once (`--upstream-max-connections`, `--upstream-queue-timeout`), and what
//! a hostile origin's answers (a 101 nobody asked for, `Connection` nominating the fields
//! the cache decides by) can make it serve or store.

mod support;

use support::proxy::{Proxy, start_proxy};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// An origin that holds its answers.

/// Requests the origin is answering now, and the most it ever was at once.
#[derive(Default)]
struct Counts {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A hyper origin: `/held/*` is answered once `release` says so (10 s at most), anything
/// else at once; every answer is the path, `no-store`.
async fn holding_origin() -> (SocketAddr, Arc<Counts>, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let (release, released) = watch::channel(false);
    let handle = {
        let counts = Arc::clone(&counts);
        move |request: Request<Incoming>| {
            let counts = Arc::clone(&counts);
            let mut released = released.clone();
            async move {
                counts.calls.fetch_add(1, Ordering::SeqCst);
                let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                counts.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let path = request.uri().path().to_string();
                if path.starts_with("/held/") {
                    let wait = released.wait_for(|released| *released);
                    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                }
                counts.in_flight.fetch_sub(1, Ordering::SeqCst);
                let response = Response::builder()
                    .header("cache-control", "no-store")
                    .body(Full::new(Bytes::from(path)))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    };
    support::origin::serve_http1(listener, handle);
    (addr, counts, release)
}

/// `GET path` on a fresh connection: the status and the body.
async fn get(proxy: &Proxy, path: &str) -> (u16, String) {
    support::proxy::raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n"),
    )
    .await
}

/// Waits (5 s at most) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An attacker's slow misses (or as many distinct URLs) each held a connection to the
/// origin: the proxy opened as many as there were requests in flight. Now at most
/// `--upstream-max-connections` are under way at the origin; as many more wait for a place
/// (`--upstream-queue-timeout`) and get a 503 when none frees in time, the rest a 503 at
/// once. Once the held requests end, their places serve the next requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_origin_limit_wait_a_bounded_time_then_get_503() {
    let (origin, counts, release) = holding_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "2",
            "--upstream-queue-timeout",
            "1s",
        ],
    );
    let proxy = Arc::new(proxy);
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..2 {
        let proxy = Arc::clone(&proxy);
        requests.spawn(async move { get(&proxy, &format!("/held/{n}")).await });
    }
    until("two requests at the origin", || {
        counts.in_flight.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut refused = tokio::task::JoinSet::new();
    for n in 0..6 {
        let proxy = Arc::clone(&proxy);
        refused.spawn(async move { get(&proxy, &format!("/held/more-{n}")).await });
    }
    // Every one of them is answered while the first two are still held.
    while let Some(answer) = refused.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(body, "503 Service Unavailable\n");
    }
    assert_eq!(counts.calls.load(Ordering::SeqCst), 2);
    assert_eq!(counts.max_in_flight.load(Ordering::SeqCst), 2);
    let _ = release.send(true);
    let mut held = Vec::new();
    while let Some(answer) = requests.join_next().await {
        held.push(answer.unwrap());
    }
    held.sort();
    assert_eq!(
        held,
        [(200, "/held/0".to_string()), (200, "/held/1".to_string())]
    );
    // The places came back: more requests than there are places, one after another.
    for n in 0..5 {
        assert_eq!(
            get(&proxy, &format!("/after/{n}")).await,
            (200, format!("/after/{n}"))
        );
    }
    assert!(counts.max_in_flight.load(Ordering::SeqCst) <= 2);
}

/// A waiter whose client hangs up gives up its turn, and a request that gets no answer in
/// time (504) gives its place back: neither leaks a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_come_back_from_timeouts_and_clients_gone() {
    let (origin, counts, _release) = holding_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "1",
            "--upstream-queue-timeout",
            "10s",
            "--upstream-timeout",
            "1s",
        ],
    );
    // Held past --upstream-timeout: a 504, and its place is free again.
    assert_eq!(get(&proxy, "/held/a").await.0, 504);
    assert_eq!(get(&proxy, "/free").await, (200, "/free".to_string()));
    // Clients that hang up while waiting behind a held request.
    let proxy = Arc::new(proxy);
    let holder = tokio::spawn({
        let proxy = Arc::clone(&proxy);
        async move { get(&proxy, "/held/b").await }
    });
    // (The origin's handler for `/held/a` still runs: its connection was closed, and the
    // calls are what tell that `/held/b` arrived.)
    until("the held request at the origin", || {
        counts.calls.load(Ordering::SeqCst) == 3
    })
    .await;
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /gone HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
    }
    assert_eq!(holder.await.unwrap().0, 504);
    assert_eq!(get(&proxy, "/free2").await, (200, "/free2".to_string()));
}
