//! Review TF: the near tier's promises, checked as an operator running several processes
//! would (`src/cache/near.rs`, `src/cache/storage/`, README "The near tier").
//!
//! The checker: two or three processes (layers on one namespace, each with a near tier
//! of its own, `max_staleness` = [`BOUND`]) share one `MemoryBackend`, each through a
//! network of its own (`support::lossy_network`) that delays calls by a seeded amount
//! (in a task of their own, so they land in another order than they were sent) and now
//! and then loses a reply (the call landed). Each process stamps what it writes under
//! generation keys (its purges, the generations, marks and store epochs it creates) with
//! a clock of its own, within the documented second of skew, one of them stepped back
//! during the run. The origin answers each URL with a version (bumped by a purge, an
//! unsafe method or a refresh); half the URLs vary on `Accept-Language`, most carry tags.
//!
//! Operations: GETs; purges of a URI, a tag, the namespace and everything (`purge_all`);
//! POSTs (an unsafe method: its 2xx invalidates the URL); refreshes (`no-cache` GETs that
//! bump the version and store it over the entry); a purge whose generation write is held
//! (`support::held_writes`) while every process reads; memcached going away (every call
//! lost, each process counting an outage, as a `TcpBackend` marks it down) and coming
//! back empty (a restart); and an operator's `flush_all` behind every process's back.
//!
//! The oracle (README, "The near tier"): once a purge, an invalidation or a refresh
//! returned, a GET that starts afterwards in the process that made it answers at least
//! the version it was made for ("this process: at once"); a GET that starts
//! `max_staleness` after it returned, in any process, too ("others within
//! `max_staleness`"; the stated tolerance, [`TOLERANCE`], is zero: an entry is answered
//! for at most the bound after the lookup that read it *started*, which was before the
//! change returned). An operator's flush counts as a purge of everything by nobody. A
//! refresh's store finishes in the background: its floor counts from when memcached is
//! seen answering it (a layer without a tier, `only-if-cached`) plus [`STORE_SLACK`] (its
//! epoch write and the tier's forgetting follow the write, each bounded by the lookup
//! timeout), and only if it was stored. Changes made while memcached was away (they
//! fail: no floor) promise nothing.
//!
//! Each process has a second layer sharing its tier and backend, configured otherwise
//! (only 200s stored, a key header `x-tenant`): it must answer only its tenant's pages,
//! never the first layer's, and never a 404 the first layer stored and its tier kept
//! (README: "answered from it only to layers of the settings that judged it").
//!
//! Undone in a scratch tree, each of these is caught (timings decide which seed): the
//! tier's forgetting in `Storage::invalidate` (2 seeds of 3), the fence in
//! `NearCache::keep` (a lookup under way across a purge kept: 3 of 10), answering for
//! twice `max_staleness` in `NearCache::get` (1 of 3), the store epoch written after a
//! replacing store (`Storage::store`: only by the calm schedule, 2 of 4), the settings
//! check in `NearCache::get` (every seed).
//!
//! What it found (the calm schedule, about one run in three): two refreshes (or first
//! fills) of one variant in flight, the older answer stored last by a plain `set` under
//! the unchanged index, so that memcached (and every tier after it) went back from a
//! newer response to an older one. Fixed in `Storage::store` (a variant is written over
//! what its lookup read under its key: `add` or `cas`);
//! [`an_older_refresh_of_a_variant_does_not_replace_a_newer_one`] and
//! [`an_older_fill_of_a_variant_does_not_replace_a_newer_one`] are the same race, by
//! hand.
//!
//! Beside it, by hand: `Age` grows on near-tier answers; `Cache-Status` names the near
//! tier; a `stale-while-revalidate` or `must-revalidate` entry kept there goes stale as it
//! would from memcached (revalidated in the background, or at the origin), and an entry
//! past its freshness is never answered fresh from the tier.
//!
//! `REVIEW_TF_SEED=n` runs one seed, `REVIEW_TF_SEEDS=n` that many, `REVIEW_TF_STEPS` the
//! operations per seed, `REVIEW_TF_LOG=1` prints every seed's log.

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Advanced, Backend, BackendError, Lifetime, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache, Purger, ResponseBody};

use support::held_writes::{self, Gate};
use support::lossy_network::{Fault, Network, Through};
use support::seeded;
use support::skewed_clock::Skewed;

const NAMESPACE: &str = "review-tf";
const URLS: usize = 6;
const TAGS: [&str; 2] = ["red", "blue"];
const LANGS: [&str; 2] = ["en", "fr"];
/// Each process's near tier's `max_staleness`.
const BOUND: Duration = Duration::from_millis(250);
/// What another process's change may take beyond [`BOUND`] to show.
const TOLERANCE: Duration = Duration::ZERO;
/// A refresh's store is seen in memcached; its epoch write and the process's forgetting
/// follow within this.
const STORE_SLACK: Duration = Duration::from_millis(250);
const MS: i64 = 1_000_000;

// ---------------------------------------------------------------------------------------
// A process's network and clock.

type GateSlot = Arc<Mutex<Option<Arc<Gate>>>>;

