//! Review I: one user's data served to another, through every path a response takes into
//! or out of the cache. The origin here personalises: it answers each user (named by
//! `Authorization: Bearer <user>` or `Cookie: user=<user>`) with a page and header fields
//! that carry the user's name, and marks them as a careful origin would. User A's marker
//! must never reach user B.

use crate::support;

use support::Watch;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::CacheMode;

use support::personal::{
    ALICE, BOB, Origin, Reply, Seen, Svc, assert_no_alice, conditional, not_modified, user_of,
};

fn service_of<B: Backend>(layer: MemcacheLayer<B>, origin: &Origin) -> (Svc, Watch) {
    support::personal::service_of(layer, origin, "review-i")
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    support::personal::send(svc, method, "review-i.test", path, headers).await
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    send(svc, Method::GET, path, headers).await
}

// ---------------------------------------------------------------------------------------
// Directives the cache could not read as text
// ---------------------------------------------------------------------------------------

/// RFC 9110 §5.6.4 allows obs-text (bytes 0x80-0xFF) in a quoted string, and origins send
/// it (a city, a name in an extension directive). `Cache-Control` lines that were not
/// visible ASCII were skipped whole, with the `private` beside it (a `max-age` on another
/// line, as frameworks add them, still counted): Alice's page was stored and answered to
/// Bob, in both modes, on a first store and on a background (stale-while-revalidate)
/// refresh made with Alice's request.
#[tokio::test]
async fn a_private_beside_obs_text_keeps_the_page_out_of_the_cache() {
    for mode in [CacheMode::Routes, CacheMode::Origin] {
        let origin = Origin::new(|_, _| {
            Reply::ok(
                &[
                    ("cache-control", b"max-age=60"),
                    ("cache-control", b"private, community=\"Z\xfcrich\""),
                ],
                "page of {user}",
            )
        });
        let (svc, watch) = service_of(MemcacheLayer::new(MemoryBackend::new()).mode(mode), &origin);
        let alice = get(&svc, "/p", ALICE).await;
        assert!(alice.body.contains("alice"));
        watch.settled().await;
        let bob = get(&svc, "/p", BOB).await;
        assert_no_alice(&bob);
        assert_eq!(bob.body, "page of bob", "{mode:?}");
    }
}

