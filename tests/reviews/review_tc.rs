//! Review TC: a seeded, bounded checker of "a purge that returned holds" under concurrent
//! purges from several processes whose clocks differ, for reviews SX (purges advance a
//! tag's and the namespace's generation, and the namespace's tag-purge mark, as
//! max-registers on every server: `Backend::advance_on_every_server`, `LocalPurges`) and
//! TA (a fill sent while this process's purge write was under way is judged with the
//! margin: `Made::landed`).
//!
//! Two or three processes (layers on one namespace, no near tier) share one
//! `MemoryBackend`, each through a network of its own that delays every call by a seeded
//! amount in a task of its own (so concurrent writes, the reads and compare-and-swaps of
//! concurrent advances included, land in another order than they were sent), and each
//! stamps its purges (and the tag marks it creates) with a clock of its own: an offset
//! within the documented skew (`CLOCK_SKEW`, one second between any two processes), one
//! of them stepped back during the run. Their requests' times are the host's clock: what
//! counts for the purge protocol is how one process's stamps compare with another's
//! requests, which the offsets span in both directions. The shared origin answers each
//! URL with a version counter; some answers are held until the next purge returns (a fill
//! under way across a purge), others for a random few ms.
//!
//! The oracle (README, "A purge that returned holds"): a purge first bumps the versions
//! of the URLs it covers, then notes them (its floors) and starts. Once it returned `Ok`,
//! every GET that starts afterwards, in any process, must answer at least those versions:
//! a response whose request went out before the purge started carries an older one. (A
//! tag purge by another process may refuse more, from a second before its time: that
//! costs stores, never this check.)
//!
//! Two schedules: the random one (GETs, URI, tag and namespace purges, evictions of a
//! tag's generation or the mark, and now and then a race of two purges of a tag with a
//! fill, [`contend`]: 3 seeds of 150 operations), and races alone (2 seeds of 20). Found
//! nothing on the code as it is. They can fail, when run in a tree with a check undone:
//! review TA's (the arm of `Storage::after_request` that judges a fill sent before this
//! process's write landed with the margin) is caught by the races in 3 seeds of 4 (and
//! once in 12 seeds of the random schedule); SX's max-register undone with it (the
//! advance a plain compare-and-swap of the stamp, nothing absorbed) too (four answers
//! in one seed). SX's undone alone is not caught: within the second of skew, TA's check
//! and the margin cover what it orders (a value landing after a later purge returned is
//! judged with the margin, as another process's). Timings decide, so a seed that caught
//! a hole once may miss it in another run.
//!
//! `REVIEW_TC_SEED=n` runs one seed, `REVIEW_TC_SEEDS=n` that many, `REVIEW_TC_STEPS` the
//! operations per seed, `REVIEW_TC_LOG=1` prints every seed's log; a failure prints the
//! seed, the clocks and the log (operations in order of completion).

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, Purger, ResponseBody};

use support::held_writes::{self, Gate};
use support::lossy_network::{Fault, Network, Through};
use support::seeded;
use support::skewed_clock;

const NAMESPACE: &str = "review-tc";
const URLS: usize = 6;
const TAGS: [&str; 2] = ["red", "blue"];

// ---------------------------------------------------------------------------------------
// A process's network: every call delayed by a seeded amount, in a task of its own.

/// A process's network: half the calls go at once, the others up to 15 ms late, some up
/// to 80 ms; and where the schedule holds one write of this process (see [`contend`]).
#[derive(Clone)]
struct Delays {
    rng: Arc<Mutex<StdRng>>,
    gate: Slot,
}

type Slot = Arc<Mutex<Option<Arc<Gate>>>>;

impl Network for Delays {
    fn fault(&self) -> Fault {
        let mut rng = self.rng.lock().unwrap();
        match rng.random_range(0..100) {
            0..=49 => Fault::None,
            50..=84 => Fault::Late(rng.random_range(1..15)),
            _ => Fault::Late(rng.random_range(15..80)),
        }
    }

    async fn before_write(&self, key: &str) {
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.pass(key).await;
        }
    }
}

/// A process's view of the shared store: every call delayed by a seeded amount, in a
/// task of its own.
type Delayed = Through<Delays>;

