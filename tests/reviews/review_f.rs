//! Review F: consistency and failure with several memcached servers, Jepsen style. Real
//! memcached processes that the tests stop, kill and restart, a TCP relay the test
//! controls (to cut one server off from one "process" only, or hold its replies), and two
//! backends and layers in one test standing for two processes sharing the servers.
//!
//! Every test is bounded in time (a few seconds) and stops what it started.

#![cfg(feature = "tcp")]

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Memcached;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_memcache::MemcacheClient;
use tower_memcache::backend::TcpBackend;
use tower_memcache::cache::{CacheMode, MemcacheLayer};
use tower_memcache::key::build_key;

use support::versioned::{Svc, service};

const HOST: &str = "review-f.example";

/// Polls `ready` every 5 ms for at most 5 s.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn layer(backend: TcpBackend, namespace: &str) -> MemcacheLayer<TcpBackend> {
    MemcacheLayer::new(backend)
        .namespace(namespace)
        .mode(CacheMode::Origin)
}

/// GET `path` on the test host: the body, and whether it was a hit.
async fn get(svc: &Svc, path: &str) -> (String, bool) {
    let (body, status) = support::versioned::get(svc, &format!("http://{HOST}{path}")).await;
    (body, status.contains("; hit"))
}

/// The primary key the layer gives `path` in `namespace` (the canonical key's formula).
fn primary_key(namespace: &str, path: &str) -> String {
    build_key(Some(namespace), &format!("GET http://{HOST}{path}"))
}

/// `count` paths whose primary keys live on server `index` for every backend given.
fn paths_on(namespace: &str, index: usize, backends: &[&TcpBackend], count: usize) -> Vec<String> {
    (0..10_000)
        .map(|i| format!("/p{i}"))
        .filter(|path| {
            let key = primary_key(namespace, path);
            backends
                .iter()
                .all(|backend| backend.server_for_key(&key) == Some(index))
        })
        .take(count)
        .collect()
}

/// A TCP relay in front of one memcached, under the test's control: it can cut off every
/// client that goes through it (a partition between those clients and the server, which
/// others reach directly), and hold the replies of a connection once a given request
/// went through it (a slow network, at a chosen moment).
struct Relay {
    addr: String,
    state: Arc<RelayState>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RelayState {
    /// Connections are dropped, new ones closed at once.
    partitioned: AtomicBool,
    /// Once a request chunk holding these bytes goes through, that connection's replies
    /// are held until released.
    hold_after: Mutex<Option<Vec<u8>>>,
    /// Connections whose replies are held now.
    holding: AtomicUsize,
    released: AtomicBool,
    release: tokio::sync::Notify,
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(RelayState::default());
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if shared.partitioned.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                let task = tokio::spawn(relay(client, server, state));
                shared.connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay {
            addr,
            state,
            accept,
        }
    }

