//! The hit-rate benchmark: replays a Zipf-distributed request stream through
//! [`MemcacheLayer`] over the in-memory backend or a real memcached, and reports the hit
//! ratio, the calls that reached the inner service, throughput and latency percentiles.
//!
//! Every request is `GET http://bench.local/item/{k}`, built in-process and driven through
//! the service with `ServiceExt::oneshot` (no sockets except memcached's), with `k` drawn
//! from a Zipf distribution over `1..=keys`. The origin sleeps `--origin-latency-ms`, counts
//! its calls and answers a body of `--body-bytes` naming the path. The stream is generated
//! up front from `--seed`, so runs are reproducible; each run uses a fresh namespace, so
//! entries left in memcached by an earlier run do not count as hits.
//!
//! ```text
//! cargo run --release --example hit_rate -- [--keys N] [--exponent S] [--requests N]
//!     [--concurrency N] [--origin-latency-ms N] [--lifetime-secs N] [--body-bytes N]
//!     [--memcache host:port[,host:port...]] [--seed N]
//! ```
//!
//! A progress bar is drawn on stderr when it is a terminal; the report goes to stdout.
//! Example output (`cargo run --release --example hit_rate`, 2 cores):
//!
//! ```text
//! stream      100000 requests over 10000 keys, Zipf s = 1, seed 42: 8579 distinct keys
//! setup       backend memory, concurrency 64, origin latency 1 ms, lifetime 60 s, body 1024 B
//! hit ratio   0.9142  (ideal 0.9142: every distinct key fetched once)
//! origin      8579 calls; origin calls ÷ distinct keys = 1.000
//! cache       hits 91421, misses 8579, coalesced 125, bypasses 0, stores 8579,
//!             store failures 0, backend errors 0, bytes served 93615104
//! throughput  228754 requests/s (100000 in 0.437 s)
//! latency     p50 2 µs, p99 2.80 ms, p999 5.28 ms, max 8.16 ms
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};
use tower::{ServiceExt, service_fn};
use tower_memcache::backend::{Backend, MemoryBackend, TcpBackend};
use tower_memcache::cache::MemcacheLayer;
use tower_memcache::cache::StatsSnapshot;

const USAGE: &str = "\
usage: hit_rate [--keys N] [--exponent S] [--requests N] [--concurrency N]
                [--origin-latency-ms N] [--lifetime-secs N] [--body-bytes N]
                [--memcache host:port[,host:port...]] [--seed N] [--help]

Replays a Zipf-distributed stream of GET http://bench.local/item/{k} requests through
MemcacheLayer and reports hit ratio, origin calls, throughput and latency percentiles.

  --keys N               size of the keyspace, k in 1..=N            (default 10000)
  --exponent S           Zipf exponent, S >= 0 (0 is uniform)         (default 1.0)
  --requests N           requests in the stream                       (default 100000)
  --concurrency N        tasks sending requests at once               (default 64)
  --origin-latency-ms N  time the origin takes per call               (default 1)
  --lifetime-secs N      cache lifetime of responses (0: not cached)  (default 60)
  --body-bytes N         size of each response body                   (default 1024)
  --memcache ADDRS       memcached servers, comma-separated           (default: in-memory)
  --seed N               seed of the request stream                   (default 42)
  --help                 this message";

/// What the command line asked for.
#[derive(Debug, Clone)]
struct Options {
    keys: u64,
    exponent: f64,
    requests: usize,
    concurrency: usize,
    origin_latency: Duration,
    lifetime: Duration,
    body_bytes: usize,
    memcache: Option<String>,
    seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keys: 10_000,
            exponent: 1.0,
            requests: 100_000,
            concurrency: 64,
            origin_latency: Duration::from_millis(1),
            lifetime: Duration::from_secs(60),
            body_bytes: 1024,
            memcache: None,
            seed: 42,
        }
    }
}

/// The largest body accepted (memcached's default item size is 1 MiB; larger bodies
/// pass through unstored).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The longest stream accepted: it and its latencies are kept in memory (24 B a request).
const MAX_REQUESTS: usize = 100_000_000;

enum Command {
    Run(Options),
    Help,
}

