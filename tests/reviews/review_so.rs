//! Review SO: a seeded, bounded fault soak of the consistency promises across a cluster of
//! three real memcached servers shared by several processes, as an operator's outages look.
//!
//! Each "process" is a `MemcacheLayer` over a `TcpBackend` of its own (not siblings: each
//! keeps its own view of which server is down, as separate processes do), all on one
//! namespace; some have a near tier (staleness 0 or a small bound), some remove failed
//! servers from the ring (`remove_failed_servers(true)`), per seed. The origin stamps every
//! answer with the URL's version (`/p3 v7`), which the test bumps before each purge or
//! invalidation covering the URL. A seeded schedule of operations then runs: bursts of
//! GETs of a skewed set of URLs through random processes, URL, tag and namespace purges
//! (`Purger`) and invalidating POSTs (some while GETs and their fills are under way),
//! pauses and hot URLs read a near tier's bound apart (what the tiers keep lapses and is
//! confirmed), a server hung (SIGSTOP) for a while and resumed with its old data
//! (SIGCONT), and a server killed and restarted empty; while a server is out, half the
//! operations draw the URLs it held. Checked after every step:
//!
//! - (a) once a purge or invalidation returned `Ok` (a POST: its 2xx), no answer of any
//!   process carries an older version of a URL it covered, except from a near tier of
//!   another process within that tier's `max_staleness` (README, "The near tier"). A
//!   process that never noticed a server was down may read that server's old content
//!   after it resumes until a process that did has reset it (ARCHITECTURE.md, "Purges that
//!   hold": not promised), so after a resume the schedule waits until every process has
//!   the server back in use, plus the largest near-tier bound, before it checks again;
//! - (b) no answer carries another URL's page;
//! - (c) with one of the three servers killed, every URL whose entry was cached on a live
//!   server is still a hit (only the dead server's share is lost), unless a process marked
//!   a live server down meanwhile (a loaded machine's timeout, counted by
//!   `Backend::outages`, which the sweep then reports instead of judging);
//! - (d) fail-open: every request is answered 200 by the origin's page, servers down or
//!   hung, within the lookup timeout plus a lease wait and a margin.
//!
//! The last two tests are the defect found while building the soak, made deterministic:
//! an invalidation wrote its store epoch only on the URL's server in the purger's view,
//! so a near tier of a process whose ring placed the URL on another server confirmed the
//! purged page for up to eight windows.
//!
//! Fixed seeds, plus `REVIEW_SO_SEED=n` to run seed `n` alone (and `REVIEW_SO_STEPS` for
//! the operations per seed). Each seed is bounded (about 12 s, 30 s at most), and
//! everything stops by itself. Skips without memcached unless `MEMCACHED_REQUIRED=1`.

#![cfg(feature = "tcp")]

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower_memcache::TcpBackend;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{MemcacheLayer, NearCache};
use tower_memcache::key::build_key;

use support::versioned::{Svc, serving};
use support::{Memcached, Watch};

const HOST: &str = "so.example";
const NS: &str = "review-so";
/// URLs the schedule draws from (skewed towards the first ones).
const URLS: usize = 24;
/// URL `i` carries tag `g{i % TAGS}`.
const TAGS: usize = 4;
const SERVERS: usize = 3;
/// The backend's reply timeout: a hung server is marked down after twice this.
const TIMEOUT: Duration = Duration::from_millis(150);
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(300);
const LEASE_WAIT: Duration = Duration::from_millis(400);
/// (d): no answer may take longer, servers down or hung.
const MAX_LATENCY: Duration = Duration::from_millis(2000);
/// A seed stops drawing operations past this, whatever `REVIEW_SO_STEPS` says.
const SEED_BUDGET: Duration = Duration::from_secs(10);

fn url(i: usize) -> String {
    format!("http://{HOST}/p{i}")
}

/// The layer's primary key of `GET url(i)` (its server is the URL's).
fn key(i: usize) -> String {
    build_key(Some(NS), &format!("GET {}", url(i)))
}

/// The origin: per-URL versions, bumped by the schedule before each purge.
struct Origin {
    versions: Vec<AtomicU64>,
}

