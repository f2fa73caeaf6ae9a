//! `TcpBackend` against its peers, against one real memcached, in the same run.
//!
//! Measures get and set throughput with 1 KiB values at 1 and 64 concurrent tasks for
//! `TcpBackend` and for the peer crates `async-memcached` and `memcache`, each used the way
//! its documentation recommends, plus the client's CPU time per operation.
//!
//! ```text
//! cargo bench --bench tcp
//! BENCH_SECONDS=5 BENCH_ROUNDS=5 cargo bench --bench tcp
//! ```
//!
//! A plain `fn main` (`harness = false`) rather than criterion: criterion times one
//! closure call after another, while this measures many tasks running concurrently for a
//! fixed time, and the process's CPU time (`getrusage(RUSAGE_SELF)`, user + system, every
//! thread of the process: the tokio workers, the connections' tasks, the peers' threads)
//! over exactly that window. memcached runs as a child process and is not counted.
//!
//! The bench starts its own memcached (`memcached -l 127.0.0.1 -p PORT -U 0 -t 2`, as the
//! integration tests do) on a free loopback port and kills it at the end; without a
//! `memcached` binary it prints a skip line and exits 0.
//!
//! Each configuration (client × get/set × 1/64 tasks) connects, warms up for a moment,
//! counts the connections it holds through memcached's `curr_connections`, then runs for
//! `BENCH_SECONDS` (default 2) while successful operations are counted. The clients take
//! turns in rounds (`BENCH_ROUNDS`, default 3), each round running every configuration
//! once in a rotated order, and the table reports the median per configuration, so a noisy
//! neighbour on a shared machine hurts all clients alike.
//!
//! The clients:
//!
//! - `TcpBackend` with `connections_per_server(4)`: all tasks share one cloned handle and
//!   at most 4 pipelined connections. The call timeout is raised to 1 s (the peers have
//!   none) so that a scheduling hiccup on a busy 2-core machine is not counted as a
//!   failure.
//! - `async-memcached`: its `Client` is one connection driven through `&mut self`, so, as
//!   its examples and benches do, one `Client::new("tcp://127.0.0.1:PORT")` per task.
//! - `memcache`: the synchronous client, as its README shows
//!   (`memcache://127.0.0.1:PORT?timeout=10&tcp_nodelay=true`, binary protocol), built
//!   with `Client::builder().with_max_pool_size(tasks)` so that each of the `tasks` OS
//!   threads sharing it has a pooled connection. r2d2 checks a connection with a `version`
//!   round trip on every checkout unless told otherwise, and `memcache` leaves that on; the
//!   row `memcache (no check)` builds the same r2d2 pool with `test_on_check_out(false)`
//!   through `Client::with_pool`, as a reference for the protocol cost alone. It is shown
//!   but not used for the targets.
//!
//! `BENCH_OPS=N` runs each configuration for exactly `N` operations per task instead, with
//! no warm-up and no time limit: for instruction counts under valgrind, where the
//! difference between two `N` (say 5000 and 1000) divided by their difference is the
//! instructions per operation, set-up excluded:
//!
//! ```text
//! BENCH_OPS=5000 BENCH_ROUNDS=1 BENCH_FILTER="TcpBackend get 1" \
//!     valgrind --tool=callgrind target/release/deps/tcp-HASH
//! ```
//!
//! Targets (from the issue): at 64 tasks, `TcpBackend` reaches at least 1.1× the best
//! peer's throughput while holding at most 4 connections, and uses less CPU per operation
//! than every peer. The bench prints whether each is met; it never fails.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_memcached::AsciiProtocol;
use bytes::Bytes;
use nix::sys::resource::{UsageWho, getrusage};
use tower_memcache::backend::{Backend, Lifetime, TcpBackend};

const VALUE_LEN: usize = 1024;
const KEYS: usize = 1000;
const TASK_COUNTS: [usize; 2] = [1, 64];
const TCP_CONNECTIONS: usize = 4;
const WARM_UP: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// memcached
// ---------------------------------------------------------------------------------------

