//! A trace: the requests a replay sends, in order, each with the time it was made (the
//! log's clock, or a synthetic one), what the origin answers and how big the body is; and
//! the ideal outcome (an infinite cache) computed from the trace alone.

use std::collections::HashMap;
use std::io::BufRead;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal, Zipf};
use serde::Serialize;

use super::access_log::{self, Request};

/// The statuses the lab's layer may store (given to `MemcacheLayer::statuses`, so the
/// ideal below and the layer agree): the layer's own default, RFC 9111's heuristically
/// cacheable statuses.
pub const LAB_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The host every replayed request names; the log's paths are replayed against it.
pub const HOST: &str = "lab.local";

/// One request of a trace.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Milliseconds since the trace's first request; never decreasing.
    pub at_ms: u64,
    /// Index into [`Trace::paths`].
    pub path: u32,
    /// A HEAD (answered without a body, never stored) rather than a GET.
    pub head: bool,
    /// The status the origin answers.
    pub status: u16,
    /// The body size the origin answers (0 for HEAD).
    pub size: u64,
}

impl Access {
    /// Whether the origin's answer to this request is stored by a cache that holds
    /// entries of up to `max_entry` bytes.
    pub fn fills(&self, max_entry: u64) -> bool {
        !self.head && LAB_STATUSES.contains(&self.status) && self.size <= max_entry
    }
}

/// What reading a log found, line by line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogCounts {
    /// Lines read.
    pub lines: u64,
    /// GET requests replayed.
    pub get: u64,
    /// HEAD requests replayed.
    pub head: u64,
    /// Lines with another method (POST, PUT, ...), not replayed.
    pub other_methods: u64,
    /// Lines whose request line is not `METHOD /target [HTTP/x]` (`"-"`, TLS handshakes
    /// sent to a plain-text port, targets that are not a valid URI path), not replayed.
    pub unparsed_requests: u64,
    /// Informational (1xx) responses, not replayed.
    pub informational: u64,
    /// Lines that are not Common / Combined Log Format lines, skipped.
    pub malformed: u64,
    /// 304 and 206 lines, replayed as GETs of the whole response.
    pub partial_or_not_modified: u64,
    /// Lines not read because `--max-requests` was reached.
    pub beyond_limit: bool,
}

/// The requests to replay.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Where it came from, for reports.
    pub label: String,
    /// Distinct paths (with query), indexed by [`Access::path`].
    pub paths: Vec<Box<str>>,
    /// The requests, in order.
    pub requests: Vec<Access>,
    /// For a log: what its lines were.
    pub log: Option<LogCounts>,
}

impl Trace {
    /// Milliseconds from the first request to the last.
    pub fn span_ms(&self) -> u64 {
        self.requests.last().map_or(0, |a| a.at_ms)
    }

    /// Body bytes of every request.
    pub fn total_bytes(&self) -> u64 {
        self.requests.iter().map(|a| a.size).sum()
    }

    /// The largest body.
    pub fn max_size(&self) -> u64 {
        self.requests.iter().map(|a| a.size).max().unwrap_or(0)
    }

    /// Bytes of the distinct responses that could be stored in entries of up to
    /// `max_entry` bytes (each path counted once, at its largest size): the memory an
    /// infinite cache would fill, before memcached's per-item overhead.
    pub fn working_set_bytes(&self, max_entry: u64) -> u64 {
        let mut largest = vec![0u64; self.paths.len()];
        for access in &self.requests {
            if access.fills(max_entry) {
                let slot = &mut largest[access.path as usize];
                *slot = (*slot).max(access.size);
            }
        }
        largest.iter().sum()
    }

    /// The absolute URI of a path.
    pub fn uri(&self, path: u32) -> String {
        format!("http://{HOST}{}", self.paths[path as usize])
    }
}

/// Interns paths.
#[derive(Default)]
struct Paths {
    index: HashMap<Box<str>, u32>,
    paths: Vec<Box<str>>,
}

impl Paths {
    fn intern(&mut self, path: &str) -> u32 {
        if let Some(&id) = self.index.get(path) {
            return id;
        }
        // Bounded by the request limit, which is far below u32::MAX.
        let id = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
        self.paths.push(path.into());
        self.index.insert(path.into(), id);
        id
    }
}

