//! Review H: resource exhaustion and denial of service by an untrusted client (and a slow
//! or hostile origin): background work a client can start without waiting for it, work
//! that goes on for nobody, and coalescing a client can defeat by going away.

use crate::support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame};
use support::Watch;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CacheMode, ResponseBody};

/// A body: a few bytes (maybe after a pause), or chunks for as long as it is read
/// (counting what was read).
enum Page {
    Short(Option<Bytes>),
    Late(Pin<Box<tokio::time::Sleep>>, Option<Bytes>),
    Endless(Arc<AtomicU64>),
}

impl Body for Page {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Page::Short(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Page::Late(sleep, data) => {
                std::task::ready!(sleep.as_mut().poll(cx));
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            Page::Endless(read) => {
                const CHUNK: usize = 16 * 1024;
                read.fetch_add(CHUNK as u64, Ordering::SeqCst);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK])))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Page::Short(None) | Page::Late(_, None))
    }

    /// A short page says its length; the others do not.
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Page::Short(data) => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => http_body::SizeHint::default(),
        }
    }
}

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Page>>, Infallible>;

fn short(body: &'static str, cache_control: &'static str) -> Response<Page> {
    let mut response = Response::new(Page::Short(Some(Bytes::from_static(body.as_bytes()))));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static(cache_control));
    response
}

fn layer() -> MemcacheLayer<MemoryBackend> {
    MemcacheLayer::new(MemoryBackend::new())
        .namespace("review-h")
        .mode(CacheMode::Origin)
}

async fn get(svc: &Svc, path: &str) -> support::Answer {
    support::send(svc, Method::GET, &format!("http://site.example{path}"), &[]).await
}

/// Stale-while-revalidate lets a client start an origin request per stale URL and walk
/// away at once, answered from the cache: thousands of cheap hits are thousands of
/// concurrent origin requests (sockets, tasks), bounded by nothing. The layer bounds its
/// range-miss whole fills (8 at a time); its background refreshes must be bounded too
/// (past the bound the stale entry is served and the refresh skipped; a later request
/// within the window sends it).
#[tokio::test]
async fn stale_hits_on_many_urls_start_a_bounded_number_of_refreshes() {
    const URLS: usize = 400;
    let layer = layer();
    let watch = Watch::of(&layer);
    let calls = Arc::new(AtomicUsize::new(0));
    let refreshing = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc: Svc = {
        let (calls, refreshing, gate) = (calls.clone(), refreshing.clone(), gate.clone());
        let svc = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |_request: Request<()>| {
                let (calls, refreshing, gate) = (calls.clone(), refreshing.clone(), gate.clone());
                async move {
                    // The first URLS calls fill the cache; later ones are refreshes, held.
                    if calls.fetch_add(1, Ordering::SeqCst) >= URLS {
                        refreshing.fetch_add(1, Ordering::SeqCst);
                        let _held = gate.acquire().await;
                    }
                    Ok::<_, Infallible>(short("page", "max-age=1, stale-while-revalidate=600"))
                }
            });
        tower::util::BoxCloneSyncService::new(svc)
    };
    for i in 0..URLS {
        get(&svc, &format!("/p{i}")).await;
    }
    watch.settled().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..URLS {
        let stale = get(&svc, &format!("/p{i}")).await;
        support::assert_stale_hit(stale.cache_status());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let concurrent = refreshing.load(Ordering::SeqCst);
    let running = layer.background().running();
    gate.close();
    assert!(
        concurrent <= 64,
        "{concurrent} background refreshes at once (and {running} background tasks) for \
         {URLS} stale hits"
    );
    assert!(concurrent > 0, "stale hits refresh in the background");
}

/// A background refresh has no client: once its response can no longer be stored (over
/// the entry size limit, or refused), nothing is gained by reading on, yet the refresh
/// read the origin's body to its end. An endless (or huge) body kept a task and an
/// origin connection busy forever, downloading for nobody, one per stale URL.
#[tokio::test]
async fn a_background_refresh_stops_reading_what_it_cannot_store() {
    // Over the limit: read until it outgrew the limit (and a little ahead). Refused: not
    // read at all, nothing would come of it.
    for (refresh_cc, what, at_most) in [
        ("max-age=600", "over the entry size limit", 1 << 20),
        ("private", "refused", 16 * 1024),
    ] {
        let layer = layer().max_entry_size(64 * 1024);
        let watch = Watch::of(&layer);
        let calls = Arc::new(AtomicUsize::new(0));
        let read = Arc::new(AtomicU64::new(0));
        let svc: Svc = {
            let (calls, read) = (calls.clone(), read.clone());
            let svc = tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(move |_request: Request<()>| {
                    let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                    let read = read.clone();
                    async move {
                        if first {
                            return Ok::<_, Infallible>(short(
                                "page",
                                "max-age=1, stale-while-revalidate=600",
                            ));
                        }
                        let mut response = Response::new(Page::Endless(read));
                        response
                            .headers_mut()
                            .insert("cache-control", HeaderValue::from_static(refresh_cc));
                        Ok(response)
                    }
                });
            tower::util::BoxCloneSyncService::new(svc)
        };
        get(&svc, "/stream").await;
        watch.settled().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = get(&svc, "/stream").await;
        support::assert_stale_hit(stale.cache_status());
        let idle = tokio::time::timeout(Duration::from_secs(1), layer.background().idle()).await;
        let bytes = read.load(Ordering::SeqCst);
        assert!(
            idle.is_ok() && bytes <= at_most,
            "a refresh whose response is {what} read {bytes} bytes and is still running: {}",
            idle.is_err()
        );
    }
}

