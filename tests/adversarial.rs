//! The cache tried as an attacker would: every test names the attack in its name and
//! asserts that what the cache answers belongs to the request that asked. Each scenario
//! runs on MemoryBackend and on a private memcached (see `on_every_backend!`).
//!
//! The origin here echoes what it was asked (method, path, Host and the request fields
//! an attacker controls) into its body, so a body served to the wrong request shows.

mod support;

use support::{Answer, Watch, assert_hit, assert_not_hit, stores};

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, MemcacheLayer, ResponseBody, RouteMatch};

/// What the origin answers for one path, beyond its echo.
#[derive(Clone, Default)]
struct Script {
    status: Option<u16>,
    headers: Vec<(&'static str, String)>,
    /// When `If-None-Match` matches the script's `etag` header: a 304 with these fields.
    not_modified: Option<Vec<(&'static str, String)>>,
    /// Fields of a 200 answer to HEAD in place of `headers`.
    head_headers: Option<Vec<(&'static str, String)>>,
    /// How long the origin takes.
    delay: Duration,
}

#[derive(Clone, Default)]
struct Origin {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    calls: Arc<AtomicUsize>,
}

/// Request fields the origin reflects into its body.
const ECHOED: [&str; 5] = [
    "x-user",
    "cookie",
    "authorization",
    "x-forwarded-host",
    "x-http-method-override",
];

impl Origin {
    fn script(&self, path: &str, script: Script) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    fn headers(&self, path: &str, headers: &[(&'static str, &str)]) {
        self.script(
            path,
            Script {
                headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
                ..Script::default()
            },
        );
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn delay(&self, path: &str) -> Duration {
        self.scripts
            .lock()
            .unwrap()
            .get(path)
            .map_or(Duration::ZERO, |s| s.delay)
    }

    fn respond<T>(&self, request: &Request<T>) -> Response<Bytes> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.uri().path().to_string();
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_default();
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                let host = request.headers().get("host")?;
                Some(String::from_utf8_lossy(host.as_bytes()).into_owned())
            })
            .unwrap_or_default();
        let mut body = format!(
            "{} {} host={host} #{n}",
            request.method(),
            request.uri().path_and_query().map_or("/", |pq| pq.as_str())
        );
        for name in ECHOED {
            if let Some(value) = request.headers().get(name) {
                body.push_str(&format!(
                    " {name}={}",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
        }
        let etag = script
            .headers
            .iter()
            .find(|(n, _)| *n == "etag")
            .map(|(_, v)| v.clone());
        let validated = request
            .headers()
            .get("if-none-match")
            .is_some_and(|v| Some(v.to_str().unwrap().to_string()) == etag);
        let is_head = request.method() == Method::HEAD;
        let (status, fields) = match (&script.not_modified, validated) {
            (Some(fields), true) => (304, fields.clone()),
            _ if is_head && script.head_headers.is_some() => {
                (200, script.head_headers.clone().unwrap())
            }
            _ => (script.status.unwrap_or(200), script.headers.clone()),
        };
        let body = if status == 304 || is_head {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in fields {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        if status == 304 {
            if let Some(etag) = etag {
                response.headers_mut().insert("etag", etag.parse().unwrap());
            }
        }
        response
    }
}

/// A body that yields its one chunk on the first poll (so the layer must read it, unlike
/// a `Full` that may report its end at once).
struct Chunk(Option<Bytes>);

impl Body for Chunk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

fn service<B: Backend>(
    layer: &MemcacheLayer<B>,
    origin: &Origin,
) -> impl Service<Request<()>, Response = Response<ResponseBody<Chunk>>, Error = Infallible>
+ Clone
+ use<B> {
    let origin = origin.clone();
    tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |request: Request<()>| {
            let origin = origin.clone();
            async move {
                tokio::time::sleep(origin.delay(request.uri().path())).await;
                Ok::<_, Infallible>(origin.respond(&request).map(|b| Chunk(Some(b))))
            }
        })
}

fn routes_layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend).namespace("adversarial")
}

fn origin_layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    routes_layer(backend).mode(CacheMode::Origin)
}

/// A layer in each mode, in namespaces of their own.
fn both_modes<B: Backend>(backend: &B) -> [MemcacheLayer<B>; 2] {
    [
        routes_layer(backend.clone()).namespace("routes"),
        origin_layer(backend.clone()).namespace("origin"),
    ]
}

/// Sends a request with raw header bytes (an attacker is not bound to valid text).
async fn send<S>(svc: &S, method: Method, uri: &str, headers: &[(&str, &[u8])]) -> Answer
where
    S: Service<Request<()>, Response = Response<ResponseBody<Chunk>>, Error = Infallible> + Clone,
{
    let mut request = Request::builder()
        .method(method)
        .uri(uri.parse::<Uri>().unwrap())
        .body(())
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = svc.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get<S>(svc: &S, uri: &str, headers: &[(&str, &[u8])]) -> Answer
where
    S: Service<Request<()>, Response = Response<ResponseBody<Chunk>>, Error = Infallible> + Clone,
{
    send(svc, Method::GET, uri, headers).await
}

const HOST: (&str, &[u8]) = ("host", b"site.example");

// ---------------------------------------------------------------------------------------
// Authority and target: no request is stored under another URL's key.

async fn host_with_a_path_poisons_another_url<B: Backend>(backend: B) {
    for layer in both_modes(&backend) {
        let origin = Origin::default();
        origin.headers("/b", &[("cache-control", "max-age=60")]);
        origin.headers("/a/b", &[("cache-control", "max-age=60")]);
        let stats = Watch::of(&layer);
        let svc = service(&layer, &origin);
        // The attacker's request reaches the origin as /b, under a Host of "site.example/a".
        let attack = get(&svc, "/b", &[("host", b"site.example/a")]).await;
        assert!(attack.body.starts_with("GET /b "), "{}", attack.body);
        assert!(
            attack.cache_status().contains("fwd=bypass"),
            "{}",
            attack.cache_status()
        );
        let victim = get(&svc, "/a/b", &[HOST]).await;
        assert!(
            victim.body.starts_with("GET /a/b "),
            "poisoned: {}",
            victim.body
        );
        assert_not_hit(victim.cache_status());
        stores(&stats, 1).await;
        let again = get(&svc, "/a/b", &[HOST]).await;
        assert_hit(again.cache_status());
        assert_eq!(again.body, victim.body);
    }
}

async fn host_spellings_of_one_authority_share_an_entry_others_do_not<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let first = get(&svc, "/p", &[("host", b"Site.Example:80")]).await;
    stores(&stats, 1).await;
    // DNS's trailing dot names the same host (review RF).
    for host in [
        &b"site.example"[..],
        b"SITE.EXAMPLE",
        b"site.example:",
        b"site.example.",
    ] {
        let same = get(&svc, "/p", &[("host", host)]).await;
        assert_hit(same.cache_status());
        assert_eq!(same.body, first.body);
    }
    for host in [
        &b"site.example:8080"[..],
        b"site.example..",
        b"other.example",
    ] {
        let other = get(&svc, "/p", &[("host", host)]).await;
        assert_not_hit(other.cache_status());
    }
}

async fn malformed_hosts_are_never_looked_up_or_stored<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let malformed: [&[u8]; 11] = [
        b"",
        b"site.example/a",
        b"user@site.example",
        b"site.example\\a",
        b"site .example",
        b"site.example:99999",
        b"site.example:80x",
        b"site.example?",
        b"site.example#a",
        b"si%74e.example",
        b"[::1",
    ];
    for host in malformed {
        for _ in 0..2 {
            let answer = get(&svc, "/m", &[("host", host)]).await;
            assert!(
                answer.cache_status().contains("fwd=bypass"),
                "{}: {}",
                String::from_utf8_lossy(host),
                answer.cache_status()
            );
        }
    }
    // Two Host fields, even equal ones (RFC 9112 §3.2).
    let twice = get(&svc, "/m", &[HOST, HOST]).await;
    assert!(twice.cache_status().contains("fwd=bypass"));
    assert_eq!(origin.calls(), 23);
    assert_eq!(stats.snapshot().stores, 0);
}

async fn absolute_form_target_disagreeing_with_host_poisons_nothing<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    // HTTP/2's :authority (or an absolute-form target) names one site, Host another.
    let attack = get(
        &svc,
        "http://victim.example/x",
        &[("host", b"attacker.example")],
    )
    .await;
    assert!(attack.cache_status().contains("fwd=bypass"));
    let victim = get(&svc, "/x", &[("host", b"victim.example")]).await;
    assert_not_hit(victim.cache_status());
    // Agreeing spellings are one request.
    stores(&stats, 1).await;
    let agreeing = get(
        &svc,
        "http://VICTIM.example:80/x",
        &[("host", b"victim.example")],
    )
    .await;
    assert_hit(agreeing.cache_status());
    assert_eq!(agreeing.body, victim.body);
}

async fn encoded_and_dotted_paths_are_kept_apart<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let paths = [
        "/a/b", "/a%2Fb", "/a%2fb", "/a/../b", "/a/./b", "/A/b", "/a/b?", "/a/b?x=1", "/a/b?X=1",
        "/a//b",
    ];
    let mut bodies = Vec::new();
    for path in paths {
        bodies.push(get(&svc, path, &[HOST]).await.body);
    }
    stores(&stats, paths.len() as u64).await;
    for (path, body) in paths.iter().zip(&bodies) {
        let again = get(&svc, path, &[HOST]).await;
        assert_hit(again.cache_status());
        assert_eq!(&again.body, body, "{path} served another path's page");
        assert!(
            again.body.starts_with(&format!("GET {path} ")),
            "{}",
            again.body
        );
    }
}

async fn method_override_or_body_on_a_get_is_not_cached<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for (name, value) in [
        ("x-http-method-override", &b"DELETE"[..]),
        ("x-http-method", b"POST"),
        ("x-method-override", b"PUT"),
        ("content-length", b"5"),
        ("transfer-encoding", b"chunked"),
    ] {
        let attack = get(&svc, "/o", &[HOST, (name, value)]).await;
        assert!(attack.cache_status().contains("fwd=bypass"), "{name}");
    }
    let plain = get(&svc, "/o", &[HOST]).await;
    assert_not_hit(plain.cache_status());
    assert!(!plain.body.contains("override"), "{}", plain.body);
    stores(&stats, 1).await;
    // An empty body is no body.
    let empty = get(&svc, "/o", &[HOST, ("content-length", b"0")]).await;
    assert_hit(empty.cache_status());
}

