//! Review TT: the layer used as a library (plain tower, hyper, axum), attacked through what
//! an application's own inner service and the middleware stacked around the layer can do:
//! bodies that end short of (or run past) the length their response declares, and the
//! requests an untrusted client can send through them. Each test fails if the attack (or
//! the sloppy inner service) gets an answer stored for others that it must not.

use crate::support;

#[cfg(feature = "axum")]
mod rewritten {
    //! A route-level middleware outside the cache that rewrites the request's target
    //! (the query a handler reads, its path): inside axum's `Router`, after `OriginalUri`
    //! was set, which the layer keys by so that nested routers are told apart.

    use axum::Router;
    use axum::extract::{Query, Request};
    use axum::middleware::{self, Next};
    use axum::response::Response;
    use axum::routing::get;
    use tower_memcache::backend::MemoryBackend;

    /// A locale middleware that puts the `lang` cookie into the query the handler reads,
    /// as route middleware may (the README puts request rewriting outside the cache).
    async fn lang_from_cookie(mut request: Request, next: Next) -> Response {
        let french = request
            .headers()
            .get(http::header::COOKIE)
            .is_some_and(|v| v.as_bytes() == b"lang=fr");
        if french && request.uri().query().is_none() {
            let target = format!("{}?lang=fr", request.uri().path());
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(target.parse().unwrap());
            *request.uri_mut() = http::Uri::from_parts(parts).unwrap();
        }
        next.run(request).await
    }

    #[derive(serde::Deserialize)]
    struct Lang {
        lang: Option<String>,
    }

    fn app(cache: tower_memcache::MemcacheLayer<MemoryBackend>) -> Router {
        Router::new()
            .route(
                "/welcome",
                get(|Query(lang): Query<Lang>| async move {
                    match lang.lang.as_deref() {
                        Some("fr") => "bienvenue",
                        _ => "welcome",
                    }
                }),
            )
            .layer(cache)
            .layer(middleware::from_fn(lang_from_cookie))
    }

    /// The rewriting middleware is outside the cache, the order the README asks for; but
    /// it runs inside the `Router`, which had set `OriginalUri` to the client's `/welcome`.
    /// The layer keyed the request by `OriginalUri` while the handler read
    /// `/welcome?lang=fr`: the French page was stored as `/welcome` for every reader.
    #[tokio::test]
    async fn a_target_rewritten_after_routing_is_not_stored_under_the_clients_target() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = app(layer);
        let french = support::send_axum(
            &app,
            "http://shop.example/welcome",
            &[("cookie", "lang=fr")],
        )
        .await;
        assert_eq!(french.body, "bienvenue");
        watch.settled().await;
        let english = support::send_axum(&app, "http://shop.example/welcome", &[]).await;
        assert_eq!(english.body, "welcome", "{:?}", english.headers);
        // Asked as the handler reads it, the French page is the French page.
        let asked = support::send_axum(&app, "http://shop.example/welcome?lang=fr", &[]).await;
        assert_eq!(asked.body, "bienvenue");
    }

    use super::support;
}

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::StreamBody;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

/// A body of `data` in frames of 10 bytes that reports `hint` as its size, whatever
/// `data`'s length: an application body that lies about its length (a file that shrank
/// while it was streamed, a hand-written body).
struct Lying {
    data: Bytes,
    hint: SizeHint,
}

impl Body for Lying {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.data.len().min(10);
        let chunk = self.data.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn stream_of(
    data: &'static [u8],
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send> {
    StreamBody::new(futures_util::stream::iter(
        data.chunks(10)
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect::<Vec<_>>(),
    ))
}

const PAGE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCD"; // 50 bytes

/// The inner service declares `Content-Length: 100` and its body ends after 50 bytes (a
/// file that shrank while streamed, an upstream copied with its length). The client that
/// asked gets a response its server cuts off (hyper fails a body short of its
/// `Content-Length`), but the layer stored the 50 bytes and served them to everyone after
/// as a complete 200 with `Content-Length: 50`: a truncated page made whole. RFC 9111
/// §3.4: a response is complete only when all the octets its framing indicates arrived.
#[tokio::test]
async fn a_body_short_of_its_content_length_is_not_stored() {
    let backend = MemoryBackend::new();
    let layer = support::layer(backend.clone());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        let response = Response::builder()
            .header("cache-control", "public, max-age=60")
            .header("content-length", "100")
            .body(stream_of(PAGE))
            .unwrap();
        Ok::<_, Infallible>(response)
    }));
    let first = support::send(&service, Method::GET, "http://shop.example/short", &[]).await;
    assert_eq!(first.body.len(), 50);
    watch.settled().await;
    let again = support::send(&service, Method::GET, "http://shop.example/short", &[]).await;
    assert!(
        !again.cache_status().contains("hit"),
        "a body cut short of its Content-Length was stored and served as complete: {:?}",
        again.headers
    );
}

