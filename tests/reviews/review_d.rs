//! Review D: HTTP caching correctness at the edges, as an independent conformance suite
//! would probe it (cache-tests.fyi, RFC 9111, RFC 9110 §13, RFC 9211). Each scenario
//! runs on MemoryBackend, with a near tier, and on a real memcached, over a scripted
//! origin in origin mode (the reverse proxy's), and quotes the section it checks.

use crate::support;

use support::{Answer, Watch, assert_hit, assert_not_hit, stores};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, ResponseBody};

/// What the origin answers for one path: a status and header lines; with
/// `not_modified`, a conditional request (`If-None-Match` or `If-Modified-Since`) gets a
/// 304 with those fields instead. The body says which call answered.
#[derive(Clone)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    not_modified: Option<Vec<(&'static str, String)>>,
}

#[derive(Clone, Default)]
struct Origin {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<HeaderMap>>>,
    /// Every request's fields, in order.
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

fn owned(headers: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    headers.iter().map(|(n, v)| (*n, v.to_string())).collect()
}

impl Origin {
    fn answer(&self, path: &str, status: u16, headers: &[(&'static str, &str)]) {
        let script = Script {
            status,
            headers: owned(headers),
            not_modified: None,
        };
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    fn ok(&self, path: &str, headers: &[(&'static str, &str)]) {
        self.answer(path, 200, headers);
    }

    fn not_modified(&self, path: &str, headers: &[(&'static str, &str)]) {
        if let Some(script) = self.scripts.lock().unwrap().get_mut(path) {
            script.not_modified = Some(owned(headers));
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The fields of the `n`th request (from 1).
    fn request(&self, n: usize) -> HeaderMap {
        self.seen.lock().unwrap()[n - 1].clone()
    }

    fn last_request(&self) -> HeaderMap {
        self.last.lock().unwrap().clone().unwrap_or_default()
    }

    async fn respond(self, request: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        *self.last.lock().unwrap() = Some(request.headers().clone());
        self.seen.lock().unwrap().push(request.headers().clone());
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(request.uri().path())
            .cloned()
            .unwrap_or(Script {
                status: 200,
                headers: Vec::new(),
                not_modified: None,
            });
        let conditional = request.headers().contains_key("if-none-match")
            || request.headers().contains_key("if-modified-since");
        let (status, headers, body) = match script.not_modified {
            Some(fields) if conditional => (304, fields, String::new()),
            _ => (script.status, script.headers, format!("call #{n}")),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        Ok(response)
    }
}

type Infallible = std::convert::Infallible;

type Svc =
    tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

fn service_of<B: Backend>(layer: MemcacheLayer<B>, origin: &Origin) -> (Svc, Watch) {
    let layer = layer.namespace("review-d").mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let origin = origin.clone();
    let inner = tower::service_fn(move |request| origin.clone().respond(request));
    let svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    (svc, watch)
}

/// An origin-mode layer (the reverse proxy's) in front of `origin`.
fn service<B: Backend>(backend: B, origin: &Origin) -> (Svc, Watch) {
    service_of(support::layer(backend), origin)
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    support::send(svc, method, &format!("http://review-d.test{path}"), headers).await
}

async fn get_with(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(svc, Method::GET, path, headers).await
}

async fn get(svc: &Svc, path: &str) -> Answer {
    get_with(svc, path, &[]).await
}

/// `now + offset_secs` as an IMF-fixdate.
fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let offset = Duration::from_secs(offset_secs.unsigned_abs());
    let at = if offset_secs >= 0 {
        now + offset
    } else {
        now - offset
    };
    httpdate::fmt_http_date(at)
}

/// Fetches every path once, waits for the stores, and returns which of them a second
/// request finds fresh in the cache (the others are checked to reach the origin).
async fn reused(svc: &Svc, watch: &Watch, origin: &Origin, paths: &[&str]) -> Vec<String> {
    for path in paths {
        get(svc, path).await;
    }
    watch.settled().await;
    let before = origin.calls();
    let mut reused = Vec::new();
    for path in paths {
        let answer = get(svc, path).await;
        if answer.cache_status() == support::HIT {
            reused.push(path.to_string());
        }
    }
    assert_eq!(
        origin.calls() - before,
        paths.len() - reused.len(),
        "a request not answered fresh from the cache went to the origin"
    );
    reused
}

/// The members of a `Cache-Status` field as RFC 9211 §2 reads it (an RFC 8941 List whose
/// members are a String or Token naming a cache, with parameters): each cache's name and
/// its parameter names. Panics when the field is not such a list.
fn cache_status_members(value: &str) -> Vec<(String, Vec<String>)> {
    let list = sfv::Parser::new(value)
        .with_version(sfv::Version::Rfc8941)
        .parse_list::<sfv::List>()
        .unwrap_or_else(|error| panic!("Cache-Status {value:?} is no structured list: {error}"));
    list.iter()
        .map(|member| {
            let sfv::ListEntry::Item(item) = member else {
                panic!("{value:?}: an inner list is no cache")
            };
            let name = match (item.bare_item.as_token(), item.bare_item.as_string()) {
                (Some(token), _) => token.as_str().to_string(),
                (_, Some(string)) => string.as_str().to_string(),
                _ => panic!("{value:?}: a cache is named by a String or Token (RFC 9211 §2)"),
            };
            let params = item.params.keys().map(|k| k.as_str().to_string()).collect();
            (name, params)
        })
        .collect()
}

/// RFC 9211 §2: "Its value is a List" whose members are "a String or Token"; §2.1-§2.8
/// give each parameter's type (`hit`, `stored`, `collapsed` Boolean; `fwd` Token;
/// `fwd-status`, `ttl` Integer; `detail` String or Token). Every outcome the layer can
/// say parses as such, whatever path produced it.
async fn rfc9211_2_every_outcome_is_a_structured_list<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    origin.ok("/a", &[("cache-control", "max-age=60")]);
    origin.ok(
        "/stale",
        &[
            ("cache-control", "max-age=1, stale-if-error=600"),
            ("age", "5"),
            ("etag", "\"s1\""),
        ],
    );
    origin.not_modified(
        "/stale",
        &[
            ("cache-control", "max-age=1, stale-if-error=600"),
            ("age", "5"),
        ],
    );
    origin.ok(
        "/vary",
        &[("cache-control", "max-age=60"), ("vary", "accept-language")],
    );
    let mut seen = Vec::new();
    let mut look = |answer: Answer| {
        let value = answer.header("cache-status").unwrap_or("").to_string();
        seen.push(value);
    };
    look(get(&svc, "/a").await); // fwd=uri-miss; stored
    watch.settled().await;
    look(get(&svc, "/a").await); // hit
    look(get_with(&svc, "/a", &[("cache-control", "no-cache")]).await); // fwd=request
    look(send(&svc, Method::POST, "/a", &[]).await); // fwd=method
    look(get_with(&svc, "/a", &[("x-http-method-override", "GET")]).await); // fwd=bypass
    look(get_with(&svc, "/vary", &[("accept-language", "en")]).await);
    watch.settled().await;
    look(get_with(&svc, "/vary", &[("accept-language", "de")]).await); // fwd=vary-miss
    look(get(&svc, "/stale").await);
    watch.settled().await;
    look(get(&svc, "/stale").await); // fwd=stale; fwd-status=304
    watch.settled().await;
    look(get_with(&svc, "/stale", &[("cache-control", "max-stale")]).await); // hit; ttl=-N
    look(get_with(&svc, "/none", &[("cache-control", "only-if-cached")]).await);
    origin.answer("/stale", 503, &[]);
    look(get(&svc, "/stale").await); // hit; ttl=-N; detail=stale-if-error
    watch.settled().await;
    for value in &seen {
        let members = cache_status_members(value);
        assert_eq!(members.len(), 1, "{value:?}");
        assert_eq!(members[0].0, "tower-memcache", "{value:?}");
    }
    let all = seen.join(" | ");
    for said in [
        "fwd=uri-miss; stored",
        "fwd=request",
        "fwd=method",
        "fwd=bypass",
        "fwd=vary-miss",
        "fwd=stale; fwd-status=304",
        "; hit; ttl=-",
        "detail=only-if-cached",
        "detail=stale-if-error",
    ] {
        assert!(all.contains(said), "{said} never said: {all}");
    }
}

/// RFC 9211 §2: "this identifier MUST be a String or Token. Depending on the deployment,
/// this might be a product or service name (e.g., "ExampleCache" or "Example CDN")". A
/// name that is no Token (a space, a leading digit) goes out as a String, never as bare
/// text a parser rejects.
#[tokio::test]
async fn rfc9211_2_a_cache_name_that_is_no_token_is_a_string() {
    for name in [
        "Example CDN",
        "3rd-tier",
        "edge \"eu\"",
        "cache.example.com:443",
    ] {
        let origin = Origin::default();
        origin.ok("/a", &[("cache-control", "max-age=60")]);
        let layer = MemcacheLayer::new(MemoryBackend::new()).cache_status_name(name);
        let (svc, watch) = service_of(layer, &origin);
        let miss = get(&svc, "/a").await;
        watch.settled().await;
        let hit = get(&svc, "/a").await;
        for answer in [miss, hit] {
            let value = answer.header("cache-status").unwrap_or("");
            let members = cache_status_members(value);
            assert_eq!(members.len(), 1, "{value:?}");
            assert_eq!(members[0].0, name, "{value:?}");
        }
    }
}

/// RFC 9211 §2: "The first member represents the cache closest to the origin server, and
/// the last member represents the cache closest to the user … When adding a value to the
/// Cache-Status header field, caches SHOULD preserve the existing field value". An
/// origin-side cache's member stays, first, and the layer's follows, on the miss that
/// stores the response and on the hits it later answers (§3's two-layer example:
/// `OriginCache; hit; ttl=1100, "CDN Company Here"; hit; ttl=545`).
async fn rfc9211_2_members_from_upstream_are_kept_and_ours_is_last<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    origin.ok(
        "/a",
        &[
            ("cache-control", "max-age=60"),
            ("cache-status", "OriginCache; hit; ttl=1100"),
            ("etag", "\"a1\""),
        ],
    );
    let miss = get(&svc, "/a").await;
    stores(&watch, 1).await;
    let hit = get(&svc, "/a").await;
    assert_hit(
        hit.header("cache-status")
            .unwrap_or("")
            .rsplit(", ")
            .next()
            .map(support::as_seen)
            .unwrap_or(""),
    );
    for (answer, ours) in [(miss, "fwd"), (hit, "hit")] {
        let value = answer.header("cache-status").unwrap_or("");
        let members = cache_status_members(value);
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["OriginCache", "tower-memcache"], "{value:?}");
        assert_eq!(members[0].1, ["hit", "ttl"], "{value:?}");
        assert_eq!(members[1].1.first().map(String::as_str), Some(ours));
    }
    // Not for a response the cache generates itself: §2 "SHOULD NOT append a member to
    // responses that it generates locally" applies to its 304s only through the stored
    // response they are based on, which keeps its members out of the 304's fields.
    let not_modified = get_with(&svc, "/a", &[("if-none-match", "\"a1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    let members = cache_status_members(not_modified.header("cache-status").unwrap_or(""));
    assert_eq!(
        members.last().map(|(n, _)| n.as_str()),
        Some("tower-memcache")
    );
}

/// RFC 9111 §4.3.4: "If the new response contains a strong validator …, then that strong
/// validator identifies the selected representation for update. … If none of the stored
/// responses contain the same strong validator, then the cache MUST NOT use the new
/// response to update any stored responses." A 304 to the cache's own `If-None-Match:
/// "v1"` that names `ETag: "v2"` must not relabel the stored body of "v1" as "v2" (every
/// later client revalidating "v2" would then keep the wrong body).
async fn rfc9111_4_3_4_a_304_for_another_strong_validator_updates_nothing<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    origin.ok(
        "/v",
        &[
            ("cache-control", "max-age=1"),
            ("age", "5"),
            ("etag", "\"v1\""),
            ("x-version", "1"),
        ],
    );
    origin.not_modified(
        "/v",
        &[
            ("cache-control", "max-age=600"),
            ("etag", "\"v2\""),
            ("x-version", "2"),
        ],
    );
    let first = get(&svc, "/v").await;
    stores(&watch, 1).await;
    let revalidated = get(&svc, "/v").await;
    assert_eq!(
        origin.request(2)["if-none-match"],
        "\"v1\"",
        "the cache revalidates its own entry"
    );
    assert_eq!(
        revalidated.status,
        StatusCode::OK,
        "a client that asked without conditions gets no 304, and no body under a wrong tag"
    );
    assert_sent_again(&origin, &revalidated, "if-none-match");
    watch.settled().await;
    let counted = watch.snapshot();
    assert_eq!(
        (counted.mismatched_not_modified, counted.revalidations),
        (1, 1),
        "counted for the operator, once: {counted:?}"
    );
    let later = get(&svc, "/v").await;
    assert_ne!(later.body, first.body, "the superseded entry is not reused");
    assert_eq!(
        watch.snapshot().mismatched_not_modified,
        1,
        "a fill is no mismatch"
    );
    for answer in [&revalidated, &later] {
        let mixed = answer.body == first.body && answer.header("etag") == Some("\"v2\"");
        assert!(
            !mixed,
            "the body of \"v1\" went out as \"v2\": {:?} {}",
            answer.headers, answer.body
        );
    }
}

/// After a 304 that named another representation: the client's request went to the
/// origin a third time, as the client sent it (without the cache's `validator`), and its
/// answer is what the client got.
fn assert_sent_again(origin: &Origin, answer: &Answer, validator: &str) {
    assert_eq!(
        origin.calls(),
        3,
        "the first fill, the revalidation, once more"
    );
    assert!(
        !origin.last_request().contains_key(validator),
        "sent again without the cache's validator: {:?}",
        origin.last_request()
    );
    assert_eq!(answer.body, "call #3", "the origin's whole answer");
    assert!(
        answer.cache_status().contains("fwd=stale")
            && answer.cache_status().contains("fwd-status=200"),
        "{}",
        answer.cache_status()
    );
}

/// The two cases where a 304 for another representation still ends in a 502: the origin
/// answers 304 even to the request sent again without conditions (an invalid answer to
/// it), and the inner service's request body is a type the layer cannot make (so it
/// cannot send the request again). Either way the client gets no stored body, and the
/// superseded entry is gone.
#[tokio::test]
async fn rfc9111_4_3_4_a_304_for_another_representation_is_a_502_when_it_cannot_be_sent_again() {
    /// A request body type the layer cannot make without `own_request_body`.
    struct Opaque;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    // Stores "v1", then answers 304 naming "v2", to every request.
    let respond = move |_: &HeaderMap| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        let (status, etag) = if n == 0 {
            (200, "\"v1\"")
        } else {
            (304, "\"v2\"")
        };
        let mut response = Response::new(Full::new(Bytes::from(format!("call #{}", n + 1))));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        let headers = response.headers_mut();
        headers.insert("cache-control", HeaderValue::from_static("max-age=1"));
        headers.insert("age", HeaderValue::from_static("5"));
        headers.insert("etag", HeaderValue::from_static(etag));
        Ok::<_, Infallible>(response)
    };
    let layer = MemcacheLayer::new(MemoryBackend::new())
        .namespace("review-d")
        .mode(CacheMode::Origin);

    // The origin that answers 304 to anything once it has a body stored.
    let always = respond.clone();
    let svc = tower::Layer::layer(
        &layer,
        tower::service_fn(move |request: Request<()>| {
            std::future::ready(always(request.headers()))
        }),
    );
    let answer = support::send(&svc, Method::GET, "http://review-d.test/a", &[]).await;
    assert_eq!(answer.body, "call #1");
    layer.background().idle().await;
    let answer = support::send(&svc, Method::GET, "http://review-d.test/a", &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "sent again once, then given up"
    );
    assert!(
        answer.cache_status().contains("fwd-status=304"),
        "{answer:?}"
    );

    // A request body the layer cannot make: not sent again.
    calls.store(0, Ordering::SeqCst);
    let svc = tower::Layer::layer(
        &layer,
        tower::service_fn(move |request: Request<Opaque>| {
            std::future::ready(respond(request.headers()))
        }),
    );
    let opaque_get = || Request::get("http://review-d.test/b").body(Opaque).unwrap();
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let first = svc.clone().oneshot(opaque_get()).await.unwrap();
    assert_eq!(
        first.into_body().collect().await.unwrap().to_bytes(),
        "call #1"
    );
    layer.background().idle().await;
    let second = svc.clone().oneshot(opaque_get()).await.unwrap();
    assert_eq!(second.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not sent again");
    layer.background().idle().await;
    let third = svc.oneshot(opaque_get()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the superseded entry is gone"
    );
    assert_ne!(
        third.into_body().collect().await.unwrap().to_bytes(),
        "call #1"
    );
}

/// The same 304 to a background refresh (RFC 5861 `stale-while-revalidate`): the client
/// was served the stale entry already, so the superseded entry is removed and nothing is
/// sent again (nobody would read the answer); the next request fetches the whole.
async fn rfc9111_4_3_4_a_304_for_another_representation_to_a_background_refresh<B: Backend>(
    backend: B,
) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    origin.ok(
        "/swr",
        &[
            ("cache-control", "max-age=1, stale-while-revalidate=600"),
            ("age", "5"),
            ("etag", "\"v1\""),
        ],
    );
    origin.not_modified("/swr", &[("etag", "\"v2\"")]);
    let first = get(&svc, "/swr").await;
    stores(&watch, 1).await;
    let stale = get(&svc, "/swr").await;
    assert_eq!(stale.body, first.body, "served stale while it refreshes");
    watch.settled().await;
    assert_eq!(origin.calls(), 2, "the refresh, and nothing sent again");
    assert_eq!(origin.request(2)["if-none-match"], "\"v1\"");
    assert_eq!(
        watch.snapshot().mismatched_not_modified,
        1,
        "a background refresh's mismatch counts too"
    );
    let later = get(&svc, "/swr").await;
    assert_eq!(origin.calls(), 3, "the superseded entry is gone");
    assert_eq!(later.body, "call #3");
}

/// RFC 9111 §4.3.4 again, for a 304 without `ETag`: its `Last-Modified` is the validator
/// that selects, and one other than the stored response's (to the cache's own
/// `If-Modified-Since`) names another representation. The stored body must not go out
/// under the new date and lifetime.
async fn rfc9111_4_3_4_a_304_for_another_last_modified_updates_nothing<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let (stored_date, newer_date) = (http_date(-7200), http_date(-60));
    origin.ok(
        "/lm",
        &[
            ("cache-control", "max-age=1"),
            ("age", "5"),
            ("last-modified", &stored_date),
            ("x-version", "1"),
        ],
    );
    origin.not_modified(
        "/lm",
        &[
            ("cache-control", "max-age=600"),
            ("last-modified", &newer_date),
            ("x-version", "2"),
        ],
    );
    let first = get(&svc, "/lm").await;
    stores(&watch, 1).await;
    let revalidated = get(&svc, "/lm").await;
    assert_eq!(
        origin.request(2)["if-modified-since"],
        stored_date,
        "the cache revalidates its own entry"
    );
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_sent_again(&origin, &revalidated, "if-modified-since");
    watch.settled().await;
    let later = get(&svc, "/lm").await;
    assert_ne!(later.body, first.body, "the superseded entry is not reused");
    for answer in [&revalidated, &later] {
        let mixed = answer.body == first.body
            && answer.header("last-modified") == Some(newer_date.as_str());
        assert!(
            !mixed,
            "the stored body went out under the new date: {:?} {}",
            answer.headers, answer.body
        );
    }
}

/// A path, the origin's header lines for it, and whether it is reused fresh.
type Case<'a> = (&'a str, Vec<(&'static str, &'a str)>, bool);

/// `Cache-Control` and freshness parsing edges (RFC 9111 §1.2.2, §4.2.1, §4.2.3, §5.2,
/// §5.2.2.10; cache-tests.fyi `cc-parse`, `cc-freshness`). Reused: directive names in
/// any case (§5.2 "case-insensitive"), a quoted argument (§5.2 "recipients ought to
/// accept both forms"), leading zeros, `s-maxage` over `max-age=0` for a shared cache,
/// `max-age` over an invalid or past `Expires` (§5.3 "MUST ignore the Expires"), a `Date`
/// in the future (apparent age clamps at 0), `no-store` inside another directive's
/// quoted string. Not reused: a negative, decimal or single-quoted `max-age` (§1.2.2,
/// §4.2.1: invalid means stale), `max-age` only inside a quoted string, an `Age` or a
/// `Date` already past the lifetime (§4.2.3), heuristics when `Expires` is present
/// (§4.2.2 "only … when there is no explicit expiration time").
async fn rfc9111_5_2_cache_control_and_freshness_parsing<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let (now, hour_ago, in_an_hour) = (http_date(0), http_date(-3600), http_date(3600));
    let old = http_date(-30 * 86_400);
    let cases: [Case; 16] = [
        (
            "/upper",
            vec![("cache-control", "PUBLIC, MAX-AGE=600")],
            true,
        ),
        ("/quoted", vec![("cache-control", "max-age=\"600\"")], true),
        ("/zeros", vec![("cache-control", "max-age=000600")], true),
        (
            "/s-maxage",
            vec![("cache-control", "max-age=0, s-maxage=600")],
            true,
        ),
        (
            "/expires-0",
            vec![("cache-control", "max-age=600"), ("expires", "0")],
            true,
        ),
        (
            "/expires-past",
            vec![("cache-control", "max-age=600"), ("expires", &hour_ago)],
            true,
        ),
        (
            "/date-future",
            vec![("cache-control", "max-age=600"), ("date", &in_an_hour)],
            true,
        ),
        (
            "/quoted-no-store",
            vec![("cache-control", "x-note=\"no-store, private\", max-age=600")],
            true,
        ),
        ("/negative", vec![("cache-control", "max-age=-1")], false),
        ("/decimal", vec![("cache-control", "max-age=600.5")], false),
        (
            "/single-quoted",
            vec![("cache-control", "max-age='600'")],
            false,
        ),
        (
            "/only-quoted",
            vec![("cache-control", "x-note=\"max-age=600\""), ("date", &now)],
            false,
        ),
        (
            "/age-past",
            vec![("cache-control", "max-age=600"), ("age", "601")],
            false,
        ),
        (
            "/date-past",
            vec![("cache-control", "max-age=600"), ("date", &hour_ago)],
            false,
        ),
        (
            "/expires-invalid-heuristic",
            vec![("expires", "soon"), ("last-modified", &old), ("date", &now)],
            false,
        ),
        (
            "/s-maxage-zero",
            vec![("cache-control", "s-maxage=0, max-age=600")],
            false,
        ),
    ];
    for (path, headers, _) in &cases {
        origin.ok(path, headers);
    }
    let paths: Vec<&str> = cases.iter().map(|(p, _, _)| *p).collect();
    let fresh: Vec<&str> = cases
        .iter()
        .filter(|(_, _, fresh)| *fresh)
        .map(|(p, _, _)| *p)
        .collect();
    assert_eq!(reused(&svc, &watch, &origin, &paths).await, fresh);
}

/// RFC 9111 §4.2.2: heuristic freshness only for heuristically cacheable statuses (RFC
/// 9110 §15.1: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501) or `public`, never
/// for others (302, 307, 400, 403, 500) even when the operator stores them, and never
/// past an explicit lifetime of zero.
async fn rfc9111_4_2_2_heuristics_by_status<B: Backend>(backend: B) {
    let origin = Origin::default();
    let layer = support::layer(backend).statuses([
        200, 203, 204, 300, 301, 302, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501,
    ]);
    let (svc, watch) = service_of(layer, &origin);
    let (now, old) = (http_date(0), http_date(-30 * 86_400));
    let heuristic = [("last-modified", old.as_str()), ("date", now.as_str())];
    let statuses = [
        200, 203, 204, 300, 301, 302, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501,
    ];
    let mut paths = Vec::new();
    for status in statuses {
        paths.push(format!("/s{status}"));
        origin.answer(&format!("/s{status}"), status, &heuristic);
    }
    origin.answer(
        "/public-302",
        302,
        &[heuristic[0], heuristic[1], ("cache-control", "public")],
    );
    origin.answer(
        "/max-age-0",
        200,
        &[heuristic[0], heuristic[1], ("cache-control", "max-age=0")],
    );
    paths.push("/public-302".into());
    paths.push("/max-age-0".into());
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let expected: Vec<&str> = [
        "/s200",
        "/s203",
        "/s204",
        "/s300",
        "/s301",
        "/s308",
        "/s404",
        "/s405",
        "/s410",
        "/s414",
        "/s501",
        "/public-302",
    ]
    .to_vec();
    assert_eq!(reused(&svc, &watch, &origin, &paths).await, expected);
}

/// What is never stored, or stored and never shared (RFC 9111 §3, §4.1, §3.5): `Vary: *`
/// anywhere in a list or across lines, a 304 to an unconditional request, `private`
/// spelled in upper case or next to `public`, an authenticated request's answer without
/// `public` / `s-maxage` / `must-revalidate`. And `Vary` names compared without regard to
/// case or duplicates: `Vary: Accept-Language, ACCEPT-LANGUAGE` selects on one field.
async fn rfc9111_3_what_is_never_stored<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let fresh = ("cache-control", "max-age=600");
    origin.ok("/vary-star-list", &[fresh, ("vary", "accept-language, *")]);
    origin.ok(
        "/vary-star-lines",
        &[fresh, ("vary", "accept-language"), ("vary", "*")],
    );
    origin.answer("/not-modified", 304, &[fresh, ("etag", "\"n\"")]);
    origin.ok(
        "/private-upper",
        &[("cache-control", "PRIVATE, max-age=600")],
    );
    origin.ok(
        "/private-public",
        &[("cache-control", "public, private, max-age=600")],
    );
    for path in [
        "/vary-star-list",
        "/vary-star-lines",
        "/not-modified",
        "/private-upper",
        "/private-public",
    ] {
        get(&svc, path).await;
        watch.settled().await;
        let again = get(&svc, path).await;
        assert_not_hit(again.cache_status());
    }
    assert_eq!(watch.snapshot().stores, 0);
    origin.ok("/auth", &[fresh]);
    let alice = get_with(&svc, "/auth", &[("authorization", "Basic YTpi")]).await;
    watch.settled().await;
    let other = get(&svc, "/auth").await;
    assert_not_hit(other.cache_status());
    assert_ne!(
        other.body, alice.body,
        "an authenticated answer went to another client"
    );
    origin.ok(
        "/vary-dup",
        &[
            fresh,
            ("vary", "Accept-Language, ACCEPT-LANGUAGE"),
            ("vary", "accept-language"),
        ],
    );
    let en = get_with(&svc, "/vary-dup", &[("accept-language", "en")]).await;
    stores(&watch, 2).await;
    assert_hit(
        get_with(&svc, "/vary-dup", &[("accept-language", "en")])
            .await
            .cache_status(),
    );
    let de = get_with(&svc, "/vary-dup", &[("accept-language", "de")]).await;
    assert_not_hit(de.cache_status());
    assert_ne!(de.body, en.body);
}

/// RFC 9110 §13.2.2 with RFC 9111 §4.3.2, answered from a stored response: with both
/// `If-None-Match` and `If-Modified-Since`, "If-None-Match … is evaluated" and
/// `If-Modified-Since` ignored; `If-None-Match: *` matches any stored representation;
/// preconditions only for a 2xx stored response (§13.2.1: "MUST ignore all received
/// preconditions if its response … would have been a status code other than a 2xx"), so a
/// stored 404 is never turned into a 304; and an `If-Range` with a weak validator never
/// applies a `Range` (§13.1.5: "strong comparison").
async fn rfc9110_13_2_preconditions_answered_from_the_cache<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let modified = http_date(-3600);
    origin.ok(
        "/doc",
        &[
            ("cache-control", "max-age=600"),
            ("etag", "\"d1\""),
            ("last-modified", &modified),
        ],
    );
    origin.ok(
        "/weak",
        &[("cache-control", "max-age=600"), ("etag", "W/\"w1\"")],
    );
    origin.answer(
        "/gone",
        404,
        &[("cache-control", "max-age=600"), ("etag", "\"g1\"")],
    );
    for path in ["/doc", "/weak", "/gone"] {
        get(&svc, path).await;
    }
    stores(&watch, 3).await;
    let calls = origin.calls();
    let now = http_date(0);
    // If-None-Match does not match; If-Modified-Since would: the full response.
    let both = get_with(
        &svc,
        "/doc",
        &[("if-none-match", "\"other\""), ("if-modified-since", &now)],
    )
    .await;
    assert_eq!(both.status, StatusCode::OK);
    // If-None-Match matches; If-Modified-Since would not: 304.
    let both = get_with(
        &svc,
        "/doc",
        &[
            ("if-none-match", "\"d1\""),
            ("if-modified-since", &http_date(-7200)),
        ],
    )
    .await;
    assert_eq!(both.status, StatusCode::NOT_MODIFIED);
    let star = get_with(&svc, "/doc", &[("if-none-match", "*")]).await;
    assert_eq!(star.status, StatusCode::NOT_MODIFIED);
    let gone = get_with(&svc, "/gone", &[("if-none-match", "\"g1\"")]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let gone = get_with(&svc, "/gone", &[("if-none-match", "*")]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let ranged = get_with(
        &svc,
        "/weak",
        &[("range", "bytes=0-1"), ("if-range", "W/\"w1\"")],
    )
    .await;
    assert_eq!(
        ranged.status,
        StatusCode::OK,
        "a weak If-Range never applies"
    );
    assert_eq!(origin.calls(), calls, "all answered from the cache");
}

on_every_backend!(
    "review_d";
    rfc9211_2_every_outcome_is_a_structured_list,
    rfc9211_2_members_from_upstream_are_kept_and_ours_is_last,
    rfc9111_4_3_4_a_304_for_another_strong_validator_updates_nothing,
    rfc9111_4_3_4_a_304_for_another_last_modified_updates_nothing,
    rfc9111_4_3_4_a_304_for_another_representation_to_a_background_refresh,
    rfc9111_5_2_cache_control_and_freshness_parsing,
    rfc9111_4_2_2_heuristics_by_status,
    rfc9111_3_what_is_never_stored,
    rfc9110_13_2_preconditions_answered_from_the_cache,
);
