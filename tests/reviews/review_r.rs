//! Review R: what a stored response carries to the next user, field by field (RFC 9111
//! §3.1, §3.2, §3.5, §4.1, §4.3.4, §4.3.5, §5.2.2). The origin personalises as in review I:
//! each user (named by `Authorization: Bearer <user>` or `Cookie: user=<user>`) gets a page
//! and header fields carrying the user's name. User A's marker must never reach user B.

use crate::support;

use support::Watch;

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::CacheMode;

use support::personal::{
    ALICE, BOB, Origin, Reply, Seen, Svc, assert_no_alice, conditional, not_modified,
};

fn service_of<B: Backend>(layer: MemcacheLayer<B>, origin: &Origin) -> (Svc, Watch) {
    support::personal::service_of(layer, origin, "review-r")
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    support::personal::send(svc, method, "review-r.test", path, headers).await
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    send(svc, Method::GET, path, headers).await
}

/// A layer in origin mode (the origin's headers decide, as in the reverse proxy).
fn origin_mode(origin: &Origin) -> (Svc, Watch) {
    service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        origin,
    )
}

// ---------------------------------------------------------------------------------------
// Vary
// ---------------------------------------------------------------------------------------

/// `Vary` lists field names, which are tokens. A member that is no token (`Cookie X-User`
/// with a space where the comma belongs, `Cookie;`, a quoted `"Cookie"`) names no request
/// field the cache can read: every request "had the same value" (none), and Alice's page,
/// which varies by her cookie, was answered to Bob. Such a member now counts as `*`.
#[tokio::test]
async fn a_vary_member_that_is_no_field_name_is_vary_star() {
    for vary in [
        &b"Cookie X-User"[..],
        b"Cookie;",
        b"\"Cookie\"",
        b"Accept-Encoding, Cookie/1",
        b"Cookie:",
    ] {
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[("cache-control", b"public, max-age=60"), ("vary", vary)],
                "page of {user}",
            )
        });
        let (svc, watch) = origin_mode(&origin);
        get(&svc, "/v", ALICE).await;
        watch.settled().await;
        let bob = get(&svc, "/v", BOB).await;
        assert_no_alice(&bob);
        assert_eq!(bob.body, "page of bob", "{}", String::from_utf8_lossy(vary));
    }
}

// ---------------------------------------------------------------------------------------
// Qualified private and no-cache (RFC 9111 §5.2.2.4, §5.2.2.7)
// ---------------------------------------------------------------------------------------

/// The fields a qualified `private` or `no-cache` names are Alice's: stored responses keep
/// the rest, never them, however the list is spelled (spacing, case, unquoted token,
/// several names, the directive repeated or on lines of its own).
#[tokio::test]
async fn qualified_private_and_no_cache_keep_the_named_fields_out_whatever_the_spelling() {
    for cc in [
        &b"public, max-age=60, private=\"Set-Cookie, X-User\""[..],
        b"public, max-age=60, PRIVATE = \" set-cookie ,x-user \"",
        b"public, max-age=60, private=Set-Cookie, private=X-User",
        b"public, max-age=60, no-cache=\"SET-COOKIE\", no-cache=\"X-USER\"",
        b"public, max-age=60, no-cache=set-cookie, private=\"x-user\"",
        b"public, max-age=60, private=\"Set-Cookie\", no-cache=\"X-User\"",
        b"public, max-age=60, private=\"X-User,Set-Cookie,\"",
    ] {
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[
                    ("cache-control", cc),
                    ("set-cookie", b"sid={user}"),
                    ("x-user", b"{user}"),
                ],
                "the same page for all",
            )
        });
        let (svc, watch) = origin_mode(&origin);
        let alice = get(&svc, "/q", ALICE).await;
        assert!(alice.everything().contains("sid=alice"));
        watch.settled().await;
        let bob = get(&svc, "/q", BOB).await;
        assert_eq!(origin.calls(), 1, "stored: {}", String::from_utf8_lossy(cc));
        assert_no_alice(&bob);
    }
    // A line of its own.
    let origin = Origin::new(|_, _| {
        Reply::ok(
            &[
                ("cache-control", b"public, max-age=60"),
                ("cache-control", b"private=\"x-user\""),
                ("x-user", b"{user}"),
            ],
            "the same page for all",
        )
    });
    let (svc, watch) = origin_mode(&origin);
    get(&svc, "/q", ALICE).await;
    watch.settled().await;
    assert_no_alice(&get(&svc, "/q", BOB).await);
}