/// Half the calls go at once, the others up to 40 ms late, a few lose their reply (after
/// landing); none while memcached is away.
#[derive(Clone)]
struct Net {
    rng: Arc<Mutex<StdRng>>,
    down: Arc<AtomicBool>,
    gate: GateSlot,
}

impl Network for Net {
    fn fault(&self) -> Fault {
        if self.down.load(Ordering::SeqCst) {
            return Fault::Lost;
        }
        let mut rng = self.rng.lock().unwrap();
        match rng.random_range(0..100) {
            0..=54 => Fault::None,
            55..=84 => Fault::Late(rng.random_range(1..10)),
            85..=96 => Fault::Late(rng.random_range(10..40)),
            _ => Fault::ReplyLost,
        }
    }

    async fn before_write(&self, key: &str) {
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.pass(key).await;
        }
    }
}

/// A process's view of memcached: through its network, its generation stamps shifted by
/// its clock's offset, and the outages it noticed.
#[derive(Clone)]
struct Proc {
    inner: Skewed<Through<Net>>,
    outages: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

impl Backend for Proc {
    forward_to_inner!(
        get, get_many, set, add, cas, delete, touch, incr, flush_all, stats
    );

    async fn advance_on_every_server(
        &self,
        key: &str,
        stamp: u64,
        lifetime: Lifetime,
    ) -> Result<Advanced, BackendError> {
        self.inner
            .advance_on_every_server(key, stamp, lifetime)
            .await
    }

    fn server_of(&self, route: &str) -> Option<usize> {
        self.inner.inner.server_of(route)
    }

    // A `TcpBackend` marks the server down once it fails: counted here when memcached
    // goes away, by every process.
    fn outages(&self) -> u64 {
        self.outages.load(Ordering::SeqCst)
    }