// ---------------------------------------------------------------------------------------
// One user's response never reaches another.

async fn set_cookie_in_a_304_reaches_the_next_user<B: Backend>(backend: B) {
    for layer in both_modes(&backend) {
        let origin = Origin::default();
        origin.script(
            "/session",
            Script {
                headers: vec![
                    ("cache-control", "max-age=600".into()),
                    ("etag", "\"s1\"".into()),
                ],
                not_modified: Some(vec![
                    ("set-cookie", "sid=A; HttpOnly".into()),
                    ("x-refreshed", "yes".into()),
                ]),
                ..Script::default()
            },
        );
        let stats = Watch::of(&layer);
        let svc = service(&layer, &origin);
        get(&svc, "/session", &[HOST]).await;
        stores(&stats, 1).await;
        // User A reloads: the cache revalidates, the origin answers 304 with A's cookie.
        let a = get(
            &svc,
            "/session",
            &[HOST, ("cache-control", b"max-age=0"), ("cookie", b"sid=A")],
        )
        .await;
        assert!(
            a.cache_status().contains("fwd-status=304"),
            "{}",
            a.cache_status()
        );
        assert_eq!(a.headers.get("set-cookie").unwrap(), "sid=A; HttpOnly");
        stores(&stats, 2).await;
        let b = get(&svc, "/session", &[HOST]).await;
        assert_hit(b.cache_status());
        assert!(
            b.headers.get("set-cookie").is_none(),
            "A's cookie served to B"
        );
        assert_eq!(b.headers.get("x-refreshed").unwrap(), "yes");
    }
}

