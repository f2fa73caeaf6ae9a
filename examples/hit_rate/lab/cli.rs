//! The command line and the run it asks for.

use std::fs::File;
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tower_memcache::cache::DEFAULT_MAX_ENTRY_SIZE;

use super::memcached;
use super::replay::Settings;
use super::report::{self, TraceSummary};
use super::size::parse_size;
use super::sweep::{self, Axes, NearTier, Point, Target};
use super::trace::{self, Synthetic, Trace};

/// Room left in a memcached item for the key, the entry's metadata and headers, as the
/// crate's own default leaves under memcached's 1 MiB.
const ENTRY_HEADROOM: u64 = 16 * 1024;

/// Bounds on the command line, so one typo cannot ask for a day of replays.
const MAX_POINTS_PER_AXIS: usize = 32;
const MAX_REQUESTS: usize = 100_000_000;
const MAX_SERVERS: usize = 16;

/// The hit-rate lab: replays traffic through MemcacheLayer against real memcached servers
/// of several sizes, and shows what each size buys.
///
/// Each point of the sweep (every --lifetime with every --near-cache and every --memory)
/// starts --servers fresh memcached (`memcached -p PORT -l 127.0.0.1 -m MB -U 0`) on free
/// loopback ports, replays the whole trace through the layer (with a fresh near tier of
/// the point's size, if any), reads memcached's `stats`, and stops them. Beside each
/// point: the ideal, an infinite cache with the same lifetime, computed from the trace;
/// the near tier's hits; and the memcached operations per request (from the servers'
/// own counters: keys for gets, commands otherwise) with the busiest server's share.
/// Lifetimes are in the trace's clock (log timestamps, or --rate for synthetic streams),
/// however fast the replay runs.
///
/// The table goes to stdout; the progress bar to stderr when it is a terminal.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "hit_rate",
    after_help = "Examples:\n  \
        cargo run --release --example hit_rate -- --log bench/hit_rate/sample-access.log\n  \
        cargo run --release --example hit_rate -- --log access.log --memory 64,256,1024 \
        --lifetime 300,3600,86400 --csv sweep.csv\n  \
        cargo run --release --example hit_rate -- --synthetic scan --lifetime 3600\n  \
        cargo run --release --example hit_rate -- --keys 10000 --rate 50000 --timing \
        --speedup 0.25 --requests 300000 --warmup 100000 --servers 2 --memory 64 \
        --lifetime 3600 --near-cache off,8M,32M"
)]
pub struct Args {
    /// Replay this access log, in Common or Combined Log Format (nginx's and Apache's
    /// default): GET and HEAD lines in their order, the size field as the body size.
    /// `-` reads stdin. Without --log, a synthetic stream (--synthetic) is replayed.
    #[arg(long, value_name = "PATH", help_heading = "Traffic")]
    pub log: Option<PathBuf>,

    /// Send each request at its trace time (log timestamps, or --rate), divided by
    /// --speedup, instead of as fast as the cache answers. Lifetimes are then given to
    /// memcached divided by --speedup too, so memcached expires entries itself.
    #[arg(long, help_heading = "Traffic")]
    pub timing: bool,

