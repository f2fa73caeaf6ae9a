//! RFC 9111 shared-cache semantics (with RFC 9110 conditionals and RFC 5861 stale
//! serving), one scenario per rule, named after the section it covers. Every scenario runs
//! on MemoryBackend and on a real memcached through TcpBackend, over a scripted origin.
//!
//! Staleness is produced without sleeping: the origin sends an `Age` larger than its
//! `max-age`, which RFC 9111 §4.2.3 counts against freshness.

mod support;

use support::{Answer, Watch, assert_hit, assert_not_hit, assert_stale_hit, stores};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::{
    Backend, BackendError, CasOutcome, Item, Lifetime, MemoryBackend, ServerStats,
};
use tower_memcache::cache::CacheMode;
use tower_memcache::cache::{MemcacheLayer, OriginUnreachable, ResponseBody};

/// What the origin answers for one path.
#[derive(Clone, Default)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    /// Answer with an error (as a failed connection would).
    fail: bool,
    /// Mark the answer as a gateway's "origin unreachable".
    unreachable: bool,
    /// When the request's `If-None-Match` equals the `ETag` above: a 304 with these fields.
    not_modified: Option<Vec<(&'static str, String)>>,
    delay: Duration,
}

#[derive(Clone, Default)]
struct Origin {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    seen: Arc<Mutex<Vec<(Method, String, HeaderMap)>>>,
    calls: Arc<AtomicUsize>,
}

type OriginError = std::io::Error;

impl Origin {
    fn script(&self, path: &str, script: Script) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    fn ok(&self, path: &str, headers: &[(&'static str, &str)], body: &'static str) {
        self.script(
            path,
            Script {
                status: 200,
                headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
                body,
                ..Script::default()
            },
        );
    }

    fn update(&self, path: &str, change: impl FnOnce(&mut Script)) {
        change(self.scripts.lock().unwrap().get_mut(path).unwrap());
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> (Method, String, HeaderMap) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }

    async fn respond(self, request: Request<()>) -> Result<Response<Full<Bytes>>, OriginError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.uri().path().to_string();
        self.seen.lock().unwrap().push((
            request.method().clone(),
            path.clone(),
            request.headers().clone(),
        ));
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or(Script {
                status: 200,
                body: "unscripted",
                ..Script::default()
            });
        tokio::time::sleep(script.delay).await;
        if script.fail {
            return Err(std::io::Error::other("origin down"));
        }
        let etag = script
            .headers
            .iter()
            .find(|(n, _)| *n == "etag")
            .map(|(_, v)| v.clone());
        let matches = request
            .headers()
            .get("if-none-match")
            .is_some_and(|v| Some(v.to_str().unwrap().to_string()) == etag);
        let (status, headers, body) = match (&script.not_modified, matches) {
            (Some(fields), true) => (304, fields.clone(), String::new()),
            _ => (
                script.status,
                script.headers.clone(),
                format!("{} #{n}", script.body),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
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
        if script.unreachable {
            response.extensions_mut().insert(OriginUnreachable);
        }
        Ok(response)
    }
}

type Svc =
    tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, OriginError>;

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    let inner = tower::service_fn(move |request| origin.clone().respond(request));
    tower::util::BoxCloneService::new(tower::Layer::layer(layer, inner))
}

fn origin_layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("rfc")
        .mode(CacheMode::Origin)
}

async fn send(
    svc: &Svc,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, OriginError> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://test.local{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = svc.clone().oneshot(request.body(()).unwrap()).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    })
}

async fn get(svc: &Svc, path: &str) -> Answer {
    send(svc, Method::GET, path, &[]).await.unwrap()
}

async fn get_with(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(svc, Method::GET, path, headers).await.unwrap()
}

/// Whether the cache alone answers `path` (with `Accept: accept` unless empty).
async fn cached(svc: &Svc, path: &str, accept: &str) -> bool {
    let mut headers = vec![("cache-control", "only-if-cached")];
    if !accept.is_empty() {
        headers.push(("accept", accept));
    }
    get_with(svc, path, &headers).await.status == StatusCode::OK
}

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(at)
}

async fn rfc9111_4_2_1_explicit_freshness<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok("/max-age", &[("cache-control", "max-age=60")], "a");
    origin.ok(
        "/s-maxage",
        &[("cache-control", "max-age=60, s-maxage=0")],
        "b",
    );
    let (date, expires) = (http_date(0), http_date(60));
    origin.ok("/expires", &[("date", &date), ("expires", &expires)], "c");
    origin.ok("/expires-invalid", &[("expires", "0")], "d");
    origin.ok("/nothing", &[], "e");
    for path in ["/max-age", "/expires"] {
        get(&svc, path).await;
    }
    stores(&stats, 2).await;
    for path in ["/max-age", "/expires"] {
        assert_eq!(
            get(&svc, path).await.cache_status(),
            "tower-memcache; hit",
            "{path}"
        );
    }
    // s-maxage wins over max-age for a shared cache; an invalid Expires is already
    // expired; no freshness at all is never reused.
    for path in ["/s-maxage", "/expires-invalid", "/nothing"] {
        get(&svc, path).await;
        let again = get(&svc, path).await;
        assert_ne!(again.cache_status(), "tower-memcache; hit", "{path}");
    }
    assert_eq!(origin.calls(), 2 + 6);
}

