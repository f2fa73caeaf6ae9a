//! RFC 9213 targeted cache-control (`CDN-Cache-Control`), one scenario per rule, named
//! after the section it covers. The layer scenarios run on MemoryBackend and on a real
//! memcached through TcpBackend, over a scripted origin; the last test drives the reverse
//! proxy example, where `CDN-Cache-Control` is obeyed by default.
//!
//! Staleness is produced without sleeping: the origin sends an `Age` larger than a
//! `max-age`, which RFC 9111 §4.2.3 counts against freshness.

mod support;

use support::proxy::start_proxy;
use support::{Answer, Watch, assert_hit, assert_not_hit, assert_stale_hit, stores};

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode, MemcacheLayer, ResponseBody};

/// What the origin answers for one path.
#[derive(Clone, Default)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Answer with an error (as a failed connection would).
    fail: bool,
    /// When the request's `If-None-Match` equals the `ETag` above: a 304 with these fields.
    not_modified: Option<Vec<(&'static str, String)>>,
}

#[derive(Clone, Default)]
struct Origin {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    calls: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    counter: Arc<AtomicUsize>,
}

type OriginError = std::io::Error;

impl Origin {
    fn ok(&self, path: &str, headers: &[(&'static str, &str)]) {
        let script = Script {
            status: 200,
            headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
            ..Script::default()
        };
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    fn update(&self, path: &str, change: impl FnOnce(&mut Script)) {
        change(self.scripts.lock().unwrap().get_mut(path).unwrap());
    }

    fn calls_to(&self, path: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(p, _)| p == path).count()
    }

    fn last_request(&self) -> (String, HeaderMap) {
        self.calls.lock().unwrap().last().cloned().unwrap()
    }

    async fn respond(self, request: Request<()>) -> Result<Response<Full<Bytes>>, OriginError> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.uri().path().to_string();
        self.calls
            .lock()
            .unwrap()
            .push((path.clone(), request.headers().clone()));
        let script = self.scripts.lock().unwrap().get(&path).cloned();
        let script = script.unwrap_or(Script {
            status: 200,
            ..Script::default()
        });
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
                format!("{path} #{n}"),
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

/// An origin-mode layer (as the reverse proxy runs) obeying `CDN-Cache-Control`.
fn cdn_layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("rfc9213")
        .mode(CacheMode::Origin)
        .targeted_cache_control([CDN_CACHE_CONTROL])
}

async fn send(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> Result<Answer, OriginError> {
    let mut request = Request::builder()
        .method(Method::GET)
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
    send(svc, path, &[]).await.unwrap()
}

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs.unsigned_abs())
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(at)
}

/// Requests every path twice (the second after the first's store finished) and returns
/// whether each second answer was a fresh hit.
async fn second_is_hit(svc: &Svc, watch: &Watch, paths: &[&str]) -> Vec<bool> {
    for path in paths {
        get(svc, path).await;
    }
    watch.settled().await;
    let mut hits = Vec::new();
    for path in paths {
        let answer = get(svc, path).await;
        hits.push(answer.cache_status() == support::HIT);
    }
    hits
}

/// §2.2: a valid targeted field rules storing and reuse instead of `Cache-Control` and
/// `Expires`: `private`, `no-cache`, `no-store` and `max-age=0` there win over a long
/// `Cache-Control: max-age` and a future `Expires`. The plain layer (no target list)
/// still follows `Cache-Control` for the same responses.
async fn rfc9213_2_2_targeted_directives_forbid_reuse<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (date, expires) = (http_date(0), http_date(10_000));
    let paths = ["/private", "/no-cache", "/no-store", "/max-age-0"];
    for (path, cdn) in paths
        .iter()
        .zip(["private", "no-cache", "no-store", "max-age=0"])
    {
        origin.ok(
            path,
            &[
                ("cache-control", "max-age=10000"),
                ("expires", &expires),
                ("date", &date),
                ("cdn-cache-control", cdn),
            ],
        );
    }
    let layer = cdn_layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    assert_eq!(
        second_is_hit(&svc, &watch, &paths).await,
        [false; 4],
        "{paths:?}"
    );
    for path in paths {
        assert_eq!(origin.calls_to(path), 2, "{path}");
    }
    // `no-store` and `private` were never stored at all (`only-if-cached` finds nothing);
    // nor was `no-cache` without a validator.
    for path in ["/private", "/no-store", "/no-cache"] {
        let only = send(&svc, path, &[("cache-control", "only-if-cached")]).await;
        assert_eq!(only.unwrap().status, StatusCode::GATEWAY_TIMEOUT, "{path}");
    }
    // The plain layer does not obey targeted fields: Cache-Control rules.
    let plain =
        support::layer(tower_memcache::backend::MemoryBackend::new()).mode(CacheMode::Origin);
    let plain_watch = Watch::of(&plain);
    let plain_svc = service(&plain, &origin);
    assert_eq!(
        second_is_hit(&plain_svc, &plain_watch, &paths).await,
        [true; 4]
    );
}

