//! The command line: every flag, its environment variable, and the parsers of its values.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser, ValueEnum};
use http::header::HeaderName;
use http::uri::{Scheme, Uri};
use tower_memcache::cache::{CDN_CACHE_CONTROL, NEAR_ENTRY_OVERHEAD, RequestTarget};

use crate::size::parse_size;

/// A caching reverse proxy (RFC 9111 shared cache) in front of one HTTP origin, storing
/// responses in memcached.
///
/// Every flag can also be given by the environment variable shown with it; a flag on the
/// command line wins. Logs: an access log line per request on stdout, events on stderr
/// (RUST_LOG filters them, default "info"; one with a mistake in it is refused). SIGTERM or Ctrl-C: stop accepting, finish open
/// requests and pending stores (--shutdown-grace at most), exit 0. SIGHUP is ignored.
#[derive(Parser, Debug)]
// A flag given twice takes the last value, as most daemons (and the example before) do:
// wrappers can append to a default command line.
#[command(
    name = "tower-memcache-proxy",
    version,
    max_term_width = 100,
    args_override_self = true
)]
pub(crate) struct Args {
    /// The origin to forward requests to: http://HOST or http://HOST:PORT.
    ///
    /// Plain HTTP only (no TLS to the origin), no user information and no path prefix. One
    /// origin per process.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub(crate) upstream: Uri,

    /// The namespace of the proxy's keys in memcached; default: "proxy:" and the
    /// upstream's authority (lower-cased, without port 80), so "proxy:origin:8080".
    ///
    /// A key holds the host a client names, not the origin that answered: proxies in
    /// front of different origins that shared a namespace on one memcached let a client
    /// send one proxy another site's Host and have this origin's page stored as that
    /// site's. Replicas in front of one origin share entries and invalidations when they
    /// name it alike (or are given one namespace); give such replicas one namespace when
    /// they name the origin differently (an address and a name).
    ///
    /// Not empty (the namespace every application's cache layer keys in by default), and
    /// without white space at its ends or control characters (a name read from a file
    /// with its newline would part a replica from the others).
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_NAMESPACE", value_name = "NAME", value_parser = parse_namespace)]
    pub(crate) namespace: Option<String>,

