//! Review QX: a seeded differential checker of "the answer belongs to the request".
//!
//! Independent of review AA's proptest suite: a plain seeded generator (`StdRng`, one
//! sequence per seed, replayable with `REVIEW_QX_SEED=<n>`) drives several users' requests
//! through the layer in origin mode (over `MemoryBackend`; with a near tier; as two
//! processes over one backend) and through the `tower-memcache-proxy` binary over a real
//! memcached, and an oracle checks every answer against a log of everything the origin
//! ever produced.
//!
//! The origin answers with a body and fields that say what it saw (method, `Host`, path
//! and query, the user's credentials, the fields it varies on) and a serial per response
//! (`serial=N` in the body, `x-serial: N`, `x-user: user@N`, `Set-Cookie: sid=N`; a 304
//! carries `x-serial304` instead, so a refresh never relabels a stored body). Its caching
//! fields are drawn per resource: `Cache-Control` (max-age, s-maxage, public, private,
//! private="f", no-cache, no-cache="f", no-store, must-revalidate, stale-while-revalidate,
//! lifetimes of 1 and 2 s that the run outlives), `Vary` (one field, several, split over
//! lines, `*`), a strong or weak `ETag` per representation, `Last-Modified` (heuristic
//! freshness), `Set-Cookie`, statuses 200/404/301/410, 206 to ranges, and honest 304s to
//! conditionals. Unsafe methods bump the resource's version and may name `Location` /
//! `Content-Location`.
//!
//! The oracle (`Oracle::check`), for each answer whose serial names an origin response R:
//! same effective URI (scheme `http`, host case-folded, its trailing dot and the default
//! port dropped, path and query byte for byte, as README "Keys" documents); the request's values of
//! R's `Vary` fields equal to those R was made for (byte for byte; `Accept-Encoding` by
//! meaning, as README "Variants" documents); no `Vary: *`, `private`, `no-store` or
//! unshareable authorized response reused; no `Set-Cookie` and no field R named in
//! `private=` / `no-cache=` from a response not made for this request; no 304 to a request
//! without conditionals and no 206 without `Range`; body and `x-serial` from one response
//! (or a HEAD that refreshed it, RFC 9111 §4.3.5); nothing made before an invalidating
//! unsafe request to the URI (or its `Location`) started once it returned; and a reused
//! answer no older (since the origin made or last validated it) than its freshness
//! lifetime allows, given the request's `max-stale`, `min-fresh`, `no-cache` and
//! `max-age=0` and the response's `no-cache` and `stale-while-revalidate`, with 1.5 s of
//! slack for whole-second `Date` and `Age`.
//!
//! A seed fixes the requests and the origin's policies; what the cache answers (and so the
//! validators a user sends back, the serials at which the origin deploys) can still move
//! with the clock where lifetimes of 1 and 2 s are in play, so a failure prints the whole
//! sequence it ran, each request with its answer and `Cache-Status`. `REVIEW_QX_STEPS`
//! lengthens the runs.
//!
//! `the_oracle_*` tests show the checker fails on answers made wrong by hand; with `Vary`
//! on `x-tenant` left out of the variant key, or relative `Location`s left uninvalidated
//! (the defect this review fixed), the seeded runs fail within their default seeds.

use crate::support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::ServiceExt;

use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache};

// ---------------------------------------------------------------------------------------
// The origin's policies
// ---------------------------------------------------------------------------------------

const RESOURCES: &[&str] = &["a", "b", "c", "d"];

const CACHE_CONTROLS: &[&str] = &[
    "max-age=60",
    "max-age=60",
    "public, max-age=60",
    "s-maxage=60",
    "max-age=1",
    "max-age=2, stale-while-revalidate=1",
    "max-age=1, stale-if-error=30",
    "private, max-age=60",
    "private=\"x-user\", max-age=60",
    "no-cache=\"x-user\", max-age=60",
    "no-cache=\"set-cookie\", max-age=60",
    "private=\"set-cookie\", max-age=60",
    "no-cache",
    "no-cache, max-age=60",
    "no-store",
    "max-age=60, must-revalidate",
    "must-revalidate",
    "public",
    "",
    "max-age=0",
    "public, max-age=60, private",
];

const REUSABLE: &[&str] = &[
    "max-age=60",
    "public, max-age=60",
    "s-maxage=60",
    "max-age=2, stale-while-revalidate=1",
    "max-age=1, stale-if-error=30",
    "no-cache=\"x-user\", max-age=60",
    "private=\"set-cookie\", max-age=60",
    "max-age=60, must-revalidate",
];

const VARIES: &[&[&str]] = &[
    &[],
    &[],
    &["accept-encoding"],
    &["accept-language"],
    &["x-tenant"],
    &["cookie"],
    &["authorization"],
    &["accept-encoding", "x-tenant"],
    &["Accept-Language", "cookie"],
    &["*"],
    &["x-tenant", "*"],
];

/// The fields the origin may vary on (and writes into its body).
const VARY_FIELDS: &[&str] = &[
    "accept-encoding",
    "accept-language",
    "x-tenant",
    "cookie",
    "authorization",
];

/// Request fields the origin notes besides those it may vary on.
const OTHER_FIELDS: &[&str] = &[
    "cache-control",
    "range",
    "if-none-match",
    "if-modified-since",
];

#[derive(Clone, Debug)]
enum Tag {
    None,
    Strong,
    Weak,
}

#[derive(Clone, Debug)]
struct Policy {
    status: u16,
    /// `Cache-Control` lines.
    cache_control: Vec<&'static str>,
    /// `Vary` lines.
    vary: Vec<String>,
    vary_fields: Vec<String>,
    etag: Tag,
    last_modified: bool,
    set_cookie: bool,
    ranges: bool,
    /// Fails a third of the time (503).
    flaky: bool,
}

fn policy(rng: &mut StdRng) -> Policy {
    let status = [200, 200, 200, 200, 200, 200, 404, 301, 410][rng.random_range(0..9)];
    // Most resources reusable for a while, so that requests meet stored answers.
    let cc = if rng.random_bool(0.6) {
        REUSABLE[rng.random_range(0..REUSABLE.len())]
    } else {
        CACHE_CONTROLS[rng.random_range(0..CACHE_CONTROLS.len())]
    };
    let cache_control = if cc.contains(", ") && rng.random_bool(0.3) {
        // One field on several lines (RFC 9110 §5.3).
        cc.split(", ").collect()
    } else if cc.is_empty() {
        Vec::new()
    } else {
        vec![cc]
    };
    let fields = VARIES[rng.random_range(0..VARIES.len())];
    let vary: Vec<String> = if fields.len() > 1 && rng.random_bool(0.5) {
        fields.iter().map(|f| (*f).to_string()).collect()
    } else if fields.is_empty() {
        Vec::new()
    } else {
        vec![fields.join(", ")]
    };
    Policy {
        status,
        cache_control,
        vary,
        vary_fields: fields.iter().map(|f| f.to_ascii_lowercase()).collect(),
        etag: [Tag::None, Tag::Strong, Tag::Strong, Tag::Weak][rng.random_range(0..4)].clone(),
        last_modified: rng.random_bool(0.5),
        set_cookie: rng.random_bool(0.3),
        ranges: rng.random_bool(0.4),
        flaky: rng.random_bool(0.2),
    }
}