/// §2.2: the targeted field's freshness is preferred: a long targeted `max-age` next to a
/// short (or stale) `Cache-Control`, `Cache-Control: no-store`, or a past or invalid
/// `Expires` is reused; a short targeted `max-age` next to a long `Cache-Control` is not,
/// nor one that `Age` has used up.
async fn rfc9213_2_2_targeted_freshness_is_preferred<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (date, past, future) = (http_date(0), http_date(-10_000), http_date(10_000));
    let cdn = "cdn-cache-control";
    origin.ok(
        "/long-cdn",
        &[
            ("cache-control", "max-age=1"),
            ("age", "5"),
            (cdn, "max-age=3600"),
        ],
    );
    origin.ok(
        "/cc-no-store",
        &[("cache-control", "no-store"), (cdn, "max-age=10000")],
    );
    origin.ok(
        "/past-expires",
        &[("expires", &past), ("date", &date), (cdn, "max-age=3600")],
    );
    origin.ok(
        "/invalid-expires",
        &[("expires", "0"), ("date", &date), (cdn, "max-age=3600")],
    );
    // A year: past memcached's 30-day relative limit. (Lifetimes past 2^31 s are the
    // freshness edge cases' concern, not this field's.)
    origin.ok("/huge", &[(cdn, "max-age=31536000")]);
    origin.ok(
        "/extension",
        &[(cdn, "foobar, max-age=3600;x=1, none=\"a\"")],
    );
    origin.ok(
        "/short-cdn",
        &[
            ("cache-control", "max-age=3600"),
            ("age", "5"),
            (cdn, "max-age=1"),
        ],
    );
    origin.ok(
        "/aged",
        &[("date", &date), ("age", "7200"), (cdn, "max-age=3600")],
    );
    origin.ok(
        "/zero-future-expires",
        &[("expires", &future), ("date", &date), (cdn, "max-age=0")],
    );
    let layer = cdn_layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let reused = [
        "/long-cdn",
        "/cc-no-store",
        "/past-expires",
        "/invalid-expires",
        "/huge",
        "/extension",
    ];
    assert_eq!(
        second_is_hit(&svc, &watch, &reused).await,
        [true; 6],
        "{reused:?}"
    );
    let not_reused = ["/short-cdn", "/aged", "/zero-future-expires"];
    assert_eq!(
        second_is_hit(&svc, &watch, &not_reused).await,
        [false; 3],
        "{not_reused:?}"
    );
    // The hit's Age counts from the origin's.
    let hit = get(&svc, "/long-cdn").await;
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((5..=8).contains(&age), "age {age}");
}

