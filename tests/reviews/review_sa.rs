//! Review SA: randomised, seeded sequences of requests and purges through `MemcacheLayer`
//! (origin and routes mode, over `MemoryBackend`, with and without the near tier), checked
//! on every answer against the invariants a shared cache must keep:
//!
//! 1. the bytes answered were produced for this URL, by a request whose values of every
//!    field the response named in `Vary` equal this request's (a 206 is a slice of one);
//! 2. nothing produced before a purge (or an invalidating unsafe request) that covers it is
//!    answered after it returned;
//! 3. `Set-Cookie` and fields named by `private="…"` / `no-cache="…"` reach only the client
//!    whose request the origin answered with them; a response to a request with
//!    `Authorization` is reused only as RFC 9111 §3.5 allows;
//! 4. a reused answer is fresh or within an allowed staleness, its `Age` agrees with when
//!    the origin produced it, and `no-store`, `no-cache`, `must-revalidate` hold;
//! 5. a 304 answers only matching preconditions, with the selected stored validators.
//!
//! The origin writes a serial into every body (and an `x-serial` field), and remembers
//! which request produced it and when. The layer's clock is the system clock
//! (`SystemTime`), so tokio's paused time would move nothing it reads: staleness comes from
//! the origin's `Age` field and from a few short real sleeps.
//!
//! `SA_SEED=n` replays one case (the seed a failure prints, with the same `SA_OPS` and
//! `SA_SETTLE`); `SA_CASES=n` changes the number of cases per configuration, `SA_OPS=n`
//! the steps of each (60), `SA_SETTLE=p` how often background work is awaited (80 %).

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::versioned::Svc;
use tower_memcache::cache::{CacheMode, NearCache, Purger};
use tower_memcache::{MemcacheLayer, MemoryBackend};

const BODY_LEN: usize = 64;
const HOSTS: [&str; 2] = ["a.example", "b.example"];
const PATHS: [&str; 3] = ["/p0", "/p1", "/p2?q=1"];
/// The `Last-Modified` dates the origin sends, and the `If-Modified-Since` dates clients
/// send (the last one before both), with their Unix times.
const DATES: [(&str, u64); 3] = [
    ("Sat, 05 Dec 2026 00:00:00 GMT", 1_796_428_800),
    ("Sun, 06 Dec 2026 00:00:00 GMT", 1_796_515_200),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
];
/// Routes mode's lifetime for every route.
const ROUTE_LIFETIME: f64 = 2.0;

/// SplitMix64: small, seedable, the same on every platform.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What the origin produced for one serial, and for which request.
#[derive(Clone, Debug)]
struct Rec {
    url: String,
    method: Method,
    req_id: u64,
    req_headers: HeaderMap,
    produced: SystemTime,
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Origin {
    seed: u64,
    next: Arc<AtomicU64>,
    recs: Arc<Mutex<HashMap<u64, Rec>>>,
}

fn url_of(request: &Request<()>) -> String {
    let host = request
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            request
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let host = canonical_host(&host);
    let pq = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    format!("{host}{pq}")
}

/// A host as the key has it: without case, a trailing dot or the default port.
fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix(":80").unwrap_or(&host);
    host.strip_suffix('.').unwrap_or(host).to_owned()
}

/// Another spelling of `host` that names the same authority (README: "Keys").
fn spell(host: &str, rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => host.to_owned(),
        1 => host.to_ascii_uppercase(),
        2 => format!("{host}."),
        3 => format!("{host}:80"),
        _ => format!("{}.:80", host.to_ascii_uppercase()),
    }
}

fn path_index(url: &str) -> usize {
    PATHS.iter().position(|p| url.ends_with(p)).unwrap_or(0)
}

