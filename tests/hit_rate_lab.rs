//! The hit-rate lab (examples/hit_rate/) end to end, its modules included by path: a slice
//! of the sample log replayed against real memcached servers the lab starts at two memory
//! sizes, and against a `MemoryBackend` too large to evict, which must reach the ideal
//! exactly; a synthetic stream against two servers with the near tier off and on.
//! The log parser's unit tests come along with the modules.
#![cfg(feature = "tcp")]

mod support;

#[path = "../examples/hit_rate/lab/mod.rs"]
mod lab;

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use lab::cli::{Args, Outcome};

/// Lines of the sample log replayed: enough for the two memory sizes to differ, few
/// enough for a debug build on two cores.
const SLICE_LINES: usize = 3000;

/// A fresh directory under the target directory's tmp, for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hit_rate_lab-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// The first `SLICE_LINES` lines of the committed sample log, written to `dir`.
fn sample_slice(dir: &std::path::Path) -> PathBuf {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/hit_rate/sample-access.log");
    let text = std::fs::read_to_string(&sample).expect("read bench/hit_rate/sample-access.log");
    let slice: String = text.split_inclusive('\n').take(SLICE_LINES).collect();
    let path = dir.join("slice.log");
    std::fs::write(&path, slice).expect("write the slice");
    path
}