/// The resource a path names to this (lenient) origin: the last segment, decoded and
/// case-folded; `a` for anything else.
fn resource(path: &str) -> usize {
    let path = path.split('?').next().unwrap_or("");
    let decoded = path
        .replace("%61", "a")
        .replace("%62", "b")
        .replace("%63", "c");
    let last = decoded
        .split('/')
        .rfind(|s| !s.is_empty())
        .unwrap_or("")
        .to_ascii_lowercase();
    RESOURCES.iter().position(|r| *r == last).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The origin and its log
// ---------------------------------------------------------------------------------------

/// One response the origin produced, and what it saw of the request.
#[derive(Clone, Debug)]
struct Record {
    serial: u64,
    at: Instant,
    method: String,
    host: String,
    path: String,
    seen: HashMap<&'static str, Option<String>>,
    status: u16,
    cache_control: String,
    vary_fields: Vec<String>,
    etag: Option<String>,
    last_modified: Option<String>,
    body: String,
}

impl Record {
    fn directive(&self, name: &str) -> Option<Option<String>> {
        directives(&self.cache_control)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn has(&self, name: &str) -> bool {
        self.directive(name).is_some()
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.directive(name).flatten().and_then(|v| v.parse().ok())
    }

    /// Whether `private="…"` / `no-cache="…"` name `field`.
    fn names(&self, field: &str) -> bool {
        ["private", "no-cache"].iter().any(|d| {
            self.directive(d)
                .flatten()
                .is_some_and(|v| v.split(',').any(|f| f.trim().eq_ignore_ascii_case(field)))
        })
    }

    fn authorized(&self) -> bool {
        self.seen.get("authorization").is_some_and(Option::is_some)
    }
}

/// `Cache-Control` directives: (lower-cased name, unquoted value).
fn directives(value: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.trim().is_empty() {
        // Split at a comma outside quotes.
        let mut quoted = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let item = rest[..end].trim();
        rest = if end < rest.len() {
            &rest[end + 1..]
        } else {
            ""
        };
        if item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((n, v)) => out.push((
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"').to_string()),
            )),
            None => out.push((item.to_ascii_lowercase(), None)),
        }
    }
    out
}

struct OriginState {
    serial: u64,
    records: Vec<Record>,
    versions: Vec<u32>,
    policies: Vec<Policy>,
    /// Draws the policies of deploys (after some unsafe requests).
    deploys: StdRng,
    /// (serial, resource, new policy), for the failure report.
    deployed: Vec<(u64, usize, Policy)>,
}

#[derive(Clone)]
struct Origin(Arc<Mutex<OriginState>>);

/// The origin's `Last-Modified` for a version: a day per version since 2025.
fn last_modified_of(version: u32) -> String {
    let t =
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600 + u64::from(version) * 86_400);
    httpdate::fmt_http_date(t)
}

impl Origin {
    fn new(seed: u64) -> Self {
        let policies = policies(&mut StdRng::seed_from_u64(seed));
        Self(Arc::new(Mutex::new(OriginState {
            deploys: StdRng::seed_from_u64(seed ^ 0x5eed),
            deployed: Vec::new(),
            serial: 0,
            records: Vec::new(),
            versions: vec![0; policies.len()],
            policies,
        })))
    }

    fn serial(&self) -> u64 {
        self.0.lock().unwrap().serial
    }

    fn records(&self) -> Vec<Record> {
        self.0.lock().unwrap().records.clone()
    }

    /// Answers one request: status, header lines, body.
    fn respond(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> (u16, Vec<(String, String)>, String) {
        let mut state = self.0.lock().unwrap();
        state.serial += 1;
        let serial = state.serial;
        let r = resource(path);
        let get = |name: &str| -> Option<String> {
            let values: Vec<_> = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (!values.is_empty()).then(|| values.join("\n"))
        };
        let mut seen = HashMap::new();
        for field in VARY_FIELDS.iter().chain(OTHER_FIELDS) {
            seen.insert(*field, get(field));
        }
        let user = get("authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
            .or_else(|| {
                get("cookie").and_then(|c| {
                    c.split(['\n', ';'])
                        .find_map(|crumb| crumb.trim().strip_prefix("session="))
                        .map(str::to_string)
                })
            })
            .unwrap_or_else(|| "anon".into());
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut lines: Vec<(String, String)> = vec![
            ("date".into(), date),
            ("x-serial".into(), serial.to_string()),
            ("x-user".into(), format!("{user}@{serial}")),
            ("content-type".into(), "text/plain".into()),
        ];
        let safe = method == "GET" || method == "HEAD";
        if !safe {
            // A change of content, or (one in eight) of configuration alone: then stored
            // entries of the resource's other spellings are revalidated with 304s that
            // carry the new caching fields.
            if serial % 8 != 4 {
                state.versions[r] += 1;
            }
            if serial % 4 == 0 {
                // A deploy: the resource's caching fields change (its `Vary` too).
                let new = policy(&mut state.deploys);
                state.deployed.push((serial, r, new.clone()));
                state.policies[r] = new;
            }
            let version = state.versions[r];
            let body = format!("serial={serial};m={method};p={path};v={version};");
            lines.push(("cache-control".into(), "no-store".into()));
            // Invalidates a neighbour too (RFC 9111 §4.4), chosen by the serial.
            let other = RESOURCES[(r + 1 + serial as usize) % RESOURCES.len()];
            match serial % 5 {
                0 => lines.push(("location".into(), format!("/{other}"))),
                1 => lines.push(("content-location".into(), format!("/{other}"))),
                // Relative references, resolved against the target (RFC 3986 §5.2).
                2 => lines.push(("location".into(), other.to_string())),
                3 => lines.push(("content-location".into(), format!("../{other}?p=1"))),
                _ => {}
            }
            let status = if serial % 2 == 0 { 200 } else { 204 };
            let body = if status == 204 { String::new() } else { body };
            state.records.push(Record {
                serial,
                at: Instant::now(),
                method: method.into(),
                host: host.into(),
                path: path.into(),
                seen,
                status,
                cache_control: "no-store".into(),
                vary_fields: Vec::new(),
                etag: None,
                last_modified: None,
                body: body.clone(),
            });
            return (status, lines, body);
        }
        let policy = state.policies[r].clone();
        let version = state.versions[r];
        // One representation per resource version, user and varied-on values.
        let mut digest_input = format!("{r}/{version}/{user}");
        for field in VARY_FIELDS {
            let _ = write!(digest_input, "/{:?}", seen.get(field));
        }
        let digest = &tower_memcache::key::build_key(None, digest_input.as_str())[..10];
        let etag = match policy.etag {
            Tag::None => None,
            Tag::Strong => Some(format!("\"{digest}\"")),
            Tag::Weak => Some(format!("W/\"{digest}\"")),
        };
        let last_modified = policy.last_modified.then(|| last_modified_of(version));
        let mut body = format!(
            "serial={serial};m={method};h={host};p={path};u={user};v={version};ae={:?};al={:?};t={:?};",
            seen["accept-encoding"], seen["accept-language"], seen["x-tenant"]
        );
        body.push_str("--------------------------------");
        for cc in &policy.cache_control {
            lines.push(("cache-control".into(), (*cc).into()));
        }
        for vary in &policy.vary {
            lines.push(("vary".into(), vary.clone()));
        }
        if let Some(etag) = &etag {
            lines.push(("etag".into(), etag.clone()));
        }
        if let Some(lm) = &last_modified {
            lines.push(("last-modified".into(), lm.clone()));
        }
        if policy.set_cookie {
            lines.push(("set-cookie".into(), format!("sid={serial}; Path=/")));
        }
        // An honest 304: the client's validator names the current representation.
        let inm = get("if-none-match");
        let ims = get("if-modified-since");
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let not_modified = policy.status == 200
            && match (&inm, &etag) {
                (Some(inm), Some(etag)) => inm
                    .split(',')
                    .any(|t| t.trim() == "*" || weak(t) == weak(etag)),
                (Some(inm), None) => inm.trim() == "*",
                (None, _) => match (&ims, &last_modified) {
                    (Some(ims), Some(lm)) => {
                        match (
                            httpdate::parse_http_date(ims),
                            httpdate::parse_http_date(lm),
                        ) {
                            (Ok(ims), Ok(lm)) => ims >= lm,
                            _ => false,
                        }
                    }
                    _ => false,
                },
            };
        let mut status = policy.status;
        if policy.flaky && serial % 3 == 0 {
            // A failing origin: stale-if-error may stand in.
            status = 503;
            lines.retain(|(n, _)| n == "date" || n == "x-serial" || n == "x-user");
            lines.push(("cache-control".into(), "no-store".into()));
            state.records.push(Record {
                serial,
                at: Instant::now(),
                method: method.into(),
                host: host.into(),
                path: path.into(),
                seen,
                status,
                cache_control: "no-store".into(),
                vary_fields: Vec::new(),
                etag: None,
                last_modified: None,
                body: body.clone(),
            });
            if method == "HEAD" {
                body.clear();
            }
            return (status, lines, body);
        }
        if not_modified {
            status = 304;
            lines.retain(|(n, _)| n != "x-serial" && n != "content-type");
            lines.push(("x-serial304".into(), serial.to_string()));
            body.clear();
        } else if status == 301 {
            lines.push(("location".into(), "/elsewhere".into()));
        }
        if status == 200 && policy.ranges {
            if let Some((first, last)) = get("range").as_deref().and_then(single_range) {
                let len = body.len();
                let last = last.unwrap_or(len - 1).min(len - 1);
                if first <= last {
                    status = 206;
                    lines.push((
                        "content-range".into(),
                        format!("bytes {first}-{last}/{len}"),
                    ));
                    let part = body[first..=last].to_string();
                    state.records.push(Record {
                        serial,
                        at: Instant::now(),
                        method: method.into(),
                        host: host.into(),
                        path: path.into(),
                        seen,
                        status,
                        cache_control: policy.cache_control.join(", "),
                        vary_fields: policy.vary_fields.clone(),
                        etag,
                        last_modified,
                        body: body.clone(),
                    });
                    let part = if method == "HEAD" {
                        String::new()
                    } else {
                        part
                    };
                    return (status, lines, part);
                }
            }
        }
        state.records.push(Record {
            serial,
            at: Instant::now(),
            method: method.into(),
            host: host.into(),
            path: path.into(),
            seen,
            status,
            cache_control: policy.cache_control.join(", "),
            vary_fields: policy.vary_fields.clone(),
            etag,
            last_modified,
            body: body.clone(),
        });
        if method == "HEAD" {
            body.clear();
        }
        (status, lines, body)
    }
}

fn single_range(range: &str) -> Option<(usize, Option<usize>)> {
    let spec = range.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let first = a.parse().ok()?;
    let last = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    Some((first, last))
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

const USERS: &[&str] = &["anon", "alice", "bob"];
const SPELLINGS: &[&str] = &[
    "/{}",
    "/{}",
    "/{}",
    "/{}",
    "/{U}",
    "/%{x}",
    "/z/../{}",
    "/{}?p=1&q=2",
    "/{}?q=2&p=1",
    "/{}/",
];
const HOSTS: &[&str] = &[
    "example.com",
    "example.com",
    "example.com",
    "EXAMPLE.com",
    "example.com:80",
    "Example.COM:80",
    "example.com.",
    "example.com:8080",
    "other.test",
];
const ACCEPT_ENCODINGS: &[Option<&str>] = &[
    None,
    Some("gzip"),
    Some("gzip, br"),
    Some("br,gzip"),
    Some("BR, gzip"),
    Some("gzip;q=0.5, br"),
    Some("br, gzip;q=0.5"),
    Some("identity"),
    Some("gzip\nbr"),
];
const ACCEPT_LANGUAGES: &[Option<&str>] = &[
    None,
    Some("en"),
    Some("EN"),
    Some("de"),
    Some("en, de"),
    Some("de, en"),
];
const TENANTS: &[Option<&str>] = &[None, Some("t1"), Some("t2"), Some("T1")];
const REQUEST_CACHE_CONTROLS: &[&str] = &[
    "no-cache",
    "max-age=0",
    "max-stale",
    "max-stale=1",
    "min-fresh=30",
    "only-if-cached",
    "no-store",
    "max-age=1",
];

#[derive(Clone, Debug)]
struct Req {
    user: usize,
    method: &'static str,
    /// Origin form, or absolute form (`http://…`).
    target: String,
    host: Option<String>,
    fields: Vec<(&'static str, String)>,
    /// Wait this long before sending (the clock moves on; lifetimes of 1 and 2 s end).
    pause_ms: u64,
}

impl Req {
    fn field(&self, name: &str) -> Option<String> {
        let values: Vec<_> = self
            .fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect();
        (!values.is_empty()).then(|| values.join("\n"))
    }

    fn path(&self) -> String {
        match self.target.strip_prefix("http://") {
            Some(rest) => rest.find('/').map_or("/".into(), |i| rest[i..].to_string()),
            None => self.target.clone(),
        }
    }

    /// The key's authority (README "Keys"), or `None` when the request may not be looked
    /// up or stored (no usable authority, or Host and target disagree).
    fn authority(&self) -> Option<String> {
        let from_target = self
            .target
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or("").to_string());
        match (from_target, &self.host) {
            (Some(t), Some(h)) => {
                let (t, h) = (normalise_authority(&t)?, normalise_authority(h)?);
                (t == h).then_some(t)
            }
            (Some(t), None) => normalise_authority(&t),
            (None, Some(h)) => normalise_authority(h),
            (None, None) => None,
        }
    }

    fn cache_control(&self) -> Vec<(String, Option<String>)> {
        self.field("cache-control")
            .map(|v| directives(&v))
            .unwrap_or_default()
    }

    fn conditional(&self) -> bool {
        self.field("if-none-match").is_some() || self.field("if-modified-since").is_some()
    }

    fn line(&self) -> String {
        let mut s = format!("{} {} {}", USERS[self.user], self.method, self.target);
        if let Some(h) = &self.host {
            let _ = write!(s, " Host:{h}");
        }
        for (n, v) in &self.fields {
            let _ = write!(s, " {n}:{v:?}");
        }
        if self.pause_ms > 0 {
            let _ = write!(s, " (after {} ms)", self.pause_ms);
        }
        s
    }
}

fn normalise_authority(authority: &str) -> Option<String> {
    let lower = authority.to_ascii_lowercase();
    let (host, port) = match lower.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), Some(p.to_string())),
        None => (lower.clone(), None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return None;
    }
    // DNS's one trailing dot names the same host.
    let host = match host.strip_suffix('.') {
        Some(name) if !name.is_empty() && !name.ends_with('.') => name.to_string(),
        _ => host,
    };
    match port.as_deref() {
        None | Some("80") => Some(host),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(format!("{host}:{p}"))
        }
        _ => None,
    }
}

