//! Review BB: the request sent again after a 304 for another representation (RFC 9111
//! §4.3.4), and a targeted field with a mistyped member failing closed (RFC 9213 §2.1).
//! Each scenario runs over a small origin whose answers depend on the call number and the
//! request's fields, in origin mode (the reverse proxy's).

use crate::support;

use support::{Answer, Watch};

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode, ResponseBody};

/// The origin's answer to its `n`th call (from 1), given the request's fields.
type Answering =
    dyn Fn(usize, &HeaderMap) -> (u16, Vec<(&'static str, &'static str)>) + Send + Sync;

/// An origin that counts and records its calls.
#[derive(Clone)]
struct Origin {
    answering: Arc<Answering>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    methods: Arc<Mutex<Vec<Method>>>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn new(
        answering: impl Fn(usize, &HeaderMap) -> (u16, Vec<(&'static str, &'static str)>)
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            answering: Arc::new(answering),
            seen: Arc::default(),
            methods: Arc::default(),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn respond(&self, request: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.lock().unwrap().push(request.headers().clone());
        self.methods.lock().unwrap().push(request.method().clone());
        let (status, fields) = (self.answering)(n, request.headers());
        let body = if status == 304 {
            String::new()
        } else {
            format!("call #{n}")
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in fields {
            response
                .headers_mut()
                .append(name, HeaderValue::from_static(value));
        }
        Ok(response)
    }
}

type Svc =
    tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn service(layer: &MemcacheLayer<MemoryBackend>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request| std::future::ready(origin.respond(request)));
    tower::util::BoxCloneService::new(tower::Layer::layer(layer, inner))
}

async fn get(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> Answer {
    support::send(
        svc,
        Method::GET,
        &format!("http://review-bb.test{path}"),
        headers,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// d444992: the request sent again after a 304 for another representation
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// d230901: a targeted field with a mistyped member fails closed
// ---------------------------------------------------------------------------------------

fn cdn_layer() -> MemcacheLayer<MemoryBackend> {
    support::layer(MemoryBackend::new())
        .namespace("review-bb")
        .mode(CacheMode::Origin)
        .targeted_cache_control([CDN_CACHE_CONTROL])
}

/// RFC 9111 §3.5: a shared cache stores a response to a request with `Authorization` only
/// when `public`, `s-maxage` or `must-revalidate` say so. A ruling `CDN-Cache-Control`
/// with none of them does not allow it; failing closed beside its mistyped member must
/// not borrow `Cache-Control`'s `must-revalidate` as the permission it never gave (the
/// entry, stored, goes out to whoever the origin's 304 then confirms it for). The
/// targeted field's own `must-revalidate` still allows it.
#[tokio::test]
async fn cache_controls_must_revalidate_gives_a_mistyped_targeted_field_no_authenticated_sharing() {
    for (cdn, stored) in [
        ("max-age=\"60\"", false),
        ("max-age=\"60\", no-transform", false),
        ("max-age=\"60\", must-revalidate", true),
    ] {
        let origin = Origin::new(move |_, _| {
            (
                200,
                vec![
                    ("cache-control", "must-revalidate"),
                    ("cdn-cache-control", cdn),
                    ("etag", "\"a\""),
                ],
            )
        });
        let layer = cdn_layer();
        let watch = Watch::of(&layer);
        let svc = service(&layer, &origin);
        get(&svc, "/auth", &[("authorization", "Bearer alice")]).await;
        watch.settled().await;
        assert_eq!(watch.snapshot().stores == 1, stored, "{cdn:?}");
    }
}

/// RFC 9111 §5.2.2.3: `must-understand` lifts the `no-store` of the same directives. A
/// mistyped targeted field with `must-understand` gets `Cache-Control`'s `no-store` added
/// (fail closed), but that `Cache-Control` had no `must-understand` of its own: its
/// `no-store` stands, and the response is not stored.
#[tokio::test]
async fn a_targeted_must_understand_does_not_lift_cache_controls_no_store() {
    // Each response: this `Cache-Control` beside a mistyped targeted field with
    // `must-understand`.
    let serve = |cache_control: &'static str| {
        let origin = Origin::new(move |_, _| {
            (
                200,
                vec![
                    ("cache-control", cache_control),
                    (
                        "cdn-cache-control",
                        "must-understand, s-maxage=600, max-age=\"60\"",
                    ),
                ],
            )
        });
        let layer = cdn_layer();
        let watch = Watch::of(&layer);
        (service(&layer, &origin), watch)
    };
    let (svc, watch) = serve("no-store");
    get(&svc, "/mu", &[]).await;
    watch.settled().await;
    let second = get(&svc, "/mu", &[]).await;
    assert_eq!(second.body, "call #2", "{second:?}");
    assert_eq!(watch.snapshot().stores, 0);

    // `Cache-Control`'s own `must-understand` lifts its `no-store`: stored, for the
    // targeted field's lifetime.
    let (svc, watch) = serve("no-store, must-understand");
    get(&svc, "/mu", &[]).await;
    support::stores(&watch, 1).await;
    let second = get(&svc, "/mu", &[]).await;
    support::assert_hit(second.cache_status());
}

/// An origin that first serves `"v1"`, stale on arrival, then `"v2"`: a 200 to a request
/// without `If-None-Match`, and a 304 with `not_modified` (naming `"v2"`) to one with it.
fn redeployed(not_modified: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::new(move |n, request| match n {
        1 => (
            200,
            vec![
                ("cache-control", "max-age=1"),
                ("age", "5"),
                ("etag", "\"v1\""),
            ],
        ),
        _ if request.contains_key("if-none-match") => (304, not_modified.to_vec()),
        _ => (
            200,
            vec![("cache-control", "max-age=600"), ("etag", "\"v2\"")],
        ),
    })
}

/// Requests waiting on the revalidation of a stale entry when the origin answers it with a
/// 304 for another representation: the leader's client gets the answer to its request
/// sent again; those waiting are released and look again (the entry is gone), so none of
/// them gets the superseded body or a 502, and none costs the origin more than one call
/// beyond its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_revalidation_answered_for_another_representation_get_the_new_one() {
    let origin = redeployed(&[("cache-control", "max-age=600"), ("etag", "\"v2\"")]);
    let slow = origin.clone();
    let layer = support::layer(MemoryBackend::new())
        .namespace("review-bb")
        .mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let inner = tower::service_fn(move |request: Request<()>| {
        let slow = slow.clone();
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            slow.respond(request)
        }
    });
    let svc: Svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    assert_eq!(get(&svc, "/c", &[]).await.body, "call #1");
    support::stores(&watch, 1).await;

    let answers = futures_util::future::join_all((0..4).map(|_| get(&svc, "/c", &[]))).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_ne!(answer.body, "call #1", "{answer:?}");
        assert_eq!(answer.header("etag"), Some("\"v2\""), "{answer:?}");
    }
    watch.settled().await;
    let calls = origin.calls() - 1;
    assert!(
        calls <= 2 * answers.len(),
        "{calls} origin calls for {} requests",
        answers.len()
    );
    let seen = origin.seen.lock().unwrap().clone();
    let resent = seen
        .iter()
        .skip(1)
        .filter(|h| !h.contains_key("if-none-match"))
        .count();
    assert!(resent >= 1, "{seen:?}");
}

