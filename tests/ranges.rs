//! Range requests (RFC 9110 §14, §13.1.5; RFC 9111 §3.3–3.4): answered from a stored
//! complete 200, and on a miss forwarded as they are while the whole representation is
//! fetched in the background. Layer scenarios run on both backends; the last tests go
//! through the reverse proxy binary as `curl -r` and a browser's media requests do.

mod support;

use support::proxy::start_proxy;
use support::{HIT, Watch};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, MemcacheLayer, ResponseBody};

/// A known body: every byte different from its neighbours, so a slice off by one shows.
fn content(len: usize) -> Bytes {
    (0..len)
        .map(|i| u8::try_from((i * 7 + i / 251) % 251).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// What the origin sends for every path: the same representation, with `Range` honoured
/// (single ranges only) when `ranges` is on, as most origins do.
#[derive(Clone)]
struct Origin {
    body: Bytes,
    ranges: bool,
    headers: Vec<(&'static str, String)>,
    seen: Arc<Mutex<Vec<(Method, String, HeaderMap)>>>,
}

impl Origin {
    fn new(len: usize) -> Self {
        Self {
            body: content(len),
            ranges: false,
            headers: vec![
                ("cache-control", "max-age=600".into()),
                ("etag", "\"v1\"".into()),
                ("last-modified", LAST_MODIFIED.into()),
                (
                    "date",
                    httpdate::fmt_http_date(std::time::SystemTime::now()),
                ),
                ("content-type", "video/mp4".into()),
            ],
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<(Method, String, HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }

    fn respond(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        self.seen
            .lock()
            .unwrap()
            .push((method.clone(), path.to_string(), headers.clone()));
        let len = self.body.len();
        let range = headers
            .get("range")
            .filter(|_| self.ranges)
            .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=").map(str::to_string))
            .and_then(|spec| {
                let (a, b) = spec.split_once('-')?;
                let (start, end) = match (a, b) {
                    ("", n) => (len.saturating_sub(n.parse().ok()?), len),
                    (a, "") => (a.parse().ok()?, len),
                    (a, b) => (a.parse().ok()?, (b.parse::<usize>().ok()? + 1).min(len)),
                };
                (start < end).then_some((start, end))
            });
        let mut response = match range {
            Some((start, end)) => {
                let mut r = Response::new(Full::new(self.body.slice(start..end)));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r.headers_mut().insert(
                    "content-range",
                    format!("bytes {start}-{}/{len}", end - 1).parse().unwrap(),
                );
                r
            }
            None => Response::new(Full::new(self.body.clone())),
        };
        for (name, value) in &self.headers {
            response.headers_mut().insert(*name, value.parse().unwrap());
        }
        response
    }
}

type Svc =
    tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        let response = origin.respond(request.method(), request.uri().path(), request.headers());
        async move { Ok::<_, Infallible>(response) }
    });
    tower::util::BoxCloneService::new(tower::Layer::layer(layer, inner))
}

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("ranges")
        .mode(CacheMode::Origin)
}

/// A response read to its end, body as bytes.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        let value = self.headers.get(name).map_or("", |v| v.to_str().unwrap());
        if name == "cache-status" {
            support::as_seen(value)
        } else {
            value
        }
    }
}