    /// With --timing: replay this many times faster than the trace's clock.
    #[arg(
        long,
        value_name = "FACTOR",
        default_value_t = 1.0,
        help_heading = "Traffic"
    )]
    pub speedup: f64,

    /// Read at most this many GET/HEAD requests of the log.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000_000,
        help_heading = "Traffic"
    )]
    pub max_requests: usize,

    /// The synthetic stream replayed without --log: `zipf` (Zipf popularity over --keys
    /// paths) or `scan` (the same hot set with bursts of one-hit paths mixed in).
    #[arg(long, value_enum, default_value_t = SyntheticKind::Zipf, help_heading = "Synthetic traffic")]
    pub synthetic: SyntheticKind,

    /// Requests in the synthetic stream.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        help_heading = "Synthetic traffic"
    )]
    pub requests: usize,

    /// Distinct hot paths (`/item/1` ..= `/item/N`).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        help_heading = "Synthetic traffic"
    )]
    pub keys: u64,

    /// Zipf exponent (0 is uniform).
    #[arg(
        long,
        value_name = "S",
        default_value_t = 1.0,
        help_heading = "Synthetic traffic"
    )]
    pub exponent: f64,

    /// Requests per second of trace time: what lifetimes are measured against.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 100.0,
        help_heading = "Synthetic traffic"
    )]
    pub rate: f64,

    /// Body size in bytes; with --size-sigma the median of log-normal sizes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 1024,
        help_heading = "Synthetic traffic"
    )]
    pub body_bytes: u64,

    /// σ of log-normal body sizes (each path keeps its size); 0: every body --body-bytes.
    #[arg(
        long,
        value_name = "SIGMA",
        default_value_t = 0.0,
        help_heading = "Synthetic traffic"
    )]
    pub size_sigma: f64,

    /// With `--synthetic scan`: the share of requests that are one-hit scans.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.5,
        help_heading = "Synthetic traffic"
    )]
    pub scan_fraction: f64,

    /// With `--synthetic scan`: one-hit requests per burst.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2000,
        help_heading = "Synthetic traffic"
    )]
    pub scan_burst: usize,

    /// Seed of the synthetic stream.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 42,
        help_heading = "Synthetic traffic"
    )]
    pub seed: u64,

    /// memcached memory sizes to sweep, MB (memcached's -m), comma-separated. Below about
    /// one MB per slab class in use (often 20-40 MB) memcached takes more than -m: the
    /// `malloced` column shows what it took.
    #[arg(long, value_name = "MB,...", value_delimiter = ',', default_values_t = [4u64, 8, 16, 32, 64, 128], help_heading = "Sweep")]
    pub memory: Vec<u64>,

    /// Near-tier sizes to sweep, comma-separated: `off`, or a size in bytes with K, M or G
    /// (powers of 1024), each optionally followed by its staleness bound with a time unit
    /// (`8M,250ms`; default 1s): e.g. `off,1M,8M` or `off,8M,1s,8M,100ms`. Each point's
    /// layer gets a fresh NearCache of that size (near hits are answered without
    /// memcached). The staleness is in trace time with --timing (divided by --speedup, as
    /// lifetimes are) and in wall time without it.
    #[arg(
        long,
        value_name = "SIZE[,STALENESS],...",
        default_value = "off",
        value_parser = parse_near_list,
        help_heading = "Sweep"
    )]
    pub near_cache: NearList,

    /// Cache lifetimes to sweep, seconds of trace time, comma-separated (0: nothing is
    /// stored).
    #[arg(long, value_name = "SECONDS,...", value_delimiter = ',', default_values_t = [60u64, 3600], help_heading = "Sweep")]
    pub lifetime: Vec<u64>,

    /// memcached's item size limit, KiB (-I); the layer stores bodies up to 16 KiB less.
    /// Default: memcached's own, 1024.
    #[arg(long, value_name = "KIB", help_heading = "Sweep")]
    pub item_size_kb: Option<u64>,

    /// Where the cache lives: `memcached` (a fresh server per point, started by the lab)
    /// or `memory` (the crate's MemoryBackend, an exact LRU over bytes with --memory as
    /// its limit: memcached without slab classes; no memcached needed).
    #[arg(long, value_enum, default_value_t = BackendKind::Memcached, help_heading = "Cache")]
    pub backend: BackendKind,

    /// memcached servers per point, each started with --memory: the layer's TcpBackend
    /// spreads keys over them (ketama), and the `busiest` column says how evenly.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Cache")]
    pub servers: usize,

    /// Use these running memcached servers (host:port, comma-separated) instead of
    /// starting one per point: no memory axis, evictions counted during each point.
    #[arg(
        long,
        value_name = "HOST:PORT,...",
        conflicts_with = "backend",
        help_heading = "Cache"
    )]
    pub memcache: Option<String>,

    /// More arguments for the memcached the lab starts, split at spaces, to try your own
    /// settings (e.g. "-f 1.1" or "-o slab_chunk_max=64").
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        help_heading = "Cache"
    )]
    pub memcached_args: Option<String>,

    /// The memcached binary the lab starts.
    #[arg(
        long,
        value_name = "PATH",
        env = "MEMCACHED_BIN",
        default_value = "memcached",
        help_heading = "Cache"
    )]
    pub memcached_bin: String,

    /// Requests in flight at once. 1 replays in the trace's exact order (the ideal is then
    /// an exact bound); more can swap neighbouring requests, and with --timing a request
    /// waits for a free slot.
    #[arg(long, value_name = "N", default_value_t = 8, help_heading = "Replay")]
    pub concurrency: usize,

    /// Count memcached operations (ops/req, busiest) only after this many requests, so
    /// that a short run's cold fills do not hide the steady state; every other column
    /// covers the whole run. The replay waits for the warm-up's requests and stores to
    /// finish before reading the servers' stats.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Replay")]
    pub warmup: usize,

    /// Time the origin takes per call, ms.
    #[arg(long, value_name = "MS", default_value_t = 0, help_heading = "Replay")]
    pub origin_latency_ms: u64,

    /// Timeout of each memcached operation (and of the layer's lookups), ms. A lookup
    /// that times out is a miss, counted as a backend error.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        help_heading = "Replay"
    )]
    pub timeout_ms: u64,

    /// Write the points as CSV to this file.
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub csv: Option<PathBuf>,

    /// Write the trace summary, the setup and the points as JSON to this file.
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub json: Option<PathBuf>,

    /// Write the chart (hit ratio and byte hit ratio against memory) as SVG to this file.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/hit_rate/sweep.svg",
        help_heading = "Output"
    )]
    pub svg: PathBuf,

    /// Do not write the chart.
    #[arg(long, help_heading = "Output")]
    pub no_svg: bool,
}