async fn a_304_that_turns_private_or_no_store_keeps_serving<B: Backend>(backend: B) {
    for (path, cc) in [("/private", "private"), ("/no-store", "no-store")] {
        let origin = Origin::default();
        origin.script(
            path,
            Script {
                headers: vec![
                    ("cache-control", "max-age=600".into()),
                    ("etag", "\"p\"".into()),
                ],
                not_modified: Some(vec![("cache-control", cc.into())]),
                ..Script::default()
            },
        );
        let layer = origin_layer(backend.clone()).namespace(path);
        let stats = Watch::of(&layer);
        let svc = service(&layer, &origin);
        get(&svc, path, &[HOST]).await;
        stores(&stats, 1).await;
        let reload = get(&svc, path, &[HOST, ("cache-control", b"no-cache")]).await;
        assert!(reload.cache_status().contains("fwd-status=304"));
        // The entry is gone: the next request goes to the origin.
        let calls = origin.calls();
        let next = get(&svc, path, &[HOST]).await;
        assert_not_hit(next.cache_status());
        assert_eq!(origin.calls(), calls + 1, "{path}: entry still served");
    }
}

async fn a_304_that_adds_vary_keeps_serving_one_variant_to_all<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.script(
        "/v",
        Script {
            headers: vec![
                ("cache-control", "max-age=600".into()),
                ("etag", "\"v\"".into()),
            ],
            not_modified: Some(vec![("vary", "x-user".into())]),
            ..Script::default()
        },
    );
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/v", &[HOST, ("x-user", b"alice")]).await;
    stores(&stats, 1).await;
    get(
        &svc,
        "/v",
        &[HOST, ("x-user", b"alice"), ("cache-control", b"no-cache")],
    )
    .await;
    let bob = get(&svc, "/v", &[HOST, ("x-user", b"bob")]).await;
    assert_not_hit(bob.cache_status());
    assert!(bob.body.contains("x-user=bob"), "{}", bob.body);
}

