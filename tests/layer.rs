//! MemcacheLayer end to end over an in-process origin, on MemoryBackend and on a real
//! memcached through TcpBackend.

mod support;

use support::{Watch, assert_hit, stores};

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
use tower_memcache::cache::FLAG_HTTP_ENTRY;
use tower_memcache::cache::RouteMatch;
use tower_memcache::cache::{CacheLifetime, MemcacheLayer};
use tower_memcache::key::build_key;

/// A response body of scripted chunks; an `Err` chunk fails the body there. `exact`: it
/// says its length, as a body framed by `Content-Length` does (the layer claims `stored`
/// only for such bodies, review RB).
struct TestBody {
    chunks: VecDeque<Result<Bytes, std::io::Error>>,
    exact: bool,
}

impl TestBody {
    fn full(data: impl Into<Bytes>) -> Self {
        Self {
            chunks: VecDeque::from([Ok(data.into())]),
            exact: true,
        }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.chunks.pop_front().map(|chunk| chunk.map(Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let left = self.chunks.iter().flatten().map(|c| c.len() as u64).sum();
        match self.exact {
            true => http_body::SizeHint::with_exact(left),
            false => http_body::SizeHint::default(),
        }
    }
}

/// The origin: routes by path, counts its calls.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn respond(self, request: Request<()>) -> Result<Response<TestBody>, Infallible> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.uri().path().to_string();
        let mut response = Response::new(TestBody::full(format!("{path} call {n}")));
        let headers = response.headers_mut();
        headers.insert("content-type", "text/plain".parse().unwrap());
        headers.insert("x-origin", "yes".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.insert("connection", "keep-alive".parse().unwrap());
        match path.as_str() {
            "/no-store" => _ = headers.insert("cache-control", "no-store".parse().unwrap()),
            "/private" => {
                _ = headers.insert("cache-control", "private, max-age=60".parse().unwrap())
            }
            "/cookie" => _ = headers.insert("set-cookie", "session=1".parse().unwrap()),
            "/auth-public" => _ = headers.insert("cache-control", "public".parse().unwrap()),
            "/vary" => {
                headers.insert("vary", "Accept-Language".parse().unwrap());
                let lang = request
                    .headers()
                    .get("accept-language")
                    .map(|v| v.to_str().unwrap().to_string());
                *response.body_mut() = TestBody::full(format!("lang {lang:?} call {n}"));
            }
            "/not-found" => *response.status_mut() = StatusCode::NOT_FOUND,
            "/created" => *response.status_mut() = StatusCode::CREATED,
            "/header-zero" => _ = headers.insert("x-memcache-lifetime", "0".parse().unwrap()),
            "/header-short" => _ = headers.insert("x-memcache-lifetime", "1".parse().unwrap()),
            "/extension-short" => {
                _ = response
                    .extensions_mut()
                    .insert(CacheLifetime(Duration::from_secs(1)))
            }
            "/extension-zero" => {
                _ = response
                    .extensions_mut()
                    .insert(CacheLifetime(Duration::ZERO))
            }
            "/big" => {
                // 2 MiB in 64 KiB chunks: over the entry limit.
                let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
                *response.body_mut() = TestBody {
                    chunks: (0..32).map(|_| Ok(chunk.clone())).collect(),
                    exact: false,
                };
            }
            "/fail" => {
                *response.body_mut() = TestBody {
                    chunks: VecDeque::from([
                        Ok(Bytes::from("partial")),
                        Err(std::io::Error::other("origin broke")),
                    ]),
                    exact: false,
                };
            }
            "/slow" => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => {}
        }
        Ok(response)
    }
}

fn service<B: Backend>(
    layer: MemcacheLayer<B>,
    origin: &Origin,
) -> impl Service<
    Request<()>,
    Response = Response<tower_memcache::cache::ResponseBody<TestBody>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request| origin.clone().respond(request));
    tower::Layer::layer(&layer, inner)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Answer {
    fn cache_status(&self) -> &str {
        support::as_seen(
            self.headers
                .get("cache-status")
                .map_or("", |v| v.to_str().unwrap()),
        )
    }

    fn body(&self) -> &[u8] {
        self.body.as_ref().unwrap()
    }
}