/// The same, with the declared length in the body's exact `size_hint` only (no field):
/// hyper frames the response by that hint and fails it when the body ends short.
#[tokio::test]
async fn a_body_short_of_its_exact_size_hint_is_not_stored() {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        let response = Response::builder()
            .header("cache-control", "public, max-age=60")
            .body(Lying {
                data: Bytes::from_static(PAGE),
                hint: SizeHint::with_exact(100),
            })
            .unwrap();
        Ok::<_, Infallible>(response)
    }));
    let first = support::send(&service, Method::GET, "http://shop.example/hinted", &[]).await;
    assert_eq!(first.body.len(), 50);
    watch.settled().await;
    let again = support::send(&service, Method::GET, "http://shop.example/hinted", &[]).await;
    assert!(
        !again.cache_status().contains("hit"),
        "a body short of its exact size hint was stored: {:?}",
        again.headers
    );
}

/// A body that runs past its `Content-Length` (20 declared, 50 sent): the client that
/// asked was framed 20 bytes (or cut off), but the layer stored all 50 and served them
/// with `Content-Length: 50`.
#[tokio::test]
async fn a_body_past_its_content_length_is_not_stored() {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        let response = Response::builder()
            .header("cache-control", "public, max-age=60")
            .header("content-length", "20")
            .body(stream_of(PAGE))
            .unwrap();
        Ok::<_, Infallible>(response)
    }));
    support::send(&service, Method::GET, "http://shop.example/long", &[]).await;
    watch.settled().await;
    let again = support::send(&service, Method::GET, "http://shop.example/long", &[]).await;
    assert!(
        !again.cache_status().contains("hit"),
        "a body past its Content-Length was stored: {:?}",
        again.headers
    );
}

/// A body that agrees with its `Content-Length` is stored as before (and one without any
/// declared length).
#[tokio::test]
async fn a_body_that_keeps_its_length_is_stored() {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let mut response = Response::builder().header("cache-control", "public, max-age=60");
        if request.uri().path() == "/declared" {
            response = response.header("content-length", "50");
        }
        Ok::<_, Infallible>(response.body(stream_of(PAGE)).unwrap())
    }));
    for path in ["/declared", "/undeclared"] {
        let url = format!("http://shop.example{path}");
        support::send(&service, Method::GET, &url, &[]).await;
        watch.settled().await;
        let again = support::send(&service, Method::GET, &url, &[]).await;
        support::assert_hit(again.cache_status());
        assert_eq!(again.body.as_bytes(), PAGE);
    }
}

/// An origin that answers `Range` requests with a 206 of a 10-byte page and others with
/// the whole page, cacheable; it counts whole GETs.
fn ranged_origin(
    wholes: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<http_body_util::Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<http_body_util::Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<()>| {
        let wholes = Arc::clone(&wholes);
        async move {
            let response = if request.headers().contains_key("range") {
                Response::builder()
                    .status(206)
                    .header("cache-control", "public, max-age=60")
                    .header("content-range", "bytes 0-1/10")
                    .body(http_body_util::Full::new(Bytes::from_static(b"01")))
            } else {
                wholes.fetch_add(1, Ordering::SeqCst);
                Response::builder()
                    .header("cache-control", "public, max-age=60")
                    .body(http_body_util::Full::new(Bytes::from_static(b"0123456789")))
            };
            Ok::<_, Infallible>(response.unwrap())
        }
    })
}