/// Requests for one URL wait for the first (stampede protection). When that first
/// request's client went away before its response was complete (a reset stream, a closed
/// connection; before the head or in the middle of the body), every waiting request went
/// to the origin at once: one client that asks and hangs up turns a crowd of waiting
/// requests into as many origin requests. The waiting requests must elect a new leader.
#[tokio::test]
async fn a_leader_that_hangs_up_does_not_release_a_stampede() {
    const WAITING: usize = 30;
    for mid_body in [false, true] {
        let layer = layer();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc: Svc = {
            let calls = calls.clone();
            let svc = tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(move |_request: Request<()>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        // Slow to answer, or slow to send the body.
                        let pause = Duration::from_millis(300);
                        if !mid_body {
                            tokio::time::sleep(pause).await;
                        }
                        let body = Page::Late(
                            Box::pin(tokio::time::sleep(if mid_body {
                                pause
                            } else {
                                Duration::ZERO
                            })),
                            Some(Bytes::from_static(b"page")),
                        );
                        let mut response = Response::new(body);
                        response
                            .headers_mut()
                            .insert("cache-control", HeaderValue::from_static("max-age=600"));
                        Ok::<_, Infallible>(response)
                    }
                });
            tower::util::BoxCloneSyncService::new(svc)
        };
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        let leader = tokio::spawn({
            let svc = svc.clone();
            async move {
                use tower::ServiceExt;
                let request = Request::get("http://site.example/slow").body(()).unwrap();
                let response = svc.oneshot(request).await.unwrap();
                let _ = head_tx.send(());
                // Never reads the body; holds it until aborted.
                std::future::pending::<()>().await;
                drop(response);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting: Vec<_> = (0..WAITING)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { get(&svc, "/slow").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if mid_body {
            head_rx.await.unwrap();
        }
        // The first client hangs up.
        leader.abort();
        for answer in waiting {
            let answer = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("answered")
                .unwrap();
            assert_eq!(answer.body, "page");
        }
        let calls = calls.load(Ordering::SeqCst);
        assert!(
            calls <= 3,
            "{calls} origin requests for {WAITING} requests waiting for one that hung up \
             (mid-body: {mid_body})"
        );
    }
}

/// The other side of the above: a leader whose response turns out not storable (its body
/// outgrew the entry size limit) says so, and the requests waiting for it go to the
/// origin at once, as before; they do not elect leader after leader, each waiting for a
/// body that cannot be shared either.
#[tokio::test]
async fn requests_waiting_for_a_body_too_large_to_store_go_at_once() {
    const WAITING: usize = 10;
    let pause = Duration::from_millis(400);
    // Declared too large (refused before it is read), or found too large while read.
    for declared in [true, false] {
        let layer = layer().max_entry_size(64 * 1024);
        let svc: Svc = {
            let svc = tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(move |_request: Request<()>| async move {
                    tokio::time::sleep(pause).await;
                    let large = Some(Bytes::from(vec![b'x'; 128 * 1024]));
                    let body = if declared {
                        Page::Short(large)
                    } else {
                        Page::Late(Box::pin(tokio::time::sleep(Duration::ZERO)), large)
                    };
                    let mut response = Response::new(body);
                    response
                        .headers_mut()
                        .insert("cache-control", HeaderValue::from_static("max-age=600"));
                    Ok::<_, Infallible>(response)
                });
            tower::util::BoxCloneSyncService::new(svc)
        };
        let started = std::time::Instant::now();
        let leader = tokio::spawn({
            let svc = svc.clone();
            async move { get(&svc, "/large").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting: Vec<_> = (0..WAITING)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { get(&svc, "/large").await })
            })
            .collect();
        assert_eq!(leader.await.unwrap().body.len(), 128 * 1024);
        for answer in waiting {
            assert_eq!(answer.await.unwrap().body.len(), 128 * 1024);
        }
        let took = started.elapsed();
        assert!(
            took < pause * 7 / 2,
            "requests waiting for a response too large to store (declared: {declared}) took \
             {took:?}: one origin round is {pause:?}"
        );
    }
}

/// The proxy: an origin that answers every GET with `size` bytes, `max-age=600`.
#[cfg(feature = "proxy")]
mod proxy {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    pub(super) struct Origin {
        pub(super) addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Origin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub(super) async fn origin(size: usize) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let page = Bytes::from(vec![b'p'; size]);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let page = page.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let mut response = Response::new(Full::new(page.clone()));
                        response
                            .headers_mut()
                            .insert("cache-control", "max-age=600".parse().unwrap());
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, task }
    }

    /// The proxy's resident memory, in KiB.
    pub(super) fn rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// One GET over HTTP/1.1, read to its end.
    pub(super) async fn get(proxy: SocketAddr, path: &str) -> (http::HeaderMap, usize) {
        let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "site.example")
            .body(Full::default())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (headers, body.len())
    }

    pub(super) fn executor() -> TokioExecutor {
        TokioExecutor::new()
    }
}