    /// The address and port to listen on, for HTTP/1.1 and HTTP/2 (prior knowledge).
    ///
    /// Port 0 picks a free port (the startup line on stderr tells which).
    #[arg(
        long,
        env = "TOWER_MEMCACHE_PROXY_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:3001"
    )]
    pub(crate) listen: SocketAddr,

    /// The memcached servers, comma-separated HOST:PORT; keys are spread over them by
    /// consistent hashing (ketama, as libmemcached does).
    ///
    /// Without it, entries live in this process's memory, shared by its threads, and are
    /// lost when it exits.
    #[arg(
        long,
        env = "TOWER_MEMCACHE_PROXY_MEMCACHE",
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    pub(crate) memcache: Option<String>,

    /// Who decides how long a response is fresh.
    ///
    /// "origin" follows RFC 9111: s-maxage, max-age, Expires, else a tenth of the time since
    /// Last-Modified; a response with none of them is stored only to be revalidated.
    /// "routes" caches every storable response for --ttl whatever the origin says (like
    /// nginx's srcache with a fixed $memc_exptime).
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_MODE", value_enum, default_value_t = Mode::Origin)]
    pub(crate) mode: Mode,

    /// The lifetime of a response in "routes" mode, in seconds; default 3600.
    ///
    /// Only with --mode routes: in origin mode the origin's headers give every lifetime,
    /// and a --ttl there is refused rather than ignored.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_TTL", value_name = "SECS")]
    pub(crate) ttl: Option<u64>,

    /// When the origin cannot be reached (connection refused or closed, timeout), answer
    /// with a stored response up to this many seconds past its lifetime, as nginx's
    /// "proxy_cache_use_stale error timeout"; 0 turns it off.
    ///
    /// Never a response that said must-revalidate, proxy-revalidate, no-cache or s-maxage.
    #[arg(
        long,
        env = "TOWER_MEMCACHE_PROXY_STALE_IF_UNREACHABLE",
        value_name = "SECS",
        default_value_t = 3600
    )]
    pub(crate) stale_if_unreachable: u64,

    /// The number of threads serving requests; default: one per CPU.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,

    /// How the threads share the work.
    ///
    /// "shared" (the default) is one multi-threaded, work-stealing runtime behind one
    /// listener and one cache layer: a thread with nothing to do takes work queued on
    /// another, so uneven connections (a few busy keep-alive clients, a slow origin on
    /// some) do not leave a thread idle while another is saturated. Request coalescing
    /// covers the whole process.
    ///
    /// "per-thread" is nginx's worker model: each thread runs its own single-threaded
    /// runtime with its own listening socket (SO_REUSEPORT: the kernel spreads connections
    /// over them), its own pool to the origin and its own cache layer and memcached
    /// connections (the memcached servers' health is the process's: a server one thread
    /// marks down is down for all); a hit never leaves its thread. Request coalescing is
    /// then per thread (memcached leases keep the threads from all calling the origin for
    /// one missing URL). As with nginx's "reuseport", a second proxy that the same user starts on the
    /// same address shares the incoming connections instead of failing to bind. Its tail
    /// latency over memcached is lower; its throughput is lower where connections are few
    /// or uneven (BENCHMARKS.md).
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_RUNTIME", value_enum, default_value_t = RuntimeKind::Shared)]
    pub(crate) runtime: RuntimeKind,

    /// Send the upstream's authority as Host (nginx's default $proxy_host).
    ///
    /// Without it the client's Host goes to the origin (nginx's "proxy_set_header Host
    /// $host"), which keeps the cache key (built from the client's host) and what the origin
    /// saw the same. Either way the client's authority is sent as the cache key holds it:
    /// validated, lower-cased, without the default port.
    ///
    /// From the environment: true/false, yes/no, on/off or 1/0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_UPSTREAM_HOST", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub(crate) upstream_host: bool,

    /// The targeted cache-control fields (RFC 9213) obeyed instead of Cache-Control and
    /// Expires, comma-separated, most applicable first; "none" obeys none.
    ///
    /// The proxy is a cache on the origin's behalf, what RFC 9213 calls a CDN. Such fields
    /// are forwarded to the client unchanged either way.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_TARGETED_CACHE_CONTROL", value_name = "NAME[,NAME...]|none", default_value = "cdn-cache-control", value_parser = parse_targeted)]
    pub(crate) targeted_cache_control: Targeted,

    /// Keep hot entries in this process's memory too, up to SIZE bytes (K, M, G: powers
    /// of 1024), and answer them without asking memcached for at most STALENESS (default
    /// 1s) after they were last read from it; "off" turns it off.
    ///
    /// Purges and invalidations through this proxy apply at once; those of other processes
    /// sharing the memcached servers show within STALENESS. Only fresh responses are
    /// answered from it (Cache-Status "hit; detail=near"). The threads share one tier.
    /// STALENESS must be more than 0 (a tier no time behind memcached keeps nothing), SIZE
    /// at least 1M.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_NEAR_CACHE", value_name = "SIZE[,STALENESS]|off", default_value = "off", value_parser = parse_near_cache)]
    pub(crate) near_cache: NearSetting,

    /// The largest response body stored (K, M, G: powers of 1024); larger responses are
    /// passed through, not stored.
    ///
    /// memcached's item size limit (-I, 1 MiB by default) bounds it too: the proxy learns
    /// each server's and does not copy bodies it could not store. More than 0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_MAX_ENTRY_SIZE", value_name = "SIZE", default_value = "1008K", value_parser = parse_positive_size)]
    pub(crate) max_entry_size: u64,

    /// How long a request waits for memcached before going to the origin as a miss. Each
    /// memcached call may also take this long (100 ms at least) to connect, and as long
    /// again for its reply: stores and purges, which no request waits for in a lookup.
    /// More than 0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_CACHE_TIMEOUT", value_name = "DURATION", default_value = "100ms", value_parser = parse_positive_duration)]
    pub(crate) cache_timeout: Duration,

    /// How long the origin may take to send a response head, from the request body's last
    /// byte, before the client gets 504 Gateway Timeout, and to send the next part of a
    /// response body before it is cut off (nginx's proxy_read_timeout); a request body
    /// that pauses that long on its way is cut off alike, with 408 Request Timeout when
    /// the client paused. More than 0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub(crate) upstream_timeout: Duration,

    /// How long a client may take to send a request head: from the connection's start, or
    /// from the end of the previous response on a kept-alive connection (nginx's
    /// client_header_timeout and keepalive_timeout in one). Slower connections are closed,
    /// so that clients that send nothing, or a head a byte at a time, cannot hold the
    /// proxy's sockets. A connection (HTTP/2 too) that starts no request for that long is
    /// closed gracefully: requests under way finish first. One that has responses to send
    /// and takes less than 1 KiB of them in that long is closed at once (nginx's
    /// send_timeout): a client that stops reading cannot hold them in memory. (A response
    /// waiting for its origin, an event stream between events, has nothing to send.)
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_CLIENT_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub(crate) client_header_timeout: Duration,

    /// Pass request fields whose names hold an underscore (`X_Forwarded_Host`) to the
    /// cache and the origin. Off by default, as nginx's underscores_in_headers: CGI-style
    /// gateways (WSGI, Rack, PHP) read `Accept_Language` as `Accept-Language`, so such a
    /// field could choose the page stored for another variant. Even when passed, the
    /// spellings of the forwarding fields and method overrides the proxy drops still go.
    ///
    /// From the environment: true/false, yes/no, on/off or 1/0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_UNDERSCORES_IN_HEADERS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub(crate) underscores_in_headers: bool,

    /// How many client connections the proxy holds at once, over all its threads (nginx's
    /// worker_connections). Past it the proxy stops accepting until one closes; new
    /// clients wait in the kernel's listen backlog (each listening thread holds one more,
    /// accepted, until a place frees). Each connection can hold a file
    /// descriptor to the origin too: keep it under half the open-files limit.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_MAX_CONNECTIONS", value_name = "COUNT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,

    /// The most bytes of response bodies the proxy holds, over all its connections, for
    /// clients that have not taken them yet (K, M, G: powers of 1024); default 128 times
    /// --max-entry-size (126 MiB by default), what one HTTP/2 connection's streams may
    /// hold. An HTTP/2 client can keep its windows shut while each of its streams holds a
    /// cache hit. Past it, the connections that hold unsent bytes and took under 1 KiB of
    /// them in a second (or too little to take what they hold within
    /// --client-header-timeout at that pace) are closed; the others go on, and requests
    /// never wait for it. What clients can fetch within that second comes on top.
    /// More than 0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_MAX_UNSENT_BYTES", value_name = "SIZE", value_parser = parse_positive_size)]
    pub(crate) max_unsent_bytes: Option<u64>,

    /// How many requests the proxy has under way at its origin at once, over all its
    /// threads: one connection each, the pool speaking HTTP/1.1 (nginx's max_conns). Past
    /// it a request that misses the cache waits for a place, in order, for
    /// --upstream-queue-timeout at most, and no more requests wait than there are places;
    /// the others get 503 Service Unavailable (a stale entry stands in within
    /// stale-if-error). Idle kept-alive connections hold no place: each thread keeps at
    /// most this many (and 256) of them. A place is held while the client sends its
    /// request body and takes the response, so while requests wait, connections that
    /// hold places and move under 1 KiB a second through each that waits for them (body
    /// bytes sent, response bytes taken) are closed: no client holds places at a pace
    /// of its own.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_UPSTREAM_MAX_CONNECTIONS", value_name = "COUNT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) upstream_max_connections: u32,

    /// How long a request waits for a place at the origin (see --upstream-max-connections)
    /// before the client gets 503 Service Unavailable; 0 answers at once.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_UPSTREAM_QUEUE_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) upstream_queue_timeout: Duration,

    /// How long connecting to the origin may take before the client gets 502 Bad Gateway
    /// (nginx's proxy_connect_timeout). More than 0.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    pub(crate) connect_timeout: Duration,

    /// On SIGTERM or Ctrl-C, how long open requests and pending stores may take to finish
    /// before the proxy exits anyway.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) shutdown_grace: Duration,

    /// Serve the cache's metrics in Prometheus' text format on http://ADDR/metrics (any
    /// path answers), from a thread of their own: 16 connections at most, each one scrape
    /// within --client-header-timeout. No authentication: bind it where only your
    /// scrapers reach. Port 0 picks a free port (the "serving metrics" event on stderr
    /// tells which).
    ///
    /// Needs the crate's "metrics" feature (cargo install tower-memcache --features
    /// proxy,metrics); the names are listed in tower_memcache::cache::METRIC_NAMES, and
    /// the proxy's own are tower_memcache_proxy_unsent_bytes (see --max-unsent-bytes),
    /// tower_memcache_proxy_stalled_closes_total (connections closed for not reading,
    /// or for holding places at the origin at their own pace),
    /// tower_memcache_proxy_upstream_active and tower_memcache_proxy_upstream_rejected_total
    /// (see --upstream-max-connections).
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_METRICS", value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,

    /// Write an access log line per request to stdout: nginx's "combined" format, then
    /// the proxy's own Cache-Status member in quotes and the seconds to the response
    /// head. A request whose client hangs up first is logged with status 499.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_ACCESS_LOG", value_enum, default_value_t = OnOff::On)]
    pub(crate) access_log: OnOff,

    /// Write the query of each request's target, and of its Referer, to the access log.
    ///
    /// "on" is nginx's "combined" format, what log tools read. "off" writes the target's
    /// path alone (a bare "?" where a query was) and the Referer without its query and
    /// fragment: secrets sent in URLs (password-reset and login tokens, signed links, API
    /// keys) then stay out of the log files and whoever reads them.
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_ACCESS_LOG_QUERY", value_enum, default_value_t = OnOff::On)]
    pub(crate) access_log_query: OnOff,

    /// The format of the events on stderr; RUST_LOG chooses which (e.g.
    /// RUST_LOG=tower_memcache=debug for every cache decision).
    #[arg(long, env = "TOWER_MEMCACHE_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Mode {
    /// Freshness from the origin's headers (RFC 9111).
    Origin,
    /// Every storable response for --ttl.
    Routes,
}