/// Reads an access log: GET and HEAD requests in their order, at most `max_requests`.
///
/// Timing: the first request is at 0; a line logged earlier than the one before it (logs
/// are written as responses finish) is taken to be at the same time. Sizes: `-` is 0; a
/// 304 or 206 line becomes a GET answered 200 with the path's largest 200 size in the log
/// (what a shared cache fetches on a miss), or the logged size when the log has no 200
/// for the path.
pub fn from_log(
    mut reader: impl BufRead,
    label: String,
    max_requests: usize,
) -> std::io::Result<Trace> {
    let mut counts = LogCounts::default();
    let mut paths = Paths::default();
    let mut requests = Vec::new();
    let mut first_time: Option<i64> = None;
    let mut latest_ms = 0u64;
    let mut buf = Vec::new();
    while let Some(fits) = access_log::read_line(&mut reader, &mut buf)? {
        if requests.len() >= max_requests {
            counts.beyond_limit = true;
            break;
        }
        counts.lines += 1;
        if !fits {
            counts.malformed += 1;
            continue;
        }
        let line = match access_log::parse_line(&buf) {
            Ok(line) => line,
            Err(access_log::Malformed::Empty) => {
                counts.lines -= 1; // blank lines are not lines of the log
                continue;
            }
            Err(reason) => {
                counts.malformed += 1;
                tracing::debug!(line = counts.lines, ?reason, "malformed log line");
                continue;
            }
        };
        let Request::Line { method, target } = line.request else {
            counts.unparsed_requests += 1;
            continue;
        };
        let head = match method.as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => {
                counts.other_methods += 1;
                continue;
            }
        };
        if line.status < 200 {
            counts.informational += 1;
            continue;
        }
        // The replay sends it as a URI: a target `http` will not take is not replayable.
        if format!("http://{HOST}{target}")
            .parse::<http::Uri>()
            .is_err()
        {
            counts.unparsed_requests += 1;
            continue;
        }
        let t0 = *first_time.get_or_insert(line.time);
        let since = u64::try_from(line.time.saturating_sub(t0)).unwrap_or(0);
        latest_ms = latest_ms.max(since.saturating_mul(1000));
        if head {
            counts.head += 1;
        } else {
            counts.get += 1;
        }
        requests.push(Access {
            at_ms: latest_ms,
            path: paths.intern(&target),
            head,
            status: line.status,
            size: if head { 0 } else { line.bytes.unwrap_or(0) },
        });
    }

    // Whole-response sizes for the 304 and 206 lines.
    let mut full = vec![None::<u64>; paths.paths.len()];
    for access in requests.iter().filter(|a| a.status == 200 && !a.head) {
        let slot = &mut full[access.path as usize];
        *slot = Some(slot.unwrap_or(0).max(access.size));
    }
    for access in requests.iter_mut().filter(|a| !a.head) {
        if access.status == 304 || access.status == 206 {
            counts.partial_or_not_modified += 1;
            access.status = 200;
            if let Some(size) = full[access.path as usize] {
                access.size = size;
            }
        }
    }
    Ok(Trace {
        label,
        paths: paths.paths,
        requests,
        log: Some(counts),
    })
}

/// Parameters of the synthetic streams.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// Size of the hot keyspace.
    pub keys: u64,
    /// Zipf exponent.
    pub exponent: f64,
    /// Requests in the stream.
    pub requests: usize,
    /// Requests per second of trace time (so lifetimes mean something).
    pub rate: f64,
    /// Body size: fixed, or the median of a log-normal distribution.
    pub body_bytes: u64,
    /// σ of the log-normal body sizes; 0 for every body `body_bytes`.
    pub size_sigma: f64,
    /// The seed of everything random.
    pub seed: u64,
}

/// A Zipf-distributed stream over `/item/{k}`.
pub fn zipf(params: &Synthetic) -> Result<Trace, String> {
    let mut stream = Stream::new(params)?;
    for i in 0..params.requests {
        stream.push_hot(i);
    }
    Ok(stream.finish(format!(
        "zipf: {} requests over {} keys, s = {}, seed {}",
        params.requests, params.keys, params.exponent, params.seed
    )))
}

