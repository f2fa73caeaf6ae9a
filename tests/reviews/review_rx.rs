//! Review RX: an origin that reflects request data into its responses, and per-user
//! fields. A shared cache must never store or replay what one client's request made of a
//! response (its credentials' answer, fields named per user) to another client, on any
//! path that writes an entry (first store, 304 refresh), through the layer and the proxy.

use crate::support;

use support::Watch;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::CacheMode;

use support::personal::{
    BOB, Origin, Reply, Seen, Svc, assert_no_alice, conditional, not_modified, user_of,
};

fn service_of<B: Backend>(layer: MemcacheLayer<B>, origin: &Origin) -> (Svc, Watch) {
    support::personal::service_of(layer, origin, "review-rx")
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &[u8])]) -> Seen {
    support::personal::send(svc, Method::GET, "review-rx.test", path, headers).await
}

const ALICE_AUTH: &[(&str, &[u8])] = &[("authorization", b"Bearer alice")];
const BOB_AUTH: &[(&str, &[u8])] = &[("authorization", b"Bearer bob")];

/// The final leg of `Negotiate` (RFC 4559 §5, SPNEGO: Kerberos, as IIS and Apache's
/// `mod_auth_gssapi` answer it): the success response to a request with credentials
/// carries `WWW-Authenticate: Negotiate <gssapi-data>`, the server's mutual-authentication
/// token for that one user's security context. It answers one request's credentials, as
/// `Authentication-Info` does for newer schemes, yet a `public` page (RFC 9111 §3.5 lets
/// it be shared) was stored with it: Bob's hit got Alice's token, and a Bob who
/// authenticates with Kerberos himself had his client check Alice's token against his own
/// context (a failed mutual authentication). It now goes to the client whose request
/// brought it, never into an entry; on a stored challenge to an anonymous request (a
/// `401` the operator lists in `statuses`) it is the page's own field and stays.
#[tokio::test]
async fn a_negotiate_token_answering_one_users_credentials_never_reaches_another() {
    let origin = Origin::new(|request, _| {
        let mut fields: Vec<(&'static str, &[u8])> = vec![
            ("etag", b"\"v1\""),
            ("cache-control", b"public, max-age=60"),
        ];
        if request.headers().contains_key("authorization") {
            fields.push(("www-authenticate", b"Negotiate oYG-token-of-{user}"));
        }
        Reply::ok(&fields, "0123456789 intranet page")
    });
    for mode in [CacheMode::Origin, CacheMode::Routes] {
        let (svc, watch) = service_of(MemcacheLayer::new(MemoryBackend::new()).mode(mode), &origin);
        let path = format!("/negotiate-{mode:?}");
        let alice = get(&svc, &path, ALICE_AUTH).await;
        assert_eq!(
            alice.headers["www-authenticate"], "Negotiate oYG-token-of-alice",
            "{mode:?}: her token goes to her"
        );
        watch.settled().await;
        let calls = origin.calls();
        for bob in [BOB, BOB_AUTH] {
            let seen = get(&svc, &path, bob).await;
            assert_eq!(
                origin.calls(),
                calls,
                "{mode:?}: the shared page answers Bob"
            );
            assert_eq!(seen.body, "0123456789 intranet page");
            assert_no_alice(&seen);
        }
        let range = get(&svc, &path, &[("range", b"bytes=0-3")]).await;
        assert_no_alice(&range);
    }
}

/// The same token on a 304: an entry first stored for Carol's authenticated request
/// (`public`), revalidated for Alice's, whose 304 carries her `Negotiate` token. The
/// merged entry kept it, and Bob's hit got it. Alice still gets hers.
#[tokio::test]
async fn a_negotiate_token_on_a_304_goes_to_its_client_alone() {
    let origin = Origin::new(|request, _| {
        if conditional(request) {
            let mut reply = not_modified(&[
                ("etag", b"\"v1\""),
                ("cache-control", b"public, max-age=60"),
            ]);
            if request.headers().contains_key("authorization") {
                reply.headers.push((
                    "www-authenticate",
                    b"Negotiate oYG-token-of-{user}".to_vec(),
                ));
            }
            reply
        } else {
            Reply::ok(
                &[
                    ("etag", b"\"v1\""),
                    ("cache-control", b"public, max-age=0"),
                    ("www-authenticate", b"Negotiate oYG-token-of-{user}"),
                ],
                "intranet page",
            )
        }
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin),
        &origin,
    );
    get(&svc, "/r", &[("authorization", b"Bearer carol")]).await;
    watch.settled().await;
    let alice = get(&svc, "/r", ALICE_AUTH).await;
    assert_eq!(alice.body, "intranet page");
    assert_eq!(origin.calls(), 2, "revalidated");
    let tokens: Vec<_> = alice.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(
        tokens,
        ["Negotiate oYG-token-of-alice"],
        "the 304's answer to her credentials goes to her, and no one else's"
    );
    watch.settled().await;
    for bob in [BOB, BOB_AUTH] {
        let seen = get(&svc, "/r", bob).await;
        assert_eq!(origin.calls(), 2, "the refreshed entry answers Bob");
        assert_no_alice(&seen);
        assert!(
            !seen.everything().contains("carol"),
            "{}",
            seen.everything()
        );
    }
}