async fn send<S>(service: &S, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer
where
    S: Service<
            Request<()>,
            Response = Response<tower_memcache::cache::ResponseBody<TestBody>>,
            Error = Infallible,
        > + Clone,
{
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://test.local{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .clone()
        .oneshot(request.body(()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get<S>(service: &S, path: &str) -> Answer
where
    S: Service<
            Request<()>,
            Response = Response<tower_memcache::cache::ResponseBody<TestBody>>,
            Error = Infallible,
        > + Clone,
{
    send(service, Method::GET, path, &[]).await
}

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("test")
        .route(RouteMatch::Prefix("/short".into()), Duration::from_secs(1))
        .no_cache(RouteMatch::Exact("/never".into()))
}

async fn miss_then_hit_is_identical<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let first = get(&svc, "/page?a=1").await;
    assert_eq!(first.cache_status(), "tower-memcache; fwd=uri-miss; stored");
    stores(&stats, 1).await;
    let second = get(&svc, "/page?a=1").await;
    assert_hit(second.cache_status());
    assert_eq!(origin.calls(), 1);
    assert_eq!(second.status, first.status);
    assert_eq!(second.body(), first.body());
    assert_eq!(second.body(), b"/page call 1");
    for name in ["content-type", "x-origin"] {
        assert_eq!(second.headers.get(name), first.headers.get(name), "{name}");
    }
    let multi: Vec<_> = second.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert!(
        second.headers.get("connection").is_none(),
        "hop-by-hop header stored"
    );
    // No Content-Length of our own on a GET hit: hyper derives it from the exact body.
    assert_eq!(second.body().len(), 12);
    assert!(second.headers.contains_key("age"));
    // Another query string is another resource.
    assert_eq!(
        get(&svc, "/page?a=2").await.cache_status(),
        "tower-memcache; fwd=uri-miss; stored"
    );
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.hits, snapshot.misses), (1, 2));
    assert_eq!(snapshot.bytes_served, 12);
}

async fn route_lifetimes_expire_on_time<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    get(&svc, "/short/a").await;
    get(&svc, "/header-short").await;
    get(&svc, "/extension-short").await;
    get(&svc, "/long").await;
    stores(&stats, 4).await;
    assert_hit(get(&svc, "/short/a").await.cache_status());
    assert_hit(get(&svc, "/header-short").await.cache_status());
    assert_hit(get(&svc, "/extension-short").await.cache_status());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        get(&svc, "/short/a").await.body(),
        b"/short/a call 5",
        "1 s route not expired"
    );
    assert_eq!(
        get(&svc, "/header-short").await.cache_status(),
        "tower-memcache; fwd=uri-miss; stored"
    );
    assert_eq!(
        get(&svc, "/extension-short").await.cache_status(),
        "tower-memcache; fwd=uri-miss; stored",
        "the handler's 1 s extension beats the default lifetime"
    );
    assert_eq!(
        get(&svc, "/long").await.cache_status(),
        "tower-memcache; hit",
        "default lifetime expired"
    );
    // A route with caching off bypasses.
    assert_eq!(
        get(&svc, "/never").await.cache_status(),
        "tower-memcache; fwd=bypass"
    );
}