/// A 304 that leaves out `Cache-Control` keeps the stored one, and with it the stored
/// response's `private="X-User"`: the `X-User` the 304 carries for Alice must not enter
/// the entry, nor reach Bob.
#[tokio::test]
async fn a_304_without_cache_control_keeps_the_stored_private_field_names() {
    let origin = Origin::new(|_, _| {
        Reply::ok(
            &[
                ("cache-control", b"max-age=0, private=\"X-User\""),
                ("etag", b"\"v1\""),
            ],
            "the same page for all",
        )
    });
    let (svc, watch) = origin_mode(&origin);
    get(&svc, "/r", &[]).await;
    watch.settled().await;
    origin.then(|request, _| {
        assert!(conditional(request));
        not_modified(&[
            ("etag", b"\"v1\""),
            ("x-user", b"{user}"),
            ("set-cookie", b"sid={user}"),
            ("authentication-info", b"rspauth=\"{user}\""),
        ])
    });
    let alice = get(&svc, "/r", ALICE).await;
    assert_eq!(alice.body, "the same page for all");
    watch.settled().await;
    let bob = get(&svc, "/r", BOB).await;
    assert_no_alice(&bob);
    assert_eq!(bob.body, "the same page for all");
}

// ---------------------------------------------------------------------------------------
// Refreshes: 304, HEAD, background
// ---------------------------------------------------------------------------------------

/// A 304 is about the stored representation: a 304 that says the body now has another
/// `Content-Encoding`, `Content-Range` or `Content-Length` must not relabel Alice-free
/// stored bytes in a way that serves Bob wrong bytes or a part as the whole.
#[tokio::test]
async fn a_304_never_relabels_the_stored_body() {
    let origin = Origin::new(|_, _| {
        Reply::ok(
            &[("cache-control", b"max-age=0"), ("etag", b"\"v1\"")],
            "0123456789",
        )
    });
    let (svc, watch) = origin_mode(&origin);
    get(&svc, "/e", &[]).await;
    watch.settled().await;
    origin.then(|_, _| {
        not_modified(&[
            ("etag", b"\"v1\""),
            ("cache-control", b"max-age=60"),
            ("content-length", b"3"),
            ("content-range", b"bytes 0-2/10"),
        ])
    });
    get(&svc, "/e", ALICE).await;
    watch.settled().await;
    origin.then(|_, _| Reply::ok(&[("cache-control", b"max-age=60")], "0123456789"));
    let bob = get(&svc, "/e", BOB).await;
    assert_eq!(bob.status, StatusCode::OK);
    assert_eq!(bob.body, "0123456789");
    assert!(!bob.headers.contains_key("content-range"), "{bob:?}");
    if let Some(length) = bob.headers.get("content-length") {
        assert_eq!(length, "10");
    }
}