async fn rfc9111_4_2_2_heuristic_freshness<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let (date, modified) = (http_date(0), http_date(-10 * 24 * 3600));
    origin.ok(
        "/old",
        &[("date", &date), ("last-modified", &modified)],
        "old",
    );
    get(&svc, "/old").await;
    stores(&stats, 1).await;
    assert_hit(get(&svc, "/old").await.cache_status());
    // Not for a status that is not heuristically cacheable.
    origin.script(
        "/created",
        Script {
            status: 302,
            headers: vec![
                ("last-modified", modified.clone()),
                ("location", "/old".into()),
            ],
            body: "moved",
            ..Script::default()
        },
    );
    let layer = origin_layer(MemoryBackend::new()).statuses([200, 302]);
    let svc = service(&layer, &origin);
    get(&svc, "/created").await;
    assert_not_hit(get(&svc, "/created").await.cache_status());
}

async fn rfc9111_4_2_3_age_counts_and_is_recomputed<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok(
        "/aged",
        &[("cache-control", "max-age=60"), ("age", "30")],
        "aged",
    );
    origin.ok(
        "/too-old",
        &[
            ("cache-control", "max-age=60"),
            ("age", "100"),
            ("etag", "\"1\""),
        ],
        "old",
    );
    get(&svc, "/aged").await;
    get(&svc, "/too-old").await;
    stores(&stats, 2).await;
    let hit = get(&svc, "/aged").await;
    assert_hit(hit.cache_status());
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((30..=32).contains(&age), "age {age}");
    // Already past its max-age when it arrived: revalidated, never a plain hit.
    let again = get(&svc, "/too-old").await;
    assert!(
        again.cache_status().contains("fwd=stale"),
        "{}",
        again.cache_status()
    );
}

async fn rfc9111_5_2_1_request_directives<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    // only-if-cached on a miss: 504, and the origin is not asked.
    let answer = get_with(&svc, "/r", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(), 0);
    origin.ok(
        "/r",
        &[
            ("cache-control", "max-age=60"),
            ("age", "20"),
            ("etag", "\"r1\""),
        ],
        "r",
    );
    // no-store: answered, not stored.
    get_with(&svc, "/r", &[("cache-control", "no-store")]).await;
    stats.settled().await;
    assert_eq!(stats.snapshot().stores, 0);
    get(&svc, "/r").await;
    stores(&stats, 1).await;
    let cached = get_with(&svc, "/r", &[("cache-control", "only-if-cached")]).await;
    assert_hit(cached.cache_status());
    // max-age younger than the entry, min-fresh beyond its freshness, no-cache and
    // Pragma: each goes to the origin (with the stored validator).
    let calls = origin.calls();
    for directive in [
        ("cache-control", "max-age=5"),
        ("cache-control", "min-fresh=50"),
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
    ] {
        let answer = get_with(&svc, "/r", &[directive]).await;
        // Each refresh replaces the entry the next lookup reads (by compare-and-swap).
        stats.settled().await;
        assert!(
            answer.cache_status().contains("fwd=request"),
            "{directive:?}: {}",
            answer.cache_status()
        );
        assert_eq!(origin.last_request().2["if-none-match"], "\"r1\"");
    }
    assert_eq!(origin.calls(), calls + 4);
    // Inside the limits: a hit.
    let ok = get_with(
        &svc,
        "/r",
        &[("cache-control", "max-age=100, min-fresh=10")],
    )
    .await;
    assert_hit(ok.cache_status());
    // max-stale accepts a stale entry without the origin.
    // (With a validator, so a stale entry is kept to be revalidated.)
    origin.ok(
        "/stale",
        &[
            ("cache-control", "max-age=10"),
            ("age", "15"),
            ("etag", "\"s\""),
        ],
        "s",
    );
    // One store for the first /r, one for each of the four revalidations.
    stores(&stats, 5).await;
    get(&svc, "/stale").await;
    stores(&stats, 6).await;
    let calls = origin.calls();
    let stale = get_with(&svc, "/stale", &[("cache-control", "max-stale=60")]).await;
    assert_stale_hit(stale.cache_status());
    assert_eq!(origin.calls(), calls);
    let too_stale = get_with(&svc, "/stale", &[("cache-control", "max-stale=1")]).await;
    assert_not_hit(too_stale.cache_status());
    assert_eq!(origin.calls(), calls + 1);
}

async fn rfc9111_5_2_2_response_directives<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok(
        "/fields",
        &[
            (
                "cache-control",
                "max-age=60, private=\"x-user\", no-cache=\"x-token\"",
            ),
            ("x-user", "alice"),
            ("x-token", "t"),
            ("x-public", "p"),
        ],
        "f",
    );
    origin.ok(
        "/no-cache",
        &[("cache-control", "no-cache"), ("etag", "\"n1\"")],
        "n",
    );
    origin.update("/no-cache", |s| {
        s.not_modified = Some(vec![("cache-control", "no-cache".into())])
    });
    origin.ok(
        "/no-cache-unvalidated",
        &[("cache-control", "no-cache")],
        "u",
    );
    origin.ok(
        "/understood",
        &[("cache-control", "no-store, must-understand, max-age=60")],
        "m",
    );
    origin.ok(
        "/unknown",
        &[(
            "cache-control",
            "max-age=60, x-future-directive=\"a,b\", no-transform",
        )],
        "x",
    );
    for path in [
        "/fields",
        "/no-cache",
        "/no-cache-unvalidated",
        "/understood",
        "/unknown",
    ] {
        let first = get(&svc, path).await;
        assert_eq!(first.status, StatusCode::OK, "{path}");
    }
    stores(&stats, 4).await;
    // private="x-user" and no-cache="x-token": stored without those fields.
    let hit = get(&svc, "/fields").await;
    assert_hit(hit.cache_status());
    assert_eq!(
        (
            hit.header("x-user"),
            hit.header("x-token"),
            hit.header("x-public")
        ),
        (None, None, Some("p"))
    );
    // no-cache: stored, but revalidated before every reuse.
    let calls = origin.calls();
    let revalidated = get(&svc, "/no-cache").await;
    assert_eq!(
        revalidated.cache_status(),
        "tower-memcache; fwd=stale; fwd-status=304"
    );
    assert_eq!(revalidated.body, "n #2", "body from the cache after a 304");
    assert_eq!(origin.calls(), calls + 1);
    // no-cache without a validator is not stored at all.
    assert!(
        !get(&svc, "/no-cache-unvalidated")
            .await
            .cache_status()
            .contains("hit")
    );
    // must-understand with an understood status overrides no-store; unknown directives
    // are ignored.
    assert_hit(get(&svc, "/understood").await.cache_status());
    assert_hit(get(&svc, "/unknown").await.cache_status());
}

