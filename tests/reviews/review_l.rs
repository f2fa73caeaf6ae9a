//! Review L: races when the work really runs in parallel on several threads (the proxy's
//! default `--runtime shared`: one multi-threaded runtime, one layer, one backend, one
//! near tier). Layer-level scenarios run on a four-worker tokio runtime; the end-to-end
//! ones run the proxy binary with `--runtime shared --threads 4`.
//!
//! What they hammer (bounded: a second or two each):
//! - a purge (URI, tag, namespace, or an unsafe method's invalidation) racing fills,
//!   refreshes and coalesced waits on other threads, with and without a near tier, over
//!   `MemoryBackend` and a real memcached: once the purge returned, nothing produced before
//!   it started is served (with the origin's responses fresh, served stale while
//!   revalidating, or revalidated with 304s);
//! - under `Vary`, every answer is the variant its own request selects (no entry of one
//!   request handed to another while threads race through the shared tier and backend);
//! - two tag purges during one fill: a request after the first must not get the fill
//!   (the bug this review fixed: the store handed it to followers that joined before the
//!   latest purge);
//! - coalescing across threads: one origin call per missing URL; a leader cancelled while
//!   followers wait on other threads hands over to one of them;
//! - the shared near tier's byte bound under concurrent inserts;
//! - one `TcpBackend` connection merging lookups of live and cancelled requests from
//!   several threads: every lookup gets its own entry;
//! - the proxy: unsafe-method invalidations against readers of two hosts and two variants,
//!   and SIGTERM with responses still streaming (their stores finish before the exit).

use crate::support;

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
    /// How its responses may be reused.
    reuse: Reuse,
}

/// How the origin lets its responses be reused.
#[derive(Clone, Copy, Debug, Default)]
enum Reuse {
    /// Fresh for ten minutes.
    #[default]
    Fresh,
    /// Stale at once, served while a background refresh runs.
    WhileRevalidating,
    /// Stale at once, revalidated with `If-None-Match` (the origin answers 304 while the
    /// version is unchanged).
    Conditional,
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
        let host = request
            .uri()
            .host()
            .map(str::to_string)
            .or_else(|| {
                let host = request.headers().get("host")?.to_str().ok()?;
                Some(host.to_string())
            })
            .unwrap_or_default();
        let body = format!("{host}{} {lang} v{version}", request.uri().path());
        let etag = format!("\"v{version}\"");
        let unchanged = request
            .headers()
            .get("if-none-match")
            .is_some_and(|tag| tag.as_bytes() == etag.as_bytes());
        let mut response = if unchanged && matches!(self.reuse, Reuse::Conditional) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = http::StatusCode::NOT_MODIFIED;
            response
        } else {
            Response::new(Full::new(Bytes::from(body)))
        };
        let headers = response.headers_mut();
        let cache_control = match self.reuse {
            Reuse::Fresh => "max-age=600",
            Reuse::WhileRevalidating => "max-age=0, stale-while-revalidate=600",
            Reuse::Conditional => "max-age=0",
        };
        headers.insert("cache-control", HeaderValue::from_static(cache_control));
        headers.insert("etag", HeaderValue::from_str(&etag).unwrap());
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
    for reuse in [Reuse::Fresh, Reuse::WhileRevalidating, Reuse::Conditional] {
        hammer_with(backend.clone(), near.clone(), purge, rounds, reuse).await;
    }
}

