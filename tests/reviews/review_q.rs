//! Review Q: request target and cache key confusion, in the layer and in the proxy. Each
//! test names an attack and fails if it works: two requests an origin treats differently
//! sharing a key, or a request reaching the origin with another target than its key's.

use crate::support;

use support::proxy::{raw_request, start_proxy};
use support::{Watch, assert_not_hit};

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::Service;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::memory::MemoryBackend;
use tower_memcache::cache::{CacheMode, ResponseBody};

// ---------------------------------------------------------------------------------------
// The layer.

/// The application behind the layer: every answer is `public, max-age=60` and says what
/// target it was asked for (as an application routing on `uri().path()` sees it) and how
/// it was reached (`X-Scheme`, which a real server takes from its listener: the layer's
/// own `default_scheme` here).
fn app(
    layer: &MemcacheLayer<MemoryBackend>,
    listener: &'static str,
) -> impl Service<Request<()>, Response = Response<ResponseBody<Full<Bytes>>>, Error = Infallible>
+ Clone
+ use<> {
    tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| async move {
            let body = format!("{listener} path={:?}", request.uri().path());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert("cache-control", "public, max-age=60".parse().unwrap());
            Ok::<_, Infallible>(response)
        })
}

fn layer(backend: &MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend.clone())
        .namespace("review-q")
        .mode(CacheMode::Origin)
}

/// RFC 9112 §3.2.3: the authority form is CONNECT's alone. `GET h:80` was keyed as
/// `GET http://h/` while the application saw an empty path: whatever it answers for
/// that (a 404, a fallback page) was stored as the home page.
#[tokio::test]
async fn an_authority_form_get_is_stored_as_the_home_page() {
    let backend = MemoryBackend::new();
    let layer = layer(&backend);
    let watch = Watch::of(&layer);
    let svc = app(&layer, "http");
    let attack = support::send(&svc, Method::GET, "h:80", &[("host", "h")]).await;
    assert!(attack.cache_status().contains("fwd=bypass"), "{attack:?}");
    watch.settled().await;
    let home = support::send(&svc, Method::GET, "/", &[("host", "h")]).await;
    assert_not_hit(home.cache_status());
    assert_eq!(home.body, "http path=\"/\"");
}

/// RFC 9112 §3.2.4: the asterisk form is only for a server-wide OPTIONS. A `GET *` is
/// no request for a resource: never stored nor answered from the cache.
#[tokio::test]
async fn a_get_in_asterisk_form_is_cached() {
    let backend = MemoryBackend::new();
    let layer = layer(&backend);
    let watch = Watch::of(&layer);
    let svc = app(&layer, "http");
    for _ in 0..2 {
        let star = support::send(&svc, Method::GET, "*", &[("host", "h")]).await;
        assert!(star.cache_status().contains("fwd=bypass"), "{star:?}");
        watch.settled().await;
    }
    assert_eq!(watch.snapshot().stores, 0);
}

/// A plain-HTTP listener and a TLS one sharing a namespace (`default_scheme("https")` on
/// the TLS one). An absolute `https://` target sent in clear (or h2c's `:scheme: https`)
/// was keyed as the TLS listener's page while the plain listener answered it (say, its
/// redirect to https): served to every TLS client. And the other way round.
#[tokio::test]
async fn a_target_claiming_the_other_listeners_scheme_poisons_its_pages() {
    let backend = MemoryBackend::new();
    let plain_layer = layer(&backend);
    let tls_layer = layer(&backend).default_scheme("https");
    let watch = Watch::of(&plain_layer);
    let plain = app(&plain_layer, "plain");
    let tls = app(&tls_layer, "tls");
    support::send(&plain, Method::GET, "https://h/x", &[("host", "h")]).await;
    support::send(&tls, Method::GET, "http://h/y", &[("host", "h")]).await;
    watch.settled().await;
    Watch::of(&tls_layer).settled().await;
    let x = support::send(&tls, Method::GET, "/x", &[("host", "h")]).await;
    assert_eq!(x.body, "tls path=\"/x\"", "{}", x.cache_status());
    let y = support::send(&plain, Method::GET, "/y", &[("host", "h")]).await;
    assert_eq!(y.body, "plain path=\"/y\"", "{}", y.cache_status());
    // A target naming the listener's own scheme is keyed as its origin form.
    support::send(&tls, Method::GET, "https://h/z", &[("host", "h")]).await;
    Watch::of(&tls_layer).settled().await;
    let z = support::send(&tls, Method::GET, "/z", &[("host", "h")]).await;
    support::assert_hit(z.cache_status());
}

// ---------------------------------------------------------------------------------------
// The proxy.

/// An origin on a thread that answers every request `public, max-age=60` with the
/// request line it received, byte for byte, as its body.
fn echo_origin() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let line = text.lines().next().unwrap_or("").to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\n\
                         Content-Length: {}\r\n\r\n{line}",
                        line.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `GET *` and `GET host:port` are refused (400) by the proxy, as targets only OPTIONS