/// §2.1: a targeted field that is not a valid RFC 8941 Dictionary, or that is empty, is
/// ignored: `Cache-Control` (and `Expires`) rule as if it were absent. A valid field
/// rules even when one of its directives has a value of the wrong type: that value is
/// not consumed, and a restrictive directive with one still restricts (fail closed).
async fn rfc9213_2_1_invalid_field_falls_back_to_cache_control<B: Backend>(backend: B) {
    let origin = Origin::default();
    let cdn = "cdn-cache-control";
    // Each would make the response reusable if it were obeyed; Cache-Control forbids it.
    let forbidden = [
        ("/unknown-type", "max-age=10000, &&&&&"),
        ("/upper-case", "MaX-aGe=10000"),
        ("/space-before", "max-age =10000"),
        ("/space-after", "max-age= 10000"),
        ("/trailing-comma", "max-age=10000,"),
    ];
    for (path, value) in forbidden {
        origin.ok(path, &[("cache-control", "no-store"), (cdn, value)]);
    }
    // Each would forbid reuse if it were obeyed; Cache-Control allows it.
    let allowed = [("/invalid-no-store", "no-store, &&"), ("/empty", "")];
    for (path, value) in allowed {
        origin.ok(path, &[("cache-control", "max-age=600"), (cdn, value)]);
    }
    // Valid fields with a mistyped member: they rule, the member is not consumed, and a
    // restrictive one still restricts, so none is reused on Cache-Control's word.
    let mistyped = [
        ("/wrong-type", "max-age=\"10000\""),
        ("/decimal", "max-age=10000.5"),
        ("/negative", "max-age=-1"),
        ("/token-fields", "max-age=600, no-cache=x-a"),
        ("/private-token", "max-age=600, private=yes"),
        ("/no-store-number", "max-age=600, no-store=1"),
    ];
    for (path, value) in mistyped {
        origin.ok(
            path,
            &[("cache-control", "public, max-age=600"), (cdn, value)],
        );
    }
    let layer = cdn_layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let paths: Vec<&str> = forbidden.iter().map(|(path, _)| *path).collect();
    assert_eq!(
        second_is_hit(&svc, &watch, &paths).await,
        vec![false; paths.len()],
        "{paths:?}"
    );
    let paths: Vec<&str> = allowed.iter().map(|(path, _)| *path).collect();
    assert_eq!(
        second_is_hit(&svc, &watch, &paths).await,
        vec![true; paths.len()],
        "{paths:?}"
    );
    let paths: Vec<&str> = mistyped.iter().map(|(path, _)| *path).collect();
    assert_eq!(
        second_is_hit(&svc, &watch, &paths).await,
        vec![false; paths.len()],
        "{paths:?}"
    );
    // A field with a mistyped member is the origin's mistake: Cache-Control's
    // restrictions apply beside it. Before, `private` here was set aside and the response,
    // with no lifetime left, stored with heuristic freshness (from `Last-Modified`) for
    // everyone.
    let old = http_date(-30 * 86_400);
    let restricted = [
        ("/private-heuristic", "private", "max-age=\"600\""),
        (
            "/no-store-lifetime",
            "no-store",
            "s-maxage=600, stale-if-error=\"1\"",
        ),
        ("/no-cache-lifetime", "no-cache", "max-age=600, public=1"),
        // No directive the layer knows: a misspelt key is as much a mistake.
        ("/misspelt", "private", "maxage=600"),
    ];
    for (path, cc, value) in restricted {
        origin.ok(
            path,
            &[("cache-control", cc), ("last-modified", &old), (cdn, value)],
        );
    }
    let paths: Vec<&str> = restricted.iter().map(|(path, ..)| *path).collect();
    assert_eq!(
        second_is_hit(&svc, &watch, &paths).await,
        vec![false; paths.len()],
        "{paths:?}"
    );
    // A valid member beside a mistyped one still counts, and `?0` is simply false.
    origin.ok(
        "/false-flag",
        &[
            ("cache-control", "no-store"),
            (cdn, "max-age=600, private=?0, x=\"1\""),
        ],
    );
    assert_eq!(second_is_hit(&svc, &watch, &["/false-flag"]).await, [true]);
    // An invalid field falls back to Expires too.
    let (date, expires) = (http_date(0), http_date(600));
    origin.ok(
        "/expires",
        &[
            ("expires", &expires),
            ("date", &date),
            (cdn, "max-age=1, &&"),
        ],
    );
    assert_eq!(second_is_hit(&svc, &watch, &["/expires"]).await, [true]);
}