/// What each user last saw of each resource (validators to send back).
#[derive(Default)]
struct Memory {
    etags: HashMap<(usize, usize), String>,
    dates: HashMap<(usize, usize), String>,
}

/// An index into a list of `len`: the first half the time (the common case), else any.
fn skewed(rng: &mut StdRng, len: usize) -> usize {
    if rng.random_bool(0.5) {
        0
    } else {
        rng.random_range(0..len)
    }
}

fn request(rng: &mut StdRng, memory: &Memory, pauses: bool) -> Req {
    let user = rng.random_range(0..USERS.len());
    let r = rng.random_range(0..RESOURCES.len());
    let name = RESOURCES[r];
    let spelling = SPELLINGS[skewed(rng, SPELLINGS.len())];
    let path = spelling
        .replace("{U}", &name.to_ascii_uppercase())
        .replace("%{x}", &format!("%{:02X}", name.as_bytes()[0]))
        .replace("{}", name);
    let method = match rng.random_range(0..100) {
        0..=79 => "GET",
        80..=91 => "HEAD",
        92..=95 => "POST",
        96..=97 => "PUT",
        _ => "DELETE",
    };
    let host = HOSTS[skewed(rng, HOSTS.len())];
    let (target, host) = match rng.random_range(0..20) {
        0 => (format!("http://{host}{path}"), None),
        1 => (format!("http://{host}{path}"), Some(host.to_string())),
        2 => (
            format!("http://{host}{path}"),
            Some("other.test".to_string()),
        ),
        _ => (path, Some(host.to_string())),
    };
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    if user > 0 {
        if rng.random_bool(0.7) {
            fields.push(("cookie", format!("session={}", USERS[user])));
            if rng.random_bool(0.1) {
                // A second line (HTTP/2 crumbs as an HTTP/1 client may send them).
                fields.push(("cookie", "theme=dark".into()));
            }
        }
        if rng.random_bool(0.25) {
            fields.push(("authorization", format!("Bearer {}", USERS[user])));
        }
    }
    let mut pick = |rng: &mut StdRng, name: &'static str, values: &[Option<&str>]| {
        if let Some(v) = values[skewed(rng, values.len())] {
            // `\n` separates lines of one field.
            for line in v.split('\n') {
                fields.push((name, line.to_string()));
            }
        }
    };
    pick(rng, "accept-encoding", ACCEPT_ENCODINGS);
    pick(rng, "accept-language", ACCEPT_LANGUAGES);
    pick(rng, "x-tenant", TENANTS);
    if method == "GET" || method == "HEAD" {
        match rng.random_range(0..12) {
            0 | 1 => {
                if let Some(etag) = memory.etags.get(&(user, r)) {
                    fields.push(("if-none-match", etag.clone()));
                }
            }
            2 => fields.push(("if-none-match", "*".into())),
            3 => fields.push(("if-none-match", "\"nope\"".into())),
            4 => {
                if let Some(date) = memory.dates.get(&(user, r)) {
                    fields.push(("if-modified-since", date.clone()));
                }
            }
            5 => {
                fields.push(("range", "bytes=0-9".into()));
                if let Some(etag) = memory
                    .etags
                    .get(&(user, r))
                    .filter(|_| rng.random_bool(0.5))
                {
                    fields.push(("if-range", etag.clone()));
                }
            }
            6 => fields.push(("range", "bytes=5-".into())),
            _ => {}
        }
        if rng.random_bool(0.15) {
            let cc = REQUEST_CACHE_CONTROLS[rng.random_range(0..REQUEST_CACHE_CONTROLS.len())];
            fields.push(("cache-control", cc.into()));
        } else if rng.random_bool(0.02) {
            fields.push(("pragma", "no-cache".into()));
        }
    }
    let pause_ms = if pauses && rng.random_bool(0.012) {
        rng.random_range(300..1100)
    } else {
        0
    };
    Req {
        user,
        method,
        target,
        host,
        fields,
        pause_ms,
    }
}