async fn rfc9110_13_conditionals_answered_from_the_cache<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let modified = http_date(-3600);
    origin.ok(
        "/doc",
        &[
            ("cache-control", "max-age=60"),
            ("etag", "W/\"v1\""),
            ("last-modified", &modified),
            ("content-type", "text/plain"),
        ],
        "doc",
    );
    get(&svc, "/doc").await;
    stores(&stats, 1).await;
    let calls = origin.calls();
    let not_modified = get_with(&svc, "/doc", &[("if-none-match", "\"v0\", \"v1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.header("etag"), Some("W/\"v1\""));
    assert_eq!(not_modified.header("content-type"), None);
    assert!(not_modified.body.is_empty());
    let since = get_with(&svc, "/doc", &[("if-modified-since", &http_date(0))]).await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let changed = get_with(&svc, "/doc", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(
        (changed.status, changed.body.as_str()),
        (StatusCode::OK, "doc #1")
    );
    let older = get_with(&svc, "/doc", &[("if-modified-since", &http_date(-7200))]).await;
    assert_eq!(older.status, StatusCode::OK);
    // Two lines are a list of two dates, which a recipient ignores (§13.1.3): the page
    // in full, whichever line would have made a 304.
    let (now, before) = (http_date(0), http_date(-7200));
    let two = get_with(
        &svc,
        "/doc",
        &[("if-modified-since", &now), ("if-modified-since", &before)],
    )
    .await;
    assert_eq!((two.status, two.body.as_str()), (StatusCode::OK, "doc #1"));
    assert_eq!(origin.calls(), calls, "all answered from the cache");
    // If-Match is for the origin to judge.
    get_with(&svc, "/doc", &[("if-match", "\"v1\"")]).await;
    assert_eq!(origin.calls(), calls + 1);
    // Also while another request for the URL is at the origin: it is not answered with
    // that request's response either.
    origin.ok("/slow-doc", &[("cache-control", "max-age=60")], "slow");
    origin.update("/slow-doc", |s| s.delay = Duration::from_millis(100));
    let (_, judged) = tokio::join!(get(&svc, "/slow-doc"), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        get_with(&svc, "/slow-doc", &[("if-match", "\"other\"")]).await
    });
    assert_eq!(judged.body, "slow #4", "its own answer from the origin");
    assert!(
        !judged.cache_status().contains("collapsed"),
        "{}",
        judged.cache_status()
    );
}

async fn rfc9111_4_3_revalidation_refreshes_or_replaces<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok(
        "/v",
        &[
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"e1\""),
            ("x-version", "1"),
        ],
        "v",
    );
    origin.update("/v", |s| {
        s.not_modified = Some(vec![
            ("cache-control", "max-age=60".into()),
            ("x-version", "2".into()),
            ("content-length", "999".into()),
        ])
    });
    get(&svc, "/v").await;
    stores(&stats, 1).await;
    // §4.3.1: stale with a validator → conditional request; §4.3.4: the 304 refreshes the
    // stored headers and freshness; the body is not downloaded again.
    let refreshed = get(&svc, "/v").await;
    assert_eq!(origin.last_request().2["if-none-match"], "\"e1\"");
    assert_eq!(
        refreshed.cache_status(),
        "tower-memcache; fwd=stale; fwd-status=304"
    );
    assert_eq!(
        (refreshed.status, refreshed.body.as_str()),
        (StatusCode::OK, "v #1")
    );
    assert_eq!(refreshed.header("x-version"), Some("2"));
    stores(&stats, 2).await;
    let hit = get(&svc, "/v").await;
    assert_hit(hit.cache_status());
    assert_eq!(
        (hit.header("x-version"), hit.body.as_str()),
        (Some("2"), "v #1")
    );
    assert_eq!(
        hit.header("content-length"),
        None,
        "Content-Length is never taken from a 304"
    );
    assert_eq!(origin.calls(), 2);
    // A full response to the conditional request replaces the entry.
    origin.ok(
        "/w",
        &[
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"w1\""),
        ],
        "w",
    );
    get(&svc, "/w").await;
    stores(&stats, 3).await;
    origin.ok(
        "/w",
        &[("cache-control", "max-age=60"), ("etag", "\"w2\"")],
        "w-new",
    );
    let replaced = get(&svc, "/w").await;
    assert_eq!(replaced.body, "w-new #4");
    stores(&stats, 4).await;
    assert_eq!(get(&svc, "/w").await.body, "w-new #4");
    // A client's own conditional on a stale entry: the origin's 304 passes through and
    // refreshes the entry.
    origin.ok(
        "/c",
        &[
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"c1\""),
        ],
        "c",
    );
    origin.update("/c", |s| {
        s.not_modified = Some(vec![("cache-control", "max-age=60".into())])
    });
    get(&svc, "/c").await;
    stores(&stats, 5).await;
    let passed = get_with(&svc, "/c", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(passed.status, StatusCode::NOT_MODIFIED);
    stores(&stats, 6).await;
    assert_hit(get(&svc, "/c").await.cache_status());
}