/// A memcached of our own on a free loopback port, killed when dropped.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    fn start() -> Option<Self> {
        let available = Command::new("memcached")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !available {
            return None;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let mut command = Command::new("memcached");
            command
                .args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
                .args(["-t", "2"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if root {
                command.args(["-u", "root"]);
            }
            let mut server = Memcached {
                child: command.spawn().expect("spawn memcached"),
                port,
            };
            let addr: SocketAddr = server.addr().parse().expect("addr");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: the port was most likely taken meanwhile
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Some(server);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start memcached on a free port");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One short-lived text-protocol exchange on a connection of its own.
    fn ask(&self, command: &str) -> Vec<String> {
        let mut stream = TcpStream::connect(self.addr()).expect("connect to memcached");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("write");
        let mut lines = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line.expect("read");
            let done = line == "END" || line.starts_with("VERSION") || line.contains("ERROR");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    fn version(&self) -> String {
        self.ask("version").concat().replace("VERSION ", "")
    }

    /// `curr_connections`, which counts this query's own connection and the listener.
    fn curr_connections(&self) -> i64 {
        self.ask("stats")
            .iter()
            .find_map(|line| line.strip_prefix("STAT curr_connections "))
            .and_then(|n| n.trim().parse().ok())
            .expect("curr_connections in stats")
    }

    /// Waits (briefly) until the connections of the previous configuration are gone.
    fn settle(&self, baseline: i64) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.curr_connections() > baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Configurations and measurement
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Tcp,
    AsyncMemcached,
    Memcache,
    MemcacheNoCheck,
}

impl Client {
    const ALL: [Client; 4] = [
        Client::Tcp,
        Client::AsyncMemcached,
        Client::Memcache,
        Client::MemcacheNoCheck,
    ];

    fn name(self) -> &'static str {
        match self {
            Client::Tcp => "TcpBackend",
            Client::AsyncMemcached => "async-memcached",
            Client::Memcache => "memcache",
            Client::MemcacheNoCheck => "memcache (no check)",
        }
    }

    /// Peers the targets are measured against (used as their docs recommend).
    fn is_target_peer(self) -> bool {
        matches!(self, Client::AsyncMemcached | Client::Memcache)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Set,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    client: Client,
    op: Op,
    tasks: usize,
}

impl Config {
    fn label(&self) -> String {
        format!("{} {} {}", self.client.name(), self.op.name(), self.tasks)
    }
}

/// What the workers look at between operations.
const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

struct Phase(AtomicU8);

impl Default for Phase {
    fn default() -> Self {
        Phase(AtomicU8::new(WARMING))
    }
}

impl Phase {
    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }
}

/// One worker's tally: operations that succeeded, and failed, while measuring.
#[derive(Clone, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    /// Records an operation that just finished; returns false once the run is over.
    fn record(&mut self, phase: &Phase, outcome: Result<(), String>) -> bool {
        match (phase.get(), outcome) {
            (MEASURING, Ok(())) => self.ok += 1,
            (MEASURING, Err(err)) => {
                self.failed += 1;
                self.first_error.get_or_insert(err);
            }
            (STOPPED, _) => return false,
            _ => {}
        }
        true
    }

    fn sum(tallies: impl IntoIterator<Item = Tally>) -> Tally {
        tallies.into_iter().fold(Tally::default(), |a, b| Tally {
            ok: a.ok + b.ok,
            failed: a.failed + b.failed,
            first_error: a.first_error.or(b.first_error),
        })
    }
}

/// A get's outcome: a 1 KiB value, or what went wrong.
fn fetched<T, E: std::fmt::Debug>(
    result: Result<Option<T>, E>,
    len: impl Fn(&T) -> usize,
) -> Result<(), String> {
    match result {
        Ok(Some(value)) if len(&value) == VALUE_LEN => Ok(()),
        Ok(Some(value)) => Err(format!("value of {} bytes", len(&value))),
        Ok(None) => Err("miss".to_string()),
        Err(err) => Err(format!("{err:?}")),
    }
}

/// A set's outcome.
fn stored<E: std::fmt::Debug>(result: Result<(), E>) -> Result<(), String> {
    result.map_err(|err| format!("{err:?}"))
}

/// One measured run of one configuration.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops_per_sec: f64,
    cpu_us_per_op: f64,
    failed: u64,
    connections: i64,
}

/// The process's CPU time so far (user + system, all threads).
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let user = usage.user_time();
    let system = usage.system_time();
    let micros = (user.tv_sec() + system.tv_sec()) as u64 * 1_000_000
        + (user.tv_usec() + system.tv_usec()) as u64;
    Duration::from_micros(micros)
}

struct Window {
    elapsed: Duration,
    cpu: Duration,
    connections: i64,
}

/// Runs on the main thread while the workers loop: warm-up, connection count, then the
/// measured window; leaves the workers told to stop.
fn measure(phase: &Phase, memcached: &Memcached, baseline: i64, duration: Duration) -> Window {
    std::thread::sleep(WARM_UP);
    let connections = memcached.curr_connections() - baseline;
    let cpu_start = cpu_time();
    let start = Instant::now();
    phase.set(MEASURING);
    std::thread::sleep(duration);
    phase.set(STOPPED);
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    Window {
        elapsed,
        cpu,
        connections,
    }
}