/// `tower::limit::ConcurrencyLimit` inside the layer (an application bounding its
/// handlers). A range miss starts the whole GET in the background: it took the URL's
/// lead (placeholder, single flight) and only then waited for the inner service to be
/// ready. A client request for the URL that was already ready (holding the only permit)
/// joined that flight and waited for a fill that could not start before it let go of its
/// permit: every such request stalled for the whole `coalesce_timeout` (here a minute),
/// and any client could set it off with a `Range` header. The background GET waits for
/// readiness before it leads.
#[tokio::test]
async fn a_range_misss_background_fill_does_not_lead_before_the_inner_service_is_ready() {
    use tower::{Service, ServiceExt};

    let layer = support::layer(MemoryBackend::new())
        .coalesce_timeout(Duration::from_secs(60))
        .lease_wait(Duration::from_secs(60), Duration::from_millis(50));
    let watch = support::Watch::of(&layer);
    let wholes = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(tower::limit::ConcurrencyLimit::new(
        ranged_origin(Arc::clone(&wholes)),
        1,
    ));
    let ranged = support::send(
        &service,
        Method::GET,
        "http://shop.example/file",
        &[("range", "bytes=0-1")],
    )
    .await;
    assert_eq!(ranged.status, 206);
    // A client whose connection is ready (the permit is its own) before the background
    // GET runs; on a current-thread runtime that GET has not been polled yet.
    let mut client = service.clone();
    client.ready().await.unwrap();
    let request = Request::get("http://shop.example/file").body(()).unwrap();
    let answer = tokio::spawn(async move {
        let response = client.call(request).await.unwrap();
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|body| body.to_bytes())
    });
    let body = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("the client waited on a background fill that waited on the client's permit")
        .unwrap()
        .unwrap();
    assert_eq!(body.as_ref(), b"0123456789");
    watch.settled().await;
}