/// `--near-cache`: the near-tier sizes to sweep (`None`: off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearList(pub Vec<Option<NearTier>>);

/// The staleness of a `--near-cache` size given without one.
pub const DEFAULT_NEAR_STALENESS: Duration = Duration::from_secs(1);

/// `--near-cache off,1M,8M,250ms`: sizes (or `off`), each optionally followed by its
/// staleness. A staleness needs a time unit (`ms`, `s`, `min`, `h`); `m` is a size (MiB).
pub fn parse_near_list(text: &str) -> Result<NearList, String> {
    let mut tiers: Vec<Option<NearTier>> = Vec::new();
    // Whether the last token was a size still waiting for its staleness.
    let mut open = false;
    for token in text.split(',').map(str::trim) {
        if token.is_empty() {
            return Err(format!("{text:?}: an empty item"));
        }
        if !token.eq_ignore_ascii_case("off") && is_duration(token) {
            let last = tiers.last_mut().and_then(Option::as_mut).filter(|_| open);
            let Some(tier) = last else {
                return Err(format!(
                    "{token:?}: a staleness follows a size (`8M,{token}`)"
                ));
            };
            let staleness =
                humantime::parse_duration(token).map_err(|e| format!("{token:?}: {e}"))?;
            tier.staleness_ms = u64::try_from(staleness.as_millis()).unwrap_or(u64::MAX);
            open = false;
            continue;
        }
        let bytes = if token.eq_ignore_ascii_case("off") {
            0
        } else {
            parse_size(token)?
        };
        open = bytes > 0;
        tiers.push((bytes > 0).then(|| NearTier {
            bytes,
            staleness_ms: DEFAULT_NEAR_STALENESS.as_millis() as u64,
        }));
    }
    Ok(NearList(tiers))
}

/// Whether a `--near-cache` item is a duration: digits then a unit that is not a size's.
fn is_duration(token: &str) -> bool {
    let unit = token.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    !unit.is_empty()
        && unit.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !matches!(
            unit.trim().to_ascii_lowercase().as_str(),
            "b" | "k" | "kb" | "kib" | "m" | "mb" | "mib" | "g" | "gb" | "gib"
        )
}

/// `--synthetic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyntheticKind {
    /// Zipf popularity over --keys paths.
    Zipf,
    /// The same, with bursts of one-hit paths (--scan-fraction, --scan-burst).
    Scan,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A fresh memcached per point, started by the lab.
    Memcached,
    /// The crate's MemoryBackend: an exact LRU of --memory MB.
    Memory,
}