async fn send(svc: &Svc, method: Method, headers: &[(&str, &str)]) -> Got {
    let mut request = Request::builder()
        .method(method)
        .uri("http://test.local/video.mp4");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = svc
        .clone()
        .oneshot(request.body(()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(svc: &Svc, headers: &[(&str, &str)]) -> Got {
    send(svc, Method::GET, headers).await
}

/// The origin's representation, stored by a first plain GET.
async fn stored<B: Backend>(backend: B, len: usize) -> (Origin, Svc, Watch) {
    let origin = Origin::new(len);
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let first = get(&svc, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    watch.settled().await;
    (origin, svc, watch)
}

#[track_caller]
fn assert_partial(got: &Got, whole: &Bytes, start: usize, end: usize) {
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        got.header("content-range"),
        format!("bytes {start}-{}/{}", end - 1, whole.len())
    );
    // An origin's 206 passed through in process has no Content-Length (hyper adds it).
    if got.headers.contains_key("content-length") {
        assert_eq!(got.header("content-length"), (end - start).to_string());
    }
    assert_eq!(got.body, whole.slice(start..end), "bytes {start}..{end}");
}

async fn rfc9110_14_2_single_open_and_suffix_ranges_from_a_stored_200<B: Backend>(backend: B) {
    let (origin, svc, _) = stored(backend, 1000).await;
    let whole = origin.body.clone();
    for (range, start, end) in [
        ("bytes=0-4", 0, 5),
        ("bytes=5-", 5, 1000),
        ("bytes=-5", 995, 1000),
        ("bytes=990-5000", 990, 1000),
        ("bytes=-5000", 0, 1000),
        ("Bytes= 10-19 ", 10, 20),
    ] {
        let got = get(&svc, &[("range", range)]).await;
        assert_partial(&got, &whole, start, end);
        // A hit, with the stored headers.
        assert_eq!(got.header("cache-status"), HIT, "{range}");
        assert_eq!(got.header("etag"), "\"v1\"");
        assert_eq!(got.header("content-type"), "video/mp4");
        assert_eq!(got.header("cache-control"), "max-age=600");
    }
    // The whole, still: the entry was never replaced by a part.
    let full = get(&svc, &[]).await;
    assert_eq!((full.status, full.body), (StatusCode::OK, whole));
    assert_eq!(origin.seen().len(), 1);
}

async fn rfc9110_14_6_several_ranges_are_multipart_byteranges<B: Backend>(backend: B) {
    let (origin, svc, _) = stored(backend, 1000).await;
    let whole = origin.body.clone();
    // §14.6: the parts come in the order the request named their ranges.
    for (range, parts) in [
        ("bytes=0-9, 500-509", [(0usize, 10usize), (500, 510)]),
        ("bytes=500-509,0-9", [(500, 510), (0, 10)]),
    ] {
        let got = get(&svc, &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(got.header("cache-status"), HIT);
        assert!(got.headers.get("content-range").is_none());
        let content_type = got.header("content-type");
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap_or_else(|| panic!("{content_type}"));
        assert_eq!(got.header("content-length"), got.body.len().to_string());
        // §14.6: each part has the representation's type and its own Content-Range.
        let mut expected = Vec::new();
        for (i, (start, end)) in parts.into_iter().enumerate() {
            if i > 0 {
                expected.extend_from_slice(b"\r\n");
            }
            expected.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Type: video/mp4\r\nContent-Range: bytes {start}-{}/1000\r\n\r\n",
                    end - 1
                )
                .as_bytes(),
            );
            expected.extend_from_slice(&whole[start..end]);
        }
        expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        assert_eq!(got.body, Bytes::from(expected), "{range}");
    }
    // §14.3: overlapping (or nearly touching) ranges are coalesced into one part, and one
    // part is never sent as multipart.
    let got = get(&svc, &[("range", "bytes=20-29,0-24,30-31")]).await;
    assert_partial(&got, &whole, 0, 32);
    assert_eq!(origin.seen().len(), 1);
}

async fn rfc9110_15_5_17_unsatisfiable_range_gets_416<B: Backend>(backend: B) {
    let (origin, svc, _) = stored(backend, 1000).await;
    for range in [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=-0",
        "bytes=1000-1001,2000-",
    ] {
        let got = get(&svc, &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(got.header("content-range"), "bytes */1000");
        assert!(got.body.is_empty());
        assert_eq!(got.header("cache-status"), HIT);
    }
    // The entry is untouched.
    assert_eq!(get(&svc, &[]).await.body, origin.body);
    assert_eq!(origin.seen().len(), 1);
}

async fn rfc9110_13_1_5_if_range<B: Backend>(backend: B) {
    let (origin, svc, _) = stored(backend, 1000).await;
    let whole = origin.body.clone();
    let range = ("range", "bytes=100-199");
    // A strong validator that matches, or the exact (strong) Last-Modified: the range.
    for if_range in ["\"v1\"", LAST_MODIFIED] {
        let got = get(&svc, &[range, ("if-range", if_range)]).await;
        assert_partial(&got, &whole, 100, 200);
        assert_eq!(got.header("cache-status"), HIT);
    }
    // Anything else: the whole 200, from the cache too.
    for if_range in [
        "\"v0\"",
        "W/\"v1\"",
        "Sun, 06 Nov 1994 08:49:38 GMT",
        "not a validator",
    ] {
        let got = get(&svc, &[range, ("if-range", if_range)]).await;
        assert_eq!(got.status, StatusCode::OK, "{if_range}");
        assert_eq!(got.body, whole);
        assert_eq!(got.header("cache-status"), HIT);
    }
    // If-Range without Range is ignored (§13.1.5).
    let got = get(&svc, &[("if-range", "\"v0\"")]).await;
    assert_eq!(
        (got.status, got.header("cache-status")),
        (StatusCode::OK, HIT)
    );
    // §13.2.2: If-None-Match is evaluated first.
    let got = get(&svc, &[range, ("if-none-match", "\"v1\"")]).await;
    assert_eq!(got.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.seen().len(), 1);
}

async fn rfc9110_14_2_head_malformed_and_abusive_ranges_are_ignored<B: Backend>(backend: B) {
    let (origin, svc, _) = stored(backend, 1000).await;
    let head = send(&svc, Method::HEAD, &[("range", "bytes=0-4")]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), "1000");
    assert!(head.body.is_empty());
    let seventeen = format!(
        "bytes={}",
        (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10))
            .collect::<Vec<_>>()
            .join(",")
    );
    for range in [
        "bytes=5-1",
        "bytes=x-1",
        "items=0-1",
        "bytes=",
        "bytes=0-1;2-3",
        seventeen.as_str(),
    ] {
        let got = get(&svc, &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::OK, "{range}");
        assert_eq!(got.body, origin.body);
        assert_eq!(got.header("cache-status"), HIT);
    }
    // Two Range fields: the field is a singleton, so it is ignored.
    let got = get(&svc, &[("range", "bytes=0-1"), ("range", "bytes=2-3")]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(origin.seen().len(), 1);
}

/// Retries (bounded) until `check` holds, for work the layer does in the background.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn rfc9111_3_3_a_range_miss_is_forwarded_and_fills_the_whole<B: Backend>(backend: B) {
    let mut origin = Origin::new(5000);
    origin.ranges = true;
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let whole = origin.body.clone();
    // The miss: the origin's 206 passes through, as it is.
    let got = get(&svc, &[("range", "bytes=1000-1999")]).await;
    assert_partial(&got, &whole, 1000, 2000);
    assert_ne!(got.header("cache-status"), HIT);
    assert_eq!(origin.seen()[0].2["range"], "bytes=1000-1999");
    watch.settled().await;
    // Then one GET of the whole, without Range and without conditions.
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "one whole-representation GET");
    assert_eq!(seen[1].0, Method::GET);
    for name in ["range", "if-range", "if-none-match"] {
        assert!(!seen[1].2.contains_key(name), "{name}");
    }
    // Every later range is a hit, and a plain GET gets the whole 200, never a 206.
    let got = get(&svc, &[("range", "bytes=-500")]).await;
    assert_partial(&got, &whole, 4500, 5000);
    assert_eq!(got.header("cache-status"), HIT);
    let full = get(&svc, &[]).await;
    assert_eq!(
        (full.status, full.header("cache-status")),
        (StatusCode::OK, HIT)
    );
    assert_eq!(full.body, whole);
    assert!(full.headers.get("content-range").is_none());
    assert_eq!(origin.seen().len(), 2);
}