async fn a_head_that_turns_private_or_sets_a_cookie_updates_the_entry<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.script(
        "/h",
        Script {
            headers: vec![
                ("cache-control", "max-age=600".into()),
                ("etag", "\"h\"".into()),
            ],
            head_headers: Some(vec![
                ("cache-control", "max-age=600".into()),
                ("etag", "\"h\"".into()),
                ("set-cookie", "sid=HEAD".into()),
            ]),
            ..Script::default()
        },
    );
    origin.script(
        "/hp",
        Script {
            headers: vec![
                ("cache-control", "max-age=600".into()),
                ("etag", "\"hp\"".into()),
            ],
            head_headers: Some(vec![
                ("cache-control", "private".into()),
                ("etag", "\"hp\"".into()),
            ]),
            ..Script::default()
        },
    );
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/h", &[HOST]).await;
    get(&svc, "/hp", &[HOST]).await;
    stores(&stats, 2).await;
    for path in ["/h", "/hp"] {
        let head = send(
            &svc,
            Method::HEAD,
            path,
            &[HOST, ("cache-control", b"no-cache")],
        )
        .await;
        assert_eq!(head.status, StatusCode::OK);
    }
    stores(&stats, 3).await;
    let cookie = get(&svc, "/h", &[HOST]).await;
    assert_hit(cookie.cache_status());
    assert!(
        cookie.headers.get("set-cookie").is_none(),
        "HEAD's cookie stored"
    );
    let calls = origin.calls();
    let private = get(&svc, "/hp", &[HOST]).await;
    assert_not_hit(private.cache_status());
    assert_eq!(origin.calls(), calls + 1);
}