/// How the sweep ran, for the JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// `memcached 1.6.x (started per point)`, `memcached at ...` or `MemoryBackend`.
    pub cache: String,
    /// The largest body stored.
    pub max_entry_bytes: u64,
    /// Requests in flight.
    pub concurrency: usize,
    /// Origin latency, ms.
    pub origin_latency_ms: u64,
    /// `None`: as fast as possible; else the speed-up over the trace's clock.
    pub timing_speedup: Option<f64>,
    /// Requests before memcached operations are counted (`--warmup`).
    pub warmup: usize,
    /// The clock of the near tier's staleness bound: `trace` with `--timing`, `wall`
    /// without.
    pub near_staleness_clock: &'static str,
}

/// What a run produced.
#[derive(Debug)]
#[allow(dead_code)] // `main` needs only the printed table; tests/hit_rate_lab.rs reads these.
pub struct Outcome {
    /// The trace.
    pub trace: TraceSummary,
    /// The points, in sweep order.
    pub points: Vec<Point>,
    /// Where the chart was written, if it was.
    pub svg: Option<PathBuf>,
}

fn check(args: &Args) -> Result<(), String> {
    let bad = |what: String| Err(what);
    if args.memory.is_empty() || args.memory.len() > MAX_POINTS_PER_AXIS {
        return bad(format!("--memory: 1 to {MAX_POINTS_PER_AXIS} sizes"));
    }
    if let Some(&m) = args.memory.iter().find(|&&m| m == 0 || m > 1 << 20) {
        return bad(format!("--memory {m}: sizes are 1 to 1048576 MB"));
    }
    if args.lifetime.is_empty() || args.lifetime.len() > MAX_POINTS_PER_AXIS {
        return bad(format!("--lifetime: 1 to {MAX_POINTS_PER_AXIS} lifetimes"));
    }
    if let Some(&l) = args.lifetime.iter().find(|&&l| l > 365 * 86_400) {
        return bad(format!("--lifetime {l}: at most a year"));
    }
    let near = &args.near_cache.0;
    if near.is_empty() || near.len() > MAX_POINTS_PER_AXIS {
        return bad(format!("--near-cache: 1 to {MAX_POINTS_PER_AXIS} sizes"));
    }
    if let Some(tier) = near.iter().flatten().find(|t| t.bytes > 64 << 30) {
        return bad(format!("--near-cache {} bytes: at most 64G", tier.bytes));
    }
    if let Some(tier) = near.iter().flatten().find(|t| t.staleness_ms > 86_400_000) {
        return bad(format!(
            "--near-cache staleness {} ms: at most a day",
            tier.staleness_ms
        ));
    }
    if !(1..=MAX_SERVERS).contains(&args.servers) {
        return bad(format!("--servers: 1 to {MAX_SERVERS}"));
    }
    if args.servers > 1 && (args.memcache.is_some() || args.backend == BackendKind::Memory) {
        return bad(
            "--servers: only for the memcached servers the lab starts (not with --memcache \
             or --backend memory)"
                .into(),
        );
    }
    if !(0.001..=1_000_000.0).contains(&args.speedup) {
        return bad(format!("--speedup {}: 0.001 to 1000000", args.speedup));
    }
    if !(1..=4096).contains(&args.concurrency) {
        return bad("--concurrency: 1 to 4096".into());
    }
    if args.requests == 0 || args.requests > MAX_REQUESTS {
        return bad(format!("--requests: 1 to {MAX_REQUESTS}"));
    }
    if args.max_requests == 0 || args.max_requests > MAX_REQUESTS {
        return bad(format!("--max-requests: 1 to {MAX_REQUESTS}"));
    }
    if args.keys == 0 || args.keys > 100_000_000 {
        return bad("--keys: 1 to 100000000".into());
    }
    if !(args.exponent.is_finite() && args.exponent >= 0.0) {
        return bad(format!("--exponent {}: a number >= 0", args.exponent));
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return bad(format!("--rate {}: a number above 0", args.rate));
    }
    if !(args.size_sigma.is_finite() && (0.0..=5.0).contains(&args.size_sigma)) {
        return bad(format!("--size-sigma {}: 0 to 5", args.size_sigma));
    }
    if args.body_bytes > 64 << 20 {
        return bad("--body-bytes: at most 64 MiB".into());
    }
    if let Some(kb) = args
        .item_size_kb
        .filter(|kb| !(64..=1024 * 1024).contains(kb))
    {
        return bad(format!("--item-size-kb {kb}: 64 to 1048576"));
    }
    Ok(())
}