async fn unstorable_responses_are_never_stored<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend.clone());
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let auth = [("authorization", "Bearer secret")];
    for (path, headers) in [
        ("/no-store", &[][..]),
        ("/private", &[][..]),
        ("/cookie", &[][..]),
        ("/auth-private", &auth[..]),
        ("/created", &[][..]),
        ("/header-zero", &[][..]),
        ("/extension-zero", &[][..]),
        ("/no-store-request", &[("cache-control", "no-store")][..]),
    ] {
        for _ in 0..2 {
            let answer = send(&svc, Method::GET, path, headers).await;
            assert_eq!(
                answer.cache_status(),
                "tower-memcache; fwd=uri-miss",
                "{path}"
            );
            assert!(
                answer.headers.get("x-memcache-lifetime").is_none(),
                "lifetime header leaked"
            );
        }
    }
    assert_eq!(origin.calls(), 16);
    // Authorization with `public` may be stored; 404 is cacheable by default.
    send(&svc, Method::GET, "/auth-public", &auth).await;
    get(&svc, "/not-found").await;
    stores(&stats, 2).await;
    assert_hit(
        send(&svc, Method::GET, "/auth-public", &auth)
            .await
            .cache_status(),
    );
    let not_found = get(&svc, "/not-found").await;
    assert_eq!(
        (not_found.status, not_found.cache_status()),
        (StatusCode::NOT_FOUND, "tower-memcache; hit")
    );
    assert_eq!(stats.snapshot().stores, 2);
    // Other methods bypass the cache and are never answered from it.
    let post = send(&svc, Method::POST, "/not-found", &[]).await;
    assert_eq!(post.cache_status(), "tower-memcache; fwd=method");
    // A client asking for a fresh copy goes to the origin (and refreshes the entry).
    let fresh = send(
        &svc,
        Method::GET,
        "/not-found",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(fresh.cache_status(), "tower-memcache; fwd=request; stored");
}

async fn head_is_served_from_the_get_entry<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    // A HEAD miss is answered by the origin and stores nothing.
    let head_miss = send(&svc, Method::HEAD, "/doc", &[]).await;
    assert_eq!(head_miss.cache_status(), "tower-memcache; fwd=uri-miss");
    get(&svc, "/doc").await;
    stores(&stats, 1).await;
    let head = send(&svc, Method::HEAD, "/doc", &[]).await;
    assert_hit(head.cache_status());
    assert!(head.body().is_empty());
    assert_eq!(
        head.headers["content-length"], "11",
        "HEAD keeps the GET's length"
    );
    assert_eq!(origin.calls(), 2);
}

async fn oversized_and_failing_bodies_pass_through<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    for _ in 0..2 {
        let big = get(&svc, "/big").await;
        assert_eq!(big.body().len(), 2 * 1024 * 1024);
        assert!(big.body().iter().all(|b| *b == b'z'));
        let fail = get(&svc, "/fail").await;
        assert_eq!(fail.status, StatusCode::OK);
        assert!(
            fail.body.as_ref().unwrap_err().contains("origin broke"),
            "error not passed on"
        );
    }
    stats.settled().await;
    assert_eq!(stats.snapshot().stores, 0);
    assert_eq!(origin.calls(), 4);
}

async fn concurrent_misses_call_the_origin_once<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { get(&svc, "/slow").await })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body(), b"/slow call 1");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(stats.snapshot().coalesced, 99);
}

async fn vary_selects_the_variant<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let de = [("accept-language", "de")];
    let first = send(&svc, Method::GET, "/vary", &de).await;
    stores(&stats, 1).await;
    // The same value (white space at its ends is another value, which an HTTP/1 server
    // trims and HTTP/2 passes on: review QK).
    let again = send(&svc, Method::GET, "/vary", &de).await;
    assert_hit(again.cache_status());
    assert_eq!(again.body(), first.body());
    let en = send(&svc, Method::GET, "/vary", &[("accept-language", "en")]).await;
    assert_eq!(en.cache_status().split("; ").nth(1), Some("fwd=vary-miss"));
    assert_eq!(en.body(), b"lang Some(\"en\") call 2");
    stores(&stats, 2).await;
    // Variants coexist: storing "en" did not evict "de".
    let de_again = send(&svc, Method::GET, "/vary", &de).await;
    assert_hit(de_again.cache_status());
    assert_eq!(de_again.body(), first.body());
    let en_again = send(&svc, Method::GET, "/vary", &[("accept-language", "en")]).await;
    assert_eq!(en_again.body(), b"lang Some(\"en\") call 2");
    let none = get(&svc, "/vary").await;
    assert_ne!(
        none.cache_status(),
        "tower-memcache; hit",
        "absent matched present"
    );
}