/// One client opens an HTTP/2 connection with a receive window of zero and asks for a
/// cached page of about 900 KiB on a hundred streams, reading nothing. Every hit is read
/// from memcached into a buffer of its own, and each stream keeps its buffer until the
/// response is sent: which is never (no write timeout; the connection is not idle while
/// responses are under way, so `--client-header-timeout` did not close it). A hundred
/// streams pinned ~140 MiB, and the client may open such connections up to
/// `--max-connections`, so one machine exhausted the proxy's memory. The proxy now
/// closes a connection that had responses to send and wrote almost nothing of them for
/// a whole `--client-header-timeout` (nginx's `send_timeout`), and allows 128 streams.
#[cfg(feature = "proxy")]
#[tokio::test]
async fn an_h2_client_that_never_opens_its_window_cannot_pin_the_proxys_memory() {
    const STREAMS: usize = 100;
    let memcached = memcached_or_skip!("review_h_h2_window");
    let origin = proxy::origin(900 * 1024).await;
    let proxy = support::proxy::start_proxy(
        origin.addr,
        &[
            "--memcache",
            &memcached.addr(),
            "--client-header-timeout",
            "1s",
        ],
    );
    let pid = proxy.child.id();
    // Cached, and served from memcached.
    proxy::get(proxy.addr, "/big").await;
    for _ in 0..50 {
        let (headers, len) = proxy::get(proxy.addr, "/big").await;
        assert_eq!(len, 900 * 1024);
        if headers
            .get("cache-status")
            .is_some_and(|v| v.to_str().unwrap().contains("hit"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = proxy::rss_kib(pid);

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(proxy::executor())
        .initial_stream_window_size(0)
        .initial_connection_window_size(65_535)
        .handshake::<_, http_body_util::Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut responses = Vec::new();
    for _ in 0..STREAMS {
        // On a loaded machine the proxy may cut the stalled client off (after
        // --client-header-timeout) before all its streams are open (CI-like load: three
        // runs in four): that is an outcome the assertion below accepts (`!open`), not a
        // failure to set the test up.
        let sent = match sender.ready().await {
            Ok(()) => {
                let request = Request::get(format!("http://{}/big", proxy.addr))
                    .body(http_body_util::Full::default())
                    .unwrap();
                sender.send_request(request).await
            }
            Err(err) => Err(err),
        };
        match sent {
            Ok(response) => responses.push(response),
            Err(err) => {
                // Closed or reset by the proxy: `open` below is false, as it must be then.
                eprintln!("stream {} not opened: {err:?}", responses.len());
                break;
            }
        }
    }
    // Well past the client header timeout: a stalled client is long since cut off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = proxy::rss_kib(pid).saturating_sub(before);
    let open = !connection.is_finished();
    drop(responses);
    assert!(
        held < 32 * 1024 || !open,
        "{STREAMS} unread h2 streams hold {} MiB of the proxy's memory, 4 s on, connection \
         still open",
        held / 1024
    );
}

/// HTTP/1.1 request heads were buffered up to hyper's default of ~400 KiB per connection
/// (nginx: 1 KiB, then at most four 8 KiB buffers). A client that sends 350 KiB of header
/// lines and never ends its head holds that much of the proxy's memory per connection for
/// `--client-header-timeout` (30 s), and may hold up to `--max-connections` (10 000) such
/// connections: about 4 GiB from one machine, renewed every 30 s.
///
/// The proxy now holds at most 64 KiB of request head per connection (a longer head is
/// refused with 431).
#[cfg(feature = "proxy")]
#[tokio::test]
async fn unfinished_huge_request_heads_cost_little_memory_each() {
    use tokio::io::AsyncWriteExt;
    const CONNECTIONS: usize = 100;
    let origin = proxy::origin(16).await;
    let proxy = support::proxy::start_proxy(origin.addr, &[]);
    let pid = proxy.child.id();
    proxy::get(proxy.addr, "/warm").await;
    let before = proxy::rss_kib(pid);
    let mut head = String::from("GET / HTTP/1.1\r\nHost: site.example\r\n");
    for i in 0..80 {
        head.push_str(&format!("X-Filler-{i}: {}\r\n", "a".repeat(4400)));
    }
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = proxy::rss_kib(pid).saturating_sub(before);
    drop(held);
    assert!(
        grown < 8 * 1024,
        "{CONNECTIONS} unfinished request heads of 350 KiB hold {} MiB",
        grown / 1024
    );
}
