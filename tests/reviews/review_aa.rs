//! Review AA: random request sequences against one layer, each response checked against
//! RFC 9111 (§3, §3.5, §4, §4.1, §4.3, §4.4) and RFC 9110: what the cache answers belongs
//! to the request that asked. The earlier reviews are hand-written scenarios; here
//! proptest combines methods, target spellings (case, percent-encoding, `..`, duplicate
//! slashes, absolute and origin form, Host variants) and request fields (credentials,
//! `Accept-*`, `Range`, conditionals, request `Cache-Control`) against an origin whose
//! policy per path (status, `Cache-Control`, `CDN-Cache-Control`, `Vary`, `Set-Cookie`,
//! validators, `Age`, fields split over lines) is drawn per case, and may change once
//! mid-case (a deploy). Some requests go out in pairs for one URL (coalescing), some
//! beside a purge (URI, tag, namespace), some through a second layer on the same backend
//! (another process on the same memcached). A third repeat an earlier request of the
//! case, as it was, without its conditionals, or from another user (cookie or
//! `Authorization`), and most paths are reusable, so that about 7 % of answers come from
//! the cache (4 % before repeats), each checked as any other.
//!
//! The origin personalises and records: each body and an `x-made-for` field name the
//! target and Host it saw, the user (`Authorization`, `Cookie`) and the value of each
//! field its `Vary` names; `x-call` numbers its answers and `Set-Cookie` carries that
//! number. It honours `X-HTTP-Method-Override`, `Range` / `If-Range` and conditionals,
//! and its validators are honest (a strong `ETag` is a digest of the body, `Last-Modified`
//! changes with each deploy), except on a *sloppy* path (one in six): there it answers
//! any conditional GET or HEAD with a 304 carrying its current validators and length,
//! which may name another representation than the one asked about (a misconfigured
//! origin, a load balancer over two deploys). Such a 304 may reach the client whose own
//! conditional request it answers; to the cache's validators it validates nothing: the
//! cache must not relabel its stored body with it, serve that body unvalidated, or pass
//! the 304 to a client that asked without conditionals (RFC 9111 §4.3.4). Lifetimes are
//! 0 or 60 s and more, so no check depends on the wall clock; background work settles
//! after each step, so a case runs the same way every time.
//!
//! The checker (`Checker::check`) runs on every answer; the `the_checker_*` tests show
//! it fails on wrong answers made by hand. Longer hunts: `PROPTEST_CASES=3000`;
//! `REVIEW_AA_LOG=1` prints each case's exchanges, `REVIEW_AA_STATS=1` how many answers
//! came from the cache and how many were sent again after a 304.

use crate::support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tower::ServiceExt;

use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode, ResponseBody};

// ---------------------------------------------------------------------------------------
// What a case is made of
// ---------------------------------------------------------------------------------------

/// The origin's answer for one path (the same all case long).
#[derive(Clone, Debug)]
struct Policy {
    status: u16,
    cache_control: Option<&'static str>,
    cdn_cache_control: Option<&'static str>,
    vary: &'static [&'static str],
    set_cookie: bool,
    etag: bool,
    last_modified: bool,
    /// Answers `Range: bytes=a-b` on a 200 with a 206.
    ranges: bool,
    /// Sends each `Vary` member and each `Cache-Control` directive on a line of its own
    /// (RFC 9110 §5.3: one field; a cache that reads the first line alone misses the rest).
    split_lines: bool,
    /// Sends `Age: 100`: a 60 s lifetime is over on arrival (RFC 9111 §4.2.3).
    age: bool,
    /// A sloppy origin (misconfigured, or a load balancer over two deploys): it answers
    /// any conditional GET or HEAD (`If-None-Match` or `If-Modified-Since`, whatever the
    /// validator, whatever its status) with a 304 carrying its current `ETag`,
    /// `Last-Modified` and `Content-Length`, which may name another representation than
    /// the one asked about (another user's, another epoch's).
    sloppy: bool,
}

const STATUSES: &[u16] = &[200, 200, 200, 203, 204, 301, 302, 404, 410, 500, 503];
const CACHE_CONTROLS: &[Option<&str>] = &[
    None,
    Some("max-age=60"),
    Some("public, max-age=60"),
    Some("max-age=60, stale-while-revalidate=60"),
    Some("max-age=60"),
    Some("public, max-age=60"),
    Some("private, max-age=60"),
    Some("no-store"),
    Some("no-cache"),
    Some("no-cache, max-age=60"),
    Some("max-age=0"),
    Some("s-maxage=60"),
    Some("max-age=60, must-revalidate"),
    Some("max-age=0, must-revalidate"),
    Some("max-age=0, stale-while-revalidate=60"),
    Some("public"),
    Some("max-age=60, no-cache=\"set-cookie\""),
    Some("max-age=60, private=\"x-made-for\""),
    Some("public, max-age=60, private"),
];
const REUSABLE: &[Option<&str>] = &[
    Some("max-age=60"),
    Some("public, max-age=60"),
    Some("s-maxage=60"),
    Some("max-age=60, must-revalidate"),
    Some("max-age=0, stale-while-revalidate=60"),
    Some("no-cache, max-age=60"),
];
const CDN_CACHE_CONTROLS: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("max-age=60"),
    Some("no-store"),
    Some("private"),
    Some("max-age=0"),
    // A max-age of the wrong type: not consumed, and `Cache-Control`'s restrictions
    // apply beside the field.
    Some("max-age=\"60\""),
    // A misspelt key: the field names no directive the layer knows, and fails closed the
    // same way.
    Some("maxage=60"),
];
const VARIES: &[&[&str]] = &[
    &[],
    &[],
    &["accept-encoding"],
    &["accept-language"],
    &["cookie"],
    &["authorization"],
    &["accept-encoding", "cookie"],
    &["Accept-Language", "authorization"],
    &["*"],
    &["cookie", "*"],
];

fn policy() -> impl Strategy<Value = Policy> {
    (
        proptest::sample::select(STATUSES),
        // Most paths reusable for a while, so that requests meet stored answers (a wrong
        // store of the others shows as an answer from the cache however rare they are).
        prop_oneof![
            1 => proptest::sample::select(CACHE_CONTROLS),
            2 => proptest::sample::select(REUSABLE),
        ],
        // Most paths without one: four of its five values forbid reuse.
        prop_oneof![
            2 => Just(None),
            1 => proptest::sample::select(CDN_CACHE_CONTROLS),
        ],
        proptest::sample::select(VARIES),
        any::<[bool; 6]>(),
        // One path in six.
        proptest::bool::weighted(1.0 / 6.0),
    )
        .prop_map(
            |(status, cache_control, cdn_cache_control, vary, flags, sloppy)| Policy {
                status,
                cache_control,
                cdn_cache_control,
                vary,
                set_cookie: flags[0] && flags[1],
                etag: flags[1],
                last_modified: flags[2],
                ranges: flags[3],
                split_lines: flags[4],
                age: flags[5] && flags[4],
                sloppy,
            },
        )
}

/// The paths (each one resource to the origin, which decodes, folds case and takes the
/// last segment) and the spellings an attacker uses for them.
const BASES: &[&str] = &["a", "b", "c"];
const SPELLINGS: &[&str] = &[
    "/{}", "/{}", "/{}", "/{}", "/{}", "/%7B%7D", "/x/../{}", "//{}", "/{}/",
];
const QUERIES: &[&str] = &["", "", "?q=1", "?Q=1", "?q=%31"];
const HOSTS: &[&str] = &[
    "example.com",
    "example.com",
    "EXAMPLE.com",
    "example.com:80",
    "example.com.",
    "example.com:8080",
    "example.com:443",
    "other.test",
];

/// How the target and Host reach the layer.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `/path` and `Host`.
    Origin,
    /// `http://host/path`, no `Host`.
    Absolute,
    /// `http://host/path` and the same `Host`.
    AbsoluteWithHost,
    /// `https://host/path`, no `Host`: another scheme, another key.
    AbsoluteHttps,
    /// `http://host/path` and `Host: other.test`.
    AbsoluteOtherHost,
    /// `/path` and two `Host` fields.
    TwoHosts,
}