// ---------------------------------------------------------------------------------------
// Answers and the oracle
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn serial(&self) -> Option<u64> {
        self.all("x-serial").first().and_then(|v| v.parse().ok())
    }

    fn body_serial(&self) -> Option<u64> {
        self.body
            .strip_prefix("serial=")
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.parse().ok())
    }

    fn line(&self) -> String {
        format!(
            "{} x-serial={:?} body-serial={:?} cache-status={:?} set-cookie={:?} x-user={:?}",
            self.status,
            self.serial(),
            self.body_serial(),
            self.all("cache-status"),
            self.all("set-cookie"),
            self.all("x-user"),
        )
    }
}

/// `Accept-Encoding` by meaning (README "Variants"): members lower-cased, sorted by
/// weight then name; `None` outside the simple grammar used here.
fn preferences(value: &str) -> Option<Vec<(u16, String)>> {
    if value.contains('\n') {
        return None;
    }
    let mut members = Vec::new();
    for member in value.split(',') {
        let mut parts = member.split(';').map(str::trim);
        let name = parts.next()?.to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        let q = match parts.next() {
            None => 1000,
            Some(q) => {
                let q: f64 = q.strip_prefix("q=")?.parse().ok()?;
                (q * 1000.0).round() as u16
            }
        };
        members.push((u16::MAX - q, name));
    }
    members.sort();
    Some(members)
}

fn same_value(field: &str, a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) if field == "accept-encoding" => {
            match (preferences(a), preferences(b)) {
                (Some(a), Some(b)) => a == b,
                _ => a == b,
            }
        }
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether `other`, a later 304 or 200 to a HEAD for `record`'s URI, names `record`'s
/// representation by its validators (an `ETag`, else `Last-Modified`), and so refreshes
/// the stored response's fields and freshness (RFC 9111 §4.3.4, §4.3.5).
fn refreshes(other: &Record, record: &Record) -> bool {
    let kind = other.status == 304 || (other.method == "HEAD" && other.status == 200);
    let validators = match (&other.etag, &record.etag) {
        (Some(a), Some(b)) => weak_tag(Some(a)) == weak_tag(Some(b)),
        _ => other.last_modified.is_some() && other.last_modified == record.last_modified,
    };
    // Made for a request of the same variant: a refresh selects the stored responses
    // its request would be answered with (RFC 9111 §4.3.4, §4.1).
    let variant = record.vary_fields.iter().all(|field| {
        let (a, b) = (
            other.seen.get(field.as_str()),
            record.seen.get(field.as_str()),
        );
        same_value(
            field,
            a.cloned().flatten().as_deref(),
            b.cloned().flatten().as_deref(),
        )
    });
    // A 304 refreshes what its request asked about with the stored response's own
    // validator (the cache's revalidation, or a client's that carries it): README
    // "Validation". A 304 to a client's `If-None-Match: *` or to a date of its own passes
    // to that client alone (the crate's documented reading; RFC 9111 §4.3.4 would have
    // it update the response its `Last-Modified` names). A validator-less 304 to a date
    // the stored `Date` vouches for refreshes too (review RB); this origin, honest, sends
    // none (it answers `If-Modified-Since` only with a `Last-Modified`).
    let asked = |name: &str| other.seen.get(name).cloned().flatten();
    let revalidation = other.status != 304
        || asked("if-none-match").is_some_and(|inm| {
            inm.split(',').any(|tag| {
                Some(tag.trim().trim_start_matches("W/")) == weak_tag(record.etag.as_deref())
            })
        })
        || (asked("if-none-match").is_none()
            && asked("if-modified-since").is_some()
            && asked("if-modified-since") == record.last_modified);
    kind && revalidation
        && other.serial > record.serial
        && other.host == record.host
        && other.path == record.path
        && validators
        && variant
}

fn weak_tag(etag: Option<&str>) -> Option<&str> {
    etag.map(|e| e.trim_start_matches("W/"))
}

const SLACK: Duration = Duration::from_millis(1500);

struct Oracle {
    records: HashMap<u64, Record>,
    /// (authority, path) → the last serial made before an invalidation of it started.
    floors: HashMap<(String, String), u64>,
    /// Routes mode: every storable response lives for the route's lifetime (the default,
    /// 3600 s), but for an authorized one's own directives (README "Directives").
    routes: bool,
}

impl Oracle {
    fn record(&self, serial: u64) -> Result<&Record, String> {
        self.records
            .get(&serial)
            .ok_or_else(|| format!("serial {serial} was never produced by the origin"))
    }