/// §4.3.5: a HEAD response freshens a stored GET response's fields, never its body, and
/// never with the fields that belong to the HEAD's client.
#[tokio::test]
async fn a_head_refresh_keeps_the_body_and_gives_its_fields_to_its_client_alone() {
    let origin = Origin::new(|_, _| {
        Reply::ok(
            &[("cache-control", b"max-age=0"), ("etag", b"\"v1\"")],
            "the same page for all",
        )
    });
    let (svc, watch) = origin_mode(&origin);
    get(&svc, "/h", &[]).await;
    watch.settled().await;
    origin.then(|request, _| {
        assert_eq!(request.method(), Method::HEAD);
        Reply {
            status: 200,
            headers: vec![
                ("cache-control", b"max-age=60".to_vec()),
                ("etag", b"\"v1\"".to_vec()),
                ("set-cookie", b"sid={user}".to_vec()),
                ("set-cookie2", b"sid2={user}".to_vec()),
                ("clear-site-data", b"\"cookies\"".to_vec()),
                ("authentication-info", b"nextnonce=\"{user}\"".to_vec()),
                (
                    "proxy-authentication-info",
                    b"nextnonce=\"{user}\"".to_vec(),
                ),
            ],
            body: String::new(),
        }
    });
    let alice = send(&svc, Method::HEAD, "/h", ALICE).await;
    assert!(alice.everything().contains("sid=alice"));
    watch.settled().await;
    let calls = origin.calls();
    let bob = get(&svc, "/h", BOB).await;
    assert_eq!(origin.calls(), calls, "the HEAD freshened the entry");
    assert_no_alice(&bob);
    assert!(!bob.headers.contains_key("clear-site-data"), "{bob:?}");
    assert_eq!(bob.body, "the same page for all");
}

/// RFC 5861: a stale entry is refreshed in the background with the request that found it
/// stale. Alice's credentials go to the origin with it; the origin's answer for Alice
/// (no `public`) must not become everyone's entry, and neither may a 304's fields for her.
#[tokio::test]
async fn a_background_refresh_with_alices_credentials_stores_nothing_of_hers() {
    for refresh_status in [200u16, 304] {
        let origin = Origin::new(|_, _| {
            Reply::ok(
                &[
                    ("cache-control", b"max-age=1, stale-while-revalidate=60"),
                    ("etag", b"\"v1\""),
                ],
                "page of {user}",
            )
        });
        let (svc, watch) = origin_mode(&origin);
        assert_eq!(get(&svc, "/s", &[]).await.body, "page of anonymous");
        watch.settled().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        origin.then(move |_, _| {
            let headers: &[(&'static str, &[u8])] = &[
                ("cache-control", b"max-age=60"),
                ("etag", b"\"v1\""),
                ("x-user", b"{user}"),
                ("set-cookie", b"sid={user}"),
            ];
            if refresh_status == 304 {
                not_modified(headers)
            } else {
                Reply::ok(headers, "page of {user}")
            }
        });
        let calls = origin.calls();
        let alice = get(&svc, "/s", &[("authorization", b"Bearer alice")]).await;
        assert_eq!(alice.body, "page of anonymous", "served stale");
        watch.settled().await;
        assert_eq!(origin.calls(), calls + 1, "refreshed in the background");
        let bob = get(&svc, "/s", &[]).await;
        assert_no_alice(&bob);
    }
}

/// A qualified `private` or `no-cache` whose list is not a list of field names (`X-User
/// X-Token` with a space where the comma belongs, `X-User;`) named nothing the cache
/// matched: every field it meant to keep out was stored and replayed to everyone. Such a
/// directive now reads as its unqualified form, as one naming no field already did.
#[tokio::test]
async fn a_qualified_directive_naming_no_field_name_reads_unqualified() {
    for cc in [
        &b"public, max-age=60, private=\"X-Token X-User\""[..],
        b"public, max-age=60, private=\"X-User;\"",
        b"public, max-age=60, private=X-User;",
        b"public, max-age=60, private=\"X-Token, X-User/1\"",
        b"public, max-age=60, no-cache=\"X-Token X-User\"",
    ] {
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[("cache-control", cc), ("x-user", b"{user}")],
                "the same page for all",
            )
        });
        let (svc, watch) = origin_mode(&origin);
        get(&svc, "/n", ALICE).await;
        watch.settled().await;
        let bob = get(&svc, "/n", BOB).await;
        assert_no_alice(&bob);
    }
}

