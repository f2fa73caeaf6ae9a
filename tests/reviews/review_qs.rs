//! Review QS: range requests and partial content (RFC 9110 §14, §13.1.5, §15.3.7; RFC
//! 9111 §3.3–3.4, §4.3.4), tried as an attacker would: the background GET of the whole a
//! range miss starts, and what a 206 built from a stored 200 carries. Each test failed
//! before its fix.

use crate::support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::{Notify, mpsc};
use tower::{Layer, ServiceExt};
use tower_memcache::backend::MemoryBackend;

/// The origin's answer, boxed: its future holds a `Notified`, which the compiler cannot
/// prove `Send` for every lifetime through `service_fn`'s inference.
type Answer = Pin<
    Box<dyn std::future::Future<Output = Result<Response<StreamBody<Frames>>, Infallible>> + Send>,
>;

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

fn whole_body(data: &'static [u8]) -> StreamBody<Frames> {
    let frame = Ok::<_, Infallible>(Frame::data(Bytes::from_static(data)));
    StreamBody::new(Box::pin(futures_util::stream::once(async move { frame })))
}

/// A body whose frames the test sends, ending when the sender is dropped.
fn fed_body(feed: mpsc::Receiver<Bytes>) -> StreamBody<Frames> {
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let data = feed.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(data)), feed))
    });
    StreamBody::new(Box::pin(stream))
}

/// `tower::limit::ConcurrencyLimit` inside the layer (an application bounding its
/// handlers), one slot. A range miss's background GET of the whole made itself ready (took
/// the slot) and only then looked the URL up: when another request was already filling
/// the URL, it waited for that fill (up to `coalesce_timeout`) holding the slot, and every
/// other request of the application, for any URL, waited behind it. Any client could set
/// it off with a `Range` request on a large page while another client fetched it whole.
/// The GET now lets the slot go while it waits, as a client's request does.
#[tokio::test]
async fn a_range_misss_whole_fill_does_not_hold_the_inner_slot_while_it_waits() {
    struct Origin {
        ranges_seen: Notify,
        range_gate: Notify,
        wholes: AtomicUsize,
        whole_answered: Notify,
        feed: Mutex<Option<mpsc::Receiver<Bytes>>>,
    }
    let (feed, fed) = mpsc::channel::<Bytes>(4);
    let origin = Arc::new(Origin {
        ranges_seen: Notify::new(),
        range_gate: Notify::new(),
        wholes: AtomicUsize::new(0),
        whole_answered: Notify::new(),
        feed: Mutex::new(Some(fed)),
    });
    let layer = support::layer(MemoryBackend::new())
        .coalesce_timeout(Duration::from_secs(60))
        .lease_wait(Duration::from_secs(60), Duration::from_millis(50));
    let watch = support::Watch::of(&layer);
    let inner = tower::service_fn({
        let origin = Arc::clone(&origin);
        move |request: Request<()>| {
            let origin = Arc::clone(&origin);
            let answer: Answer = Box::pin(async move {
                let response = if request.uri().path() == "/other" {
                    Response::builder()
                        .header("cache-control", "public, max-age=60")
                        .body(whole_body(b"other"))
                } else if request.headers().contains_key("range") {
                    origin.ranges_seen.notify_one();
                    origin.range_gate.notified().await;
                    Response::builder()
                        .status(206)
                        .header("cache-control", "public, max-age=60")
                        .header("content-range", "bytes 0-1/10")
                        .body(whole_body(b"01"))
                } else {
                    origin.wholes.fetch_add(1, Ordering::SeqCst);
                    // The first whole GET streams as slowly as the test feeds it (a large
                    // file); any later one (the background fill) answers at once.
                    let body = match origin.feed.lock().unwrap().take() {
                        Some(fed) => fed_body(fed),
                        None => whole_body(b"0123456789"),
                    };
                    origin.whole_answered.notify_one();
                    Response::builder()
                        .header("cache-control", "public, max-age=60")
                        .body(body)
                };
                Ok::<_, Infallible>(response.unwrap())
            });
            answer
        }
    });
    let service = layer.layer(tower::limit::ConcurrencyLimit::new(inner, 1));

    support::bounded("the scenario", async {
        // The range request goes first and holds the slot at the origin.
        let request = Request::get("http://shop.example/file")
            .header("range", "bytes=0-1")
            .body(())
            .unwrap();
        let ranged = tokio::spawn(service.clone().oneshot(request));
        origin.ranges_seen.notified().await;
        // A whole GET of the same URL queues for the slot behind it (first in line).
        let request = Request::get("http://shop.example/file").body(()).unwrap();
        let whole = tokio::spawn(service.clone().oneshot(request));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        origin.range_gate.notify_one();
        assert_eq!(ranged.await.unwrap().unwrap().status(), 206);
        // The whole GET leads the URL's fill; its body is still coming.
        origin.whole_answered.notified().await;
        feed.send(Bytes::from_static(b"01234")).await.unwrap();
        // Time for the range miss's background GET to find that fill and wait for it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Another URL: the slot is free (the whole GET's head is answered).
        let other = tokio::time::timeout(
            Duration::from_secs(10),
            support::send(&service, Method::GET, "http://shop.example/other", &[]),
        )
        .await
        .expect("a request for another URL waited for the slot a background fill held idle");
        assert_eq!(other.body, "other");
        feed.send(Bytes::from_static(b"56789")).await.unwrap();
        drop(feed);
        let whole = whole.await.unwrap().unwrap().into_body().collect().await;
        assert_eq!(whole.unwrap().to_bytes().as_ref(), b"0123456789");
        watch.settled().await;
    })
    .await;
    // The background GET took the fill it waited for: the origin sent the whole once.
    assert_eq!(origin.wholes.load(Ordering::SeqCst), 1);
}