async fn rfc9111_4_3_5_head_updates_the_get_entry<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok(
        "/h",
        &[
            ("cache-control", "max-age=10"),
            ("age", "20"),
            ("etag", "\"h1\""),
        ],
        "h",
    );
    get(&svc, "/h").await;
    stores(&stats, 1).await;
    // The representation changed: the HEAD's validator differs, so the stored GET
    // response must not be used any more.
    origin.ok(
        "/h",
        &[("cache-control", "max-age=60"), ("etag", "\"h2\"")],
        "h2",
    );
    let head = send(&svc, Method::HEAD, "/h", &[]).await.unwrap();
    assert_eq!(head.status, StatusCode::OK);
    let after = get_with(&svc, "/h", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(
        after.status,
        StatusCode::GATEWAY_TIMEOUT,
        "entry invalidated"
    );
    // Same validator: the HEAD refreshes the stored response's metadata.
    get(&svc, "/h").await;
    stores(&stats, 2).await;
    origin.ok(
        "/h",
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"h2\""),
            ("x-meta", "2"),
        ],
        "h2-new",
    );
    let head = send(&svc, Method::HEAD, "/h", &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    stores(&stats, 3).await;
    let hit = get(&svc, "/h").await;
    assert_hit(hit.cache_status());
    assert_eq!(
        (hit.header("x-meta"), hit.body.as_str()),
        (Some("2"), "h2 #3")
    );
}

async fn rfc5861_3_stale_while_revalidate<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok(
        "/swr",
        &[
            ("cache-control", "max-age=10, stale-while-revalidate=60"),
            ("age", "15"),
        ],
        "swr",
    );
    get(&svc, "/swr").await;
    stores(&stats, 1).await;
    origin.update("/swr", |s| {
        s.delay = Duration::from_millis(600);
        s.headers = vec![(
            "cache-control",
            "max-age=60, stale-while-revalidate=60".into(),
        )];
        s.body = "fresh";
    });
    // Served stale at once, while one background refresh runs.
    let started = Instant::now();
    let answers: Vec<Answer> =
        futures_util::future::join_all((0..5).map(|_| get(&svc, "/swr"))).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "stale answers waited for the origin"
    );
    for answer in &answers {
        assert_eq!(answer.body, "swr #1");
        assert_stale_hit(answer.cache_status());
    }
    stores(&stats, 2).await;
    assert_eq!(origin.calls(), 2, "one refresh for all five");
    let refreshed = get(&svc, "/swr").await;
    assert_eq!(
        (refreshed.cache_status(), refreshed.body.as_str()),
        ("tower-memcache; hit", "fresh #2")
    );
}

async fn rfc5861_4_stale_if_error<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for path in ["/sie-err", "/sie-500", "/sie-unreachable"] {
        origin.ok(
            path,
            &[
                ("cache-control", "max-age=10, stale-if-error=600"),
                ("age", "15"),
            ],
            "sie",
        );
        get(&svc, path).await;
    }
    stores(&stats, 3).await;
    origin.update("/sie-err", |s| s.fail = true);
    origin.update("/sie-500", |s| s.status = 500);
    origin.update("/sie-unreachable", |s| {
        s.status = 502;
        s.unreachable = true;
    });
    for (i, path) in ["/sie-err", "/sie-500", "/sie-unreachable"]
        .iter()
        .enumerate()
    {
        let answer = get(&svc, path).await;
        assert_eq!(
            (answer.status, answer.body.clone()),
            (StatusCode::OK, format!("sie #{}", i + 1)),
            "{path}"
        );
        assert!(
            answer.cache_status().ends_with("detail=stale-if-error"),
            "{path}: {}",
            answer.cache_status()
        );
    }
    // Outside the window (and no request window): the error passes.
    origin.ok(
        "/short",
        // The validator keeps the entry in memcached past its 1 s window (keep_stale),
        // so the request below can still widen the window.
        &[
            ("cache-control", "max-age=10, stale-if-error=1"),
            ("age", "15"),
            ("etag", "\"short\""),
        ],
        "short",
    );
    get(&svc, "/short").await;
    stores(&stats, 4).await;
    origin.update("/short", |s| s.status = 503);
    assert_eq!(
        get(&svc, "/short").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The request may widen it.
    let widened = get_with(&svc, "/short", &[("cache-control", "stale-if-error=600")]).await;
    assert_eq!(widened.status, StatusCode::OK);
}