/// How the proxy uses its threads (`--runtime`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum RuntimeKind {
    /// A single-threaded runtime per thread, each with its own listener and cache layer.
    PerThread,
    /// One multi-threaded (work-stealing) runtime, one listener, one cache layer.
    Shared,
}

/// `--access-log`, `--access-log-query`. (No doc comments on the values: `--help` would
/// list them under each flag, where the flag's own text says what they do.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// RFC 9213's target list (`--targeted-cache-control`).
#[derive(Clone, Debug)]
pub(crate) struct Targeted(pub(crate) Vec<HeaderName>);

/// `--targeted-cache-control`: comma-separated field names, or `none`.
pub(crate) fn parse_targeted(text: &str) -> Result<Targeted, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Targeted(Vec::new()));
    }
    let names = text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if names.is_empty() {
        // An empty value is more likely a mistake (an unset variable) than "none".
        return Ok(Targeted(vec![CDN_CACHE_CONTROL]));
    }
    Ok(Targeted(names))
}

/// `--near-cache`: off, or a size and how far behind memcached it may be.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NearSetting(pub(crate) Option<(u64, Duration)>);

/// The smallest `--near-cache` size taken: 64 shards of 16 KiB.
pub(crate) const MIN_NEAR_CACHE: u64 = 1 << 20;