    /// Cuts every client of the relay off the server (their connections are dropped),
    /// or lets them through again.
    fn partition(&self, on: bool) {
        self.state.partitioned.store(on, Ordering::SeqCst);
        if on {
            for task in self.state.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    /// Holds a connection's replies once a request containing `needle` went through it.
    fn hold_after(&self, needle: &[u8]) {
        *self.state.hold_after.lock().unwrap() = Some(needle.to_vec());
    }

    fn holding(&self) -> bool {
        self.state.holding.load(Ordering::SeqCst) > 0
    }

    fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
        self.state.release.notify_waiters();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.partition(true);
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<RelayState>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let hold = Arc::new(AtomicBool::new(false));
    let requests = {
        let (state, hold) = (Arc::clone(&state), Arc::clone(&hold));
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let matched = state
                    .hold_after
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|needle| chunk.windows(needle.len()).any(|w| w == needle));
                // Before the request goes on: its reply must not slip through first.
                if matched
                    && !state.released.load(Ordering::SeqCst)
                    && !hold.swap(true, Ordering::SeqCst)
                {
                    state.holding.fetch_add(1, Ordering::SeqCst);
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
            while hold.load(Ordering::SeqCst) && !state.released.load(Ordering::SeqCst) {
                let released = state.release.notified();
                if state.released.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
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

/// Process A is cut off from server S and marks it down; when it can reach S again, its
/// probe resets S (deletes the namespace generation) and only then puts it back in use.
/// Process B never lost S. Between A's reset and A putting S back, B refills URLs on S
/// under a generation it creates there; then A purges the namespace, and the purge skips
/// S as "marked down, reset before it serves again". But the reset is already behind:
/// S serves B's old pages, to both processes, after a purge that returned `Ok`.
#[tokio::test]
async fn a_purge_while_a_rejoining_server_is_being_reset_is_not_skipped() {
    let Some(s) = Memcached::start("review_f::rejoin_reset") else {
        return;
    };
    let Some(t) = Memcached::start("review_f::rejoin_reset") else {
        return;
    };
    let relay = Relay::start(s.addr()).await;
    let ns = "review-f-reset";
    // Process A reaches S through the relay; process B directly. A's timeout is long
    // enough for its probe to wait out the slow reply (with a short one, the probe gives
    // up and resets again later, which only narrows the window this test widens).
    let backend_a = TcpBackend::builder()
        .servers([relay.addr.clone(), t.addr()])
        .timeout(Duration::from_secs(3))
        .probe_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let backend_b = TcpBackend::builder()
        .servers([s.addr(), t.addr()])
        .build()
        .unwrap();
    // URLs that live on S in both processes' rings (the names differ, so the rings do).
    let paths = paths_on(ns, 0, &[&backend_a, &backend_b], 6);
    let layer_a = layer(backend_a.clone(), ns);
    let layer_b = layer(backend_b.clone(), ns);
    let version = Arc::new(AtomicU64::new(0));
    let (svc_a, svc_b) = (service(&layer_a, &version), service(&layer_b, &version));

    // A is cut off from S: a write every server must take marks S down in A only.
    relay.partition(true);
    layer_a
        .purger()
        .purge_uri(&format!("http://{HOST}/unrelated"))
        .await
        .unwrap();
    assert!(backend_a.is_server_down(0), "A marked S down");
    assert!(!backend_b.is_server_down(0), "B still uses S");

    // A reaches S again; its probe's reset is slow to answer (its delete has run on S).
    // The layer's generation key: "g:" and the md5 of the namespace and "\0generation".
    let generation_key = format!(
        "g:{}",
        tower_memcache::key::md5_hex(&[ns.as_bytes(), b"\0generation"])
    );
    relay.hold_after(format!("delete {generation_key}").as_bytes());
    relay.partition(false);
    until("A's probe resets S", || relay.holding()).await;
    assert!(backend_a.is_server_down(0), "S is not back in A yet");

    // Meanwhile B refills S's URLs from the origin at version 0.
    for path in &paths {
        assert_eq!(get(&svc_b, path).await.0, format!("{path} v0"));
    }
    layer_b.background().idle().await;
    for path in &paths {
        assert!(get(&svc_b, path).await.1, "{path} stored by B");
    }

    // The data changes and A purges the namespace.
    version.store(1, Ordering::SeqCst);
    let purger = layer_a.purger();
    let purge = tokio::spawn(async move { purger.purge_namespace().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.release();
    tokio::time::timeout(Duration::from_secs(5), purge)
        .await
        .expect("the purge returns")
        .unwrap()
        .expect("the purge reached or marked down every server");
    until("S is back in A", || !backend_a.is_server_down(0)).await;

    let mut stale = Vec::new();
    for (who, svc) in [("A", &svc_a), ("B", &svc_b)] {
        for path in &paths {
            let (body, _) = get(svc, path).await;
            if body != format!("{path} v1") {
                stale.push(format!("{who} {path}: {body}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "produced before a namespace purge that returned Ok, served after it: {stale:?}"
    );
}

/// The seed utility with namespace versioning, over three servers: its generation lives on
/// one of them, so losing that one loses every value of the namespace, not a third.
#[tokio::test]
async fn a_versioned_namespace_loses_only_the_dead_servers_share() {
    let Some(mut servers) = (0..3)
        .map(|_| Memcached::start("review_f::versioned_share"))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let backend = TcpBackend::builder()
        .servers(servers.iter().map(Memcached::addr))
        .probe_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let client = MemcacheClient::new(backend.clone())
        .with_namespace("review-f-versioned")
        .with_versioned_namespace(true);
    const KEYS: usize = 90;
    for i in 0..KEYS {
        client.set(&format!("k{i}"), &i).await;
    }
    let hits = async || {
        let mut hits = 0;
        for i in 0..KEYS {
            if client.query::<usize>(&format!("k{i}")).await == Some(i) {
                hits += 1;
            }
        }
        hits
    };
    assert_eq!(hits().await, KEYS, "everything is there");
    // Each server in turn is killed, then restarted empty; the ratio while it is gone
    // and after it came back.
    for (victim, server) in servers.iter_mut().enumerate() {
        for i in 0..KEYS {
            client.set(&format!("k{i}"), &i).await;
        }
        server.kill();
        // The first pass finds it dead (and marks it down).
        hits().await;
        let during = hits().await;
        server.restart();
        until("the restarted server is back", || {
            !backend.is_server_down(victim)
        })
        .await;
        let after = hits().await;
        // Ketama's shares of 90 keys over three servers are uneven; losing the others'
        // values too is what must not happen.
        assert!(
            during >= KEYS / 5 && after >= KEYS / 5,
            "server #{victim} dead: {during}/{KEYS} hits left, {after}/{KEYS} after its restart"
        );
    }
}

/// The seed utility with namespace versioning, over three servers: a namespace
/// invalidated while one server is stopped (marked down, its old content kept) stays
/// invalidated when that server continues, and its values are misses meanwhile while the
/// others' are not.
#[tokio::test]
async fn a_namespace_invalidated_while_a_server_was_stopped_stays_invalidated() {
    use nix::sys::signal::Signal;
    let Some(servers) = (0..3)
        .map(|_| Memcached::start("review_f::versioned_rejoin"))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let backend = TcpBackend::builder()
        .servers(servers.iter().map(Memcached::addr))
        .probe_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let ns = "review-f-stopped";
    let client = MemcacheClient::new(backend.clone())
        .with_namespace(ns)
        .with_versioned_namespace(true);
    // The server that held the generation for the whole namespace before.
    let generation_key =
        tower_memcache::key::md5_hex(&[b"tower-memcache:namespace-generation\0", ns.as_bytes()]);
    let victim = backend.server_for_key(&generation_key).unwrap();
    const KEYS: usize = 60;
    for i in 0..KEYS {
        client.set(&format!("k{i}"), &i).await;
    }
    servers[victim].signal(Signal::SIGSTOP);
    // Another namespace's invalidation marks it down (the stopped server runs that write
    // when it continues: the one below is skipped, and it never sees it).
    client
        .with_namespace("review-f-elsewhere")
        .try_invalidate_namespace()
        .await
        .unwrap();
    assert!(backend.is_server_down(victim));
    client
        .try_invalidate_namespace()
        .await
        .expect("reached or marked down every server");
    assert!(backend.is_server_down(victim));
    // New values, while it is away (its own keys fail fast: nothing stored there).
    for i in 0..KEYS {
        client.set(&format!("k{i}"), &(i + 1000)).await;
    }
    let mut answered = 0;
    for i in 0..KEYS {
        match client.query::<usize>(&format!("k{i}")).await {
            Some(v) if v == i + 1000 => answered += 1,
            None => {}
            Some(old) => panic!("k{i}: {old}, invalidated, while the server is away"),
        }
    }
    assert!(
        answered >= KEYS / 5,
        "only {answered}/{KEYS} while one is away"
    );
    servers[victim].signal(Signal::SIGCONT);
    until("the stopped server is back", || {
        !backend.is_server_down(victim)
    })
    .await;
    for i in 0..KEYS {
        if let Some(value) = client.query::<usize>(&format!("k{i}")).await {
            assert_eq!(
                value,
                i + 1000,
                "k{i}: a value from before the invalidation"
            );
        }
    }
}

/// Three servers, one stopped (silent: its connections accept and never answer): lookups
/// of URLs on the other two take no part of its timeout, and keep their hits, with or
/// without a near tier; its own URLs fail fast once it is marked down.
async fn a_silent_server_costs_only_its_share(near: bool) {
    use nix::sys::signal::Signal;
    let Some(servers) = (0..3)
        .map(|_| Memcached::start("review_f::silent_share"))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let backend = TcpBackend::builder()
        .servers(servers.iter().map(Memcached::addr))
        .probe_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let ns = if near {
        "review-f-silent-near"
    } else {
        "review-f-silent"
    };
    let mut layer = layer(backend.clone(), ns);
    if near {
        layer = layer.near_cache(tower_memcache::cache::NearCache::new(
            16 << 20,
            Duration::from_millis(200),
        ));
    }
    let svc = service(&layer, &Arc::new(AtomicU64::new(0)));
    let paths: Vec<String> = (0..60).map(|i| format!("/s{i}")).collect();
    for _ in 0..2 {
        for path in &paths {
            get(&svc, path).await;
        }
        layer.background().idle().await;
    }
    let victim = 0;
    servers[victim].signal(Signal::SIGSTOP);
    let on_victim = |path: &str| backend.server_for_key(&primary_key(ns, path)) == Some(victim);
    // Several passes, across the near tier's windows: others' URLs stay hits and fast;
    // the silent server's cost its timeout until it is marked down (the failure
    // threshold: three), then fail fast.
    let mut timed_out = Vec::new();
    for pass in 0..4 {
        let mut slow = Vec::new();
        let mut missed = Vec::new();
        for path in &paths {
            let started = Instant::now();
            let (_, hit) = get(&svc, path).await;
            let took = started.elapsed();
            if on_victim(path) {
                if took > Duration::from_millis(50) {
                    timed_out.push((pass, path.clone(), took));
                }
            } else {
                if took > Duration::from_millis(50) {
                    slow.push((path.clone(), took));
                }
                if !hit {
                    missed.push(path.clone());
                }
            }
        }
        layer.background().idle().await;
        assert!(slow.is_empty(), "pass {pass}: slow lookups {slow:?}");
        assert!(
            missed.is_empty(),
            "pass {pass}: others' URLs missed {missed:?}"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(
        timed_out.len() <= 3,
        "the silent server's URLs waited for it more than the failure threshold: {timed_out:?}"
    );
    servers[victim].signal(Signal::SIGCONT);
}

#[tokio::test]
async fn a_silent_server_costs_only_its_share_without_a_near_tier() {
    a_silent_server_costs_only_its_share(false).await;
}

#[tokio::test]
async fn a_silent_server_costs_only_its_share_with_a_near_tier() {
    a_silent_server_costs_only_its_share(true).await;
}