async fn rfc9111_4_2_4_never_stale_when_forbidden<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for (path, cc) in [
        (
            "/must",
            "max-age=10, must-revalidate, stale-if-error=600, stale-while-revalidate=600",
        ),
        ("/proxy", "max-age=10, proxy-revalidate, stale-if-error=600"),
        ("/shared", "s-maxage=10, stale-if-error=600"),
    ] {
        origin.ok(
            path,
            &[("cache-control", cc), ("age", "15"), ("etag", "\"x\"")],
            "strict",
        );
        get(&svc, path).await;
    }
    stores(&stats, 3).await;
    for path in ["/must", "/proxy", "/shared"] {
        let stale = get_with(&svc, path, &[("cache-control", "max-stale")]).await;
        assert!(!stale.cache_status().contains("hit"), "{path}: never stale");
        origin.update(path, |s| s.fail = true);
        // An unreachable origin and an entry that must be revalidated: 504.
        let answer = get(&svc, path).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{path}");
        assert!(answer.cache_status().contains("detail=must-revalidate"));
        // A 500 from a reachable origin passes through.
        origin.update(path, |s| {
            s.fail = false;
            s.status = 500;
        });
        assert_eq!(
            get(&svc, path).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}

/// §4.2.4: a disconnected cache may serve stale, bounded by the operator
/// (`stale_if_unreachable`), unless the response forbids it; a 5xx from a reachable origin
/// is not "unreachable"; off by default.
async fn rfc9111_4_2_4_stale_when_the_origin_is_unreachable<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend.clone())
        .namespace("unreachable")
        .stale_if_unreachable(Some(Duration::from_secs(60)));
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let cases = [
        ("/plain", "max-age=10"),
        ("/old", "max-age=10"),
        ("/must", "max-age=10, must-revalidate"),
        ("/proxy", "max-age=10, proxy-revalidate"),
        ("/shared", "s-maxage=10"),
        ("/nocache", "no-cache"),
    ];
    for (path, cc) in cases {
        // Already 5 s stale when stored (`/old`: 100 s, past the 60 s bound).
        let age = if path == "/old" { "110" } else { "15" };
        origin.ok(
            path,
            &[("cache-control", cc), ("age", age), ("etag", "\"e\"")],
            "stored",
        );
        get(&svc, path).await;
    }
    stores(&stats, cases.len() as u64).await;
    for (path, _) in cases {
        origin.update(path, |s| s.fail = true);
    }
    let stale = get(&svc, "/plain").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(stale.body.starts_with("stored"));
    assert!(
        stale.cache_status().ends_with("detail=origin-unreachable"),
        "{}",
        stale.cache_status()
    );
    // A gateway's own "unreachable" answer counts too.
    origin.update("/plain", |s| {
        s.fail = false;
        s.status = 502;
        s.unreachable = true;
    });
    assert_eq!(get(&svc, "/plain").await.status, StatusCode::OK);
    // A request that asks for the origin does not get stale.
    let asked = get_with(&svc, "/plain", &[("cache-control", "no-cache")]).await;
    assert_eq!(asked.status, StatusCode::BAD_GATEWAY);
    // Past the bound: the error passes.
    let old = send(&svc, Method::GET, "/old", &[]).await;
    assert!(old.is_err(), "past the bound, the origin's failure passes");
    // Forbidden by the response: 504 (must-revalidate and its kin) or the failure.
    for path in ["/must", "/proxy", "/shared"] {
        let answer = get(&svc, path).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{path}");
    }
    assert!(
        send(&svc, Method::GET, "/nocache", &[]).await.is_err(),
        "no-cache: never stale"
    );
    // A 500 from a reachable origin is an answer, not a disconnection.
    origin.update("/plain", |s| {
        s.unreachable = false;
        s.status = 500;
    });
    assert_eq!(
        get(&svc, "/plain").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Off by default.
    let plain = origin_layer(backend).namespace("default");
    let plain_stats = Watch::of(&plain);
    let default_svc = service(&plain, &origin);
    origin.ok(
        "/d",
        &[
            ("cache-control", "max-age=10"),
            ("age", "15"),
            ("etag", "\"d\""),
        ],
        "d",
    );
    get(&default_svc, "/d").await;
    stores(&plain_stats, 1).await;
    origin.update("/d", |s| s.fail = true);
    assert!(send(&default_svc, Method::GET, "/d", &[]).await.is_err());
}

/// §7.3 permits a shared cache to store and replay `Set-Cookie`; this one does only when
/// the operator says so (`share_set_cookie`), never by default.
async fn rfc9111_7_3_set_cookie_is_replayed_only_when_the_operator_says<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.ok(
        "/consent",
        &[
            ("cache-control", "max-age=60"),
            ("set-cookie", "consent=v2"),
        ],
        "page",
    );
    origin.ok(
        "/kept-out",
        &[
            ("cache-control", "max-age=60, private=\"set-cookie\""),
            ("set-cookie", "sid=1"),
        ],
        "page",
    );
    for (namespace, share, store) in [("d", false, false), ("s", false, true), ("r", true, false)] {
        let layer = origin_layer(backend.clone())
            .namespace(namespace)
            .store_set_cookie(store)
            .share_set_cookie(share);
        let stats = Watch::of(&layer);
        let svc = service(&layer, &origin);
        let first = get(&svc, "/consent").await;
        assert_eq!(
            first.header("set-cookie"),
            Some("consent=v2"),
            "its own client"
        );
        get(&svc, "/kept-out").await;
        stats.settled().await;
        let again = get(&svc, "/consent").await;
        match (share, store) {
            (false, false) => assert_not_hit(again.cache_status()),
            (false, true) => {
                assert_hit(again.cache_status());
                assert_eq!(again.header("set-cookie"), None, "stored without it");
            }
            _ => {
                assert_hit(again.cache_status());
                assert_eq!(again.header("set-cookie"), Some("consent=v2"), "replayed");
            }
        }
        let kept_out = get(&svc, "/kept-out").await;
        if share {
            assert_hit(kept_out.cache_status());
        }
        assert_eq!(
            kept_out
                .header("set-cookie")
                .filter(|_| kept_out.cache_status().contains("hit")),
            None
        );
    }
}