async fn rfc9111_3_3_a_206_is_never_replayed_as_a_200<B: Backend>(backend: B) {
    // The whole is larger than the entry size limit: nothing is fetched in the background,
    // nothing stored, and a plain GET goes to the origin.
    let mut origin = Origin::new(5000);
    origin.ranges = true;
    let layer = layer(backend).max_entry_size(1000);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let got = get(&svc, &[("range", "bytes=0-99")]).await;
    assert_partial(&got, &origin.body, 0, 100);
    watch.settled().await;
    assert_eq!(origin.seen().len(), 1, "no whole-representation GET");
    let full = get(&svc, &[]).await;
    assert_eq!(full.status, StatusCode::OK);
    assert_ne!(full.header("cache-status"), HIT);
    assert_eq!(full.body, origin.body);
    let again = get(&svc, &[("range", "bytes=0-99")]).await;
    assert_partial(&again, &origin.body, 0, 100);
    assert_ne!(again.header("cache-status"), HIT);
}

async fn rfc9111_3_3_a_range_request_shares_a_full_miss<B: Backend>(backend: B) {
    // Stored while nothing honours ranges at the origin: a later range is cut from it.
    let origin = Origin::new(3000);
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let got = get(&svc, &[("range", "bytes=0-9")]).await;
    // The origin ignored Range and sent the whole: passed (and stored) as a 200.
    assert_eq!((got.status, got.body.len()), (StatusCode::OK, 3000));
    watch.settled().await;
    let got = get(&svc, &[("range", "bytes=0-9")]).await;
    assert_partial(&got, &origin.body, 0, 10);
    assert_eq!(got.header("cache-status"), HIT);
    assert_eq!(origin.seen().len(), 1);
}