impl Origin {
    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            // An unsafe method's 2xx: the layer invalidates the URL.
            let mut response = Response::new(Full::new(Bytes::from_static(b"done")));
            response
                .headers_mut()
                .insert("cache-control", "no-store".parse().unwrap());
            return response;
        }
        let index: usize = path
            .strip_prefix("/p")
            .and_then(|i| i.parse().ok())
            .expect("a URL of the schedule");
        let version = self.versions[index].load(Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from(format!("{path} v{version}"))));
        let headers = response.headers_mut();
        headers.insert("cache-control", "max-age=600".parse().unwrap());
        headers.insert(
            "surrogate-key",
            format!("g{}", index % TAGS).parse().unwrap(),
        );
        response
    }
}

/// One process: its own backend (its own view of the servers' health), layer and tier.
struct Process {
    backend: TcpBackend,
    layer: MemcacheLayer<TcpBackend>,
    svc: Svc,
    watch: Watch,
    /// The near tier's bound, when it has one.
    near: Option<Duration>,
    remove_failed: bool,
}

/// A purge or invalidation that returned `Ok`: answers for `url` must carry at least
/// `floor` once it returned (from another process's near tier, its bound later).
struct Floor {
    floor: u64,
    returned: Instant,
    by: usize,
}

struct World {
    servers: Vec<Memcached>,
    origin: Arc<Origin>,
    processes: Vec<Process>,
    floors: Vec<Vec<Floor>>,
    log: Vec<String>,
    /// What the sweeps of (c) saw: (judged, skipped because of a spurious outage).
    sweeps: (u32, u32),
    latency: Duration,
    /// While a server is out: the URLs whose keys it held (moved to the others by the
    /// processes that remove failed servers), which half the operations then draw.
    focus: Vec<usize>,
    /// What the seed did: answers (hits), purges (`Ok`, failed), hangs and kills.
    counts: Counts,
}

#[derive(Debug, Default)]
struct Counts {
    answers: u32,
    hits: u32,
    purged: u32,
    purges_failed: u32,
    hangs: u32,
    kills: u32,
}

fn world(seed: u64, servers: Vec<Memcached>) -> (World, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let origin = Arc::new(Origin {
        versions: (0..URLS).map(|_| AtomicU64::new(0)).collect(),
    });
    let count = rng.random_range(2..=3);
    // All keep failed servers in the ring, all remove them, or each as it draws (a
    // rolling change of the setting: rings that differ while a server is out).
    let ring_mode = rng.random_range(0..4);
    let processes = (0..count)
        .map(|p| {
            let remove_failed = match ring_mode {
                0 => false,
                1 => true,
                _ => p % 2 == 0,
            };
            let backend = TcpBackend::builder()
                .servers(servers.iter().map(Memcached::addr))
                .timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                .probe_interval(Duration::from_millis(30))
                .remove_failed_servers(remove_failed)
                .build()
                .unwrap();
            let near = match rng.random_range(0..4) {
                0 => None,
                1 => Some(Duration::ZERO),
                _ => Some(Duration::from_millis(60)),
            };
            let mut layer = MemcacheLayer::new(backend.clone())
                .namespace(NS)
                .lookup_timeout(LOOKUP_TIMEOUT)
                .lease_wait(LEASE_WAIT, Duration::from_millis(20));
            if let Some(staleness) = near {
                layer = layer.near_cache(NearCache::new(4 << 20, staleness));
            }
            let svc = serving(&layer, {
                let origin = Arc::clone(&origin);
                move |request| origin.respond(request)
            });
            let watch = Watch::of(&layer);
            Process {
                backend,
                layer,
                svc,
                watch,
                near,
                remove_failed,
            }
        })
        .collect();
    let world = World {
        servers,
        origin,
        processes,
        floors: (0..URLS).map(|_| Vec::new()).collect(),
        log: Vec::new(),
        sweeps: (0, 0),
        latency: Duration::ZERO,
        focus: Vec::new(),
        counts: Counts::default(),
    };
    (world, rng)
}

/// A URL, skewed: the first ones are drawn far more often.
fn skewed(rng: &mut StdRng) -> usize {
    let x: f64 = rng.random();
    ((x * x * x) * URLS as f64) as usize % URLS
}