/// A `tower::timeout` (or any error) inside the layer: the inner service fails the
/// leader's request with an error rather than a response. Its followers took that as a
/// leader whose client went away and elected another leader, one after another: with a
/// hanging origin behind a 2 s timeout, the last of the clients waiting for a hot URL
/// waited for each round in turn (three retries, then its own request), several times
/// the timeout the application chose. A failed exchange is something learnt, as a 5xx
/// is: the followers go on their own at once.
#[tokio::test]
async fn followers_of_a_leader_whose_inner_service_failed_do_not_wait_in_turn() {
    use tokio::sync::{Notify, Semaphore};

    struct Origin {
        calls: AtomicUsize,
        arrived: Notify,
        leader_may_fail: Semaphore,
        later: AtomicUsize,
        later_arrived: Notify,
    }

    let layer = support::layer(MemoryBackend::new())
        .coalesce_timeout(Duration::from_secs(60))
        .lease_wait(Duration::from_secs(60), Duration::from_millis(50));
    let watch = support::Watch::of(&layer);
    let origin = Arc::new(Origin {
        calls: AtomicUsize::new(0),
        arrived: Notify::new(),
        leader_may_fail: Semaphore::new(0),
        later: AtomicUsize::new(0),
        later_arrived: Notify::new(),
    });
    let service = layer.layer(tower::service_fn({
        let origin = Arc::clone(&origin);
        move |_request: Request<()>| {
            let origin = Arc::clone(&origin);
            async move {
                if origin.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    origin.arrived.notify_one();
                    let _ = origin.leader_may_fail.acquire().await;
                } else {
                    // The followers' own requests fail once both have come: in parallel,
                    // not one waiting for the other's.
                    origin.later.fetch_add(1, Ordering::SeqCst);
                    origin.later_arrived.notify_waiters();
                    loop {
                        let notified = origin.later_arrived.notified();
                        if origin.later.load(Ordering::SeqCst) >= 2 {
                            break;
                        }
                        notified.await;
                    }
                }
                Err::<Response<http_body_util::Full<Bytes>>, _>(std::io::Error::other("timed out"))
            }
        }
    }));
    let leader = send(&service);
    origin.arrived.notified().await;
    let followers = [send(&service), send(&service)];
    tokio::time::timeout(Duration::from_secs(10), async {
        while watch.snapshot().coalesced < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("two requests waiting for the leader");
    origin.leader_may_fail.add_permits(1);
    assert!(leader.await.unwrap().is_err());
    for follower in followers {
        let failed = tokio::time::timeout(Duration::from_secs(20), follower)
            .await
            .expect("a follower waited for another follower's turn at a failing origin")
            .unwrap();
        assert!(failed.is_err());
    }
    watch.settled().await;
}

/// Sends a GET for `/hot` through `service` on a task of its own.
fn send<S, T>(service: &S) -> tokio::task::JoinHandle<Result<(), S::Error>>
where
    S: tower::Service<Request<()>, Response = T> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    T: Send + 'static,
{
    use tower::ServiceExt;
    let service = service.clone();
    tokio::spawn(async move {
        let request = Request::get("http://shop.example/hot").body(()).unwrap();
        service.oneshot(request).await.map(|_| ())
    })
}

/// A leader whose inner service never answers (a handler stuck on a lock, no timeout
/// inside the layer; or a background refresh, which no client's timeout ends). Each
/// request for the URL joined its flight, waited `coalesce_timeout` for nothing and then
/// went alone: every later request paid the whole wait again, for as long as the stuck
/// request lasted (forever for a background one). The first request that waits it out
/// now ends that flight, and the next leads its own.
#[tokio::test]
async fn a_flight_whose_leader_never_answers_is_waited_out_once() {
    let layer = support::layer(MemoryBackend::new())
        .coalesce_timeout(Duration::from_millis(300))
        .lease(None);
    let watch = support::Watch::of(&layer);
    let calls = Arc::new(AtomicUsize::new(0));
    let stuck = Arc::new(tokio::sync::Notify::new());
    let service = layer.layer(tower::service_fn({
        let (calls, stuck) = (Arc::clone(&calls), Arc::clone(&stuck));
        move |_request: Request<()>| {
            let (calls, stuck) = (Arc::clone(&calls), Arc::clone(&stuck));
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    stuck.notify_one();
                    std::future::pending::<()>().await;
                }
                // Not stored: the URL stays a miss, and each request coordinates anew.
                let response = Response::builder()
                    .header("cache-control", "no-store")
                    .body(http_body_util::Full::new(Bytes::from_static(b"page")))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    }));
    let leader = send(&service);
    stuck.notified().await;
    for _ in 0..3 {
        let answered = tokio::time::timeout(Duration::from_secs(20), send(&service))
            .await
            .expect("a request answered")
            .unwrap();
        assert!(answered.is_ok());
    }
    assert_eq!(
        watch.snapshot().coalesced,
        1,
        "every request waited for the stuck leader in turn"
    );
    leader.abort();
}

/// A stale-while-revalidate refresh whose inner service never answers (a hung handler
/// with no timeout inside the layer): no client waits for it, so nothing ended it, and it
/// held one of the layer's 64 refresh places for good (and the 8 whole fills of range
/// misses alike); once all were held, no stale entry was refreshed in the background
/// again. `background_timeout` drops it: its place comes back, and the next stale hit
/// refreshes again.
#[tokio::test]
async fn a_background_refresh_the_inner_service_never_answers_is_dropped_at_its_deadline() {
    let layer = support::layer(MemoryBackend::new())
        .mode(tower_memcache::CacheMode::Origin)
        .background_timeout(Duration::from_millis(300));
    let watch = support::Watch::of(&layer);
    let background = layer.background();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_request: Request<()>| {
            let calls = Arc::clone(&calls);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                    // Every refresh hangs.
                    std::future::pending::<()>().await;
                }
                // Stale as soon as stored (an `Age` past `max-age`), within its window.
                let response = Response::builder()
                    .header("cache-control", "max-age=1, stale-while-revalidate=600")
                    .header("age", "5")
                    .body(http_body_util::Full::new(Bytes::from_static(b"page")))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    }));
    let url = "http://example.com/stale";
    support::send(&service, http::Method::GET, url, &[]).await;
    support::stores(&watch, 1).await;
    for round in 1..=2 {
        let answer = support::send(&service, http::Method::GET, url, &[]).await;
        assert_eq!(answer.body, "page");
        assert!(
            answer.cache_status().contains("hit"),
            "{}",
            answer.cache_status()
        );
        // The refresh went to the inner service and hangs there...
        let asked = tokio::time::timeout(Duration::from_secs(5), async {
            while calls.load(Ordering::SeqCst) <= round {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            asked.is_ok(),
            "round {round}: the stale hit started no refresh"
        );
        // ...until its deadline: dropped, its place given back.
        let ended = tokio::time::timeout(Duration::from_secs(10), background.idle()).await;
        assert!(
            ended.is_ok(),
            "round {round}: a refresh the inner service never answers still runs after 10 s \
             (deadline 300 ms); {} background task(s)",
            background.running()
        );
    }
}