const AUTHORIZATIONS: &[Option<&str>] = &[None, None, Some("Bearer a"), Some("Bearer b")];
const COOKIES: &[Option<&str>] = &[
    None,
    None,
    Some("user=a"),
    Some("user=b"),
    Some("user=a\nx=evil"),
    Some("user=a; x=evil"),
];
const ACCEPT_ENCODINGS: &[Option<&str>] = &[
    None,
    Some("gzip"),
    Some("gzip, br"),
    Some("br,gzip"),
    Some("GZIP, br"),
    Some("identity"),
    Some("gzip;q=0"),
    Some("br;q=0.5, gzip"),
    Some("gzip\nbr"),
];
const ACCEPT_LANGUAGES: &[Option<&str>] = &[
    None,
    Some("en"),
    Some("EN"),
    Some("de"),
    Some("en, de"),
    Some("de;q=1, en"),
    Some("en;q=0"),
    Some("en\nde"),
];
const RANGES: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("bytes=0-4"),
    Some("bytes=5-"),
    Some("bytes=-3"),
    Some("bytes=0-1,3-4"),
];
/// `LAST` stands for the `ETag` last seen for this path.
const IF_NONE_MATCHES: &[Option<&str>] = &[
    None,
    None,
    None,
    None,
    Some("\"nope\""),
    Some("*"),
    Some("LAST"),
];
const IF_MODIFIED_SINCES: &[Option<&str>] = &[
    None,
    None,
    None,
    None,
    Some("Thu, 01 Jan 2026 00:00:00 GMT"),
    Some("Mon, 01 Jan 2024 00:00:00 GMT"),
];
const REQUEST_CACHE_CONTROLS: &[Option<&str>] = &[
    None,
    None,
    None,
    None,
    Some("no-cache"),
    Some("no-store"),
    Some("max-age=0"),
    Some("only-if-cached"),
    Some("max-stale"),
    Some("max-stale=100"),
];
const PRAGMAS: &[Option<&str>] = &[None, None, None, None, Some("no-cache")];
/// Honoured by the origin (as many frameworks do): the method it acts on.
const METHOD_OVERRIDES: &[Option<&str>] =
    &[None, None, None, None, None, Some("POST"), Some("DELETE")];
const IF_RANGES: &[Option<&str>] = &[
    None,
    None,
    Some("LAST"),
    Some("Wed, 01 Jan 2025 00:00:00 GMT"),
    Some("\"nope\""),
];

/// The origin's `Last-Modified` per epoch: a deploy modifies every path, so that a 304
/// carrying the current date names another representation than a stored response of the
/// epoch before (RFC 9111 §4.3.4).
const LAST_MODIFIED: &[&str] = &[
    "Wed, 01 Jan 2025 00:00:00 GMT",
    "Thu, 01 May 2025 00:00:00 GMT",
];

fn last_modified(epoch: usize) -> &'static str {
    LAST_MODIFIED[epoch.min(LAST_MODIFIED.len() - 1)]
}

#[derive(Clone, Debug)]
struct Step {
    method: Method,
    base: usize,
    spelling: &'static str,
    query: &'static str,
    host: &'static str,
    form: Form,
    /// (name, value) request fields, `LAST` not yet resolved.
    fields: Vec<(&'static str, &'static str)>,
    /// The origin moves to its next policies (if any) before this request.
    deploy: bool,
    /// The next request goes out while this one is in flight (coalescing).
    together: bool,
    /// A purge runs while this step's requests are in flight.
    purge: Option<Purge>,
    /// Sent through the other layer (another process on the same memcached).
    elsewhere: bool,
}

/// What a purge removes (`Purger`).
#[derive(Clone, Debug)]
enum PurgeScope {
    Key(String),
    Base(usize),
    All,
}

#[derive(Clone, Copy, Debug)]
enum Purge {
    /// `purge_uri` of this step's target, when the layer may key it.
    Uri,
    /// `purge_tag` of this step's base (the origin tags each response with its base).
    Tag,
    Namespace,
}

fn purge() -> impl Strategy<Value = Option<Purge>> {
    prop_oneof![
        30 => Just(None),
        1 => Just(Some(Purge::Uri)),
        1 => Just(Some(Purge::Tag)),
        1 => Just(Some(Purge::Namespace)),
    ]
}

/// Where a request goes: path, query, Host and form.
type Target = (usize, &'static str, &'static str, &'static str, Form);

fn target() -> impl Strategy<Value = Target> {
    let form = prop_oneof![
        6 => Just(Form::Origin),
        3 => Just(Form::Absolute),
        1 => Just(Form::AbsoluteHttps),
        1 => Just(Form::AbsoluteWithHost),
        1 => Just(Form::AbsoluteOtherHost),
        1 => Just(Form::TwoHosts),
    ];
    (
        0..BASES.len(),
        proptest::sample::select(SPELLINGS),
        proptest::sample::select(QUERIES),
        proptest::sample::select(HOSTS),
        form,
    )
}

/// A field of the pool one time in five (most requests carry two or three).
fn sometimes(pool: &'static [Option<&'static str>]) -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![4 => Just(None), 1 => proptest::sample::select(pool)]
}

/// A method, the index of a target in the case's pool, request fields, and whether the
/// next request is sent while this one is in flight.
type StepParts = (Method, usize, Vec<(&'static str, &'static str)>, bool);

fn step() -> impl Strategy<Value = StepParts> {
    let method = prop_oneof![
        12 => Just(Method::GET),
        4 => Just(Method::HEAD),
        1 => Just(Method::POST),
        1 => Just(Method::PUT),
        1 => Just(Method::DELETE),
        1 => Just(Method::OPTIONS),
    ];
    let fields = (
        sometimes(AUTHORIZATIONS),
        // Most requests come from someone: the personalised answers are what is at stake.
        proptest::sample::select(COOKIES),
        sometimes(ACCEPT_ENCODINGS),
        sometimes(ACCEPT_LANGUAGES),
        sometimes(RANGES),
        sometimes(IF_NONE_MATCHES),
        sometimes(IF_MODIFIED_SINCES),
        sometimes(REQUEST_CACHE_CONTROLS),
        sometimes(PRAGMAS),
        sometimes(METHOD_OVERRIDES),
        sometimes(IF_RANGES),
        proptest::bool::weighted(0.15),
    );
    (method, any::<prop::sample::Index>(), fields).prop_map(
        |(method, target, (au, co, ae, al, ra, inm, ims, cc, pr, mo, ir, together))| {
            let mut fields = Vec::new();
            for (name, value) in [
                ("authorization", au),
                ("cookie", co),
                ("accept-encoding", ae),
                ("accept-language", al),
                ("range", ra),
                ("if-none-match", inm),
                ("if-modified-since", ims),
                ("cache-control", cc),
                ("pragma", pr),
                ("x-http-method-override", mo),
                ("if-range", ir),
            ] {
                if let Some(value) = value {
                    fields.push((name, value));
                }
            }
            (method, target.index(TARGETS), fields, together)
        },
    )
}

/// An earlier request of a case, for repeats: its method, target index and fields.
type EarlierRequest = (Method, usize, Vec<(&'static str, &'static str)>);

/// How a repeated request differs from the earlier one it copies: not at all (a second
/// client with the same fields, which the cache should answer), or in who asks (the
/// answer must then be the other user's, or shared by the RFC's leave).
#[derive(Clone, Copy, Debug)]
enum Change {
    Same,
    /// Another cookie (or none), from `COOKIES`.
    Cookie(usize),
    /// Another `Authorization` (or none), from `AUTHORIZATIONS`.
    Authorization(usize),
    /// Without the request's conditionals and request directives: a plain reuse.
    Plain,
}

impl Change {
    fn apply(self, fields: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let replace = |name: &'static str, value: Option<&'static str>| {
            let mut changed: Vec<_> = fields.iter().copied().filter(|(n, _)| *n != name).collect();
            changed.extend(value.map(|value| (name, value)));
            changed
        };
        match self {
            Change::Same => fields.to_vec(),
            Change::Cookie(i) => replace("cookie", COOKIES[i % COOKIES.len()]),
            Change::Authorization(i) => {
                replace("authorization", AUTHORIZATIONS[i % AUTHORIZATIONS.len()])
            }
            Change::Plain => fields
                .iter()
                .copied()
                .filter(|(name, _)| {
                    !name.starts_with("if-") && !matches!(*name, "cache-control" | "pragma")
                })
                .collect(),
        }
    }
}

/// A third of the requests repeat an earlier one of the case (the index is into those
/// sent before), so that answers from the cache, and near misses of another user, are
/// common rather than rare.
fn repeat() -> impl Strategy<Value = Option<(prop::sample::Index, Change)>> {
    let change = prop_oneof![
        2 => Just(Change::Same),
        2 => (0..COOKIES.len()).prop_map(Change::Cookie),
        1 => (0..AUTHORIZATIONS.len()).prop_map(Change::Authorization),
        2 => Just(Change::Plain),
    ];
    prop_oneof![
        2 => Just(None),
        1 => (any::<prop::sample::Index>(), change).prop_map(Some),
    ]
}

/// Targets per case: few, so that requests meet in the cache.
const TARGETS: usize = 5;