/// Near-tier staleness when `--near-cache` gives only a size.
pub(crate) const DEFAULT_NEAR_STALENESS: Duration = Duration::from_secs(1);

/// `--near-cache SIZE[,STALENESS]|off`.
pub(crate) fn parse_near_cache(text: &str) -> Result<NearSetting, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") || text == "0" {
        return Ok(NearSetting(None));
    }
    let (size, staleness) = match text.split_once(',') {
        Some((size, staleness)) => (size, parse_duration(staleness)?),
        None => (text, DEFAULT_NEAR_STALENESS),
    };
    let size = parse_size(size)?;
    if size == 0 {
        return Ok(NearSetting(None));
    }
    // Each entry counts its size and `NEAR_ENTRY_OVERHEAD` more, and the tier is split in
    // up to 64 shards, each a bound of its own: a tier much smaller keeps next to nothing
    // (`64`, a size without its `M`, kept nothing while it was announced as on).
    if size < MIN_NEAR_CACHE {
        return Err(format!(
            "{text:?}: a near tier under 1M keeps next to nothing (each entry counts its \
             size and {NEAR_ENTRY_OVERHEAD} bytes more); give a size with its unit, such as 64M"
        ));
    }
    // A tier that may be no time behind memcached keeps nothing (every request is looked
    // up there): refused rather than announced as on.
    if staleness.is_zero() {
        return Err(format!(
            "{text:?}: a staleness of 0 keeps nothing in the near tier; say \"off\", or give more than 0"
        ));
    }
    Ok(NearSetting(Some((size, staleness))))
}