    /// Checks `answer` to `req`; `made` are the serials the origin produced while `req`
    /// was under way, `before` the last serial produced before it started.
    fn check(&self, req: &Req, answer: &Answer, made: &[u64], now: Instant) -> Result<(), String> {
        // Made while this request was under way, for its own credentials (in a burst,
        // a response made for another user's request counts as shared).
        let same_requester = |record: &Record| {
            record.seen.get("cookie").cloned().flatten() == req.field("cookie")
                && record.seen.get("authorization").cloned().flatten() == req.field("authorization")
        };
        let in_window = |serial: u64| made.contains(&serial);
        let ours = |serial: u64| {
            in_window(serial) && self.records.get(&serial).is_some_and(same_requester)
        };
        let cc = req.cache_control();
        let has_cc = |name: &str| cc.iter().any(|(n, _)| n == name);
        if answer.status == 304 && !req.conditional() {
            return Err("a 304 to a request without conditionals".into());
        }
        if answer.status == 206 && req.field("range").is_none() {
            return Err("a 206 to a request without Range".into());
        }
        // Per-response fields from responses not made for this request.
        for cookie in answer.all("set-cookie") {
            let serial: u64 = cookie
                .strip_prefix("sid=")
                .and_then(|r| r.split(';').next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("a Set-Cookie the origin never sent: {cookie}"))?;
            if !ours(serial) {
                return Err(format!(
                    "Set-Cookie of response {serial}, made for another request"
                ));
            }
        }
        for user in answer.all("x-user") {
            let serial: u64 = user
                .rsplit_once('@')
                .and_then(|(_, n)| n.parse().ok())
                .ok_or_else(|| format!("an x-user the origin never sent: {user}"))?;
            let record = self.record(serial)?;
            if !ours(serial) && record.names("x-user") {
                return Err(format!(
                    "x-user of response {serial}, which names it in private=/no-cache=, reused"
                ));
            }
        }
        let body_serial = answer.body_serial();
        let serial = match (answer.serial(), body_serial) {
            (Some(h), Some(b)) if h != b => {
                // A 200 to a HEAD refreshes the stored GET response's fields (§4.3.5) when
                // it describes the same representation.
                let (head, get) = (self.record(h)?, self.record(b)?);
                if !refreshes(head, get) || head.method != "HEAD" {
                    return Err(format!(
                        "body of response {b} under the fields of response {h}"
                    ));
                }
                b
            }
            (_, Some(b)) => b,
            (Some(h), None) => h,
            (None, None) => return Ok(()),
        };
        let record = self.record(serial)?;
        if !matches!(req.method, "GET" | "HEAD") {
            // Unsafe requests go through, each to the origin.
            return if ours(serial) {
                Ok(())
            } else {
                Err(format!("a {} answered with response {serial}", req.method))
            };
        }
        if record.method != "GET" && record.method != "HEAD" {
            return Err(format!("the answer to {} {}", record.method, record.path));
        }
        // Whole bodies must be the response's own.
        if answer.status == 200 && req.method == "GET" {
            if record.method == "HEAD" {
                return Err(format!(
                    "a GET answered with HEAD response {serial}'s empty body"
                ));
            }
            if record.status == 206 {
                return Err(format!("a part ({serial}) answered as the whole"));
            }
            if answer.body != record.body {
                return Err(format!("body differs from response {serial}'s"));
            }
        }
        if answer.status == 206 && !ours(serial) && !record.body.contains(&answer.body) {
            return Err(format!("a 206 that is no part of response {serial}"));
        }
        // The effective URI.
        let authority = req.authority();
        let reused = !ours(serial);
        match &authority {
            None if reused => {
                return Err(format!(
                    "a request the cache may not look up answered with stored response {serial}"
                ));
            }
            None => {}
            Some(authority) => {
                let seen = normalise_authority(&record.host);
                if seen.as_deref() != Some(authority) || record.path != req.path() {
                    return Err(format!(
                        "response {serial} was made for {} {}, not {authority} {}",
                        record.host,
                        record.path,
                        req.path()
                    ));
                }
            }
        }
        // What the origin last said of this representation: a 304 updates the stored
        // fields (RFC 9111 §4.3.4).
        // A refresh made while this request was under way, for another request of a
        // burst, may have landed after this answer was read: only earlier ones count.
        let seen_before = |other: &Record| !in_window(other.serial) || ours(other.serial);
        let latest = self.latest(record, &seen_before);
        let refreshed = if latest.serial == record.serial {
            String::new()
        } else {
            format!(" (as refreshed by 304 {})", latest.serial)
        };
        // The varied-on fields.
        if reused && (record.vary_fields.iter().chain(&latest.vary_fields)).any(|f| f == "*") {
            return Err(format!("response {serial} (Vary: *){refreshed} reused"));
        }
        let fields: Vec<&String> = record
            .vary_fields
            .iter()
            .chain(&latest.vary_fields)
            .collect();
        let matches = |made_for: &Record| {
            fields.iter().all(|field| {
                let seen = made_for.seen.get(field.as_str()).cloned().flatten();
                same_value(field, req.field(field).as_deref(), seen.as_deref())
            })
        };
        // A 304 the origin sent for this very request names the stored response's
        // validator: the origin vouched that it is this request's representation (RFC
        // 9111 §4.3.3), whatever it was first made for.
        let vouched = made.iter().any(|m| {
            ours(*m)
                && self
                    .records
                    .get(m)
                    .is_some_and(|r| r.status == 304 && refreshes(r, record) && matches(r))
        });
        for field in fields.iter().filter(|_| !vouched) {
            let seen = record.seen.get(field.as_str()).cloned().flatten();
            if !same_value(field, req.field(field).as_deref(), seen.as_deref()) {
                return Err(format!(
                    "response {serial}{refreshed} varies on {field}, made for {seen:?}, answered {:?}",
                    req.field(field)
                ));
            }
        }
        if !reused {
            return Ok(());
        }
        // Reused: may it be shared at all?
        for fields in [record, latest] {
            if fields.has("no-store") || fields.directive("private") == Some(None) {
                return Err(format!(
                    "response {serial} ({}){refreshed} reused",
                    fields.cache_control
                ));
            }
        }
        if record.authorized()
            && !(record.has("public") || record.has("s-maxage") || record.has("must-revalidate"))
        {
            return Err(format!(
                "response {serial} to an authorized request ({}) reused",
                record.cache_control
            ));
        }
        if matches!(record.status, 206 | 304) || record.status >= 500 {
            return Err(format!("a {} ({serial}) reused", record.status));
        }
        if record
            .seen
            .get("cache-control")
            .cloned()
            .flatten()
            .is_some_and(|cc| directives(&cc).iter().any(|(n, _)| n == "no-store"))
        {
            return Err(format!("response {serial} to a no-store request reused"));
        }
        if in_window(serial) {
            // Shared with a request under way at the same time (coalesced): no older
            // than this request.
            return Ok(());
        }
        // Invalidated?
        if let Some(authority) = &authority {
            if let Some(floor) = self.floors.get(&(authority.clone(), req.path())) {
                if serial <= *floor {
                    return Err(format!(
                        "response {serial} served after an invalidation that started past serial {floor}"
                    ));
                }
            }
        }
        // Freshness.
        // The origin answered (a 5xx validates nothing, and may let a stale one stand in).
        let failed = made
            .iter()
            .any(|m| self.records.get(m).is_some_and(|r| r.status >= 500));
        let validated = made
            .iter()
            .any(|m| self.records.get(m).is_some_and(|r| r.status < 500));
        let must_validate = latest.directive("no-cache") == Some(None)
            || record.directive("no-cache") == Some(None)
            || has_cc("no-cache")
            || (req.field("pragma").is_some() && req.field("cache-control").is_none())
            || cc
                .iter()
                .any(|(n, v)| n == "max-age" && v.as_deref() == Some("0"));
        // An origin failure lets a response with stale-if-error stand in (RFC 5861 §4).
        let stands_in = failed && (record.has("stale-if-error") || latest.has("stale-if-error"));
        if must_validate && !validated && !stands_in {
            return Err(format!("response {serial} reused without revalidation"));
        }
        if validated || answer.status == 304 && !reused {
            return Ok(());
        }
        // Lifetime by the latest fields, authorization by the request that stored it.
        let mut effective = latest.clone();
        effective.seen = record.seen.clone();
        effective.status = record.status;
        effective.last_modified = record.last_modified.clone();
        let lifetime = self.lifetime(&effective);
        let checked = self.validated_at(record, &seen_before);
        let age = now.saturating_duration_since(checked);
        let mut allowed = lifetime + SLACK;
        if let Some(swr) = effective.number("stale-while-revalidate") {
            allowed += Duration::from_secs(swr);
        }
        if let Some(sie) = effective.number("stale-if-error").filter(|_| failed) {
            allowed += Duration::from_secs(sie);
        }
        let no_stale = effective.has("must-revalidate")
            || effective.has("proxy-revalidate")
            || effective.has("s-maxage");
        for (name, value) in &cc {
            match (name.as_str(), value) {
                ("max-stale", None) if !no_stale => allowed = Duration::MAX,
                ("max-stale", Some(n)) if !no_stale => {
                    allowed = allowed.saturating_add(Duration::from_secs(n.parse().unwrap_or(0)))
                }
                // On an origin failure, stale-if-error lets a stored response stand in
                // for the answer the client asked fresher than it is (RFC 5861 §4:
                // "regardless of other freshness information").
                ("max-age" | "min-fresh", Some(_)) if stands_in => {}
                ("max-age", Some(n)) => {
                    let n = Duration::from_secs(n.parse().unwrap_or(0));
                    allowed = allowed.min(n + SLACK);
                }
                ("min-fresh", Some(n)) => {
                    let n = Duration::from_secs(n.parse().unwrap_or(0));
                    if lifetime.saturating_sub(age) + SLACK < n {
                        return Err(format!(
                            "response {serial} fresh for {:?} more, served to min-fresh={n:?}",
                            lifetime.saturating_sub(age)
                        ));
                    }
                }
                _ => {}
            }
        }
        if age > allowed {
            let made: Vec<_> = made
                .iter()
                .map(|m| (m, self.records.get(m).map(|r| r.status)))
                .collect();
            return Err(format!(
                "response {serial} ({}){refreshed} served {age:?} after it was made or validated; lifetime {lifetime:?}, allowed {allowed:?} (made meanwhile: {made:?})",
                effective.cache_control
            ));
        }
        Ok(())
    }

    /// Freshness lifetime (RFC 9111 §4.2.1; README "Directives": an authorized response
    /// only by its own explicit freshness, `public` aside).
    fn lifetime(&self, record: &Record) -> Duration {
        let explicit = record
            .number("s-maxage")
            .or_else(|| record.number("max-age"));
        if self.routes {
            return match (record.authorized(), explicit) {
                (false, _) => Duration::from_secs(3600),
                (true, Some(explicit)) => Duration::from_secs(explicit),
                (true, None) if record.has("public") => Duration::from_secs(3600),
                (true, None) => Duration::ZERO,
            };
        }
        if let Some(explicit) = explicit {
            return Duration::from_secs(explicit);
        }
        if record.authorized() && !record.has("public") {
            return Duration::ZERO;
        }
        // Heuristic: 10 % of the time since Last-Modified, at most a day.
        match &record.last_modified {
            Some(_)
                if [200, 203, 204, 300, 301, 404, 405, 410, 414, 501].contains(&record.status) =>
            {
                Duration::from_secs(86_400)
            }
            _ => Duration::ZERO,
        }
    }