/// A value under the key that is not ours, or is for another request: never served.
async fn foreign_values_are_misses<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend.clone());
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let key = build_key(Some("test"), "GET http://test.local/foreign");
    backend
        .set(
            &key,
            "not an entry".into(),
            FLAG_HTTP_ENTRY,
            Lifetime::NEVER,
        )
        .await
        .unwrap();
    assert_eq!(get(&svc, "/foreign").await.body(), b"/foreign call 1");
    // A real entry stored under this key for another URL (as an md5 collision would).
    get(&svc, "/elsewhere").await;
    stats.settled().await;
    let other = build_key(Some("test"), "GET http://test.local/elsewhere");
    let entry = backend.get(&other).await.unwrap().unwrap();
    backend
        .set(&key, entry.value, FLAG_HTTP_ENTRY, Lifetime::NEVER)
        .await
        .unwrap();
    let answer = get(&svc, "/foreign").await;
    assert_eq!(answer.body(), b"/foreign call 3");
}

on_every_backend!(
    "layer";
    miss_then_hit_is_identical,
    route_lifetimes_expire_on_time,
    unstorable_responses_are_never_stored,
    head_is_served_from_the_get_entry,
    oversized_and_failing_bodies_pass_through,
    concurrent_misses_call_the_origin_once,
    vary_selects_the_variant,
    key_headers_select_variants_under_a_named_status,
    foreign_values_are_misses,
);

async fn key_headers_select_variants_under_a_named_status<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = layer(backend)
        .key_headers([http::HeaderName::from_static("x-tenant")])
        .cache_status_name("edge");
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let a = send(&svc, Method::GET, "/k", &[("x-tenant", "a")]).await;
    assert_eq!(a.cache_status(), "edge; fwd=uri-miss; stored");
    stores(&stats, 1).await;
    let b = send(&svc, Method::GET, "/k", &[("x-tenant", "b")]).await;
    assert_eq!(b.body(), b"/k call 2", "another tenant, another entry");
    stores(&stats, 2).await;
    for (tenant, body) in [("a", b"/k call 1"), ("b", b"/k call 2")] {
        let again = send(&svc, Method::GET, "/k", &[("x-tenant", tenant)]).await;
        assert_eq!(again.cache_status(), "edge; hit", "{tenant}");
        assert_eq!(again.body(), body, "{tenant}");
    }
    assert_eq!(
        get(&svc, "/k").await.body(),
        b"/k call 3",
        "no tenant: its own"
    );
}

/// A follower waits for the leader's response at most `coalesce_timeout`, then goes to the
/// inner service itself.
#[tokio::test]
async fn coalesced_waits_are_bounded() {
    let origin = Origin::default();
    let layer = layer(MemoryBackend::new()).coalesce_timeout(Duration::from_millis(50));
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let (leader, follower) = tokio::join!(get(&svc, "/slow"), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        get(&svc, "/slow").await
    });
    assert_eq!(leader.body(), b"/slow call 1");
    assert_eq!(
        follower.body(),
        b"/slow call 2",
        "gave up waiting, asked itself"
    );
    assert!(!follower.cache_status().contains("collapsed"));
    assert_eq!(stats.snapshot().coalesced, 1);
}

/// A body larger than the backend's item size limit is neither copied nor sent to it, and
/// the response still goes out whole.
#[tokio::test]
async fn bodies_the_backend_cannot_hold_are_not_stored() {
    let origin = Origin::default();
    let backend = MemoryBackend::builder().item_size_limit(64).build();
    let layer = layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    assert_eq!(get(&svc, "/page").await.body(), b"/page call 1");
    stats.settled().await;
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.stores, snapshot.store_failures), (0, 0));
    assert_eq!(get(&svc, "/page").await.body(), b"/page call 2");
}