/// What one GET saw.
struct Seen {
    path: usize,
    process: usize,
    started: Instant,
    status: u16,
    body: String,
    cache_status: String,
    took: Duration,
}

async fn get(svc: &Svc, process: usize, path: usize) -> Seen {
    let started = Instant::now();
    let answer = support::send(svc, Method::GET, &url(path), &[]).await;
    Seen {
        path,
        process,
        started,
        status: answer.status.as_u16(),
        cache_status: answer.cache_status().to_string(),
        body: answer.body,
        took: started.elapsed(),
    }
}

impl World {
    /// A URL for the next operation: skewed, or half the time one of [`World::focus`].
    fn pick(&self, rng: &mut StdRng) -> usize {
        if !self.focus.is_empty() && rng.random_bool(0.5) {
            self.focus[rng.random_range(0..self.focus.len())]
        } else {
            skewed(rng)
        }
    }

    /// The version an answer by `process` that started at `started` must carry at least.
    fn floor(&self, path: usize, process: usize, started: Instant) -> u64 {
        let allowance = |by: usize| {
            if by == process {
                Duration::ZERO
            } else {
                self.processes[process].near.unwrap_or(Duration::ZERO)
            }
        };
        self.floors[path]
            .iter()
            .filter(|floor| floor.returned + allowance(floor.by) <= started)
            .map(|floor| floor.floor)
            .max()
            .unwrap_or(0)
    }

