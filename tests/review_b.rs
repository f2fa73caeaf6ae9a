//! Review B: a hostile or sloppy origin, a hostile or broken memcached, and purges under
//! faults. Each test fails if the attack it describes works.

mod support;

use support::{Answer, Watch};

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, MemcacheLayer, ResponseBody};

/// What the origin answers: a status, header lines and a body, chosen per request by the
/// test (the request's method, path and headers in).
type Script =
    dyn Fn(&Request<()>, usize) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

#[derive(Clone)]
struct Origin {
    script: Arc<Mutex<Arc<Script>>>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn new(
        script: impl Fn(&Request<()>, usize) -> (u16, Vec<(&'static str, String)>, String)
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            script: Arc::new(Mutex::new(Arc::new(script))),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn rescript(
        &self,
        script: impl Fn(&Request<()>, usize) -> (u16, Vec<(&'static str, String)>, String)
        + Send
        + Sync
        + 'static,
    ) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn respond(&self, request: Request<()>) -> Response<Full<Bytes>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let script = Arc::clone(&self.script.lock().unwrap());
        let (status, headers, body) = script(&request, n);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        response
    }
}

type Svc =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request: Request<()>| {
        let origin = origin.clone();
        async move { Ok::<_, Infallible>(origin.respond(request)) }
    });
    tower::util::BoxCloneSyncService::new(tower::Layer::layer(layer, inner))
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://review-b.test{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = svc
        .clone()
        .oneshot(request.body(()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn s(value: &str) -> String {
    value.to_string()
}

/// The layer's own fields (`x-memcache-lifetime`, `surrogate-key`) are instructions from
/// the origin to the layer, which README says it removes: none reaches a client, on any
/// path a response can take through the layer (stored, bypassed, an unsafe method, a
/// failed revalidation passed through, a HEAD that replaces a stored GET).
#[tokio::test]
async fn the_layers_own_fields_never_reach_a_client() {
    let origin = Origin::new(|request, n| {
        let own = vec![
            ("x-memcache-lifetime", s("600")),
            ("surrogate-key", s("secret-tag")),
            ("etag", format!("\"{n}\"")),
        ];
        let mut headers = own;
        let status = match request.uri().path() {
            // Fresh for a second, then revalidated: the revalidation fails.
            "/fails-later" if n > 1 => 503,
            "/fails-later" => {
                headers.push(("cache-control", s("max-age=1")));
                200
            }
            _ => 200,
        };
        (status, headers, format!("call {n}"))
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let own = ["x-memcache-lifetime", "surrogate-key"];
    let check = |answer: &Answer, what: &str| {
        for name in own {
            assert!(
                answer.headers.get(name).is_none(),
                "{what}: {name} reached the client: {:?}",
                answer.headers
            );
        }
    };

    // An unsafe method (bypass, with an invalidation).
    let answer = send(&svc, Method::POST, "/form", &[]).await;
    check(&answer, "POST");
    // A GET the cache does not look up (unkeyed input).
    let answer = send(
        &svc,
        Method::GET,
        "/x",
        &[("x-http-method-override", "GET")],
    )
    .await;
    check(&answer, "GET with a method override");
    // A GET with an origin-only precondition (not looked up).
    let answer = send(&svc, Method::GET, "/y", &[("if-match", "\"1\"")]).await;
    check(&answer, "GET with If-Match");
    // A miss, stored; then a hit.
    let answer = send(&svc, Method::GET, "/page", &[]).await;
    check(&answer, "miss");
    watch.settled().await;
    let answer = send(&svc, Method::GET, "/page", &[]).await;
    check(&answer, "hit");
    // A HEAD whose validators differ from the stored GET's: passed through.
    let answer = send(
        &svc,
        Method::HEAD,
        "/page",
        &[("cache-control", "no-cache")],
    )
    .await;
    check(&answer, "HEAD replacing the stored GET");
    // A revalidation the origin fails, passed through (no stale-if-error).
    send(&svc, Method::GET, "/fails-later", &[]).await;
    watch.settled().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = send(&svc, Method::GET, "/fails-later", &[]).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    check(&answer, "a failed revalidation");
    assert!(origin.calls() >= 6);
}