async fn rfc5861_3_a_stale_range_is_answered_and_the_whole_refreshed<B: Backend>(backend: B) {
    let mut origin = Origin::new(1000);
    origin.ranges = true;
    origin.headers[0].1 = "max-age=60, stale-while-revalidate=600".into();
    origin.headers.push(("age", "100".into()));
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, &[]).await;
    watch.settled().await;
    let got = get(&svc, &[("range", "bytes=10-19")]).await;
    assert_partial(&got, &origin.body, 10, 20);
    support::assert_stale_hit(got.header("cache-status"));
    watch.settled().await;
    // The background refresh asked for the whole entry, not the client's range.
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert!(!seen[1].2.contains_key("range"));
    assert_eq!(seen[1].2["if-none-match"], "\"v1\"");
}

on_every_backend!("ranges";
    rfc5861_3_a_stale_range_is_answered_and_the_whole_refreshed,
    rfc9110_14_2_single_open_and_suffix_ranges_from_a_stored_200,
    rfc9110_14_6_several_ranges_are_multipart_byteranges,
    rfc9110_15_5_17_unsatisfiable_range_gets_416,
    rfc9110_13_1_5_if_range,
    rfc9110_14_2_head_malformed_and_abusive_ranges_are_ignored,
    rfc9111_3_3_a_range_miss_is_forwarded_and_fills_the_whole,
    rfc9111_3_3_a_206_is_never_replayed_as_a_200,
    rfc9111_3_3_a_range_request_shares_a_full_miss,
);

// --- Through the reverse proxy binary ----------------------------------------------------

mod proxy {
    use super::*;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use tokio::net::TcpListener;

    async fn start_origin(origin: Origin) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        support::origin::serve_http1(listener, move |req: Request<hyper::body::Incoming>| {
            let r = origin.respond(req.method(), req.uri().path(), req.headers());
            async move { Ok::<_, Infallible>(r) }
        });
        addr
    }

    async fn send(
        client: &Client<HttpConnector, Full<Bytes>>,
        proxy: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Got {
        let mut request = Request::get(format!("http://{proxy}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = client
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Got {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// What `curl -r` and a browser's `<video>` do against the proxy: the first request
    /// (`bytes=0-`) misses and streams the origin's 206; the proxy fetches the whole in
    /// the background; seeks (`bytes=1000-1999`, the tail with `bytes=-500`) and resumed
    /// downloads (`If-Range`) are then answered from the cache, byte for byte.
    #[tokio::test]
    async fn rfc9110_14_curl_and_media_requests_through_the_proxy() {
        let mut origin = Origin::new(20_000);
        origin.ranges = true;
        let whole = origin.body.clone();
        let upstream = start_origin(origin.clone()).await;
        let proxy = start_proxy(upstream, &[]);
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let addr = proxy.addr;

        let first = send(&client, addr, "/movie.mp4", &[("range", "bytes=0-")]).await;
        assert_partial(&first, &whole, 0, 20_000);
        assert_ne!(first.header("cache-status"), HIT);
        eventually("the whole representation is stored", async || {
            let got = send(&client, addr, "/movie.mp4", &[("range", "bytes=1000-1999")]).await;
            got.header("cache-status") == HIT
        })
        .await;
        for (range, start, end) in [
            ("bytes=0-", 0, 20_000),
            ("bytes=1000-1999", 1000, 2000),
            ("bytes=-500", 19_500, 20_000),
        ] {
            let got = send(&client, addr, "/movie.mp4", &[("range", range)]).await;
            assert_partial(&got, &whole, start, end);
            assert_eq!(got.header("cache-status"), HIT, "{range}");
        }
        // A download manager resuming: If-Range with the ETag it has gets the rest; with
        // an old one, the whole new representation.
        let resumed = send(
            &client,
            addr,
            "/movie.mp4",
            &[("range", "bytes=12345-"), ("if-range", "\"v1\"")],
        )
        .await;
        assert_partial(&resumed, &whole, 12_345, 20_000);
        let restarted = send(
            &client,
            addr,
            "/movie.mp4",
            &[("range", "bytes=12345-"), ("if-range", "\"v0\"")],
        )
        .await;
        assert_eq!(
            (restarted.status, restarted.body.len()),
            (StatusCode::OK, 20_000)
        );
        assert_eq!(restarted.body, whole);
        let unsatisfiable = send(&client, addr, "/movie.mp4", &[("range", "bytes=20000-")]).await;
        assert_eq!(unsatisfiable.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(unsatisfiable.header("content-range"), "bytes */20000");
        // The origin saw the first range request and one GET of the whole, nothing more.
        let seen = origin.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].2["range"], "bytes=0-");
        assert!(!seen[1].2.contains_key("range"));
        drop(proxy);
    }
}