async fn an_authenticated_response_is_reused_by_everyone_for_a_route_lifetime<B: Backend>(
    backend: B,
) {
    let origin = Origin::default();
    let cases = [
        ("/max-age-0", "max-age=0, must-revalidate"),
        ("/must", "must-revalidate"),
        ("/s-maxage-0", "s-maxage=0"),
        ("/must-etag", "must-revalidate"),
    ];
    for (path, cc) in cases {
        let mut headers = vec![("cache-control", cc.to_string())];
        if path == "/must-etag" {
            headers.push(("etag", "\"e\"".into()));
        }
        origin.script(
            path,
            Script {
                headers,
                ..Script::default()
            },
        );
    }
    // Routes mode: the route says an hour.
    let layer = routes_layer(backend);
    let svc = service(&layer, &origin);
    for (path, _) in cases {
        let alice = get(&svc, path, &[HOST, ("authorization", b"Bearer alice")]).await;
        assert!(alice.body.contains("authorization=Bearer alice"));
        layer.background().idle().await;
        let calls = origin.calls();
        let anonymous = get(&svc, path, &[HOST]).await;
        assert!(
            !anonymous.body.contains("alice"),
            "{path}: alice's page served to an anonymous request"
        );
        assert_eq!(origin.calls(), calls + 1, "{path}: not revalidated");
    }
}

async fn made_up_credentials_on_a_revalidation_switch_caching_off<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.script(
        "/rv",
        Script {
            headers: vec![
                ("cache-control", "must-revalidate".into()),
                ("etag", "\"rv\"".into()),
            ],
            not_modified: Some(vec![("cache-control", "must-revalidate".into())]),
            ..Script::default()
        },
    );
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/rv", &[HOST]).await;
    stores(&stats, 1).await;
    // The attacker's junk credentials and reload: the origin ignores both and says 304.
    let attack = get(
        &svc,
        "/rv",
        &[
            HOST,
            ("authorization", b"Bearer junk"),
            ("cache-control", b"no-cache"),
        ],
    )
    .await;
    assert!(attack.cache_status().contains("fwd-status=304"));
    stats.settled().await;
    // Everyone else still gets the route's hour.
    let calls = origin.calls();
    assert_hit(get(&svc, "/rv", &[HOST]).await.cache_status());
    assert_eq!(origin.calls(), calls);
}

async fn an_authenticated_entry_outlives_the_origin_withdrawing_public<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.script(
        "/pub",
        Script {
            headers: vec![
                ("cache-control", "public, max-age=0".into()),
                ("etag", "\"p\"".into()),
            ],
            not_modified: Some(vec![("cache-control", "max-age=600".into())]),
            ..Script::default()
        },
    );
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/pub", &[HOST, ("authorization", b"Bearer alice")]).await;
    stores(&stats, 1).await;
    // Revalidated for an anonymous request: the origin's 304 no longer says public.
    let anonymous = get(&svc, "/pub", &[HOST]).await;
    assert!(anonymous.cache_status().contains("fwd-status=304"));
    stats.settled().await;
    // The entry is gone, not kept for ten minutes.
    let calls = origin.calls();
    let next = get(&svc, "/pub", &[HOST]).await;
    assert_not_hit(next.cache_status());
    assert_eq!(origin.calls(), calls + 1);
}

async fn non_utf8_vary_values_select_each_others_variant<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.headers("/u", &[("vary", "x-user")]);
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let first = get(&svc, "/u", &[HOST, ("x-user", b"J\xfcrgen")]).await;
    stores(&stats, 1).await;
    let other = get(&svc, "/u", &[HOST, ("x-user", b"J\xf6rgen")]).await;
    assert_not_hit(other.cache_status());
    assert_ne!(other.body, first.body);
    let same = get(&svc, "/u", &[HOST, ("x-user", b"J\xfcrgen")]).await;
    assert_hit(same.cache_status());
}

