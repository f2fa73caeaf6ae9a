//! Per-server health shared by sibling backends (`TcpBackend::sibling`), one per thread
//! and runtime as `tower-memcache-proxy --runtime per-thread` runs them: a server that one
//! thread marks down is down for every thread at once, one probe resets it once, and a
//! purge made through one thread while it skips that server holds on every thread.
//!
//! Each sibling runs on a thread of its own with a single-threaded runtime of its own
//! ([`Worker`]); a TCP relay the test controls stands in front of one memcached server and
//! stalls the replies of chosen connections only (one sibling's, and those opened later).
//! Every test is bounded in time (a few seconds) and stops what it started.

#![cfg(feature = "tcp")]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::Memcached;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_memcache::backend::{Backend, BackendError, TcpBackend, UnreachableReason};
use tower_memcache::cache::{CacheMode, MemcacheLayer};
use tower_memcache::key::build_key;

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A thread running a single-threaded runtime of its own, as each thread of the proxy
/// does: what it runs (and what that spawns: connection tasks, probes) stays on it, and
/// keeps running between the test's requests.
struct Worker {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(name: &str) -> Self {
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job());
                    }
                });
            })
            .unwrap();
        Worker {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Runs `make()`'s future on this worker's runtime and waits for its output.
    fn run<T, F, Fut>(&self, make: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(make().await);
            })
        });
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the worker answers within 10 s")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The queue closes, the runtime ends with its tasks.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls `ready` every 5 ms for at most 5 s.
fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TCP relay in front of one memcached. Connections are numbered in the order they are
/// accepted; what a stalled connection sends either way is held (a network stall: nothing
/// is lost, nothing goes through), until the relay lets everything through again. It
/// counts the request chunks that contain a given needle.
struct Relay {
    addr: String,
    state: Arc<RelayState>,
}

#[derive(Default)]
struct RelayState {
    /// Numbers of the connections whose traffic is held.
    stalled: Mutex<Vec<usize>>,
    /// Connections accepted from now on are stalled too.
    stall_new: AtomicBool,
    accepted: AtomicUsize,
    release: tokio::sync::Notify,
    needle: Mutex<Option<Vec<u8>>>,
    seen: AtomicUsize,
}

impl RelayState {
    fn is_stalled(&self, connection: usize) -> bool {
        self.stalled.lock().unwrap().contains(&connection)
    }
}

impl Relay {
    /// Started on the current runtime (the relay's worker).
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(RelayState::default());
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let number = shared.accepted.fetch_add(1, Ordering::SeqCst);
                if shared.stall_new.load(Ordering::SeqCst) {
                    shared.stalled.lock().unwrap().push(number);
                }
                tokio::spawn(relay(client, server, number, Arc::clone(&shared)));
            }
        });
        Relay { addr, state }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Holds the traffic of connection `number`.
    fn stall(&self, number: usize) {
        self.state.stalled.lock().unwrap().push(number);
    }

    /// Holds the traffic of every connection accepted from now on.
    fn stall_new(&self) {
        self.state.stall_new.store(true, Ordering::SeqCst);
    }

    /// Lets everything through again.
    fn release(&self) {
        self.state.stall_new.store(false, Ordering::SeqCst);
        self.state.stalled.lock().unwrap().clear();
        self.state.release.notify_waiters();
    }

    /// Counts the request chunks that contain `needle` from now on.
    fn count(&self, needle: &str) {
        *self.state.needle.lock().unwrap() = Some(needle.as_bytes().to_vec());
    }

    fn seen(&self) -> usize {
        self.state.seen.load(Ordering::SeqCst)
    }
}

/// Waits while connection `number` is stalled.
async fn stalled(state: &RelayState, number: usize) {
    loop {
        let released = state.release.notified();
        if !state.is_stalled(number) {
            return;
        }
        released.await;
    }
}

