//! Review B: a hostile or sloppy origin, a hostile or broken memcached, and purges under
//! faults. Each test fails if the attack it describes works.

use crate::support;

use support::{Answer, Watch};

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

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
    support::send(svc, method, &format!("http://review-b.test{path}"), headers).await
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

#[cfg(feature = "tcp")]
mod rejoin {
    use super::*;
    use nix::sys::signal::Signal;

    use std::time::Instant;
    use support::Memcached;
    use tower_memcache::backend::TcpBackend;
    use tower_memcache::cache::NearCache;

    async fn until(what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready() {
            assert!(Instant::now() < deadline, "{what}: not within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A server that missed this process's purges while it was marked down is reset when it
    /// rejoins (its namespace generation deleted), so what it held is a miss. A near tier
    /// remembers that generation for a while (a sixteenth of `max_staleness`) to save
    /// reading it again; that memory must not vouch for the old content the reset
    /// orphaned: "for this process the rule holds as before".
    async fn purges_by_this_process_hold_when_a_server_rejoins(
        purge_by_tag: bool,
        with_near: bool,
    ) {
        let Some(servers) = (0..2)
            .map(|_| Memcached::start("review_b::rejoin"))
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let backend = TcpBackend::builder()
            .servers(servers.iter().map(Memcached::addr))
            .timeout(Duration::from_millis(100))
            .probe_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        // A long max_staleness: its generation window is then a few seconds.
        let near = NearCache::new(16 << 20, Duration::from_secs(60));
        let layer = MemcacheLayer::new(backend.clone())
            .namespace("rejoin")
            .mode(CacheMode::Origin);
        let layer = if with_near {
            layer.near_cache(near)
        } else {
            layer
        };
        let watch = Watch::of(&layer);
        let version = Arc::new(AtomicUsize::new(0));
        let origin = {
            let version = Arc::clone(&version);
            Origin::new(move |request, _| {
                let v = version.load(Ordering::SeqCst);
                (
                    200,
                    vec![
                        ("cache-control", s("max-age=600")),
                        ("surrogate-key", s("all")),
                    ],
                    format!("{} v{v}", request.uri().path()),
                )
            })
        };
        let svc = service(&layer, &origin);
        let paths: Vec<String> = (0..24).map(|i| format!("/p{i}")).collect();
        for path in &paths {
            send(&svc, Method::GET, path, &[]).await;
        }
        watch.settled().await;
        // Read every entry from memcached again (the near tier keeps only what a lookup
        // found fresh): the generations of both servers are now remembered.
        for path in &paths {
            let answer = send(&svc, Method::GET, path, &[]).await;
            assert_eq!(answer.body, format!("{path} v0"));
        }

        servers[0].signal(Signal::SIGSTOP);
        // A write every server must take marks the stopped one down (it runs that write
        // when it continues: the purges below are the ones it never sees).
        let unrelated = "http://review-b.test/unrelated";
        layer.purger().purge_uri(unrelated).await.unwrap();
        assert!(
            backend.is_server_down(0),
            "the stopped server is marked down"
        );
        version.store(1, Ordering::SeqCst);
        if purge_by_tag {
            layer.purger().purge_tag("all").await.unwrap();
        } else {
            for path in &paths {
                let url = format!("http://review-b.test{path}");
                layer.purger().purge_uri(&url).await.unwrap();
            }
        }
        assert!(
            backend.is_server_down(0),
            "the stopped server is marked down"
        );
        servers[0].signal(Signal::SIGCONT);
        until("the server is back", || !backend.is_server_down(0)).await;

        let mut old = Vec::new();
        for path in &paths {
            let answer = send(&svc, Method::GET, path, &[]).await;
            if answer.body != format!("{path} v1") {
                old.push((path.clone(), answer.cache_status().to_string(), answer.body));
            }
        }
        assert!(
            old.is_empty(),
            "purged by this process, served after the purge returned: {old:?}"
        );
    }

    #[tokio::test]
    async fn uri_purges_by_this_process_hold_when_a_server_rejoins_with_a_near_tier() {
        purges_by_this_process_hold_when_a_server_rejoins(false, true).await;
    }

    #[tokio::test]
    async fn uri_purges_hold_when_a_server_rejoins() {
        purges_by_this_process_hold_when_a_server_rejoins(false, false).await;
    }

    #[tokio::test]
    async fn tag_purges_hold_when_a_server_rejoins() {
        purges_by_this_process_hold_when_a_server_rejoins(true, false).await;
    }

    #[tokio::test]
    async fn tag_purges_by_this_process_hold_when_a_server_rejoins_with_a_near_tier() {
        purges_by_this_process_hold_when_a_server_rejoins(true, true).await;
    }
}