async fn hammer_with<B: Backend>(
    backend: B,
    near: Option<NearCache>,
    purge: Purge,
    rounds: u64,
    reuse: Reuse,
) {
    let origin = Origin {
        delay_us: 300,
        reuse,
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
                let answer = tokio::time::timeout(Duration::from_secs(10), get(&svc, path, lang))
                    .await
                    .unwrap_or_else(|_| panic!("{reuse:?}: a GET did not finish in 10 s"));
                assert_eq!(answer.status, 200, "{answer:?}");
                let (own, _) = answer.body.rsplit_once(" v").unwrap();
                assert_eq!(
                    own,
                    format!("site.example{path} {lang}"),
                    "another request's response ({})",
                    answer.cache_status()
                );
                let version = version_of(&answer.body);
                assert!(
                    version >= before,
                    "{purge:?} {reuse:?}: {path} {lang} served v{version} after the purge for \
                     v{before} returned ({})",
                    answer.cache_status()
                );
                served += 1;
                // A near hit over MemoryBackend never waits: without this the readers
                // could keep every worker busy, and the timers (the purger's) never run.
                tokio::task::yield_now().await;
            }
            served
        }));
    }
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_micros(700)).await;
        let next = match purge {
            Purge::Post => {
                let post = support::send(
                    &svc,
                    Method::POST,
                    "http://site.example/p",
                    &[("accept-language", "en")],
                );
                let answer = tokio::time::timeout(Duration::from_secs(10), post)
                    .await
                    .unwrap_or_else(|_| panic!("{reuse:?}: a POST did not finish in 10 s"));
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
    assert!(served > 50, "the readers hardly ran: {served}");
    tokio::time::timeout(Duration::from_secs(10), layer.background().idle())
        .await
        .expect("background work settles");
}

#[cfg(feature = "tcp")]
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
        #[cfg(feature = "tcp")]
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
        #[cfg(feature = "tcp")]
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
            assert_eq!(answer.body, format!("site.example{path} en v0"));
        }
        let calls = origin.calls.load(Ordering::SeqCst) - calls_before;
        assert_eq!(
            calls,
            1,
            "{path}: {calls} origin calls in {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_call_per_missing_url_across_threads_memory() {
    one_origin_call_per_missing_url(MemoryBackend::new(), None).await;
    one_origin_call_per_missing_url(MemoryBackend::new(), near()).await;
}

#[cfg(feature = "tcp")]
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

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_after_the_first_of_two_tag_purges_does_not_get_the_older_fill_memcached() {
    let server = memcached_or_skip!("review_l::two_tag_purges_during_one_fill");
    two_tag_purges_during_one_fill(tcp(&server), None).await;
    server.flush_all();
    two_tag_purges_during_one_fill(tcp(&server), near()).await;
}

// ---------------------------------------------------------------------------------------
// End to end: the proxy binary with `--runtime shared --threads 4`.

mod proxy_shared {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use super::support;
    use super::support::proxy::{raw, start_proxy};

    /// An origin on its own threads: `GET` answers `host path lang vN` (N: the data
    /// version when it was asked), fresh for ten minutes, varying on `Accept-Language`,
    /// after a short delay; `POST` moves the data to a new version.
    struct Origin {
        addr: SocketAddr,
        version: Arc<AtomicU64>,
        calls: Arc<AtomicU64>,
    }

    impl Origin {
        fn start(delay: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let version = Arc::new(AtomicU64::new(0));
            let calls = Arc::new(AtomicU64::new(0));
            let (v, c) = (Arc::clone(&version), Arc::clone(&calls));
            std::thread::spawn(move || {
                for stream in listener.incoming().take(100_000) {
                    let Ok(stream) = stream else { continue };
                    let (v, c) = (Arc::clone(&v), Arc::clone(&c));
                    std::thread::spawn(move || serve(stream, &v, &c, delay));
                }
            });
            Self {
                addr,
                version,
                calls,
            }
        }
    }

