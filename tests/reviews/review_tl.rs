//! Review TL: a second look at three changes of the last session. Review TE's
//! `range::tame` (no `Request-Range`, no abusive `Range` relayed on a miss or a bypassed
//! GET), review TH's invalidation keys made before the invalidation runs (an unsafe
//! request's client gone), and `LocalPurges` found by value (unit tests in
//! `storage::purge`).
//!
//! Found: an unsafe request whose client left before the origin answered was dropped
//! with its call to the origin, which had the request already and acted on it, and
//! nothing was invalidated: the old page stayed a hit for its whole lifetime (through
//! the layer and through the reverse proxy, whose client closes its connection).

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::ServiceExt;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;

/// An origin that keeps one version of its pages: a GET answers `vN` for a lifetime of
/// 600 s; a POST (or PUT) makes a new version as soon as it arrives (the origin has the
/// request and acts on it), then takes `slow` to answer with `status` (and `location`, if
/// any).
fn slow_writes(
    version: Arc<AtomicUsize>,
    slow: Duration,
    status: StatusCode,
    location: Option<&'static str>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |request: Request<()>| {
        let version = Arc::clone(&version);
        async move {
            if request.method() == Method::GET {
                let body = format!("v{}", version.load(Ordering::SeqCst));
                let response = Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                return Ok::<_, Infallible>(response);
            }
            version.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(slow).await;
            let mut response = Response::builder().status(status);
            if let Some(location) = location {
                response = response.header("location", location);
            }
            Ok(response.body(Full::new(Bytes::from("done"))).unwrap())
        }
    })
}

/// A client that posts an edit and goes (a closed tab, a client timeout shorter than the
/// origin's answer, a mobile link lost) before the origin answers. The origin had the
/// request and made the change; its 2xx came back to nobody, since the layer dropped
/// its call with the client's future, and nothing was invalidated: every reader got the
/// old page from the cache for the rest of its lifetime (RFC 9111 §4.4, README
/// "Invalidation"). The call now runs to its answer in the background (bounded by
/// `background_timeout`), and its success invalidates as if the client had stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_request_whose_client_left_before_the_answer_still_invalidates() {
    let version = Arc::new(AtomicUsize::new(1));
    let layer = MemcacheLayer::new(MemoryBackend::new()).namespace("review-tl-left");
    let background = layer.background();
    let origin = slow_writes(
        Arc::clone(&version),
        Duration::from_millis(300),
        StatusCode::SEE_OTHER,
        Some("/articles/7/summary"),
    );
    let svc = tower::Layer::layer(&layer, origin);
    const PAGE: &str = "http://review-tl.test/articles/7";
    const SUMMARY: &str = "http://review-tl.test/articles/7/summary";
    for url in [PAGE, SUMMARY] {
        assert_eq!(support::send(&svc, Method::GET, url, &[]).await.body, "v1");
        background.idle().await;
        let hit = support::send(&svc, Method::GET, url, &[]).await;
        assert_eq!(hit.body, "v1");
        assert!(
            hit.cache_status().contains("hit"),
            "{url} was not stored: {}",
            hit.cache_status()
        );
    }

    let post = Request::post(PAGE).body(()).unwrap();
    let left = tokio::time::timeout(Duration::from_millis(50), svc.clone().oneshot(post)).await;
    assert!(
        left.is_err(),
        "the POST came back before the origin answered"
    );
    assert_eq!(
        version.load(Ordering::SeqCst),
        2,
        "the origin did not act on it"
    );
    // The origin's answer, then the invalidation, come after the client left.
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::time::timeout(Duration::from_secs(10), background.idle())
        .await
        .expect("the layer's work ended");
    for url in [PAGE, SUMMARY] {
        assert_eq!(
            support::send(&svc, Method::GET, url, &[]).await.body,
            "v2",
            "{url}: the page changed by a POST whose client left was still answered"
        );
    }
}