/// The same in a targeted field (RFC 9213), which rules instead of `Cache-Control`: its
/// `private="X-Token X-User"` named nothing and `X-User` was everyone's; `private=""`
/// named nothing either and left the page shareable, where `Cache-Control`'s reads it as
/// `private`.
#[tokio::test]
async fn a_targeted_private_naming_no_field_name_reads_unqualified() {
    for targeted in [
        &b"max-age=60, private=\"X-Token X-User\""[..],
        b"max-age=60, private=\"X-User;\"",
        b"max-age=60, private=\"\"",
        b"max-age=60, private=\" , \"",
    ] {
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[("cdn-cache-control", targeted), ("x-user", b"{user}")],
                "page of {user}",
            )
        });
        let (svc, watch) = service_of(
            MemcacheLayer::new(MemoryBackend::new())
                .mode(CacheMode::Origin)
                .targeted_cache_control([HeaderName::from_static("cdn-cache-control")]),
            &origin,
        );
        get(&svc, "/t", ALICE).await;
        watch.settled().await;
        let bob = get(&svc, "/t", BOB).await;
        assert_no_alice(&bob);
    }
}

// ---------------------------------------------------------------------------------------
// Authorization (RFC 9111 §3.5)
// ---------------------------------------------------------------------------------------

/// A request with `Authorization`, in any spelling and even empty, keeps a response
/// without `public`, `s-maxage` or `must-revalidate` out of the cache, in both modes.
#[tokio::test]
async fn authorization_in_any_form_keeps_an_unshareable_answer_out() {
    for mode in [CacheMode::Routes, CacheMode::Origin] {
        for (name, value) in [
            ("authorization", &b"Bearer alice"[..]),
            ("Authorization", b"bearer alice"),
            ("AUTHORIZATION", b""),
            ("authorization", b"   "),
        ] {
            let origin = Origin::new(|request, _| {
                let user = if request.headers().contains_key("authorization") {
                    "alice"
                } else {
                    "anonymous"
                };
                Reply::ok(
                    &[("cache-control", b"max-age=60")],
                    &format!("page of {user}"),
                )
            });
            let (svc, watch) =
                service_of(MemcacheLayer::new(MemoryBackend::new()).mode(mode), &origin);
            get(&svc, "/a", &[(name, value)]).await;
            watch.settled().await;
            let bob = get(&svc, "/a", &[]).await;
            assert_no_alice(&bob);
        }
    }
}