/// The longest duration a flag takes. Timeouts, the grace period and the near tier's
/// staleness are added to clock readings (by the proxy, hyper and tokio), and
/// `Instant + Duration` panics on overflow: `--shutdown-grace 18446744073709551615` made
/// the proxy panic on SIGTERM, and as large a `--client-header-timeout` every connection.
/// A year is far beyond any sensible value and far from any overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration: `500ms`, `5s`, `2m`, `1h 30m`; a bare number is seconds. At most
/// [`MAX_DURATION`].
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text).map_err(|err| format!("{text:?}: {err}"))?,
    };
    if duration > MAX_DURATION {
        return Err(format!("{text:?}: at most 365 days"));
    }
    Ok(duration)
}

/// A duration of more than zero: a zero timeout would close every connection at once
/// (`--client-header-timeout`), answer every miss 504 or 502 (`--upstream-timeout`,
/// `--connect-timeout`: no origin answers, or is reached over a network, in no time), or
/// turn most lookups into misses while every response is still stored
/// (`--cache-timeout`: memcached answers in no time only by chance).
pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{:?}: must be more than 0", text.trim())),
        duration => Ok(duration),
    }
}

/// A size of more than 0 (`--max-entry-size`, `--max-unsent-bytes`). A 0, nginx's "no
/// limit" for its body sizes, was taken at its word: `--max-entry-size 0` stored no
/// response with a body and made `--max-unsent-bytes`' default (128 entries) 0, and a
/// budget of 0 closes connections that hold a byte their client has not yet taken and
/// take under 1 KiB in a second.
pub(crate) fn parse_positive_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err(format!(
            "{:?}: must be more than 0 (0 is no \"no limit\" here)",
            text.trim()
        )),
        size => Ok(size),
    }
}

/// `--namespace`: a name given on purpose. An empty one (an unset variable in a unit
/// file or a container's environment) is the namespace of every cache layer left at its
/// default, and of every proxy given the same empty variable: proxies of different
/// origins would share it, and a client could have one origin's page stored as the other
/// site's (SECURITY.md). White space at its ends or a control character (a secret read
/// with its newline) would key one replica apart from the others, whose invalidations
/// then leave its entries. Refused rather than trimmed: the operator says which was meant.
pub(crate) fn parse_namespace(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(format!(
            "{text:?}: an empty namespace is the one every application's cache layer uses by \
             default; leave the flag out for \"proxy:\" and the upstream's authority"
        ));
    }
    if text.trim() != text || text.chars().any(char::is_control) {
        return Err(format!(
            "{text:?}: white space at its ends or a control character (a newline read with \
             the value?); give the name alone"
        ));
    }
    Ok(text.to_owned())
}

/// `--ttl` when none is given.
pub(crate) const DEFAULT_TTL: u64 = 3600;

impl Args {
    /// The command line and environment, parsed, with what no one flag's parser sees
    /// refused as clap refuses a bad value (a message naming the flags, exit status 2).
    pub(crate) fn parse_checked() -> Self {
        let args = Self::parse();
        // Taken and ignored, an operator's `--ttl 60` ("at most a minute") left pages the
        // origin marks for a day cached for a day.
        if let (Mode::Origin, Some(ttl)) = (args.mode, args.ttl) {
            Self::command()
                .error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "--ttl {ttl} applies only with --mode routes: in origin mode (the \
                         default) lifetimes come from the origin's headers; give --mode \
                         routes, or leave --ttl out"
                    ),
                )
                .exit();
        }
        args
    }

    /// `--ttl`, or its default.
    pub(crate) fn ttl(&self) -> u64 {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    /// `--namespace`, or the upstream's own (see the flag).
    pub(crate) fn namespace(&self) -> String {
        match &self.namespace {
            Some(namespace) => namespace.clone(),
            None => default_namespace(&self.upstream),
        }
    }
}

