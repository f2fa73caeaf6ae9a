//! Review NN: the requests the layer makes or forwards on its own behalf (a range miss's
//! whole-representation GET, revalidations, stale-while-revalidate refreshes, coalesced
//! requests) and what it stores from them. The origin personalises as in reviews I and R:
//! a user is named by `Authorization: Bearer <user>` or `Cookie: user=<user>`.

use crate::support;

use support::Watch;

use http::{Method, StatusCode};

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

use support::personal::{Origin, Reply, Seen, Svc, assert_no_alice, user_of};

const HOST: &str = "review-nn.test";

fn origin_mode(origin: &Origin) -> (Svc, Watch) {
    support::personal::service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        origin,
        "review-nn",
    )
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    support::personal::send(svc, method, HOST, path, headers).await
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    send(svc, Method::GET, path, headers).await
}

/// The shared page for anonymous requests; an authenticated request gets its user's own
/// page (`private`, another validator, another length), as RFC 9111 §3.5 expects of an
/// origin behind a shared cache.
fn shared_or_own(request: &http::Request<()>, _: usize) -> Reply {
    if request.headers().contains_key("authorization") {
        Reply::ok(
            &[
                ("cache-control", b"private, max-age=60"),
                ("etag", b"\"{user}\""),
            ],
            "the page of {user}, with their account details",
        )
    } else {
        Reply::ok(
            &[
                ("cache-control", b"public, max-age=60"),
                ("etag", b"\"v1\""),
            ],
            "the same page for all",
        )
    }
}

/// SECURITY.md: a refresh refused only because of the refreshing request (its
/// credentials) leaves the stored response, "so a client cannot evict what others use
/// just by asking". A GET revalidation with `Authorization` keeps to that, but a HEAD
/// did not: the origin's HEAD answer for Alice describes her own page (another `ETag`,
/// another length), which §4.3.5 read as "the stored response is not current" and
/// removed it. Any account holder could empty the cache of any shared page, as often as
/// they liked, with `HEAD` and `Cache-Control: no-cache`.
#[tokio::test]
async fn a_head_with_credentials_does_not_evict_the_shared_entry() {
    let origin = Origin::new(shared_or_own);
    let (svc, watch) = origin_mode(&origin);
    for (method, path) in [(Method::HEAD, "/h"), (Method::GET, "/g")] {
        assert_eq!(get(&svc, path, &[]).await.body, "the same page for all");
        watch.settled().await;
        let calls = origin.calls();
        let alice: &[(&str, &[u8])] = &[
            ("authorization", b"Bearer alice"),
            ("cache-control", b"no-cache"),
        ];
        let seen = send(&svc, method.clone(), path, alice).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(origin.calls(), calls + 1, "no-cache goes to the origin");
        watch.settled().await;
        let bob = get(&svc, path, &[]).await;
        assert_eq!(bob.body, "the same page for all");
        assert_no_alice(&bob);
        assert_eq!(
            origin.calls(),
            calls + 1,
            "{method} with credentials evicted the shared entry"
        );
    }
}

/// Held (regression test): a range miss's whole-representation GET is made with the
/// client's fields (its cookie, its language), and what it stores is the variant those
/// fields select, as a GET of the whole from that client would be: Alice's whole page is
/// hers, Bob's lookup misses it and gets his own.
#[tokio::test]
async fn a_range_miss_stores_the_whole_as_the_variant_of_its_client() {
    let origin = Origin::new(|request, _| {
        let body = format!(
            "page of {} in {}",
            user_of(request.headers()),
            request
                .headers()
                .get("accept-language")
                .map_or("en", |v| v.to_str().unwrap_or("?"))
        );
        let mut reply = Reply::ok(
            &[
                ("cache-control", b"public, max-age=60"),
                ("vary", b"Cookie, Accept-Language"),
            ],
            "",
        );
        if request.headers().contains_key("range") {
            reply.status = 206;
            let range = format!("bytes 0-3/{}", body.len()).into_bytes();
            reply.headers.push(("content-range", range));
            reply.body = body[..4].to_string();
        } else {
            reply.body = body;
        }
        reply
    });
    let (svc, watch) = origin_mode(&origin);
    let alice: &[(&str, &[u8])] = &[
        ("cookie", b"user=alice"),
        ("accept-language", b"fr"),
        ("range", b"bytes=0-3"),
    ];
    let part = get(&svc, "/r", alice).await;
    assert_eq!(
        (part.status, part.body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "page")
    );
    watch.settled().await;
    assert_eq!(origin.calls(), 2, "the whole was fetched in the background");
    let whole = get(&svc, "/r", &alice[..2]).await;
    assert_eq!(whole.body, "page of alice in fr");
    assert_eq!(origin.calls(), 2, "and stored for Alice's variant");
    let others: [&[(&str, &[u8])]; 3] = [
        &[("cookie", b"user=bob"), ("accept-language", b"fr")],
        &[("accept-language", b"fr")],
        &[("cookie", b"user=alice"), ("accept-language", b"en")],
    ];
    for bob in others {
        let seen = get(&svc, "/r", bob).await;
        assert!(!seen.body.contains("alice in fr"), "{seen:?}");
    }
    assert_eq!(origin.calls(), 5);
}
