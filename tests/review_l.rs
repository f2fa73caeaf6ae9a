//! Review L: races when the work really runs in parallel on several threads (the proxy's
//! default `--runtime shared`: one multi-threaded runtime, one layer, one backend, one
//! near tier). Layer-level scenarios run on a four-worker tokio runtime; the end-to-end
//! ones run the proxy binary with `--runtime shared --threads 4`.
//!
//! What they hammer (bounded: a second or two each):
//! - a purge (URI, tag, namespace, or an unsafe method's invalidation) racing fills,
//!   refreshes and coalesced waits on other threads, with and without a near tier, over
//!   `MemoryBackend` and a real memcached: once the purge returned, nothing produced before
//!   it started is served;
//! - under `Vary`, every answer is the variant its own request selects (no entry of one
//!   request handed to another while threads race through the shared tier and backend);
//! - coalescing across threads: one origin call per missing URL.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::Answer;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache, ResponseBody};

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The origin: `path lang vN` where N is the data version when the response was produced;
/// fresh for ten minutes, tagged `news`, varying on `Accept-Language`. A POST changes the
/// data (a new version) and answers 200.
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    /// Slow enough that fills are still in flight when purges come.
    delay_us: u64,
}

impl Origin {
    async fn respond(&self, request: Request<()>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.method() == Method::POST {
            self.version.fetch_add(1, Ordering::SeqCst);
            return Response::new(Full::new(Bytes::from_static(b"posted")));
        }
        // Read before the delay: the response is what the data was when it was asked for.
        let version = self.version.load(Ordering::SeqCst);
        if self.delay_us > 0 {
            let jitter = version % 3;
            tokio::time::sleep(Duration::from_micros(self.delay_us * (jitter + 1))).await;
        }
        let lang = request
            .headers()
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let body = format!("{} {lang} v{version}", request.uri().path());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
        headers.insert("surrogate-key", HeaderValue::from_static("news"));
        headers.insert("vary", HeaderValue::from_static("accept-language"));
        response
    }
}

fn layer<B: Backend>(backend: B, near: Option<&NearCache>) -> MemcacheLayer<B> {
    let layer = MemcacheLayer::new(backend)
        .namespace("review-l")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")));
    match near {
        Some(near) => layer.near_cache(near.clone()),
        None => layer,
    }
}

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let origin = origin.clone();
            async move { Ok::<_, Infallible>(origin.respond(request).await) }
        });
    tower::util::BoxCloneSyncService::new(svc)
}

async fn get(svc: &Svc, path: &str, lang: &str) -> Answer {
    support::send(
        svc,
        Method::GET,
        &format!("http://site.example{path}"),
        &[("accept-language", lang)],
    )
    .await
}

fn version_of(body: &str) -> u64 {
    body.rsplit_once(" v")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {body:?}"))
}

#[derive(Clone, Copy, Debug)]
enum Purge {
    Uri,
    Tag,
    Namespace,
    Post,
}

const LANGS: [&str; 2] = ["en", "fr"];