#[tokio::test]
async fn backend_down_or_slow_falls_through() {
    let backend = MemoryBackend::new();
    let origin = Origin::default();
    let layer = layer(backend.clone()).lookup_timeout(Duration::from_millis(50));
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    backend.set_unreachable(true);
    let answer = get(&svc, "/x").await;
    assert_eq!(answer.body(), b"/x call 1");
    assert_eq!(
        answer.cache_status(),
        "tower-memcache; fwd=uri-miss; detail=backend-unavailable"
    );
    backend.set_unreachable(false);
    backend.set_latency(Duration::from_secs(5));
    let started = Instant::now();
    let answer = get(&svc, "/x").await;
    assert_eq!(answer.body(), b"/x call 2");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited for a slow backend"
    );
    assert!(stats.snapshot().backend_errors >= 1);
    assert_eq!(stats.snapshot().hits, 0);
}

#[tokio::test]
async fn custom_key_fn_and_status_header_switch() {
    let backend = MemoryBackend::new();
    let origin = Origin::default();
    let layer = support::layer(backend.clone())
        .namespace("tenant")
        .cache_status_header(false)
        .key_fn(|req: &tower_memcache::cache::RequestHead<'_>| {
            let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
            Some(format!("{tenant}{}", req.uri.path()))
        });
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    send(&svc, Method::GET, "/k", &[("x-tenant", "a")]).await;
    stores(&stats, 1).await;
    let hit = send(&svc, Method::GET, "/k?ignored", &[("x-tenant", "a")]).await;
    assert!(hit.headers.get("cache-status").is_none());
    assert_eq!(hit.body(), b"/k call 1");
    assert_eq!(
        send(&svc, Method::GET, "/k", &[("x-tenant", "b")])
            .await
            .body(),
        b"/k call 2"
    );
    // No tenant: the key function says bypass.
    get(&svc, "/k").await;
    assert_eq!(stats.snapshot().bypasses, 1);
    assert!(
        backend
            .peek(&build_key(Some("tenant"), "GET a/k"))
            .is_some()
    );
}

/// The `KeyFn` documentation's tenant key, built on `RequestTarget`: the spellings of a
/// host share the tenant's entry (the origin is asked with one spelling), and an unsafe
/// request to any of them invalidates it. Keyed on the raw `Host`, `Example.COM.` had its
/// own entry, which a POST to `example.com` left served.
#[tokio::test]
async fn a_key_fn_on_the_validated_authority_keys_every_spelling_of_a_host_as_one() {
    use tower_memcache::cache::{RequestHead, RequestTarget};
    let origin = Origin::default();
    let layer = support::layer(MemoryBackend::new())
        .namespace("tenant-hosts")
        .key_fn(|req: &RequestHead<'_>| {
            let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
            if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            let site = RequestTarget::from_parts("http", req.uri, req.headers).ok()?;
            let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            Some(format!("{tenant} {site}{target}"))
        });
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    let send_as = |method: Method, host: &'static str| {
        let svc = svc.clone();
        async move {
            let request = Request::builder()
                .method(method)
                .uri("/page")
                .header("host", host)
                .header("x-tenant", "a")
                .body(())
                .unwrap();
            let response = svc.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        }
    };
    assert_eq!(send_as(Method::GET, "Example.COM.").await, "/page call 1");
    stores(&stats, 1).await;
    assert_eq!(send_as(Method::GET, "example.com:80").await, "/page call 1");
    assert_eq!(send_as(Method::GET, "example.com").await, "/page call 1");
    send_as(Method::POST, "EXAMPLE.com").await;
    assert_eq!(
        send_as(Method::GET, "Example.COM.").await,
        "/page call 3",
        "the POST invalidated the page every spelling reads"
    );
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_memcached_still_answers_and_caching_resumes_within_a_second() {
    use tower_memcache::backend::TcpBackend;
    let mut server = memcached_or_skip!("layer::killed_memcached");
    let backend = TcpBackend::new([server.addr()]).unwrap();
    let origin = Origin::default();
    let layer = layer(backend.clone());
    let stats = Watch::of(&layer);
    let svc = service(layer, &origin);
    get(&svc, "/page").await;
    stores(&stats, 1).await;
    assert_hit(get(&svc, "/page").await.cache_status());

    server.kill();
    for i in 0..20 {
        let answer = get(&svc, &format!("/down/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer
                .body()
                .starts_with(format!("/down/{i} call").as_bytes())
        );
        let page = get(&svc, "/page").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body().starts_with(b"/page call"));
    }

    server.restart();
    let answering = Instant::now();
    loop {
        get(&svc, "/after").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if get(&svc, "/after").await.cache_status() == "tower-memcache; hit" {
            break;
        }
        assert!(
            answering.elapsed() < Duration::from_secs(1),
            "caching did not resume within 1 s"
        );
    }
}