/// A HEAD whose revalidation of the stored GET response the origin answers with a 304 for
/// another representation: sent again as a HEAD (not as a GET, whose body would be read
/// for nothing), without the cache's validators, and counted once, as a revalidation.
#[tokio::test]
async fn a_head_answered_for_another_representation_is_sent_again_as_a_head_and_counted_once() {
    let origin = redeployed(&[("etag", "\"v2\"")]);
    let layer = support::layer(MemoryBackend::new())
        .namespace("review-bb")
        .mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    get(&svc, "/h", &[]).await;
    support::stores(&watch, 1).await;
    let head = support::send(&svc, Method::HEAD, "http://review-bb.test/h", &[]).await;
    assert_eq!(head.status, StatusCode::OK, "{head:?}");
    assert_eq!(head.header("etag"), Some("\"v2\""));
    assert_eq!(
        *origin.methods.lock().unwrap(),
        [Method::GET, Method::HEAD, Method::HEAD]
    );
    assert!(!origin.seen.lock().unwrap()[2].contains_key("if-none-match"));
    watch.settled().await;
    let stats = watch.snapshot();
    // The first GET's miss, and the HEAD: one revalidation, which the origin answered, so
    // a miss in the snapshot (each request once in hits, misses or bypasses; review WW).
    assert_eq!(
        (stats.misses, stats.revalidations, stats.hits),
        (2, 1, 0),
        "{stats:?}"
    );
}