/// Readers on every worker thread ask for a few URLs (two variants each) while one task
/// purges in a loop: before each purge it moves the data to a new version, after the purge
/// returned it raises the floor. A reader that read the floor before its request went out
/// must get that version or a newer one, and always its own path and variant.
async fn hammer<B: Backend>(backend: B, near: Option<NearCache>, purge: Purge, rounds: u64) {
    let origin = Origin {
        delay_us: 300,
        ..Origin::default()
    };
    let layer = layer(backend, near.as_ref());
    let svc = service(&layer, &origin);
    let purger = layer.purger();
    // URI purges and invalidations concern one URL: hammer that one only.
    let paths: &[&str] = match purge {
        Purge::Uri | Purge::Post => &["/p"],
        Purge::Tag | Purge::Namespace => &["/p", "/q", "/r"],
    };
    let floor = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader in 0..8usize {
        let (svc, floor, done) = (svc.clone(), Arc::clone(&floor), Arc::clone(&done));
        readers.push(tokio::spawn(async move {
            let mut served = 0u64;
            let mut i = reader;
            while !done.load(Ordering::SeqCst) {
                let path = paths[i % paths.len()];
                let lang = LANGS[(i / paths.len()) % LANGS.len()];
                i = i.wrapping_add(1);
                let before = floor.load(Ordering::SeqCst);
                let answer = get(&svc, path, lang).await;
                assert_eq!(answer.status, 200, "{answer:?}");
                let (own, _) = answer.body.rsplit_once(" v").unwrap();
                assert_eq!(
                    own,
                    format!("{path} {lang}"),
                    "another request's response ({})",
                    answer.cache_status()
                );
                let version = version_of(&answer.body);
                assert!(
                    version >= before,
                    "{purge:?}: {path} {lang} served v{version} after the purge for v{before} \
                     returned ({})",
                    answer.cache_status()
                );
                served += 1;
            }
            served
        }));
    }
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_micros(700)).await;
        let next = match purge {
            Purge::Post => {
                let answer = support::send(
                    &svc,
                    Method::POST,
                    "http://site.example/p",
                    &[("accept-language", "en")],
                )
                .await;
                assert_eq!(answer.status, 200);
                // The origin moved to this version while the POST was handled.
                origin.version.load(Ordering::SeqCst)
            }
            _ => {
                let next = origin.version.fetch_add(1, Ordering::SeqCst) + 1;
                match purge {
                    Purge::Uri => purger.purge_uri("http://site.example/p").await.unwrap(),
                    Purge::Tag => purger.purge_tag("news").await.unwrap(),
                    Purge::Namespace => purger.purge_namespace().await.unwrap(),
                    Purge::Post => unreachable!(),
                }
                next
            }
        };
        floor.fetch_max(next, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let mut served = 0;
    for reader in readers {
        served += tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("readers finish")
            .expect("no reader saw a purged response");
    }
    assert!(served > rounds, "the readers hardly ran: {served}");
    tokio::time::timeout(Duration::from_secs(10), layer.background().idle())
        .await
        .expect("background work settles");
}

fn tcp(server: &support::Memcached) -> tower_memcache::backend::TcpBackend {
    tower_memcache::backend::TcpBackend::builder()
        .server(server.addr())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn near() -> Option<NearCache> {
    Some(NearCache::new(16 << 20, Duration::from_secs(5)))
}

macro_rules! hammers {
    ($($name:ident: $purge:expr, $rounds:expr;)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    hammer(MemoryBackend::new(), None, $purge, $rounds).await;
                }
            )*
        }
        mod memory_near {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    hammer(MemoryBackend::new(), near(), $purge, $rounds).await;
                }
            )*
        }
        mod memcached {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let server = memcached_or_skip!(concat!("review_l::", stringify!($name)));
                    hammer(tcp(&server), None, $purge, $rounds).await;
                }
            )*
        }
        mod memcached_near {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let server = memcached_or_skip!(concat!("review_l::near::", stringify!($name)));
                    hammer(tcp(&server), near(), $purge, $rounds).await;
                }
            )*
        }
    };
}

hammers! {
    a_uri_purge_that_returned_holds_against_fills_on_other_threads: Purge::Uri, 300;
    a_tag_purge_that_returned_holds_against_fills_on_other_threads: Purge::Tag, 300;
    a_namespace_purge_that_returned_holds_against_fills_on_other_threads: Purge::Namespace, 300;
    an_invalidation_that_returned_holds_against_fills_on_other_threads: Purge::Post, 300;
}

