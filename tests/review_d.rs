//! Review D: HTTP caching correctness at the edges, as an independent conformance suite
//! would probe it (cache-tests.fyi, RFC 9111, RFC 9110 §13, RFC 9211). Each scenario
//! runs on MemoryBackend, with a near tier, and on a real memcached, over a scripted
//! origin in origin mode (the reverse proxy's), and quotes the section it checks.

mod support;

use support::{Answer, Watch, assert_hit, assert_not_hit, stores};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
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

    fn last_request(&self) -> HeaderMap {
        self.last.lock().unwrap().clone().unwrap_or_default()
    }

    async fn respond(self, request: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        *self.last.lock().unwrap() = Some(request.headers().clone());
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
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://review-d.test{path}"));
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
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
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

on_every_backend!(
    "review_d";
    rfc9211_2_every_outcome_is_a_structured_list,
    rfc9211_2_members_from_upstream_are_kept_and_ours_is_last,
);