    fn serve(stream: TcpStream, version: &AtomicU64, calls: &AtomicU64, delay: Duration) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let (mut host, mut lang, mut length) = (String::new(), "-".to_string(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("host:") {
                    host = value.trim().to_string();
                } else if let Some(value) = lower.strip_prefix("accept-language:") {
                    lang = value.trim().to_string();
                } else if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            if length > 0 {
                let mut body = vec![0; length];
                if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                    return;
                }
            }
            calls.fetch_add(1, Ordering::SeqCst);
            let mut parts = request_line.split(' ');
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("/").to_string();
            if path.starts_with("/stream") {
                // Chunked, in three parts 150 ms apart: still arriving at a SIGTERM.
                let mut ok = writer
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                          Cache-Control: max-age=600\r\n\r\n",
                    )
                    .is_ok();
                for part in 0..3 {
                    std::thread::sleep(Duration::from_millis(150));
                    let chunk = format!("{path}:{part};");
                    ok = ok
                        && writer
                            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                            .is_ok();
                }
                if !ok || writer.write_all(b"0\r\n\r\n").is_err() {
                    return;
                }
                continue;
            }
            let response = if method == "POST" {
                version.fetch_add(1, Ordering::SeqCst);
                "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nposted".to_string()
            } else {
                let v = version.load(Ordering::SeqCst);
                std::thread::sleep(delay);
                let body = format!("{host} {path} {lang} v{v}");
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=600\r\n\
                     Vary: Accept-Language\r\n\r\n{body}",
                    body.len()
                )
            };
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn version_of(body: &str) -> u64 {
        body.rsplit_once(" v")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no version in {body:?}"))
    }

    /// Readers on many connections (two hosts, two languages) while POSTs invalidate
    /// `/p` on both hosts: every answer is its own host, path and variant, and none is
    /// older than the last invalidation that returned before it was asked.
    async fn invalidations_hold(args: &[&str], rounds: u64) {
        let origin = Origin::start(Duration::from_micros(500));
        let proxy = Arc::new(start_proxy(origin.addr, args));
        // One floor per host: each POST invalidates its own host's page.
        let floor = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let done = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for reader in 0..8usize {
            let (proxy, floor, done) = (Arc::clone(&proxy), Arc::clone(&floor), Arc::clone(&done));
            readers.push(tokio::spawn(async move {
                let mut i = reader;
                let mut served = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let host = ["a.example", "b.example"][i % 2];
                    let lang = ["en", "fr"][(i / 2) % 2];
                    let before = floor[i % 2].load(Ordering::SeqCst);
                    i = i.wrapping_add(1);
                    let head =
                        format!("GET /p HTTP/1.1\r\nHost: {host}\r\nAccept-Language: {lang}\r\n");
                    let (status, body) = raw(&proxy, &head).await;
                    assert_eq!(status, 200, "{body}");
                    let (own, _) = body.rsplit_once(" v").unwrap();
                    assert_eq!(own, format!("{host} /p {lang}"), "another request's answer");
                    let version = version_of(&body);
                    assert!(
                        version >= before,
                        "{host} {lang}: v{version} served after the POST for v{before} returned"
                    );
                    served += 1;
                }
                served
            }));
        }
        for _ in 0..rounds {
            tokio::time::sleep(Duration::from_millis(3)).await;
            // The data changes for both hosts; the POST invalidates what the proxy
            // holds for each.
            for (at, host) in ["a.example", "b.example"].into_iter().enumerate() {
                let head = format!("POST /p HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
                let (status, body) = raw(&proxy, &head).await;
                assert_eq!(status, 200, "{body}");
                // Only this test posts: the version now is the one this POST made.
                floor[at].fetch_max(origin.version.load(Ordering::SeqCst), Ordering::SeqCst);
            }
        }
        done.store(true, Ordering::SeqCst);
        let mut served = 0;
        for reader in readers {
            served += tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("readers finish")
                .expect("no reader got a stale or foreign answer");
        }
        assert!(served > rounds, "the readers hardly ran: {served}");
        assert!(origin.calls.load(Ordering::SeqCst) > rounds);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn invalidations_hold_across_the_shared_runtimes_threads_in_process_store() {
        invalidations_hold(
            &[
                "--runtime",
                "shared",
                "--threads",
                "4",
                "--near-cache",
                "8M,5s",
            ],
            100,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn invalidations_hold_across_the_shared_runtimes_threads_over_memcached() {
        let server = crate::memcached_or_skip!("review_l::proxy_shared::invalidations_hold");
        let addr = server.addr();
        invalidations_hold(
            &[
                "--runtime",
                "shared",
                "--threads",
                "4",
                "--memcache",
                &addr,
                "--cache-timeout",
                "2s",
            ],
            100,
        )
        .await;
        server.flush_all();
        invalidations_hold(
            &[
                "--runtime",
                "shared",
                "--threads",
                "4",
                "--memcache",
                &addr,
                "--cache-timeout",
                "2s",
                "--near-cache",
                "8M,5s",
            ],
            100,
        )
        .await;
    }

    /// SIGTERM on the shared runtime while responses are still streaming from the origin
    /// (their stores not begun): every client gets its whole response, and every entry is
    /// in memcached once the proxy exited, as a second proxy finds.
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sigterm_on_the_shared_runtime_finishes_responses_and_their_stores() {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;

        let server = crate::memcached_or_skip!("review_l::proxy_shared::sigterm");
        let addr = server.addr();
        let origin = Origin::start(Duration::ZERO);
        let args = ["--runtime", "shared", "--threads", "4", "--memcache", &addr];
        let mut proxy = start_proxy(origin.addr, &args);
        let proxy_addr = proxy.addr;
        let clients: Vec<_> = (0..8)
            .map(|n| {
                std::thread::spawn(move || {
                    support::proxy::raw_request(
                        proxy_addr,
                        &format!("GET /stream{n} HTTP/1.1\r\nHost: s.example\r\n"),
                    )
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while origin.calls.load(Ordering::SeqCst) < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "the origin never saw all 8"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = Pid::from_raw(i32::try_from(proxy.child.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        for (n, client) in clients.into_iter().enumerate() {
            let (status, response) = client.join().unwrap();
            assert_eq!(status, 200, "{response}");
            // Chunked as it came: the three parts and the last chunk.
            for part in 0..3 {
                assert!(
                    response.contains(&format!("/stream{n}:{part};")),
                    "{response}"
                );
            }
            assert!(response.ends_with("\r\n0\r\n\r\n"), "{response}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy did not exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(exit.success(), "{exit}");
        let calls = origin.calls.load(Ordering::SeqCst);
        let again = start_proxy(origin.addr, &args);
        for n in 0..8 {
            let head = format!(
                "GET /stream{n} HTTP/1.1\r\nHost: s.example\r\nCache-Control: only-if-cached\r\n"
            );
            let (status, body) = raw(&again, &head).await;
            assert_eq!(
                status, 200,
                "/stream{n} was not stored before the exit: {body}"
            );
        }
        assert_eq!(origin.calls.load(Ordering::SeqCst), calls);
    }
}

/// The leader of a flight is cancelled (its client hung up before the response came) on
/// one thread while its followers wait on others: they elect one new leader among them
/// (one more origin call, not one each), and all get its response, well within the
/// coalesce timeout.
async fn a_cancelled_leader_hands_over_to_one_follower<B: Backend>(
    backend: B,
    near: Option<NearCache>,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let first_started = Arc::new(tokio::sync::Notify::new());
    let layer = layer(backend, near.as_ref());
    let svc = {
        let (calls, first_started) = (Arc::clone(&calls), Arc::clone(&first_started));
        let svc = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |_request: Request<()>| {
                let (calls, first_started) = (Arc::clone(&calls), Arc::clone(&first_started));
                async move {
                    let call = calls.fetch_add(1, Ordering::SeqCst);
                    if call == 0 {
                        first_started.notify_one();
                        // The first call never answers: its client goes away first.
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut response = Response::new(Full::new(Bytes::from(format!("call{call}"))));
                    response
                        .headers_mut()
                        .insert("cache-control", HeaderValue::from_static("max-age=600"));
                    Ok::<_, Infallible>(response)
                }
            });
        tower::util::BoxCloneSyncService::new(svc)
    };
    let leader = {
        let svc = svc.clone();
        tokio::spawn(async move { get(&svc, "/lead", "en").await })
    };
    first_started.notified().await;
    let followers: Vec<_> = (0..16)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { get(&svc, "/lead", "en").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    leader.abort();
    let started = Instant::now();
    for follower in followers {
        let answer = tokio::time::timeout(Duration::from_secs(4), follower)
            .await
            .expect("a follower waited past the coalesce timeout")
            .unwrap();
        assert_eq!(answer.body, "call1", "{}", answer.cache_status());
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one new leader, not one per follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_leader_hands_over_to_one_follower_across_threads_memory() {
    a_cancelled_leader_hands_over_to_one_follower(MemoryBackend::new(), None).await;
    a_cancelled_leader_hands_over_to_one_follower(MemoryBackend::new(), near()).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_leader_hands_over_to_one_follower_across_threads_memcached() {
    let server = memcached_or_skip!("review_l::a_cancelled_leader_hands_over");
    a_cancelled_leader_hands_over_to_one_follower(tcp(&server), None).await;
    server.flush_all();
    a_cancelled_leader_hands_over_to_one_follower(tcp(&server), near()).await;
}

/// Threads keep many distinct pages in one small near tier at once: its weight never
/// passes its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_near_tier_stays_within_its_bytes_under_concurrent_inserts() {
    let capacity = 256 << 10;
    let near = NearCache::new(capacity, Duration::from_secs(5));
    let origin = Origin::default();
    let layer = layer(MemoryBackend::new(), Some(&near));
    let svc = service(&layer, &origin);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (near, done) = (near.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::SeqCst) {
                most = most.max(near.weight());
                tokio::task::yield_now().await;
            }
            most
        })
    };
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for round in 0..3 {
                    for i in 0..150 {
                        // Each page twice: the second read is kept in the near tier.
                        let path = format!("/w{t}-{i}");
                        let lang = LANGS[(i + round) % 2];
                        let _ = get(&svc, &path, lang).await;
                        let answer = get(&svc, &path, lang).await;
                        assert!(
                            answer
                                .body
                                .starts_with(&format!("site.example{path} {lang} v"))
                        );
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let most = watcher.await.unwrap();
    assert!(near.entries() > 0, "nothing kept");
    assert!(
        most <= capacity && near.weight() <= capacity,
        "near tier held {most} bytes, capacity {capacity}"
    );
}

/// One `TcpBackend` (one connection, so lookups from different threads merge into one
/// line) under requests for many URLs, hosts and variants, a third of them cancelled at
/// a random point (their clients hung up): every answer that completes is its own.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merged_lookups_of_cancelled_and_live_requests_never_cross_answers() {
    let server = memcached_or_skip!("review_l::merged_lookups_never_cross");
    let backend = tower_memcache::backend::TcpBackend::builder()
        .server(server.addr())
        .connections_per_server(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let origin = Origin {
        delay_us: 200,
        ..Origin::default()
    };
    for near in [None, near()] {
        let layer = layer(backend.clone(), near.as_ref());
        let svc = service(&layer, &origin);
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let mut completed = 0;
                    for i in 0..120u64 {
                        let seed = (t * 7919 + i * 104_729) % 1000;
                        let host = ["a.example", "b.example", "c.example"][(seed % 3) as usize];
                        let path = format!("/m{}", seed % 11);
                        let lang = LANGS[(seed / 11 % 2) as usize];
                        let url = format!("http://{host}{path}");
                        let headers = [("accept-language", lang)];
                        let send = support::send(&svc, Method::GET, &url, &headers);
                        let answer = if seed % 3 == 0 {
                            let cut = Duration::from_micros(50 + seed * 3);
                            match tokio::time::timeout(cut, send).await {
                                Ok(answer) => answer,
                                Err(_) => continue,
                            }
                        } else {
                            send.await
                        };
                        let (own, _) = answer.body.rsplit_once(" v").unwrap();
                        assert_eq!(
                            own,
                            format!("{host}{path} {lang}"),
                            "{url}: {}",
                            answer.cache_status()
                        );
                        completed += 1;
                    }
                    completed
                })
            })
            .collect();
        let mut completed = 0;
        for task in tasks {
            completed += task.await.expect("every answer its own");
        }
        assert!(completed > 1000, "{completed}");
        tokio::time::timeout(Duration::from_secs(10), layer.background().idle())
            .await
            .unwrap();
        assert!(!backend.is_server_down(0), "no reply went astray");
    }
    // Every page stored, then asked for by all at once, many times: each lookup (merged
    // with others into shared lines) finds its own entry. A value handed to the wrong
    // caller would not pass the entry's key check and show as a miss.
    // In the namespace of the requests above, whatever they left (placeholders, fills
    // overtaken half way, indexes without their variant): each store below lands all the
    // same. A fresh layer here once had every fill refused for a second after part 1
    // began, by a tag purge nobody made at the namespace's creation (review RI).
    let layer = layer(backend.clone(), None);
    let svc = service(&layer, &origin);
    let pages: Vec<(String, &str)> = ["a.example", "b.example", "c.example"]
        .into_iter()
        .flat_map(|host| (0..11).map(move |p| format!("http://{host}/m{p}")))
        .flat_map(|url| LANGS.into_iter().map(move |lang| (url.clone(), lang)))
        .collect();
    // One store landed before the next variant's lookup: two first fills of one URL's
    // variants both land under its index (review RV), but a fill contended past a few
    // rounds of its index is not stored (a miss later, which this part is not about).
    for (url, lang) in &pages {
        support::send(&svc, Method::GET, url, &[("accept-language", lang)]).await;
        tokio::time::timeout(Duration::from_secs(10), layer.background().idle())
            .await
            .unwrap();
    }
    for _ in 0..5 {
        let tasks: Vec<_> = pages
            .iter()
            .cloned()
            .map(|(url, lang)| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let headers = [("accept-language", lang)];
                    let answer = support::send(&svc, Method::GET, &url, &headers).await;
                    let own = format!("{} {lang}", url.trim_start_matches("http://"));
                    assert!(answer.body.starts_with(&own), "{url}: {}", answer.body);
                    assert!(
                        answer.cache_status().starts_with("tower-memcache; hit"),
                        "{url} {lang}: {}",
                        answer.cache_status()
                    );
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("every lookup finds its own entry");
        }
    }
}