/// An origin that digests its content (RFC 9530 `Content-Digest`, and the older
/// `Content-MD5`, RFC 1864) as well as its representation (`Repr-Digest`). A 206 the cache
/// built from the stored 200 repeated the 200's `Content-Digest` and `Content-MD5`, which
/// are of the message content (§2 of RFC 9530): of a slice, or of a `multipart/byteranges`
/// body, they are false, and a client that checks them rejects every range the cache
/// answers (or, assembling a download from ranges, retries it forever). They are left out
/// of a 206; `Repr-Digest`, of the whole representation, stays true and is kept.
#[tokio::test]
async fn a_206_from_the_cache_does_not_repeat_the_200s_content_digest() {
    const DIGEST: &str = "sha-256=:ZGlnZXN0IG9mIHRoZSB3aG9sZSBib2R5IG5vdCBvZiBhIHJhbmdlIQ==:";
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        let body = http_body_util::Full::new(Bytes::from(vec![b'x'; 1000]));
        let response = Response::builder()
            .header("cache-control", "public, max-age=60")
            .header("content-type", "application/octet-stream")
            .header("content-digest", DIGEST)
            .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==")
            .header("repr-digest", DIGEST)
            .body(body);
        Ok::<_, Infallible>(response.unwrap())
    }));
    let url = "http://shop.example/file";
    support::send(&service, Method::GET, url, &[]).await;
    support::stores(&watch, 1).await;
    for range in ["bytes=0-9", "bytes=0-9,500-509"] {
        let got = support::send(&service, Method::GET, url, &[("range", range)]).await;
        assert_eq!(got.status, 206, "{range}");
        support::assert_hit(got.cache_status());
        assert_eq!(got.header("content-digest"), None, "{range}");
        assert_eq!(got.header("content-md5"), None, "{range}");
        assert_eq!(got.header("repr-digest"), Some(DIGEST), "{range}");
    }
    // The whole still carries them: they are true of it.
    let whole = support::send(&service, Method::GET, url, &[]).await;
    assert_eq!(whole.header("content-digest"), Some(DIGEST));
}