    /// The latest 304 (or 200 to a HEAD) the origin sent for `record`'s URI and validator, or `record`.
    fn latest<'a>(&'a self, record: &'a Record, counts: &dyn Fn(&Record) -> bool) -> &'a Record {
        self.records
            .values()
            .filter(|other| refreshes(other, record) && counts(other))
            .max_by_key(|other| other.serial)
            .unwrap_or(record)
    }

    /// When the origin last vouched for `record`'s representation for its URI: made it,
    /// or answered a 304 naming its validator.
    fn validated_at(&self, record: &Record, counts: &dyn Fn(&Record) -> bool) -> Instant {
        let mut at = record.at;
        for other in self.records.values() {
            if refreshes(other, record) && counts(other) {
                at = at.max(other.at);
            }
        }
        at
    }
}

// ---------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------

type Svc = tower::util::BoxCloneService<
    Request<()>,
    Response<tower_memcache::cache::ResponseBody<Full<Bytes>>>,
    Infallible,
>;

type Inner = tower::util::BoxCloneService<Request<()>, Response<Full<Bytes>>, Infallible>;

fn inner(origin: Origin) -> Inner {
    Inner::new(tower::service_fn(move |request: Request<()>| {
        let origin = origin.clone();
        async move {
            // In flight for a moment: a burst's requests meet it.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let host = request
                .headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .or_else(|| request.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let path = request
                .uri()
                .path_and_query()
                .map_or("/".into(), |p| p.to_string());
            let (status, lines, body) =
                origin.respond(request.method().as_str(), &host, &path, request.headers());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (name, value) in lines {
                response.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            Ok::<_, Infallible>(response)
        }
    }))
}

fn http_request(req: &Req) -> Request<()> {
    let mut request = Request::builder()
        .method(Method::from_bytes(req.method.as_bytes()).unwrap())
        .uri(&req.target)
        .body(())
        .unwrap();
    if let Some(host) = &req.host {
        request
            .headers_mut()
            .insert("host", HeaderValue::from_str(host).unwrap());
    }
    for (name, value) in &req.fields {
        request
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    request
}

/// How a run reaches the cache.
enum Target {
    /// Layers over one backend (several: several processes), taken in turn at random.
    Layers(Vec<(Svc, support::Watch)>),
    Proxy(support::proxy::Proxy),
}

impl Target {
    /// Sends the requests together (one alone, or a burst for one URL) and reads each
    /// answer to its end.
    async fn send(&self, reqs: &[Req], rng: &mut StdRng) -> Vec<Answer> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, req) in reqs.iter().enumerate() {
            let req = req.clone();
            match self {
                Target::Layers(layers) => {
                    let (svc, _) = &layers[rng.random_range(0..layers.len())];
                    let svc = svc.clone();
                    tasks.spawn(async move {
                        let response = svc.oneshot(http_request(&req)).await.unwrap();
                        let (parts, body) = response.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let answer = Answer {
                            status: parts.status.as_u16(),
                            headers: parts.headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        };
                        (i, answer)
                    });
                }
                Target::Proxy(proxy) => {
                    let addr = proxy.addr;
                    tasks.spawn(async move { (i, proxy_exchange(addr, &req).await) });
                }
            }
        }
        let mut answers: Vec<Option<Answer>> = reqs.iter().map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            let (i, answer) = done.unwrap();
            answers[i] = Some(answer);
        }
        if let Target::Layers(layers) = self {
            // Stores and refreshes land before the next request: a run replays.
            for (_, watch) in layers {
                watch.settled().await;
            }
        }
        answers.into_iter().map(Option::unwrap).collect()
    }
}

async fn proxy_exchange(addr: std::net::SocketAddr, req: &Req) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    if let Some(host) = &req.host {
        let _ = write!(head, "Host: {host}\r\n");
    }
    for (name, value) in &req.fields {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !matches!(req.method, "GET" | "HEAD") {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the proxy answered within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            headers.append(
                HeaderName::from_bytes(n.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(v.trim()).unwrap(),
            );
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Runs one seed's sequence; `Err` with the replayable log on the first violation.
async fn run(
    seed: u64,
    steps: usize,
    target: &Target,
    origin: &Origin,
    pauses: bool,
    routes: bool,
) -> Result<usize, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The policies were drawn from the same seed by `policies`; skip past them.
    let _ = policies(&mut rng);
    let mut memory = Memory::default();
    let mut oracle = Oracle {
        records: HashMap::new(),
        floors: HashMap::new(),
        routes,
    };
    let mut log = String::new();
    let mut reused = 0;
    for step in 0..steps {
        let first = request(&mut rng, &memory, pauses);
        if first.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(first.pause_ms)).await;
        }
        let mut reqs = vec![first];
        if matches!(reqs[0].method, "GET" | "HEAD") && rng.random_bool(0.1) {
            // A burst: others ask for the same URL at once, as other users.
            for _ in 0..rng.random_range(1..=3) {
                let mut other = request(&mut rng, &memory, false);
                other.method = reqs[0].method;
                other.target = reqs[0].target.clone();
                other.host = reqs[0].host.clone();
                reqs.push(other);
            }
        }
        let before = origin.serial();
        let answers = support::bounded("one step", target.send(&reqs, &mut rng)).await;
        let now = Instant::now();
        let after = origin.serial();
        for record in origin.records() {
            oracle.records.entry(record.serial).or_insert(record);
        }
        let made: Vec<u64> = (before + 1..=after).collect();
        for (n, (req, answer)) in reqs.iter().zip(&answers).enumerate() {
            let together = if reqs.len() > 1 {
                format!(" (burst {n})")
            } else {
                String::new()
            };
            let _ = writeln!(
                log,
                "#{step}{together}: {}\n    -> {}",
                req.line(),
                answer.line()
            );
        }
        for (req, answer) in reqs.iter().zip(&answers) {
            if let Err(violation) = oracle.check(req, answer, &made, now) {
                return Err(format!(
                    "seed {seed}, step {step}: {violation}\n(replay: REVIEW_QX_SEED={seed})\npolicies: {:?}\ndeploys (serial, resource, policy): {:?}\n{log}",
                    policies(&mut StdRng::seed_from_u64(seed)),
                    origin.0.lock().unwrap().deployed,
                ));
            }
            if answer.serial().is_some_and(|s| !made.contains(&s)) {
                reused += 1;
            }
        }
        let (req, answer) = (&reqs[0], &answers[0]);
        // Remember validators to send back.
        let r = resource(&req.path());
        if let Some(etag) = answer.all("etag").first() {
            memory.etags.insert((req.user, r), etag.clone());
        }
        if let Some(lm) = answer.all("last-modified").first() {
            memory.dates.insert((req.user, r), lm.clone());
        }
        // An unsafe request that succeeded invalidates its target and the same-origin
        // Location / Content-Location (RFC 9111 §4.4), from when it started.
        if !matches!(req.method, "GET" | "HEAD") && (200..400).contains(&answer.status) {
            if let Some(authority) = req.authority() {
                let mut paths = vec![req.path()];
                for name in ["location", "content-location"] {
                    for value in answer.all(name) {
                        paths.push(resolve(&req.path(), &value));
                    }
                }
                for path in paths {
                    let floor = oracle.floors.entry((authority.clone(), path)).or_insert(0);
                    *floor = (*floor).max(before);
                }
            }
        }
    }
    Ok(reused)
}

/// A path or relative reference (no scheme, no authority) resolved against `base` (RFC
/// 3986 §5.2): the oracle's own resolution.
fn resolve(base: &str, reference: &str) -> String {
    if reference.starts_with('/') {
        return reference.to_string();
    }
    let base = base.split('?').next().unwrap_or("/");
    if reference.starts_with('?') {
        return format!("{base}{reference}");
    }
    let (path, query) = reference.split_once('?').unwrap_or((reference, ""));
    let merged = format!("{}{path}", &base[..=base.rfind('/').unwrap_or(0)]);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = merged.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                if i + 1 == segments.len() {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("/{}{query}", out.join("/"))
}

fn policies(rng: &mut StdRng) -> Vec<Policy> {
    RESOURCES.iter().map(|_| policy(rng)).collect()
}

/// The seeds to run: `REVIEW_QX_SEED` alone when set.
fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("REVIEW_QX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => default.to_vec(),
    }
}