async fn vary_on_cookie_authorization_or_encoding_crosses_users<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.headers("/cookie", &[("vary", "Cookie")]);
    origin.headers(
        "/auth",
        &[("vary", "Authorization"), ("cache-control", "public")],
    );
    origin.headers("/enc", &[("vary", "Accept-Encoding")]);
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let cases: [(&str, &str, &[u8], &[u8]); 3] = [
        ("/cookie", "cookie", b"sid=alice", b"sid=bob"),
        ("/auth", "authorization", b"Bearer alice", b"Bearer bob"),
        ("/enc", "accept-encoding", b"gzip", b"br"),
    ];
    for (n, (path, name, first, second)) in cases.iter().enumerate() {
        let stored_before = 3 * n as u64;
        let a = get(&svc, path, &[HOST, (name, first)]).await;
        stores(&stats, stored_before + 1).await;
        let b = get(&svc, path, &[HOST, (name, second)]).await;
        assert_not_hit(b.cache_status());
        // (Until b's variant lands, a request for a's would wait for b's flight.)
        stores(&stats, stored_before + 2).await;
        assert_ne!(a.body, b.body, "{path}");
        let a_again = get(&svc, path, &[HOST, (name, first)]).await;
        assert_hit(a_again.cache_status());
        assert_eq!(a_again.body, a.body);
        // And no header at all is yet another variant.
        let none = get(&svc, path, &[HOST]).await;
        assert_not_hit(none.cache_status());
        stores(&stats, stored_before + 3).await;
    }
}

// ---------------------------------------------------------------------------------------
// Partial content is never the whole.

async fn a_range_request_on_a_miss_stores_a_206_as_the_full_page<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.script(
        "/video",
        Script {
            status: Some(206),
            headers: vec![
                ("cache-control", "max-age=600".into()),
                ("content-range", "bytes 0-4/100".into()),
            ],
            ..Script::default()
        },
    );
    origin.headers(
        "/odd",
        &[
            ("cache-control", "max-age=600"),
            ("content-range", "bytes 0-4/100"),
        ],
    );
    for layer in both_modes(&backend) {
        let svc = service(&layer, &origin);
        for path in ["/video", "/odd"] {
            get(&svc, path, &[HOST, ("range", b"bytes=0-4")]).await;
            layer.background().idle().await;
            let full = get(&svc, path, &[HOST]).await;
            assert_not_hit(full.cache_status());
            assert_eq!(layer.stats().snapshot().stores, 0, "{path}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// One client's reading speed never sets another's latency.

async fn a_client_that_stops_reading_stalls_others<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend.clone())
        .coalesce_timeout(Duration::from_secs(5))
        .lease(Some(Duration::from_secs(5)))
        .lease_wait(Duration::from_secs(5), Duration::from_millis(10));
    let svc = service(&layer, &origin);
    // The first client gets its response and never reads the body.
    let request = Request::get("/slow")
        .header("host", "site.example")
        .body(())
        .unwrap();
    let stalled = svc.clone().oneshot(request).await.unwrap();
    // Another client in this process, and one in another process over the same backend.
    let other_process = routes_layer(backend)
        .lease(Some(Duration::from_secs(5)))
        .lease_wait(Duration::from_secs(5), Duration::from_millis(10));
    let other_svc = service(&other_process, &origin);
    for svc in [&svc, &other_svc] {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(1), get(svc, "/slow", &[HOST]))
            .await
            .expect("a stalled client held up another request");
        assert!(answer.body.starts_with("GET /slow "));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Filled at the origin's pace: the others were answered from it (one whose lookup
    // raced with the store landing may have gone to the origin once more).
    assert!(origin.calls() <= 2, "{} origin calls", origin.calls());
    drop(stalled);
}

// ---------------------------------------------------------------------------------------
// No header value crashes the cache.

async fn an_age_or_lifetime_of_u64_max_crashes_the_request<B: Backend>(backend: B) {
    const HUGE: &str = "18446744073709551615";
    let origin = Origin::default();
    // An origin that takes over a second makes the response delay non-zero (§4.2.3).
    origin.script(
        "/age",
        Script {
            headers: vec![("age", HUGE.into()), ("cache-control", "max-age=60".into())],
            delay: Duration::from_millis(1100),
            ..Script::default()
        },
    );
    origin.headers(
        "/lifetime",
        &[
            ("x-memcache-lifetime", HUGE),
            ("date", "Thu, 01 Jan 1970 00:00:01 GMT"),
            (
                "cache-control",
                format!("max-age={HUGE}, stale-while-revalidate={HUGE}").leak(),
            ),
        ],
    );
    for layer in both_modes(&backend) {
        let svc = service(&layer, &origin);
        for path in ["/age", "/lifetime"] {
            for _ in 0..2 {
                let answer = get(&svc, path, &[HOST]).await;
                assert_eq!(answer.status, StatusCode::OK, "{path}");
                assert!(answer.body.starts_with(&format!("GET {path} ")));
                assert!(answer.headers.get("x-memcache-lifetime").is_none());
            }
        }
    }
}

async fn a_percent_encoded_path_slips_past_a_no_cache_rule<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend).no_cache(RouteMatch::Exact("/account".into()));
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for path in ["/%61ccount", "/acc%6Funt", "/account"] {
        for _ in 0..2 {
            let answer = get(&svc, path, &[HOST]).await;
            assert!(
                answer.cache_status().contains("fwd=bypass"),
                "{path}: {}",
                answer.cache_status()
            );
        }
    }
    stats.settled().await;
    assert_eq!(stats.snapshot().stores, 0);
    assert_eq!(origin.calls(), 6);
}

