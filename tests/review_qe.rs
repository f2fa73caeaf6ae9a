//! Review QE: the layer inside real applications, composed with the rest of a tower /
//! axum / hyper stack as users deploy it: protocol upgrades, streaming responses, and
//! what the inner service relies on.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

/// Bounds every test: none may hang.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 60 s"))
}

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