/// RFC 9110 §14.2 and §17.15 ("Apache Killer", CVE-2011-3192): a `Range` of many
/// overlapping or tiny ranges costs the client a few bytes and the server many times the
/// representation. On a hit the cache ignores such a set (the whole 200), but on a miss
/// it relayed it to the origin as it came, and behind the proxy the origin is reachable
/// only through the cache: `bytes=0-,0-,0-,…` asked it for the page sixteen times over in
/// one `multipart/byteranges` body, each request. A set the cache would ignore as
/// abusive or invalid (bytes only: other units are the origin's) now goes without its
/// `Range` (nor `If-Range`): the origin sends the whole, which is stored, and the client
/// gets the 200 it would have from a hit.
#[tokio::test]
async fn an_abusive_range_set_is_not_relayed_to_the_origin_on_a_miss() {
    let seen = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn({
        let seen = Arc::clone(&seen);
        move |request: Request<()>| {
            let range = request
                .headers()
                .get("range")
                .map(|v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(range.clone());
            async move {
                // An origin that honours every range it is given, as the vulnerable ones
                // did; the parts' framing does not matter here, their size does.
                let response = match range {
                    Some(range) => {
                        let parts = range.split(',').count();
                        Response::builder()
                            .status(206)
                            .header("cache-control", "public, max-age=60")
                            .header("content-type", "multipart/byteranges; boundary=b")
                            .body(http_body_util::Full::new(Bytes::from(vec![
                                b'x';
                                1000 * parts
                            ])))
                    }
                    None => Response::builder()
                        .header("cache-control", "public, max-age=60")
                        .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 1000]))),
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        }
    }));
    let sixteen_times = format!("bytes={}", vec!["0-"; 16].join(","));
    let seventeen = format!(
        "bytes={}",
        (0..17)
            .map(|i| format!("{}-{}", i * 100, i * 100))
            .collect::<Vec<_>>()
            .join(",")
    );
    let cases = [
        ("/overlapping", sixteen_times.as_str()),
        ("/three", "bytes=0-99,50-149,60-69"),
        ("/many", seventeen.as_str()),
        ("/invalid", "bytes=5-1,0-"),
    ];
    for (path, range) in cases {
        let url = format!("http://shop.example{path}");
        let got = support::send(&service, Method::GET, &url, &[("range", range)]).await;
        assert_eq!(got.status, 200, "{range}");
        assert_eq!(got.body.len(), 1000, "{range}");
        support::stores(&watch, 1).await;
        let again = support::send(&service, Method::GET, &url, &[("range", range)]).await;
        support::assert_hit(again.cache_status());
    }
    assert_eq!(*seen.lock().unwrap(), vec![None; cases.len()]);
    // What the cache would answer itself still goes as it came: one range, a few that do
    // not pile up, and units of the origin's own.
    for (path, range) in [
        ("/one", "bytes=0-99"),
        ("/two", "bytes=0-99,50-149"),
        ("/items", "items=0-9"),
    ] {
        let url = format!("http://shop.example{path}");
        seen.lock().unwrap().clear();
        let got = support::send(&service, Method::GET, &url, &[("range", range)]).await;
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(seen.lock().unwrap().first(), Some(&Some(range.to_owned())));
        watch.settled().await;
    }
}