/// `Router::route_layer` puts axum's `MatchedPath` in reach of the route rules.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_route_layer_rules_by_matched_path() {
    use axum::Router;
    use axum::routing::get;

    let layer = support::layer(MemoryBackend::new())
        .no_cache(RouteMatch::Pattern("/users/{id}".into()))
        .route(
            RouteMatch::Pattern("/posts/{id}".into()),
            Duration::from_secs(60),
        );
    let stats = Watch::of(&layer);
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/posts/{id}", get(|| async { "post" }))
        .route_layer(layer);
    let call = |path: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_string();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    assert_eq!(call("/users/1").await.0, "tower-memcache; fwd=bypass");
    assert_eq!(
        call("/posts/1").await.0,
        "tower-memcache; fwd=uri-miss; stored"
    );
    stores(&stats, 1).await;
    let (status, body) = call("/posts/1").await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("tower-memcache; hit", &b"post"[..])
    );
}

/// RFC 9110 §9.1: method names are case-sensitive, so `get` is not GET but an unknown
/// method, and a 2xx to an unknown method invalidates its target (RFC 9111 §4.4). Many
/// servers upper-case the method before routing (WSGI gateways, Werkzeug) and answer
/// `get /page` as a GET: with no request body and no effect at the origin, any client
/// could evict any stored page at will, each time sending the next visitor to the origin.
/// A spelling of a safe method in another case does not invalidate.
#[tokio::test]
async fn a_safe_method_spelled_in_lower_case_does_not_evict_the_page() {
    use tower::Layer;

    let layer = support::layer(MemoryBackend::new()).default_lifetime(Duration::from_secs(60));
    let watch = Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_request: Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .header("cache-control", "public, max-age=60")
                .body(http_body_util::Full::new(Bytes::from_static(b"the page")))
                .unwrap(),
        )
    }));
    let url = "http://shop.example/page";
    support::send(&service, Method::GET, url, &[]).await;
    stores(&watch, 1).await;
    for spelling in ["get", "Get", "head", "options", "trace"] {
        let method = Method::from_bytes(spelling.as_bytes()).unwrap();
        support::send(&service, method, url, &[]).await;
        watch.settled().await;
        let again = support::send(&service, Method::GET, url, &[]).await;
        assert_hit(again.cache_status());
    }
    // A real unsafe method still invalidates.
    support::send(&service, Method::POST, url, &[]).await;
    watch.settled().await;
    let after = support::send(&service, Method::GET, url, &[]).await;
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );
}

/// An origin for one URL whose answers take `delay`, with the `Cache-Control` it is given
/// now, counting how many of its requests ran at once at most.
#[derive(Clone)]
struct Overlaps {
    cache_control: Arc<std::sync::Mutex<&'static str>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    delay: Duration,
}