/// What the client leaving must not make: an invalidation of an answer that was no
/// success (a 403 to a client not allowed to post), or of one that came past the bound.
/// Any client could otherwise evict any page by posting to it and leaving at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_invalidates_nothing_the_origin_refused() {
    let version = Arc::new(AtomicUsize::new(1));
    let layer = MemcacheLayer::new(MemoryBackend::new()).namespace("review-tl-refused");
    let background = layer.background();
    let origin = slow_writes(
        Arc::clone(&version),
        Duration::from_millis(100),
        StatusCode::FORBIDDEN,
        None,
    );
    let svc = tower::Layer::layer(&layer, origin);
    const PAGE: &str = "http://review-tl.test/refused";
    assert_eq!(support::send(&svc, Method::GET, PAGE, &[]).await.body, "v1");
    let post = Request::post(PAGE).body(()).unwrap();
    let left = tokio::time::timeout(Duration::from_millis(20), svc.clone().oneshot(post)).await;
    assert!(
        left.is_err(),
        "the POST came back before the origin answered"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(10), background.idle())
        .await
        .expect("the layer's work ended");
    // The origin's version moved (this origin counts every POST), yet it refused: the
    // stored page stays, as it does for a client that stays for the 403.
    let answer = support::send(&svc, Method::GET, PAGE, &[]).await;
    assert_eq!(answer.body, "v1", "a refused POST invalidated the page");
}

/// Past `background_timeout` after its client left, the call is given up (as the
/// layer's own requests are): an origin that never answers holds nothing for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_call_whose_client_left_is_given_up_at_the_background_deadline() {
    let version = Arc::new(AtomicUsize::new(1));
    let layer = MemcacheLayer::new(MemoryBackend::new())
        .namespace("review-tl-deadline")
        .background_timeout(Duration::from_millis(200));
    let background = layer.background();
    let origin = slow_writes(
        Arc::clone(&version),
        Duration::from_secs(3600),
        StatusCode::OK,
        None,
    );
    let svc = tower::Layer::layer(&layer, origin);
    let post = Request::post("http://review-tl.test/never")
        .body(())
        .unwrap();
    let left = tokio::time::timeout(Duration::from_millis(20), svc.clone().oneshot(post)).await;
    assert!(left.is_err(), "the POST came back");
    tokio::time::timeout(Duration::from_secs(5), background.idle())
        .await
        .expect("a call the origin never answers still runs past its deadline");
}

/// The same through the reverse proxy: a client that sends its POST and closes its
/// connection before the origin answers (hyper drops the request's future). The origin,
/// which had the whole request, made the change; the proxy still answered the old page
/// from its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_a_post_whose_client_closed_still_invalidates() {
    use tokio::io::AsyncWriteExt;

    let version = Arc::new(AtomicUsize::new(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let origin = support::origin::serve_http1(listener, {
        let version = Arc::clone(&version);
        move |request: Request<hyper::body::Incoming>| {
            let version = Arc::clone(&version);
            async move {
                if request.method() == Method::GET {
                    let body = format!("v{}", version.load(Ordering::SeqCst));
                    let response = Response::builder()
                        .header("cache-control", "max-age=600")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    return Ok::<_, Infallible>(response);
                }
                // The change is made as the request arrives; the answer takes a while.
                version.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(Response::new(Full::new(Bytes::from("done"))))
            }
        }
    });
    let proxy = support::proxy::start_proxy(origin_addr, &[]);
    const GET: &str = "GET /article HTTP/1.1\r\nHost: review-tl.test\r\n";
    assert_eq!(support::proxy::raw(&proxy, GET).await.1, "v1");
    assert_eq!(support::proxy::until_cached(&proxy, GET).await, "v1");

    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /article HTTP/1.1\r\nHost: review-tl.test\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(version.load(Ordering::SeqCst), 2, "the POST did not arrive");
    drop(client);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = support::proxy::raw(&proxy, GET).await;
    assert_eq!(status, 200);
    assert_eq!(
        body, "v2",
        "the proxy answered the page a POST whose client closed had changed"
    );
    origin.abort();
}
