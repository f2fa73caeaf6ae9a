//! Review QQ: "bounded everything" as an attacker tests it: memory and tasks that an
//! untrusted client, an origin streaming at its own pace or a hostile memcached can make
//! the layer, the near tier and the TCP client hold. Growth is measured by counting
//! (owners of buffers still alive, map lengths), never by timing.
//!
//! And (the second review QQ) what a client's own request directives can make the cache
//! do (RFC 9111 §5.2.1): load the origin past coalescing with `no-cache`, without taking
//! what the origin must judge for each request.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};
use tower_memcache::backend::MemoryBackend;

/// A buffer an origin's body frames are slices of (as hyper's chunks are slices of its
/// read buffer), counting how many bytes of such buffers are still alive.
struct Backing {
    bytes: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl Backing {
    fn slice(len: usize, live: &Arc<AtomicUsize>) -> Bytes {
        live.fetch_add(len, Ordering::SeqCst);
        let backing = Backing {
            bytes: vec![b'x'; len],
            live: Arc::clone(live),
        };
        Bytes::from_owner(backing).slice(0..1)
    }
}

impl AsRef<[u8]> for Backing {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes.len(), Ordering::SeqCst);
    }
}

/// An origin that streams a cacheable body in many small frames (a template engine that
/// flushes often, or any origin read a few bytes at a time: hyper hands each chunk over as
/// a slice of its read buffer). The copy taken for the cache kept every frame as it came:
/// a one-byte slice pinned its whole read buffer, and each frame cost a `Bytes` in the
/// copy's list besides. A body well inside `max_entry_size` so held many times that limit
/// for as long as the origin took to finish it, once per URL being filled: the entry size
/// limit bounded the body, not the memory. The copy must hold about what it copied.
#[tokio::test]
async fn a_body_streamed_in_small_frames_holds_no_more_than_its_bytes_while_filling() {
    const FRAMES: usize = 1024;
    const READ_BUFFER: usize = 4096;
    let backend = MemoryBackend::new();
    let layer = support::layer(backend.clone()).max_entry_size(64 * 1024);
    let watch = support::Watch::of(&layer);
    let live = Arc::new(AtomicUsize::new(0));
    let (feed, frames) = mpsc::channel::<Bytes>(FRAMES + 1);
    let frames = Arc::new(std::sync::Mutex::new(Some(frames)));
    let service = layer.layer(tower::service_fn(move |_request: Request<()>| {
        let frames = frames.lock().unwrap().take();
        async move {
            let stream = futures_util::stream::unfold(frames, |frames| async move {
                let mut frames = frames?;
                let data = frames.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(data)), Some(frames)))
            });
            let response = Response::builder()
                .header("cache-control", "public, max-age=60")
                .body(StreamBody::new(Box::pin(stream)))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    }));

    for _ in 0..FRAMES {
        feed.send(Backing::slice(READ_BUFFER, &live)).await.unwrap();
    }
    let request = Request::get("http://shop.example/streamed")
        .body(())
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let mut body = response.into_body();
    // The client reads (and drops) every frame sent so far: what stays alive is what the
    // copy for the cache holds.
    for _ in 0..FRAMES {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame within 5 s")
            .expect("the body goes on")
            .unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 1);
    }
    let held = live.load(Ordering::SeqCst);
    assert!(
        held <= 64 * 1024,
        "the copy of a {FRAMES}-byte body in flight holds {held} bytes of the origin's \
         buffers, past the 64 KiB entry size limit"
    );

    // The fill still completes, whole.
    drop(feed);
    assert!(body.frame().await.is_none());
    watch.settled().await;
    let again = support::send(
        &service,
        http::Method::GET,
        "http://shop.example/streamed",
        &[],
    )
    .await;
    support::assert_hit(again.cache_status());
    assert_eq!(again.body.len(), FRAMES);
}

/// `fill_buffer` bounds the bytes of responses being stored that wait for clients slower
/// than the origin. Each frame waiting was counted for its data, or 64 bytes at least, but
/// a frame waiting in the queue takes at least a `Frame` (96 bytes, its `HeaderMap`
/// variant's size) and the queue grows by doubling: a body streamed in one-byte frames to
/// a client that reads nothing held several times the bound. Counted here: the frames
/// the layer pulled from the origin for a client that has read none of them, each at
/// least a `Frame` in memory, against the layer's `fill_buffer`.
#[tokio::test]
async fn frames_waiting_for_a_stalled_client_are_counted_for_what_they_hold() {
    const FILL_BUFFER: usize = 256 * 1024;
    const MOST_FRAMES: usize = 100_000;
    let layer = support::layer(MemoryBackend::new()).fill_buffer(FILL_BUFFER);
    let pulled = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(tower::service_fn({
        let pulled = Arc::clone(&pulled);
        move |_request: Request<()>| {
            let pulled = Arc::clone(&pulled);
            async move {
                // Always ready: only the layer's bound stops the reading.
                let stream = futures_util::stream::iter(0..MOST_FRAMES).map(move |_| {
                    pulled.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x")))
                });
                let response = Response::builder()
                    .header("cache-control", "public, max-age=60")
                    .body(StreamBody::new(stream))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    }));
    let request = Request::get("http://shop.example/stalled")
        .body(())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    // The reader runs on this (single-threaded) runtime until the bound stops it.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let frames = pulled.load(Ordering::SeqCst);
    assert!(frames < MOST_FRAMES, "the reader was not stopped at all");
    let held = frames * std::mem::size_of::<Frame<Bytes>>();
    assert!(
        held <= FILL_BUFFER,
        "{frames} one-byte frames wait for a client that read none, at least {held} bytes, \
         past the {FILL_BUFFER}-byte fill_buffer"
    );
    drop(response);
}

/// An origin that counts its calls and answers after `delay`, with a cacheable response
/// whose body names the call.
fn counting_origin(
    calls: Arc<AtomicUsize>,
    delay: Duration,
) -> impl tower::Service<
    Request<()>,
    Response = Response<http_body_util::Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_request: Request<()>| {
        let calls = calls.clone();
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            let response = Response::builder()
                .header("cache-control", "max-age=600")
                .header("etag", format!("\"v{call}\""))
                .body(http_body_util::Full::new(Bytes::from(format!(
                    "call {call}"
                ))))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    })
}