async fn relay(client: TcpStream, server: TcpStream, number: usize, state: Arc<RelayState>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = {
        let state = Arc::clone(&state);
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // A stalled connection's requests wait too: nothing reaches the server.
                stalled(&state, number).await;
                let chunk = &buf[..n];
                let seen = state
                    .needle
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|needle| chunk.windows(needle.len()).any(|w| w == needle));
                if seen {
                    state.seen.fetch_add(1, Ordering::SeqCst);
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let replies = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            stalled(&state, number).await;
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
}

/// A key whose server is `index` for `backend`.
fn key_on(backend: &TcpBackend, index: usize) -> String {
    (0..10_000)
        .map(|i| format!("per-thread-{i}"))
        .find(|key| backend.server_for_key(key) == Some(index))
        .unwrap()
}

/// A builder over the relay (server 0) and `t` (server 1), quick to mark down and probe.
fn builder(relay: &Relay, t: &Memcached) -> tower_memcache::backend::tcp::TcpBackendBuilder {
    TcpBackend::builder()
        .servers([relay.addr.clone(), t.addr()])
        // One connection per server and sibling: the relay's connection numbers then say
        // whose connection each is.
        .connections_per_server(1)
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(20))
}

/// Thread A's calls to server S time out (only A's connection is stalled: a blip between
/// A and S) and A marks S down. Thread B, whose own connection to S is fine, treats S as
/// down at once (fails fast, without sending), and both see S back after one probe and one
/// reset on rejoin.
#[test]
fn a_server_one_thread_marks_down_is_down_for_every_thread() {
    let Some(s) = Memcached::start("per_thread_health::down_for_all") else {
        return;
    };
    let Some(t) = Memcached::start("per_thread_health::down_for_all") else {
        return;
    };
    let net = Worker::start("relay");
    let relay = net.run({
        let target = s.addr();
        move || Relay::start(target)
    });
    let reset_key = build_key(Some("per-thread"), "\0generation");
    let a = builder(&relay, &t).build().unwrap();
    a.reset_on_rejoin(&reset_key);
    let b = a.sibling();
    let key = key_on(&a, 0);
    assert_eq!(b.server_for_key(&key), Some(0), "one ring");
    let (thread_a, thread_b) = (Worker::start("a"), Worker::start("b"));

    // B's connection to S is the relay's first, A's its second.
    let stored = thread_b.run({
        let (b, key) = (b.clone(), key.clone());
        move || async move { b.set(&key, Bytes::from("v"), 0, Default::default()).await }
    });
    stored.unwrap();
    assert_eq!(relay.accepted(), 1, "B connected to S");
    let read = thread_a.run({
        let (a, key) = (a.clone(), key.clone());
        move || async move { a.get(&key).await }
    });
    assert_eq!(read.unwrap().unwrap().value, "v");
    assert_eq!(relay.accepted(), 2, "A connected to S");

    // A blip between A and S: A's traffic to S is held, and so is that of any connection
    // opened later (A's probe's), so S stays down until the test lets it back.
    relay.stall(1);
    relay.stall_new();
    relay.count(&format!("delete {reset_key}"));
    for _ in 0..3 {
        let read = thread_a.run({
            let (a, key) = (a.clone(), key.clone());
            move || async move { a.get(&key).await }
        });
        assert!(read.is_err(), "A's read times out: {read:?}");
    }
    assert!(a.is_server_down(0), "A marked S down");
    assert!(b.is_server_down(0), "B sees S down at once");
    assert!(!a.is_server_down(1) && !b.is_server_down(1));

    // B's calls for S's keys fail fast: nothing is sent.
    let (read, took) = thread_b.run({
        let (b, key) = (b.clone(), key.clone());
        move || async move {
            let started = Instant::now();
            let read = b.get(&key).await;
            (read, started.elapsed())
        }
    });
    assert!(
        matches!(
            read,
            Err(BackendError::Unreachable {
                reason: UnreachableReason::MarkedDown,
                ..
            })
        ),
        "B fails fast on S: {read:?}"
    );
    assert!(took < Duration::from_millis(50), "{took:?}");
    assert!(!b.is_available(&key));
    assert_eq!(
        (a.outages(), b.outages()),
        (1, 1),
        "one outage, seen by both"
    );

    // S answers A again: one probe resets it once, and it is back for both.
    relay.release();
    until("S is back for A and B", || {
        !a.is_server_down(0) && !b.is_server_down(0)
    });
    assert_eq!(relay.seen(), 1, "S was reset once");
    assert_eq!((a.outages(), b.outages()), (1, 1));
    for (worker, backend) in [(&thread_a, &a), (&thread_b, &b)] {
        let read = worker.run({
            let (backend, key) = (backend.clone(), key.clone());
            move || async move { backend.get(&key).await }
        });
        assert_eq!(read.unwrap().unwrap().value, "v", "S serves again");
    }
    // Still one reset: no second probe ran for the same outage.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(relay.seen(), 1);
}

