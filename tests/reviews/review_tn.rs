//! Review TN: the cache key against the request target as origins route it. A shared
//! cache's first promise is that what it answers belongs to the request that asked: the
//! key must hold every part of the target that can change the origin's answer (authority,
//! path, query), and two requests it merges must be asked of the origin alike.
//!
//! The check is differential: an origin that answers each request with what it was asked
//! (the target, `Host`, the forwarding fields), and for each spelling of a request, its
//! answer through the cache is compared with the origin's answer to that same spelling.
#![cfg(feature = "proxy")]

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use support::proxy::{Proxy, raw_text, start_proxy};

/// The fields an origin routes or builds pages by, as it received them.
const ROUTED_BY: [&str; 4] = ["host", "x-forwarded-host", "forwarded", "x-forwarded-proto"];

/// What an origin was asked: method, target and the fields it routes by.
fn asked(method: &str, target: &str, headers: &http::HeaderMap) -> String {
    let mut text = format!("{method} {target}");
    for name in ROUTED_BY {
        for value in headers.get_all(name) {
            text.push_str(&format!(
                "|{name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
    }
    text
}

/// An origin answering each request with what it was asked, fresh for a minute.
async fn echo_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    support::origin::serve_http1(listener, move |request: Request<Incoming>| async move {
        let body = asked(
            request.method().as_str(),
            &request.uri().to_string(),
            request.headers(),
        );
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
    });
    addr
}

/// The status, `Cache-Status` and body of a raw HTTP/1 exchange.
async fn exchange(proxy: &Proxy, head: &str) -> (u16, String, String) {
    let text = raw_text(proxy, head).await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let cache_status = support::raw_http::header_of(head, "cache-status").unwrap_or_default();
    (status, cache_status, body.to_string())
}

/// Each request head is sent after the others: when the cache answers it with a stored
/// page, that page must be what the origin answers that very request (asked again with
/// `Cache-Control: no-cache`, so it goes to the origin).
async fn assert_each_hit_is_its_own(proxy: &Proxy, heads: &[&str]) -> usize {
    let (mut wrong, mut hits) = (Vec::new(), 0);
    for head in heads {
        let (status, cache_status, body) = exchange(proxy, head).await;
        if status != 200 || !cache_status.contains("hit") {
            continue;
        }
        hits += 1;
        let own = format!("{head}Cache-Control: no-cache\r\n");
        let (status, _, origin) = exchange(proxy, &own).await;
        if status == 200 && origin != body {
            wrong.push(format!(
                "{head:?}\n  answered: {body}\n  its own:  {origin}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    hits
}

/// Spellings of one authority and target over HTTP/1: those the key merges must be asked
/// of the origin alike.
#[tokio::test]
async fn the_proxy_asks_the_origin_alike_for_what_it_keys_alike() {
    let origin = echo_origin().await;
    let proxy = start_proxy(origin, &[]);
    let heads = [
        "GET /p HTTP/1.1\r\nHost: a.example\r\n",
        "GET /p HTTP/1.1\r\nHost: A.Example\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example.\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example:80\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example:\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example:0080\r\n",
        "GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\n",
        "GET http://A.EXAMPLE:80/p HTTP/1.1\r\nHost: a.example\r\n",
        "GET HTTP://a.example/p HTTP/1.1\r\nHost: a.example\r\n",
        "GET http://a.example/p HTTP/1.1\r\nHost: a.example.:80\r\n",
        "GET http://a.example/p HTTP/1.0\r\n",
        "GET /p HTTP/1.0\r\nHost: a.example\r\n",
        "GET /p#x HTTP/1.1\r\nHost: a.example\r\n",
        "GET /p HTTP/1.1\r\nHost: [::1]:8080\r\n",
        "GET /p HTTP/1.1\r\nHost: [0:0::1]:8080\r\n",
        "GET /p HTTP/1.0\r\n",
        "GET /p HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        "GET /p HTTP/1.1\r\nHost: 127.0.0.1.\r\n",
        "GET http://a.example?q HTTP/1.1\r\nHost: a.example\r\n",
        "GET /?q HTTP/1.1\r\nHost: a.example\r\n",
        "GET /p? HTTP/1.1\r\nHost: a.example\r\n",
        "GET /p?# HTTP/1.1\r\nHost: a.example\r\n",
    ];
    let hits = assert_each_hit_is_its_own(&proxy, &heads).await;
    // Most spellings are one key: the check compared something.
    assert!(hits >= 15, "{hits} hits");
}

/// The status, `Cache-Status` and body of an HTTP/2 exchange for `uri` (its authority is
/// `:authority`), with a `Host` field when given.
async fn h2_exchange(
    client: &support::h2_client::Client,
    uri: &str,
    host: Option<&str>,
    no_cache: bool,
) -> (u16, String, String) {
    let mut request = Request::get(uri).body(()).unwrap();
    if let Some(host) = host {
        request.headers_mut().insert("host", host.parse().unwrap());
    }
    if no_cache {
        request
            .headers_mut()
            .insert("cache-control", "no-cache".parse().unwrap());
    }
    let (response, _) = support::h2_client::send(client, request, true).await;
    let Ok(response) = response.await else {
        return (0, String::new(), String::new());
    };
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (
        status,
        cache_status,
        String::from_utf8_lossy(&text).into_owned(),
    )
}

/// HTTP/2's `:authority`, alone or beside a `Host` field that spells it otherwise: what
/// the key merges is asked of the origin alike, over HTTP/2 as over HTTP/1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_proxy_asks_the_origin_alike_for_what_it_keys_alike() {
    let origin = echo_origin().await;
    let proxy = start_proxy(origin, &[]);
    let (client, _driver) = support::h2_client::connect(proxy.addr, 65_535).await;
    let requests: [(&str, Option<&str>); 9] = [
        ("http://a.example/p", None),
        ("http://A.Example/p", None),
        ("http://a.example./p", None),
        ("http://a.example:80/p", None),
        ("http://a.example/p", Some("A.EXAMPLE:80")),
        ("http://a.example.:80/p", Some("a.example")),
        ("http://a.example/p?", None),
        ("http://a.example/p?#x", None),
        ("http://a.example?", Some("a.example")),
    ];
    let (mut wrong, mut hits) = (Vec::new(), 0);
    for (uri, host) in requests {
        let (status, cache_status, body) = h2_exchange(&client, uri, host, false).await;
        if status != 200 || !cache_status.contains("hit") {
            continue;
        }
        hits += 1;
        let (status, _, own) = h2_exchange(&client, uri, host, true).await;
        if status == 200 && own != body {
            wrong.push(format!(
                "{uri} {host:?}\n  answered: {body}\n  its own:  {own}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Most spellings are one key: the check compared something.
    assert!(hits >= 6, "{hits} hits");
}

#[cfg(feature = "axum")]
mod rewritten_to_a_suffix {
    //! A route middleware outside the cache (added with `Router::layer`, so it runs after
    //! the `Router` noted `OriginalUri`) that rewrites the target. README: "a request whose
    //! target it changed (other than `nest`'s stripped prefix) bypasses the cache". A
    //! rewrite to `/`, or to a path the client's ends with, read as `nest`'s stripping.

    use axum::Router;
    use axum::extract::Request;
    use axum::middleware::{self, Next};
    use axum::response::Response;
    use http::Uri;
    use tower_memcache::backend::MemoryBackend;

    use super::support;

    /// A soft login wall: a guest (no cookie) is shown the home page at any path, the
    /// target rewritten to `/` (its query kept), with no redirect.
    async fn guests_see_home(mut request: Request, next: Next) -> Response {
        if !request.headers().contains_key(http::header::COOKIE) {
            let query = request.uri().query().map(|q| format!("?{q}"));
            let target = format!("/{}", query.unwrap_or_default());
            *request.uri_mut() = target.parse().unwrap();
        }
        next.run(request).await
    }

    /// A locale prefix a member's cookie chooses: `/fr/news` is served as `/news` to a
    /// member whose cookie says `lang=en`.
    async fn strip_locale_for_english(mut request: Request, next: Next) -> Response {
        let english = request
            .headers()
            .get(http::header::COOKIE)
            .is_some_and(|v| v.as_bytes() == b"lang=en");
        if english {
            if let Some(rest) = request.uri().path().strip_prefix("/fr") {
                let target: Uri = rest.parse().unwrap();
                *request.uri_mut() = target;
            }
        }
        next.run(request).await
    }

    /// A content handler that serves whatever path it is asked (a CMS, a file server).
    fn app(cache: tower_memcache::MemcacheLayer<MemoryBackend>) -> Router {
        Router::new()
            .fallback(|uri: Uri| async move { format!("page {}", uri.path()) })
            .layer(cache)
            .layer(middleware::from_fn(guests_see_home))
            .layer(middleware::from_fn(strip_locale_for_english))
    }

    /// A member reads `/members`; a guest asking the same URL is shown the home page by
    /// the wall, but the layer took `/` for `nest`'s stripping of `/members` and answered
    /// the members' page from the cache.
    #[tokio::test]
    async fn a_target_rewritten_to_the_root_is_not_answered_from_the_clients_target() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = app(layer);
        let member =
            support::send_axum(&app, "http://club.example/members", &[("cookie", "id=1")]).await;
        assert_eq!(member.body, "page /members");
        watch.settled().await;
        let guest = support::send_axum(&app, "http://club.example/members", &[]).await;
        assert_eq!(
            guest.body,
            "page /",
            "a guest was answered the members' page ({})",
            guest.cache_status()
        );
    }

    /// A path rewritten to a suffix of the client's (`/fr/news` to `/news`) is no nest's
    /// stripping either: the English page was stored as `/fr/news` for everyone.
    #[tokio::test]
    async fn a_target_rewritten_to_a_suffix_is_not_stored_under_the_clients_target() {
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let app = app(layer);
        let english = support::send_axum(
            &app,
            "http://club.example/fr/news",
            &[("cookie", "lang=en")],
        )
        .await;
        assert_eq!(english.body, "page /news");
        watch.settled().await;
        let french = support::send_axum(
            &app,
            "http://club.example/fr/news",
            &[("cookie", "lang=fr")],
        )
        .await;
        assert_eq!(french.body, "page /fr/news", "{}", french.cache_status());
    }

    /// What `nest` itself strips is still no rewrite: pages of nested routers (a literal
    /// prefix, one with a parameter, a router nested in a nested one, `nest_service`, the
    /// nest's own root with and without its `/`) are stored and answered from the cache,
    /// each under its own whole target.
    #[tokio::test]
    async fn pages_of_nested_routers_are_still_cached() {
        use axum::routing::get;
        let layer = support::layer(MemoryBackend::new());
        let watch = support::Watch::of(&layer);
        let page = || get(|uri: Uri| async move { format!("page {}", uri.path()) });
        let inner = || {
            Router::new()
                .route("/", page())
                .route("/x", page())
                .layer(layer.clone())
        };
        let app = Router::new()
            .nest("/v1", inner())
            .nest("/{tenant}/api", inner())
            .nest("/outer", Router::new().nest("/inner", inner()))
            .nest_service("/files", inner());
        for (url, seen) in [
            ("/v1/x", "/x"),
            ("/v1", "/"),
            ("/acme/api/x", "/x"),
            ("/other/api/x", "/x"),
            ("/outer/inner/x", "/x"),
            ("/files/x?y=1", "/x"),
            ("/files/", "/"),
        ] {
            let url = format!("http://club.example{url}");
            let first = support::send_axum(&app, &url, &[]).await;
            assert_eq!(first.body, format!("page {seen}"), "{url}");
            watch.settled().await;
            let again = support::send_axum(&app, &url, &[]).await;
            assert_eq!(again.body, format!("page {seen}"), "{url}");
            assert_eq!(again.cache_status(), support::HIT, "{url}");
        }
    }
}