impl Origin {
    fn serial_now(&self) -> u64 {
        self.next.load(Ordering::SeqCst) + 1
    }

    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        let serial = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rng = Rng(self.seed ^ serial.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let url = url_of(request);
        let req_id = request
            .headers()
            .get("x-req-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let inm = request
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut headers = HeaderMap::new();
        let mut add = |name: &'static str, value: String| {
            headers.append(name, HeaderValue::from_str(&value).unwrap());
        };
        let status = match &inm {
            // An origin that finds the client's (first) validator current.
            Some(tags) if tags != "*" && rng.chance(35) => {
                let first = tags.split(',').next().unwrap_or("").trim().to_owned();
                add("etag", first);
                304
            }
            None if request.headers().contains_key("if-modified-since") && rng.chance(35) => 304,
            _ => match rng.below(100) {
                0..=74 => 200,
                75..=87 => 404,
                _ => 500,
            },
        };
        add("x-serial", serial.to_string());
        let mut cc: Vec<String> = Vec::new();
        match rng.below(100) {
            0..=59 => cc.push(format!("max-age={}", rng.pick(&[0, 1, 3, 60]))),
            60..=74 => cc.push(format!("s-maxage={}", rng.pick(&[0, 1, 3, 60]))),
            _ => {}
        }
        for (percent, directive) in [
            (7, "no-store"),
            (7, "private"),
            (10, "no-cache"),
            (10, "must-revalidate"),
            (10, "public"),
            (8, "private=\"x-secret\""),
            (5, "no-cache=\"set-cookie\""),
            (5, "no-cache=\"x-secret\""),
        ] {
            if rng.chance(percent) {
                cc.push(directive.to_owned());
            }
        }
        if rng.chance(15) {
            cc.push(format!("stale-while-revalidate={}", rng.pick(&[2, 30])));
        }
        if rng.chance(15) {
            cc.push("stale-if-error=30".to_owned());
        }
        if !cc.is_empty() {
            add("cache-control", cc.join(", "));
        }
        match rng.below(100) {
            0..=39 => add("vary", "accept-language".to_owned()),
            40..=49 => add("vary", "accept-language, cookie".to_owned()),
            50..=54 => add("vary", "authorization".to_owned()),
            55..=57 => add("vary", "*".to_owned()),
            _ => {}
        }
        if status != 304 {
            match rng.below(100) {
                0..=49 => add("etag", format!("\"e{serial}\"")),
                50..=69 => add("etag", format!("\"v{}\"", path_index(&url))),
                70..=79 => add("etag", format!("W/\"w{}\"", path_index(&url))),
                _ => {}
            }
        }
        if rng.chance(25) {
            add("last-modified", rng.pick(&DATES[..2]).0.to_owned());
        }
        if rng.chance(15) {
            add("set-cookie", format!("sid=S{serial}"));
        }
        // A field only this client may see: sent when a directive names it.
        if cc.iter().any(|d| d.ends_with("=\"x-secret\"")) {
            add("x-secret", format!("sec{serial}"));
        }
        if rng.chance(50) {
            add("surrogate-key", format!("t{} all", path_index(&url)));
        }
        if rng.chance(20) {
            add("age", rng.pick(&[2, 10, 100]).to_string());
        }
        let body = if status == 304 || request.method() == Method::HEAD {
            Bytes::new()
        } else {
            let mut text = format!("{serial:08}|{url}|");
            while text.len() < BODY_LEN {
                text.push((b'a' + (text.len() % 26) as u8) as char);
            }
            text.truncate(BODY_LEN);
            Bytes::from(text)
        };
        self.recs.lock().unwrap().insert(
            serial,
            Rec {
                url,
                method: request.method().clone(),
                req_id,
                req_headers: request.headers().clone(),
                produced: SystemTime::now(),
                status,
                headers: headers.clone(),
                body: body.clone(),
            },
        );
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        *response.headers_mut() = headers;
        response
    }

    fn rec(&self, serial: u64) -> Option<Rec> {
        self.recs.lock().unwrap().get(&serial).cloned()
    }

    fn recs_of_request(&self, req_id: u64) -> Vec<(u64, Rec)> {
        let recs = self.recs.lock().unwrap();
        let mut own: Vec<_> = recs
            .iter()
            .filter(|(_, r)| r.req_id == req_id)
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        own.sort_by_key(|(s, _)| *s);
        own
    }
}

/// What a purge or an invalidating unsafe request covers.
#[derive(Clone, Debug)]
enum Cover {
    Uri(String),
    Tag(String),
    All,
}

/// A purge that returned: covers what was produced before `watermark` (the first serial
/// not yet produced when it started).
#[derive(Clone, Debug)]
struct Purge {
    cover: Cover,
    watermark: u64,
    /// The process that invalidated (1: the other one, by an unsafe request). This
    /// process's near tier learns of another's invalidation only within its
    /// `max_staleness` (documented), so answers it gives are not held to it.
    by_other: bool,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    mode: CacheMode,
    near: bool,
}

impl Config {
    fn routes(self) -> bool {
        matches!(self.mode, CacheMode::Routes)
    }
}

/// Directives of a `Cache-Control` as (name, argument) pairs.
fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .get_all("cache-control")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            let (name, arg) = match d.split_once('=') {
                Some((n, a)) => (n, Some(a.trim_matches('"').to_owned())),
                None => (d, None),
            };
            Some((name.trim().to_ascii_lowercase(), arg))
        })
        .collect()
}