struct Bench {
    memcached: Memcached,
    baseline: i64,
    runtime: tokio::runtime::Runtime,
    keys: Arc<Vec<String>>,
    value: Bytes,
    duration: Duration,
    /// `BENCH_OPS`: a fixed number of operations per task instead of a fixed time.
    ops_per_task: Option<usize>,
}

impl Bench {
    fn run(&self, config: Config) -> Sample {
        self.memcached.settle(self.baseline);
        let phase = Arc::new(Phase::default());
        if self.ops_per_task.is_some() {
            // Every operation counts, from the first.
            phase.set(MEASURING);
        }
        let (tally, window) = match config.client {
            Client::Tcp => self.run_tcp(config, &phase),
            Client::AsyncMemcached => self.run_async_memcached(config, &phase),
            Client::Memcache | Client::MemcacheNoCheck => self.run_memcache(config, &phase),
        };
        if let Some(err) = &tally.first_error {
            eprintln!(
                "{}: {} failed operations, the first: {err}",
                config.label(),
                tally.failed
            );
        }
        let ops = tally.ok.max(1) as f64;
        Sample {
            ops_per_sec: tally.ok as f64 / window.elapsed.as_secs_f64(),
            cpu_us_per_op: window.cpu.as_secs_f64() * 1e6 / ops,
            failed: tally.failed,
            connections: window.connections,
        }
    }

    /// How many operations each worker runs: `BENCH_OPS`, or until told to stop.
    fn ops_limit(&self) -> usize {
        self.ops_per_task.unwrap_or(usize::MAX)
    }

    /// The measured window: until the workers are done with `BENCH_OPS`, else the
    /// warm-up and `BENCH_SECONDS`. `join` waits for the workers.
    fn window<T>(&self, phase: &Phase, join: impl FnOnce() -> T) -> (T, Window) {
        if self.ops_per_task.is_none() {
            let window = measure(phase, &self.memcached, self.baseline, self.duration);
            return (join(), window);
        }
        let cpu_start = cpu_time();
        let start = Instant::now();
        let joined = join();
        let window = Window {
            elapsed: start.elapsed(),
            cpu: cpu_time() - cpu_start,
            connections: self.memcached.curr_connections() - self.baseline,
        };
        (joined, window)
    }

    /// Key `i` for worker `task`: workers start spread over the key set.
    fn key(&self, task: usize, i: usize) -> &str {
        &self.keys[(task * 131 + i) % KEYS]
    }

    fn run_tcp(&self, config: Config, phase: &Arc<Phase>) -> (Tally, Window) {
        let backend = TcpBackend::builder()
            .server(self.memcached.addr())
            .connections_per_server(TCP_CONNECTIONS)
            .timeout(Duration::from_secs(1))
            .build()
            .expect("TcpBackend");
        let limit = self.ops_limit();
        let workers: Vec<_> = (0..config.tasks)
            .map(|task| {
                let backend = backend.clone();
                let phase = Arc::clone(phase);
                let keys = Arc::clone(&self.keys);
                let value = self.value.clone();
                self.runtime.spawn(async move {
                    let mut tally = Tally::default();
                    for i in 0..limit {
                        let key = &keys[(task * 131 + i) % KEYS];
                        let outcome = match config.op {
                            Op::Get => fetched(backend.get(key).await, |item| item.value.len()),
                            Op::Set => {
                                stored(backend.set(key, value.clone(), 0, Lifetime::NEVER).await)
                            }
                        };
                        if !tally.record(&phase, outcome) {
                            break;
                        }
                    }
                    tally
                })
            })
            .collect();
        self.measure_tasks(phase, workers)
    }

    /// Measures the phase while the spawned workers run, then adds up their tallies.
    fn measure_tasks(
        &self,
        phase: &Arc<Phase>,
        workers: Vec<tokio::task::JoinHandle<Tally>>,
    ) -> (Tally, Window) {
        self.window(phase, || {
            self.runtime.block_on(async {
                let mut tallies = Vec::new();
                for worker in workers {
                    tallies.push(worker.await.expect("worker"));
                }
                Tally::sum(tallies)
            })
        })
    }

