//! Review JJ: attacks on the interplay of features, with the near tier on (staleness 0 and
//! above) and off: near tier × ranges, `Vary`, conditionals, HEAD, credentials, `Age` and
//! `Cache-Status`, revalidation directives, purges, targeted fields and route rules; and
//! through the reverse proxy, `Expect: 100-continue`, 1xx from the origin and the near
//! tier with a runtime per thread.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use support::Watch;
use support::personal::{Origin, Reply};
use tokio::sync::{Notify, Semaphore};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, Item, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache, ResponseBody};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// A service of `layer` over `origin`, as the proxy makes one per connection.
fn connection<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        let response = origin.respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    tower::util::BoxCloneSyncService::new(tower::Layer::layer(layer, inner))
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> support::Answer {
    support::send(svc, method, &format!("http://site.example{path}"), headers).await
}

// ---------------------------------------------------------------------------------------
// The near tier and a backend that once marked a server down
// ---------------------------------------------------------------------------------------

/// `MemoryBackend` that says one server was marked down once (`outages`), and whose next
/// read, once armed, waits until the test lets it go.
#[derive(Clone)]
struct Blipped {
    inner: MemoryBackend,
    outages: Arc<AtomicU64>,
    hold: Arc<AtomicBool>,
    held: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Blipped {
    fn new(inner: MemoryBackend) -> Self {
        Self {
            inner,
            outages: Arc::new(AtomicU64::new(1)),
            hold: Arc::default(),
            held: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Backend for Blipped {
    async fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        let read = self.inner.get_many_by_key_ordered(route, keys, limit).await;
        if self.hold.swap(false, Ordering::SeqCst) {
            self.held.notify_one();
            let permit = tokio::time::timeout(Duration::from_secs(5), self.release.acquire());
            let _ = permit.await;
        }
        read
    }
    fn server_of(&self, route: &str) -> Option<usize> {
        self.inner.server_of(route)
    }
    fn outages(&self) -> u64 {
        self.outages.load(Ordering::SeqCst)
    }
    forward_to_inner!(
        get, get_many, set, add, cas, delete, touch, incr, flush_all, stats
    );
}

/// A server of the backend was marked down once (a memcached restart, a blip). The proxy
/// builds a cache service per connection; each one's first lookup took the outage for a
/// new one, and made the shared near tier forget every generation it remembered and
/// refuse every lookup then under way, on every thread. A client opening connections
/// (each with one request that looks anything up) kept the near tier from keeping what
/// other clients' lookups found: every hit a memcached round trip, for good.
#[tokio::test]
async fn a_new_connection_after_an_outage_does_not_make_the_near_tier_forget() {
    let origin = Origin::new(|_, _| Reply::ok(&[("cache-control", b"max-age=600")], "page"));
    let backend = Blipped::new(MemoryBackend::new());
    let near = NearCache::new(16 << 20, Duration::from_secs(60));
    let layer = MemcacheLayer::new(backend.clone())
        .namespace("jj")
        .mode(CacheMode::Origin)
        .near_cache(near.clone());
    let watch = Watch::of(&layer);
    let victim = connection(&layer, &origin);
    // Stored (a miss keeps nothing in the near tier).
    let first = send(&victim, Method::GET, "/a", &[]).await;
    assert_eq!(first.body, "page");
    watch.settled().await;
    // The victim's lookup, which would keep the entry, is held after its read...
    backend.hold.store(true, Ordering::SeqCst);
    let lookup = {
        let victim = victim.clone();
        tokio::spawn(async move { send(&victim, Method::GET, "/a", &[]).await })
    };
    tokio::time::timeout(Duration::from_secs(5), backend.held.notified())
        .await
        .expect("the victim's lookup never read");
    // ... while another client opens a connection and looks something up (no store).
    let attacker = connection(&layer, &origin);
    let probe = send(
        &attacker,
        Method::GET,
        "/nothing",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(probe.status, http::StatusCode::GATEWAY_TIMEOUT);
    backend.release.add_permits(1);
    let found = lookup.await.unwrap();
    assert_eq!(found.cache_status(), "tower-memcache; hit");
    let again = send(&victim, Method::GET, "/a", &[]).await;
    assert_eq!(
        again.header("cache-status"),
        Some(NEAR_HIT),
        "the entry the victim's lookup found was not kept: another connection's first \
         lookup took the old outage for a new one"
    );
    // A new outage still empties the tier's memory of generations, whoever looks first:
    // a lookup under way then keeps nothing.
    send(&victim, Method::GET, "/b", &[]).await;
    watch.settled().await;
    backend.outages.store(2, Ordering::SeqCst);
    let after_outage = send(&connection(&layer, &origin), Method::GET, "/b", &[]).await;
    assert_eq!(after_outage.cache_status(), "tower-memcache; hit");
    let again = send(&victim, Method::GET, "/b", &[]).await;
    assert_eq!(
        again.cache_status(),
        "tower-memcache; hit",
        "kept across an outage"
    );
}

// ---------------------------------------------------------------------------------------
// One stored page, every way of asking for it, near tier off, at 0 and above
// ---------------------------------------------------------------------------------------

/// The tiers a scenario runs with: none, one that checks every request (staleness 0),
/// and one that answers for a minute.
fn tiers() -> [Option<NearCache>; 3] {
    [
        None,
        Some(NearCache::new(16 << 20, Duration::ZERO)),
        Some(NearCache::new(16 << 20, Duration::from_secs(60))),
    ]
}

fn layer_with(backend: MemoryBackend, near: &Option<NearCache>) -> MemcacheLayer<MemoryBackend> {
    let layer = MemcacheLayer::new(backend)
        .namespace("jj")
        .mode(CacheMode::Origin);
    match near {
        Some(near) => layer.near_cache(near.clone()),
        None => layer,
    }
}

/// Whether answers of this tier come from it (then `detail=near`).
fn answers_from_near(near: &Option<NearCache>) -> bool {
    near.as_ref()
        .is_some_and(|near| !near.max_staleness().is_zero())
}

/// A page varying on `Accept-Language`, answered in the language the origin read (its
/// first line, as `headers.get` reads it); each request shape, asked twice after the
/// first store so that the second answer may come from the near tier, gets the answer
/// the origin gives it, with a fresh `Age` and a `Cache-Status` saying where it came from.
#[tokio::test]
async fn near_tier_variants_conditionals_ranges_and_heads_answer_as_memcached_does() {
    for near in tiers() {
        let origin = Origin::new(|request, _| {
            let language = request
                .headers()
                .get("accept-language")
                .map_or("none".to_string(), |v| {
                    format!("[{}]", String::from_utf8_lossy(v.as_bytes()))
                });
            let etag = format!("\"{}\"", language.len());
            Reply {
                status: 200,
                headers: vec![
                    ("cache-control", b"max-age=600".to_vec()),
                    ("vary", b"accept-language".to_vec()),
                    ("etag", etag.into_bytes()),
                    ("last-modified", b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()),
                ],
                body: format!("page in {language}"),
            }
        });
        let layer = layer_with(MemoryBackend::new(), &near);
        let watch = Watch::of(&layer);
        let svc = connection(&layer, &origin);
        let label = format!("near {:?}", near.as_ref().map(NearCache::max_staleness));
        // Each shape: what the origin answers it.
        let shapes: [&[(&str, &str)]; 6] = [
            &[("accept-language", "en")],
            &[],
            &[("accept-language", "")],
            &[("accept-language", "EN")],
            &[("accept-language", "en"), ("accept-language", "fr")],
            &[("accept-language", "fr")],
        ];
        for shape in shapes {
            let first = send(&svc, Method::GET, "/page", shape).await;
            watch.settled().await;
            for round in 0..3 {
                let again = send(&svc, Method::GET, "/page", shape).await;
                assert_eq!(again.body, first.body, "{label} {shape:?} round {round}");
                assert_eq!(again.header("etag"), first.header("etag"), "{label}");
                assert_eq!(again.header("age").map(|age| age.len() <= 2), Some(true));
                assert_eq!(again.headers.get_all("age").iter().count(), 1, "{label}");
                let status = again.header("cache-status").unwrap_or("");
                if round == 2 && answers_from_near(&near) {
                    assert_eq!(status, NEAR_HIT, "{label} {shape:?}");
                } else {
                    assert!(
                        status.starts_with("tower-memcache; hit"),
                        "{label} {status}"
                    );
                }
            }
        }
        // The English page, in the near tier now (when there is one).
        let en = [("accept-language", "en")];
        let etag = send(&svc, Method::GET, "/page", &en).await;
        let etag = etag.header("etag").unwrap().to_string();
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = en.to_vec();
            all.extend_from_slice(extra);
            all
        };
        // A weak match answers If-None-Match (weak comparison), never If-Range (strong).
        let weak: &'static str = Box::leak(format!("W/{etag}").into_boxed_str());
        let inm = send(
            &svc,
            Method::GET,
            "/page",
            &with(&[("if-none-match", weak)]),
        )
        .await;
        assert_eq!(inm.status, http::StatusCode::NOT_MODIFIED, "{label}");
        assert_eq!(inm.body, "", "{label}");
        let ranged = with(&[("range", "bytes=0-3"), ("if-range", weak)]);
        let whole = send(&svc, Method::GET, "/page", &ranged).await;
        assert_eq!(
            (whole.status, whole.body.as_str()),
            (http::StatusCode::OK, "page in [en]"),
            "{label}"
        );
        let strong: &'static str = Box::leak(etag.clone().into_boxed_str());
        let part = send(
            &svc,
            Method::GET,
            "/page",
            &with(&[("range", "bytes=0-3"), ("if-range", strong)]),
        )
        .await;
        assert_eq!(
            (part.status, part.body.as_str()),
            (http::StatusCode::PARTIAL_CONTENT, "page"),
            "{label}"
        );
        // Another language's validator answers nothing of the English page.
        let fr_range = [
            ("accept-language", "en"),
            ("range", "bytes=0-3"),
            ("if-range", "\"6\""),
        ];
        let other = send(&svc, Method::GET, "/page", &fr_range).await;
        assert_eq!(other.status, http::StatusCode::OK, "{label}");
        // An If-Modified-Since at the stored Last-Modified: 304; a date before it: 200.
        let ims = send(
            &svc,
            Method::GET,
            "/page",
            &with(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
        )
        .await;
        assert_eq!(ims.status, http::StatusCode::NOT_MODIFIED, "{label}");
        let older = send(
            &svc,
            Method::GET,
            "/page",
            &with(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
        )
        .await;
        assert_eq!(older.status, http::StatusCode::OK, "{label}");
        // HEAD: the GET's fields and length, no body.
        let head = send(&svc, Method::HEAD, "/page", &en).await;
        assert_eq!(head.body, "", "{label}");
        assert_eq!(head.header("content-length"), Some("12"), "{label}");
        assert_eq!(head.header("etag"), Some(etag.as_str()), "{label}");
        assert!(
            head.header("cache-status")
                .unwrap_or("")
                .starts_with("tower-memcache; hit"),
            "{label}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Through the reverse proxy: 1xx from the origin, `Expect`, threads sharing a near tier
// ---------------------------------------------------------------------------------------

/// An origin on a thread of its own, one response per connection: a GET gets `100
/// Continue` first when it asked with `Expect`, then `103 Early Hints` with fields of its
/// own (one naming the client's `X-Probe`), then the page of the current version,
/// cacheable for ten minutes; a POST bumps the version.
fn hinting_origin() -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let version = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (v, c) = (Arc::clone(&version), Arc::clone(&calls));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            c.fetch_add(1, Ordering::SeqCst);
            let mut answer = String::new();
            if head.starts_with("post ") {
                v.fetch_add(1, Ordering::SeqCst);
                answer.push_str("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            } else {
                if head.contains("\r\nexpect:") {
                    answer.push_str("HTTP/1.1 100 Continue\r\n\r\n");
                }
                let probe = head
                    .split("\r\n")
                    .find_map(|line| line.strip_prefix("x-probe:"))
                    .unwrap_or("none")
                    .trim()
                    .to_string();
                answer.push_str(&format!(
                    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
                     X-Early: {probe}\r\nSet-Cookie: early=1\r\n\r\n"
                ));
                let body = format!("page v{}", v.load(Ordering::SeqCst));
                answer.push_str(&format!(
                    "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                ));
            }
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (addr, version, calls)
}

fn cache_status_of(response: &str) -> &str {
    response
        .split("\r\n")
        .find_map(|line| {
            line.strip_prefix("cache-status: ")
                .or_else(|| line.strip_prefix("Cache-Status: "))
        })
        .unwrap_or("")
}

/// GETs on fresh connections until one is a hit (the store lands in the background).
fn until_hit(addr: std::net::SocketAddr, path: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let head = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n");
        let (_, response) = support::proxy::raw_request(addr, &head);
        if cache_status_of(&response).starts_with("tower-memcache; hit") {
            return response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never a hit: {response}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An attacker's GET with `Expect: 100-continue` and a probe field fills the cache while
/// the origin sends `100 Continue` and `103 Early Hints` (with a field naming the probe
/// and a cookie) before its 200. What is stored and replayed is the 200 alone: no 1xx
/// line or field of them, nothing of the probe, one status line; the attacker gets no
/// stray `100 Continue` before its answer either (nothing in a GET to continue).
#[test]
fn informational_responses_and_expect_never_enter_what_others_are_answered() {
    let (origin, _, calls) = hinting_origin();
    let proxy = support::proxy::start_proxy(origin, &[]);
    let (status, attacker) = support::proxy::raw_request(
        proxy.addr,
        "GET /hinted HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\
         X-Probe: attacker\r\n",
    );
    assert_eq!(status, 200, "{attacker}");
    assert!(attacker.starts_with("HTTP/1.1 200 "), "{attacker}");
    let hit = until_hit(proxy.addr, "/hinted");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{hit}");
    assert!(hit.starts_with("HTTP/1.1 200 "), "{hit}");
    assert_eq!(hit.matches("HTTP/1.1").count(), 1, "{hit}");
    let lower = hit.to_ascii_lowercase();
    for leaked in ["attacker", "x-early", "early=1", "link:", "100 continue"] {
        assert!(!lower.contains(leaked), "{leaked} in {hit}");
    }
    assert!(hit.ends_with("page v0"), "{hit}");
}

/// `--near-cache` with `--runtime per-thread`: a POST that reaches one thread (an
/// invalidation) takes the page out of the near tier every thread answers from, before
/// the POST's answer is sent: no connection, on any thread, is answered the old version
/// after it.
#[test]
fn a_post_on_one_thread_takes_the_page_out_of_every_threads_near_tier() {
    let (origin, _, _) = hinting_origin();
    let proxy = support::proxy::start_proxy(
        origin,
        &[
            "--threads",
            "3",
            "--runtime",
            "per-thread",
            "--near-cache",
            "1M,60s",
        ],
    );
    let get = || {
        let head = "GET /shared HTTP/1.1\r\nHost: example.com\r\n";
        support::proxy::raw_request(proxy.addr, head).1
    };
    for round in 0..3u64 {
        until_hit(proxy.addr, "/shared");
        // Fresh connections, spread by the kernel over the threads' listeners: the
        // page from the near tier on each.
        let mut near = 0;
        for _ in 0..12 {
            let response = get();
            assert!(response.ends_with(&format!("page v{round}")), "{response}");
            near += usize::from(cache_status_of(&response) == NEAR_HIT);
        }
        assert!(near > 0, "round {round}: never from the near tier");
        let (status, _) = support::proxy::raw_request(
            proxy.addr,
            "POST /shared HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n",
        );
        assert_eq!(status, 204);
        for _ in 0..12 {
            let response = get();
            assert!(
                response.ends_with(&format!("page v{}", round + 1)),
                "round {round}: the old page after the POST returned: {response}"
            );
        }
    }
}