/// Parses `--flag value` and `--flag=value` arguments.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value)),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument {arg:?}"));
        }
        let value = match inline {
            Some(value) => value.to_string(),
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag.as_str() {
            "--keys" => options.keys = parse_count(&flag, &value)?,
            "--exponent" => {
                let exponent: f64 = value
                    .parse()
                    .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
                if !(exponent.is_finite() && exponent >= 0.0) {
                    return Err(format!("{flag}: {value:?} must be a finite number >= 0"));
                }
                options.exponent = exponent;
            }
            "--requests" => {
                let requests = parse_count(&flag, &value)?;
                if requests > MAX_REQUESTS {
                    return Err(format!("{flag}: {requests} is over {MAX_REQUESTS}"));
                }
                options.requests = requests;
            }
            "--concurrency" => options.concurrency = parse_count(&flag, &value)?,
            "--origin-latency-ms" => {
                options.origin_latency = Duration::from_millis(parse_number(&flag, &value)?);
            }
            "--lifetime-secs" => {
                options.lifetime = Duration::from_secs(parse_number(&flag, &value)?);
            }
            "--body-bytes" => {
                let bytes = parse_number(&flag, &value)?;
                if bytes > MAX_BODY_BYTES {
                    return Err(format!("{flag}: {bytes} is over {MAX_BODY_BYTES}"));
                }
                options.body_bytes = bytes;
            }
            "--memcache" => options.memcache = Some(value),
            "--seed" => options.seed = parse_number(&flag, &value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Command::Run(options))
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a non-negative integer in range"))
}

/// A number that must be at least 1.
fn parse_count<T: std::str::FromStr + PartialEq + From<u8>>(
    flag: &str,
    value: &str,
) -> Result<T, String> {
    let n: T = parse_number(flag, value)?;
    if n == T::from(0) {
        return Err(format!("{flag} must be at least 1"));
    }
    Ok(n)
}

/// The request stream: `requests` keys in `1..=keys`, Zipf-distributed.
fn generate_stream(options: &Options) -> Result<Vec<u64>, String> {
    let zipf = Zipf::new(options.keys as f64, options.exponent)
        .map_err(|e| format!("Zipf({}, {}): {e}", options.keys, options.exponent))?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    Ok((0..options.requests)
        // Samples are whole numbers in 1..=keys; the clamp guards the float edge.
        .map(|_| (zipf.sample(&mut rng) as u64).clamp(1, options.keys))
        .collect())
}

/// A body of `len` bytes that starts by naming `path`.
fn body_for(path: &str, len: usize) -> Bytes {
    let mut body = format!("{path}\n").into_bytes();
    body.resize(len, b'.');
    Bytes::from(body)
}

/// What one run measured.
struct Report {
    stats: StatsSnapshot,
    origin_calls: u64,
    wall: Duration,
    latencies: Vec<Duration>,
}

#[derive(Debug)]
struct RunError(String);

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sends the whole stream through the layer over `backend`.
async fn run<B: Backend>(
    backend: B,
    options: &Options,
    stream: Arc<[u64]>,
    progress: &ProgressBar,
) -> Result<Report, RunError> {
    let namespace = format!(
        "hit-rate-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    let layer = MemcacheLayer::new(backend)
        .namespace(namespace)
        .default_lifetime(options.lifetime);
    let stats = layer.stats();

    let origin_calls = Arc::new(AtomicU64::new(0));
    let origin = {
        let calls = Arc::clone(&origin_calls);
        let latency = options.origin_latency;
        let body_bytes = options.body_bytes;
        service_fn(move |request: Request<()>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let body = body_for(request.uri().path(), body_bytes);
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            }
        })
    };
    let service = tower::Layer::layer(&layer, origin);

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.concurrency);
    for _ in 0..options.concurrency.min(stream.len()) {
        let service = service.clone();
        let stream = Arc::clone(&stream);
        let next = Arc::clone(&next);
        let progress = progress.clone();
        let body_bytes = options.body_bytes;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(stream.len() / 16);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = stream.get(index) else { break };
                let request = Request::get(format!("http://bench.local/item/{key}"))
                    .body(())
                    .map_err(|e| RunError(format!("building request for key {key}: {e}")))?;
                let sent = Instant::now();
                let response = match service.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                let body = match response.into_body().collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(never) => match never {},
                };
                latencies.push(sent.elapsed());
                if body.len() != body_bytes {
                    let got = body.len();
                    return Err(RunError(format!(
                        "key {key}: a body of {got} bytes, expected {body_bytes}"
                    )));
                }
                progress.inc(1);
                // A server's connection task waits for the next request; without that
                // pause a hit (or a 0 ms origin) never returns Pending, the tasks never
                // yield, and the stores spawned in the background starve.
                tokio::task::yield_now().await;
            }
            Ok::<_, RunError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(stream.len());
    for task in tasks {
        let task_latencies = task
            .await
            .map_err(|e| RunError(format!("request task failed: {e}")))??;
        latencies.extend(task_latencies);
    }
    let wall = started.elapsed();
    progress.finish_and_clear();

    // Stores run in the background; let the last ones land before reading the counters.
    let settle = Instant::now();
    let mut stats_now = stats.snapshot();
    while stats_now.stores + stats_now.store_failures < stats_now.misses
        && settle.elapsed() < Duration::from_secs(2)
        && !options.lifetime.is_zero()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats_now = stats.snapshot();
    }

    Ok(Report {
        stats: stats_now,
        origin_calls: origin_calls.load(Ordering::Relaxed),
        wall,
        latencies,
    })
}