    fn is_available(&self, _key: &str) -> bool {
        !self.down.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// The origin: a version per URL.

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

/// Whether URL `i`'s responses vary on `Accept-Language`.
fn varies(i: usize) -> bool {
    i % 2 == 1
}

/// The variant a request for URL `i` selects: its language, or `-`.
fn variant(i: usize, rng: &mut StdRng) -> &'static str {
    if varies(i) {
        LANGS[rng.random_range(0..LANGS.len())]
    } else {
        "-"
    }
}

struct Origin {
    versions: Vec<AtomicU64>,
    rng: Mutex<StdRng>,
    /// The world's log, where each request's arrival is noted.
    log: Log,
}

/// The log of a run: lines with the time since it began.
#[derive(Clone)]
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    start: Instant,
}

impl Log {
    fn note(&self, line: String) {
        let at = self.start.elapsed().as_micros() as f64 / 1000.0;
        self.lines
            .lock()
            .unwrap()
            .push(format!("[{at:8.2} ms] {line}"));
    }
}

impl Origin {
    async fn respond(&self, request: Request<()>) -> Response<Full<Bytes>> {
        let i: usize = match request.uri().path().strip_prefix("/p").map(str::parse) {
            Some(Ok(i)) if i < URLS => i,
            // Gone, for as long as anyone cares: a 404 only some layers store.
            _ => {
                return Response::builder()
                    .status(404)
                    .header("cache-control", "max-age=600")
                    .body(Full::new(Bytes::from_static(b"gone")))
                    .unwrap();
            }
        };
        let ms = self.rng.lock().unwrap().random_range(0..8);
        if request.method() == Method::POST {
            let version = self.versions[i].fetch_add(1, Ordering::SeqCst) + 1;
            self.log.note(format!("origin: POST p{i}, now v{version}"));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // The version it made: what its invalidation must show from its return on
            // (later ones may be requested while it is under way).
            return Response::new(Full::new(Bytes::from(format!("posted v{version}"))));
        }
        if request.headers().contains_key("x-bump") {
            self.versions[i].fetch_add(1, Ordering::SeqCst);
        }
        // The version the response is made of: read when the request arrives.
        let version = self.versions[i].load(Ordering::SeqCst);
        self.log.note(format!(
            "origin: GET p{i} {:?} -> v{version}",
            request.headers()
        ));
        let lang = match varies(i) {
            true => request
                .headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned(),
            false => "-".to_owned(),
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let mut builder = Response::builder().header("cache-control", "max-age=600");
        if varies(i) {
            builder = builder.header("vary", "accept-language");
        }
        if !tags_of(i).is_empty() {
            builder = builder.header("surrogate-key", tags_of(i).join(" "));
        }
        // The tenant, when asked for one: the strict layer keys by it.
        let tenant = match request.headers().get("x-tenant") {
            Some(tenant) => format!(" t{}", tenant.to_str().unwrap_or("?")),
            None => String::new(),
        };
        builder
            .body(Full::new(Bytes::from(format!(
                "p{i} {lang} v{version}{tenant}"
            ))))
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The processes and the model.

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

struct Process {
    svc: Svc,
    /// A second layer of the process, sharing its near tier and backend, configured
    /// otherwise: only 200s stored, and a key header (`x-tenant`).
    strict: Svc,
    purger: Purger<Proc>,
    clock: Arc<AtomicI64>,
    gate: GateSlot,
    background: tower_memcache::cache::Background,
}

/// A change that returned: by which process (`None`: an operator behind every process's
/// back), when, and the version each URL (one variant, or every one) must answer since.
struct Floor {
    what: String,
    by: Option<usize>,
    returned: Instant,
    covers: Vec<(usize, Option<&'static str>, u64)>,
}

struct World {
    store: MemoryBackend,
    /// A layer on `store` itself, without a near tier: what memcached answers.
    probe: Svc,
    origin: Arc<Origin>,
    processes: Vec<Process>,
    floors: Mutex<Vec<Floor>>,
    violations: Mutex<Vec<String>>,
    log: Log,
    /// memcached is away: every call is lost.
    down: Arc<AtomicBool>,
    /// Outages so far (every process counts them, as its backend marks the server down).
    outages: Arc<AtomicU64>,
    /// Bumped when memcached goes away and when it comes back: a change that saw it move
    /// may have failed on its way.
    upheavals: AtomicU64,
    /// One outage, one held purge at a time.
    exclusive: tokio::sync::Mutex<()>,
    /// Which process's clock steps back, at which step, to which offset.
    step_back: (usize, usize, i64),
    /// Only changes of one URL (no tag, namespace or whole purges, outages or flushes,
    /// which send every tier back to memcached): a near entry then lives long enough to
    /// be confirmed by its store epoch, again and again.
    calm: bool,
}

impl World {
    /// The version a GET of `(i, lang)` by `p` starting at `start` must at least answer,
    /// and why.
    /// (`tenant`: through the strict layer, whose variants a refresh through the plain
    /// one does not touch.)
    fn floor(
        &self,
        p: usize,
        i: usize,
        lang: &str,
        tenant: Option<&str>,
        start: Instant,
    ) -> (u64, Option<String>) {
        let floors = self.floors.lock().unwrap();
        let mut best = (0, None);
        for floor in floors.iter() {
            let applies = match floor.by {
                Some(by) if by == p => floor.returned <= start,
                _ => floor.returned + BOUND + TOLERANCE <= start,
            };
            if !applies {
                continue;
            }
            for &(u, variant, version) in &floor.covers {
                let covered = match variant {
                    None => true,
                    Some(variant) => variant == lang && tenant.is_none(),
                };
                if u == i && covered && version > best.0 {
                    best = (version, Some(floor.what.clone()));
                }
            }
        }
        best
    }

    fn note(&self, line: String) {
        self.log.note(line);
    }

    fn push(&self, floor: Floor) {
        self.floors.lock().unwrap().push(floor);
    }

    /// The versions of every URL (each variant), for a change of them all.
    fn all(&self) -> Vec<(usize, Option<&'static str>, u64)> {
        (0..URLS)
            .map(|i| (i, None, self.origin.versions[i].load(Ordering::SeqCst)))
            .collect()
    }
}

fn world(seed: u64, steps: usize, calm: bool) -> World {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = MemoryBackend::new();
    let log = Log {
        lines: Arc::default(),
        start: Instant::now(),
    };
    let origin = Arc::new(Origin {
        versions: (0..URLS).map(|_| AtomicU64::new(1)).collect(),
        rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x7f)),
        log: log.clone(),
    });
    let down = Arc::new(AtomicBool::new(false));
    let outages = Arc::new(AtomicU64::new(0));
    let count = rng.random_range(2..=3);
    let processes: Vec<Process> = (0..count)
        .map(|p| {
            // Offsets within [-500 ms, +450 ms]: any two clocks within the second of skew.
            let offset = rng.random_range(-500..=450) * MS;
            let clock = Arc::new(AtomicI64::new(offset));
            let gate = GateSlot::default();
            let backend = Proc {
                inner: Skewed {
                    inner: Through {
                        inner: store.clone(),
                        network: Net {
                            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(
                                seed.wrapping_mul(31).wrapping_add(p as u64),
                            ))),
                            down: Arc::clone(&down),
                            gate: Arc::clone(&gate),
                        },
                    },
                    offset: Arc::clone(&clock),
                },
                outages: Arc::clone(&outages),
                down: Arc::clone(&down),
            };
            let layer = MemcacheLayer::new(backend)
                .namespace(NAMESPACE)
                .mode(CacheMode::Origin)
                .lookup_timeout(Duration::from_millis(50))
                .lease_wait(Duration::from_millis(150), Duration::from_millis(5))
                .near_cache(NearCache::new(1 << 20, BOUND));
            let strict = layer
                .clone()
                .statuses([200])
                .key_headers([http::HeaderName::from_static("x-tenant")]);
            let origin = {
                let origin = Arc::clone(&origin);
                move |request: Request<()>| {
                    let origin = Arc::clone(&origin);
                    async move { Ok::<_, Infallible>(origin.respond(request).await) }
                }
            };
            let svc = tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(origin.clone());
            let strict = tower::ServiceBuilder::new()
                .layer(strict)
                .service_fn(origin);
            Process {
                svc: tower::util::BoxCloneSyncService::new(svc),
                strict: tower::util::BoxCloneSyncService::new(strict),
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
    let probe = MemcacheLayer::new(store.clone())
        .namespace(NAMESPACE)
        .mode(CacheMode::Origin)
        .lease_wait(Duration::from_millis(5), Duration::from_millis(1));
    let probe =
        tower::ServiceBuilder::new()
            .layer(probe)
            .service_fn(|_request: Request<()>| async {
                // `only-if-cached`: never asked.
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(500)
                        .body(Full::default())
                        .unwrap(),
                )
            });
    World {
        probe: tower::util::BoxCloneSyncService::new(probe),
        store,
        origin,
        processes,
        floors: Mutex::default(),
        violations: Mutex::default(),
        log,
        down,
        outages,
        upheavals: AtomicU64::new(0),
        exclusive: tokio::sync::Mutex::default(),
        step_back: (stepped, rng.random_range(0..steps.max(1)), to),
        calm,
    }
}

/// A request for URL `i`'s variant `lang` by process `p`: status, body, `Cache-Status`.
async fn send(
    world: &World,
    p: usize,
    method: Method,
    i: usize,
    lang: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    send_to(&world.processes[p].svc, method, i, lang, headers).await
}

/// [`send`], through `svc`.
async fn send_to(
    svc: &Svc,
    method: Method,
    i: usize,
    lang: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request = Request::builder().method(method).uri(url(i));
    if lang != "-" {
        request = request.header("accept-language", lang);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = svc
        .clone()
        .oneshot(request.body(()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        cache_status,
    )
}

/// The version in a body `p{i} {lang} v{n}` for `(i, lang)`.
fn version_in(body: &str, i: usize, lang: &str) -> Option<u64> {
    let rest = body.strip_prefix(&format!("p{i} {lang} v"))?;
    rest.split(' ').next()?.parse().ok()
}

/// A GET, checked against the floors that apply to it.
async fn get(world: &World, p: usize, i: usize, lang: &str) {
    get_as(world, p, i, lang, None).await;
}

/// A GET, through the process's strict layer for `tenant` (which must answer that
/// tenant's page, never another layer's), or its plain layer (never a tenant's page).
async fn get_as(world: &World, p: usize, i: usize, lang: &str, tenant: Option<&str>) {
    let started = Instant::now();
    let (floor, why) = world.floor(p, i, lang, tenant, started);
    let process = &world.processes[p];
    let (status, body, cache_status) = match tenant {
        Some(tenant) => {
            let headers = [("x-tenant", tenant)];
            send_to(&process.strict, Method::GET, i, lang, &headers).await
        }
        None => send_to(&process.svc, Method::GET, i, lang, &[]).await,
    };
    let by = match tenant {
        Some(tenant) => format!("{p} (strict, {tenant})"),
        None => p.to_string(),
    };
    let line = format!(
        "+{:?} GET p{i} {lang} by {by}: {status} {body:?} ({cache_status}), floor {floor} from {why:?}",
        started.elapsed()
    );
    world.note(line.clone());
    let whose = match tenant {
        Some(tenant) => body.ends_with(&format!(" t{tenant}")),
        None => !body.contains(" t"),
    };
    let fine = status == 200 && whose && version_in(&body, i, lang).is_some_and(|v| v >= floor);
    if !fine {
        world.violations.lock().unwrap().push(line);
    }
}

/// Whether memcached was steady (up, and neither going nor coming) since `upheavals`.
fn steady(world: &World, upheavals: u64) -> bool {
    !world.down.load(Ordering::SeqCst) && world.upheavals.load(Ordering::SeqCst) == upheavals
}

/// A purge by `p` of `what` (`uri i`, `tag t`, `namespace`, `all`): the versions it covers
/// bumped first; on `Ok`, they are floors from its return on.
async fn purge(world: &World, p: usize, what: &str, i: usize) {
    let urls: Vec<usize> = match what.strip_prefix("tag ") {
        Some(tag) => (0..URLS).filter(|&u| tags_of(u).contains(&tag)).collect(),
        None if what == "uri" => vec![i],
        None => (0..URLS).collect(),
    };
    for &u in &urls {
        world.origin.versions[u].fetch_add(1, Ordering::SeqCst);
    }
    let covers = urls
        .iter()
        .map(|&u| (u, None, world.origin.versions[u].load(Ordering::SeqCst)))
        .collect();
    let purger = &world.processes[p].purger;
    let outcome = match what.strip_prefix("tag ") {
        Some(tag) => purger.purge_tag(tag).await,
        None => match what {
            "uri" => purger.purge_uri(&url(i)).await,
            "namespace" => purger.purge_namespace().await,
            _ => purger.purge_all().await,
        },
    };
    let what = match what {
        "uri" => format!("purge_uri p{i} by {p}"),
        _ => format!("purge {what} by {p}"),
    };
    world.note(format!(
        "{what}: {:?}",
        outcome.as_ref().map_err(|e| e.to_string())
    ));
    if outcome.is_ok() {
        world.push(Floor {
            what,
            by: Some(p),
            returned: Instant::now(),
            covers,
        });
    }
}

/// A POST to URL `i` by `p`: the origin bumps its version; a 2xx invalidates the URL
/// (RFC 9111 §4.4) before the response goes out.
async fn post(world: &World, p: usize, i: usize) {
    let upheavals = world.upheavals.load(Ordering::SeqCst);
    let (status, body, _) = send(world, p, Method::POST, i, "-", &[]).await;
    let version = body.strip_prefix("posted v").and_then(|v| v.parse().ok());
    let what = format!("POST p{i} by {p}");
    world.note(format!("{what}: {status}, made v{version:?}"));
    // Its invalidation's delete and epoch write landed (a reply lost is landed all the
    // same); while memcached moved, they may not have.
    if let (200, Some(version), true) = (status, version, steady(world, upheavals)) {
        world.push(Floor {
            what,
            by: Some(p),
            returned: Instant::now(),
            covers: vec![(i, None, version)],
        });
    }
}

/// The version memcached answers for `(i, lang)` now, as a layer without a near tier
/// (and without a network between) reads it: `only-if-cached`, never the origin.
async fn stored_version(world: &World, i: usize, lang: &str) -> Option<u64> {
    let headers = [("cache-control", "only-if-cached")];
    let (status, body, _) = send_to(&world.probe, Method::GET, i, lang, &headers).await;
    (status == 200)
        .then(|| version_in(&body, i, lang))
        .flatten()
}

/// A refresh by `p`: a `no-cache` GET that makes the origin bump the version, stored over
/// the entry in the background. Once memcached is seen answering it (and a slack for the
/// rest of the store), its version is the variant's floor. (A store that lost its race
/// changed nothing: no floor.)
async fn refresh(world: &World, p: usize, i: usize, lang: &'static str) {
    let upheavals = world.upheavals.load(Ordering::SeqCst);
    let headers = [("cache-control", "no-cache"), ("x-bump", "1")];
    let (status, body, cache_status) = send(world, p, Method::GET, i, lang, &headers).await;
    let what = format!("refresh p{i} {lang} by {p}");
    world.note(format!("{what}: {status} {body:?} ({cache_status})"));
    let Some(version) = version_in(&body, i, lang) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_millis(400);
    while Instant::now() < deadline {
        if stored_version(world, i, lang)
            .await
            .is_some_and(|v| v >= version)
        {
            tokio::time::sleep(STORE_SLACK).await;
            if steady(world, upheavals) {
                world.note(format!("{what}: v{version} stored"));
                world.push(Floor {
                    what,
                    by: Some(p),
                    returned: Instant::now(),
                    covers: vec![(i, Some(lang), version)],
                });
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The page that is gone (a 404 for `max-age=600`), twice, through the plain layer (which
/// stores 404s, and may answer it from the tier) or the strict one (which stores only
/// 200s, and must never answer it from memcached or the tier the plain layer shares).
async fn gone(world: &World, p: usize, strict: bool) {
    let process = &world.processes[p];
    let svc = if strict {
        &process.strict
    } else {
        &process.svc
    };
    let headers = [("x-tenant", "a")];
    let headers: &[(&str, &str)] = if strict { &headers } else { &[] };
    for _ in 0..2 {
        let (status, body, cache_status) = send_to(svc, Method::GET, URLS, "-", headers).await;
        let line =
            format!("GET gone by {p} (strict: {strict}): {status} {body:?} ({cache_status})");
        world.note(line.clone());
        if status != 404 || (strict && cache_status.contains("hit")) {
            world.violations.lock().unwrap().push(line);
        }
    }
}

/// Another process `q` holds `(i, lang)` in its near tier (read twice) when `p` changes
/// it (a refresh, a POST, a purge of the URL or of its tag); `q` reads it again once the
/// change is past its bound, and on.
async fn watched(world: &World, p: usize, i: usize, lang: &'static str, rng: &mut StdRng) {
    let q = (p + rng.random_range(1..world.processes.len())) % world.processes.len();
    get(world, q, i, lang).await;
    get(world, q, i, lang).await;
    world.note(format!("watched p{i} {lang}: held by {q}, changed by {p}"));
    // Calm: no tag or namespace purge.
    match rng.random_range(0..if world.calm { 3 } else { 4 }) {
        0 => refresh(world, p, i, lang).await,
        1 => post(world, p, i).await,
        2 => purge(world, p, "uri", i).await,
        _ => match tags_of(i).first() {
            Some(tag) => purge(world, p, &format!("tag {tag}"), i).await,
            None => purge(world, p, "namespace", i).await,
        },
    }
    for _ in 0..3 {
        tokio::time::sleep(BOUND / 2 + Duration::from_millis(5)).await;
        get(world, q, i, lang).await;
    }
}

/// A purge whose generation write by `p` is held (`held_writes`) while every process
/// reads the URLs it covers, then released.
async fn held_purge(world: &World, p: usize, rng: &mut StdRng) {
    let _alone = world.exclusive.lock().await;
    let (what, key) = match rng.random_range(0..3) {
        0 => (
            "namespace".to_owned(),
            held_writes::internal_key(NAMESPACE, "\0generation"),
        ),
        n => {
            let tag = TAGS[n - 1];
            (format!("tag {tag}"), held_writes::tag_key(NAMESPACE, tag))
        }
    };
    let gate = Gate::new(key);
    *world.processes[p].gate.lock().unwrap() = Some(Arc::clone(&gate));
    world.note(format!("held purge {what} by {p}"));
    let reads = async {
        if gate.caught_within(Duration::from_millis(300)).await {
            let mut reads = Vec::new();
            for q in 0..world.processes.len() {
                for i in 0..URLS {
                    let lang = if varies(i) { LANGS[q % 2] } else { "-" };
                    reads.push(get(world, q, i, lang));
                }
            }
            futures_util::future::join_all(reads).await;
        }
        gate.release();
    };
    tokio::join!(purge(world, p, &what, 0), reads);
    *world.processes[p].gate.lock().unwrap() = None;
}

/// memcached goes away (every call lost; every process counts an outage), and comes back
/// empty, a restart: what was in flight lands before it does.
async fn outage(world: &World, ms: u64) {
    let _alone = world.exclusive.lock().await;
    world.upheavals.fetch_add(1, Ordering::SeqCst);
    world.down.store(true, Ordering::SeqCst);
    world.outages.fetch_add(1, Ordering::SeqCst);
    world.note("memcached away".into());
    // Longer than the latest call in flight, which then lands before the restart.
    tokio::time::sleep(Duration::from_millis(ms.max(60))).await;
    world.store.flush_all().await.unwrap();
    world.down.store(false, Ordering::SeqCst);
    world.upheavals.fetch_add(1, Ordering::SeqCst);
    world.note("memcached back, empty".into());
}

/// An operator's `flush_all`, behind every process's back: a purge of everything by
/// nobody (the versions bumped first, as for a purge).
async fn operator_flush(world: &World) {
    for version in &world.origin.versions {
        version.fetch_add(1, Ordering::SeqCst);
    }
    let covers = world.all();
    world.store.flush_all().await.unwrap();
    world.note("operator flush_all".into());
    world.push(Floor {
        what: "operator flush_all".into(),
        by: None,
        returned: Instant::now(),
        covers,
    });
}

async fn op(world: Arc<World>, seed: u64, step: usize) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
    let p = rng.random_range(0..world.processes.len());
    let i = rng.random_range(0..URLS);
    let lang = variant(i, &mut rng);
    let (stepped, at, to) = world.step_back;
    if step == at {
        let from = world.processes[stepped].clock.swap(to, Ordering::SeqCst);
        world.note(format!(
            "process {stepped}'s clock stepped back from {} ms to {} ms",
            from / MS,
            to / MS
        ));
    }
    let choice = match world.calm {
        // GETs, URI purges, POSTs, refreshes, watched changes of one URL.
        true => match rng.random_range(0..100) {
            0..=59 => 0,
            60..=64 => 152,
            65..=72 => 168,
            73..=84 => 178,
            _ => 185,
        },
        false => rng.random_range(0..200),
    };
    match choice {
        // Mostly a few in a row: the second is the near tier's.
        0..=151 => {
            // A quarter through the process's strict layer, for one of two tenants.
            let tenant = match rng.random_range(0..8) {
                0 => Some("a"),
                1 => Some("b"),
                _ => None,
            };
            for _ in 0..rng.random_range(1..=3) {
                get_as(&world, p, i, lang, tenant).await;
            }
            if rng.random_range(0..10) == 0 {
                gone(&world, p, tenant.is_some()).await;
            }
        }
        152..=159 => purge(&world, p, "uri", i).await,
        160..=164 => {
            let tag = TAGS[rng.random_range(0..TAGS.len())];
            purge(&world, p, &format!("tag {tag}"), i).await;
        }
        165..=166 => purge(&world, p, "namespace", i).await,
        167 => purge(&world, p, "all", i).await,
        168..=177 => post(&world, p, i).await,
        178..=184 => refresh(&world, p, i, lang).await,
        185..=189 => watched(&world, p, i, lang, &mut rng).await,
        190..=194 => held_purge(&world, p, &mut rng).await,
        195..=196 => outage(&world, rng.random_range(20..120)).await,
        _ => operator_flush(&world).await,
    }
}

async fn run_seed(seed: u64, steps: usize, calm: bool) -> Result<String, String> {
    let world = Arc::new(world(seed, steps, calm));
    let backgrounds = world.processes.iter().map(|process| &process.background);
    let op_of = |step| op(Arc::clone(&world), seed, step);
    seeded::run_steps(seed, steps, 6, op_of, backgrounds).await?;
    // Settled: a purge of everything's tag by each process, then every URL from each,
    // twice (the second from the near tier).
    for p in 0..world.processes.len() {
        purge(&world, p, "tag red", 0).await;
    }
    tokio::time::sleep(BOUND).await;
    for _ in 0..2 {
        for p in 0..world.processes.len() {
            for i in 0..URLS {
                for lang in LANGS {
                    let lang = if varies(i) { lang } else { "-" };
                    get(&world, p, i, lang).await;
                }
            }
        }
    }
    let log = world.log.lines.lock().unwrap();
    let count = |what: &str| log.iter().filter(|line| line.contains(what)).count();
    let summary = format!(
        "{} GETs under a floor ({} near hits, {} hits), {} floors, {} changes failed",
        count("from Some("),
        count("detail=near"),
        count("; hit"),
        world.floors.lock().unwrap().len(),
        count(": Err("),
    );
    if std::env::var_os("REVIEW_TF_LOG").is_some() {
        eprintln!("seed {seed} log:\n  {}", log.join("\n  "));
    }
    let violations = world.violations.lock().unwrap();
    if violations.is_empty() {
        if count("detail=near") == 0 {
            return Err(format!(
                "seed {seed}: the near tier answered nothing ({summary})"
            ));
        }
        return Ok(summary);
    }
    Err(format!(
        "seed {seed}: {} violation(s) ({summary})\n{}\nstep back {:?}\nlog:\n  {}",
        violations.len(),
        violations.join("\n"),
        world.step_back,
        log.join("\n  "),
    ))
}

/// Runs `seeds` seeds of `steps` steps each (unless `REVIEW_TF_SEED`, `_SEEDS` or
/// `_STEPS` say otherwise).
fn run(seeds: u64, steps: usize, calm: bool) {
    let steps = seeded::steps("TF", steps);
    seeded::run(seeded::seeds("TF", seeds), |seed| {
        run_seed(seed, steps, calm)
    });
}

/// The random schedule: every kind of change, outages and flushes.
#[test]
fn near_tiers_of_several_processes_keep_their_promises() {
    run(3, 300, false);
}

/// Changes of one URL at a time only, so that entries live past their window and are
/// confirmed by their store epochs.
#[test]
fn near_tiers_confirming_by_epoch_keep_their_promises() {
    run(2, 200, true);
}

// ---------------------------------------------------------------------------------------
// By hand: what a near-tier answer says of itself, and how its entries go stale.

/// One layer with a near tier (bound `bound`) and one without, on one `MemoryBackend`; an
/// origin that answers `cache_control` (and `Age: 5`, and an `ETag`) with a version bumped
/// per request.
fn pair(
    cache_control: &'static str,
    bound: Duration,
) -> (Svc, Svc, support::Watch, Arc<AtomicU64>) {
    let store = MemoryBackend::new();
    let calls = Arc::new(AtomicU64::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        move |_request: Request<()>| {
            let version = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let response = Response::builder()
                    .header("cache-control", cache_control)
                    .header("age", "5")
                    // A validator: memcached keeps the entry past its freshness.
                    .header("etag", format!("\"{version}\""))
                    .body(Full::new(Bytes::from(format!("v{version}"))))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    };
    let near = MemcacheLayer::new(store.clone())
        .mode(CacheMode::Origin)
        .near_cache(NearCache::new(1 << 20, bound));
    let plain = MemcacheLayer::new(store).mode(CacheMode::Origin);
    let watch = support::Watch::of(&near);
    let near = tower::ServiceBuilder::new()
        .layer(near)
        .service_fn(origin.clone());
    let plain = tower::ServiceBuilder::new().layer(plain).service_fn(origin);
    (
        tower::util::BoxCloneSyncService::new(near),
        tower::util::BoxCloneSyncService::new(plain),
        watch,
        calls,
    )
}

/// A GET of the page: body, `Cache-Status`, `Age`.
async fn fetch(svc: &Svc) -> (String, String, Option<u64>) {
    let request = Request::get("http://site.example/page").body(()).unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, age) = (header("cache-status"), header("age"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        String::from_utf8_lossy(&body).into_owned(),
        status.unwrap_or_default(),
        age.and_then(|age| age.parse().ok()),
    )
}

/// Fills the page and has the near tier keep it: a miss, then a hit in memcached (kept),
/// then the near tier's answer.
async fn keep_near(svc: &Svc, watch: &support::Watch) {
    let (_, status, _) = fetch(svc).await;
    assert!(status.contains("fwd=uri-miss"), "{status}");
    watch.settled().await;
    let (_, status, _) = fetch(svc).await;
    assert_eq!(status, "tower-memcache; hit", "from memcached, kept");
    let (_, status, _) = fetch(svc).await;
    assert_eq!(status, "tower-memcache; hit; detail=near");
}

/// `Age` on a near-tier answer is the entry's age now (the origin's `Age` plus the time
/// since it was received), as memcached's answer says at the same moment, not the age it
/// had when the tier kept it; and `Cache-Status` names the tier.
#[tokio::test]
async fn age_grows_on_near_answers_as_on_memcached_ones() {
    let (near, plain, watch, _) = pair("max-age=100", Duration::from_secs(30));
    keep_near(&near, &watch).await;
    let (_, _, kept_age) = fetch(&near).await;
    assert!(kept_age.is_some_and(|age| age >= 5), "{kept_age:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (body, status, near_age) = fetch(&near).await;
    let (plain_body, plain_status, plain_age) = fetch(&plain).await;
    assert_eq!(status, "tower-memcache; hit; detail=near");
    assert_eq!(plain_status, "tower-memcache; hit");
    assert_eq!((body.as_str(), plain_body.as_str()), ("v1", "v1"));
    let (near_age, plain_age) = (near_age.unwrap(), plain_age.unwrap());
    assert!(
        near_age >= kept_age.unwrap() + 2,
        "{near_age} after {kept_age:?}"
    );
    assert!(
        near_age.abs_diff(plain_age) <= 1,
        "{near_age} vs {plain_age}"
    );
}

/// An entry past its HTTP freshness is never answered from the near tier, however long
/// the tier's own bound: it goes to memcached and the origin as without the tier.
#[tokio::test]
async fn an_entry_past_its_freshness_is_not_answered_from_the_near_tier() {
    // `Age: 5` of `max-age=7`: two seconds of freshness left.
    let (near, _, watch, calls) = pair("max-age=7", Duration::from_secs(60));
    keep_near(&near, &watch).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (body, status, _) = fetch(&near).await;
    assert!(status.contains("fwd=stale"), "{status}");
    assert_eq!(body, "v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A `stale-while-revalidate` entry kept in the near tier goes stale as from memcached:
/// the stale answer (not the tier's) with a refresh in the background, whose store this
/// process's tier then answers.
#[tokio::test]
async fn a_stale_while_revalidate_entry_from_the_near_tier_goes_stale_as_from_memcached() {
    let (near, _, watch, calls) = pair(
        "max-age=7, stale-while-revalidate=60",
        Duration::from_secs(60),
    );
    keep_near(&near, &watch).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (body, status, _) = fetch(&near).await;
    assert_eq!(body, "v1");
    assert!(
        status.contains("hit; ttl=-") && !status.contains("near"),
        "{status}"
    );
    watch.settled().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "refreshed in the background"
    );
    let (body, status, _) = fetch(&near).await;
    assert_eq!(body, "v2", "{status}");
}

/// A `must-revalidate` entry kept in the near tier is revalidated at the origin once
/// stale, as from memcached, never answered stale.
#[tokio::test]
async fn a_must_revalidate_entry_from_the_near_tier_goes_to_the_origin_once_stale() {
    let (near, _, watch, calls) = pair("max-age=7, must-revalidate", Duration::from_secs(60));
    keep_near(&near, &watch).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (body, status, _) = fetch(&near).await;
    assert_eq!(body, "v2", "{status}");
    assert!(status.contains("fwd=stale"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------
// Found by the checker: an older refresh of a variant stored over a newer one.

/// Two processes refresh one variant of a URL whose responses vary (`no-cache` requests:
/// an administrator's reload after an update, say). The first one's request reaches the
/// origin first, and its answer comes back last: its store must not replace the newer
/// response the second one stored meanwhile, as it cannot for a URL that does not vary
/// (the entry's compare-and-swap). A variant was written by a plain `set` under its
/// index, so the older answer was kept (fresh for its whole lifetime) and answered to
/// everyone after the newer one had been: memcached went back in time, and every near
/// tier with it.
#[tokio::test]
async fn an_older_refresh_of_a_variant_does_not_replace_a_newer_one() {
    two_fills_of_one_variant("en", true).await;
}

/// The same with two first fills of a variant the URL's index has no entry for yet (two
/// processes' misses of it: no placeholder holds a URL whose index is in place).
#[tokio::test]
async fn an_older_fill_of_a_variant_does_not_replace_a_newer_one() {
    two_fills_of_one_variant("fr", false).await;
}

/// The URL's `en` variant stored; then two processes ask for `lang` (`reload`: with
/// `no-cache`): the first one's answer (`v2`) is held at the origin until the second's
/// (`v3`) is stored; the newer must stay.
async fn two_fills_of_one_variant(lang: &'static str, reload: bool) {
    let store = MemoryBackend::new();
    let calls = Arc::new(AtomicU64::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let origin = {
        let (calls, release) = (Arc::clone(&calls), Arc::clone(&release));
        move |request: Request<()>| {
            let version = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let release = Arc::clone(&release);
            let lang = request.headers().get("accept-language").cloned();
            async move {
                // The first one asked for: answered once the second one is stored.
                if version == 2 {
                    let _ = tokio::time::timeout(Duration::from_secs(3), release.notified()).await;
                }
                let lang = lang.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
                let response = Response::builder()
                    .header("cache-control", "max-age=600")
                    .header("vary", "accept-language")
                    .body(Full::new(Bytes::from(format!("{lang} v{version}"))))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    };
    let process = |store: &MemoryBackend| {
        let layer = MemcacheLayer::new(store.clone()).mode(CacheMode::Origin);
        let watch = support::Watch::of(&layer);
        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(origin.clone());
        (tower::util::BoxCloneSyncService::new(svc) as Svc, watch)
    };
    let ((first, first_watch), (second, second_watch)) = (process(&store), process(&store));
    let get = |svc: &Svc, lang: &str, reload: bool| {
        let mut request = Request::get("http://site.example/news").header("accept-language", lang);
        if reload {
            request = request.header("cache-control", "no-cache");
        }
        let response = svc.clone().oneshot(request.body(()).unwrap());
        async move {
            let body = response.await.unwrap().into_body().collect().await.unwrap();
            String::from_utf8_lossy(&body.to_bytes()).into_owned()
        }
    };
    assert_eq!(get(&first, "en", false).await, "en v1");
    first_watch.settled().await;
    assert_eq!(get(&second, "en", false).await, "en v1", "stored");
    // The first goes out, and is held at the origin.
    let held = tokio::spawn(get(&first, lang, reload));
    support::eventually("the first at the origin", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    // The second goes out later, is answered at once, and stored.
    let newer = format!("{lang} v3");
    assert_eq!(get(&second, lang, reload).await, newer);
    second_watch.settled().await;
    assert_eq!(get(&second, lang, false).await, newer, "the newer stored");
    // Then the first's answer, older, comes back.
    release.notify_one();
    assert_eq!(held.await.unwrap(), format!("{lang} v2"));
    first_watch.settled().await;
    assert_eq!(
        get(&second, lang, false).await,
        newer,
        "the older answer replaced the newer one"
    );
    assert_eq!(get(&first, lang, false).await, newer);
}