#[derive(Clone, Debug)]
struct Case {
    /// Per epoch, the origin's policy for each base: a deploy changes a path's status and
    /// freshness fields, never its `Vary` or validators.
    policies: Vec<Vec<Policy>>,
    steps: Vec<Step>,
    /// The layer's `store_set_cookie`: responses with `Set-Cookie` are stored (without it).
    store_set_cookie: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(proptest::collection::vec(policy(), BASES.len()), 1..3),
        proptest::collection::vec(target(), TARGETS),
        proptest::collection::vec(
            (
                step(),
                proptest::bool::weighted(0.05),
                purge(),
                proptest::bool::weighted(0.3),
                repeat(),
            ),
            20..40,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut policies, targets, steps, store_set_cookie)| {
            let first = policies[0].clone();
            for epoch in &mut policies[1..] {
                for (later, first) in epoch.iter_mut().zip(&first) {
                    later.vary = first.vary;
                    later.etag = first.etag;
                    later.last_modified = first.last_modified;
                    later.ranges = first.ranges;
                    later.split_lines = first.split_lines;
                    later.sloppy = first.sloppy;
                }
            }
            // A request sent beside the one before it goes to the same target (concurrent
            // misses of several users for one URL).
            let mut previous: Option<(bool, usize)> = None;
            // What each earlier request was, for repeats.
            let mut sent: Vec<EarlierRequest> = Vec::new();
            Case {
                policies,
                store_set_cookie,
                steps: steps
                    .into_iter()
                    .map(
                        |((method, target, fields, together), deploy, purge, elsewhere, again)| {
                            let (method, target, fields) = match (again, sent.is_empty()) {
                                (Some((earlier, change)), false) => {
                                    let (method, target, fields) = &sent[earlier.index(sent.len())];
                                    (method.clone(), *target, change.apply(fields))
                                }
                                _ => (method, target, fields),
                            };
                            sent.push((method.clone(), target, fields.clone()));
                            let target = match previous {
                                Some((true, before)) => before,
                                _ => target,
                            };
                            previous = Some((together, target));
                            let (base, spelling, query, host, form) = targets[target];
                            Step {
                                method,
                                base,
                                spelling,
                                query,
                                host,
                                form,
                                fields,
                                deploy,
                                together,
                                purge,
                                elsewhere,
                            }
                        },
                    )
                    .collect(),
            }
        })
}

// ---------------------------------------------------------------------------------------
// The origin
// ---------------------------------------------------------------------------------------

/// One answer of the origin.
#[derive(Clone, Debug)]
struct Call {
    status: u16,
    /// The `x-request-id` of the request it answered (the test numbers its requests).
    request: Option<usize>,
    /// The request it answered carried `Cache-Control: no-store`.
    no_store: bool,
}

#[derive(Clone)]
struct Origin {
    policies: Arc<Vec<Vec<Policy>>>,
    epoch: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<Call>>>,
}

/// The resource a path names to the origin: percent-decoded, case-folded, last non-empty
/// segment (so `/A`, `/%61`, `/x/../a`, `//a` and `/a/` are one resource to it).
fn base_of(path: &str) -> Option<usize> {
    let decoded = percent_decode(path).to_ascii_lowercase();
    let last = decoded.split('/').rfind(|s| !s.is_empty())?;
    BASES.iter().position(|b| *b == last)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every line of field `name` as the origin reads it: the `Accept*` lists joined with
/// commas (RFC 9110 §5.3), other fields' lines kept apart (` & `); `-` when absent.
fn lines(headers: &HeaderMap, name: &str) -> String {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    joined(name, &values)
}

fn joined(name: &str, values: &[&str]) -> String {
    if values.is_empty() {
        "-".into()
    } else if name.to_ascii_lowercase().starts_with("accept") {
        values.join(", ")
    } else {
        values.join(" & ")
    }
}

fn field<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// What the origin records of a request: target, Host, the values its `Vary` names, and
/// the credentials. `x-made-for` carries it; the body is `METHOD|` and it, padded.
fn record(request: &Request<()>, policy: &Policy, epoch: usize) -> String {
    let headers = request.headers();
    let host = match headers.get(http::header::HOST) {
        Some(host) => host.to_str().unwrap_or("?").to_string(),
        None => request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| "-".into()),
    };
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let scheme = request.uri().scheme_str().unwrap_or("http");
    let mut record = format!("t={target}|h={scheme}://{host}");
    for name in policy.vary {
        if *name != "*" {
            let _ = write!(record, "|v:{name}={}", lines(headers, name));
        }
    }
    let _ = write!(
        record,
        "|a={}|c={}|p={epoch}",
        field(headers, "authorization"),
        lines(headers, "cookie")
    );
    record
}

fn body_of(method: &str, record: &str) -> String {
    format!("{method}|{record}|0123456789")
}

/// A strong validator honest for `body`: FNV-1a of its bytes.
fn etag_of(body: &str) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("\"{hash:016x}\"")
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against `len`: the one range, if satisfiable.
fn one_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = match (first.parse::<usize>().ok(), last.parse::<usize>().ok()) {
        (Some(first), Some(last)) => (first, last.min(len - 1)),
        (Some(first), None) if last.is_empty() => (first, len - 1),
        (None, Some(n)) if first.is_empty() && n > 0 => (len.saturating_sub(n), len - 1),
        _ => return None,
    };
    (first <= last && first < len).then_some((first, last))
}

impl Origin {
    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        let Some(base) = base_of(request.uri().path()) else {
            let mut response = Response::new(Full::new(Bytes::from_static(b"no such path")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
                .headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            return response;
        };
        let epoch = self.epoch.load(Ordering::SeqCst);
        let policy = &self.policies[epoch][base];
        let headers = request.headers();
        let record = record(request, policy, epoch);
        let overridden = headers
            .get("x-http-method-override")
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
        let method = overridden.as_ref().unwrap_or(request.method());
        let safe = method == Method::GET || method == Method::HEAD;
        // The representation a GET would get: what validators and ranges are about.
        let full = body_of("GET", &record);
        let etag = etag_of(&full);
        let mut status = policy.status;
        let modified = last_modified(epoch);
        let sloppy = safe
            && policy.sloppy
            && (headers.contains_key("if-none-match") || headers.contains_key("if-modified-since"));
        let conditional = if sloppy {
            true
        } else if !safe || status != 200 {
            false
        } else if let Some(inm) = headers.get("if-none-match") {
            let inm = inm.to_str().unwrap_or("");
            policy.etag && (inm.trim() == "*" || inm.split(',').any(|t| t.trim() == etag))
        } else if let Some(ims) = headers.get("if-modified-since") {
            let since = ims
                .to_str()
                .ok()
                .and_then(|d| httpdate::parse_http_date(d).ok());
            let modified = httpdate::parse_http_date(modified).ok();
            policy.last_modified && matches!((since, modified), (Some(s), Some(m)) if s >= m)
        } else {
            false
        };
        let mut body = if method == Method::GET || !safe {
            body_of(method.as_str(), &record)
        } else {
            String::new()
        };
        let mut content_range = None;
        if conditional {
            status = 304;
            body.clear();
        } else if status == 204 {
            body.clear();
        } else if status == 200 && policy.ranges && method == Method::GET {
            // If-Range (RFC 9110 §13.1.5): the range only if the validator is current.
            let if_range = headers.get("if-range").and_then(|v| v.to_str().ok());
            let current = if_range.is_none_or(|v| {
                (policy.etag && v == etag) || (policy.last_modified && v == modified)
            });
            let range = headers.get("range").and_then(|r| r.to_str().ok());
            if let Some(range) = range.filter(|_| current) {
                if let Some((first, last)) = one_range(range, full.len()) {
                    status = 206;
                    body = full[first..=last].to_string();
                    content_range = Some(format!("bytes {first}-{last}/{}", full.len()));
                }
            }
        }
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                status,
                request: headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                no_store: field(headers, "cache-control").contains("no-store"),
            });
            calls.len()
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        let out = response.headers_mut();
        let mut add = |name: &'static str, value: &str| {
            out.append(name, HeaderValue::from_str(value).unwrap());
        };
        add("x-made-for", &record);
        add("surrogate-key", &format!("t-{}", BASES[base]));
        add("x-call", &n.to_string());
        if let Some(cc) = policy.cache_control {
            if policy.split_lines {
                for directive in cc.split(", ") {
                    add("cache-control", directive);
                }
            } else {
                add("cache-control", cc);
            }
        }
        if let Some(cc) = policy.cdn_cache_control {
            add("cdn-cache-control", cc);
        }
        if policy.split_lines {
            for name in policy.vary {
                add("vary", name);
            }
        } else if !policy.vary.is_empty() {
            add("vary", &policy.vary.join(", "));
        }
        if policy.set_cookie {
            add("set-cookie", &format!("s={n}"));
        }
        if policy.etag {
            add("etag", &etag);
        }
        if policy.last_modified {
            add("last-modified", modified);
        }
        if policy.ranges {
            add("accept-ranges", "bytes");
        }
        if policy.age {
            add("age", "100");
        }
        if (method == Method::HEAD && status == 200) || (sloppy && status == 304) {
            // What a GET would carry (RFC 9110 §9.3.2, §8.6), as servers send it.
            add("content-length", &full.len().to_string());
        }
        if let Some(content_range) = content_range {
            add("content-range", &content_range);
        }
        if !safe && policy.set_cookie != policy.etag {
            // RFC 9111 §4.4: invalidated with the target (same origin).
            add(
                "content-location",
                &format!("/{}", BASES[(base + 1) % BASES.len()]),
            );
        }
        response
    }
}

type Svc =
    tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