/// [`Delayed`], with the times this process writes taken from a clock of its own.
type Skewed = skewed_clock::Skewed<Delayed>;

// ---------------------------------------------------------------------------------------
// The origin: a version per URL; some answers held until the next purge returns.

fn url(i: usize) -> String {
    format!("http://site.example/p{i}")
}

/// URL `i`'s tags: none, red, or red and blue.
fn tags_of(i: usize) -> &'static [&'static str] {
    match i % 3 {
        0 => &[],
        1 => &TAGS[..1],
        _ => &TAGS[..],
    }
}

struct Origin {
    versions: Vec<AtomicU64>,
    /// Requests that reached the origin, per URL.
    arrivals: Vec<AtomicU64>,
    /// URLs whose next answer is held until this many purges return.
    held: Vec<AtomicU64>,
    /// Notified when a purge returns: the gate held answers wait at.
    purged: tokio::sync::Notify,
    rng: Mutex<StdRng>,
}

impl Origin {
    async fn respond(&self, request: Request<()>) -> Response<Full<Bytes>> {
        let i: usize = match request.uri().path().strip_prefix("/p").map(str::parse) {
            Some(Ok(i)) if i < URLS => i,
            _ => {
                return Response::builder()
                    .status(404)
                    .body(Full::default())
                    .unwrap();
            }
        };
        // The version the response is made of: read when the request arrives.
        let version = self.versions[i].load(Ordering::SeqCst);
        self.arrivals[i].fetch_add(1, Ordering::SeqCst);
        let held = self.held[i].swap(0, Ordering::SeqCst);
        let (gated, ms) = {
            let mut rng = self.rng.lock().unwrap();
            (rng.random_range(0..3) == 0, rng.random_range(0..20))
        };
        // Until a purge returns (or as many as held), at most 300 ms each, then a little more.
        for _ in 0..held.max(u64::from(gated)) {
            let _ = tokio::time::timeout(Duration::from_millis(300), self.purged.notified()).await;
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let mut builder = Response::builder().header("cache-control", "max-age=600");
        if !tags_of(i).is_empty() {
            builder = builder.header("surrogate-key", tags_of(i).join(" "));
        }
        builder
            .body(Full::new(Bytes::from(format!("p{i} v{version}"))))
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The processes and the model.

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

struct Process {
    svc: Svc,
    purger: Purger<Skewed>,
    clock: Arc<AtomicI64>,
    gate: Slot,
    background: tower_memcache::cache::Background,
}

/// A purge that returned `Ok`: when, and the floor of each URL it covers.
struct Purged {
    what: String,
    returned: Instant,
    floors: Vec<(usize, u64)>,
}

struct World {
    store: MemoryBackend,
    origin: Arc<Origin>,
    processes: Vec<Process>,
    purges: Mutex<Vec<Purged>>,
    violations: Mutex<Vec<String>>,
    log: Mutex<Vec<String>>,
    /// Whether every operation is a [`contend`].
    contend_only: bool,
    /// One [`contend`] at a time: their gates are per process.
    contending: tokio::sync::Mutex<()>,
    /// Which process's clock steps back, at which step, to which offset.
    step_back: (usize, usize, i64),
}

impl World {
    /// The version a GET of URL `i` starting now must at least answer, and why.
    fn floor(&self, i: usize) -> (u64, Option<String>) {
        let now = Instant::now();
        let purges = self.purges.lock().unwrap();
        let mut best = (0, None);
        for purge in purges.iter().filter(|purge| purge.returned <= now) {
            for &(u, floor) in &purge.floors {
                if u == i && floor > best.0 {
                    best = (floor, Some(purge.what.clone()));
                }
            }
        }
        best
    }

    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

const MS: i64 = 1_000_000;

fn world(seed: u64, steps: usize, contend_only: bool) -> World {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = MemoryBackend::new();
    let origin = Arc::new(Origin {
        versions: (0..URLS).map(|_| AtomicU64::new(1)).collect(),
        arrivals: (0..URLS).map(|_| AtomicU64::new(0)).collect(),
        held: (0..URLS).map(|_| AtomicU64::new(0)).collect(),
        purged: tokio::sync::Notify::new(),
        rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x7c)),
    });
    let count = rng.random_range(2..=3);
    // Offsets within [-500 ms, +450 ms]: any two clocks within the second of skew
    // tolerated, before and after the step back.
    let processes: Vec<Process> = (0..count)
        .map(|p| {
            let offset = rng.random_range(-500..=450) * MS;
            let clock = Arc::new(AtomicI64::new(offset));
            let gate = Slot::default();
            let backend = Skewed {
                inner: Delayed {
                    inner: store.clone(),
                    network: Delays {
                        rng: Arc::new(Mutex::new(StdRng::seed_from_u64(
                            seed.wrapping_mul(31).wrapping_add(p as u64),
                        ))),
                        gate: Arc::clone(&gate),
                    },
                },
                offset: Arc::clone(&clock),
            };
            let layer = MemcacheLayer::new(backend)
                .namespace(NAMESPACE)
                .mode(CacheMode::Origin)
                .lookup_timeout(Duration::from_millis(50))
                .lease_wait(Duration::from_millis(150), Duration::from_millis(5));
            let svc = tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn({
                    let origin = Arc::clone(&origin);
                    move |request: Request<()>| {
                        let origin = Arc::clone(&origin);
                        async move { Ok::<_, Infallible>(origin.respond(request).await) }
                    }
                });
            Process {
                svc: tower::util::BoxCloneSyncService::new(svc),
                purger: layer.purger(),
                clock,
                gate,
                background: layer.background(),
            }
        })
        .collect();
    let stepped = rng.random_range(0..count);
    let from = processes[stepped].clock.load(Ordering::SeqCst) / MS;
    let to = rng.random_range(-500..from.max(-499)) * MS;
    World {
        store,
        origin,
        processes,
        purges: Mutex::default(),
        violations: Mutex::default(),
        log: Mutex::default(),
        contend_only,
        contending: tokio::sync::Mutex::default(),
        step_back: (stepped, rng.random_range(0..steps.max(1)), to),
    }
}

async fn get(world: &World, p: usize, i: usize) {
    let (floor, why) = world.floor(i);
    let started = Instant::now();
    let request = Request::get(url(i)).body(()).unwrap();
    let response = world.processes[p]
        .svc
        .clone()
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let line = format!(
        "+{:?} GET p{i} by {p}: {status} {body:?} ({cache_status}), floor {floor} from {why:?}",
        started.elapsed()
    );
    world.note(line.clone());
    let mut words = body.split(' ');
    let (name, version) = (words.next(), words.next());
    let version: Option<u64> = version.and_then(|v| v.strip_prefix('v')?.parse().ok());
    let fine = status == 200
        && name == Some(format!("p{i}").as_str())
        && version.is_some_and(|v| v >= floor);
    if !fine {
        world.violations.lock().unwrap().push(line);
    }
}

/// Bumps the versions of `urls`, notes them as floors, purges; on `Ok`, the floors hold
/// from now on.
async fn purge(world: &World, p: usize, what: String, urls: Vec<usize>) {
    for &i in &urls {
        world.origin.versions[i].fetch_add(1, Ordering::SeqCst);
    }
    let floors: Vec<(usize, u64)> = urls
        .iter()
        .map(|&i| (i, world.origin.versions[i].load(Ordering::SeqCst)))
        .collect();
    let purger = &world.processes[p].purger;
    let outcome = if let Some(tag) = what.strip_prefix("purge_tag ") {
        purger.purge_tag(tag).await.map_err(|e| e.to_string())
    } else if what == "purge_namespace" {
        purger.purge_namespace().await.map_err(|e| e.to_string())
    } else {
        let i = urls[0];
        purger.purge_uri(&url(i)).await.map_err(|e| e.to_string())
    };
    world.note(format!("{what} by {p}: {outcome:?}, floors {floors:?}"));
    if outcome.is_ok() {
        world.purges.lock().unwrap().push(Purged {
            what: format!("{what} by {p}"),
            returned: Instant::now(),
            floors,
        });
    }
    world.origin.purged.notify_waiters();
}

async fn op(world: Arc<World>, seed: u64, step: usize) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
    let p = rng.random_range(0..world.processes.len());
    let i = rng.random_range(0..URLS);
    let (stepped, at, to) = world.step_back;
    if step == at {
        let clock = &world.processes[stepped].clock;
        let from = clock.swap(to, Ordering::SeqCst);
        world.note(format!(
            "process {stepped}'s clock stepped back from {} ms to {} ms",
            from / MS,
            to / MS
        ));
    }
    let choice = if world.contend_only {
        92
    } else {
        rng.random_range(0..100)
    };
    match choice {
        0..=77 => get(&world, p, i).await,
        78..=83 => purge(&world, p, format!("purge_uri p{i}"), vec![i]).await,
        84..=89 => {
            let tag = TAGS[rng.random_range(0..TAGS.len())];
            let urls = (0..URLS).filter(|&u| tags_of(u).contains(&tag)).collect();
            purge(&world, p, format!("purge_tag {tag}"), urls).await;
        }
        90..=91 => purge(&world, p, "purge_namespace".into(), (0..URLS).collect()).await,
        92..=96 => contend(&world, p, &mut rng).await,
        _ => evict(&world, rng.random_range(0..=TAGS.len())).await,
    }
}

/// Two processes' purges of one tag racing a fill of one of its pages, their writes of
/// the tag's generation ordered by gates: process `p` purges the tag (A), its write held;
/// its GET of the page (purged first, so that it is a fill) goes to the origin, whose
/// answer is held until A returned; another process purges the tag (B). Then either
/// B returns and A's write lands last (review SX's order), or B reads the generation, A's
/// write lands, then B's (review TA's: B may find A's value past its stamp and stop
/// there). The tag's generation is evicted first, mostly. Then a GET of the page
/// from any process.
async fn contend(world: &World, p: usize, rng: &mut StdRng) {
    let _alone = world.contending.lock().await;
    let n = rng.random_range(0..TAGS.len());
    let tag = TAGS[n];
    let page = [1, 2, 4, 5][rng.random_range(0..4)];
    let page = if tags_of(page).contains(&tag) {
        page
    } else {
        2
    };
    let q = (p + rng.random_range(1..world.processes.len())) % world.processes.len();
    // Mostly B's clock behind A's (its stamp may then be below A's value), whose purge
    // writes over no purge (an eviction: a purge over a recent one is judged by that one).
    let offset = |p: usize| world.processes[p].clock.load(Ordering::SeqCst);
    let (p, q) = if rng.random_range(0..4) > 0 && offset(q) > offset(p) {
        (q, p)
    } else {
        (p, q)
    };
    let reader = rng.random_range(0..world.processes.len());
    let ta_order = rng.random_range(0..2) == 0;
    if rng.random_range(0..4) > 0 {
        evict(world, n).await;
    }
    purge(world, p, format!("purge_uri p{page}"), vec![page]).await;
    let key = tag_key(n);
    let here = Gate::new(key.clone());
    let there = Gate::new(key);
    *world.processes[p].gate.lock().unwrap() = Some(Arc::clone(&here));
    if ta_order {
        *world.processes[q].gate.lock().unwrap() = Some(Arc::clone(&there));
    }
    world.note(format!(
        "contend {tag} p{page}: A by {p}, B by {q}, {} order",
        if ta_order { "TA's" } else { "SX's" }
    ));
    let urls: Vec<usize> = (0..URLS).filter(|&u| tags_of(u).contains(&tag)).collect();
    let what = format!("purge_tag {tag}");
    let a_done = std::sync::atomic::AtomicBool::new(false);
    let b_done = std::sync::atomic::AtomicBool::new(false);
    let fill_sent = tokio::sync::Notify::new();
    let b_go = tokio::sync::Notify::new();
    let wait = Duration::from_millis(300);
    let purge_a = async {
        purge(world, p, what.clone(), urls.clone()).await;
        a_done.store(true, Ordering::SeqCst);
    };
    let fill = async {
        if here.caught_within(wait).await {
            let arrivals = world.origin.arrivals[page].load(Ordering::SeqCst);
            // Answered once A returned: after B in SX's order.
            let held = if ta_order { 1 } else { 2 };
            world.origin.held[page].store(held, Ordering::SeqCst);
            let request = get(world, p, page);
            let watch = async {
                let deadline = Instant::now() + wait;
                while world.origin.arrivals[page].load(Ordering::SeqCst) == arrivals
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                fill_sent.notify_one();
            };
            tokio::join!(request, watch);
        } else {
            fill_sent.notify_one();
            b_go.notify_one();
        }
    };
    let purge_b = async {
        fill_sent.notified().await;
        purge(world, q, what.clone(), urls.clone()).await;
        b_done.store(true, Ordering::SeqCst);
    };
    let order = async {
        if ta_order {
            there.caught_within(wait).await;
            here.release();
            let deadline = Instant::now() + wait;
            while !a_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            there.release();
        } else {
            let deadline = Instant::now() + wait;
            while !b_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            here.release();
        }
    };
    tokio::join!(purge_a, fill, purge_b, order);
    // Whatever was not caught goes on.
    here.release();
    there.release();
    get(world, reader, page).await;
}

/// The generation of tag `n`, or past the tags the namespace's tag-purge mark.
fn tag_key(n: usize) -> String {
    match TAGS.get(n) {
        Some(tag) => held_writes::tag_key(NAMESPACE, tag),
        None => held_writes::tag_purges_key(NAMESPACE),
    }
}

/// memcached evicts a tag's generation (`n` < the tags) or the namespace's tag-purge
/// mark: the next store of a page of the tag creates it (`"{stamp}c"`), and the next purge
/// advances over that, no purge.
async fn evict(world: &World, n: usize) {
    let evicted = world.store.delete(&tag_key(n)).await.unwrap();
    world.note(format!(
        "evicted {}: {evicted}",
        TAGS.get(n).unwrap_or(&"the mark")
    ));
}

async fn run_seed(seed: u64, steps: usize, contend_only: bool) -> Result<String, String> {
    let world = Arc::new(world(seed, steps, contend_only));
    let backgrounds = world.processes.iter().map(|process| &process.background);
    let op_of = |step| op(Arc::clone(&world), seed, step);
    seeded::run_steps(seed, steps, 8, op_of, backgrounds).await?;
    // Settled: every URL from every process, after a last purge of a tag from each.
    for p in 0..world.processes.len() {
        let urls = (0..URLS).filter(|&u| tags_of(u).contains(&"red")).collect();
        purge(&world, p, "purge_tag red".into(), urls).await;
    }
    for p in 0..world.processes.len() {
        for i in 0..URLS {
            get(&world, p, i).await;
        }
    }
    let log = world.log.lock().unwrap();
    let count = |what: &str| log.iter().filter(|line| line.contains(what)).count();
    let summary = format!(
        "{} answers under a floor ({} hits), {} purges held, {} failed",
        count("from Some("),
        count("; hit"),
        world.purges.lock().unwrap().len(),
        count(": Err("),
    );
    let violations = world.violations.lock().unwrap();
    if std::env::var_os("REVIEW_TC_LOG").is_some() {
        eprintln!("seed {seed} log:\n  {}", log.join("\n  "));
    }
    if violations.is_empty() {
        return Ok(summary);
    }
    let clocks: Vec<String> = world
        .processes
        .iter()
        .enumerate()
        .map(|(p, process)| {
            format!(
                "process {p}: clock {} ms",
                process.clock.load(Ordering::SeqCst) / MS
            )
        })
        .collect();
    Err(format!(
        "seed {seed}: {} violation(s) ({summary})\n{}\n{} (now); step back {:?}\nlog:\n  {}",
        violations.len(),
        violations.join("\n"),
        clocks.join("; "),
        world.step_back,
        log.join("\n  "),
    ))
}

/// Runs `seeds` seeds of `steps` steps each (unless `REVIEW_TC_SEED`, `_SEEDS` or
/// `_STEPS` say otherwise).
fn run(seeds: u64, steps: usize, contend_only: bool) {
    let steps = seeded::steps("TC", steps);
    seeded::run(seeded::seeds("TC", seeds), |seed| {
        run_seed(seed, steps, contend_only)
    });
}

/// The random schedule: GETs, URI, tag and namespace purges, evictions, and now and then
/// two purges of a tag racing a fill ([`contend`]).
#[test]
fn concurrent_purges_from_skewed_processes_hold() {
    run(3, 150, false);
}

/// Only races of two purges of a tag and a fill, one at a time, each with its random
/// processes, clocks, order of writes and eviction.
#[test]
fn racing_tag_purges_from_skewed_processes_hold() {
    run(2, 20, true);
}
