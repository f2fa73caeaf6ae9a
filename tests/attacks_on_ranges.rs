//! Ranges and targeted fields tried as an attacker (or an unlucky operator) would: range
//! requests that make the cache fetch whole representations it cannot store or without
//! bound, a multipart 206 replayed as a page, a targeted `private` voided by a mistyped
//! member. Each failed on c849081, before the fixes.

mod support;

use support::Watch;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CacheMode, MemcacheLayer, ResponseBody};

type Svc =
    tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// An origin that honours single ranges, with `headers` on every response, and records
/// what it was asked.
#[derive(Clone)]
struct Origin {
    body: Bytes,
    headers: Vec<(&'static str, &'static str)>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Origin {
    fn new(len: usize, headers: Vec<(&'static str, &'static str)>) -> Self {
        Self {
            body: vec![b'x'; len].into(),
            headers,
            seen: Arc::default(),
        }
    }

    /// Requests the origin saw for the whole representation (no `Range`).
    fn whole_gets(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, h)| !h.contains_key("range"))
            .count()
    }

    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        self.seen
            .lock()
            .unwrap()
            .push((request.uri().path().to_string(), request.headers().clone()));
        let len = self.body.len();
        let mut response = match request.headers().get("range").and_then(|v| {
            v.to_str()
                .ok()?
                .strip_prefix("bytes=0-")
                .map(str::to_string)
        }) {
            Some(end) => {
                let end: usize = end.parse::<usize>().unwrap_or(len - 1).min(len - 1);
                let mut r = Response::new(Full::new(self.body.slice(0..=end)));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r.headers_mut().insert(
                    "content-range",
                    format!("bytes 0-{end}/{len}").parse().unwrap(),
                );
                r
            }
            None => Response::new(Full::new(self.body.clone())),
        };
        for (name, value) in &self.headers {
            response.headers_mut().append(*name, value.parse().unwrap());
        }
        response
    }
}

fn service(layer: &MemcacheLayer<MemoryBackend>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        let response = origin.respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    tower::util::BoxCloneService::new(tower::Layer::layer(layer, inner))
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://test.local{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = svc
        .clone()
        .oneshot(request.body(()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn layer(backend: MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend)
        .namespace("review13")
        .mode(CacheMode::Origin)
}

/// A range miss on a response the cache may never store (`no-store`, `private`, a
/// `Set-Cookie`, a request with `Authorization` and no `public`, a request `no-store`)
/// still makes the layer download the whole representation in the background, every
/// time: each 1-byte range request costs the origin a full body (up to max_entry_size,
/// which video sites raise), and nothing ends it.
#[tokio::test]
async fn a_range_miss_on_an_unstorable_response_fetches_no_whole() {
    for (response_cc, request) in [
        ("no-store", &[][..]),
        ("private, max-age=600", &[][..]),
        ("max-age=600", &[("authorization", "Bearer u1")][..]),
        ("max-age=600", &[("cache-control", "no-store")][..]),
    ] {
        let origin = Origin::new(100_000, vec![("cache-control", response_cc)]);
        let layer = layer(MemoryBackend::new());
        let watch = Watch::of(&layer);
        let svc = service(&layer, &origin);
        let mut headers = vec![("range", "bytes=0-0")];
        headers.extend_from_slice(request);
        for _ in 0..5 {
            let (status, _, body) = get(&svc, "/video.mp4", &headers).await;
            assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 1));
            watch.settled().await;
        }
        assert_eq!(
            origin.whole_gets(),
            0,
            "{response_cc} / {request:?}: whole bodies fetched for nothing"
        );
    }
}

/// The same while memcached is unreachable: nothing can be stored, yet every range
/// request is followed by a whole-body GET.
#[tokio::test]
async fn a_range_miss_with_memcached_down_fetches_no_whole() {
    let origin = Origin::new(100_000, vec![("cache-control", "max-age=600")]);
    let backend = MemoryBackend::new();
    backend.set_unreachable(true);
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for _ in 0..5 {
        get(&svc, "/video.mp4", &[("range", "bytes=0-0")]).await;
        watch.settled().await;
    }
    assert_eq!(
        origin.whole_gets(),
        0,
        "whole bodies fetched with memcached down"
    );
}

