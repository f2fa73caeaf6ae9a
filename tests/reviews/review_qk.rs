//! Review QK: the layer in library mode behind hyper's HTTP/1 and HTTP/2 servers (not the
//! proxy binary), where the request a handler sees is not an HTTP/1.1 one: `:authority`
//! without `Host`, cookie crumbs, field values HTTP/1 parsers would have trimmed, HEAD and
//! 304 over h2, HTTP/1.0 clients.
//!
//! Each test fails if the defect it names returns. None needs memcached: the layer runs
//! on the in-memory backend, behind a real hyper server on loopback.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

use support::bounded;

/// Serves `service` on loopback with hyper's auto server (HTTP/1 and h2c prior knowledge).
async fn serve<S, RB>(service: S) -> SocketAddr
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<RB>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper_util::service::TowerToHyperService::new(service);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(io, service)
                .await;
            });
        }
    });
    addr
}

type H2 = h2::client::SendRequest<Bytes>;

async fn h2_client(addr: SocketAddr) -> H2 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// An h2 request; Ok((status, headers, body)) or the stream's error.
async fn h2_send(
    sender: &H2,
    request: http::Request<()>,
) -> Result<(u16, http::HeaderMap, Bytes), h2::Error> {
    let mut sender = sender.clone().ready().await?;
    let (response, _) = sender.send_request(request, true)?;
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((parts.status.as_u16(), parts.headers, Bytes::from(bytes)))
}

/// Writes raw HTTP/1 bytes, reads until the peer closes or `within` passes.
async fn h1_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves `app` behind the layer on loopback; the layer's background work is `watch`ed.
async fn serve_app(app: axum::Router) -> (SocketAddr, support::Watch) {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    (serve(layer.layer(app)).await, watch)
}

/// A page in two languages, chosen as many handlers choose: by comparing the field's
/// value with the one they serve (`headers.get(..) == "fr"`).
fn by_language() -> axum::Router {
    use axum::routing::get;
    axum::Router::new().route(
        "/greeting",
        get(|headers: http::HeaderMap| async move {
            let french = headers
                .get(http::header::ACCEPT_LANGUAGE)
                .is_some_and(|value| value == "fr");
            http::Response::builder()
                .header("cache-control", "public, max-age=60")
                .header("vary", "accept-language")
                .body(axum::body::Body::from(if french {
                    "bonjour"
                } else {
                    "hello"
                }))
                .unwrap()
        }),
    )
}

/// An HTTP/1 server (hyper's `httparse`) trims the white space around a field value, so
/// a handler never sees `fr ` from an HTTP/1 client; HTTP/2 carries the value as sent
/// (RFC 9113 §8.2.1 calls it malformed, and neither `h2` nor hyper refuses it). The
/// layer trimmed the ends before selecting a variant: an h2 client's `Accept-Language:
/// fr ` (the handler, comparing, answered English) stored that answer as the variant of
/// `fr`, and every French client got the English page. A value is now selected as the
/// handler sees it, byte for byte.
#[tokio::test]
async fn an_h2_value_with_white_space_at_its_ends_does_not_poison_the_trimmed_variant() {
    bounded("white space at the ends", async {
        let (addr, watch) = serve_app(by_language()).await;
        let h2 = h2_client(addr).await;
        let ask = |language: &'static str| {
            http::Request::get("http://site.example/greeting")
                .header("accept-language", language)
                .body(())
                .unwrap()
        };
        for spelled in ["fr ", "\tfr", " fr\t"] {
            let (status, _, body) = h2_send(&h2, ask(spelled)).await.unwrap();
            assert_eq!((status, &body[..]), (200, &b"hello"[..]), "{spelled:?}");
        }
        support::stores(&watch, 1).await;
        // The French page, over h2 and over HTTP/1.1.
        let (_, headers, body) = h2_send(&h2, ask("fr")).await.unwrap();
        assert_eq!(&body[..], b"bonjour", "{headers:?}");
        watch.settled().await;
        let raw = h1_raw(
            addr,
            b"GET /greeting HTTP/1.1\r\nHost: site.example\r\nAccept-Language: fr\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(raw.ends_with("\r\n\r\nbonjour"), "{raw}");
        assert!(raw.contains("cache-status: tower-memcache; hit"), "{raw}");
        // And the spelled-out one still gets what the handler answers it.
        let (_, _, body) = h2_send(&h2, ask("fr ")).await.unwrap();
        assert_eq!(&body[..], b"hello");
    })
    .await;
}