async fn a_purge_misses_an_entry_stored_under_another_spelling_of_its_host<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = routes_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/p", &[("host", b"Site.Example:80")]).await;
    stores(&stats, 1).await;
    assert_hit(
        get(&svc, "/p", &[("host", b"site.example")])
            .await
            .cache_status(),
    );
    layer
        .purger()
        .purge_uri("http://site.example/p")
        .await
        .unwrap();
    let after = get(&svc, "/p", &[("host", b"SITE.example:80")]).await;
    assert_not_hit(after.cache_status());
}

on_every_backend!("adversarial";
    a_purge_misses_an_entry_stored_under_another_spelling_of_its_host,
    a_percent_encoded_path_slips_past_a_no_cache_rule,
    an_age_or_lifetime_of_u64_max_crashes_the_request,
    host_with_a_path_poisons_another_url,
    host_spellings_of_one_authority_share_an_entry_others_do_not,
    malformed_hosts_are_never_looked_up_or_stored,
    absolute_form_target_disagreeing_with_host_poisons_nothing,
    encoded_and_dotted_paths_are_kept_apart,
    method_override_or_body_on_a_get_is_not_cached,
    set_cookie_in_a_304_reaches_the_next_user,
    a_304_that_turns_private_or_no_store_keeps_serving,
    a_304_that_adds_vary_keeps_serving_one_variant_to_all,
    a_head_that_turns_private_or_sets_a_cookie_updates_the_entry,
    an_authenticated_response_is_reused_by_everyone_for_a_route_lifetime,
    non_utf8_vary_values_select_each_others_variant,
    made_up_credentials_on_a_revalidation_switch_caching_off,
    an_authenticated_entry_outlives_the_origin_withdrawing_public,
    vary_on_cookie_authorization_or_encoding_crosses_users,
    a_range_request_on_a_miss_stores_a_206_as_the_full_page,
    a_client_that_stops_reading_stalls_others,
);