/// The probe runs on the runtime of the thread that marked the server down; when that
/// runtime ends (the thread stopped) with the server still down, the next call another
/// thread makes to the server starts a probe of its own, and the server comes back.
#[test]
fn a_probe_ended_with_its_thread_is_taken_over() {
    let Some(s) = Memcached::start("per_thread_health::takeover") else {
        return;
    };
    let Some(t) = Memcached::start("per_thread_health::takeover") else {
        return;
    };
    let net = Worker::start("relay");
    let relay = net.run({
        let target = s.addr();
        move || Relay::start(target)
    });
    let a = builder(&relay, &t).build().unwrap();
    let b = a.sibling();
    let key = key_on(&a, 0);
    let thread_a = Worker::start("a");
    let read = thread_a.run({
        let (a, key) = (a.clone(), key.clone());
        move || async move { a.get(&key).await }
    });
    read.unwrap();
    // Every connection to S stalls; A marks S down and probes it, in vain.
    relay.stall(0);
    relay.stall_new();
    for _ in 0..3 {
        let read = thread_a.run({
            let (a, key) = (a.clone(), key.clone());
            move || async move { a.get(&key).await }
        });
        assert!(read.is_err(), "{read:?}");
    }
    assert!(b.is_server_down(0), "down for B too");
    std::thread::sleep(Duration::from_millis(50));
    // A's thread stops: its runtime, and the probe on it, end.
    drop(thread_a);
    drop(a);
    relay.release();
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.is_server_down(0), "nobody probes S");

    // B's next call for S's keys fails fast, and starts a probe on B's runtime.
    let thread_b = Worker::start("b");
    let read = thread_b.run({
        let (b, key) = (b.clone(), key.clone());
        move || async move { b.get(&key).await }
    });
    assert!(read.is_err(), "{read:?}");
    until("S is back for B", || !b.is_server_down(0));
    let read = thread_b.run({
        let (b, key) = (b.clone(), key.clone());
        move || async move { b.get(&key).await }
    });
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(b.outages(), 1);
}

const HOST: &str = "per-thread.example";

use support::versioned::Svc;

/// One thread's cache: an origin whose pages say which version of the data they were
/// produced from, behind a layer over `backend`.
#[derive(Clone)]
struct Cache {
    svc: Svc,
    layer: MemcacheLayer<TcpBackend>,
}

impl Cache {
    fn new(backend: TcpBackend, namespace: &str, version: &Arc<AtomicU64>) -> Self {
        let layer = MemcacheLayer::new(backend)
            .namespace(namespace)
            .mode(CacheMode::Origin);
        let svc = support::versioned::service(&layer, version);
        Cache { svc, layer }
    }