async fn run(args: &[&str]) -> Outcome {
    let args = Args::try_parse_from(std::iter::once("hit_rate").chain(args.iter().copied()))
        .expect("valid arguments");
    lab::cli::run(args).await.expect("the lab runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_of_a_log_slice_against_real_memcached() {
    if let Err(e) = lab::memcached::version("memcached") {
        assert!(
            !support::memcached_required(),
            "MEMCACHED_REQUIRED=1 but the lab cannot run memcached: {e}"
        );
        eprintln!("SKIP hit_rate_lab: {e}");
        return;
    }
    let dir = scratch("sweep");
    let log = sample_slice(&dir);
    let csv = dir.join("sweep.csv");
    let json = dir.join("sweep.json");
    let svg = dir.join("sweep.svg");
    let (log_s, csv_s, json_s, svg_s) = (
        log.to_string_lossy().to_string(),
        csv.to_string_lossy().to_string(),
        json.to_string_lossy().to_string(),
        svg.to_string_lossy().to_string(),
    );
    // Concurrency 1: the replay's order is the log's, so the run is repeatable and the
    // ideal bound is exact.
    let outcome = run(&[
        "--log",
        &log_s,
        "--memory",
        "4,64",
        "--lifetime",
        "3600",
        "--concurrency",
        "1",
        "--csv",
        &csv_s,
        "--json",
        &json_s,
        "--svg",
        &svg_s,
    ])
    .await;

    let log_counts = outcome.trace.log.as_ref().expect("a log trace");
    assert!(log_counts.get > 2000, "{log_counts:?}");
    assert_eq!(outcome.points.len(), 2);
    let (small, large) = (&outcome.points[0], &outcome.points[1]);
    assert_eq!(
        (small.spec.memory_mb, large.spec.memory_mb),
        (Some(4), Some(64))
    );
    eprintln!(
        "hit ratio 4 MB {:.4}, 64 MB {:.4}, ideal {:.4}; evictions {:?} / {:?}",
        small.hit_ratio, large.hit_ratio, large.ideal_hit_ratio, small.evictions, large.evictions
    );
    assert!(small.hits > 0, "{small:?}");
    assert!(large.hit_ratio >= small.hit_ratio, "{small:?}\n{large:?}");
    for point in [small, large] {
        assert!(point.hit_ratio <= point.ideal_hit_ratio, "{point:?}");
        assert!(
            point.byte_hit_ratio <= point.ideal_byte_hit_ratio,
            "{point:?}"
        );
        assert_eq!(point.requests, log_counts.get + log_counts.head);
        assert_eq!(point.backend_errors, 0, "{point:?}");
        assert!(point.evictions.is_some() && point.malloced_mb.is_some());
    }
    // The small server was full: it evicted.
    assert!(small.evictions > Some(0), "{small:?}");

    let text = std::fs::read_to_string(&csv).expect("the CSV was written");
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    let columns: Vec<&str> = header.split(',').collect();
    for expected in [
        "lifetime_s",
        "memory_mb",
        "requests",
        "hits",
        "hit_ratio",
        "ideal_hit_ratio",
        "byte_hit_ratio",
        "ideal_byte_hit_ratio",
        "origin_calls",
        "ideal_origin_calls",
        "evictions",
        "malloced_mb",
    ] {
        assert!(
            columns.contains(&expected),
            "{expected} missing from {header}"
        );
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2);
    let cell = |row: &Vec<&str>, name: &str| -> f64 {
        let at = columns.iter().position(|c| *c == name).expect("column");
        row[at].parse().expect("a number")
    };
    assert_eq!(cell(&rows[1], "memory_mb"), 64.0);
    assert!(cell(&rows[1], "hit_ratio") >= cell(&rows[0], "hit_ratio"));
    assert!(cell(&rows[1], "hit_ratio") <= cell(&rows[1], "ideal_hit_ratio"));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON was written"))
            .expect("valid JSON");
    assert_eq!(json["points"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["points"][1]["memory_mb"], 64);
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(
        chart.starts_with("<svg") && chart.contains("hit ratio"),
        "{chart:.200}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without evictions (an in-memory LRU far larger than the slice) the lab's cache must do
/// exactly what the ideal says: this checks the replay's trace-time expiry and hit
/// accounting against `trace::ideal`, lifetimes short and long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_cache_reaches_the_ideal() {
    let dir = scratch("ideal");
    let log = sample_slice(&dir);
    let log_s = log.to_string_lossy().to_string();
    let outcome = run(&[
        "--log",
        &log_s,
        "--backend",
        "memory",
        "--memory",
        "4096",
        "--lifetime",
        "60,3600",
        "--concurrency",
        "1",
        "--no-svg",
    ])
    .await;
    assert_eq!(outcome.points.len(), 2);
    assert!(outcome.svg.is_none());
    for point in &outcome.points {
        assert_eq!(point.evictions, Some(0), "{point:?}");
        assert_eq!(
            point.hits as f64 / point.requests as f64,
            point.ideal_hit_ratio
        );
        assert_eq!(point.hit_ratio, point.ideal_hit_ratio, "{point:?}");
        assert_eq!(
            point.byte_hit_ratio, point.ideal_byte_hit_ratio,
            "{point:?}"
        );
        assert_eq!(point.origin_calls, point.ideal_origin_calls, "{point:?}");
    }
    assert!(outcome.points[0].hit_ratio < outcome.points[1].hit_ratio);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The near-tier axis and the memcached operation counts: a Zipf stream against two
/// memcached servers, near tier off and on. Only the tier answers near hits; with it, far
/// fewer requests reach memcached; the busiest server's share is a share, and with two
/// servers at least half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_tier_and_memcached_operations_on_two_servers() {
    if let Err(e) = lab::memcached::version("memcached") {
        assert!(
            !support::memcached_required(),
            "MEMCACHED_REQUIRED=1 but the lab cannot run memcached: {e}"
        );
        eprintln!("SKIP hit_rate_lab: {e}");
        return;
    }
    let dir = scratch("near");
    let csv = dir.join("near.csv");
    let csv_s = csv.to_string_lossy().to_string();
    // As fast as possible: the whole run lasts well under the 5 s staleness bound, so the
    // tier answers every hot entry after its first lookup.
    let outcome = run(&[
        "--requests",
        "4000",
        "--keys",
        "300",
        "--servers",
        "2",
        "--memory",
        "8",
        "--lifetime",
        "3600",
        "--near-cache",
        "off,4M,5s",
        "--warmup",
        "500",
        "--csv",
        &csv_s,
        "--no-svg",
    ])
    .await;
    assert_eq!(outcome.points.len(), 2);
    let (off, on) = (&outcome.points[0], &outcome.points[1]);
    assert_eq!(off.spec.near, None);
    assert_eq!(
        on.spec.near.map(|n| (n.bytes, n.staleness_ms)),
        Some((4 << 20, 5000))
    );
    eprintln!(
        "near off: {:?} ops/request, busiest {:?}; near on: {} near hits, {:?} ops/request, \
         busiest {:?}, {:?} bytes in the tier",
        off.ops_per_request,
        off.busiest_share,
        on.near_hits,
        on.ops_per_request,
        on.busiest_share,
        on.near_weight
    );
    for point in [off, on] {
        assert_eq!(point.servers, 2, "{point:?}");
        assert_eq!(point.backend_errors, 0, "{point:?}");
        assert!(point.hits > 0, "{point:?}");
        let share = point
            .busiest_share
            .expect("the servers report their operations");
        assert!((0.5..=1.0).contains(&share), "{point:?}");
        assert!(point.memcached_ops > Some(0), "{point:?}");
    }
    // Only the tier answers near hits, and its hits are hits.
    assert_eq!((off.near_hits, off.near_weight), (0, None));
    assert!(on.near_hits > 0 && on.near_hits <= on.hits, "{on:?}");
    assert!(
        on.near_weight > Some(0) && on.near_weight <= Some(4 << 20),
        "{on:?}"
    );
    // Without the tier every lookup reaches memcached (its entry and the namespace
    // generation, which lookups merged into one line share: more than 1 key per request);
    // with it, far fewer.
    let (ops_off, ops_on) = (
        off.ops_per_request.expect("ops"),
        on.ops_per_request.expect("ops"),
    );
    assert!(ops_off > 1.0, "{off:?}");
    assert!(ops_on < ops_off / 2.0, "{ops_on} vs {ops_off}");

    let text = std::fs::read_to_string(&csv).expect("the CSV was written");
    let header = text.lines().next().expect("a header");
    for expected in [
        "near_bytes",
        "near_staleness_ms",
        "near_hits",
        "near_hit_ratio",
        "near_weight",
        "servers",
        "memcached_ops",
        "ops_per_request",
        "busiest_share",
    ] {
        assert!(
            header.split(',').any(|c| c == expected),
            "{expected} missing from {header}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--near-cache` reads sizes, `off` and staleness bounds, as a list.
#[test]
fn near_cache_lists() {
    use lab::cli::parse_near_list;
    use lab::sweep::NearTier;
    let tier = |bytes: u64, staleness_ms: u64| {
        Some(NearTier {
            bytes,
            staleness_ms,
        })
    };
    assert_eq!(
        parse_near_list("off,1M,8M").expect("valid").0,
        [None, tier(1 << 20, 1000), tier(8 << 20, 1000)]
    );
    assert_eq!(
        parse_near_list("64M,250ms, 512K ,OFF,2G,1min")
            .expect("valid")
            .0,
        [
            tier(64 << 20, 250),
            tier(512 << 10, 1000),
            None,
            tier(2 << 30, 60_000)
        ]
    );
    assert_eq!(parse_near_list("0").expect("valid").0, [None]);
    for bad in ["1s", "off,1s", "8M,1s,2s", "8X", "", "8M,,1M", "1.5M"] {
        assert!(parse_near_list(bad).is_err(), "{bad:?} accepted");
    }
    // Flags that cannot go together are refused before anything runs.
    let args = Args::try_parse_from([
        "hit_rate",
        "--backend",
        "memory",
        "--servers",
        "2",
        "--no-svg",
    ])
    .expect("parses");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let refused = runtime.block_on(lab::cli::run(args));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("--servers")),
        "{refused:?}"
    );
}

/// `--help` documents every flag.
#[test]
fn every_flag_has_help() {
    let command = Args::command();
    command.clone().debug_assert();
    for arg in command.get_arguments() {
        assert!(
            arg.get_help()
                .is_some_and(|h| !h.to_string().trim().is_empty()),
            "--{} has no help",
            arg.get_id()
        );
    }
}
