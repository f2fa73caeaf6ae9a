//! Review QW: an adversarial second look at the newest changes (review QV's 304 fields,
//! the proxy's loop check and the `If-Range` 60 s rule; live streams by
//! `multipart/x-mixed-replace`; the split of `service.rs`; QR's receipt `Date`).
//!
//! Each test fails if the defect it names returns.

use crate::support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, StatusCode};
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

use support::scripted_service::Origin;
use support::{Watch, assert_hit, bounded, send};

/// Attack (a live stream the layer took for a page): an event stream whose `Content-Type`
/// is a list, `text/plain, text/event-stream` (a handler that joins the types it set, or
/// reflects a client's `?type=` beside its default). Browsers read a `Content-Type` list
/// by its last valid member (Fetch, "extract a MIME type"), so `EventSource` takes it for
/// the stream it is; the layer read the line's first member only, admitted it like a
/// page, and every client that came while it ran waited `coalesce_timeout` for its end,
/// then, once it ended, was replayed its old events as new. Any member of the list that
/// names a live stream makes the response one.
#[tokio::test]
async fn a_live_stream_named_in_a_content_type_list_is_never_waited_for_nor_stored() {
    for content_type in [
        "text/plain, text/event-stream",
        "text/html,multipart/x-mixed-replace;boundary=frame",
    ] {
        support::live_stream::each_client_gets_its_own(content_type).await;
    }
}

/// Defect (review QU's 304 path, the 304's own list): the stored page names no field
/// personal; the origin's 304 to Bob's revalidation starts to, with its own
/// `private="x-user"` (or `no-cache="x-user"`), and carries Bob's `X-User`. The refresh
/// rightly stored none of it, but Bob's 200 got only the fields the *stored* response's
/// lists named, so the field the origin sent him, for him alone, never reached him. The
/// fields the 304's own lists keep out of the cache go to its client too, and still to
/// nobody else.
#[tokio::test]
async fn the_revalidating_client_gets_the_fields_its_own_304_keeps_out_of_the_cache() {
    for directive in ["private=\"x-user\"", "no-cache=\"x-user\""] {
        let origin = Origin::new(move |request| {
            let mut lines = vec![("etag", "\"v1\"".to_string())];
            if request.headers().contains_key("if-none-match") {
                lines.push(("cache-control", format!("max-age=60, {directive}")));
                let user = request
                    .headers()
                    .get("x-user")
                    .map_or("", |v| v.to_str().unwrap());
                lines.push(("x-user", user.to_string()));
                return (304, lines, "");
            }
            lines.push(("cache-control", "max-age=0".to_string()));
            (200, lines, "shared page")
        });
        let cache = support::layer(MemoryBackend::new())
            .namespace("review-qw")
            .mode(CacheMode::Origin);
        let svc = cache.layer(origin.clone());
        let watch = Watch::of(&cache);
        let url = "http://site.test/home";
        send(&svc, Method::GET, url, &[("x-user", "alice")]).await;
        watch.settled().await;
        // Stale at once: Bob's request revalidates it.
        let bob = bounded(
            "revalidation",
            send(&svc, Method::GET, url, &[("x-user", "bob")]),
        )
        .await;
        assert_eq!(origin.calls(), 2, "{directive}: Bob's request revalidated");
        assert_eq!(bob.status, StatusCode::OK);
        assert_eq!(bob.body, "shared page");
        assert_eq!(
            bob.header("x-user"),
            Some("bob"),
            "{directive}: his own 304's field: {bob:?}"
        );
        watch.settled().await;
        let carol = send(&svc, Method::GET, url, &[("x-user", "carol")]).await;
        assert_hit(carol.cache_status());
        assert_eq!(carol.header("x-user"), None, "{directive}: {carol:?}");
    }
}

/// Defect (review QV's loop check, its reading of `Via`): a member is a protocol and a
/// pseudonym with any run of spaces or tabs between them (RFC 9110 §7.6.3, `RWS`), but
/// the check took the second of the fields split at each white-space byte, which for
/// `1.1  tower-memcache-<token>` (two spaces, as a hop that re-spaces the field sends it
/// back) was the empty one: the request was not known for this process's own, and a
/// loop through such a hop ran as before review QV (each hop waiting for the next until
/// the client gave up). Another proxy's member still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_via_member_spelled_with_a_run_of_white_space_is_still_known_as_this_proxys() {
    use http::{Request, Response};
    use http_body_util::Full;
    use hyper::body::Incoming;
    // The origin echoes the `Via` it got, so the test learns the proxy's member.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        let via: Vec<&str> = request
            .headers()
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        let response = Response::builder()
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(via.join(", "))))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let proxy = support::proxy::start_proxy(origin, &["--access-log", "off"]);
    let head = "GET /via HTTP/1.1\r\nHost: a.example\r\n";
    let (status, body) = bounded("echo", support::proxy::raw(&proxy, head)).await;
    assert_eq!(status, 200, "{body}");
    let member = body.trim().to_string();
    let token = member
        .strip_prefix("1.1 ")
        .filter(|token| token.starts_with("tower-memcache-"))
        .unwrap_or_else(|| panic!("the proxy's Via member: {member:?}"));

    let other = format!("{head}Via: 1.1 tower-memcache-0000000000000000\r\n");
    let (status, body) = bounded("another proxy", support::proxy::raw(&proxy, &other)).await;
    assert_eq!(status, 200, "another proxy's member passes: {body}");
    for via in [
        format!("1.1  {token}"),
        format!("1.0 fred, 1.1 \t {token} (a comment)"),
        format!("1.1 {token}  (a comment)"),
    ] {
        let looped = format!("{head}Via: {via}\r\n");
        let (status, body) = bounded("looped", support::proxy::raw(&proxy, &looped)).await;
        assert_eq!(status, 508, "Via: {via:?} got {status}: {body}");
    }
}