/// `proxy:` and the upstream's authority as a cache key spells one (lower-cased, without
/// the default port), so `http://Origin:80` and `http://origin` are one namespace.
pub(crate) fn default_namespace(upstream: &Uri) -> String {
    let authority = RequestTarget::from_parts("http", upstream, &http::HeaderMap::new())
        .map(|target| target.authority().to_string())
        // An authority `Uri` took that the key's stricter check refuses: as written.
        .unwrap_or_else(|_| {
            upstream.authority().map_or(String::new(), |authority| {
                authority.as_str().to_ascii_lowercase()
            })
        });
    format!("proxy:{authority}")
}

/// `http://host[:port]`, nothing else.
pub(crate) fn parse_upstream(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err("only http:// origins are supported".into());
    }
    let Some(authority) = uri.authority() else {
        return Err("no host".into());
    };
    // The proxy authenticates to no origin: user information would only be carried
    // along, into `Host` (`--upstream-host`) and the log lines that name the upstream.
    if authority.as_str().contains('@') {
        return Err(
            "user information (user:password@) is not supported; give http://host[:port]".into(),
        );
    }
    // No connection can be made to port 0: the proxy would start and answer every miss
    // 502 (as `--memcache` refuses it too).
    if uri.port_u16() == Some(0) {
        return Err("port 0 can never be connected to; give the origin's port".into());
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err("a path prefix is not supported; give http://host[:port]".into());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_the_near_cache_setting() {
        let default_entry = usize::try_from(parse_size("1008K").unwrap()).unwrap();
        assert_eq!(default_entry, tower_memcache::cache::DEFAULT_MAX_ENTRY_SIZE);

        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert!(parse_duration("366d").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert_eq!(parse_positive_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0ms").is_err());

        assert!(parse_near_cache("off").unwrap().0.is_none());
        assert!(parse_near_cache("0").unwrap().0.is_none());
        assert_eq!(
            parse_near_cache("64M").unwrap().0,
            Some((64 << 20, DEFAULT_NEAR_STALENESS))
        );
        assert_eq!(
            parse_near_cache("1G,500ms").unwrap().0,
            Some((1 << 30, Duration::from_millis(500)))
        );
        assert!(parse_near_cache("64M,never").is_err());
        assert!(parse_near_cache("64M,0").is_err());
        assert!(parse_near_cache("64M,0ms").is_err());
        assert!(parse_near_cache("64").is_err());
        assert!(parse_near_cache("1023K").is_err());
        assert!(parse_near_cache("1M").is_ok());

        assert_eq!(parse_positive_size("1K"), Ok(1024));
        assert!(parse_positive_size("0").is_err());
        assert!(parse_positive_size("0K").is_err());

        assert_eq!(parse_namespace("site-a"), Ok("site-a".to_owned()));
        assert_eq!(parse_namespace("a b:c"), Ok("a b:c".to_owned()));
        for bad in ["", " ", "site-a\n", " site-a", "site\u{0}a", "\t"] {
            assert!(parse_namespace(bad).is_err(), "{bad:?}");
        }

        assert!(parse_upstream("http://origin:8080").is_ok());
        assert!(parse_upstream("http://user:secret@origin:8080").is_err());
        assert!(parse_upstream("http://@origin").is_err());
        assert!(parse_upstream("http://origin:0").is_err());
        assert!(parse_upstream("http://origin:00").is_err());

        let namespace = |upstream: &str| default_namespace(&parse_upstream(upstream).unwrap());
        assert_eq!(namespace("http://Origin:80"), "proxy:origin");
        assert_eq!(namespace("http://origin"), "proxy:origin");
        assert_eq!(namespace("http://127.0.0.1:8080"), "proxy:127.0.0.1:8080");
        assert_eq!(namespace("http://[::1]:8080"), "proxy:[::1]:8080");
    }
}