/// §2.2: the target list's order is its precedence: the first field with a valid value
/// rules, an invalid one is skipped, and fields not on the list change nothing (and are
/// passed through).
async fn rfc9213_2_2_target_list_precedence<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (ours, cdn) = ("tower-memcache-cache-control", "cdn-cache-control");
    origin.ok("/ours-long", &[(ours, "max-age=3600"), (cdn, "no-store")]);
    origin.ok(
        "/ours-no-store",
        &[(ours, "no-store"), (cdn, "max-age=3600")],
    );
    origin.ok(
        "/ours-invalid",
        &[
            (ours, "max-age=1, &&"),
            (cdn, "max-age=3600"),
            ("cache-control", "no-store"),
        ],
    );
    origin.ok(
        "/other-field",
        &[
            ("cache-control", "max-age=3600"),
            ("other-cache-control", "no-store"),
        ],
    );
    let layer = support::layer(backend)
        .namespace("rfc9213")
        .mode(CacheMode::Origin)
        .targeted_cache_control([HeaderName::from_static(ours), CDN_CACHE_CONTROL]);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let paths = [
        "/ours-long",
        "/ours-no-store",
        "/ours-invalid",
        "/other-field",
    ];
    assert_eq!(
        second_is_hit(&svc, &watch, &paths).await,
        [true, false, true, true],
        "{paths:?}"
    );
    let hit = get(&svc, "/other-field").await;
    assert_eq!(hit.header("other-cache-control"), Some("no-store"));
    // A list with only the product's field ignores CDN-Cache-Control.
    let only_ours = support::layer(tower_memcache::backend::MemoryBackend::new())
        .mode(CacheMode::Origin)
        .targeted_cache_control([HeaderName::from_static(ours)]);
    let only_watch = Watch::of(&only_ours);
    let only_svc = service(&only_ours, &origin);
    origin.ok(
        "/cdn-only",
        &[("cache-control", "max-age=3600"), (cdn, "private")],
    );
    assert_eq!(
        second_is_hit(&only_svc, &only_watch, &["/cdn-only"]).await,
        [true]
    );
}

/// §2: targeted fields are response fields; a request's are never read. The response's
/// targeted field is stored and forwarded downstream unchanged (§3: CDN caches "will
/// typically forward this header"), on the miss and on the hit.
async fn rfc9213_2_request_fields_ignored_and_response_field_forwarded<B: Backend>(backend: B) {
    let origin = Origin::default();
    origin.ok(
        "/r",
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=600, stale-if-error=60"),
        ],
    );
    let layer = cdn_layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    let no_store = [("cdn-cache-control", "no-store")];
    let miss = send(&svc, "/r", &no_store).await.unwrap();
    stores(&watch, 1).await;
    for directives in ["no-cache", "max-age=0", "no-store"] {
        let answer = send(&svc, "/r", &[("cdn-cache-control", directives)])
            .await
            .unwrap();
        assert_hit(answer.cache_status());
        for name in ["cdn-cache-control", "cache-control"] {
            assert_eq!(answer.header(name), miss.header(name), "{name}");
        }
    }
    assert_eq!(
        miss.header("cdn-cache-control"),
        Some("max-age=600, stale-if-error=60")
    );
    assert_eq!(origin.calls_to("/r"), 1);
    // Nor does the layer send the client's targeted fields' meaning on to the origin as
    // its own: the request goes as it came.
    let (_, request) = origin.last_request();
    assert_eq!(request["cdn-cache-control"], "no-store");
}

/// §2.2 with RFC 9111 §4.3.4: a 304 that carries a new targeted field refreshes the
/// stored one, and the merged response's targeted field rules from then on.
async fn rfc9213_2_2_refresh_by_304_takes_the_new_targeted_field<B: Backend>(backend: B) {
    let origin = Origin::default();
    let cdn = "cdn-cache-control";
    for path in ["/longer", "/forbidden"] {
        origin.ok(
            path,
            &[
                ("cache-control", "max-age=1"),
                ("age", "5"),
                ("etag", "\"e1\""),
                (cdn, "max-age=1"),
            ],
        );
    }
    origin.update("/longer", |s| {
        s.not_modified = Some(vec![
            (cdn, "max-age=3600".into()),
            ("x-version", "2".into()),
        ]);
    });
    origin.update("/forbidden", |s| {
        s.not_modified = Some(vec![
            (cdn, "no-store".into()),
            ("cache-control", "max-age=3600".into()),
        ]);
    });
    let layer = cdn_layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for path in ["/longer", "/forbidden"] {
        get(&svc, path).await;
    }
    stores(&watch, 2).await;
    for path in ["/longer", "/forbidden"] {
        let refreshed = get(&svc, path).await;
        assert_eq!(
            refreshed.cache_status(),
            "tower-memcache; fwd=stale; fwd-status=304",
            "{path}"
        );
        assert_eq!(origin.last_request().1["if-none-match"], "\"e1\"");
    }
    watch.settled().await;
    // Stale by Cache-Control and by the age it arrived with, fresh by the new field.
    let hit = get(&svc, "/longer").await;
    assert_hit(hit.cache_status());
    assert_eq!(hit.header(cdn), Some("max-age=3600"));
    assert_eq!(hit.header("x-version"), Some("2"));
    // The new field forbids storing: the stale entry is gone, whatever Cache-Control says.
    let after = get(&svc, "/forbidden").await;
    assert_not_hit(after.cache_status());
    assert_eq!(origin.calls_to("/forbidden"), 3);
}