/// and CONNECT may use; `GET *` was stored and replayed, and `GET host:port` went to the
/// origin as `GET /`. A server-wide `OPTIONS *` still reaches the origin as it was sent.
#[test]
fn a_get_in_asterisk_or_authority_form_reaches_the_cache() {
    let proxy = start_proxy(echo_origin(), &[]);
    let host = proxy.addr;
    for head in [
        format!("GET * HTTP/1.1\r\nHost: {host}\r\n"),
        format!("HEAD * HTTP/1.1\r\nHost: {host}\r\n"),
        format!("GET {host} HTTP/1.1\r\nHost: {host}\r\n"),
    ] {
        for _ in 0..2 {
            let (status, response) = raw_request(proxy.addr, &head);
            assert_eq!(status, 400, "{head:?}: {response}");
        }
    }
    let (status, response) = raw_request(
        proxy.addr,
        &format!("OPTIONS * HTTP/1.1\r\nHost: {host}\r\n"),
    );
    assert_eq!(status, 200, "{response}");
    assert!(
        response.ends_with("\r\n\r\nOPTIONS * HTTP/1.1"),
        "{response}"
    );
}

/// Two nested routers (`/v1`, `/v2`) that share a cache layer: axum's `nest` hands the
/// inner router the path without its prefix, and the key was made from that, so `/v1/x`
/// and `/v2/x` (two pages) shared the key of `/x`.
#[cfg(feature = "axum")]
#[tokio::test]
async fn nested_routers_share_the_key_of_their_stripped_path() {
    use axum::Router;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let cache = layer(&MemoryBackend::new());
    let watch = Watch::of(&cache);
    let page =
        |text: &'static str| async move { ([("cache-control", "public, max-age=60")], text) };
    let app = Router::new()
        .nest(
            "/v1",
            Router::new()
                .route("/x", get(move || page("v1")))
                .route_layer(cache.clone()),
        )
        .nest(
            "/v2",
            Router::new()
                .route("/x", get(move || page("v2")).post(|| async { "posted" }))
                .route_layer(cache.clone()),
        );
    // The body, and whether the cache answered.
    let call = |path: &'static str, method: Method| {
        let app = app.clone();
        async move {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "h")
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let hit = support::as_seen(response.headers()["cache-status"].to_str().unwrap())
                == support::HIT;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (String::from_utf8_lossy(&body).into_owned(), hit)
        }
    };
    assert_eq!(call("/v1/x", Method::GET).await, ("v1".into(), false));
    watch.settled().await;
    assert_eq!(
        call("/v2/x", Method::GET).await,
        ("v2".into(), false),
        "/v2/x was answered with /v1/x"
    );
    watch.settled().await;
    assert_eq!(call("/v2/x", Method::GET).await, ("v2".into(), true));
    // A POST to the nested page invalidates its whole target.
    call("/v2/x", Method::POST).await;
    assert_eq!(call("/v2/x", Method::GET).await, ("v2".into(), false));
    assert_eq!(call("/v1/x", Method::GET).await, ("v1".into(), true));
}

/// h2c with `:scheme: https` (held): the proxy listens in clear, so the request is
/// refused before the cache or the origin sees it (`:path *`: `tests/review_n.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_request_claiming_https_is_refused() {
    let proxy = start_proxy(echo_origin(), &[]);
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    for target in [
        format!("https://{}/x", proxy.addr),
        format!("http://{}/x", proxy.addr),
    ] {
        let request = Request::get(&target).body(()).unwrap();
        let mut ready = sender.clone().ready().await.unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        let status = response.await.unwrap().status();
        let expected = if target.starts_with("https") {
            400
        } else {
            200
        };
        assert_eq!(status, expected, "{target}");
    }
}

/// A `no_cache` rule for `/account` on a layer of the router nested at `/account`: the
/// rule was matched against the path axum handed the nested router (`/me`), not the
/// URL's (`/account/me`, as the key and a `Pattern` rule's `MatchedPath` have it), and a
/// per-user page was stored for everyone. A rule for `/me` must hold all the same.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_no_cache_rule_misses_the_pages_of_a_nested_router() {
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    let cache = support::layer(MemoryBackend::new())
        .namespace("review-q-rules")
        .no_cache(tower_memcache::RouteMatch::Prefix("/account".into()));
    let watch = Watch::of(&cache);
    let app = Router::new().nest(
        "/account",
        Router::new()
            .route("/me", get(|| async { "my account" }))
            .route_layer(cache),
    );
    let request = Request::get("/account/me")
        .header("host", "h")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_string();
    watch.settled().await;
    assert!(status.contains("fwd=bypass"), "{status}");
    assert_eq!(watch.snapshot().stores, 0);
    // A rule written for the path the nested router sees holds as well.
    let cache = support::layer(MemoryBackend::new())
        .namespace("review-q-rules")
        .no_cache(tower_memcache::RouteMatch::Exact("/me".into()));
    let app = Router::new().nest(
        "/account",
        Router::new()
            .route("/me", get(|| async { "my account" }))
            .route_layer(cache),
    );
    let request = Request::get("/account/me")
        .header("host", "h")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.headers()["cache-status"].to_str().unwrap();
    assert!(status.contains("fwd=bypass"), "{status}");
}

/// A reverse proxy tunnels nothing: `CONNECT` went on to the origin (hyper's client sends
/// `CONNECT <upstream>`), and an origin that is itself a forward proxy (or answers 200 to
/// anything) would have opened a tunnel through it. The proxy answers 501 itself.
#[test]
fn connect_is_not_forwarded() {
    let proxy = start_proxy(echo_origin(), &[]);
    let host = proxy.addr;
    for head in [
        format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"),
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n".to_string(),
    ] {
        let (status, response) = raw_request(proxy.addr, &head);
        assert_eq!(status, 501, "{head:?}: {response}");
        assert!(!response.contains("CONNECT"), "{response}");
    }
}