/// Background whole fills are tied to no client connection (a plain GET's fill ends when
/// its client goes away), and nothing bounds how many run at once: one client firing
/// `Range: bytes=0-0` at many URLs (a static file server ignores the query string, and
/// the query is part of the key) starts that many whole-body downloads, each held in
/// memory up to max_entry_size until the origin finishes.
#[tokio::test]
async fn background_whole_fills_are_bounded() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        tower::service_fn(move |request: Request<()>| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let len = 500_000usize;
                if request.headers().contains_key("range") {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"x")));
                    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                    r.headers_mut()
                        .insert("content-range", format!("bytes 0-0/{len}").parse().unwrap());
                    r.headers_mut()
                        .insert("cache-control", "max-age=600".parse().unwrap());
                    return Ok::<_, Infallible>(r);
                }
                // A slow origin for the whole body.
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Response::new(Full::new(Bytes::from(vec![b'x'; len]))))
            }
        })
    };
    let layer = layer(MemoryBackend::new());
    let svc: Svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    for i in 0..200 {
        let (status, _, _) = get(&svc, &format!("/big.bin?v={i}"), &[("range", "bytes=0-0")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 32,
        "{peak} whole-body downloads running at once for one client's 200 tiny requests"
    );
}

/// `statuses([200, 206])` (or `200..300`, "every 2xx") lets a multipart 206 (which has
/// no top-level Content-Range) into the cache, and it is then replayed to every plain GET
/// of the URL: one client's `Range: bytes=0-1,5-6` decides what everyone gets. The comment
/// in `Policy::storable` ("A 206 never gets here") only holds for the default statuses.
#[tokio::test]
async fn a_multipart_206_is_never_stored_whatever_the_statuses() {
    let inner = tower::service_fn(move |request: Request<()>| async move {
        if request.headers().contains_key("range") {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"--b\r\nContent-Range: bytes 0-1/10\r\n\r\nxx\r\n--b\r\nContent-Range: bytes 5-6/10\r\n\r\nxx\r\n--b--\r\n",
            )));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                "content-type",
                "multipart/byteranges; boundary=b".parse().unwrap(),
            );
            r.headers_mut()
                .insert("cache-control", "max-age=600".parse().unwrap());
            return Ok::<_, Infallible>(r);
        }
        let mut r = Response::new(Full::new(Bytes::from_static(b"0123456789")));
        r.headers_mut()
            .insert("cache-control", "max-age=600".parse().unwrap());
        Ok(r)
    });
    let layer = layer(MemoryBackend::new()).statuses([200, 206]);
    let watch = Watch::of(&layer);
    let svc: Svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    let (status, _, _) = get(&svc, "/file", &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    watch.settled().await;
    let (status, headers, body) = get(&svc, "/file", &[]).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"0123456789"[..]),
        "a plain GET got {:?}",
        headers.get("cache-status")
    );
}

/// A range request that revalidates a stale entry and gets it served stale (the origin
/// failed: stale-if-error, or stale_if_unreachable) is answered with a 206 cut from the
/// cache; `WholeFill::start` only looks at the status and Content-Range, takes it for the
/// origin's 206 and sends one more request to the failing origin in the background (with
/// the proxy's 60 s upstream timeout, one more hanging connection per request).
#[tokio::test]
async fn a_stale_range_answer_for_a_failing_origin_starts_no_whole_fill() {
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inner = {
        let (calls, failing) = (calls.clone(), failing.clone());
        tower::service_fn(move |_request: Request<()>| {
            let (calls, failing) = (calls.clone(), failing.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok::<_, Infallible>(r);
                }
                let mut r = Response::new(Full::new(Bytes::from(vec![b'x'; 1000])));
                for (name, value) in [
                    ("cache-control", "max-age=60, stale-if-error=600"),
                    ("age", "100"),
                    ("etag", "\"v1\""),
                ] {
                    r.headers_mut().insert(name, value.parse().unwrap());
                }
                Ok(r)
            }
        })
    };
    let layer = layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc: Svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    get(&svc, "/f", &[]).await;
    watch.settled().await;
    failing.store(true, Ordering::SeqCst);
    let (status, headers, body) = get(&svc, "/f", &[("range", "bytes=0-9")]).await;
    assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 10));
    assert!(
        headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("stale-if-error"),
        "{headers:?}"
    );
    watch.settled().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the failing origin was asked again in the background"
    );
}

/// RFC 9213 §2.1 asks caches not to *consume values* that violate the inferred types; the
/// layer drops the whole targeted field instead, so one mistyped member turns a `private`
/// (or `no-store`) meant for this cache into the browser-oriented `Cache-Control`'s
/// `public, max-age=3600`: the response is shared. Ignoring only the bad member (or
/// failing closed when the dictionary has `private` / `no-store` / `no-cache` keys) keeps it
/// out.
#[tokio::test]
async fn a_mistyped_member_does_not_void_a_targeted_private() {
    let origin = Origin::new(
        10,
        vec![
            ("cache-control", "public, max-age=3600"),
            ("cdn-cache-control", "private, max-age=\"60\""),
        ],
    );
    let layer = layer(MemoryBackend::new())
        .targeted_cache_control([tower_memcache::cache::CDN_CACHE_CONTROL]);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/account", &[]).await;
    watch.settled().await;
    let (_, headers, _) = get(&svc, "/account", &[]).await;
    assert!(
        !headers["cache-status"].to_str().unwrap().contains("hit"),
        "shared despite CDN-Cache-Control: private: {headers:?}"
    );
}