/// The Zipf stream with one-hit scans mixed in: after every run of hot requests, a burst
/// of `burst` requests for paths never seen before and never asked again
/// (`/scan/{n}`), so that `fraction` of all requests are scan requests. A cache that
/// admits every miss lets each scan push hot entries out.
pub fn scan_mix(params: &Synthetic, fraction: f64, burst: usize) -> Result<Trace, String> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(format!("--scan-fraction {fraction} must be in [0, 1)"));
    }
    let burst = burst.max(1);
    // Hot requests between two bursts, so that bursts are `fraction` of the stream.
    let hot_run = ((burst as f64) * (1.0 - fraction) / fraction.max(1e-9)).round() as usize;
    let mut stream = Stream::new(params)?;
    let mut scanned = 0u64;
    let mut i = 0;
    while i < params.requests {
        for _ in 0..hot_run.min(params.requests - i) {
            stream.push_hot(i);
            i += 1;
        }
        for _ in 0..burst.min(params.requests - i) {
            scanned += 1;
            stream.push_path(i, &format!("/scan/{scanned}"));
            i += 1;
        }
    }
    Ok(stream.finish(format!(
        "scan mix: {} requests, {:.0}% one-hit scans in bursts of {burst}, hot set {} keys s = {}, seed {}",
        params.requests,
        fraction * 100.0,
        params.keys,
        params.exponent,
        params.seed
    )))
}

/// Builds a synthetic trace.
struct Stream<'a> {
    params: &'a Synthetic,
    zipf: Zipf<f64>,
    sizes: Option<LogNormal<f64>>,
    rng: StdRng,
    paths: Paths,
    size_of: HashMap<u32, u64>,
    requests: Vec<Access>,
}

