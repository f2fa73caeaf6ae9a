//! Review TJ: unkeyed inputs, request fields that change what an origin answers but are
//! in no cache key and named by no `Vary` (web cache poisoning, after Kettle): fat GETs,
//! parameter cloaking, Host spellings, `Accept-Encoding` when the origin forgets `Vary`,
//! cookies, credentials, CORS, forwarding fields, `Max-Forwards`, `TE`, `Upgrade`.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tower_memcache::backend::MemoryBackend;

/// An origin that compresses by the client's `Accept-Encoding` and forgets `Vary` (the
/// default of nginx's `gzip_vary off`, of many hand-written handlers): answers `br` to a
/// client that accepts it, identity to one that accepts nothing but identity. Stored
/// without a variant, the brotli bytes were served, labelled `Content-Encoding: br`, to a
/// client whose `Accept-Encoding: identity` refused every coding (and to every browser on
/// `http://`, which accepts no `br`): one attacker's `Accept-Encoding: br` broke the page
/// for everyone for its lifetime (cache-poisoned denial of service). A coded response is
/// now selected by `Accept-Encoding` as if its `Vary` named it.
#[tokio::test]
async fn a_coded_answer_without_vary_is_not_served_to_a_client_that_refused_the_coding() {
    use tower::Layer;

    let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let accepts_br = request
            .headers()
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("br"));
        let mut response = Response::builder().header("cache-control", "public, max-age=60");
        let body: &'static [u8] = if accepts_br {
            response = response.header("content-encoding", "br");
            b"\x1b\x07\x00brotli"
        } else {
            b"the page"
        };
        Ok::<_, std::convert::Infallible>(
            response
                .body(http_body_util::Full::new(Bytes::from_static(body)))
                .unwrap(),
        )
    }));
    let url = "http://shop.example/page";
    let poison = support::send(&service, Method::GET, url, &[("accept-encoding", "br")]).await;
    assert_eq!(poison.header("content-encoding"), Some("br"));
    support::stores(&watch, 1).await;
    // The attacker's own repeat is a hit: the coded answer is stored, as its variant.
    let again = support::send(&service, Method::GET, url, &[("accept-encoding", "br")]).await;
    support::assert_hit(again.cache_status());
    for refusing in ["identity", "gzip, deflate"] {
        let victim =
            support::send(&service, Method::GET, url, &[("accept-encoding", refusing)]).await;
        assert_eq!(
            victim.header("content-encoding"),
            None,
            "Accept-Encoding: {refusing} was answered {:?} ({})",
            victim.header("content-encoding"),
            victim.cache_status()
        );
        assert_eq!(victim.body, "the page");
    }
}

/// An origin that reflects the request's `Origin` into `Access-Control-Allow-Origin` and
/// forgets `Vary: Origin` (a common hand-written CORS handler). Stored without a variant,
/// one attacker's request with `Origin: https://evil.example` was the page for everyone:
/// the application's own cross-origin calls got `evil.example` back and the browser
/// refused them (cache-poisoned denial of service). A response that allows one origin
/// (anything but `*`) is now selected by `Origin` as if its `Vary` named it.
#[tokio::test]
async fn an_allowed_origin_without_vary_is_not_served_to_another_origin() {
    use tower::Layer;

    let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let mut response = Response::builder().header("cache-control", "public, max-age=60");
        if let Some(origin) = request.headers().get("origin") {
            response = response
                .header("access-control-allow-origin", origin)
                .header("access-control-allow-credentials", "true");
        }
        Ok::<_, std::convert::Infallible>(
            response
                .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
    }));
    let url = "http://api.example/me";
    let evil = [("origin", "https://evil.example")];
    let poison = support::send(&service, Method::GET, url, &evil).await;
    assert_eq!(
        poison.header("access-control-allow-origin"),
        Some("https://evil.example")
    );
    support::stores(&watch, 1).await;
    // The attacker's own repeat is a hit: the answer is stored, as its variant.
    let again = support::send(&service, Method::GET, url, &evil).await;
    support::assert_hit(again.cache_status());
    let app = support::send(
        &service,
        Method::GET,
        url,
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(
        app.header("access-control-allow-origin"),
        Some("https://app.example"),
        "{}",
        app.cache_status()
    );
    let none = support::send(&service, Method::GET, url, &[]).await;
    assert_eq!(
        none.header("access-control-allow-origin"),
        None,
        "{}",
        none.cache_status()
    );
}

/// A fat GET over HTTP/2 (RFC 9110 §9.3.1: a GET's body has no meaning, but some origins
/// read it as parameters): HTTP/2 frames a body by its DATA frames, so a client may send
/// one with neither `Content-Length` nor `Transfer-Encoding`, and the layer, which
/// bypasses a GET with a body by those fields, cannot see it (SECURITY.md says so). The
/// proxy's promise is that such a body never reaches the origin (its HTTP/1.1 client
/// sends a GET without one), so the answer it stores is the URL's. Held here: were the
/// body ever relayed (chunked), one client's body would choose the page stored for all.
#[cfg(feature = "proxy")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fat_get_over_http2_without_a_length_never_reaches_the_origin() {
    use http_body_util::BodyExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let origin = support::origin::serve_http1(
        listener,
        |request: Request<hyper::body::Incoming>| async move {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            let page = if body.is_empty() {
                "the page".to_string()
            } else {
                format!("page for {}", String::from_utf8_lossy(&body))
            };
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("cache-control", "public, max-age=60")
                    .body(http_body_util::Full::new(Bytes::from(page)))
                    .unwrap(),
            )
        },
    );
    let proxy = support::proxy::start_proxy(origin_addr, &[]);

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut sender = sender.ready().await.unwrap();
    let request = Request::get(format!("http://{}/fat", proxy.addr))
        .body(())
        .unwrap();
    let (response, mut upload) = sender.send_request(request, false).unwrap();
    upload
        .send_data(Bytes::from_static(b"<script>evil()</script>"), true)
        .unwrap();
    let response = response.await.unwrap();
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        seen.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "the page",
        "the GET's body reached the origin"
    );

    // Give a store the time it would take; then a plain GET from anyone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, victim) = support::proxy::raw(
        &proxy,
        &format!("GET /fat HTTP/1.1\r\nHost: {}\r\n", proxy.addr),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        victim, "the page",
        "a fat GET's answer was stored for everyone"
    );
    origin.abort();
}