/// The `p`-quantile of sorted `values` (nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A latency in the unit that keeps it readable.
fn show(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1e6 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

fn print_report(options: &Options, backend: &str, distinct: usize, mut report: Report) {
    let s = &report.stats;
    let requests = options.requests;
    report.latencies.sort_unstable();
    let ideal = if options.lifetime.is_zero() {
        "lifetime 0: nothing is stored".to_string()
    } else {
        let ratio = 1.0 - distinct as f64 / requests as f64;
        format!("ideal {ratio:.4}: every distinct key fetched once")
    };
    println!(
        "stream      {requests} requests over {} keys, Zipf s = {}, seed {}: {distinct} distinct keys",
        options.keys, options.exponent, options.seed
    );
    println!(
        "setup       backend {backend}, concurrency {}, origin latency {} ms, lifetime {} s, body {} B",
        options.concurrency,
        options.origin_latency.as_millis(),
        options.lifetime.as_secs(),
        options.body_bytes
    );
    println!("hit ratio   {:.4}  ({ideal})", s.hit_ratio());
    println!(
        "origin      {} calls; origin calls ÷ distinct keys = {:.3}",
        report.origin_calls,
        report.origin_calls as f64 / distinct.max(1) as f64
    );
    println!(
        "cache       hits {}, misses {}, coalesced {}, bypasses {}, stores {},",
        s.hits, s.misses, s.coalesced, s.bypasses, s.stores
    );
    println!(
        "            store failures {}, backend errors {}, bytes served {}",
        s.store_failures, s.backend_errors, s.bytes_served
    );
    println!(
        "throughput  {:.0} requests/s ({requests} in {:.3} s)",
        requests as f64 / report.wall.as_secs_f64(),
        report.wall.as_secs_f64()
    );
    let l = &report.latencies;
    println!(
        "latency     p50 {}, p99 {}, p999 {}, max {}",
        show(percentile(l, 0.50)),
        show(percentile(l, 0.99)),
        show(percentile(l, 0.999)),
        show(l.last().copied().unwrap_or_default())
    );
    if s.backend_errors > 0 || s.store_failures > 0 {
        eprintln!(
            "warning: {} backend errors and {} store failures; the cache was not fully available",
            s.backend_errors, s.store_failures
        );
    }
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests (eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("hit_rate: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stream = match generate_stream(&options) {
        Ok(stream) => stream,
        Err(message) => {
            eprintln!("hit_rate: {message}");
            return ExitCode::from(2);
        }
    };
    let distinct = {
        let mut keys = stream.clone();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    let stream: Arc<[u64]> = stream.into();
    let progress = progress_bar(options.requests as u64);

    let result = match &options.memcache {
        None => run(MemoryBackend::new(), &options, stream, &progress)
            .await
            .map(|report| ("memory".to_string(), report)),
        Some(servers) => {
            let backend = match TcpBackend::builder().server_list(servers).build() {
                Ok(backend) => backend,
                Err(e) => {
                    eprintln!("hit_rate: --memcache: {e}");
                    return ExitCode::from(2);
                }
            };
            // The layer fails open, so a wrong address would only show as zero hits:
            // check every server answers before measuring.
            if let Err(e) = check_servers(&backend).await {
                eprintln!("hit_rate: {e}");
                return ExitCode::FAILURE;
            }
            let name = format!("memcached {}", backend.server_names().join(","));
            run(backend, &options, stream, &progress)
                .await
                .map(|report| (name, report))
        }
    };
    match result {
        Ok((backend, report)) => {
            print_report(&options, &backend, distinct, report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hit_rate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fails unless every server answers a `get`.
async fn check_servers(backend: &TcpBackend) -> Result<(), String> {
    for (index, server) in backend.server_names().iter().enumerate() {
        // Find a probe key that lands on this server.
        let probe = (0..10_000)
            .map(|i| format!("hit-rate-probe-{i}"))
            .find(|key| backend.server_for_key(key) == Some(index));
        let Some(probe) = probe else { continue };
        backend
            .get(&probe)
            .await
            .map_err(|e| format!("memcached {server} does not answer: {e}"))?;
    }
    Ok(())
}