/// [`an_abusive_range_set_is_not_relayed_to_the_origin_on_a_miss`] through the
/// `tower-memcache-proxy` binary, where the origin is reachable only through the proxy:
/// `bytes=0-,0-,…` and a repeated `Range` field reach it without their `Range`; a single
/// range still goes as it came.
#[tokio::test]
async fn the_proxy_does_not_relay_an_abusive_range_set() {
    let seen = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let origin = support::origin::serve_http1(listener, {
        let seen = Arc::clone(&seen);
        move |request: Request<hyper::body::Incoming>| {
            let ranges: Vec<String> = request
                .headers()
                .get_all("range")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            seen.lock()
                .unwrap()
                .push((!ranges.is_empty()).then(|| ranges.join(" | ")));
            async move {
                let parts = ranges.iter().map(|r| r.split(',').count()).sum::<usize>();
                let response = if parts == 0 {
                    Response::builder().header("cache-control", "public, max-age=60")
                } else {
                    Response::builder()
                        .status(206)
                        .header("cache-control", "public, max-age=60")
                        .header("content-type", "multipart/byteranges; boundary=b")
                };
                let body = Bytes::from(vec![b'x'; 1000 * parts.max(1)]);
                Ok::<_, Infallible>(response.body(http_body_util::Full::new(body)).unwrap())
            }
        }
    });
    let proxy = support::proxy::start_proxy(upstream, &[]);
    let sixteen_times = format!("bytes={}", vec!["0-"; 16].join(","));
    for (path, fields) in [
        ("/overlapping", format!("Range: {sixteen_times}\r\n")),
        (
            "/repeated",
            "Range: bytes=0-0\r\nRange: bytes=0-0\r\n".to_owned(),
        ),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n{fields}");
        let (status, _) = support::proxy::raw(&proxy, &head).await;
        assert_eq!(status, 200, "{path}");
    }
    let head = "GET /one HTTP/1.1\r\nHost: shop.example\r\nRange: bytes=0-9\r\n";
    let (status, _) = support::proxy::raw(&proxy, head).await;
    assert_eq!(status, 206);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None, None, Some("bytes=0-9".to_owned())]
    );
    origin.abort();
}

/// RFC 9110 §14.4: `Content-Range` means something only in a 206 or a 416. An origin
/// that answers the cache's revalidation of a range request with a 304 carrying the
/// `Content-Range` it computed for the range (frameworks that set range fields before
/// they evaluate preconditions do) had it merged into the stored 200's fields: the
/// refreshed 200 went to its client with a `Content-Range` (a multipart 206 too, where
/// RFC 9110 §14.6 forbids one), and, a stored response may not carry one, the entry was
/// refused and removed: any client could evict a page with a `Range` and `no-cache`. A
/// 304's (or HEAD's) `Content-Range` describes no stored body and is not merged.
#[tokio::test]
async fn a_304s_content_range_is_not_merged_into_the_stored_200() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn({
        let calls = Arc::clone(&calls);
        move |request: Request<()>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            let range = request.headers().get("range").cloned();
            async move {
                let response = if first {
                    Response::builder()
                        .header("cache-control", "public, max-age=60")
                        .header("etag", "\"v1\"")
                        .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 1000])))
                } else {
                    assert_eq!(
                        request.headers().get("if-none-match").unwrap(),
                        "\"v1\"",
                        "a revalidation"
                    );
                    let mut response = Response::builder()
                        .status(304)
                        .header("cache-control", "public, max-age=60")
                        .header("etag", "\"v1\"");
                    if range.is_some() {
                        response = response.header("content-range", "bytes 0-9/1000");
                    }
                    response.body(http_body_util::Full::new(Bytes::new()))
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        }
    }));
    let url = "http://shop.example/page";
    support::send(&service, Method::GET, url, &[]).await;
    support::stores(&watch, 1).await;
    let ranges = [
        ("range", "bytes=0-9,500-509"),
        ("cache-control", "no-cache"),
    ];
    let got = support::send(&service, Method::GET, url, &ranges).await;
    assert_eq!(got.status, 206);
    assert!(
        got.header("content-type")
            .unwrap()
            .starts_with("multipart/byteranges"),
    );
    assert_eq!(
        got.header("content-range"),
        None,
        "multipart with a Content-Range"
    );
    watch.settled().await;
    // The page is still stored, as it was, without the 304's Content-Range.
    let again = support::send(&service, Method::GET, url, &[]).await;
    support::assert_hit(again.cache_status());
    assert_eq!(again.status, 200);
    assert_eq!(again.header("content-range"), None);
    assert_eq!(again.body.len(), 1000);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
