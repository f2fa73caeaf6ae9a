//! The edges of freshness and parsing in RFC 9111 (and the RFC 9110 rules it leans on):
//! lifetimes past memcached's 32-bit clock, obsolete and wrong-case dates, `Age` lists,
//! `must-understand`, `If-Modified-Since` without `Last-Modified`, and `Vary` on
//! negotiation fields. Every scenario runs on MemoryBackend and on a real memcached through
//! TcpBackend, over a scripted origin, and is named after the section it checks.

mod support;

use support::{Answer, Watch, assert_hit, assert_not_hit, stores};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, ResponseBody};

/// What the origin answers for one path: a status and header lines (repeated names are
/// separate lines, in order); the body says which call answered.
#[derive(Clone)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
}

#[derive(Clone, Default)]
struct Origin {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn answer(&self, path: &str, status: u16, headers: &[(&'static str, &str)]) {
        let headers = headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
        let script = Script { status, headers };
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    fn ok(&self, path: &str, headers: &[(&'static str, &str)]) {
        self.answer(path, 200, headers);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn respond(self, request: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let script = self
            .scripts
            .lock()
            .unwrap()
            .get(request.uri().path())
            .cloned();
        let script = script.unwrap_or(Script {
            status: 200,
            headers: Vec::new(),
        });
        let mut response = Response::new(Full::new(Bytes::from(format!("call #{n}"))));
        *response.status_mut() = StatusCode::from_u16(script.status).unwrap();
        for (name, value) in script.headers {
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

/// An origin-mode layer (the origin's headers decide lifetimes, as in the reverse proxy)
/// in front of `origin`.
fn service<B: Backend>(backend: B, origin: &Origin) -> (Svc, Watch) {
    let layer = support::layer(backend)
        .namespace("edges")
        .mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let origin = origin.clone();
    let inner = tower::service_fn(move |request| origin.clone().respond(request));
    let svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    (svc, watch)
}

async fn get_with(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(format!("http://edges.test{path}"));
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

async fn get(svc: &Svc, path: &str) -> Answer {
    get_with(svc, path, &[]).await
}

/// `now + offset_secs` as an IMF-fixdate.
fn http_date(offset_secs: i64) -> String {
    httpdate::fmt_http_date(at(offset_secs))
}

fn at(offset_secs: i64) -> SystemTime {
    let now = SystemTime::now();
    let offset = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        now + offset
    } else {
        now - offset
    }
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

/// RFC 9111 §1.2.2 (delta-seconds past 2^31 are 2^31, "very long") and §5.3 (an `Expires`
/// far ahead): such responses are reused like any long-lived one. memcached keeps the
/// entry (its lifetime is capped where memcached's signed 32-bit expiration time ends,
/// instead of wrapping into "expired at once"), while the HTTP freshness stays the
/// response's own.
async fn rfc9111_1_2_2_and_5_3_very_long_lifetimes<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let date = http_date(0);
    let paths = [
        ("/max-age-2-31", "max-age=2147483648"),
        ("/max-age-huge", "max-age=99999999999999999999999"),
        ("/s-maxage-2-31", "s-maxage=2147483648"),
        ("/max-age-2-31-1", "max-age=2147483647"),
    ];
    for (path, cc) in paths {
        origin.ok(path, &[("cache-control", cc), ("date", &date)]);
    }
    let expires = [
        ("/expires-2038", "Tue, 19 Jan 2038 14:14:08 GMT"),
        ("/expires-2286", "Sun, 21 Nov 2286 17:46:40 GMT"),
        ("/expires-9999", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ];
    for (path, value) in expires {
        origin.ok(path, &[("expires", value), ("date", &date)]);
    }
    let all: Vec<&str> = paths
        .iter()
        .map(|(p, _)| *p)
        .chain(expires.iter().map(|(p, _)| *p))
        .collect();
    assert_eq!(reused(&svc, &watch, &origin, &all).await, all);
    // The freshness is the response's: a request asking for 60 years of it is answered.
    let sixty_years = (60u64 * 365 * 86_400).to_string();
    let min_fresh = format!("min-fresh={sixty_years}");
    for path in ["/max-age-2-31", "/expires-2286", "/expires-9999"] {
        let answer = get_with(&svc, path, &[("cache-control", &min_fresh)]).await;
        assert_hit(answer.cache_status());
        let age: u64 = answer.header("age").unwrap().parse().unwrap();
        assert!(age <= 2, "{path}: Age {age}");
    }
}

/// RFC 9110 §5.6.7 (a recipient accepts all three date formats) and RFC 9111 §4.2 (a
/// cache matches names case-insensitively; a zone other than GMT is invalid), with §5.3:
/// an invalid `Expires` means already expired.
async fn rfc9110_5_6_7_expires_in_every_format<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let date = http_date(0);
    let tomorrow = at(86_400);
    let imf = httpdate::fmt_http_date(tomorrow);
    // "Thu, 18 Aug 2050 02:01:18 GMT" → its parts.
    let (day, dd, mon, yyyy, time) = (
        &imf[..3],
        &imf[5..7],
        &imf[8..11],
        &imf[12..16],
        &imf[17..25],
    );
    let long_day = match day {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let dd_padded = format!("{:>2}", dd.trim_start_matches('0'));
    let valid = [
        ("/imf", imf.clone()),
        (
            "/rfc850",
            format!("{long_day}, {dd}-{mon}-{} {time} GMT", &yyyy[2..]),
        ),
        ("/asctime", format!("{day} {mon} {dd_padded} {time} {yyyy}")),
        ("/weekday-case", imf.replacen(day, &day.to_uppercase(), 1)),
        ("/month-case", imf.replacen(mon, &mon.to_uppercase(), 1)),
        ("/zone-case", imf.replace("GMT", "gMT")),
        ("/all-lower", imf.to_lowercase()),
    ];
    let invalid = [
        ("/zero", "0".to_string()),
        ("/utc", imf.replace("GMT", "UTC")),
        ("/no-comma", imf.replacen(',', "", 1)),
        ("/two-digit-year", imf.replacen(yyyy, &yyyy[2..], 1)),
    ];
    for (path, expires) in valid.iter().chain(&invalid) {
        origin.ok(path, &[("expires", expires), ("date", &date)]);
    }
    let valid_paths: Vec<&str> = valid.iter().map(|(p, _)| *p).collect();
    let all: Vec<&str> = valid_paths
        .iter()
        .copied()
        .chain(invalid.iter().map(|(p, _)| *p))
        .collect();
    assert_eq!(reused(&svc, &watch, &origin, &all).await, valid_paths);
}

/// RFC 9111 §5.1: a list-valued `Age` (one line or several) counts by its first member;
/// an invalid one is ignored.
async fn rfc9111_5_1_age_lists_use_the_first_member<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let date = http_date(0);
    let cases: [(&str, &[&str], bool); 8] = [
        ("/suffix", &["7200, 0"], false),
        ("/suffix-lines", &["7200", "0"], false),
        ("/prefix", &["0, 7200"], true),
        ("/prefix-lines", &["0", "7200"], true),
        ("/old-twice", &["7200, 7200"], false),
        ("/empty-first", &[", 7200"], false),
        ("/not-a-number", &["abc"], true),
        ("/negative", &["-7200"], true),
    ];
    for (path, ages, _) in cases {
        let mut headers = vec![("cache-control", "max-age=3600"), ("date", &date)];
        headers.extend(ages.iter().map(|age| ("age", *age)));
        origin.ok(path, &headers);
    }
    let paths: Vec<&str> = cases.iter().map(|(p, _, _)| *p).collect();
    let fresh: Vec<&str> = cases
        .iter()
        .filter(|(_, _, fresh)| *fresh)
        .map(|(p, _, _)| *p)
        .collect();
    assert_eq!(reused(&svc, &watch, &origin, &paths).await, fresh);
}

/// RFC 9111 §5.2.2.3 (and §3): `must-understand` stores a response only when the cache
/// implements its status code, and then overrides `no-store`. The unknown status is a 2xx:
/// explicit freshness stores no error the operator did not list (`statuses`).
async fn rfc9111_5_2_2_3_must_understand<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let must = "max-age=3600, no-store, must-understand";
    origin.answer("/unknown-status", 299, &[("cache-control", must)]);
    origin.answer(
        "/unknown-status-no-no-store",
        299,
        &[("cache-control", "max-age=3600, must-understand")],
    );
    origin.answer(
        "/unknown-status-plain",
        299,
        &[("cache-control", "max-age=3600")],
    );
    origin.ok("/ok", &[("cache-control", must)]);
    origin.answer("/not-found", 404, &[("cache-control", must)]);
    origin.ok("/no-store", &[("cache-control", "max-age=3600, no-store")]);
    let paths = [
        "/unknown-status",
        "/unknown-status-no-no-store",
        "/unknown-status-plain",
        "/ok",
        "/not-found",
        "/no-store",
    ];
    assert_eq!(
        reused(&svc, &watch, &origin, &paths).await,
        ["/unknown-status-plain", "/ok", "/not-found"]
    );
}

/// A conditional GET with `If-Modified-Since: now + offset_secs`.
async fn ims(svc: &Svc, path: &str, offset_secs: i64) -> Answer {
    let since = http_date(offset_secs);
    get_with(svc, path, &[("if-modified-since", &since)]).await
}

/// RFC 9110 §13.1.3 with RFC 9111 §4.3.2: without `Last-Modified`, a client's
/// `If-Modified-Since` is compared with the stored `Date`, else with the time the response
/// was received.
async fn rfc9111_4_3_2_if_modified_since_without_last_modified<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let dated = http_date(-600);
    origin.ok(
        "/dated",
        &[("cache-control", "max-age=3600"), ("date", &dated)],
    );
    origin.ok("/undated", &[("cache-control", "max-age=3600")]);
    get(&svc, "/dated").await;
    get(&svc, "/undated").await;
    stores(&watch, 2).await;
    let calls = origin.calls();
    // Not modified since a time at or after the stored Date (or receipt).
    for (path, offset) in [("/dated", -600), ("/dated", -300), ("/undated", 5)] {
        let answer = ims(&svc, path, offset).await;
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{path} {offset}");
        assert!(answer.body.is_empty());
    }
    // The same date in an obsolete format.
    let since = UNIX_EPOCH
        + at(-300)
            .duration_since(UNIX_EPOCH)
            .map(|d| Duration::from_secs(d.as_secs()))
            .unwrap();
    let imf = httpdate::fmt_http_date(since);
    let asctime = {
        let dd = format!("{:>2}", imf[5..7].trim_start_matches('0'));
        format!(
            "{} {} {dd} {} {}",
            &imf[..3],
            &imf[8..11],
            &imf[17..25],
            &imf[12..16]
        )
    };
    let answer = get_with(&svc, "/dated", &[("if-modified-since", &asctime)]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{asctime}");
    // Modified since an earlier time: the full stored response.
    for (path, offset) in [("/dated", -700), ("/undated", -3600)] {
        let answer = ims(&svc, path, offset).await;
        assert_eq!(answer.status, StatusCode::OK, "{path} {offset}");
        assert_hit(answer.cache_status());
    }
    assert_eq!(origin.calls(), calls, "all answered from the cache");
}

/// RFC 9111 §4.1: selecting header values that differ only in ways their field's
/// definition makes meaningless (order among equal weights, case, white space, `q=1`)
/// select the same stored variant; a different preference does not.
async fn rfc9111_4_1_negotiation_fields_share_variants<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    let vary = "Accept-Language, Accept-Encoding";
    origin.ok(
        "/page",
        &[("cache-control", "max-age=3600"), ("vary", vary)],
    );
    let ask = |language: &'static str, encoding: &'static str| {
        let svc = svc.clone();
        async move {
            get_with(
                &svc,
                "/page",
                &[("accept-language", language), ("accept-encoding", encoding)],
            )
            .await
        }
    };
    let first = ask("en, de", "gzip, br").await;
    assert_not_hit(first.cache_status());
    stores(&watch, 1).await;
    // Encodings in any order, case and spacing; languages as sent, white space at the
    // ends too (handlers choose by their order, case and spelling in ways of their own:
    // review DD; HTTP/2 hands them ` en, de ` untrimmed: review QK).
    for (language, encoding) in [
        ("en, de", "br, gzip"),
        ("en, de", " BR,gzip "),
        ("en, de", "gzip;q=1 , br"),
    ] {
        let answer = ask(language, encoding).await;
        assert_hit(answer.cache_status());
        assert_eq!(answer.body, first.body, "{language} / {encoding}");
    }
    assert_eq!(origin.calls(), 1);
    // Another preference, or a refusal, is another variant.
    for (language, encoding) in [
        ("en;q=0.5, de", "gzip, br"),
        ("en, de, fr;q=0", "gzip, br"),
        ("en, de", "gzip"),
        ("de, en", "gzip, br"),
        ("EN, de", "gzip, br"),
        ("en,de", "gzip, br"),
        ("en;q=1, de", "gzip, br"),
        (" en, de ", "gzip, br"),
    ] {
        let answer = ask(language, encoding).await;
        assert_not_hit(answer.cache_status());
    }
    assert_eq!(origin.calls(), 9);
}

/// RFC 9110 §7.6.1: "a sender MUST NOT send a connection option corresponding to a field
/// that is intended for all recipients of the content. For example, Cache-Control is
/// never appropriate as a connection option." An origin that names such fields in
/// `Connection` anyway had them dropped from the entry while the layer decided by them:
/// the hit went out without the `Vary` that keeps a cache in front of the layer (a CDN, a
/// browser) from giving one language's page to all, without the `must-revalidate` another
/// process judges the entry by, and without the validator it is revalidated with. The
/// fields the cache decides by stay, as the proxy keeps them; other named fields go.
async fn rfc9110_7_6_1_connection_never_drops_what_the_cache_decides_by<B: Backend>(backend: B) {
    let origin = Origin::default();
    let (svc, watch) = service(backend, &origin);
    origin.ok(
        "/named",
        &[
            ("cache-control", "max-age=60, must-revalidate"),
            ("vary", "accept-language"),
            ("etag", "\"v1\""),
            ("x-per-connection", "one"),
            ("connection", "cache-control, Vary, etag, x-per-connection"),
        ],
    );
    let english = [("accept-language", "en")];
    let first = get_with(&svc, "/named", &english).await;
    assert_not_hit(first.cache_status());
    stores(&watch, 1).await;
    let hit = get_with(&svc, "/named", &english).await;
    assert_hit(hit.cache_status());
    assert_eq!(hit.body, first.body);
    assert_eq!(
        hit.header("cache-control"),
        Some("max-age=60, must-revalidate")
    );
    assert_eq!(hit.header("vary"), Some("accept-language"));
    assert_eq!(hit.header("etag"), Some("\"v1\""));
    assert_eq!(
        hit.header("x-per-connection"),
        None,
        "a field for one connection"
    );
    assert_eq!(hit.header("connection"), None);
    assert_eq!(origin.calls(), 1);
}

on_every_backend!(
    "rfc9111_edges";
    rfc9111_1_2_2_and_5_3_very_long_lifetimes,
    rfc9110_5_6_7_expires_in_every_format,
    rfc9111_5_1_age_lists_use_the_first_member,
    rfc9111_5_2_2_3_must_understand,
    rfc9111_4_3_2_if_modified_since_without_last_modified,
    rfc9111_4_1_negotiation_fields_share_variants,
    rfc9110_7_6_1_connection_never_drops_what_the_cache_decides_by,
);