// ---------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------

/// A request as sent, with what the checker needs of it.
struct Sent {
    /// Its step's index.
    step: usize,
    method: Method,
    /// `X-HTTP-Method-Override`: the layer must not answer from the cache (README,
    /// "Unkeyed input").
    overridden: bool,
    headers: HeaderMap,
    /// `host|path?query` under the key's normalisation, when the layer may key it.
    key: Option<String>,
    base: Option<usize>,
}

/// `http://Example.COM.:80` → `http://example.com`: scheme and authority as the key
/// spells them (case folded, a name's trailing dot and the scheme's default port dropped).
fn key_authority(origin: &str) -> String {
    let lower = origin.to_ascii_lowercase();
    let default = if lower.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    let lower = lower.strip_suffix(default).unwrap_or(&lower);
    let lower = lower.strip_suffix(':').unwrap_or(lower);
    let (scheme, authority) = lower.split_once("://").unwrap_or(("", lower));
    // The pool's hosts have no IPv6 literal: a `:` is the port's.
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host = match host.strip_suffix('.') {
        Some(name) if !name.is_empty() && !name.ends_with('.') => name,
        _ => host,
    };
    match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// A field value as the layer compares variants (README, "Variants"): the `Accept*` lists
/// by member, case, white space and `q=1` folded, order among equal weights ignored;
/// other fields as sent.
fn vary_normal(name: &str, value: &str) -> String {
    if name.to_ascii_lowercase().starts_with("accept") && value != "-" {
        let mut members: Vec<String> = value
            .split(',')
            .map(|m| {
                let m = m.trim().to_ascii_lowercase().replace(' ', "");
                m.strip_suffix(";q=1").unwrap_or(&m).to_string()
            })
            .collect();
        members.sort();
        members.join(",")
    } else {
        value.to_string()
    }
}

fn parse_record(text: &str) -> HashMap<String, String> {
    text.split('|')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The directives this cache obeys for `policy`: `CDN-Cache-Control` when present (all
/// ours are valid dictionaries), else `Cache-Control` (RFC 9213 §2.2). A targeted member
/// of the wrong type (`max-age="60"`) is not consumed (§2.1), but its field still rules,
/// with `Cache-Control`'s restrictive directives beside it; so does a field that names no
/// directive the layer knows (`maxage=60`, misspelt).
fn effective(policy: &Policy) -> Vec<String> {
    let split = |field: &str| -> Vec<String> {
        field
            .split(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect()
    };
    let Some(cdn) = policy.cdn_cache_control else {
        return split(policy.cache_control.unwrap_or(""));
    };
    let mistyped = |d: &String| d.starts_with("max-age=\"");
    let mut directives = split(cdn);
    let known = |d: &String| {
        let key = d.split('=').next().unwrap_or("");
        TARGETED_DIRECTIVES.contains(&key)
    };
    if directives.iter().any(mistyped) || !directives.iter().any(known) {
        let restrictive = [
            "no-store",
            "private",
            "no-cache",
            "must-revalidate",
            "proxy-revalidate",
        ];
        // As restrictions only: a `must-revalidate` comes in as `proxy-revalidate`, which
        // grants no §3.5 permission.
        directives.extend(
            split(policy.cache_control.unwrap_or(""))
                .into_iter()
                .filter(|d| restrictive.contains(&d.as_str()))
                .map(|d| match d.as_str() {
                    "must-revalidate" => "proxy-revalidate".to_string(),
                    _ => d,
                }),
        );
    }
    directives.retain(|d| !mistyped(d));
    directives
}

/// The response directives the layer reads in a targeted field (RFC 9111 §5.2.2,
/// RFC 9213 §2.1).
const TARGETED_DIRECTIVES: &[&str] = &[
    "no-store",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "no-transform",
    "must-understand",
    "no-cache",
    "private",
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// The directives of a served response's own `CDN-Cache-Control` (when it parses as ours
/// do) or `Cache-Control` lines.
fn served_directives(headers: &HeaderMap) -> Vec<String> {
    let text = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cdn = text("cdn-cache-control");
    let field = if cdn.is_empty() {
        text("cache-control")
    } else {
        cdn
    };
    field
        .split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty() && !d.starts_with("max-age=\""))
        .collect()
}

/// Whether `name` is among `directives`; `private="f"` and `no-cache="f"` (which only
/// keep field f out of the cache) do not count as `private` and `no-cache`.
fn has(directives: &[String], name: &str) -> bool {
    directives.iter().any(|d| {
        d == name || (d.starts_with(&format!("{name}=")) && !matches!(name, "private" | "no-cache"))
    })
}

/// Fresh for at least 60 s when stored (else for no time: lifetimes are 0 or ≥ 60 s). In
/// routes mode the route's lifetime (an hour) replaces the response's (README,
/// "Directives"), `no-cache` aside.
fn fresh(policy: &Policy, mode: CacheMode) -> bool {
    let directives = effective(policy);
    let value = |name: &str| {
        directives
            .iter()
            .find_map(|d| d.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if has(&directives, "no-cache") {
        return false;
    }
    if mode == CacheMode::Routes {
        return true;
    }
    match value("s-maxage").or(value("max-age")) {
        Some(lifetime) => lifetime > 0 && !(policy.age && lifetime <= 100),
        // RFC 9111 §5.2.2.9: `public` without explicit freshness is heuristically cacheable.
        None => {
            policy.last_modified
                && (HEURISTIC.contains(&policy.status) || has(&directives, "public"))
        }
    }
}

/// Statuses cacheable by default (RFC 9110 §15.1).
const HEURISTIC: &[u16] = &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

struct Checker {
    policies: Vec<Vec<Policy>>,
    mode: CacheMode,
    /// Per key: the last origin answer (by `x-call`) to an unsafe request that invalidated it.
    invalidated: HashMap<String, usize>,
    /// Invalidations by requests of the group being checked.
    pending: Vec<(String, usize)>,
    /// Purges that returned: what they removed, and the step they ran beside (requests
    /// sent before it, and origin answers made before it started, are not served after).
    purges: Vec<(PurgeScope, std::ops::Range<usize>, usize)>,
    /// Per base: the last `ETag` a response carried (for `If-None-Match: LAST`).
    last_etag: HashMap<usize, String>,
}

/// The origin's answers as one answer's check needs them.
struct Calls<'a> {
    /// Those made for this request (or for none of ours) while its step ran, numbered.
    own: &'a [(usize, Call)],
    /// Every answer so far (number n at index n − 1).
    all: &'a [Call],
    /// How many were made while this request's group ran.
    group: usize,
}

impl Checker {
    /// Checks one answer.
    fn check(
        &mut self,
        sent: &Sent,
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
        origin: Calls<'_>,
    ) -> Result<(), String> {
        let Calls {
            own: calls,
            all: all_calls,
            group: group_calls,
        } = origin;
        let status = status.as_u16();
        let x_call = headers
            .get("x-call")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Answered with an origin response made for this request, or with a stored one.
        let own = x_call.is_some_and(|n| calls.iter().any(|(m, c)| *m == n && c.status == status));
        let from_cache = x_call.is_some() && !own;
        // The header fields (`x-call`, `x-made-for`) came out of the cache too, not from a
        // 304 this request's own validation got (RFC 9111 §4.3.4 merges those).
        let fields_stored = x_call.is_some_and(|n| !calls.iter().any(|(m, _)| *m == n));
        let cache_status = headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let unsafe_method = !matches!(sent.method, Method::GET | Method::HEAD | Method::OPTIONS);
        // A 304 answers a conditional request only (RFC 9110 §15.4.5): the cache's own
        // validators on a client's request are the cache's business, and so is a 304 the
        // origin gives them, whatever representation it names (RFC 9111 §4.3.4).
        if status == 304 {
            let conditional = sent.headers.contains_key("if-none-match")
                || sent.headers.contains_key("if-modified-since");
            if !conditional {
                return Err("a 304 answered a request without conditionals".into());
            }
            // The origin's 304 passes only to the request it answered (a sloppy origin's
            // is its lie to that client); the cache's own are made from stored fields.
            if x_call.is_some() && !own {
                return Err(format!(
                    "a 304 made for another request (x-call {x_call:?}) was passed on"
                ));
            }
        }
        if sent.overridden {
            if from_cache {
                return Err("a request with a method override was answered from the cache".into());
            }
            return Ok(());
        }
        if sent.method == Method::OPTIONS && from_cache {
            return Err("OPTIONS answered with a stored response (RFC 9111 §4)".into());
        }

        // A Set-Cookie made for one request never reaches another (RFC 9111 §3.1, §7.3).
        for cookie in headers.get_all("set-cookie") {
            let n = cookie
                .to_str()
                .ok()
                .and_then(|c| c.strip_prefix("s="))
                .and_then(|n| n.parse::<usize>().ok());
            if !n.is_some_and(|n| calls.iter().any(|(m, _)| *m == n)) {
                return Err(format!("a Set-Cookie made for another request: {cookie:?}"));
            }
        }

        if let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok()) {
            if let Some(base) = sent.base {
                self.last_etag.insert(base, etag.to_string());
            }
        }

        // Unsafe methods invalidate (RFC 9111 §4.4); remember after which answer.
        if unsafe_method {
            if from_cache {
                return Err(format!("{} answered from the cache", sent.method));
            }
            if (200..400).contains(&status) {
                if let (Some(key), Some(n)) = (&sent.key, x_call) {
                    // Counted once the requests sent with it are checked too.
                    self.pending.push((key.clone(), n));
                    let location = headers
                        .get("content-location")
                        .and_then(|v| v.to_str().ok());
                    if let (Some(location), Some((host, _))) = (location, key.split_once('|')) {
                        self.pending.push((format!("{host}|{location}"), n));
                    }
                }
            }
            return Ok(());
        }

        // `private="x-made-for"` keeps the field out of the entry: the body tells then.
        let record = headers
            .get("x-made-for")
            .and_then(|v| v.to_str().ok())
            .or_else(|| body.strip_prefix("GET|").filter(|_| status != 206));
        let Some(record) = record else {
            // Made by the layer (504 for only-if-cached, 416): carries nothing of anyone.
            return Ok(());
        };
        let made_for = parse_record(record);

        if sent.method == Method::HEAD && !body.is_empty() {
            return Err(format!("a body went out for HEAD: {body:?}"));
        }
        // The fields of one response: the origin's `ETag` is that of the GET body its
        // `x-made-for` names, whatever answered (a 304 refreshes both, or neither). A HEAD's
        // `Content-Length` is that body's length too (RFC 9110 §9.3.2): a 304's or another
        // representation's would misframe a GET answered from the same fields.
        let etag = headers.get("etag").and_then(|v| v.to_str().ok());
        if let (Some(etag), Some(made_for)) = (etag, headers.get("x-made-for")) {
            let full = body_of("GET", made_for.to_str().unwrap_or(""));
            if etag != etag_of(&full) {
                return Err(format!(
                    "ETag {etag} beside the fields of another representation ({record})"
                ));
            }
            let length = headers.get("content-length").and_then(|v| v.to_str().ok());
            if let Some(length) = length.filter(|_| sent.method == Method::HEAD && status == 200) {
                if length != full.len().to_string() {
                    return Err(format!(
                        "HEAD answered with Content-Length {length} for a {} byte representation",
                        full.len()
                    ));
                }
            }
        }
        // A length from another representation (a HEAD's or a 304's) framed this body. (A
        // 304 itself may carry the length a 200 would have, RFC 9110 §8.6.)
        if sent.method == Method::GET && status != 304 {
            let length = headers.get("content-length").and_then(|v| v.to_str().ok());
            if let Some(length) = length.filter(|l| *l != body.len().to_string()) {
                return Err(format!(
                    "Content-Length {length} on a body of {} bytes",
                    body.len()
                ));
            }
        }
        // The stored response's identity: target and selecting fields (RFC 9111 §4, §4.1).
        let Some(base) = sent.base else {
            return Ok(());
        };
        // `Vary` is the same in every epoch; the rest is the epoch's that made the fields.
        let policy = &self.policies[0][base];
        let epoch = made_for
            .get("p")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(0);
        let epochs = self.policies.len();
        let served = &self.policies[epoch.min(epochs - 1)][base];
        // The policy the stored response was admitted under: its fields' epoch when they
        // came from the cache; when this request's own 304 replaced them, the body's.
        let body_epoch = body
            .strip_prefix("GET|")
            .and_then(|rest| parse_record(rest).get("p")?.parse::<usize>().ok());
        let admitted = if fields_stored {
            Some(served)
        } else {
            body_epoch.map(|e| &self.policies[e.min(epochs - 1)][base])
        };
        let check_record = |made_for: &HashMap<String, String>, what: &str| -> Result<(), String> {
            if let Some(key) = &sent.key {
                let theirs = format!(
                    "{}|{}",
                    key_authority(made_for.get("h").map_or("", String::as_str)),
                    made_for.get("t").map_or("", String::as_str)
                );
                if &theirs != key {
                    return Err(format!("{what} made for {theirs}, asked for {key}"));
                }
            }
            for name in policy.vary {
                if *name == "*" {
                    continue;
                }
                let theirs = made_for
                    .get(&format!("v:{name}"))
                    .map_or("-", String::as_str);
                let ours = lines(&sent.headers, name);
                if vary_normal(name, theirs) != vary_normal(name, &ours) {
                    return Err(format!(
                        "{what} made for {name}: {theirs:?}, asked with {ours:?}"
                    ));
                }
            }
            Ok(())
        };
        check_record(&made_for, "x-made-for")?;

        let directives = effective(served);
        // §3.5 asks whether the stored response allows sharing: its fields as served (a
        // 304 without `Cache-Control` leaves the stored one), or as the origin sent them
        // with the body.
        let shared_by = {
            let mut all = served_directives(headers);
            if let Some(e) = body_epoch {
                all.extend(effective(&self.policies[e.min(epochs - 1)][base]));
            }
            all.extend(directives.iter().cloned());
            all
        };
        let shareable = ["public", "s-maxage", "must-revalidate"]
            .iter()
            .any(|d| has(&shared_by, d));
        if from_cache {
            if sent.key.is_none() {
                return Err("a request the layer may not key was answered from the cache".into());
            }
            if policy.vary.contains(&"*") {
                return Err("a response with Vary: * was reused (RFC 9111 §4.1)".into());
            }
            let admitted_directives = admitted.map(effective).unwrap_or_default();
            if has(&admitted_directives, "no-store") || has(&admitted_directives, "private") {
                return Err(format!(
                    "a response with {admitted_directives:?} was served from the cache (RFC 9111 §3, §5.2.2)"
                ));
            }
            if let Some(admitted) = admitted {
                let code = if status == 206 {
                    admitted.status
                } else {
                    status
                };
                if !HEURISTIC.contains(&code)
                    && code != 304
                    && !["public", "max-age", "s-maxage"]
                        .iter()
                        .any(|d| has(&admitted_directives, d))
                {
                    return Err(format!(
                        "status {status} without explicit freshness was served from the cache (RFC 9111 §3)"
                    ));
                }
            }
            if fields_stored && made_for.get("a").is_some_and(|a| a != "-") && !shareable {
                return Err(format!(
                    "a response to an authenticated request ({}) was reused without public, s-maxage or must-revalidate (RFC 9111 §3.5)",
                    made_for["a"]
                ));
            }
            // Reuse without contacting the origin (RFC 9111 §4.2.4, §5.2.1.4, §5.2.2.4).
            let no_cache_request = field(&sent.headers, "cache-control").contains("no-cache")
                || (!sent.headers.contains_key("cache-control")
                    && field(&sent.headers, "pragma").contains("no-cache"));
            // Validated: the answer's fields came from the origin while this request's group
            // ran (its own validation, or one it waited for). Else they were stored before,
            // and reused without one, even if the origin was asked meanwhile (a 304 naming
            // another representation validates nothing, RFC 9111 §4.3.4).
            let validated = x_call.is_some_and(|n| n + group_calls > all_calls.len());
            if !validated && status != 304 {
                if no_cache_request {
                    return Err(format!(
                        "request no-cache answered from the cache without validation ({cache_status})"
                    ));
                }
                if !fresh(served, self.mode) {
                    let max_stale = field(&sent.headers, "cache-control").contains("max-stale");
                    let forbids_stale = [
                        "must-revalidate",
                        "proxy-revalidate",
                        "s-maxage",
                        "no-cache",
                    ]
                    .iter()
                    .any(|d| has(&directives, d));
                    // RFC 5861 §3: served stale while a refresh runs in the background.
                    let while_revalidating =
                        group_calls > 0 && has(&directives, "stale-while-revalidate");
                    if (!max_stale || forbids_stale) && !while_revalidating {
                        return Err(format!(
                            "a stale or no-cache response ({directives:?}) was served without validation ({cache_status})"
                        ));
                    }
                }
            }
            // Request no-store: nothing of the answer is stored (RFC 9111 §5.2.1.5).
            if let Some(n) = x_call.filter(|_| fields_stored) {
                if all_calls.get(n - 1).is_some_and(|c| c.no_store) {
                    return Err(format!(
                        "answer #{n}, made for a request with no-store, was served from the cache"
                    ));
                }
            }
            // A purge that returned holds (README, "Invalidation"): nothing made for a
            // request sent before it, or by the origin before it started, is served after.
            if let (Some(n), true) = (x_call, fields_stored) {
                let made_for_request = all_calls.get(n - 1).and_then(|c| c.request);
                for (scope, beside, calls_before) in &self.purges {
                    let covers = match scope {
                        PurgeScope::Key(key) => sent.key.as_ref() == Some(key),
                        PurgeScope::Base(b) => sent.base == Some(*b),
                        PurgeScope::All => true,
                    };
                    let before = match made_for_request {
                        Some(r) => r < beside.start,
                        None => n <= *calls_before,
                    };
                    if covers && before && sent.step >= beside.end {
                        return Err(format!(
                            "answer #{n} was served after a purge ({scope:?}, beside {beside:?}) that returned"
                        ));
                    }
                }
            }
            // §4.4: an entry stored before an unsafe method's answer is not served after it.
            if let (Some(key), Some(n)) = (&sent.key, x_call) {
                if self.invalidated.get(key).is_some_and(|m| n < *m) {
                    return Err(format!(
                        "answer #{n} was served after #{} invalidated {key} (RFC 9111 §4.4)",
                        self.invalidated[key]
                    ));
                }
            }
        }

        // The body: made for this target and these selecting fields, by a GET for a GET.
        if sent.method == Method::GET && status != 204 && status != 304 && status != 416 {
            if status == 206 {
                let Some(range) = sent.headers.get("range") else {
                    return Err("a 206 answered a request without Range (RFC 9111 §3.3)".into());
                };
                let content_range = headers
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if let Some(spec) = content_range.strip_prefix("bytes ") {
                    let (span, len) = spec.split_once('/').unwrap_or(("", ""));
                    let (first, last) = span.split_once('-').unwrap_or(("", ""));
                    let (Ok(first), Ok(last), Ok(len)) = (
                        first.parse::<usize>(),
                        last.parse::<usize>(),
                        len.parse::<usize>(),
                    ) else {
                        return Err(format!("odd Content-Range {content_range:?}"));
                    };
                    // The whole representation is the record of a request like this one:
                    // any of the users the pools hold (Cookie without Vary is the origin's
                    // business), so the slice must be the range of one of those.
                    let whole = candidates(&made_for, sent, policy, epochs);
                    if !whole.iter().any(|w| {
                        w.len() == len && last < len && first <= last && &w[first..=last] == body
                    }) {
                        return Err(format!(
                            "206 ({content_range}) for {range:?} holds {body:?}, not a range of the representation"
                        ));
                    }
                } // multipart: the parts are checked by tests/ranges.rs
                return Ok(());
            }
            let Some(rest) = body.strip_prefix("GET|") else {
                return Err(format!(
                    "GET answered with a body not made for a GET (HEAD's empty one, or another method's): {body:?}"
                ));
            };
            // Fields and body of one representation: a 304 or HEAD may refresh the stored
            // fields only when its validators match (RFC 9111 §4.3.4, §4.3.5).
            if let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok()) {
                if etag != etag_of(body) {
                    return Err(format!(
                        "ETag {etag} served with a body it does not validate: {body:?}"
                    ));
                }
            }
            let rest = rest.strip_suffix("|0123456789").unwrap_or(rest);
            let body_record = parse_record(rest);
            // The same for the other validator: the body's epoch dates it.
            if let Some(modified) = headers.get("last-modified").and_then(|v| v.to_str().ok()) {
                let epoch = body_record.get("p").and_then(|p| p.parse::<usize>().ok());
                if let Some(epoch) = epoch.filter(|e| modified != last_modified(*e)) {
                    return Err(format!(
                        "Last-Modified {modified} served with a body of epoch {epoch}: {body:?}"
                    ));
                }
            }
            check_record(&body_record, "the body")?;
            if from_cache {
                let theirs = parse_record(rest);
                if theirs.get("a").is_some_and(|a| a != "-") && !shareable {
                    return Err(format!(
                        "a body made for {} was reused without public, s-maxage or must-revalidate (RFC 9111 §3.5)",
                        theirs["a"]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The whole bodies a GET like `sent` could have been given: its target, any spelling of
/// its selecting fields the pools hold that the layer takes for the same, any credentials
/// (without `Vary` on them, the origin's personalisation is its own business).
fn candidates(
    made_for: &HashMap<String, String>,
    sent: &Sent,
    policy: &Policy,
    epochs: usize,
) -> Vec<String> {
    let host = made_for.get("h").cloned().unwrap_or_default();
    let target = made_for.get("t").cloned().unwrap_or_default();
    let mut prefixes = vec![format!("t={target}|h={host}")];
    for name in policy.vary {
        if *name == "*" {
            continue;
        }
        let pool: &[Option<&str>] = match name.to_ascii_lowercase().as_str() {
            "accept-encoding" => ACCEPT_ENCODINGS,
            "accept-language" => ACCEPT_LANGUAGES,
            "cookie" => COOKIES,
            _ => AUTHORIZATIONS,
        };
        let ours = vary_normal(name, &lines(&sent.headers, name));
        let spellings: Vec<String> = pool
            .iter()
            .map(|v| match v {
                Some(v) => joined(name, &v.split('\n').collect::<Vec<_>>()),
                None => "-".into(),
            })
            .filter(|v| vary_normal(name, v) == ours)
            .collect();
        prefixes = prefixes
            .iter()
            .flat_map(|p| spellings.iter().map(move |v| format!("{p}|v:{name}={v}")))
            .collect();
    }
    let mut out = Vec::new();
    for prefix in &prefixes {
        for a in ["-", "Bearer a", "Bearer b"] {
            for c in COOKIES.iter().map(|c| match c {
                Some(c) => joined("cookie", &c.split('\n').collect::<Vec<_>>()),
                None => "-".into(),
            }) {
                for p in 0..epochs {
                    out.push(body_of("GET", &format!("{prefix}|a={a}|c={c}|p={p}")));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------

fn request_of(step: &Step, last_etag: &HashMap<usize, String>) -> (Request<()>, Sent) {
    let path = format!(
        "{}{}",
        step.spelling
            .replace(
                "%7B%7D",
                &format!("%{:02X}", BASES[step.base].as_bytes()[0])
            )
            .replace("{}", BASES[step.base]),
        step.query
    );
    let uri = match step.form {
        Form::Origin | Form::TwoHosts if !path.starts_with("//") => path.clone(),
        Form::AbsoluteHttps => format!("https://{}{path}", step.host),
        _ => format!("http://{}{path}", step.host),
    };
    let mut request = Request::builder()
        .method(step.method.clone())
        .uri(&uri)
        .body(())
        .unwrap();
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    let headers = request.headers_mut();
    match step.form {
        Form::Origin | Form::AbsoluteWithHost => {
            headers.append("host", HeaderValue::from_static(step.host));
        }
        Form::Absolute | Form::AbsoluteHttps => {}
        Form::AbsoluteOtherHost => {
            headers.append("host", HeaderValue::from_static("other2.test"));
        }
        Form::TwoHosts => {
            headers.append("host", HeaderValue::from_static(step.host));
            headers.append("host", HeaderValue::from_static("other.test"));
        }
    }
    let base = base_of(&path);
    for (name, value) in &step.fields {
        let value = if *value == "LAST" {
            match base.and_then(|b| last_etag.get(&b)) {
                Some(etag) => etag.clone(),
                None => "\"none-yet\"".to_string(),
            }
        } else {
            value.to_string()
        };
        // A `\n` in a pool value: one field sent on several lines.
        for line in value.split('\n') {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(line).unwrap(),
            );
        }
    }
    let hosts: Vec<HeaderValue> = headers.get_all("host").iter().cloned().collect();
    let scheme = request.uri().scheme_str().unwrap_or("http").to_string();
    let origin = |a: &str| key_authority(&format!("{scheme}://{a}"));
    let key = match (authority, hosts.as_slice()) {
        (_, [_, _, ..]) => None,
        (Some(a), [h]) if origin(&a) != origin(h.to_str().unwrap()) => None,
        (Some(a), _) => Some(a),
        (None, [h]) => Some(h.to_str().unwrap().to_string()),
        (None, []) => None,
    }
    .map(|a| format!("{}|{path}", origin(&a)));
    let sent = Sent {
        step: 0,
        method: step.method.clone(),
        overridden: request.headers().contains_key("x-http-method-override"),
        headers: request.headers().clone(),
        key,
        base,
    };
    (request, sent)
}

async fn run<B: Backend>(
    case: &Case,
    mode: CacheMode,
    backend: B,
    namespace: &str,
) -> Result<(), TestCaseError> {
    let origin = Origin {
        policies: Arc::new(case.policies.clone()),
        epoch: Arc::default(),
        calls: Arc::default(),
    };
    // Two layers over one backend: two processes sharing memcached (with a near tier,
    // two layers of one process sharing it too).
    let configure = |layer: tower_memcache::MemcacheLayer<B>| {
        layer
            .namespace(namespace)
            .mode(mode)
            .targeted_cache_control([CDN_CACHE_CONTROL])
            .store_set_cookie(case.store_set_cookie)
    };
    let layer = configure(support::layer(backend.clone()));
    let other = configure(support::layer(backend));
    let watch = support::Watch::of(&layer);
    let watch_other = support::Watch::of(&other);
    let inner = {
        let origin = origin.clone();
        tower::service_fn(move |request: Request<()>| {
            let origin = origin.clone();
            async move {
                // In flight for a while: a request sent beside this one meets it.
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Infallible>(origin.respond(&request))
            }
        })
    };
    let svc: Svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner.clone()));
    let svc_other: Svc = tower::util::BoxCloneService::new(tower::Layer::layer(&other, inner));
    let mut checker = Checker {
        policies: case.policies.clone(),
        mode,
        invalidated: HashMap::new(),
        pending: Vec::new(),
        purges: Vec::new(),
        last_etag: HashMap::new(),
    };
    let purger = layer.purger();
    let mut log = String::new();
    let mut i = 0;
    while i < case.steps.len() {
        // This step, and the next one with it when it says so.
        let group = if case.steps[i].together && i + 1 < case.steps.len() {
            i..i + 2
        } else {
            i..i + 1
        };
        if case.steps[i].deploy && origin.epoch.load(Ordering::SeqCst) + 1 < case.policies.len() {
            origin.epoch.fetch_add(1, Ordering::SeqCst);
            let _ = write!(log, "\n(the origin deploys its next policies)");
        }
        let mut requests = Vec::new();
        for j in group.clone() {
            let (mut request, mut sent) = request_of(&case.steps[j], &checker.last_etag);
            sent.step = j;
            request
                .headers_mut()
                .insert("x-request-id", HeaderValue::from(j));
            let _ = write!(
                log,
                "\n#{j}{} {} {} {:?}",
                if case.steps[j].elsewhere {
                    " (other)"
                } else {
                    ""
                },
                request.method(),
                request.uri(),
                request.headers()
            );
            requests.push((request, sent, case.steps[j].elsewhere));
        }
        let before = origin.calls.lock().unwrap().len();
        let mut sents = Vec::new();
        let mut answers = Vec::new();
        let mut futures = Vec::new();
        for (request, sent, elsewhere) in requests {
            sents.push(sent);
            futures.push(exchange(if elsewhere { &svc_other } else { &svc }, request));
        }
        let purge = case.steps[i].purge.map(|kind| {
            let sent = &sents[0];
            match kind {
                Purge::Uri => sent.key.as_ref().map(|key| {
                    let (host, target) = key.split_once('|').unwrap_or_default();
                    (PurgeScope::Key(key.clone()), format!("{host}{target}"))
                }),
                Purge::Tag => sent
                    .base
                    .map(|b| (PurgeScope::Base(b), format!("t-{}", BASES[b]))),
                Purge::Namespace => Some((PurgeScope::All, String::new())),
            }
            .map(|(scope, what)| (kind, scope, what))
        });
        let purging = async {
            if let Some(Some((kind, _, what))) = &purge {
                let done = match kind {
                    Purge::Uri => purger.purge_uri(what).await,
                    Purge::Tag => purger.purge_tag(what).await,
                    Purge::Namespace => purger.purge_namespace().await,
                };
                done.expect("MemoryBackend purges");
            }
        };
        let calls_before_purge = origin.calls.lock().unwrap().len();
        let (outputs, ()) = tokio::join!(futures_join(futures), purging);
        answers.extend(outputs);
        if let Some(Some((kind, scope, _))) = purge {
            let _ = write!(log, "\n(purge {kind:?} {scope:?} beside #{i})");
            checker
                .purges
                .push((scope, group.clone(), calls_before_purge));
        }
        // Background stores and refreshes land before the next step: runs repeat.
        watch.settled().await;
        watch_other.settled().await;
        let all_calls = origin.calls.lock().unwrap().clone();
        for ((j, sent), (parts, body)) in group.clone().zip(sents).zip(answers) {
            // The origin's answers to this request, and those to no request of ours.
            let calls: Vec<(usize, Call)> = all_calls[before..]
                .iter()
                .cloned()
                .enumerate()
                .map(|(k, c)| (before + k + 1, c))
                .filter(|(_, c)| c.request.is_none_or(|r| r == j))
                .collect();
            let _ = write!(
                log,
                "\n   #{j} -> {} {:?} {body:?} (origin calls {:?})",
                parts.status,
                parts.headers,
                calls
                    .iter()
                    .map(|(n, c)| (*n, c.status))
                    .collect::<Vec<_>>()
            );
            if from_cache_seen(&parts.headers, &calls) {
                FROM_CACHE.fetch_add(1, Ordering::Relaxed);
            }
            STEPS.fetch_add(1, Ordering::Relaxed);
            // A 304 to the cache's validators, then this request sent again (a sloppy
            // origin's 304 for another representation).
            let mine: Vec<u16> = calls
                .iter()
                .filter(|(_, c)| c.request == Some(j))
                .map(|(_, c)| c.status)
                .collect();
            if mine.len() > 1 && mine[0] == 304 {
                SENT_AGAIN.fetch_add(1, Ordering::Relaxed);
            }
            let origin = Calls {
                own: &calls,
                all: &all_calls,
                group: all_calls.len() - before,
            };
            if let Err(violation) =
                checker.check(&sent, parts.status, &parts.headers, &body, origin)
            {
                return Err(TestCaseError::fail(format!(
                    "step #{j}: {violation}\npolicies: {:#?}\n{log}",
                    case.policies
                )));
            }
        }
        for (key, n) in checker.pending.drain(..) {
            checker.invalidated.insert(key, n);
        }
        i = group.end;
    }
    if std::env::var("REVIEW_AA_LOG").is_ok() {
        eprintln!("{log}");
    }
    Ok(())
}

static STEPS: AtomicUsize = AtomicUsize::new(0);
static FROM_CACHE: AtomicUsize = AtomicUsize::new(0);
static SENT_AGAIN: AtomicUsize = AtomicUsize::new(0);

fn from_cache_seen(headers: &HeaderMap, calls: &[(usize, Call)]) -> bool {
    let x_call = headers
        .get("x-call")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    x_call.is_some_and(|n| !calls.iter().any(|(m, _)| *m == n))
}

/// Sends `request` and reads the answer to its end.
async fn exchange(svc: &Svc, request: Request<()>) -> (http::response::Parts, String) {
    let response = svc.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

/// Runs the futures concurrently on this task; their outputs in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures = futures.into_iter();
    match (futures.next(), futures.next()) {
        (Some(a), Some(b)) => {
            let (a, b) = tokio::join!(a, b);
            vec![a, b]
        }
        (Some(a), None) => vec![a.await],
        _ => Vec::new(),
    }
}

fn run_blocking(case: &Case, mode: CacheMode, near: bool) -> Result<(), TestCaseError> {
    // `REVIEW_AA_THREADS=2` hunts with worker threads: other interleavings, not repeatable.
    let runtime = match std::env::var("REVIEW_AA_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .unwrap();
    let _near = near.then(support::NearTier::on);
    let result = runtime.block_on(run(case, mode, MemoryBackend::new(), "review-aa"));
    if std::env::var("REVIEW_AA_STATS").is_ok() {
        eprintln!(
            "steps {} answered from the cache {} sent again after a 304 {}",
            STEPS.load(Ordering::Relaxed),
            FROM_CACHE.load(Ordering::Relaxed),
            SENT_AGAIN.load(Ordering::Relaxed)
        );
    }
    result
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Origin mode (the reverse proxy's): the origin's fields rule.
    #[test]
    fn what_the_cache_answers_belongs_to_the_request_that_asked(case in case()) {
        run_blocking(&case, CacheMode::Origin, false)?;
    }

    #[test]
    fn the_same_with_a_near_tier(case in case()) {
        run_blocking(&case, CacheMode::Origin, true)?;
    }

    /// Routes mode (the layer's default): the route's lifetime, the same safety rules.
    #[test]
    fn the_same_in_routes_mode(case in case()) {
        run_blocking(&case, CacheMode::Routes, false)?;
    }
}

/// The same on a real memcached (one for the test, a namespace per case), through
/// `TcpBackend`: entries that went through the memcached protocol and back.
#[cfg(feature = "tcp")]
#[test]
fn the_same_on_memcached() {
    let server = memcached_or_skip!("review_aa::the_same_on_memcached");
    let addr = server.addr();
    let cases = AtomicUsize::new(0);
    // Fewer cases than in memory (each opens connections); `PROPTEST_CASES` still rules.
    let cases_wanted = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases_wanted,
        ..config()
    });
    let result = runner.run(&case(), |case| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n = cases.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(async {
            // As in `on_every_backend!`: a loaded machine's slow reply must not turn into a
            // bypass that the checker would not mind, but that hides what is checked.
            let backend = tower_memcache::backend::TcpBackend::builder()
                .server(addr.as_str())
                .timeout(std::time::Duration::from_secs(2))
                .build()
                .unwrap();
            run(&case, CacheMode::Origin, backend, &format!("review-aa-{n}")).await
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------
// The checker can fail: wrong answers made by hand
// ---------------------------------------------------------------------------------------

fn policy_with(cache_control: &'static str, vary: &'static [&'static str]) -> Policy {
    Policy {
        status: 200,
        cache_control: Some(cache_control),
        cdn_cache_control: None,
        vary,
        set_cookie: false,
        etag: false,
        last_modified: false,
        ranges: false,
        split_lines: false,
        age: false,
        sloppy: false,
    }
}

/// The checker's verdict on one answer to `GET /a` (Host `example.com`) with `fields`,
/// `calls` being the origin's answers made for it; after an earlier answer #`invalidated_by`
/// to an unsafe request invalidated `/a`, when given.
fn verdict(
    policy: Policy,
    fields: Vec<(&'static str, &'static str)>,
    status: u16,
    answer: &[(&str, &str)],
    body: &str,
    calls: &[(usize, Call)],
    invalidated_by: Option<usize>,
) -> Result<(), String> {
    let request = (Method::GET, fields);
    verdict_for(policy, request, status, answer, body, calls, invalidated_by)
}

/// The same for a request of another method.
fn verdict_for(
    policy: Policy,
    (method, fields): (Method, Vec<(&'static str, &'static str)>),
    status: u16,
    answer: &[(&str, &str)],
    body: &str,
    calls: &[(usize, Call)],
    invalidated_by: Option<usize>,
) -> Result<(), String> {
    let step = Step {
        method,
        base: 0,
        spelling: "/{}",
        query: "",
        host: "example.com",
        form: Form::Origin,
        fields,
        deploy: false,
        together: false,
        purge: None,
        elsewhere: false,
    };
    let (_, sent) = request_of(&step, &HashMap::new());
    let mut checker = Checker {
        policies: vec![vec![policy.clone(), policy.clone(), policy]],
        mode: CacheMode::Origin,
        invalidated: invalidated_by
            .map(|n| ("http://example.com|/a".to_string(), n))
            .into_iter()
            .collect(),
        pending: Vec::new(),
        purges: Vec::new(),
        last_etag: HashMap::new(),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in answer {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let all: Vec<Call> = (0..10)
        .map(|_| Call {
            status: 200,
            request: None,
            no_store: false,
        })
        .collect();
    let status = StatusCode::from_u16(status).unwrap();
    let origin = Calls {
        own: calls,
        all: &all,
        group: calls.len(),
    };
    checker.check(&sent, status, &headers, body, origin)
}

const ALICE_RECORD: &str = "t=/a|h=http://example.com|v:cookie=user=a|a=-|c=user=a|p=0";
const ANONYMOUS_RECORD: &str = "t=/a|h=http://example.com|a=-|c=-|p=0";

fn own_call(n: usize) -> Vec<(usize, Call)> {
    vec![(
        n,
        Call {
            status: 200,
            request: None,
            no_store: false,
        },
    )]
}

#[test]
fn the_checker_accepts_a_fresh_shared_answer() {
    let body = body_of("GET", ANONYMOUS_RECORD);
    let answer = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "1")];
    let policy = policy_with("max-age=60", &[]);
    assert_eq!(
        verdict(policy, vec![], 200, &answer, &body, &[], None),
        Ok(())
    );
}

#[test]
fn the_checker_catches_another_users_variant() {
    let body = body_of("GET", ALICE_RECORD);
    let answer = [("x-made-for", ALICE_RECORD), ("x-call", "1")];
    let policy = policy_with("max-age=60", &["cookie"]);
    let bob = vec![("cookie", "user=b")];
    assert!(verdict(policy, bob, 200, &answer, &body, &[], None).is_err());
}

#[test]
fn the_checker_catches_a_set_cookie_made_for_another_request() {
    let body = body_of("GET", ANONYMOUS_RECORD);
    let answer = [
        ("x-made-for", ANONYMOUS_RECORD),
        ("x-call", "1"),
        ("set-cookie", "s=1"),
    ];
    let policy = policy_with("max-age=60", &[]);
    assert!(verdict(policy.clone(), vec![], 200, &answer, &body, &[], None).is_err());
    // The same answer straight from the origin, for this request, is fine.
    assert_eq!(
        verdict(policy, vec![], 200, &answer, &body, &own_call(1), None),
        Ok(())
    );
}

#[test]
fn the_checker_catches_a_private_response_from_the_cache() {
    let body = body_of("GET", ANONYMOUS_RECORD);
    let answer = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "1")];
    let policy = policy_with("private, max-age=60", &[]);
    assert!(verdict(policy, vec![], 200, &answer, &body, &[], None).is_err());
}

#[test]
fn the_checker_catches_a_206_without_range_and_heads_body_for_a_get() {
    let answer = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "1")];
    let policy = policy_with("max-age=60", &[]);
    assert!(verdict(policy.clone(), vec![], 206, &answer, "GET|t", &[], None).is_err());
    assert!(verdict(policy, vec![], 200, &answer, "", &[], None).is_err());
}

#[test]
fn the_checker_catches_an_entry_older_than_an_invalidation() {
    let body = body_of("GET", ANONYMOUS_RECORD);
    let answer = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "1")];
    let policy = policy_with("max-age=60", &[]);
    assert!(verdict(policy, vec![], 200, &answer, &body, &[], Some(2)).is_err());
}

fn call(n: usize, status: u16) -> (usize, Call) {
    (
        n,
        Call {
            status,
            request: None,
            no_store: false,
        },
    )
}

#[test]
fn the_checker_catches_a_304_to_a_request_without_conditionals() {
    let answer = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "1")];
    let policy = Policy {
        sloppy: true,
        ..policy_with("max-age=60", &[])
    };
    let calls = [call(1, 304)];
    assert!(verdict(policy.clone(), vec![], 304, &answer, "", &calls, None).is_err());
    // A sloppy origin's 304 to a client's own conditional request is its lie, passed on.
    let conditional = vec![("if-none-match", "\"nope\"")];
    assert_eq!(
        verdict(
            policy.clone(),
            conditional.clone(),
            304,
            &answer,
            "",
            &calls,
            None
        ),
        Ok(())
    );
    // Not one made for another request, though.
    assert!(verdict(policy, conditional, 304, &answer, "", &[], None).is_err());
}

#[test]
fn the_checker_catches_a_body_under_another_epochs_validators() {
    let body = body_of("GET", ANONYMOUS_RECORD);
    let policy = policy_with("max-age=60", &[]);
    let answer = |modified| {
        [
            ("x-made-for", ANONYMOUS_RECORD),
            ("x-call", "1"),
            ("last-modified", modified),
        ]
    };
    let current = answer(last_modified(0));
    assert_eq!(
        verdict(policy.clone(), vec![], 200, &current, &body, &[], None),
        Ok(())
    );
    let later = answer(last_modified(1));
    assert!(verdict(policy, vec![], 200, &later, &body, &[], None).is_err());
}

#[test]
fn the_checker_catches_a_stale_answer_after_a_304_that_validated_nothing() {
    let body = body_of("GET", ANONYMOUS_RECORD);
    let policy = policy_with("no-cache, max-age=60", &[]);
    // The stored fields (#1) after the origin's 304 (#10) named another representation.
    let stored = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "1")];
    let calls = [call(10, 304)];
    assert!(verdict(policy.clone(), vec![], 200, &stored, &body, &calls, None).is_err());
    // Refreshed by that 304: validated.
    let refreshed = [("x-made-for", ANONYMOUS_RECORD), ("x-call", "10")];
    assert_eq!(
        verdict(policy, vec![], 200, &refreshed, &body, &calls, None),
        Ok(())
    );
}

#[test]
fn the_model_fails_closed_on_a_misspelt_targeted_field() {
    let policy = |cdn| Policy {
        cdn_cache_control: Some(cdn),
        ..policy_with("private, max-age=60, must-revalidate", &[])
    };
    let misspelt = effective(&policy("maxage=60"));
    assert!(has(&misspelt, "private") && has(&misspelt, "proxy-revalidate"));
    assert!(!has(&misspelt, "max-age") && !has(&misspelt, "must-revalidate"));
    let valid = effective(&policy("max-age=60"));
    assert_eq!(valid, ["max-age=60"]);
}

#[test]
fn the_checker_catches_a_head_answered_with_another_representations_fields() {
    let policy = policy_with("max-age=60", &[]);
    let full = body_of("GET", ANONYMOUS_RECORD);
    let (etag, length) = (etag_of(&full), full.len().to_string());
    let head = || (Method::HEAD, vec![]);
    let answer = |etag, length| {
        [
            ("x-made-for", ANONYMOUS_RECORD),
            ("x-call", "1"),
            ("etag", etag),
            ("content-length", length),
        ]
    };
    let right = answer(&etag, &length);
    assert_eq!(
        verdict_for(policy.clone(), head(), 200, &right, "", &[], None),
        Ok(())
    );
    // A 304's length, for another user's representation, merged into the stored fields.
    let other = body_of("GET", ALICE_RECORD).len().to_string();
    let wrong_length = answer(&etag, &other);
    assert!(verdict_for(policy.clone(), head(), 200, &wrong_length, "", &[], None).is_err());
    // Another representation's ETag beside these fields.
    let alice = etag_of(&body_of("GET", ALICE_RECORD));
    let wrong_etag = answer(&alice, &length);
    assert!(verdict_for(policy, head(), 200, &wrong_etag, "", &[], None).is_err());
}
