//! Shared helpers for the integration tests: a private memcached per test.
#![allow(dead_code)] // each test crate uses a different part of this module

pub mod conformance;
pub mod db;
pub mod desync;
pub mod fake_memcached;
pub mod flood;
pub mod h2_client;
pub mod h2_frames;
pub mod held_writes;
pub mod live_stream;
pub mod lossy_network;
pub mod no_store_flight;
pub mod nutcracker;
pub mod origin;
pub mod origin_places;
pub mod paced_origin;
pub mod path_origin;
pub mod personal;
pub mod proxy;
pub mod raw_http;
pub mod refused_writes;
pub mod scripted_service;
pub mod seeded;
pub mod seeds;
pub mod skewed_clock;
pub mod stand_in;
pub mod versioned;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A memcached process of our own on a free loopback port, stopped when dropped.
pub struct Memcached {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
}

/// Whether the environment demands memcached (CI sets `MEMCACHED_REQUIRED=1`).
pub fn memcached_required() -> bool {
    std::env::var("MEMCACHED_REQUIRED").is_ok_and(|v| v == "1")
}

fn binary_available() -> bool {
    Command::new("memcached")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A `TcpBackend` for a fake server at `addr`: one connection, `timeout` for connecting
/// and for each reply, and a failure threshold no test reaches (the server is never
/// marked down, so every call reaches it).
#[cfg(feature = "tcp")]
pub fn one_connection_backend(
    addr: &str,
    timeout: Duration,
) -> tower_memcache::backend::TcpBackend {
    one_connection_backend_with(addr, timeout, timeout, 1000)
}

/// [`one_connection_backend`] with its own connect timeout and failure threshold.
#[cfg(feature = "tcp")]
pub fn one_connection_backend_with(
    addr: &str,
    timeout: Duration,
    connect_timeout: Duration,
    failure_threshold: u32,
) -> tower_memcache::backend::TcpBackend {
    tower_memcache::backend::TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .failure_threshold(failure_threshold)
        .build()
        .unwrap()
}

/// A `TcpBackend` on real memcached servers for tests of what memcached stores and
/// answers, not of how calls fail: a 2 s reply timeout instead of the default 100 ms, so
/// a loaded machine (CI's two cores) cannot turn a slow reply (a megabyte stored, a fresh
/// server's first slab page) into an error the test reads as a wrong answer.
#[cfg(feature = "tcp")]
pub fn patient_backend<I, S>(servers: I) -> tower_memcache::backend::TcpBackend
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    tower_memcache::backend::TcpBackend::builder()
        .servers(servers)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Memcached {
    /// Starts memcached, or returns `None` after printing a skip line when the binary is
    /// missing. With `MEMCACHED_REQUIRED=1` a missing binary fails the test instead.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with_args(test, &[])
    }

    /// [`Memcached::start`] with extra command-line arguments (e.g. `-I 2m`).
    pub fn start_with_args(test: &str, args: &[&str]) -> Option<Self> {
        if !binary_available() {
            assert!(
                !memcached_required(),
                "{test}: MEMCACHED_REQUIRED=1 but no memcached binary on PATH \
                 (install it: apt-get install -y memcached)"
            );
            eprintln!("SKIP {test}: memcached binary not found (apt-get install -y memcached)");
            return None;
        }
        // A free port can be taken between our check and memcached's bind; try again.
        for _ in 0..10 {
            let mut server = Memcached {
                child: None,
                port: free_port(),
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("{test}: could not start memcached on a free port");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Empties it (`flush_all`), behind every client's back.
    pub fn flush_all(&self) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(self.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"flush_all\r\n").unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"OK\r\n");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while it runs (for SIGSTOP and SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the process. After SIGSTOP, waits (2 s at most) until the kernel
    /// shows it stopped: the signal is delivered asynchronously, and a request sent right
    /// after could still be answered.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.pid().expect("running")).unwrap();
        kill(Pid::from_raw(pid), signal).unwrap();
        if signal == Signal::SIGSTOP {
            let stat = format!("/proc/{pid}/stat");
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let state = std::fs::read_to_string(&stat).unwrap_or_default();
                // `pid (comm) S ...`: the state follows the command's closing parenthesis.
                if state
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new process on the same port after [`Memcached::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("memcached did not restart on port {}", self.port);
    }

    /// Spawns on `self.port` and waits until it accepts connections; false if it exited.
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("memcached");
        command
            .args([
                "-l",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
            ])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            // memcached refuses to run as root unless told which user to be.
            command.args(["-u", "root"]);
        }
        let mut child = command.spawn().expect("spawn memcached");
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // exited: most likely the port was taken
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a private memcached or returns from the test (after a skip line).
#[macro_export]
macro_rules! memcached_or_skip {
    ($test:expr) => {
        match $crate::support::Memcached::start($test) {
            Some(server) => server,
            None => return,
        }
    };
    ($test:expr, $($arg:expr),+) => {
        match $crate::support::Memcached::start_with_args($test, &[$($arg),+]) {
            Some(server) => server,
            None => return,
        }
    };
}

/// Inside `impl Backend for Wrapper`, forwards the named methods to `self.inner`, so that a
/// test's failure-injecting wrapper spells out only the methods it changes. Paths are
/// absolute: the caller needs no imports for them.
#[macro_export]
macro_rules! forward_to_inner {
    ($($method:ident),+ $(,)?) => {
        $($crate::forward_to_inner!(@ $method);)+
    };
    (@ get) => {
        async fn get(
            &self,
            key: &str,
        ) -> Result<Option<tower_memcache::backend::Item>, tower_memcache::backend::BackendError>
        {
            self.inner.get(key).await
        }
    };
    (@ get_many) => {
        async fn get_many(
            &self,
            keys: &[&str],
        ) -> Result<
            std::collections::HashMap<String, tower_memcache::backend::Item>,
            tower_memcache::backend::BackendError,
        > {
            self.inner.get_many(keys).await
        }
    };
    (@ server_of) => {
        fn server_of(&self, route: &str) -> Option<usize> {
            self.inner.server_of(route)
        }
        // Goes with `server_of`: what is remembered per server is forgotten after an outage.
        fn outages(&self) -> u64 {
            self.inner.outages()
        }
    };
    (@ set) => {
        async fn set(
            &self,
            key: &str,
            value: bytes::Bytes,
            flags: u32,
            lifetime: tower_memcache::backend::Lifetime,
        ) -> Result<(), tower_memcache::backend::BackendError> {
            self.inner.set(key, value, flags, lifetime).await
        }
    };
    (@ add) => {
        async fn add(
            &self,
            key: &str,
            value: bytes::Bytes,
            flags: u32,
            lifetime: tower_memcache::backend::Lifetime,
        ) -> Result<bool, tower_memcache::backend::BackendError> {
            self.inner.add(key, value, flags, lifetime).await
        }
    };
    (@ cas) => {
        async fn cas(
            &self,
            key: &str,
            value: bytes::Bytes,
            flags: u32,
            lifetime: tower_memcache::backend::Lifetime,
            cas: u64,
        ) -> Result<tower_memcache::backend::CasOutcome, tower_memcache::backend::BackendError>
        {
            self.inner.cas(key, value, flags, lifetime, cas).await
        }
    };
    (@ delete) => {
        async fn delete(&self, key: &str) -> Result<bool, tower_memcache::backend::BackendError> {
            self.inner.delete(key).await
        }
    };
    (@ touch) => {
        async fn touch(
            &self,
            key: &str,
            lifetime: tower_memcache::backend::Lifetime,
        ) -> Result<bool, tower_memcache::backend::BackendError> {
            self.inner.touch(key, lifetime).await
        }
    };
    (@ incr) => {
        async fn incr(
            &self,
            key: &str,
            delta: u64,
        ) -> Result<Option<u64>, tower_memcache::backend::BackendError> {
            self.inner.incr(key, delta).await
        }
    };
    (@ flush_all) => {
        async fn flush_all(&self) -> Result<(), tower_memcache::backend::BackendError> {
            self.inner.flush_all().await
        }
    };
    (@ stats) => {
        async fn stats(
            &self,
        ) -> Result<Vec<tower_memcache::backend::ServerStats>, tower_memcache::backend::BackendError>
        {
            self.inner.stats().await
        }
    };
}

/// Runs each `async fn scenario<B: Backend>(backend: B)` as two tests: `memory::scenario`
/// on a fresh `MemoryBackend`, and `tcp::scenario` on a private memcached (skipped, or
/// failed with `MEMCACHED_REQUIRED=1`, when there is none). `$suite` names the test file
/// in skip lines.
#[macro_export]
macro_rules! on_every_backend {
    ($suite:literal; $($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(tower_memcache::backend::MemoryBackend::new()).await;
                }
            )*
        }

        /// The same scenarios with a near tier in front of `MemoryBackend` (see
        /// `support::layer`): what a test sees must not change.
        mod near {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let _near = $crate::support::NearTier::on();
                    super::$scenario(tower_memcache::backend::MemoryBackend::new()).await;
                }
            )*
        }

        #[cfg(feature = "tcp")]
        mod tcp {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let server = $crate::memcached_or_skip!(
                        concat!($suite, "::tcp::", stringify!($scenario))
                    );
                    // The scenarios check what the cache does, not how it fails open: a
                    // timeout well above the default 100 ms keeps a loaded machine (CI's
                    // two cores running tests in parallel) from turning a slow reply into
                    // a bypass that changes the counts they assert.
                    let backend = tower_memcache::backend::TcpBackend::builder()
                        .server(server.addr())
                        .timeout(std::time::Duration::from_secs(2))
                        .build();
                    super::$scenario(backend.unwrap()).await;
                }
            )*
        }
    };
}

thread_local! {
    static NEAR_TIER: std::cell::RefCell<Option<tower_memcache::cache::NearCache>> =
        const { std::cell::RefCell::new(None) };
}

/// While alive, `layer` puts a near tier (one for the test, shared by its layers as by
/// one process's threads) in front of every layer the test thread builds. The scenarios
/// of `on_every_backend!` run once this way: everything they assert must hold with it.
pub struct NearTier(());

impl NearTier {
    pub fn on() -> Self {
        let near = tower_memcache::cache::NearCache::new(16 << 20, Duration::from_secs(5));
        NEAR_TIER.with(|slot| *slot.borrow_mut() = Some(near));
        Self(())
    }

    /// Whether the running test has a near tier.
    pub fn is_on() -> bool {
        NEAR_TIER.with(|slot| slot.borrow().is_some())
    }
}

impl Drop for NearTier {
    fn drop(&mut self) {
        NEAR_TIER.with(|slot| *slot.borrow_mut() = None);
    }
}

/// A `Cache-Status` as the scenarios compare it: with a near tier (`NearTier::on`), a near
/// hit reads as any hit (they assert what a client sees of the cache, wherever the entry
/// was kept).
pub fn as_seen(cache_status: &str) -> &str {
    if NearTier::is_on() {
        cache_status
            .strip_suffix("; detail=near")
            .unwrap_or(cache_status)
    } else {
        cache_status
    }
}

/// `MemcacheLayer::new(backend)`, with the test's near tier when it has one
/// (`NearTier::on`).
pub fn layer<B: tower_memcache::backend::Backend>(backend: B) -> tower_memcache::MemcacheLayer<B> {
    let layer = tower_memcache::MemcacheLayer::new(backend);
    match NEAR_TIER.with(|slot| slot.borrow().clone()) {
        Some(near) => layer.near_cache(near),
        None => layer,
    }
}

/// What a test watches of a layer: its counters, and its background work to wait for.
#[derive(Clone)]
pub struct Watch {
    stats: tower_memcache::cache::CacheStats,
    background: tower_memcache::cache::Background,
}

impl Watch {
    pub fn of<B>(layer: &tower_memcache::MemcacheLayer<B>) -> Self
    where
        B: tower_memcache::backend::Backend,
    {
        Self {
            stats: layer.stats(),
            background: layer.background(),
        }
    }

    pub fn snapshot(&self) -> tower_memcache::cache::StatsSnapshot {
        self.stats.snapshot()
    }

    /// Waits until the layer's background work (stores, refreshes) is done.
    pub async fn settled(&self) {
        tokio::time::timeout(Duration::from_secs(5), self.background.idle())
            .await
            .expect("background work did not finish within 5 s");
    }
}

/// The layer stores in the background: waits for that work to finish, then checks that
/// at least `n` stores happened.
pub async fn stores(watch: &Watch, n: u64) {
    watch.settled().await;
    let snapshot = watch.snapshot();
    assert!(snapshot.stores >= n, "only {snapshot:?}");
}

/// A response read to its end: what the HTTP-level suites assert on.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// A header as text (`None` when absent).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// `Cache-Status`, or `""`. With a near tier (`NearTier::on`) a near hit reads as any
    /// hit: the scenarios assert what a client sees of the cache, wherever the entry was.
    pub fn cache_status(&self) -> &str {
        as_seen(self.header("cache-status").unwrap_or(""))
    }
}

/// Sends `method url` with `headers` through `service` and reads the response to its end.
pub async fn send<S, B>(
    service: &S,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer
where
    S: tower::Service<http::Request<()>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    send_with(service, method, url, headers, ()).await
}

/// [`send`] of a GET for an axum app (its requests carry axum's `Body`).
#[cfg(feature = "axum")]
pub async fn send_axum(app: &axum::Router, url: &str, headers: &[(&str, &str)]) -> Answer {
    send_with(
        app,
        http::Method::GET,
        url,
        headers,
        axum::body::Body::empty(),
    )
    .await
}

/// [`send`] with a request body of the service's type.
async fn send_with<S, R, B>(
    service: &S,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: R,
) -> Answer
where
    S: tower::Service<http::Request<R>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let response = service.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `Cache-Status` of a fresh hit.
pub const HIT: &str = "tower-memcache; hit";

/// Asserts that a `Cache-Status` says fresh hit.
#[track_caller]
pub fn assert_hit(cache_status: &str) {
    assert_eq!(cache_status, HIT);
}

/// Asserts that a `Cache-Status` says anything but a fresh hit.
#[track_caller]
pub fn assert_not_hit(cache_status: &str) {
    assert_ne!(cache_status, HIT);
}

/// Asserts that a `Cache-Status` says hit on a stale entry (`ttl` below zero).
#[track_caller]
pub fn assert_stale_hit(cache_status: &str) {
    assert!(
        cache_status.starts_with("tower-memcache; hit; ttl=-"),
        "{cache_status}"
    );
}

/// Bounds a test's work: none may hang. Fails after 60 s, naming `what`.
pub async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 60 s"))
}

/// Polls `done` every 10 ms until it holds; fails after 10 s, naming `what`.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, whatever the
/// order of its labels; `None` when there is no such sample.
pub fn prometheus_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let mut found: Vec<String> = label_text
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            found.sort();
            (metric == name && found == wanted).then(|| value.parse().ok())?
        })
}

/// `text` with every non-ASCII byte percent-encoded, as a client sends it.
pub fn non_ascii_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