async fn rfc9111_4_1_vary_variants_coexist<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    origin.ok(
        "/v",
        &[
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Encoding, accept-language"),
        ],
        "v",
    );
    let variants: [&[(&str, &str)]; 4] = [
        &[("accept-encoding", "gzip")],
        &[("accept-encoding", "br")],
        &[("accept-encoding", "gzip"), ("accept-language", "de")],
        &[],
    ];
    for headers in variants {
        get_with(&svc, "/v", headers).await;
    }
    stores(&stats, 4).await;
    for (i, headers) in variants.iter().enumerate() {
        let hit = get_with(&svc, "/v", headers).await;
        assert_eq!(hit.cache_status(), "tower-memcache; hit", "variant {i}");
        assert_eq!(hit.body, format!("v #{}", i + 1));
    }
    // White space and case of names do not matter; absent matches only absent.
    let spaced = get_with(&svc, "/v", &[("Accept-Encoding", "  gzip ")]).await;
    assert_eq!(spaced.body, "v #1");
    // Vary: * is never stored.
    origin.ok(
        "/star",
        &[("cache-control", "max-age=60"), ("vary", "*")],
        "star",
    );
    get(&svc, "/star").await;
    assert_not_hit(get(&svc, "/star").await.cache_status());
}

async fn rfc9111_4_4_unsafe_methods_invalidate<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for path in ["/a", "/b", "/c", "/d", "/v"] {
        origin.ok(
            path,
            &[("cache-control", "max-age=60"), ("vary", "accept")],
            "page",
        );
    }
    for path in ["/a", "/b", "/c", "/d"] {
        get(&svc, path).await;
    }
    get_with(&svc, "/v", &[("accept", "text/html")]).await;
    get_with(&svc, "/v", &[("accept", "application/json")]).await;
    stores(&stats, 6).await;
    let cached = |path: &'static str, accept: &'static str| cached(&svc, path, accept);
    // A failed POST invalidates nothing.
    origin.script(
        "/a",
        Script {
            status: 500,
            body: "no",
            ..Script::default()
        },
    );
    send(&svc, Method::POST, "/a", &[]).await.unwrap();
    assert!(cached("/a", "").await);
    // A successful POST invalidates its target; Location and Content-Location on the same
    // origin too, not on another.
    origin.script(
        "/a",
        Script {
            status: 201,
            headers: vec![
                ("location", "/b".into()),
                ("content-location", "http://test.local/c".into()),
            ],
            body: "created",
            ..Script::default()
        },
    );
    let post = send(&svc, Method::POST, "/a", &[]).await.unwrap();
    assert_eq!(post.cache_status(), "tower-memcache; fwd=method");
    assert!(!cached("/a", "").await && !cached("/b", "").await && !cached("/c", "").await);
    assert!(cached("/d", "").await);
    origin.script(
        "/d",
        Script {
            status: 200,
            headers: vec![("location", "http://elsewhere.example/d2".into())],
            body: "ok",
            ..Script::default()
        },
    );
    send(&svc, Method::PUT, "/d", &[]).await.unwrap();
    assert!(!cached("/d", "").await);
    // Every variant of a URL, by DELETE and by an unknown method.
    origin.script(
        "/v",
        Script {
            status: 204,
            ..Script::default()
        },
    );
    send(&svc, Method::from_bytes(b"REINDEX").unwrap(), "/v", &[])
        .await
        .unwrap();
    assert!(!cached("/v", "text/html").await && !cached("/v", "application/json").await);
    assert_eq!(
        origin.last_request().0.as_str(),
        "REINDEX",
        "unknown methods are forwarded"
    );
    // A GET that a framework runs as a DELETE (a method-override field, in any of its
    // spellings) invalidates as the DELETE would; one overridden to a safe method, or
    // failing, does not.
    for path in ["/e", "/f", "/g"] {
        origin.ok(path, &[("cache-control", "max-age=60")], "page");
        get(&svc, path).await;
    }
    stores(&stats, 9).await;
    send(
        &svc,
        Method::GET,
        "/e",
        &[("x-http-method-override", "HEAD")],
    )
    .await
    .unwrap();
    assert!(cached("/e", "").await, "overridden to a safe method");
    origin.script(
        "/e",
        Script {
            status: 404,
            ..Script::default()
        },
    );
    send(
        &svc,
        Method::GET,
        "/e",
        &[("x-http-method-override", "DELETE")],
    )
    .await
    .unwrap();
    assert!(
        cached("/e", "").await,
        "a failed override invalidates nothing"
    );
    for (path, field) in [
        ("/f", "X-HTTP-Method-Override"),
        ("/g", "X_Method_Override"),
    ] {
        origin.script(
            path,
            Script {
                status: 204,
                ..Script::default()
            },
        );
        send(&svc, Method::GET, path, &[(field, "DELETE")])
            .await
            .unwrap();
        assert!(!cached(path, "").await, "{field}: DELETE");
    }
}

async fn purge_handle_uri_namespace_all<B: Backend>(backend: B) {
    let origin = Origin::default();
    let one = origin_layer(backend.clone());
    let other = support::layer(backend.clone())
        .namespace("other")
        .mode(CacheMode::Origin);
    let (svc, other_svc) = (service(&one, &origin), service(&other, &origin));
    let (stats, other_stats) = (Watch::of(&one), Watch::of(&other));
    for path in ["/p1", "/p2"] {
        origin.ok(
            path,
            &[("cache-control", "max-age=60"), ("vary", "accept")],
            "p",
        );
        get_with(&svc, path, &[("accept", "a")]).await;
        get_with(&svc, path, &[("accept", "b")]).await;
    }
    get(&other_svc, "/p1").await;
    stores(&stats, 4).await;
    stores(&other_stats, 1).await;
    let purger = one.purger();
    purger.purge_uri("http://test.local/p1").await.unwrap();
    assert!(!cached(&svc, "/p1", "a").await && !cached(&svc, "/p1", "b").await);
    assert!(cached(&svc, "/p2", "a").await);
    assert!(purger.purge_uri("/relative").await.is_err());
    // A namespace purge leaves other namespaces alone.
    purger.purge_namespace().await.unwrap();
    assert!(!cached(&svc, "/p2", "a").await && !cached(&svc, "/p2", "b").await);
    assert!(cached(&other_svc, "/p1", "").await);
    // Entries stored after the purge are found again.
    get_with(&svc, "/p2", &[("accept", "a")]).await;
    stores(&stats, 5).await;
    assert!(cached(&svc, "/p2", "a").await);
    purger.purge_all().await.unwrap();
    assert!(!cached(&svc, "/p2", "a").await && !cached(&other_svc, "/p1", "").await);
    assert!(one.stats().snapshot().invalidations >= 2);
}