/// Origin load by `Cache-Control: no-cache` (or `Pragma: no-cache`, which any client can
/// send): each such request refused every response another request was fetching, the one
/// it waited for and the ones after it, and after a few rounds of waiting went to the
/// origin itself. A flood of them reached the origin once per request, coalescing and the
/// cache both bypassed. RFC 9111 §5.2.1.4 asks for a response validated after the request
/// arrived, not one per request: requests that arrive while a refresh is under way share
/// the next one, so a burst costs two origin calls, and never a response whose request
/// went out before theirs arrived.
#[tokio::test]
async fn a_flood_of_no_cache_requests_shares_one_refresh_after_it_arrived() {
    support::bounded("no-cache flood", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let service = layer.layer(counting_origin(calls.clone(), Duration::from_millis(300)));
        let url = "http://shop.example/hot";
        support::send(&service, http::Method::GET, url, &[]).await;
        support::stores(&watch, 1).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // One refresh under way (call 2), then a burst arriving after it went out.
        let first = tokio::spawn({
            let service = service.clone();
            async move {
                support::send(
                    &service,
                    http::Method::GET,
                    url,
                    &[("cache-control", "no-cache")],
                )
                .await
            }
        });
        support::eventually("the first refresh went out", || {
            calls.load(Ordering::SeqCst) == 2
        })
        .await;
        let burst: Vec<_> = (0..30)
            .map(|i| {
                let service = service.clone();
                let header = if i % 2 == 0 {
                    ("cache-control", "no-cache")
                } else {
                    ("pragma", "no-cache")
                };
                tokio::spawn(async move {
                    support::send(&service, http::Method::GET, url, &[header]).await
                })
            })
            .collect();
        assert_eq!(first.await.unwrap().body, "call 2");
        for answer in burst {
            let answer = answer.await.unwrap();
            assert_eq!(answer.status, http::StatusCode::OK);
            assert_ne!(
                answer.body, "call 2",
                "a response whose request went out before this one arrived is no validation for it"
            );
        }
        watch.settled().await;
        let total = calls.load(Ordering::SeqCst);
        assert_eq!(
            total,
            3,
            "30 no-cache requests arriving during one refresh cost {} origin calls",
            total - 2
        );
    })
    .await;
}

/// The limit of the fix above: a response's own `no-cache` asks for every request to be
/// forwarded (RFC 9111 §5.2.2.4), so that the origin judges each (a paywall answering each
/// reader's session). A request waiting for another's revalidation of such a page must
/// not take that answer, even though it was fetched after the request arrived: the
/// reader without a subscription would read the subscriber's article.
#[tokio::test]
async fn a_no_cache_response_revalidated_for_one_reader_is_not_given_to_another() {
    support::bounded("paywall", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let origin = {
            let calls = calls.clone();
            tower::service_fn(move |request: Request<()>| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let subscriber = request
                        .headers()
                        .get("cookie")
                        .is_some_and(|c| c.as_bytes() == b"session=subscriber");
                    let response = if subscriber {
                        Response::builder()
                            .header("cache-control", "no-cache, max-age=600")
                            .header("etag", "\"article\"")
                            .body(http_body_util::Full::new(Bytes::from("the article")))
                    } else {
                        Response::builder()
                            .status(403)
                            .header("cache-control", "no-store")
                            .body(http_body_util::Full::new(Bytes::from("subscribe")))
                    };
                    Ok::<_, Infallible>(response.unwrap())
                }
            })
        };
        let layer = support::layer(MemoryBackend::new()).mode(tower_memcache::CacheMode::Origin);
        let watch = support::Watch::of(&layer);
        let service = layer.layer(origin);
        let url = "http://news.example/article";
        let subscriber = [("cookie", "session=subscriber")];
        support::send(&service, http::Method::GET, url, &subscriber).await;
        support::stores(&watch, 1).await;
        let first = tokio::spawn({
            let service = service.clone();
            async move { support::send(&service, http::Method::GET, url, &subscriber).await }
        });
        support::eventually("the subscriber's revalidation went out", || {
            calls.load(Ordering::SeqCst) == 2
        })
        .await;
        // Another subscriber joins it, so the next flight is led after the reader arrived.
        let second = tokio::spawn({
            let service = service.clone();
            async move { support::send(&service, http::Method::GET, url, &subscriber).await }
        });
        let reader = tokio::spawn({
            let service = service.clone();
            async move {
                support::send(
                    &service,
                    http::Method::GET,
                    url,
                    // `no-store`: it never leads, only follows (its own answer is stored
                    // for nobody), which an attacker may well choose.
                    &[("cookie", "session=reader"), ("cache-control", "no-store")],
                )
                .await
            }
        });
        assert_eq!(first.await.unwrap().body, "the article");
        assert_eq!(second.await.unwrap().body, "the article");
        let reader = reader.await.unwrap();
        assert_eq!(
            reader.status,
            http::StatusCode::FORBIDDEN,
            "{}",
            reader.body
        );
    })
    .await;
}