/// §2.2: the stale directives (`stale-while-revalidate`, `stale-if-error`) and
/// `must-revalidate` come from the targeted field too.
async fn rfc9213_2_2_stale_directives_come_from_the_targeted_field<B: Backend>(backend: B) {
    let origin = Origin::default();
    let cdn = "cdn-cache-control";
    origin.ok(
        "/swr",
        &[
            ("cache-control", "max-age=1"),
            ("age", "5"),
            (cdn, "max-age=1, stale-while-revalidate=600"),
        ],
    );
    origin.ok(
        "/sie",
        &[
            ("cache-control", "max-age=1, must-revalidate"),
            ("age", "5"),
            (cdn, "max-age=1, stale-if-error=600"),
        ],
    );
    origin.ok(
        "/must",
        &[
            ("cache-control", "max-age=1, stale-if-error=600"),
            ("age", "5"),
            ("etag", "\"m\""),
            (cdn, "max-age=1, must-revalidate"),
        ],
    );
    let layer = cdn_layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    for path in ["/swr", "/sie", "/must"] {
        get(&svc, path).await;
    }
    stores(&watch, 3).await;
    assert_stale_hit(get(&svc, "/swr").await.cache_status());
    watch.settled().await;
    origin.update("/sie", |s| s.fail = true);
    origin.update("/must", |s| s.fail = true);
    let stale = get(&svc, "/sie").await;
    assert_eq!(
        (stale.status, stale.body.as_str()),
        (StatusCode::OK, "/sie #2")
    );
    assert!(
        stale.cache_status().ends_with("detail=stale-if-error"),
        "{}",
        stale.cache_status()
    );
    // The origin's Cache-Control would allow stale-if-error; the targeted field says
    // must-revalidate: 504.
    let must = get(&svc, "/must").await;
    assert_eq!(must.status, StatusCode::GATEWAY_TIMEOUT);
}

/// §2.2 in the layer's default routes mode: lifetimes stay the routes', but the targeted
/// field's `private` / `no-store` still keep a response out of the cache, and its `public`
/// lets a response to an authenticated request be stored (RFC 9111 §3.5).
async fn rfc9213_2_2_storing_rules_hold_in_routes_mode<B: Backend>(backend: B) {
    let origin = Origin::default();
    let cdn = "cdn-cache-control";
    origin.ok("/private", &[(cdn, "private")]);
    origin.ok(
        "/no-store",
        &[(cdn, "no-store"), ("cache-control", "public")],
    );
    origin.ok("/plain", &[(cdn, "must-understand, none")]);
    origin.ok("/auth", &[(cdn, "public"), ("cache-control", "private")]);
    let layer = support::layer(backend)
        .namespace("rfc9213-routes")
        .targeted_cache_control([CDN_CACHE_CONTROL]);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &origin);
    assert_eq!(
        second_is_hit(&svc, &watch, &["/private", "/no-store", "/plain"]).await,
        [false, false, true]
    );
    let auth = [("authorization", "Bearer x")];
    send(&svc, "/auth", &auth).await.unwrap();
    stores(&watch, 2).await;
    assert_hit(get(&svc, "/auth").await.cache_status());
}

