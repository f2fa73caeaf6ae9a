//! Review NN: the requests the layer makes or forwards on its own behalf (a range miss's
//! whole-representation GET, revalidations, stale-while-revalidate refreshes, coalesced
//! requests) and what it stores from them. The origin personalises as in reviews I and R:
//! a user is named by `Authorization: Bearer <user>` or `Cookie: user=<user>`.

mod support;

use support::Watch;

use std::time::Duration;

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
            &[("cache-control", b"public, max-age=60"), ("etag", b"\"v1\"")],
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

#[allow(dead_code)]
fn _uses(_: Duration) -> String {
    user_of(&http::HeaderMap::new())
}