/// `Vary` in the shapes origins send: empty members, the field on several lines, names in
/// any case, `*` beside names. Each selects by Alice's cookie or stores nothing.
#[tokio::test]
async fn vary_in_every_list_shape_selects_by_the_cookie() {
    let shapes: [&[&[u8]]; 5] = [
        &[b", Cookie,"],
        &[b"Accept", b"COOKIE"],
        &[b"", b"cookie"],
        &[b"Cookie, *"],
        &[b"Accept-Encoding ,\tCookie"],
    ];
    for lines in shapes {
        let origin = Origin::new(move |_, _| {
            let mut headers: Vec<(&'static str, &[u8])> =
                vec![("cache-control", b"public, max-age=60")];
            headers.extend(lines.iter().map(|line| ("vary", *line)));
            Reply::ok(&headers, "page of {user}")
        });
        let (svc, watch) = origin_mode(&origin);
        get(&svc, "/vs", ALICE).await;
        watch.settled().await;
        let bob = get(&svc, "/vs", BOB).await;
        assert_no_alice(&bob);
        assert_eq!(bob.body, "page of bob");
    }
}

/// A malformed `no-cache="…"` list on a response with a validator reads as `no-cache`:
/// stored, but never reused without asking the origin, whose answer for Bob is Bob's.
#[tokio::test]
async fn a_malformed_no_cache_list_revalidates_every_reuse() {
    let origin = Origin::new(|request, _| {
        let headers: &[(&'static str, &[u8])] = &[
            (
                "cache-control",
                b"public, max-age=60, no-cache=\"X-Token X-User\"",
            ),
            ("etag", b"\"v1\""),
            ("x-user", b"{user}"),
        ];
        if conditional(request) {
            not_modified(headers)
        } else {
            Reply::ok(headers, "the same page for all")
        }
    });
    let (svc, watch) = origin_mode(&origin);
    get(&svc, "/nc", ALICE).await;
    watch.settled().await;
    let bob = get(&svc, "/nc", BOB).await;
    assert_eq!(origin.calls(), 2, "revalidated");
    assert_no_alice(&bob);
    assert_eq!(bob.headers.get("x-user").unwrap(), "bob");
    assert_eq!(bob.body, "the same page for all");
}

// ---------------------------------------------------------------------------------------
// Credentials in stored selecting values
// ---------------------------------------------------------------------------------------

/// A response that varies on `Cookie` or `Authorization` is selected by the request's
/// value of it: the entry kept that value, so every user's session cookie or bearer token
/// sat in memcached (unauthenticated, shared with every client of it) in the clear, for
/// as long as the page did. Only a digest is stored; selection is unchanged.
#[tokio::test]
async fn credentials_a_response_varies_on_are_not_stored_in_the_clear() {
    for (field, secret) in [
        ("cookie", &b"user=alice; session=s3cr3t-alice-session"[..]),
        ("authorization", b"Bearer alice-t0ken-s3cr3t"),
        ("proxy-authorization", b"Basic YWxpY2U6czNjcjN0"),
    ] {
        let backend = MemoryBackend::new();
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[
                    ("cache-control", b"public, max-age=60"),
                    ("vary", field.as_bytes()),
                ],
                // Not the user's name: a bearer token is the name `user_of` reads.
                "a personal page",
            )
        });
        let (svc, watch) = service_of(
            MemcacheLayer::new(backend.clone()).mode(CacheMode::Origin),
            &origin,
        );
        let alice: &[(&str, &[u8])] = &[(field, secret)];
        let first = get(&svc, "/secret", alice).await;
        watch.settled().await;
        let again = get(&svc, "/secret", alice).await;
        assert_eq!(first.body, again.body);
        assert!(
            again
                .headers
                .get("cache-status")
                .is_some_and(|v| v.to_str().unwrap().contains("hit")),
            "{field}: the same credentials select the stored page: {:?}",
            again.headers
        );
        let bob = get(&svc, "/secret", &[(field, b"user=bob; session=other")]).await;
        assert!(
            bob.headers
                .get("cache-status")
                .is_some_and(|v| !v.to_str().unwrap().contains("hit")),
            "{field}: other credentials select another variant: {:?}",
            bob.headers
        );
        let needle = String::from_utf8_lossy(secret).into_owned();
        for (key, item) in backend.entries() {
            let value = String::from_utf8_lossy(&item.value);
            assert!(
                !value.contains(&needle) && !value.contains("s3cr3t"),
                "{field}: stored in the clear under {key}"
            );
        }
    }
}

/// Every field a response varies on is normalised from the request on each lookup of its
/// entry: an origin that varies on hundreds set the cost of every hit. More than an entry
/// is selected by (64) is not stored; as many is.
#[tokio::test]
async fn a_response_varying_on_more_fields_than_an_entry_holds_is_not_stored() {
    for (names, stored) in [(64, true), (65, false), (2000, false)] {
        let vary: Vec<u8> = (0..names)
            .map(|n| format!("X-F{n}"))
            .collect::<Vec<_>>()
            .join(", ")
            .into_bytes();
        let vary: &'static [u8] = Box::leak(vary.into_boxed_slice());
        let origin = Origin::new(move |_, _| {
            Reply::ok(
                &[("cache-control", b"public, max-age=60"), ("vary", vary)],
                "page",
            )
        });
        let (svc, watch) = origin_mode(&origin);
        get(&svc, "/many", &[]).await;
        watch.settled().await;
        let again = get(&svc, "/many", &[]).await;
        let status = again
            .headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert_eq!(status.contains("hit"), stored, "{names} names: {status}");
    }
}