fn has(dirs: &[(String, Option<String>)], name: &str) -> bool {
    dirs.iter().any(|(n, a)| n == name && a.is_none())
}

fn seconds(dirs: &[(String, Option<String>)], name: &str) -> Option<f64> {
    dirs.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, a)| a.as_deref()?.parse().ok())
}

fn field_values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn vary_fields(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn last_modified(headers: &HeaderMap) -> Option<u64> {
    let value = header(headers, "last-modified")?;
    DATES.iter().find(|(d, _)| *d == value).map(|(_, t)| *t)
}

fn weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// One client request as the case sends it.
#[derive(Clone, Debug)]
struct Req {
    method: Method,
    /// The URL as the key has it: host (canonical), path and query.
    url: String,
    /// The request target as sent (absolute form in some spelling of the host, or origin
    /// form with a `Host` field).
    target: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in &self.headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }
}

struct Case {
    config: Config,
    origin: Origin,
    /// This process's layer, and another process's over the same memcached and
    /// namespace (without a near tier: a purge reaches it at once).
    svcs: [Svc; 2],
    purger: Purger<MemoryBackend>,
    watches: [support::Watch; 2],
    purges: Vec<Purge>,
    /// ETags answered per URL, for the conditionals sent later.
    etags: HashMap<String, Vec<String>>,
    next_req: u64,
    log: Vec<String>,
    /// What the answers were, to see that the sequences reach each case.
    tally: HashMap<String, u64>,
}

impl Case {
    fn new(seed: u64, config: Config) -> Self {
        let origin = Origin {
            seed,
            ..Origin::default()
        };
        let backend = MemoryBackend::new();
        let plain = MemcacheLayer::new(backend)
            .namespace("sa")
            .mode(config.mode)
            .default_lifetime(Duration::from_secs(ROUTE_LIFETIME as u64))
            .tag_header(Some(HeaderName::from_static("surrogate-key")));
        let layer = if config.near {
            plain
                .clone()
                .near_cache(NearCache::new(4 << 20, Duration::from_secs(5)))
        } else {
            plain.clone()
        };
        let serve = |layer: &MemcacheLayer<MemoryBackend>| {
            let responder = origin.clone();
            support::versioned::serving(layer, move |r: &Request<()>| responder.respond(r))
        };
        Self {
            config,
            svcs: [serve(&layer), serve(&plain)],
            origin,
            purger: layer.purger(),
            watches: [support::Watch::of(&layer), support::Watch::of(&plain)],
            purges: Vec::new(),
            etags: HashMap::new(),
            next_req: 0,
            log: Vec::new(),
            tally: HashMap::new(),
        }
    }

    fn random_request(&mut self, rng: &mut Rng) -> Req {
        let host = *rng.pick(&HOSTS);
        let path = *rng.pick(&PATHS);
        let url = format!("{host}{path}");
        let method = match rng.below(100) {
            0..=74 => Method::GET,
            75..=84 => Method::HEAD,
            85..=89 => Method::POST,
            90..=94 => Method::PUT,
            _ => Method::DELETE,
        };
        let mut headers = Vec::new();
        let target = match rng.below(100) {
            0..=59 => format!("http://{url}"),
            60..=84 => format!("http://{}{path}", spell(host, rng)),
            _ => {
                headers.push(("host".to_owned(), spell(host, rng)));
                path.to_owned()
            }
        };
        let mut add = |n: &str, v: String| headers.push((n.to_owned(), v));
        match rng.below(3) {
            0 => {}
            1 => add("accept-language", "en".into()),
            _ => add("accept-language", "fr".into()),
        }
        if rng.chance(20) {
            add("cookie", format!("u={}", rng.below(2)));
        }
        if rng.chance(15) {
            add("authorization", format!("Bearer {}", rng.below(2)));
        }
        if rng.chance(15) {
            add(
                "range",
                (*rng.pick(&["bytes=0-9", "bytes=5-20", "bytes=100-200"])).to_owned(),
            );
            if rng.chance(50) {
                let seen = self.etags.get(&url).cloned().unwrap_or_default();
                let tag = if seen.is_empty() || rng.chance(20) {
                    "\"nope\"".to_owned()
                } else {
                    rng.pick(&seen).clone()
                };
                add("if-range", tag);
            }
        }
        if rng.chance(20) {
            let seen = self.etags.get(&url).cloned().unwrap_or_default();
            let tag = match rng.below(4) {
                0 => "*".to_owned(),
                1 => "\"nope\"".to_owned(),
                _ if !seen.is_empty() => rng.pick(&seen).clone(),
                _ => format!("\"v{}\"", path_index(&url)),
            };
            add("if-none-match", tag);
        }
        if rng.chance(12) {
            add("if-modified-since", rng.pick(&DATES).0.to_owned());
        }
        if rng.chance(15) {
            let d = *rng.pick(&[
                "no-cache",
                "max-age=0",
                "max-stale=30",
                "only-if-cached",
                "no-store",
                "stale-if-error=30",
            ]);
            add("cache-control", d.to_owned());
        }
        Req {
            method,
            url,
            target,
            headers,
        }
    }