on_every_backend!(
    "rfc9213";
    rfc9213_2_2_targeted_directives_forbid_reuse,
    rfc9213_2_2_targeted_freshness_is_preferred,
    rfc9213_2_1_invalid_field_falls_back_to_cache_control,
    rfc9213_2_2_target_list_precedence,
    rfc9213_2_request_fields_ignored_and_response_field_forwarded,
    rfc9213_2_2_refresh_by_304_takes_the_new_targeted_field,
    rfc9213_2_2_stale_directives_come_from_the_targeted_field,
    rfc9213_2_2_storing_rules_hold_in_routes_mode,
);

/// An HTTP origin for the proxy: the response headers come from the query string
/// (`?h=name:value&h=…`, with `+` for a space), the body counts the calls.
async fn start_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut response = Response::new(Full::new(Bytes::from(format!("#{n}"))));
                    let query = request.uri().query().unwrap_or("").to_string();
                    for pair in query.split('&').filter_map(|p| p.strip_prefix("h=")) {
                        let pair = pair.replace('+', " ").replace("%22", "\"");
                        if let Some((name, value)) = pair.split_once(':') {
                            response.headers_mut().append(
                                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                                HeaderValue::from_str(value).unwrap(),
                            );
                        }
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, calls)
}

/// Whether the proxy at `addr` answers `path` as a fresh hit within `wait` (the first
/// request stores it in the background); the last answer's headers.
async fn proxy_reuses(addr: SocketAddr, path: &str, wait: Duration) -> (bool, HeaderMap) {
    use hyper_util::client::legacy::Client;
    let client: Client<_, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let deadline = Instant::now() + wait;
    loop {
        let uri = format!("http://{addr}{path}");
        let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        body.collect().await.unwrap();
        let status = parts.headers.get("cache-status");
        if status.is_some_and(|s| s.to_str().unwrap().ends_with("; hit")) {
            return (true, parts.headers);
        }
        if Instant::now() > deadline {
            return (false, parts.headers);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Long enough for a background store on a loaded machine.
const STORED: Duration = Duration::from_secs(3);
/// Long enough to show a store that should not happen (a slower one only hides it).
const NOT_STORED: Duration = Duration::from_millis(400);

/// §3: the reverse proxy is a cache on the origin's behalf, and obeys
/// `CDN-Cache-Control` by default (forwarding it); `--targeted-cache-control` changes the
/// list or turns it off.
#[tokio::test]
async fn rfc9213_3_reverse_proxy_obeys_cdn_cache_control_by_default() {
    let (origin, _calls) = start_origin().await;
    let private = "/private?h=cache-control:max-age=600&h=cdn-cache-control:private";
    let long = "/long?h=cache-control:max-age=1&h=age:5&h=cdn-cache-control:max-age=600";
    let ours = "/ours?h=cache-control:max-age=600&h=cdn-cache-control:max-age=600\
                &h=example-cache-control:no-store";
    let default = start_proxy(origin, &[]);
    let (reused, headers) = proxy_reuses(default.addr, private, NOT_STORED).await;
    assert!(!reused, "CDN private");
    assert_eq!(headers["cdn-cache-control"], "private", "forwarded");
    let (reused, headers) = proxy_reuses(default.addr, long, STORED).await;
    assert!(reused, "CDN max-age");
    assert_eq!(headers["cdn-cache-control"], "max-age=600", "forwarded");
    assert_eq!(headers["cache-control"], "max-age=1");
    assert!(
        proxy_reuses(default.addr, ours, STORED).await.0,
        "not on the list"
    );
    drop(default);

    let off = start_proxy(origin, &["--targeted-cache-control", "none"]);
    assert!(
        proxy_reuses(off.addr, private, STORED).await.0,
        "off: Cache-Control rules"
    );
    assert!(
        !proxy_reuses(off.addr, long, NOT_STORED).await.0,
        "off: stale by Cache-Control"
    );
    drop(off);

    let listed = start_proxy(
        origin,
        &["--targeted-cache-control=example-cache-control,cdn-cache-control"],
    );
    assert!(
        !proxy_reuses(listed.addr, ours, NOT_STORED).await.0,
        "first on the list"
    );
    assert!(
        !proxy_reuses(listed.addr, private, NOT_STORED).await.0,
        "second on the list"
    );
}