    /// Checks (a), (b) and (d) on one answer.
    fn check(&mut self, seen: &Seen) -> Result<(), String> {
        self.latency = self.latency.max(seen.took);
        self.counts.answers += 1;
        self.counts.hits += u32::from(seen.cache_status.contains("hit"));
        let what = format!(
            "process {} GET /p{} -> {} {:?} ({}) in {:?}",
            seen.process, seen.path, seen.status, seen.body, seen.cache_status, seen.took
        );
        self.log.push(what.clone());
        if seen.status != 200 {
            return Err(format!("(d) not answered 200: {what}"));
        }
        if seen.took > MAX_LATENCY {
            return Err(format!("(d) answered too late: {what}"));
        }
        let prefix = format!("/p{} v", seen.path);
        let Some(version) = seen
            .body
            .strip_prefix(&prefix)
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return Err(format!("(b) another URL's page: {what}"));
        };
        let floor = self.floor(seen.path, seen.process, seen.started);
        if version < floor {
            return Err(format!(
                "(a) version {version} older than a purge that returned (v{floor}): {what}"
            ));
        }
        Ok(())
    }

    /// A burst of one to three concurrent GETs through random processes.
    async fn gets(&mut self, rng: &mut StdRng) -> Result<(), String> {
        let burst: Vec<(usize, usize)> = (0..rng.random_range(1..=3))
            .map(|_| (rng.random_range(0..self.processes.len()), self.pick(rng)))
            .collect();
        let seen = futures_util::future::join_all(
            burst
                .iter()
                .map(|&(p, path)| get(&self.processes[p].svc, p, path)),
        )
        .await;
        for seen in &seen {
            self.check(seen)?;
        }
        Ok(())
    }

    /// A purge while a burst of GETs (and their fills, stored in the background) runs:
    /// what they answer is judged by when each started, and what they stored by the GETs
    /// after the purge returned.
    async fn purge_during_gets(&mut self, rng: &mut StdRng) -> Result<(), String> {
        let burst: Vec<(Svc, usize, usize)> = (0..rng.random_range(1..=4))
            .map(|_| {
                let p = rng.random_range(0..self.processes.len());
                (self.processes[p].svc.clone(), p, self.pick(rng))
            })
            .collect();
        let gets = tokio::spawn(futures_util::future::join_all(
            burst
                .into_iter()
                .map(|(svc, p, path)| async move { get(&svc, p, path).await }),
        ));
        self.purge(rng).await;
        let seen = gets.await.map_err(|err| format!("a GET panicked: {err}"))?;
        for seen in &seen {
            self.check(seen)?;
        }
        Ok(())
    }

    /// A URL hot in one process: read three times, a near tier's bound apart, so that
    /// what its tier keeps lapses and is confirmed (or read again) between reads.
    async fn hot(&mut self, rng: &mut StdRng) -> Result<(), String> {
        let p = rng.random_range(0..self.processes.len());
        let path = self.pick(rng);
        for _ in 0..3 {
            let seen = get(&self.processes[p].svc, p, path).await;
            self.check(&seen)?;
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
        Ok(())
    }

    /// Bumps the versions of `paths`; once `purge` returned `Ok`, records their floors.
    fn bump(&self, paths: &[usize]) -> Vec<u64> {
        paths
            .iter()
            .map(|&path| self.origin.versions[path].fetch_add(1, Ordering::SeqCst) + 1)
            .collect()
    }

    fn purged(&mut self, by: usize, paths: &[usize], versions: &[u64]) {
        let returned = Instant::now();
        for (&path, &floor) in paths.iter().zip(versions) {
            self.floors[path].push(Floor {
                floor,
                returned,
                by,
            });
        }
    }

    /// A URL, tag or namespace purge, or an invalidating POST, through a random process.
    async fn purge(&mut self, rng: &mut StdRng) {
        let by = rng.random_range(0..self.processes.len());
        let purger = self.processes[by].layer.purger();
        let (what, paths) = match rng.random_range(0..10) {
            0..=3 => {
                let path = self.pick(rng);
                (format!("purge_uri /p{path}"), vec![path])
            }
            4..=5 => {
                let tag = rng.random_range(0..TAGS);
                let paths = (0..URLS).filter(|i| i % TAGS == tag).collect();
                (format!("purge_tag g{tag}"), paths)
            }
            6 => ("purge_namespace".to_string(), (0..URLS).collect()),
            _ => {
                let path = self.pick(rng);
                (format!("POST /p{path}"), vec![path])
            }
        };
        let versions = self.bump(&paths);
        let outcome = if let Some(path) = what.strip_prefix("purge_uri /p") {
            let path: usize = path.parse().unwrap();
            purger
                .purge_uri(&url(path))
                .await
                .map_err(|e| e.to_string())
        } else if let Some(tag) = what.strip_prefix("purge_tag ") {
            purger.purge_tag(tag).await.map_err(|e| e.to_string())
        } else if what == "purge_namespace" {
            purger.purge_namespace().await.map_err(|e| e.to_string())
        } else {
            let answer =
                support::send(&self.processes[by].svc, Method::POST, &url(paths[0]), &[]).await;
            if answer.status.is_success() {
                Ok(())
            } else {
                Err(answer.status.to_string())
            }
        };
        self.log.push(format!(
            "process {by} {what} (to v{versions:?}): {outcome:?}"
        ));
        if outcome.is_ok() {
            self.counts.purged += 1;
            self.purged(by, &paths, &versions);
        } else {
            self.counts.purges_failed += 1;
        }
    }

    /// Some random GETs and purges (no faults), and pauses past the near tiers' bound
    /// (so that what they keep lapses and is confirmed, or read again).
    async fn steps(&mut self, rng: &mut StdRng, count: usize) -> Result<(), String> {
        for _ in 0..count {
            match rng.random_range(0..10) {
                0..=4 => self.gets(rng).await?,
                5 => {
                    let pause = Duration::from_millis(rng.random_range(20..100));
                    self.log.push(format!("pause {pause:?}"));
                    tokio::time::sleep(pause).await;
                }
                6 => self.hot(rng).await?,
                7 => self.purge_during_gets(rng).await?,
                _ => self.purge(rng).await,
            }
        }
        Ok(())
    }

    fn outages(&self) -> u64 {
        self.processes.iter().map(|p| p.backend.outages()).sum()
    }

    /// Waits (5 s at most) until no process has server `index` marked down: every
    /// process that noticed its outage has reset it, and it is in use again.
    async fn back_in_use(&self, index: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .processes
            .iter()
            .any(|p| p.backend.is_server_down(index))
        {
            if Instant::now() > deadline {
                return Err(format!("server {index} not back in use within 5 s"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A process that read the server's old content before the reset may keep it in
        // its near tier for its bound (see the module's comment on (a)).
        let bound = self
            .processes
            .iter()
            .filter_map(|p| p.near)
            .max()
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(bound + Duration::from_millis(5)).await;
        Ok(())
    }

    /// Server `index` hung (SIGSTOP), noticed by every process, some random steps, and
    /// resumed with whatever it held (SIGCONT).
    async fn hang(&mut self, rng: &mut StdRng, index: usize) -> Result<(), String> {
        self.log.push(format!("SIGSTOP server {index}"));
        self.counts.hangs += 1;
        self.servers[index].signal(nix::sys::signal::Signal::SIGSTOP);
        let outcome = self.while_away(rng, index).await;
        self.servers[index].signal(nix::sys::signal::Signal::SIGCONT);
        self.log.push(format!("SIGCONT server {index}"));
        outcome?;
        self.back_in_use(index).await
    }

    /// Steps while server `index` does not answer: first each process asks it (GETs of
    /// URLs it holds) until that process marked it down, so that purges then skip it
    /// rather than leaving their writes in its socket for it to take when it resumes.
    async fn while_away(&mut self, rng: &mut StdRng, index: usize) -> Result<(), String> {
        let on_it: Vec<usize> = (0..URLS)
            .filter(|&i| self.processes[0].backend.server_for_key(&key(i)) == Some(index))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(4);
        for p in 0..self.processes.len() {
            if rng.random_bool(0.25) {
                // Some processes never notice: they find out on their own, or never.
                continue;
            }
            for &path in on_it.iter().cycle() {
                if self.processes[p].backend.is_server_down(index) || Instant::now() > deadline {
                    break;
                }
                let seen = get(&self.processes[p].svc, p, path).await;
                self.check(&seen)?;
            }
        }
        let steps = rng.random_range(4..12);
        self.focus = on_it;
        let outcome = self.steps(rng, steps).await;
        self.focus.clear();
        outcome
    }

    /// Server `index` killed: (c) swept, some random steps, restarted empty.
    async fn kill(&mut self, rng: &mut StdRng, index: usize) -> Result<(), String> {
        // Everything cached, and noted where it lives, as each process sees it.
        let mut held: Vec<Vec<bool>> = Vec::new();
        for p in 0..self.processes.len() {
            for path in 0..URLS {
                let seen = get(&self.processes[p].svc, p, path).await;
                self.check(&seen)?;
            }
        }
        for process in &self.processes {
            process.watch.settled().await;
        }
        for p in 0..self.processes.len() {
            let mut cached = Vec::new();
            for path in 0..URLS {
                let seen = get(&self.processes[p].svc, p, path).await;
                self.check(&seen)?;
                cached.push(seen.cache_status.contains("hit"));
            }
            held.push(cached);
        }
        let on_live: Vec<Vec<bool>> = self
            .processes
            .iter()
            .map(|p| {
                (0..URLS)
                    .map(|i| p.backend.server_for_key(&key(i)) != Some(index))
                    .collect()
            })
            .collect();
        self.log.push(format!("SIGKILL server {index}"));
        self.counts.kills += 1;
        self.servers[index].kill();
        let outages = self.outages();
        // (c): a URL cached on a live server is still a hit, whatever the dead one did.
        let mut lost = Vec::new();
        for p in 0..self.processes.len() {
            for path in 0..URLS {
                let seen = get(&self.processes[p].svc, p, path).await;
                self.check(&seen)?;
                if held[p][path] && on_live[p][path] && !seen.cache_status.contains("hit") {
                    lost.push(format!(
                        "process {p} /p{path}: {} ({})",
                        seen.body, seen.cache_status
                    ));
                }
            }
        }
        // Each process marks the dead server down once: more outages than that mean a
        // live server was marked down too (a timeout of a loaded machine).
        let spurious = self.outages() - outages > self.processes.len() as u64;
        if spurious {
            self.sweeps.1 += 1;
            self.log.push(format!(
                "(c) not judged: a live server was marked down: {lost:?}"
            ));
        } else {
            self.sweeps.0 += 1;
            if !lost.is_empty() {
                return Err(format!(
                    "(c) URLs cached on live servers lost with server {index}: {lost:#?}"
                ));
            }
        }
        let steps = rng.random_range(10..30);
        self.focus = (0..URLS).filter(|&i| !on_live[0][i]).collect();
        let outcome = self.steps(rng, steps).await;
        self.focus.clear();
        outcome?;
        tokio::task::block_in_place(|| self.servers[index].restart());
        self.log.push(format!("restarted server {index} (empty)"));
        self.back_in_use(index).await
    }
}

async fn run_seed(seed: u64, steps: usize, servers: Vec<Memcached>) -> Result<String, String> {
    let started = Instant::now();
    let (mut world, mut rng) = world(seed, servers);
    let config: Vec<String> = world
        .processes
        .iter()
        .map(|p| format!("near {:?}, remove_failed {}", p.near, p.remove_failed))
        .collect();
    let outcome = async {
        world.steps(&mut rng, 20).await?;
        for _ in 0..steps {
            if started.elapsed() > SEED_BUDGET {
                break;
            }
            match rng.random_range(0..100) {
                // The slowest fault (each process waits out its lookups to notice it):
                // two per seed at most, so that kills get their share of the budget.
                0..=3 if world.counts.hangs < 2 => {
                    let index = rng.random_range(0..SERVERS);
                    world.hang(&mut rng, index).await?;
                }
                4..=6 => {
                    let index = rng.random_range(0..SERVERS);
                    world.kill(&mut rng, index).await?;
                }
                _ => world.steps(&mut rng, 1).await?,
            }
        }
        Ok::<_, String>(())
    }
    .await;
    let summary = format!(
        "seed {seed}: {config:?}; {:?}, sweeps of (c) judged {} (skipped {}), \
         slowest answer {:?}, {:?}",
        world.counts,
        world.sweeps.0,
        world.sweeps.1,
        world.latency,
        started.elapsed()
    );
    match outcome {
        Ok(()) => Ok(summary),
        Err(failure) => {
            let tail: Vec<&String> = world.log.iter().rev().take(60).rev().collect();
            Err(format!(
                "{summary}\nFAILED: {failure}\nlast steps:\n{tail:#?}"
            ))
        }
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("REVIEW_SO_SEED") {
        Ok(seed) => vec![seed.parse().expect("REVIEW_SO_SEED: a number")],
        // Rings mixed (a process removing failed servers with a near tier of 60 ms, one
        // keeping them), all removing them with near tiers, all keeping them.
        Err(_) => vec![1, 4, 8, 21],
    }
}

#[test]
fn purges_and_failover_hold_across_processes_under_random_outages() {
    let test = "review_so::purges_and_failover_hold_across_processes_under_random_outages";
    let steps = std::env::var("REVIEW_SO_STEPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(150);
    let mut failures = Vec::new();
    for seed in seeds() {
        let servers: Vec<Memcached> = (0..SERVERS)
            .map(|_| Memcached::start(test))
            .collect::<Option<_>>()
            .unwrap_or_default();
        if servers.len() < SERVERS {
            return;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), run_seed(seed, steps, servers))
                .await
                .unwrap_or_else(|_| Err(format!("seed {seed}: still running after 30 s")))
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        match outcome {
            Ok(summary) => eprintln!("{summary}"),
            Err(report) => {
                eprintln!("{report}");
                failures.push(report);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// How the moving process of [`purge_by_another_ring`] lost server 0.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Killed, for good: the purging process, which keeps failed servers in its ring,
    /// finds it dead too (a rolling change of `remove_failed_servers`).
    Killed,
    /// Hung (SIGSTOP) while only the moving process asked it, then resumed (SIGCONT)
    /// before its probe came back: both processes remove failed servers, and the purging
    /// one never noticed the outage.
    HungOnlyForOne,
}

/// Found while building the soak (by reading, not by a seed: the soak's random schedule
/// rarely lines up the steps it needs), the soak's outages made deterministic: two
/// processes whose rings differ. The first removes failed servers and has a near tier;
/// server 0 is out in its view, so it moved `/pN` (whose key lives on server 0) to server
/// 1, filled it there and keeps it in its near tier, confirmed by the store epoch it read
/// on server 1. The second process purges the URL (then invalidates it with a POST): the
/// delete reaches every server that answers, and `Ok` is returned, but the new store
/// epoch went only to the key's server in the purger's view (server 0). Past its bound,
/// the first process confirmed the purged entry by the unchanged epoch on server 1 and
/// answered it for up to eight windows.
async fn purge_by_another_ring(outage: Outage) {
    let test = format!("review_so::purge_by_another_ring({outage:?})");
    let mut x = memcached_or_skip!(&test);
    let y = memcached_or_skip!(&test);
    let bound = Duration::from_millis(200);
    let origin = Arc::new(Origin {
        versions: (0..URLS).map(|_| AtomicU64::new(0)).collect(),
    });
    let process = |remove_failed: bool, near: Option<Duration>| {
        let backend = TcpBackend::builder()
            .servers([x.addr(), y.addr()])
            .timeout(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(100))
            // Server 0 stays out of the moving process's ring for the whole test.
            .probe_interval(Duration::from_secs(30))
            .remove_failed_servers(remove_failed)
            .build()
            .unwrap();
        let mut layer = MemcacheLayer::new(backend.clone())
            .namespace(NS)
            .lookup_timeout(Duration::from_millis(300));
        if let Some(bound) = near {
            layer = layer.near_cache(NearCache::new(4 << 20, bound));
        }
        let svc = serving(&layer, {
            let origin = Arc::clone(&origin);
            move |request| origin.respond(request)
        });
        (backend, Watch::of(&layer), layer, svc)
    };
    let (moving, watch, _, svc) = process(true, Some(bound));
    let purger_removes_failed = matches!(outage, Outage::HungOnlyForOne);
    let (purging_backend, _, purging, purging_svc) = process(purger_removes_failed, None);
    let path = (0..URLS)
        .find(|&i| moving.server_for_key(&key(i)) == Some(0))
        .expect("a URL on server 0");
    support::bounded(&test, async {
        match outage {
            Outage::Killed => x.kill(),
            Outage::HungOnlyForOne => x.signal(nix::sys::signal::Signal::SIGSTOP),
        }
        // The moving process finds server 0 out and moves its keys to server 1.
        while !moving.is_server_down(0) {
            get(&svc, 0, path).await;
        }
        if let Outage::HungOnlyForOne = outage {
            x.signal(nix::sys::signal::Signal::SIGCONT);
        }
        assert_eq!(moving.server_for_key(&key(path)), Some(1));
        for (round, change) in ["purge_uri", "POST"].into_iter().enumerate() {
            // Filled on server 1, read back (a second read knows the stripe's epoch, so
            // the entry kept can be confirmed), then confirmed past the bound.
            get(&svc, 0, path).await;
            watch.settled().await;
            assert!(get(&svc, 0, path).await.cache_status.contains("hit"));
            tokio::time::sleep(bound + Duration::from_millis(30)).await;
            let confirmed = get(&svc, 0, path).await;
            assert!(
                confirmed.cache_status.contains("detail=near"),
                "{change}: {}",
                confirmed.cache_status
            );

            let version = round as u64 + 1;
            origin.versions[path].store(version, Ordering::SeqCst);
            if change == "POST" {
                let posted = support::send(&purging_svc, Method::POST, &url(path), &[]).await;
                assert!(posted.status.is_success());
            } else {
                purging.purger().purge_uri(&url(path)).await.unwrap();
            }
            match outage {
                Outage::Killed => assert!(purging_backend.is_server_down(0)),
                Outage::HungOnlyForOne => assert!(!purging_backend.is_server_down(0)),
            }
            tokio::time::sleep(bound + Duration::from_millis(50)).await;
            let after = get(&svc, 0, path).await;
            assert_eq!(
                after.body,
                format!("/p{path} v{version}"),
                "{change} by the other process returned more than the bound ago ({})",
                after.cache_status
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_a_process_keeping_a_dead_server_in_its_ring_shows_in_a_near_tier_in_time() {
    purge_by_another_ring(Outage::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_a_process_that_missed_an_outage_shows_in_a_near_tier_in_time() {
    purge_by_another_ring(Outage::HungOnlyForOne).await;
}