    async fn run(&mut self, rng: &mut Rng, ops: usize) -> Result<(), String> {
        let mut slept = false;
        for _ in 0..ops {
            match rng.below(100) {
                0..=84 => {
                    // Mostly one request, sometimes two or three at once; mostly through
                    // this process, sometimes the other; background work mostly settled
                    // before the next step (then a sequence replays alike from its seed).
                    let count = match rng.below(100) {
                        0..=79 => 1,
                        80..=91 => 2,
                        _ => 3,
                    };
                    let reqs = (0..count)
                        .map(|_| (self.random_request(rng), usize::from(rng.chance(25))))
                        .collect();
                    let settle = rng.chance(settle_percent());
                    self.requests(reqs, settle).await?;
                }
                85..=89 => {
                    let (host, path) = (*rng.pick(&HOSTS), *rng.pick(&PATHS));
                    let url = format!("{host}{path}");
                    // README: scheme and host without case, a trailing dot and the
                    // default port dropped, either scheme purges the layer's.
                    let scheme = *rng.pick(&["http", "HTTP", "https"]);
                    let spelled = if scheme == "https" {
                        format!("https://{host}{path}")
                    } else {
                        format!("{scheme}://{}{path}", spell(host, rng))
                    };
                    let watermark = self.origin.serial_now();
                    self.log.push(format!("purge_uri {spelled}"));
                    self.purger
                        .purge_uri(&spelled)
                        .await
                        .map_err(|e| format!("purge_uri: {e}"))?;
                    self.purges.push(Purge {
                        cover: Cover::Uri(url),
                        watermark,
                        by_other: false,
                    });
                }
                90..=93 => {
                    let tag = (*rng.pick(&["t0", "t1", "t2", "all"])).to_owned();
                    let watermark = self.origin.serial_now();
                    self.log.push(format!("purge_tag {tag}"));
                    self.purger
                        .purge_tag(&tag)
                        .await
                        .map_err(|e| format!("purge_tag: {e}"))?;
                    self.purges.push(Purge {
                        cover: Cover::Tag(tag),
                        watermark,
                        by_other: false,
                    });
                }
                94..=95 => {
                    let watermark = self.origin.serial_now();
                    self.log.push("purge_namespace".into());
                    self.purger
                        .purge_namespace()
                        .await
                        .map_err(|e| format!("purge_namespace: {e}"))?;
                    self.purges.push(Purge {
                        cover: Cover::All,
                        watermark,
                        by_other: false,
                    });
                }
                _ => {
                    if !slept && rng.chance(10) {
                        slept = true;
                        self.log.push("sleep 1100 ms".into());
                        tokio::time::sleep(Duration::from_millis(1100)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn requests(&mut self, reqs: Vec<(Req, usize)>, settle: bool) -> Result<(), String> {
        let watermark = self.origin.serial_now();
        let mut sending = Vec::new();
        for (mut req, process) in reqs {
            self.next_req += 1;
            let id = self.next_req;
            req.headers.push(("x-req-id".into(), id.to_string()));
            let svc = self.svcs[process].clone();
            sending.push(async move {
                let sent = SystemTime::now();
                let refs: Vec<(&str, &str)> = req
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let answer = support::send(&svc, req.method.clone(), &req.target, &refs).await;
                (req, process, id, answer, sent, SystemTime::now())
            });
        }
        let answers = futures_util::future::join_all(sending).await;
        if settle {
            for watch in &self.watches {
                watch.settled().await;
            }
        }
        let mut invalidated = Vec::new();
        for (req, process, id, answer, sent, received) in answers {
            self.log.push(format!(
                "#{id}@{process} {} {} ({}) {:?} -> {} x-serial={:?} age={:?} cache-status={:?} \
                 body={:?}{}",
                req.method,
                req.url,
                req.target,
                req.headers,
                answer.status.as_u16(),
                header(&answer.headers, "x-serial"),
                header(&answer.headers, "age"),
                header(&answer.headers, "cache-status"),
                answer.body.get(..12),
                if settle { "" } else { " (not settled)" },
            ));
            if let Some(etag) = header(&answer.headers, "etag") {
                let seen = self.etags.entry(req.url.clone()).or_default();
                if !seen.iter().any(|e| e == etag) {
                    seen.push(etag.to_owned());
                }
            }
            let kind = format!(
                "{} {}",
                answer.status.as_u16(),
                support::as_seen(header(&answer.headers, "cache-status").unwrap_or("-"))
                    .split("; ")
                    .skip(1)
                    .map(|p| p.split('=').next().unwrap_or(p))
                    .collect::<Vec<_>>()
                    .join(";")
            );
            *self.tally.entry(kind).or_default() += 1;
            self.check(&req, id, process, &answer, sent, received)?;
            // RFC 9111 §4.4: a non-error answer to an unsafe method invalidates the URL
            // (for the requests after it; those sent with it may be answered either way).
            let unsafe_method = !matches!(req.method, Method::GET | Method::HEAD);
            if unsafe_method && answer.status.as_u16() < 400 {
                invalidated.push(Purge {
                    cover: Cover::Uri(req.url.clone()),
                    watermark,
                    by_other: process == 1,
                });
            }
        }
        self.purges.extend(invalidated);
        Ok(())
    }

    fn covers(&self, cover: &Cover, rec: &Rec, stored: &Rec) -> bool {
        match cover {
            Cover::All => true,
            Cover::Uri(url) => &rec.url == url,
            // The entry carries the tags of the response it was stored from, and (after a
            // refresh) those of the refreshing response: a purge of a tag both named
            // certainly covers it; one named by only one of them may go either way.
            Cover::Tag(tag) => {
                let names = |r: &Rec| {
                    r.headers
                        .get_all("surrogate-key")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(str::split_whitespace)
                        .any(|t| t == tag)
                };
                names(rec) && names(stored)
            }
        }
    }

    fn check(
        &self,
        req: &Req,
        id: u64,
        process: usize,
        answer: &support::Answer,
        sent: SystemTime,
        received: SystemTime,
    ) -> Result<(), String> {
        let headers = &answer.headers;
        let status = answer.status.as_u16();
        let own = self.origin.recs_of_request(id);
        let is_own = |serial: u64| own.iter().any(|(s, _)| *s == serial);
        let req_map = req.header_map();
        let rec = |serial: u64| {
            self.origin
                .rec(serial)
                .ok_or_else(|| format!("serial {serial} was never produced"))
        };

        // 3: per-client fields reach only the client the origin gave them to.
        for (field, prefix) in [("set-cookie", "sid=S"), ("x-secret", "sec")] {
            for value in headers.get_all(field) {
                let value = value.to_str().unwrap_or("");
                let serial: u64 = value
                    .strip_prefix(prefix)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("invariant 3: unknown {field}: {value}"))?;
                if !is_own(serial) {
                    return Err(format!(
                        "invariant 3: {field} {value} of request #{} answered to #{id}",
                        rec(serial)?.req_id
                    ));
                }
            }
        }

        let x_serial: Option<u64> = header(headers, "x-serial").and_then(|v| v.parse().ok());
        let body = answer.body.as_bytes();
        let body_serial: Option<u64> = (status != 206 && body.len() == BODY_LEN)
            .then(|| std::str::from_utf8(&body[..8]).ok()?.parse().ok())
            .flatten();
        if status != 206 && !body.is_empty() && body_serial.is_none() && x_serial.is_some() {
            return Err(format!("a body that is no serial's: {:?}", answer.body));
        }

        // 1: URL and variant of every serial the answer holds.
        // `Vary: *` matches no other request (RFC 9111 §4.1).
        let same_variant = |r: &Rec| {
            vary_fields(&r.headers)
                .iter()
                .all(|f| f != "*" && field_values(&r.req_headers, f) == field_values(&req_map, f))
        };
        if req.method == Method::HEAD && !body.is_empty() {
            return Err(format!("a body answered to HEAD: {:?}", answer.body));
        }
        for serial in body_serial.iter().chain(x_serial.iter()) {
            let r = rec(*serial)?;
            if r.url != req.url {
                return Err(format!(
                    "invariant 1: serial {serial} of {} answered for {}",
                    r.url, req.url
                ));
            }
            if !is_own(*serial) {
                if !same_variant(&r) {
                    return Err(format!(
                        "invariant 1: serial {serial} (vary {:?}, request {:?}) answered \
                         to another variant",
                        vary_fields(&r.headers),
                        r.req_headers
                    ));
                }
                if !matches!(r.method, Method::GET | Method::HEAD) {
                    return Err(format!(
                        "invariant 1: the answer to a {} (serial {serial}) reused",
                        r.method
                    ));
                }
            }
        }
        if status == 206 {
            let range = header(headers, "content-range").unwrap_or("");
            let (span, len) = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .ok_or_else(|| format!("206 with content-range {range:?}"))?;
            let (first, last) = span
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .ok_or_else(|| format!("206 with content-range {range:?}"))?;
            let len: usize = len.parse().map_err(|_| format!("206 range {range:?}"))?;
            let recs = self.origin.recs.lock().unwrap();
            let found = recs.iter().any(|(s, r)| {
                r.url == req.url
                    && r.status == 200
                    && r.body.len() == len
                    && r.body.get(first..=last) == Some(body)
                    && (is_own(*s) || (same_variant(r) && r.method == Method::GET))
                    // RFC 9110 §13.1.5: a part only when If-Range matches strongly.
                    && req.get("if-range").is_none_or(|tag| {
                        !tag.starts_with("W/") && header(&r.headers, "etag") == Some(tag)
                    })
            });
            if !found {
                return Err(format!(
                    "invariant 1: 206 {range} bytes {:?} are no slice of this URL's variant",
                    answer.body
                ));
            }
        }

        // 5: a 304 the cache made (not the origin's 304 to this very request) answers
        // matching preconditions, with the validators of a response stored for this URL
        // and variant. A cache-made 304 carries no `x-serial`: the stored response is
        // found by its validator.
        let origin_304 = own
            .iter()
            .any(|(_, r)| r.status == 304 && header(&r.headers, "etag") == header(headers, "etag"));
        let not_modified = || -> Result<(), String> {
            if !matches!(req.method, Method::GET | Method::HEAD) {
                return Err("invariant 5: a 304 to an unsafe method".into());
            }
            let etag = header(headers, "etag");
            let Some(inm) = req.get("if-none-match") else {
                // If-Modified-Since alone (RFC 9110 §13.1.3): a stored 200 of this variant
                // not modified since that date (its Last-Modified, else when it was
                // received: no stored response here is older than the dates sent).
                let since = req
                    .get("if-modified-since")
                    .ok_or("invariant 5: a 304 to a request without preconditions")?;
                let since = DATES.iter().find(|(d, _)| *d == since).map_or(0, |d| d.1);
                let recs = self.origin.recs.lock().unwrap();
                let selected = recs.values().any(|r| {
                    r.url == req.url
                        && matches!(r.status, 200 | 304)
                        && same_variant(r)
                        && last_modified(&r.headers).is_some_and(|m| m <= since)
                });
                if !selected {
                    return Err(format!(
                        "invariant 5: 304 to If-Modified-Since {since}, no stored response \
                         of this variant unmodified since"
                    ));
                }
                return Ok(());
            };
            let matches =
                inm.trim() == "*" || etag.is_some_and(|e| inm.split(',').any(|t| weak_eq(t, e)));
            if !matches {
                return Err(format!(
                    "invariant 5: 304 with ETag {etag:?} to If-None-Match {inm}"
                ));
            }
            let recs = self.origin.recs.lock().unwrap();
            let selected = recs.values().any(|r| {
                r.url == req.url
                    && matches!(r.status, 200 | 304)
                    && header(&r.headers, "etag") == etag
                    && same_variant(r)
            });
            if !selected {
                return Err(format!(
                    "invariant 5: 304 with ETag {etag:?}, no stored response of this variant's"
                ));
            }
            Ok(())
        };
        if status == 304 && !origin_304 {
            not_modified()?;
        }

        let Some(stored_serial) = x_serial.or(body_serial) else {
            return Ok(());
        };
        let stored = rec(stored_serial)?;
        let content_serial = body_serial.unwrap_or(stored_serial);
        let content = rec(content_serial)?;
        let reused = !is_own(content_serial);

        // 2: nothing a purge removed comes back.
        if reused {
            let near = self.config.near && process == 0;
            for purge in self.purges.iter().filter(|p| !(near && p.by_other)) {
                for (serial, r) in [(content_serial, &content), (stored_serial, &stored)] {
                    if serial < purge.watermark && self.covers(&purge.cover, r, &stored) {
                        return Err(format!(
                            "invariant 2: serial {serial} answered after {:?}",
                            purge
                        ));
                    }
                }
            }
        }

        // 3: a shared cache stores no `private`, `no-store` or §3.5-forbidden response.
        if reused {
            let dirs = directives(&content.headers);
            if has(&dirs, "private") || has(&dirs, "no-store") {
                return Err(format!(
                    "invariant 3/4: serial {content_serial} ({:?}) reused",
                    header(&content.headers, "cache-control")
                ));
            }
            let req_dirs = directives(&content.req_headers);
            if has(&req_dirs, "no-store") {
                return Err(format!(
                    "invariant 4: the answer to a no-store request (serial {content_serial}) \
                     reused"
                ));
            }
            if content.req_headers.contains_key("authorization")
                && !(has(&dirs, "public")
                    || seconds(&dirs, "s-maxage").is_some()
                    || has(&dirs, "must-revalidate"))
            {
                return Err(format!(
                    "invariant 3: the answer to an authorized request (serial \
                     {content_serial}, {:?}) reused",
                    header(&content.headers, "cache-control")
                ));
            }
        }

        // 4: freshness, staleness and Age of an answer whose headers are stored ones.
        let validated = is_own(stored_serial)
            || own
                .iter()
                .any(|(_, r)| r.status == 304 || (200..300).contains(&r.status));
        let req_dirs = directives(&req_map);
        let only_if_cached = has(&req_dirs, "only-if-cached");
        if !is_own(stored_serial) && !validated {
            let dirs = directives(&stored.headers);
            // A request with `no-cache` or `max-age=0` is answered only after asking the
            // origin. When the origin fails, `no-cache` gets the failure unless the request
            // carries its own `stale-if-error` (README). `max-age` is a preference (RFC
            // 9111 §5.2.1.1) and the stored response may not be stale: a failing origin
            // may be stood in for (by a fresh entry, or within stale-if-error, checked
            // below); either is accepted.
            let failed = own.iter().any(|(_, r)| r.status >= 500);
            let asked_origin = !own.is_empty();
            if !only_if_cached {
                if has(&req_dirs, "no-cache")
                    && !(failed && seconds(&req_dirs, "stale-if-error").is_some())
                {
                    return Err(format!(
                        "invariant 4: a no-cache request answered from the cache (origin \
                         asked: {asked_origin})"
                    ));
                }
                if seconds(&req_dirs, "max-age") == Some(0.0) && !asked_origin {
                    return Err(
                        "invariant 4: a max-age=0 request answered without the origin".into(),
                    );
                }
            }
            if has(&dirs, "no-cache") {
                return Err(format!(
                    "invariant 4: a no-cache response (serial {stored_serial}) reused without \
                     revalidation"
                ));
            }
            let origin_age = header(&stored.headers, "age")
                .and_then(|a| a.parse::<f64>().ok())
                .unwrap_or(0.0);
            let since = |t: SystemTime| {
                t.duration_since(stored.produced)
                    .unwrap_or_default()
                    .as_secs_f64()
            };
            let (age_low, age_high) = if self.config.routes() {
                // Routes mode: whether the origin's Age counts against the route's
                // lifetime is the layer's choice; accept both.
                (since(sent), origin_age + since(received))
            } else {
                (origin_age + since(sent), origin_age + since(received))
            };
            let explicit = seconds(&dirs, "s-maxage").or(seconds(&dirs, "max-age"));
            // Routes mode: the route's lifetime; for the answer to an authorized request,
            // the response's own explicit lifetime (README: "fresh only as long as its
            // own s-maxage / max-age say", with none `public` lets the route decide).
            // Whether the route's lifetime also caps an explicit one is the layer's
            // choice: the larger is accepted.
            let lifetime = match (self.config.routes(), explicit) {
                (true, Some(explicit)) if content.req_headers.contains_key("authorization") => {
                    explicit.max(ROUTE_LIFETIME)
                }
                (true, None) if content.req_headers.contains_key("authorization") => {
                    if has(&dirs, "public") {
                        ROUTE_LIFETIME
                    } else {
                        0.0
                    }
                }
                (true, _) => ROUTE_LIFETIME,
                // Origin mode without an explicit lifetime: the heuristic, a tenth of the
                // time since `Last-Modified`, at most a day (README).
                (false, Some(explicit)) => explicit,
                (false, None) => match last_modified(&stored.headers)
                    .or_else(|| last_modified(&content.headers))
                {
                    Some(modified) if matches!(content.status, 200 | 404) => {
                        let produced = stored
                            .produced
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs_f64();
                        ((produced - modified as f64) / 10.0).clamp(0.0, 86_400.0)
                    }
                    _ => 0.0,
                },
            };
            // Ages are whole seconds on the wire and in the layer: one second of slack.
            let staleness = age_low - lifetime - 1.0;
            if staleness > 0.0 {
                let forbids_stale = has(&dirs, "must-revalidate")
                    || has(&dirs, "proxy-revalidate")
                    || seconds(&dirs, "s-maxage").is_some();
                let max_stale = req_dirs
                    .iter()
                    .find(|(n, _)| n == "max-stale")
                    .map(|(_, a)| {
                        a.as_deref()
                            .and_then(|a| a.parse().ok())
                            .unwrap_or(f64::MAX)
                    });
                let swr = seconds(&dirs, "stale-while-revalidate");
                let sie = seconds(&dirs, "stale-if-error")
                    .into_iter()
                    .chain(seconds(&req_dirs, "stale-if-error"))
                    .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
                let within = |window: Option<f64>| window.is_some_and(|w| staleness <= w);
                let allowed =
                    !forbids_stale && (within(max_stale) || within(swr) || (failed && within(sie)));
                if !allowed {
                    return Err(format!(
                        "invariant 4: serial {stored_serial} ({:?}, age {age_low:.1}) reused \
                         {staleness:.1} s past its lifetime {lifetime}",
                        header(&stored.headers, "cache-control")
                    ));
                }
            }
            if let Some(age) = header(headers, "age") {
                let age: f64 = age
                    .parse()
                    .map_err(|_| format!("invariant 4: Age {age:?}"))?;
                if age < age_low.floor() - 1.0 || age > age_high.ceil() + 1.0 {
                    return Err(format!(
                        "invariant 4: Age {age} for serial {stored_serial}, expected \
                         {age_low:.1}..{age_high:.1}"
                    ));
                }
            }
        }

        Ok(())
    }
}

/// How often background work is settled after a step (`SA_SETTLE`, percent; 80 by
/// default). Lower values race stores and refreshes against later steps and purges.
fn settle_percent() -> u64 {
    std::env::var("SA_SETTLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80)
}

fn cases() -> Vec<u64> {
    if let Some(seed) = std::env::var("SA_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SA_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25u64);
    (1..=count).map(|i| i.wrapping_mul(0x9E37_79B9)).collect()
}

async fn fuzz(config: Config) {
    let mut tally: HashMap<String, u64> = HashMap::new();
    for seed in cases() {
        let mut case = Case::new(seed, config);
        let mut rng = Rng(seed);
        let ops = std::env::var("SA_OPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let result = case.run(&mut rng, ops).await;
        if let Err(failure) = result {
            let recs = case.origin.recs.lock().unwrap();
            let mut serials: Vec<_> = recs.iter().collect();
            serials.sort_by_key(|(s, _)| **s);
            let origin: Vec<String> = serials
                .iter()
                .map(|(s, r)| {
                    format!(
                        "{s}: {} {} {} -> {} {:?}",
                        r.req_id, r.method, r.url, r.status, r.headers
                    )
                })
                .collect();
            panic!(
                "{config:?}, SA_SEED={seed}: {failure}\nsequence:\n  {}\norigin:\n  {}",
                case.log.join("\n  "),
                origin.join("\n  ")
            );
        }
        for (kind, n) in case.tally {
            *tally.entry(kind).or_default() += n;
        }
    }
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    eprintln!("{config:?}: {tally:?}");
}

#[tokio::test]
async fn random_sequences_origin_mode() {
    fuzz(Config {
        mode: CacheMode::Origin,
        near: false,
    })
    .await;
}

#[tokio::test]
async fn random_sequences_origin_mode_near_tier() {
    fuzz(Config {
        mode: CacheMode::Origin,
        near: true,
    })
    .await;
}

#[tokio::test]
async fn random_sequences_routes_mode() {
    fuzz(Config {
        mode: CacheMode::Routes,
        near: false,
    })
    .await;
}

#[tokio::test]
async fn random_sequences_routes_mode_near_tier() {
    fuzz(Config {
        mode: CacheMode::Routes,
        near: true,
    })
    .await;
}

/// Found by the sequences above: the 504 the cache makes for `only-if-cached` without a
/// usable entry carried its text to a HEAD request (RFC 9110 §9.3.2: no content in the
/// response to HEAD), where every stored or forwarded answer to HEAD has none.
#[tokio::test]
async fn a_generated_answer_to_head_has_no_content() {
    for mode in [CacheMode::Origin, CacheMode::Routes] {
        let layer = MemcacheLayer::new(MemoryBackend::new()).mode(mode);
        let svc = support::versioned::serving(&layer, |_: &Request<()>| {
            Response::new(Full::new(Bytes::from_static(b"page")))
        });
        let url = "http://a.example/p0";
        let only_cached = [("cache-control", "only-if-cached")];
        let get = support::send(&svc, Method::GET, url, &only_cached).await;
        assert_eq!(get.status, 504);
        assert!(!get.body.is_empty());
        let head = support::send(&svc, Method::HEAD, url, &only_cached).await;
        assert_eq!(head.status, 504);
        assert_eq!(head.body, "", "{mode:?}");
    }
}