fn steps(default: usize) -> usize {
    std::env::var("REVIEW_QX_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn layers<B: Backend>(
    backend: B,
    origin: &Origin,
    processes: usize,
    near: Option<NearCache>,
    mode: CacheMode,
) -> Target {
    let mut layers = Vec::new();
    for _ in 0..processes {
        let mut layer = tower_memcache::MemcacheLayer::new(backend.clone())
            .namespace("qx")
            .mode(mode);
        if let Some(near) = &near {
            // Each process its own near tier.
            layer = layer.near_cache(NearCache::new(near.capacity(), near.max_staleness()));
        }
        let watch = support::Watch::of(&layer);
        let svc: Svc =
            tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner(origin.clone())));
        layers.push((svc, watch));
    }
    Target::Layers(layers)
}

async fn run_layers(
    seeds_: &[u64],
    steps_: usize,
    processes: usize,
    near: Option<NearCache>,
    mode: CacheMode,
) {
    let mut total_reused = 0;
    for seed in seeds(seeds_) {
        let origin = Origin::new(seed);
        let target = layers(MemoryBackend::new(), &origin, processes, near.clone(), mode);
        let routes = matches!(mode, CacheMode::Routes);
        match run(seed, steps(steps_), &target, &origin, true, routes).await {
            Ok(reused) => {
                println!("seed {seed}: {reused} answers from the cache");
                total_reused += reused
            }
            Err(report) => panic!("{report}"),
        }
    }
    // A checker that never meets a reused answer checks nothing of the cache (one seed
    // replayed alone may meet few).
    if std::env::var("REVIEW_QX_SEED").is_err() {
        assert!(
            total_reused > 20,
            "only {total_reused} answers came from the cache"
        );
    }
}

/// Several users' random requests through one layer in origin mode over `MemoryBackend`:
/// every answer belongs to the request that asked.
#[tokio::test]
async fn random_sequences_through_the_layer_answer_only_their_own_requests() {
    run_layers(&[1, 2, 3, 4], 250, 1, None, CacheMode::Origin).await;
}

/// The same with a near tier in front of memcached.
#[tokio::test]
async fn random_sequences_through_the_layer_with_a_near_tier() {
    let near = NearCache::new(8 << 20, Duration::from_millis(500));
    run_layers(&[11, 12], 250, 1, Some(near), CacheMode::Origin).await;
}

/// The same over two processes (two layers, one backend) taken at random per request:
/// what one stored or invalidated, the other reads.
#[tokio::test]
async fn random_sequences_through_two_processes() {
    run_layers(&[21, 22], 250, 2, None, CacheMode::Origin).await;
}

/// The same over two processes, each with a near tier that asks memcached every time
/// (`max_staleness` 0): another process's invalidation shows at once.
#[tokio::test]
async fn random_sequences_through_two_processes_with_near_tiers_of_staleness_zero() {
    let near = NearCache::new(8 << 20, Duration::ZERO);
    run_layers(&[51, 52], 250, 2, Some(near), CacheMode::Origin).await;
}

/// The same in routes mode (the layer's default): lifetimes are the route's, but for
/// responses to authorized requests; the sharing rules are the same.
#[tokio::test]
async fn random_sequences_through_the_layer_in_routes_mode() {
    run_layers(&[41, 42], 250, 1, None, CacheMode::Routes).await;
}

/// The same through the `tower-memcache-proxy` binary over a real memcached, with an HTTP
/// origin.
#[tokio::test]
async fn random_sequences_through_the_proxy_over_memcached() {
    through_the_proxy(&[31], &[]).await;
}

/// The same with the proxy's near tier (one process: its own invalidations apply at once).
#[tokio::test]
async fn random_sequences_through_the_proxy_with_a_near_tier() {
    through_the_proxy(&[32], &["--near-cache", "8M,1s"]).await;
}

/// The same with the proxy in routes mode: every storable response for `--ttl`.
#[tokio::test]
async fn random_sequences_through_the_proxy_in_routes_mode() {
    through_the_proxy(&[33], &["--mode", "routes", "--ttl", "3600"]).await;
}