    fn run_async_memcached(&self, config: Config, phase: &Arc<Phase>) -> (Tally, Window) {
        let dsn = format!("tcp://{}", self.memcached.addr());
        // One client (one connection) per task, connected before the clock starts.
        let clients = self.runtime.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..config.tasks {
                clients.push(
                    async_memcached::Client::new(&dsn)
                        .await
                        .expect("async-memcached connect"),
                );
            }
            clients
        });
        let limit = self.ops_limit();
        let workers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(task, mut client)| {
                let phase = Arc::clone(phase);
                let keys = Arc::clone(&self.keys);
                let value = self.value.clone();
                let dsn = dsn.clone();
                self.runtime.spawn(async move {
                    let mut tally = Tally::default();
                    for i in 0..limit {
                        let key = &keys[(task * 131 + i) % KEYS];
                        let outcome = match config.op {
                            Op::Get => fetched(client.get(key).await, |item| {
                                item.data.as_ref().map_or(0, Vec::len)
                            }),
                            Op::Set => stored(client.set(key, &value[..], None, None).await),
                        };
                        if outcome.is_err() && client.is_closed() {
                            // A failed call closes its connection: reconnect.
                            if let Ok(fresh) = async_memcached::Client::new(&dsn).await {
                                client = fresh;
                            }
                        }
                        if !tally.record(&phase, outcome) {
                            break;
                        }
                    }
                    tally
                })
            })
            .collect();
        self.measure_tasks(phase, workers)
    }

    fn run_memcache(&self, config: Config, phase: &Arc<Phase>) -> (Tally, Window) {
        let url = format!(
            "memcache://{}?timeout=10&tcp_nodelay=true",
            self.memcached.addr()
        );
        let client = match config.client {
            Client::MemcacheNoCheck => {
                let pool = r2d2::Pool::builder()
                    .max_size(config.tasks as u32)
                    .test_on_check_out(false)
                    .build(memcache::ConnectionManager::new(
                        memcache::Url::parse(&url).expect("url"),
                    ))
                    .expect("r2d2 pool");
                memcache::Client::with_pool(pool).expect("memcache client")
            }
            _ => memcache::Client::builder()
                .add_server(url.as_str())
                .expect("memcache url")
                .with_max_pool_size(config.tasks as u32)
                .build()
                .expect("memcache client"),
        };
        let client = &client;
        let limit = self.ops_limit();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..config.tasks)
                .map(|task| {
                    scope.spawn(move || {
                        let mut tally = Tally::default();
                        for i in 0..limit {
                            let key = self.key(task, i);
                            let outcome = match config.op {
                                Op::Get => fetched(client.get::<Vec<u8>>(key), Vec::len),
                                Op::Set => stored(client.set(key, &self.value[..], 0)),
                            };
                            if !tally.record(phase, outcome) {
                                break;
                            }
                        }
                        tally
                    })
                })
                .collect();
            self.window(phase, || {
                Tally::sum(workers.into_iter().map(|w| w.join().expect("worker")))
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

struct Row {
    config: Config,
    ops_per_sec: f64,
    ops_min: f64,
    ops_max: f64,
    cpu_us_per_op: f64,
    failed: u64,
    connections: i64,
}

fn summarize(config: Config, samples: &[Sample]) -> Row {
    let ops: Vec<f64> = samples.iter().map(|s| s.ops_per_sec).collect();
    Row {
        config,
        ops_per_sec: median(ops.clone()),
        ops_min: ops.iter().copied().fold(f64::INFINITY, f64::min),
        ops_max: ops.iter().copied().fold(0.0, f64::max),
        cpu_us_per_op: median(samples.iter().map(|s| s.cpu_us_per_op).collect()),
        failed: samples.iter().map(|s| s.failed).sum(),
        connections: samples.iter().map(|s| s.connections).max().unwrap_or(0),
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let Some(memcached) = Memcached::start() else {
        println!("SKIP tcp bench: memcached binary not found (apt-get install -y memcached)");
        return;
    };
    let seconds: f64 = env_number("BENCH_SECONDS", 2.0);
    let rounds: usize = env_number::<usize>("BENCH_ROUNDS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("bench:{i:04}")).collect());
    let value = Bytes::from(vec![b'v'; VALUE_LEN]);

    // memcached's own count (listener and the query's connection) before any client,
    // once the start-up probe's connection is gone.
    let baseline = {
        std::thread::sleep(Duration::from_millis(200));
        (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                memcached.curr_connections()
            })
            .min()
            .expect("five counts")
    };
    // Every key holds a 1 KiB value before anything is measured.
    runtime.block_on(async {
        let backend = TcpBackend::new([memcached.addr()]).expect("TcpBackend");
        for key in keys.iter() {
            backend
                .set(key, value.clone(), 0, Lifetime::NEVER)
                .await
                .expect("pre-populate");
        }
    });

    let bench = Bench {
        baseline,
        runtime,
        keys,
        value,
        duration: Duration::from_secs_f64(seconds),
        ops_per_task: std::env::var("BENCH_OPS").ok().and_then(|n| n.parse().ok()),
        memcached,
    };
    println!(
        "memcached {} on {} (-t 2); {} CPUs; {rounds} rounds of {seconds} s per configuration \
         after {} ms warm-up; 1 KiB values over {KEYS} keys",
        bench.memcached.version(),
        bench.memcached.addr(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        WARM_UP.as_millis(),
    );

    // Groups of configurations that differ only in the client; BENCH_FILTER="get 64"
    // keeps the configurations whose "client op tasks" label contains it.
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    let mut groups: Vec<Vec<Config>> = Vec::new();
    for op in [Op::Get, Op::Set] {
        for tasks in TASK_COUNTS {
            let group: Vec<Config> = Client::ALL
                .into_iter()
                .map(|client| Config { client, op, tasks })
                .filter(|config| config.label().contains(&filter))
                .collect();
            if !group.is_empty() {
                groups.push(group);
            }
        }
    }
    let configs: Vec<Config> = groups.concat();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        // The same configurations each round, the clients' order rotated.
        for group in &groups {
            for offset in 0..group.len() {
                let config = group[(offset + round) % group.len()];
                let sample = bench.run(config);
                eprintln!(
                    "round {}: {:<20} {} {:>2} tasks: {:>9.0} ops/s {:>6.2} µs CPU/op \
                     ({} conns, {} failed)",
                    round + 1,
                    config.client.name(),
                    config.op.name(),
                    config.tasks,
                    sample.ops_per_sec,
                    sample.cpu_us_per_op,
                    sample.connections,
                    sample.failed,
                );
                let index = configs.iter().position(|c| *c == config).expect("config");
                samples[index].push(sample);
            }
        }
    }

    let rows: Vec<Row> = configs
        .iter()
        .zip(&samples)
        .map(|(config, samples)| summarize(*config, samples))
        .collect();
    println!();
    println!(
        "| client | op | tasks | connections | ops/s (median) | ops/s (min–max) | µs CPU/op (median) | failed |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {} |",
            row.config.client.name(),
            row.config.op.name(),
            row.config.tasks,
            row.connections,
            row.ops_per_sec,
            row.ops_min,
            row.ops_max,
            row.cpu_us_per_op,
            row.failed,
        );
    }
    report_ratios(&rows);
}

/// The ratios the targets are about, for the configurations that were run.
fn report_ratios(rows: &[Row]) {
    let find = |client: Client, op: Op, tasks: usize| {
        rows.iter()
            .find(|r| r.config == Config { client, op, tasks })
    };
    println!();
    println!("Targets at 64 tasks (peers as their docs recommend: async-memcached, memcache):");
    for op in [Op::Get, Op::Set] {
        let Some(tcp) = find(Client::Tcp, op, 64) else {
            continue;
        };
        let best = Client::ALL
            .into_iter()
            .filter(|c| c.is_target_peer())
            .filter_map(|c| find(c, op, 64))
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        if let Some(best) = best {
            let ratio = tcp.ops_per_sec / best.ops_per_sec;
            println!(
                "- {} throughput: TcpBackend / best peer ({}) = {ratio:.2}× (target ≥ 1.10×, \
                 {} connections, target ≤ {TCP_CONNECTIONS}): {}",
                op.name(),
                best.config.client.name(),
                tcp.connections,
                met(ratio >= 1.1 && tcp.connections <= TCP_CONNECTIONS as i64),
            );
        }
        for peer in Client::ALL.into_iter().filter(|c| *c != Client::Tcp) {
            let Some(peer_row) = find(peer, op, 64) else {
                continue;
            };
            let ratio = tcp.cpu_us_per_op / peer_row.cpu_us_per_op;
            let verdict = if peer.is_target_peer() {
                met(ratio < 1.0)
            } else {
                "(reference only)"
            };
            println!(
                "- {} CPU/op: TcpBackend / {} = {ratio:.2} (target < 1.00): {verdict}",
                op.name(),
                peer.name(),
            );
        }
    }
    println!();
    println!("For reference, at 1 task:");
    for op in [Op::Get, Op::Set] {
        let Some(tcp) = find(Client::Tcp, op, 1) else {
            continue;
        };
        for peer in Client::ALL.into_iter().filter(|c| *c != Client::Tcp) {
            let Some(peer_row) = find(peer, op, 1) else {
                continue;
            };
            println!(
                "- {} vs {}: throughput {:.2}×, CPU/op {:.2}",
                op.name(),
                peer.name(),
                tcp.ops_per_sec / peer_row.ops_per_sec,
                tcp.cpu_us_per_op / peer_row.cpu_us_per_op,
            );
        }
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}