async fn tags_purge_across_processes<B: Backend>(backend: B) {
    let origin = Origin::default();
    // Two layers over one backend stand for two processes.
    let (first, second) = (origin_layer(backend.clone()), origin_layer(backend.clone()));
    let (svc1, svc2) = (service(&first, &origin), service(&second, &origin));
    origin.ok(
        "/news/1",
        &[
            ("cache-control", "max-age=60"),
            ("surrogate-key", "news article-1"),
        ],
        "n1",
    );
    origin.ok(
        "/news/2",
        &[
            ("cache-control", "max-age=60"),
            ("surrogate-key", "news, article-2"),
        ],
        "n2",
    );
    origin.ok(
        "/about",
        &[("cache-control", "max-age=60"), ("surrogate-key", "pages")],
        "about",
    );
    for path in ["/news/1", "/news/2", "/about"] {
        let answer = get(&svc1, path).await;
        assert_eq!(answer.header("surrogate-key"), None, "tag header removed");
    }
    stores(&Watch::of(&first), 3).await;
    for path in ["/news/1", "/news/2", "/about"] {
        assert_eq!(
            get(&svc2, path).await.cache_status(),
            "tower-memcache; hit",
            "{path}"
        );
    }
    second.purger().purge_tag("article-1").await.unwrap();
    assert_not_hit(get(&svc1, "/news/1").await.cache_status());
    assert_hit(get(&svc1, "/news/2").await.cache_status());
    first.purger().purge_tag("news").await.unwrap();
    assert_not_hit(get(&svc2, "/news/2").await.cache_status());
    assert_hit(get(&svc2, "/about").await.cache_status());
}

async fn leases_stop_stampedes_across_processes<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.ok("/hot", &[("cache-control", "max-age=60")], "hot");
    origin.update("/hot", |s| s.delay = Duration::from_millis(150));
    // Four layers over one backend stand for four processes; each has its own single
    // flight, so only the lease keeps them from all calling the origin.
    let layers: Vec<_> = (0..4)
        .map(|_| {
            origin_layer(backend.clone())
                .lease_wait(Duration::from_secs(3), Duration::from_millis(10))
        })
        .collect();
    let services: Vec<Svc> = layers.iter().map(|layer| service(layer, &origin)).collect();
    let answers =
        futures_util::future::join_all((0..40).map(|i| get(&services[i % services.len()], "/hot")))
            .await;
    for answer in &answers {
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "hot #1")
        );
    }
    assert_eq!(
        origin.calls(),
        1,
        "the origin ran once for 40 misses in 4 processes"
    );
    // Without leases, each process calls the origin.
    let origin = Origin::default();
    origin.ok("/hot", &[("cache-control", "max-age=60")], "hot");
    origin.update("/hot", |s| s.delay = Duration::from_millis(150));
    let services: Vec<Svc> = (0..4)
        .map(|_| {
            service(
                &origin_layer(backend.clone())
                    .namespace("nolease")
                    .lease(None),
                &origin,
            )
        })
        .collect();
    futures_util::future::join_all((0..40).map(|i| get(&services[i % services.len()], "/hot")))
        .await;
    // Each process calls the origin once, give or take a request that looked just before
    // another process's store landed and arrived after its own flight ended.
    let calls = origin.calls();
    assert!(
        (4..=8).contains(&calls),
        "{calls} origin calls without leases"
    );
}

async fn leases_are_released_when_nothing_is_stored<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.ok("/private", &[("cache-control", "no-store")], "p");
    let wait = Duration::from_secs(5);
    let layers: Vec<_> = (0..2)
        .map(|_| origin_layer(backend.clone()).lease_wait(wait, Duration::from_millis(10)))
        .collect();
    let services: Vec<Svc> = layers.iter().map(|layer| service(layer, &origin)).collect();
    // Misses that store nothing, one after the other, alternating processes: none waits
    // for an entry the previous one never stored.
    let started = Instant::now();
    for i in 0..6 {
        let answer = get(&services[i % 2], "/private").await;
        assert_eq!(answer.body, format!("p #{}", i + 1));
    }
    assert!(
        started.elapsed() < wait,
        "a miss waited on a lease whose holder stored nothing"
    );
    assert_eq!(origin.calls(), 6);
}

async fn routes_mode_keeps_the_safety_rules<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = support::layer(backend)
        .namespace("routes")
        .default_lifetime(Duration::from_secs(60));
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    // The route's lifetime wins over the origin's max-age=0 …
    origin.ok(
        "/r",
        &[("cache-control", "max-age=0"), ("etag", "\"r\"")],
        "r",
    );
    get(&svc, "/r").await;
    stores(&stats, 1).await;
    assert_hit(get(&svc, "/r").await.cache_status());
    // … but never over no-store, private, no-cache or a request's directives.
    origin.ok("/p", &[("cache-control", "private")], "p");
    get(&svc, "/p").await;
    assert_not_hit(get(&svc, "/p").await.cache_status());
    let forced = get_with(&svc, "/r", &[("cache-control", "no-cache")]).await;
    assert!(forced.cache_status().contains("fwd=request"));
    let conditional = get_with(&svc, "/r", &[("if-none-match", "\"r\"")]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
}