#[tokio::test]
async fn a_background_refresh_answered_private_beside_obs_text_stores_nothing() {
    // The URL is a shared page at first, refreshed in the background once stale.
    let origin = Origin::new(|_, _| {
        Reply::ok(
            &[("cache-control", b"max-age=1, stale-while-revalidate=600")],
            "shared page",
        )
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    get(&svc, "/swr", &[]).await;
    watch.settled().await;
    // Then the origin personalises it, and says so.
    origin.then(|_, _| {
        Reply::ok(
            &[
                ("cache-control", b"max-age=60"),
                ("cache-control", b"private, realm=\"M\xfcnchen\""),
            ],
            "page of {user}",
        )
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let alice = get(&svc, "/swr", ALICE).await;
    assert_eq!(alice.body, "shared page", "served stale, refreshed behind");
    watch.settled().await;
    assert_eq!(origin.calls(), 2, "Alice's request refreshed the entry");
    let bob = get(&svc, "/swr", BOB).await;
    assert_no_alice(&bob);
}

/// `Vary` names request fields, which are tokens: a line that is not visible ASCII was
/// skipped, `Vary: Cookie` with it, and Alice's page answered to everyone. It now counts
/// as `Vary: *` (never stored).
#[tokio::test]
async fn a_vary_line_that_is_not_text_is_vary_star() {
    let origin = Origin::new(|_, _| {
        Reply::ok(
            &[
                ("cache-control", b"max-age=60"),
                ("vary", b"Cookie, X-\xfc"),
            ],
            "page of {user}",
        )
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    get(&svc, "/v", ALICE).await;
    watch.settled().await;
    let bob = get(&svc, "/v", BOB).await;
    assert_no_alice(&bob);
    assert_eq!(bob.body, "page of bob");
}

// ---------------------------------------------------------------------------------------
// Fields that belong to one exchange
// ---------------------------------------------------------------------------------------

/// RFC 2965's `Set-Cookie2` is obsolete, but Java's `CookieManager` still honours it: it
/// was stored and replayed like any field, on a first store and when a 304 or a HEAD
/// refreshed an entry. Now it is `Set-Cookie`'s twin: a response setting it is not stored
/// (unless `store_set_cookie`), and the cookie never enters an entry.
#[tokio::test]
async fn set_cookie2_never_reaches_another_user() {
    // A first store: not stored at all by default, stored without the cookie when the
    // application allows responses that set cookies.
    for store_set_cookie in [false, true] {
        let origin = Origin::new(|_, _| {
            Reply::ok(
                &[
                    ("cache-control", b"max-age=60"),
                    ("set-cookie2", b"session={user}; Version=1"),
                ],
                "public page",
            )
        });
        let layer = MemcacheLayer::new(MemoryBackend::new())
            .mode(CacheMode::Origin)
            .store_set_cookie(store_set_cookie);
        let (svc, watch) = service_of(layer, &origin);
        let alice = get(&svc, "/c", ALICE).await;
        assert_eq!(
            alice.headers["set-cookie2"], "session=alice; Version=1",
            "Alice gets her cookie"
        );
        watch.settled().await;
        let bob = get(&svc, "/c", BOB).await;
        assert_no_alice(&bob);
        if !store_set_cookie {
            assert_eq!(
                origin.calls(),
                2,
                "a response setting a cookie is not stored"
            );
        }
    }

    // Refreshes: a 304 to Alice's revalidation, then a HEAD, each setting her cookie.
    let origin = Origin::new(|request, _| {
        if conditional(request) {
            not_modified(&[
                ("etag", b"\"v1\""),
                ("cache-control", b"max-age=0"),
                ("set-cookie2", b"session={user}; Version=1"),
            ])
        } else {
            let mut reply = Reply::ok(
                &[("etag", b"\"v1\""), ("cache-control", b"max-age=0")],
                "public page",
            );
            if request.method() == Method::HEAD {
                reply
                    .headers
                    .push(("set-cookie2", b"session={user}; Version=1".to_vec()));
            }
            reply
        }
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    get(&svc, "/r", &[]).await;
    watch.settled().await;
    let alice = get(&svc, "/r", ALICE).await;
    assert_eq!(alice.body, "public page");
    assert_eq!(
        alice.headers["set-cookie2"], "session=alice; Version=1",
        "the 304's cookie goes to the client whose request brought it"
    );
    watch.settled().await;
    let bob = get(&svc, "/r", BOB).await;
    assert_no_alice(&bob);
    // A HEAD refreshes the stored GET response (RFC 9111 §4.3.5).
    send(&svc, Method::HEAD, "/r", ALICE).await;
    watch.settled().await;
    let bob = get(&svc, "/r", BOB).await;
    assert_no_alice(&bob);
}

/// `Authentication-Info` (RFC 9110 §11.6.3) answers the credentials of one request: with
/// Digest its `rspauth` is a hash of the user's password (an offline dictionary attack
/// away) and `nextnonce` is the user's. A response to Alice's authenticated request that
/// says `public` is shared, as RFC 9111 §3.5 allows, but this field was shared with it:
/// to an anonymous follower that waited for Alice's request, to Bob's hit, to Bob's range
/// request, and after a 304 refreshed the entry.
#[tokio::test]
async fn authentication_info_never_reaches_another_user() {
    let origin = Origin::new(|request, _| {
        let info: &[u8] = b"rspauth=\"digest-of-{user}\", nextnonce=\"nonce-of-{user}\"";
        if conditional(request) {
            not_modified(&[
                ("etag", b"\"v1\""),
                ("cache-control", b"public, max-age=0"),
                ("authentication-info", info),
            ])
        } else {
            Reply::ok(
                &[
                    ("etag", b"\"v1\""),
                    ("cache-control", b"public, max-age=60"),
                    ("authentication-info", info),
                ],
                "0123456789 public page",
            )
        }
    });
    origin.delay_ms.store(200, Ordering::SeqCst);
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    // Alice's request fills the URL; an anonymous request waits for it.
    let leader = {
        let svc = svc.clone();
        tokio::spawn(async move { get(&svc, "/ai", &[("authorization", b"Bearer alice")]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let follower = get(&svc, "/ai", &[]).await;
    let alice = leader.await.unwrap();
    assert!(alice.everything().contains("digest-of-alice"), "hers");
    assert_eq!(
        origin.calls(),
        1,
        "the anonymous request waited for Alice's"
    );
    assert_no_alice(&follower);
    watch.settled().await;
    origin.delay_ms.store(0, Ordering::SeqCst);
    assert_no_alice(&get(&svc, "/ai", BOB).await);
    let range = get(&svc, "/ai", &[("range", b"bytes=0-3")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_no_alice(&range);
}

/// `Clear-Site-Data` (W3C Clear Site Data) tells the browser of the request it answers to
/// drop that user's cookies and storage: on a logout page, say, which an origin marks
/// `public` because the page itself is the same for all. Stored with the entry, every
/// later visitor of the URL was logged out. It goes to the client whose request brought
/// it (from a fill or from a 304), never into the entry.
#[tokio::test]
async fn clear_site_data_reaches_only_the_client_it_was_sent_to() {
    let origin = Origin::new(|request, _| {
        let clear: &[u8] = b"\"cookies\", \"storage\"";
        if conditional(request) {
            not_modified(&[
                ("etag", b"\"v1\""),
                ("cache-control", b"public, max-age=0"),
                ("clear-site-data", clear),
            ])
        } else {
            Reply::ok(
                &[
                    ("etag", b"\"v1\""),
                    ("cache-control", b"public, max-age=0"),
                    ("clear-site-data", clear),
                ],
                "you are logged out",
            )
        }
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    let alice = get(&svc, "/logout", ALICE).await;
    assert!(alice.headers.contains_key("clear-site-data"), "hers");
    watch.settled().await;
    // Stale at once: Bob's request revalidates, and the 304 carries the field again.
    let bob = get(&svc, "/logout", BOB).await;
    assert!(
        bob.headers.contains_key("clear-site-data"),
        "from his own 304"
    );
    assert_eq!(origin.calls(), 2);
    watch.settled().await;
    // Now fresh for a minute: Carol's revalidation stores it, Dave's request is a hit.
    origin.then(|_, _| {
        Reply::ok(
            &[
                ("etag", b"\"v2\""),
                ("cache-control", b"public, max-age=60"),
                ("clear-site-data", b"\"cookies\""),
            ],
            "you are logged out",
        )
    });
    let carol = get(&svc, "/logout", &[("cookie", b"user=carol")]).await;
    assert!(
        carol.headers.contains_key("clear-site-data"),
        "from the origin"
    );
    watch.settled().await;
    let dave = get(&svc, "/logout", &[("cookie", b"user=dave")]).await;
    assert!(
        dave.headers
            .get("cache-status")
            .is_some_and(|status| status.to_str().unwrap().contains("hit")),
        "{dave:?}"
    );
    assert!(
        !dave.headers.contains_key("clear-site-data"),
        "another client's Clear-Site-Data replayed from the cache: {dave:?}"
    );
}

/// The refresh path of the same field: an entry first stored for Carol's authenticated
/// request (`public`), refreshed by a 304 to Alice's, which carries Alice's
/// `Authentication-Info`. The merged entry kept it, and Bob's hit got it.
#[tokio::test]
async fn authentication_info_from_a_304_goes_to_its_client_alone() {
    let origin = Origin::new(|request, _| {
        if conditional(request) {
            let mut reply = not_modified(&[
                ("etag", b"\"v1\""),
                ("cache-control", b"public, max-age=60"),
            ]);
            if request.headers().contains_key("authorization") {
                reply.headers.push((
                    "authentication-info",
                    b"rspauth=\"digest-of-{user}\"".to_vec(),
                ));
            }
            reply
        } else {
            Reply::ok(
                &[("etag", b"\"v1\""), ("cache-control", b"public, max-age=0")],
                "public page",
            )
        }
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    get(&svc, "/r", &[("authorization", b"Bearer carol")]).await;
    watch.settled().await;
    let alice = get(&svc, "/r", &[("authorization", b"Bearer alice")]).await;
    assert_eq!(alice.body, "public page");
    assert_eq!(origin.calls(), 2, "revalidated");
    assert_eq!(
        alice.headers["authentication-info"], "rspauth=\"digest-of-alice\"",
        "the 304's answer to her credentials goes to her"
    );
    watch.settled().await;
    let bob = get(&svc, "/r", BOB).await;
    assert_eq!(origin.calls(), 2, "the refreshed entry answers Bob");
    assert_no_alice(&bob);
}

// ---------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------

/// The proxy in front of a real origin that writes `Cache-Control` with obs-text (a
/// Latin-1 name in an extension directive, as HTTP/1.1 allows), and, on other URLs,
/// `Set-Cookie2` and `Authentication-Info` on a `public` page. Bob must get none of
/// Alice's.
#[tokio::test]
async fn through_the_proxy_alices_page_and_fields_stay_hers() {
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let origin = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let user = user_of(request.headers());
                        // The authenticated page is the same for everyone (`public`).
                        let body = match request.uri().path() {
                            "/auth" => "public page".to_string(),
                            _ => format!("page of {user}"),
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        let headers = response.headers_mut();
                        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
                        let extra: (&str, Vec<u8>) = match request.uri().path() {
                            "/private" => {
                                ("cache-control", b"private, owner=\"J\xfcrgen\"".to_vec())
                            }
                            "/cookie2" => (
                                "set-cookie2",
                                format!("session={user}; Version=1").into_bytes(),
                            ),
                            _ => (
                                "authentication-info",
                                format!("rspauth=\"digest-of-{user}\"").into_bytes(),
                            ),
                        };
                        headers.append(
                            HeaderName::from_static(extra.0),
                            HeaderValue::from_bytes(&extra.1).unwrap(),
                        );
                        if request.uri().path() == "/auth" {
                            headers.insert(
                                "cache-control",
                                HeaderValue::from_static("public, max-age=60"),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let proxy = support::proxy::start_proxy(upstream, &[]);
    let proxy = &proxy;
    let fetch = |head: String| async move { support::proxy::raw_text(proxy, &head).await };
    for (path, alice) in [
        ("/private", "Cookie: user=alice\r\n"),
        ("/cookie2", "Cookie: user=alice\r\n"),
        ("/auth", "Authorization: Bearer alice\r\n"),
    ] {
        let head = |who: &str| format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n{who}");
        let answer = fetch(head(alice)).await;
        assert!(answer.contains("alice"), "{answer}");
        // Stores run in the background: give them time, then ask as Bob, twice.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..2 {
            let answer = fetch(head("Cookie: user=bob\r\n")).await;
            assert!(
                !answer.contains("alice"),
                "{path}: Alice's marker reached Bob:\n{answer}"
            );
            if path == "/auth" {
                // Shared, as `public` allows (RFC 9111 §3.5): Bob's answer is the entry.
                assert!(
                    answer.contains("cache-status: tower-memcache; hit"),
                    "{answer}"
                );
            }
        }
    }
    origin.abort();
}
