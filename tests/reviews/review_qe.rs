//! Review QE: the layer inside real applications, composed with the rest of a tower /
//! axum / hyper stack as users deploy it: protocol upgrades, streaming responses, and
//! what the inner service relies on.

use crate::support;

use support::bounded;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

/// The handshake of a WebSocket client (RFC 6455 §4.1) for its GET.
const HANDSHAKE: &[(&str, &str)] = &[
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

/// One URL serving both a page and a WebSocket (a chat page and its socket, a GraphQL
/// endpoint with its playground and its subscriptions; axum's `Option<WebSocketUpgrade>`):
/// once the page was stored, a handshake for the URL was looked up like any GET and
/// answered with the stored page, never reaching the handler, so no client could open
/// the socket until the entry expired. A GET asking to upgrade the connection asks for
/// another protocol, not for the representation: it is neither looked up nor stored, and
/// the handler's 101 reaches its client.
#[tokio::test]
async fn a_websocket_handshake_reaches_the_handler_of_a_stored_page() {
    bounded("upgrade", async {
        let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
        let watch = support::Watch::of(&layer);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let service = layer.layer(tower::service_fn(move |request: http::Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let response = if request.headers().contains_key("upgrade") {
                    http::Response::builder()
                        .status(101)
                        .header("upgrade", "websocket")
                        .header("connection", "upgrade")
                        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                        .body(Full::new(Bytes::new()))
                } else {
                    http::Response::builder()
                        .header("cache-control", "public, max-age=60")
                        .body(Full::new(Bytes::from_static(b"the chat page")))
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        }));
        let url = "http://chat.example/room";
        let page = support::send(&service, http::Method::GET, url, &[]).await;
        assert_eq!(page.body, "the chat page");
        support::stores(&watch, 1).await;
        let again = support::send(&service, http::Method::GET, url, &[]).await;
        support::assert_hit(again.cache_status());

        let handshake = support::send(&service, http::Method::GET, url, HANDSHAKE).await;
        assert_eq!(
            handshake.status.as_u16(),
            101,
            "the handshake got {} {:?} ({})",
            handshake.status,
            handshake.body,
            handshake.cache_status()
        );
        assert_eq!(
            handshake.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        watch.settled().await;
        // The page is still stored for the others.
        let after = support::send(&service, http::Method::GET, url, &[]).await;
        assert_eq!(after.body, "the chat page");
        support::assert_hit(after.cache_status());
    })
    .await;
}

/// Server-sent events under a layer whose routes give responses a lifetime (the default
/// mode): the event stream was admitted like a page. Every client that came while one
/// stream ran joined its fill and waited `coalesce_timeout` for an end that may never come
/// (5 s by default, for each client of a live feed), and a stream that ended was stored
/// and replayed, its old events as new, to every later client. An event stream is never
/// stored: each client gets its own, at once. So is a `multipart/x-mixed-replace` stream
/// (a camera's MJPEG feed, server push: each part replaces the last, for as long as the
/// connection lasts), which was still stored like a page.
#[tokio::test]
async fn clients_of_an_event_stream_each_get_their_own_at_once() {
    for content_type in [
        "text/event-stream",
        "Multipart/X-Mixed-Replace; boundary=frame",
    ] {
        support::live_stream::each_client_gets_its_own(content_type).await;
    }
}

/// A probe that held, kept as a regression test: a real HTTP/1.1 upgrade through the layer
/// on a hyper server. The handler takes the connection with `hyper::upgrade::on` (what
/// axum's `WebSocketUpgrade` does); the layer passes the request's `OnUpgrade` on and the
/// 101 back, and the two sides then speak their own protocol over the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_through_the_layer_carries_its_own_protocol() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded("upgrade over hyper", async {
        let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
        let service = layer.layer(tower::service_fn(
            |mut request: http::Request<hyper::body::Incoming>| async move {
                if !request.headers().contains_key("upgrade") {
                    let page = Full::new(Bytes::from_static(b"the page"));
                    return Ok::<_, Infallible>(http::Response::new(page));
                }
                let on_upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut io = TokioIo::new(upgraded);
                    let mut ping = [0u8; 4];
                    if io.read_exact(&mut ping).await.is_ok() && &ping == b"ping" {
                        let _ = io.write_all(b"pong").await;
                    }
                });
                let response = http::Response::builder()
                    .status(101)
                    .header("upgrade", "echo")
                    .header("connection", "upgrade")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                Ok(response)
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper_util::service::TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        // The page first, so that one is stored for the URL.
        for _ in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let get = "GET /live HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";
            stream.write_all(get.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            assert!(answer.ends_with(b"the page"));
        }
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let handshake = "GET /live HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\n\
                         Upgrade: echo\r\n\r\n";
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        stream.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
    })
    .await;
}