impl Overlaps {
    fn new(cache_control: &'static str, delay: Duration) -> Self {
        Self {
            cache_control: Arc::new(std::sync::Mutex::new(cache_control)),
            running: Arc::default(),
            most: Arc::default(),
            delay,
        }
    }

    fn service(
        self,
    ) -> impl Service<
        Request<()>,
        Response = Response<http_body_util::Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        let origin = self;
        tower::service_fn(move |_request: Request<()>| {
            let origin = origin.clone();
            async move {
                let now = origin.running.fetch_add(1, Ordering::SeqCst) + 1;
                origin.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(origin.delay).await;
                origin.running.fetch_sub(1, Ordering::SeqCst);
                let cache_control = *origin.cache_control.lock().unwrap();
                Ok(Response::builder()
                    .header("cache-control", cache_control)
                    .body(http_body_util::Full::new(Bytes::from_static(b"page")))
                    .unwrap())
            }
        })
    }

    /// Most requests at the origin at once since the last call.
    fn most_at_once(&self) -> usize {
        self.most.swap(0, Ordering::SeqCst)
    }
}

/// Two requests for `url` through `first` and, 200 ms later, `second`, both to the end.
async fn overlapping<S, T, B>(
    first: &S,
    second: &T,
    url: &str,
) -> (support::Answer, support::Answer)
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    T: Service<Request<()>, Response = Response<B>> + Clone,
    T::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    tokio::join!(support::send(first, Method::GET, url, &[]), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        support::send(second, Method::GET, url, &[]).await
    })
}

/// Hit-for-miss: a request for a URL whose latest response was not stored (`private`)
/// does not wait for another request's response to it, which it could not have. It
/// waited: a private page asked for by two users at once took the second twice the
/// origin's time. The first time, nothing is known: the second request waits, as for any
/// URL. Once the page is storable again it is stored, and requests wait for each other
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_page_lately_not_stored_do_not_wait_for_each_other() {
    let origin = Overlaps::new("private, max-age=60", Duration::from_secs(1));
    let layer = support::layer(MemoryBackend::new()).mode(tower_memcache::cache::CacheMode::Origin);
    let (stats, purger) = (Watch::of(&layer), layer.purger());
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(origin.clone().service());
    let url = "http://site.example/me";
    overlapping(&svc, &svc, url).await;
    assert_eq!(origin.most_at_once(), 1, "unknown: the second waited");
    let (ahead, behind) = overlapping(&svc, &svc, url).await;
    assert_eq!(
        (ahead.status, behind.status),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(origin.most_at_once(), 2, "known not stored: side by side");
    // Storable again: stored by the next request, which ends the memory: once the page
    // is purged, requests for it wait for each other again.
    *origin.cache_control.lock().unwrap() = "max-age=60";
    overlapping(&svc, &svc, url).await;
    stores(&stats, 1).await;
    assert_hit(
        support::send(&svc, Method::GET, url, &[])
            .await
            .cache_status(),
    );
    purger.purge_uri(url).await.unwrap();
    origin.most_at_once();
    overlapping(&svc, &svc, url).await;
    assert_eq!(origin.most_at_once(), 1, "stored since: the second waited");
}

/// The same across processes: a process that knows the URL's responses are not stored
/// does not wait for another process's placeholder either (it waited `lease_wait`, or
/// until that request's response was refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_lately_not_stored_is_not_waited_for_in_another_process() {
    let origin = Overlaps::new("private", Duration::from_secs(1));
    let backend = MemoryBackend::new();
    let process = || {
        let layer = support::layer(backend.clone()).mode(tower_memcache::cache::CacheMode::Origin);
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(origin.clone().service())
    };
    let (one, two) = (process(), process());
    let url = "http://site.example/account";
    // The first process learns the page is not stored.
    support::send(&one, Method::GET, url, &[]).await;
    origin.most_at_once();
    // The second process's request holds a placeholder; the first's goes alongside.
    overlapping(&two, &one, url).await;
    assert_eq!(origin.most_at_once(), 2);
}