async fn load_trace(args: &Args) -> Result<Trace, String> {
    let Some(path) = &args.log else {
        let params = Synthetic {
            keys: args.keys,
            exponent: args.exponent,
            requests: args.requests,
            rate: args.rate,
            body_bytes: args.body_bytes,
            size_sigma: args.size_sigma,
            seed: args.seed,
        };
        return match args.synthetic {
            SyntheticKind::Zipf => trace::zipf(&params),
            SyntheticKind::Scan => trace::scan_mix(&params, args.scan_fraction, args.scan_burst),
        };
    };
    let path = path.clone();
    let max = args.max_requests;
    // Reading a big log is blocking work: off the runtime's workers.
    tokio::task::spawn_blocking(move || {
        let label = path.display().to_string();
        let result = if path == Path::new("-") {
            trace::from_log(std::io::stdin().lock(), "stdin".into(), max)
        } else {
            File::open(&path)
                .and_then(|file| trace::from_log(BufReader::new(file), label.clone(), max))
        };
        result.map_err(|e| format!("reading {label}: {e}"))
    })
    .await
    .map_err(|e| format!("reading the log: {e}"))?
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests, eta {eta}  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Runs the sweep `args` describes, printing the table as it goes.
pub async fn run(args: Args) -> Result<Outcome, String> {
    check(&args)?;
    let max_entry = args
        .item_size_kb
        .map_or(DEFAULT_MAX_ENTRY_SIZE as u64, |kb| {
            (kb * 1024).saturating_sub(ENTRY_HEADROOM)
        });
    let (target, cache) = match (&args.memcache, args.backend) {
        (Some(servers), _) => (
            Target::Running {
                servers: servers.clone(),
            },
            format!("memcached at {servers}"),
        ),
        (None, BackendKind::Memory) => (
            Target::Memory,
            "MemoryBackend (an exact LRU of --memory MB, no slab classes)".into(),
        ),
        (None, BackendKind::Memcached) => {
            let extra_args: Vec<String> = args
                .memcached_args
                .iter()
                .flat_map(|a| a.split_whitespace())
                .map(str::to_string)
                .collect();
            if extra_args.len() > 64 {
                return Err("--memcached-args: at most 64 arguments".into());
            }
            // Before reading a big log: say now if there is no memcached.
            let version = memcached::version(&args.memcached_bin)?;
            (
                Target::Spawn {
                    servers: args.servers,
                    binary: args.memcached_bin.clone(),
                    item_size_kb: args.item_size_kb,
                    extra_args,
                    ports: Arc::default(),
                },
                if args.servers == 1 {
                    format!("{version}, a fresh server per point")
                } else {
                    format!(
                        "{version}, {} fresh servers per point (each -m of the point)",
                        args.servers
                    )
                },
            )
        }
    };
    let trace = Arc::new(load_trace(&args).await?);
    if trace.requests.is_empty() {
        return Err(format!(
            "{}: no GET or HEAD requests to replay",
            trace.label
        ));
    }
    if args.warmup >= trace.requests.len() {
        return Err(format!(
            "--warmup {}: the trace has only {} requests",
            args.warmup,
            trace.requests.len()
        ));
    }
    let summary = TraceSummary::new(&trace, max_entry);
    let settings = Settings {
        concurrency: args.concurrency,
        origin_latency: Duration::from_millis(args.origin_latency_ms),
        timing: args.timing.then_some(args.speedup),
        max_entry,
        backend_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        warmup: args.warmup,
    };
    let setup = Setup {
        cache,
        max_entry_bytes: max_entry,
        concurrency: settings.concurrency,
        origin_latency_ms: args.origin_latency_ms,
        timing_speedup: settings.timing,
        warmup: args.warmup,
        near_staleness_clock: if settings.timing.is_some() {
            "trace"
        } else {
            "wall"
        },
    };
    let axes = Axes {
        lifetimes_s: args.lifetime.clone(),
        near: args.near_cache.0.clone(),
        memory_mb: match target {
            Target::Spawn { .. } | Target::Memory => {
                args.memory.iter().copied().map(Some).collect()
            }
            Target::Running { .. } => vec![None],
        },
    };
    let specs = axes.points();

    print!("{}", summary.describe());
    println!(
        "setup     {}; entries up to {} B; concurrency {}; origin latency {} ms; {}{}",
        setup.cache,
        setup.max_entry_bytes,
        setup.concurrency,
        setup.origin_latency_ms,
        match settings.timing {
            Some(speedup) => format!("trace timing at {speedup}x"),
            None => "as fast as possible".into(),
        },
        if args.warmup > 0 {
            format!(
                "; memcached operations counted after {} requests",
                args.warmup
            )
        } else {
            String::new()
        }
    );
    let near_on = specs.iter().any(|spec| spec.near.is_some());
    if near_on && settings.timing.is_none() {
        println!(
            "note      the near tier's staleness bound is wall time here: without --timing the \
             replay runs as fast as it can, so one bound covers more requests than at --rate \
             (or the log's pace); add --timing for a bound in trace time"
        );
    }
    println!();
    println!("{}", report::table_header());

    let progress = progress_bar(trace.requests.len() as u64 * specs.len() as u64);
    let mut points = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        progress.set_message(format!(
            "point {}/{}: lifetime {}, near tier {}{}",
            i + 1,
            specs.len(),
            report::duration(spec.lifetime_s as f64),
            report::near_label(spec.near),
            spec.memory_mb
                .map(|m| format!(", {m} MB"))
                .unwrap_or_default()
        ));
        let point = sweep::run_point(&target, &trace, *spec, &settings, &progress).await?;
        progress.suspend(|| println!("{}", report::table_row(&point)));
        points.push(point);
    }
    progress.finish_and_clear();
    println!();
    println!("{}", report::TABLE_LEGEND);
    let errors: u64 = points.iter().map(|p| p.backend_errors).sum();
    if errors > 0 {
        eprintln!(
            "warning: {errors} memcached operations failed or timed out (each failed lookup a \
             miss): the machine may be overloaded; try --concurrency 1 or a larger --timeout-ms"
        );
    }

    let lag = points.iter().map(|p| p.max_lag_ms).max().unwrap_or(0);
    if lag > 1000 {
        eprintln!(
            "warning: with --timing a request was sent up to {lag} ms behind its schedule: \
             the replay could not keep up (lower --speedup, or raise --concurrency)"
        );
    }

    if let Some(path) = &args.csv {
        write_file(path, report::csv(&points).as_bytes())?;
        println!("csv       {}", path.display());
    }
    if let Some(path) = &args.json {
        let document = report::Document {
            trace: &summary,
            setup: &setup,
            points: &points,
        };
        let json = serde_json::to_vec_pretty(&document).map_err(|e| format!("JSON: {e}"))?;
        write_file(path, &json)?;
        println!("json      {}", path.display());
    }
    let mut svg = None;
    if !args.no_svg {
        if !matches!(target, Target::Running { .. }) {
            write_file(&args.svg, b"")?; // creates the directory; the chart overwrites it
            let cache = if matches!(target, Target::Memory) {
                "an exact LRU (MemoryBackend)"
            } else {
                "memcached memory"
            };
            let title = format!("Hit ratio against {cache}: {}", trace.label);
            report::write_svg(&args.svg, &title, &points)?;
            println!("chart     {}", args.svg.display());
            svg = Some(args.svg.clone());
        } else {
            println!("chart     none: no memory axis with running servers (--memcache)");
        }
    }
    Ok(Outcome {
        trace: summary,
        points,
        svg,
    })
}