/// A backend whose lookups, after the first that misses, come back late: read at once,
/// then held until the key they missed has been stored, and 50 ms more (by then the
/// holder of the lease has released it). Stands for a reply overtaken by another
/// process's store.
#[derive(Clone)]
struct LateMisses {
    inner: MemoryBackend,
    misses: Arc<AtomicUsize>,
}

impl Backend for LateMisses {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
        let found = self.inner.get_many(keys).await?;
        let missed = keys.first().is_some_and(|key| !found.contains_key(*key));
        if missed && self.misses.fetch_add(1, Ordering::SeqCst) > 0 {
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.inner.get(keys[0]).await?.is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(found)
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.inner.set(key, value, flags, lifetime).await
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.inner.add(key, value, flags, lifetime).await
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        self.inner.cas(key, value, flags, lifetime, cas).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key).await
    }

    async fn touch(&self, key: &str, lifetime: Lifetime) -> Result<bool, BackendError> {
        self.inner.touch(key, lifetime).await
    }

    async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        self.inner.incr(key, delta).await
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        self.inner.flush_all().await
    }

    async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
        self.inner.stats().await
    }
}

/// A process waiting on another's lease must not take "the lease is gone" for "nothing was
/// stored" when its lookup was read before the store landed.
#[tokio::test]
async fn lease_waiters_see_an_entry_stored_while_their_lookup_was_in_flight() {
    let origin = Origin::default();
    origin.ok("/hot", &[("cache-control", "max-age=60")], "hot");
    origin.update("/hot", |s| s.delay = Duration::from_millis(100));
    let memory = MemoryBackend::new();
    let holder = service(&origin_layer(memory.clone()), &origin);
    let waiter = service(
        &origin_layer(LateMisses {
            inner: memory,
            misses: Arc::default(),
        })
        .lease_wait(Duration::from_secs(3), Duration::from_millis(10)),
        &origin,
    );
    let (first, second) = tokio::join!(get(&holder, "/hot"), async {
        // The holder has the lease once it is at the origin.
        let deadline = Instant::now() + Duration::from_secs(2);
        while origin.calls() == 0 {
            assert!(
                Instant::now() < deadline,
                "the first request never reached the origin"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        get(&waiter, "/hot").await
    });
    assert_eq!(first.body, "hot #1");
    assert_eq!(
        (second.body.as_str(), second.cache_status()),
        ("hot #1", "tower-memcache; fwd=uri-miss; collapsed")
    );
    assert_eq!(origin.calls(), 1);
}

/// RFC 9111 §4.4 with RFC 3986 §5.2.2: a `Location` spelled with dot segments
/// (`/x/../b`) names `/b`, where a client that follows it goes, and a target sent with
/// them as is (`POST /x/../c`) changes what the origin serves at `/c`. Both were
/// invalidated only as spelled, so `/b` and `/c` stayed cached.
async fn rfc9111_4_4_dot_segments_name_the_resolved_path<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = origin_layer(backend);
    let stats = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for path in ["/b", "/c"] {
        origin.ok(path, &[("cache-control", "max-age=60")], "page");
        get(&svc, path).await;
    }
    stores(&stats, 2).await;
    origin.script(
        "/a",
        Script {
            status: 201,
            headers: vec![("location", "/x/../b".into())],
            body: "created",
            ..Script::default()
        },
    );
    send(&svc, Method::POST, "/a", &[]).await.unwrap();
    assert!(!cached(&svc, "/b", "").await, "Location /x/../b names /b");
    assert!(cached(&svc, "/c", "").await);
    origin.script(
        "/x/../c",
        Script {
            status: 204,
            ..Script::default()
        },
    );
    send(&svc, Method::POST, "/x/../c", &[]).await.unwrap();
    assert_eq!(origin.last_request().0.as_str(), "POST");
    assert!(!cached(&svc, "/c", "").await, "POST /x/../c changes /c");
}

on_every_backend!(
    "rfc9111";
    rfc9111_4_2_4_stale_when_the_origin_is_unreachable,
    rfc9111_7_3_set_cookie_is_replayed_only_when_the_operator_says,
    rfc9111_4_2_1_explicit_freshness,
    rfc9111_4_2_2_heuristic_freshness,
    rfc9111_4_2_3_age_counts_and_is_recomputed,
    rfc9111_5_2_1_request_directives,
    rfc9111_5_2_2_response_directives,
    rfc9110_13_conditionals_answered_from_the_cache,
    rfc9111_4_3_revalidation_refreshes_or_replaces,
    rfc9111_4_3_5_head_updates_the_get_entry,
    rfc5861_3_stale_while_revalidate,
    rfc5861_4_stale_if_error,
    rfc9111_4_2_4_never_stale_when_forbidden,
    rfc9111_4_1_vary_variants_coexist,
    rfc9111_4_4_unsafe_methods_invalidate,
    rfc9111_4_4_dot_segments_name_the_resolved_path,
    purge_handle_uri_namespace_all,
    tags_purge_across_processes,
    leases_stop_stampedes_across_processes,
    leases_are_released_when_nothing_is_stored,
    routes_mode_keeps_the_safety_rules,
);