/// Many requests for one missing URL, spread over the worker threads: one origin call.
async fn one_origin_call_per_missing_url<B: Backend>(backend: B, near: Option<NearCache>) {
    let origin = Origin {
        delay_us: 20_000,
        ..Origin::default()
    };
    let layer = layer(backend, near.as_ref());
    let svc = service(&layer, &origin);
    for round in 0..5 {
        let path = format!("/c{round}");
        let calls_before = origin.calls.load(Ordering::SeqCst);
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (svc, path, barrier) = (svc.clone(), path.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    get(&svc, &path, "en").await
                })
            })
            .collect();
        let started = Instant::now();
        for task in tasks {
            let answer = task.await.unwrap();
            assert_eq!(answer.body, format!("{path} en v0"));
        }
        let calls = origin.calls.load(Ordering::SeqCst) - calls_before;
        assert_eq!(calls, 1, "{path}: {calls} origin calls in {:?}", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_call_per_missing_url_across_threads_memory() {
    one_origin_call_per_missing_url(MemoryBackend::new(), None).await;
    one_origin_call_per_missing_url(MemoryBackend::new(), near()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_call_per_missing_url_across_threads_memcached() {
    let server = memcached_or_skip!("review_l::one_origin_call_per_missing_url");
    one_origin_call_per_missing_url(tcp(&server), None).await;
    server.flush_all();
    one_origin_call_per_missing_url(tcp(&server), near()).await;
}

/// Two tag purges while one fill is under way: a request that came after the first one
/// returned (and joined the fill's flight, since a tag purge does not show in a lookup)
/// must not get the fill's response, which was produced before either purge. The store
/// finds only the second purge's time in the tag's generation; handing the response to
/// every follower that joined before that time handed it to this one.
async fn two_tag_purges_during_one_fill<B: Backend>(backend: B, near: Option<NearCache>) {
    let version = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let layer = layer(backend, near.as_ref());
    let svc = {
        let (version, gate, calls) = (Arc::clone(&version), Arc::clone(&gate), Arc::clone(&calls));
        let svc = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |_request: Request<()>| {
                let (version, gate, calls) =
                    (Arc::clone(&version), Arc::clone(&gate), Arc::clone(&calls));
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let v = version.load(Ordering::SeqCst);
                    // The first call waits for the test; later ones answer at once.
                    if v == 0 {
                        gate.acquire().await.unwrap().forget();
                    }
                    let mut response = Response::new(Full::new(Bytes::from(format!("v{v}"))));
                    let headers = response.headers_mut();
                    headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
                    headers.insert("surrogate-key", HeaderValue::from_static("news"));
                    Ok::<_, Infallible>(response)
                }
            });
        tower::util::BoxCloneSyncService::new(svc)
    };
    let purger = layer.purger();
    let spawn = |svc: &Svc| {
        let svc = svc.clone();
        tokio::spawn(async move { get(&svc, "/t", "en").await })
    };
    let leader = spawn(&svc);
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // v0 is being produced. The data changes and the tag is purged.
    version.store(1, Ordering::SeqCst);
    purger.purge_tag("news").await.unwrap();
    // A request after that purge returned: it must not be answered v0.
    let follower = spawn(&svc);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Another change, another purge, then the first response completes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    version.store(2, Ordering::SeqCst);
    purger.purge_tag("news").await.unwrap();
    gate.add_permits(1);
    let leader = tokio::time::timeout(Duration::from_secs(10), leader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leader.body, "v0", "the leader gets its own response");
    let follower = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        follower.body,
        "v0",
        "a request sent after a tag purge returned got a response produced before it ({})",
        follower.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_after_the_first_of_two_tag_purges_does_not_get_the_older_fill_memory() {
    two_tag_purges_during_one_fill(MemoryBackend::new(), None).await;
    two_tag_purges_during_one_fill(MemoryBackend::new(), near()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_after_the_first_of_two_tag_purges_does_not_get_the_older_fill_memcached() {
    let server = memcached_or_skip!("review_l::two_tag_purges_during_one_fill");
    two_tag_purges_during_one_fill(tcp(&server), None).await;
    server.flush_all();
    two_tag_purges_during_one_fill(tcp(&server), near()).await;
}