impl<'a> Stream<'a> {
    fn new(params: &'a Synthetic) -> Result<Self, String> {
        let zipf = Zipf::new(params.keys as f64, params.exponent)
            .map_err(|e| format!("Zipf({}, {}): {e}", params.keys, params.exponent))?;
        let sizes = if params.size_sigma > 0.0 {
            let median = (params.body_bytes.max(1)) as f64;
            Some(
                LogNormal::new(median.ln(), params.size_sigma)
                    .map_err(|e| format!("log-normal sizes: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            params,
            zipf,
            sizes,
            rng: StdRng::seed_from_u64(params.seed),
            paths: Paths::default(),
            size_of: HashMap::new(),
            requests: Vec::with_capacity(params.requests),
        })
    }

    fn push_hot(&mut self, i: usize) {
        // Samples are whole numbers in 1..=keys; the clamp guards the float edge.
        let key = (self.zipf.sample(&mut self.rng) as u64).clamp(1, self.params.keys);
        self.push_path(i, &format!("/item/{key}"));
    }

    fn push_path(&mut self, i: usize, path: &str) {
        let path = self.paths.intern(path);
        let size = match self.size_of.get(&path) {
            Some(&size) => size,
            None => {
                let size = match &self.sizes {
                    // Capped at 64 MiB: a body the replay's origin can hand out.
                    Some(sizes) => (sizes.sample(&mut self.rng) as u64).clamp(1, 64 << 20),
                    None => self.params.body_bytes,
                };
                self.size_of.insert(path, size);
                size
            }
        };
        let at_ms = (i as f64 * 1000.0 / self.params.rate) as u64;
        self.requests.push(Access {
            at_ms,
            path,
            head: false,
            status: 200,
            size,
        });
    }

    fn finish(self, label: String) -> Trace {
        Trace {
            label,
            paths: self.paths.paths,
            requests: self.requests,
            log: None,
        }
    }
}

/// What an infinite cache with the same lifetime and entry-size limit would have served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Ideal {
    /// Requests answered from the cache.
    pub hits: u64,
    /// Their body bytes.
    pub hit_bytes: u64,
}

/// Replays the trace against a cache that never evicts: a request hits when its path was
/// stored (by an earlier GET whose response [`Access::fills`]) less than `lifetime_ms`
/// of trace time ago; otherwise it misses, and refills when its own response may be
/// stored. The replay enforces the same expiry (see `replay.rs`), so the measured hit
/// ratio is at most this one, and their difference is what memory costs.
pub fn ideal(trace: &Trace, lifetime_ms: u64, max_entry: u64) -> Ideal {
    let mut stored_at: Vec<Option<u64>> = vec![None; trace.paths.len()];
    let mut ideal = Ideal::default();
    for access in &trace.requests {
        let slot = &mut stored_at[access.path as usize];
        match *slot {
            Some(at) if access.at_ms < at.saturating_add(lifetime_ms) => {
                ideal.hits += 1;
                ideal.hit_bytes += access.size;
            }
            _ => {
                if lifetime_ms > 0 && access.fills(max_entry) {
                    *slot = Some(access.at_ms);
                }
            }
        }
    }
    ideal
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /a HTTP/1.1" 200 100 "-" "ua"
10.0.0.1 - - [01/Jan/2024:00:00:10 +0000] "GET /a HTTP/1.1" 304 0 "-" "ua"
10.0.0.1 - - [01/Jan/2024:00:00:05 +0000] "HEAD /a HTTP/1.1" 200 0 "-" "ua"
this is not a log line
10.0.0.1 - - [01/Jan/2024:00:01:00 +0000] "POST /a HTTP/1.1" 200 10 "-" "ua"
10.0.0.1 - - [01/Jan/2024:00:02:00 +0000] "-" 400 0 "-" "-"
10.0.0.1 - - [01/Jan/2024:00:03:00 +0000] "GET /big HTTP/1.1" 200 5000 "-" "ua"

10.0.0.1 - - [01/Jan/2024:00:04:00 +0000] "GET /a HTTP/1.1" 200 100 "-" "ua"
10.0.0.1 - - [01/Jan/2024:00:05:00 +0000] "GET /big HTTP/1.1" 200 5000 "-" "ua"
"#;

    fn log_trace() -> Trace {
        from_log(LOG.as_bytes(), "test".into(), 1000).unwrap()
    }

    #[test]
    fn reads_a_log() {
        let trace = log_trace();
        let counts = trace.log.clone().unwrap();
        assert_eq!(counts.lines, 9);
        assert_eq!((counts.get, counts.head), (5, 1));
        assert_eq!(counts.malformed, 1);
        assert_eq!(counts.other_methods, 1);
        assert_eq!(counts.unparsed_requests, 1);
        assert_eq!(counts.partial_or_not_modified, 1);
        let times: Vec<u64> = trace.requests.iter().map(|a| a.at_ms).collect();
        // The HEAD logged before the 304 line is taken to be at the same time.
        assert_eq!(times, [0, 10_000, 10_000, 180_000, 240_000, 300_000]);
        // The 304 became a 200 of the whole response.
        assert_eq!(
            (trace.requests[1].status, trace.requests[1].size),
            (200, 100)
        );
        assert_eq!(trace.paths.len(), 2);
        assert_eq!(trace.total_bytes(), 100 + 100 + 5000 + 100 + 5000);
    }

    #[test]
    fn ideal_follows_lifetime_and_entry_size() {
        let trace = log_trace();
        // Forever, every entry fits: /a misses once, /big once.
        assert_eq!(
            ideal(&trace, u64::MAX / 2, 10_000),
            Ideal {
                hits: 4,
                hit_bytes: 100 + 100 + 5000
            }
        );
        // /big never fits: its two requests miss.
        assert_eq!(ideal(&trace, u64::MAX / 2, 1000).hits, 3);
        // 60 s: /a at 0 serves 10 s (GET and HEAD); at 240 s it has expired.
        assert_eq!(ideal(&trace, 60_000, 1000).hits, 2);
        assert_eq!(ideal(&trace, 0, 10_000).hits, 0);
    }

    #[test]
    fn synthetic_streams_are_reproducible() {
        let params = Synthetic {
            keys: 100,
            exponent: 1.0,
            requests: 1000,
            rate: 100.0,
            body_bytes: 1000,
            size_sigma: 1.0,
            seed: 7,
        };
        let a = zipf(&params).unwrap();
        let b = zipf(&params).unwrap();
        assert_eq!(a.paths, b.paths);
        assert_eq!(a.span_ms(), 9990);
        let mix = scan_mix(&params, 0.5, 100).unwrap();
        assert_eq!(mix.requests.len(), 1000);
        let scans = mix
            .requests
            .iter()
            .filter(|a| mix.paths[a.path as usize].starts_with("/scan/"))
            .count();
        assert_eq!(scans, 500);
        // Scans are one-hit: they add nothing to the ideal.
        let hot_only = ideal(&mix, u64::MAX / 2, u64::MAX).hits;
        assert!(hot_only <= 500, "{hot_only}");
    }
}