    /// GET `path` on the test host on `worker`, and wait for the stores it makes: the
    /// body, and whether it was a hit.
    fn get(&self, worker: &Worker, path: &str) -> (String, bool) {
        let (cache, path) = (self.clone(), path.to_string());
        worker.run(move || async move {
            let (body, status) =
                support::versioned::get(&cache.svc, &format!("http://{HOST}{path}")).await;
            cache.layer.background().idle().await;
            (body, status.contains("; hit"))
        })
    }
}

/// The scenario end to end: two threads of one proxy, each with its cache layer
/// over its own sibling. Thread A's connection to server S stalls (a blip between A and
/// S), so A's namespace purge marks S down and skips it ("it is reset before it serves
/// again") and returns `Ok`. Thread B, whose connection to S is fine, must not serve S's
/// pages from before the purge, neither while S is down nor after its reset.
#[test]
fn a_purge_that_skipped_a_server_holds_on_every_thread() {
    let Some(s) = Memcached::start("per_thread_health::purge") else {
        return;
    };
    let Some(t) = Memcached::start("per_thread_health::purge") else {
        return;
    };
    let net = Worker::start("relay");
    let relay = net.run({
        let target = s.addr();
        move || Relay::start(target)
    });
    let ns = "per-thread-purge";
    let a = builder(&relay, &t).build().unwrap();
    let b = a.sibling();
    // URLs whose primary keys live on S.
    let paths: Vec<String> = (0..10_000)
        .map(|i| format!("/p{i}"))
        .filter(|path| {
            let key = build_key(Some(ns), &format!("GET http://{HOST}{path}"));
            a.server_for_key(&key) == Some(0)
        })
        .take(4)
        .collect();
    let version = Arc::new(AtomicU64::new(0));
    let (thread_a, thread_b) = (Worker::start("a"), Worker::start("b"));
    let cache_a = Cache::new(a.clone(), ns, &version);
    let cache_b = Cache::new(b.clone(), ns, &version);

    // B fills S's URLs at version 0 (B's connection to S is the relay's first).
    for path in &paths {
        assert_eq!(cache_b.get(&thread_b, path).0, format!("{path} v0"));
    }
    for path in &paths {
        assert!(cache_b.get(&thread_b, path).1, "{path} stored by B");
    }
    assert_eq!(relay.accepted(), 1, "B's one connection to S");
    // A reads them too (hits: its connection to S is the relay's second).
    for path in &paths {
        assert!(cache_a.get(&thread_a, path).1, "{path} a hit for A");
    }
    assert_eq!(relay.accepted(), 2, "A's one connection to S");

    // A blip between A and S: A's traffic to S is held, and so is that of any connection
    // opened later (A's probe's), so S stays down until the test lets it back.
    relay.stall(1);
    relay.stall_new();

    // The data changes; A purges the namespace: S misses the write and is marked down,
    // the purge returns Ok (T took it).
    version.store(1, Ordering::SeqCst);
    let purged = thread_a.run({
        let purger = cache_a.layer.purger();
        move || async move { purger.purge_namespace().await }
    });
    purged.expect("the purge reached or marked down every server");
    assert!(a.is_server_down(0), "A marked S down");

    // B, whose own connection to S is fine, must not answer S's old pages.
    let mut stale = Vec::new();
    for path in &paths {
        let (body, _) = cache_b.get(&thread_b, path);
        if body != format!("{path} v1") {
            stale.push(format!("B while S is down, {path}: {body}"));
        }
    }

    // S comes back (reset once, for both), and neither thread answers the old pages.
    relay.release();
    until("S is back for A and B", || {
        !a.is_server_down(0) && !b.is_server_down(0)
    });
    for (who, worker, cache) in [("A", &thread_a, &cache_a), ("B", &thread_b, &cache_b)] {
        for path in &paths {
            let (body, _) = cache.get(worker, path);
            if body != format!("{path} v1") {
                stale.push(format!("{who} after S is back, {path}: {body}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "produced before a namespace purge that returned Ok, served after it: {stale:?}"
    );
}