/// A challenge is the page's own field where no credentials were answered: a `401` the
/// operator stores (`statuses`), and a `public` page that says credentials could change
/// it (RFC 9110 §11.6.1), both to anonymous requests, keep their `WWW-Authenticate`.
#[tokio::test]
async fn a_challenge_to_an_anonymous_request_is_stored_with_its_page() {
    let origin = Origin::new(|request, _| {
        let status = if request.uri().path() == "/login" {
            401
        } else {
            200
        };
        Reply {
            status,
            headers: vec![
                ("cache-control", b"public, max-age=60".to_vec()),
                ("www-authenticate", b"Negotiate".to_vec()),
            ],
            body: "challenge".into(),
        }
    });
    let (svc, watch) = service_of(
        MemcacheLayer::new(MemoryBackend::new())
            .mode(CacheMode::Origin)
            .statuses([200, 401]),
        &origin,
    );
    for path in ["/login", "/page"] {
        get(&svc, path, &[]).await;
        watch.settled().await;
        let calls = origin.calls();
        let again = get(&svc, path, &[]).await;
        assert_eq!(origin.calls(), calls, "{path}: stored");
        assert_eq!(again.headers["www-authenticate"], "Negotiate", "{path}");
    }
}

/// Through the proxy, in front of an origin that answers Kerberos as IIS does: Bob never
/// gets Alice's token with the shared page.
#[tokio::test]
async fn through_the_proxy_a_negotiate_token_stays_with_its_user() {
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
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(b"intranet page")));
                        let headers = response.headers_mut();
                        headers.insert(
                            "cache-control",
                            HeaderValue::from_static("public, max-age=60"),
                        );
                        if request.headers().contains_key("authorization") {
                            let token =
                                format!("Negotiate oYG-token-of-{}", user_of(request.headers()));
                            headers.insert("www-authenticate", token.parse().unwrap());
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
    let head = |who: &str| format!("GET /intranet HTTP/1.1\r\nHost: corp.test\r\n{who}");
    let alice = support::proxy::raw_text(&proxy, &head("Authorization: Bearer alice\r\n")).await;
    assert!(alice.contains("oYG-token-of-alice"), "{alice}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for bob in ["", "Authorization: Bearer bob\r\n"] {
        support::proxy::until_cached(&proxy, &head(bob)).await;
        let answer = support::proxy::raw_text(&proxy, &head(bob)).await;
        assert!(answer.contains("intranet page"), "{answer}");
        assert!(answer.contains("; hit"), "a hit:\n{answer}");
        assert!(
            !answer.contains("alice"),
            "Alice's token reached Bob:\n{answer}"
        );
    }
    origin.abort();
}

/// An entry stored for an authenticated request that holds its `WWW-Authenticate` (by a
/// build before the rule, or another tool: made here by respelling a field of the same
/// length in the bytes this build stored) is a miss, refilled over, never served to Bob.
#[tokio::test]
async fn an_entry_holding_one_users_token_is_not_served() {
    use tower_memcache::backend::Lifetime;

    let origin = Origin::new(|request, _| {
        let mut fields: Vec<(&'static str, &[u8])> = vec![("cache-control", b"public, max-age=60")];
        if request.headers().contains_key("authorization") {
            fields.push(("xxx-authenticate", b"Negotiate oYG-token-of-{user}"));
        }
        Reply::ok(&fields, "intranet page")
    });
    let memory = MemoryBackend::new();
    let (svc, watch) = service_of(
        MemcacheLayer::new(memory.clone()).mode(CacheMode::Origin),
        &origin,
    );
    get(&svc, "/old", ALICE_AUTH).await;
    watch.settled().await;
    let mut respelled = 0;
    for (key, item) in memory.entries() {
        let value = item.value.to_vec();
        let Some(at) = value
            .windows(b"xxx-authenticate".len())
            .position(|window| window == b"xxx-authenticate")
        else {
            continue;
        };
        let mut value = value;
        value[at..at + 3].copy_from_slice(b"www");
        memory
            .set(&key, value.into(), item.flags, Lifetime::from_secs(60))
            .await
            .unwrap();
        respelled += 1;
    }
    assert_eq!(respelled, 1, "the entry holds the field");
    let bob = get(&svc, "/old", BOB).await;
    assert_eq!(origin.calls(), 2, "a miss, refilled");
    assert_no_alice(&bob);
}