async fn through_the_proxy(default_seeds: &[u64], args: &[&str]) {
    let Some(memcached) = support::Memcached::start("review_qx_proxy") else {
        return;
    };
    let mut total_reused = 0;
    for seed in seeds(default_seeds) {
        // No flush between seeds: each has an origin of its own, on a port of its own,
        // and so a namespace of its own (`proxy:` + the upstream's authority).
        let origin = Origin::new(seed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let served = {
            let origin = origin.clone();
            support::origin::serve_http1(
                listener,
                move |request: Request<hyper::body::Incoming>| {
                    let origin = origin.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let host = request
                            .headers()
                            .get("host")
                            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                            .unwrap_or_default();
                        let path = request
                            .uri()
                            .path_and_query()
                            .map_or("/".into(), |p| p.to_string());
                        let (status, lines, body) = origin.respond(
                            request.method().as_str(),
                            &host,
                            &path,
                            request.headers(),
                        );
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        for (name, value) in lines {
                            response.headers_mut().append(
                                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                                HeaderValue::from_str(&value).unwrap(),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                },
            )
        };
        let addr = memcached.addr();
        let mut all_args = vec!["--memcache", &addr];
        all_args.extend_from_slice(args);
        let proxy = support::proxy::start_proxy(upstream, &all_args);
        let target = Target::Proxy(proxy);
        let routes = args.contains(&"routes");
        let result = run(seed, steps(200), &target, &origin, false, routes).await;
        served.abort();
        match result {
            Ok(reused) => {
                println!("seed {seed}: {reused} answers from the cache");
                total_reused += reused
            }
            Err(report) => panic!("{report}"),
        }
    }
    if std::env::var("REVIEW_QX_SEED").is_err() {
        assert!(
            total_reused > 5,
            "only {total_reused} answers came from the cache"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The oracle itself: it fails on answers made wrong by hand
// ---------------------------------------------------------------------------------------

fn record(
    serial: u64,
    cache_control: &str,
    vary: &[&str],
    seen: &[(&'static str, &str)],
) -> Record {
    let mut fields: HashMap<&'static str, Option<String>> = HashMap::new();
    for field in VARY_FIELDS.iter().chain(OTHER_FIELDS) {
        fields.insert(*field, None);
    }
    for (name, value) in seen {
        fields.insert(*name, Some((*value).to_string()));
    }
    Record {
        serial,
        at: Instant::now(),
        method: "GET".into(),
        host: "example.com".into(),
        path: "/a".into(),
        seen: fields,
        status: 200,
        cache_control: cache_control.into(),
        vary_fields: vary.iter().map(|v| (*v).to_string()).collect(),
        etag: None,
        last_modified: None,
        body: format!("serial={serial};"),
    }
}

fn oracle_of(records: Vec<Record>) -> Oracle {
    Oracle {
        records: records.into_iter().map(|r| (r.serial, r)).collect(),
        floors: HashMap::new(),
        routes: false,
    }
}

fn get(user: usize, fields: &[(&'static str, &str)]) -> Req {
    Req {
        user,
        method: "GET",
        target: "/a".into(),
        host: Some("example.com".into()),
        fields: fields.iter().map(|(n, v)| (*n, (*v).to_string())).collect(),
        pause_ms: 0,
    }
}

fn answer_of(serial: u64, extra: &[(&str, &str)]) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert("x-serial", HeaderValue::from(serial));
    for (name, value) in extra {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    Answer {
        status: 200,
        headers,
        body: format!("serial={serial};"),
    }
}

/// The oracle accepts a shareable fresh response reused for an equal request, and
/// refuses the same response to a request of another variant, another URI, or one the
/// cache may not look up.
#[test]
fn the_oracle_refuses_another_variant_uri_or_an_unkeyable_request() {
    let oracle = oracle_of(vec![record(
        1,
        "max-age=60",
        &["x-tenant"],
        &[("x-tenant", "t1")],
    )]);
    let now = Instant::now();
    let answer = answer_of(1, &[]);
    assert!(
        oracle
            .check(&get(0, &[("x-tenant", "t1")]), &answer, &[], now)
            .is_ok()
    );
    assert!(
        oracle
            .check(&get(0, &[("x-tenant", "t2")]), &answer, &[], now)
            .is_err()
    );
    assert!(oracle.check(&get(0, &[]), &answer, &[], now).is_err());
    let mut other_path = get(0, &[("x-tenant", "t1")]);
    other_path.target = "/A".into();
    assert!(oracle.check(&other_path, &answer, &[], now).is_err());
    let mut other_host = get(0, &[("x-tenant", "t1")]);
    other_host.host = Some("example.org".into());
    assert!(oracle.check(&other_host, &answer, &[], now).is_err());
    let mut fqdn = get(0, &[("x-tenant", "t1")]);
    fqdn.host = Some("Example.com.".into());
    assert!(oracle.check(&fqdn, &answer, &[], now).is_ok());
    let mut odd = get(0, &[("x-tenant", "t1")]);
    odd.target = "http://example.com/a".into();
    odd.host = Some("other.test".into());
    assert!(oracle.check(&odd, &answer, &[], now).is_err());
    // `Accept-Encoding` by meaning.
    let oracle = oracle_of(vec![record(
        2,
        "max-age=60",
        &["accept-encoding"],
        &[("accept-encoding", "gzip, br")],
    )]);
    let answer = answer_of(2, &[]);
    assert!(
        oracle
            .check(
                &get(0, &[("accept-encoding", "BR,gzip")]),
                &answer,
                &[],
                now
            )
            .is_ok()
    );
    assert!(
        oracle
            .check(
                &get(0, &[("accept-encoding", "gzip;q=0.5, br")]),
                &answer,
                &[],
                now
            )
            .is_err()
    );
}

/// The oracle refuses a private, `no-store`, `Vary: *` or unshareable authorized response
/// reused (also handed to another user's request under way at the same time), another
/// response's `Set-Cookie`, and a field named in `private="…"`.
#[test]
fn the_oracle_refuses_what_belongs_to_one_request() {
    let now = Instant::now();
    for (cc, vary, seen) in [
        ("private, max-age=60", &[][..], &[][..]),
        ("no-store", &[], &[]),
        ("max-age=60", &["*"], &[]),
        ("max-age=60", &[], &[("authorization", "Bearer alice")]),
        ("max-age=60", &[], &[("cache-control", "no-store")]),
    ] {
        let oracle = oracle_of(vec![record(1, cc, vary, seen)]);
        let answer = answer_of(1, &[]);
        assert!(
            oracle.check(&get(0, &[]), &answer, &[], now).is_err(),
            "{cc} {vary:?} {seen:?}"
        );
        // Made while another user's request was under way: shared all the same.
        let bob = get(2, &[("cookie", "session=bob")]);
        assert!(
            oracle.check(&bob, &answer, &[1], now).is_err(),
            "{cc} {vary:?} {seen:?}"
        );
    }
    let oracle = oracle_of(vec![
        record(1, "max-age=60, private=\"x-user\"", &[], &[]),
        record(2, "max-age=60", &[], &[]),
    ]);
    let cookie = answer_of(1, &[("set-cookie", "sid=2; Path=/")]);
    assert!(oracle.check(&get(0, &[]), &cookie, &[], now).is_err());
    assert!(oracle.check(&get(0, &[]), &cookie, &[2], now).is_ok());
    let field = answer_of(1, &[("x-user", "alice@1")]);
    assert!(oracle.check(&get(0, &[]), &field, &[], now).is_err());
    let field = answer_of(2, &[("x-user", "alice@2")]);
    assert!(oracle.check(&get(0, &[]), &field, &[], now).is_ok());
}

/// The oracle refuses a response reused past its lifetime, without the revalidation its
/// `no-cache` or the request's asks for, or after an invalidation of its URI returned.
#[test]
fn the_oracle_refuses_stale_unvalidated_and_invalidated_answers() {
    let mut old = record(1, "max-age=1", &[], &[]);
    old.at = Instant::now() - Duration::from_secs(5);
    let mut not_modified = record(4, "no-cache", &[], &[]);
    not_modified.status = 304;
    let mut failed = record(5, "no-store", &[], &[]);
    failed.status = 503;
    let oracle = oracle_of(vec![
        old,
        record(2, "no-cache", &[], &[]),
        record(3, "max-age=60", &[], &[]),
        not_modified,
        failed,
    ]);
    let now = Instant::now();
    assert!(
        oracle
            .check(&get(0, &[]), &answer_of(1, &[]), &[], now)
            .is_err()
    );
    assert!(
        oracle
            .check(
                &get(0, &[("cache-control", "max-stale")]),
                &answer_of(1, &[]),
                &[],
                now
            )
            .is_ok()
    );
    assert!(
        oracle
            .check(&get(0, &[]), &answer_of(2, &[]), &[], now)
            .is_err()
    );
    assert!(
        oracle
            .check(&get(0, &[]), &answer_of(2, &[]), &[4], now)
            .is_ok()
    );
    assert!(
        oracle
            .check(
                &get(0, &[("cache-control", "no-cache")]),
                &answer_of(3, &[]),
                &[],
                now
            )
            .is_err()
    );
    assert!(
        oracle
            .check(&get(0, &[]), &answer_of(3, &[]), &[], now)
            .is_ok()
    );
    let mut oracle = oracle;
    oracle.floors.insert(("example.com".into(), "/a".into()), 3);
    assert!(
        oracle
            .check(&get(0, &[]), &answer_of(3, &[]), &[], now)
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Targeted: what the checker's model suggested
// ---------------------------------------------------------------------------------------

/// The body of a GET of `path` on `example.com`.
async fn read(svc: &Svc, path: &str) -> String {
    let request = Request::get(path)
        .header("host", "example.com")
        .body(())
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// An origin that answers an unsafe request with a `Location` or `Content-Location` as a
/// relative reference (`42`, `../items/42`, `?page=2`, RFC 9110 §10.2.2 allows any
/// URI-reference, resolved against the target URI; `//example.com/items/42` takes its
/// scheme) names a same-origin URI as surely as
/// `/items/42` does: README promises those invalidated (RFC 9111 §4.4). Before the fix
/// only absolute paths and absolute URIs were: the page the POST changed stayed served
/// from the cache.
#[tokio::test]
async fn a_relative_location_after_an_unsafe_request_is_invalidated() {
    for (target, location, invalidated) in [
        ("/items/", "42", "/items/42"),
        ("/items/new", "42", "/items/42"),
        ("/items/42/edit", "../42", "/items/42"),
        ("/items/42/edit", "./", "/items/42/"),
        ("/items/42", "?page=2", "/items/42?page=2"),
        ("/items/42/edit", "../42?x=1#top", "/items/42?x=1"),
        ("/items/42/edit", "//Example.com/items/42", "/items/42"),
        ("/items/42/comments", "/items/42#comments", "/items/42"),
    ] {
        let origin = Origin::new(0);
        {
            let mut state = origin.0.lock().unwrap();
            let mut fixed = policy(&mut StdRng::seed_from_u64(0));
            fixed.status = 200;
            fixed.cache_control = vec!["max-age=600"];
            fixed.vary = Vec::new();
            fixed.vary_fields = Vec::new();
            fixed.set_cookie = false;
            fixed.flaky = false;
            state.policies = vec![fixed; RESOURCES.len()];
        }
        let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
        let watch = support::Watch::of(&layer);
        let location = location.to_string();
        let inner = {
            let origin = origin.clone();
            tower::service_fn(move |request: Request<()>| {
                let inner = inner(origin.clone());
                let location = location.clone();
                async move {
                    let unsafe_method = request.method() == Method::POST;
                    let mut response = inner.oneshot(request).await?;
                    if unsafe_method {
                        let headers = response.headers_mut();
                        headers.remove("location");
                        headers.remove("content-location");
                        headers.insert("location", HeaderValue::from_str(&location).unwrap());
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let svc: Svc = Svc::new(tower::Layer::layer(&layer, inner));
        let first = read(&svc, invalidated).await;
        watch.settled().await;
        assert_eq!(read(&svc, invalidated).await, first, "stored");
        let post = Request::post(target)
            .header("host", "example.com")
            .body(())
            .unwrap();
        let answer = svc.clone().oneshot(post).await.unwrap();
        assert!(answer.status().is_success());
        watch.settled().await;
        assert_ne!(
            read(&svc, invalidated).await,
            first,
            "POST {target} answered with Location: {} left {invalidated} stored",
            answer.headers()["location"].to_str().unwrap()
        );
    }
}