/// HTTP/2's WebSocket handshake is an extended CONNECT (RFC 8441: `:method CONNECT`,
/// `:protocol websocket`, the socket's URL in `:path`), the counterpart of HTTP/1.1's GET
/// with `Upgrade`. CONNECT is no method RFC 9110 calls safe, so its 200 invalidated its
/// URL as a POST's would: every client that opened the socket of a chat page removed the
/// stored page (and waited for memcached to do so before its socket opened), so the page
/// was a miss after every visit. Opening a tunnel changes nothing at the URL: a CONNECT
/// passes through without invalidating.
#[tokio::test]
async fn an_h2_websocket_handshake_does_not_invalidate_its_page() {
    use tower::ServiceExt;
    bounded("extended connect", async {
        let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
        let watch = support::Watch::of(&layer);
        let service = layer.layer(tower::service_fn(|request: http::Request<()>| async move {
            let body = if request.method() == http::Method::CONNECT {
                Bytes::new()
            } else {
                Bytes::from_static(b"the chat page")
            };
            let response = http::Response::builder()
                .header("cache-control", "public, max-age=60")
                .body(Full::new(body))
                .unwrap();
            Ok::<_, Infallible>(response)
        }));
        let url = "http://chat.example/room";
        let page = support::send(&service, http::Method::GET, url, &[]).await;
        assert_eq!(page.body, "the chat page");
        support::stores(&watch, 1).await;
        let again = support::send(&service, http::Method::GET, url, &[]).await;
        support::assert_hit(again.cache_status());

        let mut connect = http::Request::connect(url)
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let tunnel = service.clone().oneshot(connect).await.unwrap();
        assert_eq!(tunnel.status(), 200);
        watch.settled().await;
        let after = support::send(&service, http::Method::GET, url, &[]).await;
        assert_eq!(after.body, "the chat page");
        support::assert_hit(after.cache_status());
    })
    .await;
}

/// `ConcurrencyLimitLayer` inside the cache (`ServiceBuilder::new().layer(cache)
/// .concurrency_limit(n)`), a large page whose body the origin sends slowly, and clients
/// that ask for it meanwhile. Each of them took a slot of the limit when the layer was
/// polled ready, and kept it while it waited for the first request's body, up to
/// `coalesce_timeout` (5 s by default): with `n` such clients (a popular download) every
/// slot was held by a request doing nothing, and every other request, hits included,
/// waited in `poll_ready` until the fill or the timeout ended. A request waiting for
/// another's response lets its slot go and takes one again when it has to go to the origin.
#[tokio::test]
async fn requests_waiting_for_a_slow_fill_do_not_hold_the_inner_services_slots() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    bounded("concurrency limit inside", async {
        let layer = support::layer(MemoryBackend::new())
            .default_lifetime(Duration::from_secs(60))
            .coalesce_timeout(Duration::from_secs(50));
        let watch = support::Watch::of(&layer);
        let body = Arc::new(std::sync::Mutex::new(None));
        let feed = Arc::clone(&body);
        let inner = tower::service_fn(move |request: http::Request<()>| {
            let feed = Arc::clone(&feed);
            async move {
                if request.uri().path() == "/other" {
                    let page = Full::new(Bytes::from_static(b"other")).boxed();
                    return Ok::<_, Infallible>(http::Response::new(page));
                }
                let (send, rest) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
                send.send("the first half, ").unwrap();
                *feed.lock().unwrap() = Some(send);
                let stream = futures_util::stream::unfold(rest, |mut rest| async move {
                    let part = rest.recv().await?;
                    Some((Ok(http_body::Frame::data(Bytes::from(part))), rest))
                });
                let body = http_body_util::StreamBody::new(stream).boxed();
                Ok(http::Response::new(body))
            }
        });
        let service = layer.layer(tower::limit::ConcurrencyLimit::new(inner, 1));
        let get = |path: &str| {
            http::Request::get(format!("http://app.example{path}"))
                .body(())
                .unwrap()
        };
        let other =
            support::send(&service, http::Method::GET, "http://app.example/other", &[]).await;
        assert_eq!(other.body, "other");
        support::stores(&watch, 1).await;

        // The first request for the download: its head is back, its body comes slowly.
        let first = service.clone().oneshot(get("/download")).await.unwrap();
        let mut first = first.into_body();
        let part = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&part[..], b"the first half, ");
        // A second one waits for it.
        let waiter = tokio::spawn(service.clone().oneshot(get("/download")));
        while watch.snapshot().coalesced == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A hit meanwhile is not held behind the waiting request's slot.
        let hit = tokio::time::timeout(Duration::from_secs(10), async {
            support::send(&service, http::Method::GET, "http://app.example/other", &[]).await
        })
        .await
        .expect("a hit waited for the slot of a request that only waits");
        support::assert_hit(hit.cache_status());

        let rest = body.lock().unwrap().take().unwrap();
        rest.send("the second half").unwrap();
        drop(rest);
        let rest = first.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"the second half");
        let waited = waiter.await.unwrap().unwrap();
        let waited = waited.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&waited[..], b"the first half, the second half");
    })
    .await;
}
