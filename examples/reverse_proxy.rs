//! A caching reverse proxy in front of any HTTP origin: the deployment people know from
//! nginx + srcache + memc, as a tower stack.
//!
//! ```text
//! reverse_proxy --upstream URL [--listen ADDR] [--memcache HOST:PORT[,HOST:PORT...]]
//!               [--mode origin|routes] [--ttl SECS] [--threads N]
//!               [--runtime per-thread|shared] [--upstream-host]
//!               [--stale-if-unreachable SECS]
//!               [--targeted-cache-control NAME[,NAME...]|none] [--metrics ADDR]
//! ```
//!
//! - `--upstream URL`: the origin, `http://host[:port]` (plain HTTP only; no TLS to the
//!   origin, no path prefix).
//! - `--listen ADDR`: where to serve HTTP/1.1 and HTTP/2 (prior knowledge); default
//!   `127.0.0.1:3001`.
//! - `--memcache SERVERS`: comma-separated memcached servers (ketama over them, as
//!   libmemcached does). Without it, entries live in this process (`MemoryBackend`).
//! - `--mode origin|routes`: who decides how long a response is fresh. `origin` (the
//!   default) follows RFC 9111: `s-maxage`, `max-age`, `Expires`, else a tenth of the time
//!   since `Last-Modified`; a response with none of them is stored only to be revalidated.
//!   `routes` caches every storable response for `--ttl` whatever the origin says (like
//!   nginx's `srcache` with a fixed `$memc_exptime`).
//! - `--ttl SECS`: the lifetime in `routes` mode; default 3600.
//! - `--stale-if-unreachable SECS`: when the origin cannot be reached (connection refused
//!   or closed, timeout), answer with a stored response up to this long past its lifetime
//!   (never one that said `must-revalidate`, `proxy-revalidate`, `no-cache` or
//!   `s-maxage`), as nginx's `proxy_cache_use_stale error timeout`; default 3600, 0 turns
//!   it off.
//! - `--threads N`: threads serving requests; default one per CPU.
//! - `--runtime per-thread|shared`: how the threads share the work. `per-thread` (the
//!   default) is nginx's worker model: each thread runs its own single-threaded tokio
//!   runtime with its own listening socket (`SO_REUSEPORT`: the kernel spreads connections
//!   over them), its own pool to the origin and its own cache layer, with its own memcached
//!   connections. A hit never leaves its thread, which is the fastest way to serve hits.
//!   Request coalescing is then per thread, and memcached leases (or, without
//!   `--memcache`, the one in-process store all threads share) keep the threads from all
//!   calling the origin for one missing URL. `shared` is one multi-threaded, work-stealing
//!   runtime behind one listener and one layer: better when the work per connection is
//!   uneven (a few long-lived busy connections), or where `SO_REUSEPORT` is missing. As
//!   with nginx's `reuseport`, a second `per-thread` proxy that the same user starts on
//!   the same address does not fail to bind: the two share the incoming connections.
//! - `--upstream-host`: send the upstream's authority as `Host` (nginx's default
//!   `$proxy_host`). Without it the client's `Host` goes to the origin (nginx's
//!   `proxy_set_header Host $host`), which keeps the cache key (built from the client's
//!   host) and what the origin saw the same. Either way the client's authority is sent
//!   as the cache key holds it: validated, lower-cased, without the default port.
//! - `--targeted-cache-control NAMES`: the targeted cache-control fields (RFC 9213) the
//!   proxy obeys instead of `Cache-Control` and `Expires`, most applicable first (e.g.
//!   `example-cache-control,cdn-cache-control`); `none` obeys none. Default
//!   `cdn-cache-control`: the proxy is a cache on the origin's behalf, what RFC 9213 §3
//!   calls a CDN. Such fields are forwarded to the client unchanged either way.
//! - `--metrics ADDR`: serve the cache's metrics in Prometheus' text format on
//!   `http://ADDR/metrics` (any path answers), from a thread of their own. Needs the crate's
//!   `metrics` feature (`cargo run --example reverse_proxy --features metrics -- ...`); the
//!   names are listed in `tower_memcache::cache::METRIC_NAMES`.
//!
//! Every method, path, query and end-to-end header is forwarded, except the forwarding
//! headers below; the request body streams through. Hop-by-hop headers (`Connection` and
//! the headers it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`,
//! `Upgrade`, `Trailer`, `Proxy-Authorization`, `Proxy-Authenticate`) are dropped both
//! ways. Upstream connections are pooled and kept alive, and spoken to in HTTP/1.1
//! whatever the client spoke; responses go out as the proxy's own HTTP/1.1 (HTTP/1.0
//! clients still get 1.0), not the origin's version. An origin that cannot be reached
//! answers 502 Bad Gateway, one that sends no response head within 60 s 504 Gateway
//! Timeout; neither is cached.
//!
//! # Requests refused
//!
//! Before the cache sees it, a request is answered `400 Bad Request` (RFC 9112 §3.2) when
//! its authority cannot be keyed safely ([`RequestTarget::from_parts`]): a `Host` that is
//! not `host[:port]` (`127.0.0.1:3001/a` would otherwise let `GET /b` be stored as
//! `/a/b`), user information, more than one `Host`, a `Host` that disagrees with an
//! absolute-form target; also an HTTP/1.1 request without `Host`, and an absolute-form
//! target whose scheme is not `http` (the proxy only listens on plain HTTP).
//!
//! # Forwarding headers
//!
//! The rule: no request input that can change the origin's response reaches the origin
//! unless it is part of the cache key or the origin names it in `Vary`. Headers that
//! proxies use to tell an origin where a request came from are such inputs (an origin
//! that builds links from `X-Forwarded-Host` would otherwise have one client's value
//! served to everyone as a hit), so the client's copies are dropped and the proxy sends
//! its own:
//!
//! - `X-Forwarded-Host`: the validated client authority (the key's), in both `Host`
//!   modes; `X-Forwarded-Proto: http`.
//! - `X-Forwarded-For`: the peer address alone. A client-supplied chain is *replaced*,
//!   not appended to as nginx's `$proxy_add_x_forwarded_for` does: an origin that trusts
//!   the first entry would otherwise answer (and the cache store) what the client claims.
//!   Behind another proxy, the origin therefore sees that proxy's address.
//! - `Forwarded` (RFC 7239): `for=<peer>;host="<authority>";proto=http`.
//! - Dropped and not replaced: `X-Forwarded-Port`, `X-Forwarded-Prefix`,
//!   `X-Forwarded-Server`, `X-Forwarded-Scheme`, `X-Forwarded-Ssl`, `Front-End-Https`,
//!   `X-Url-Scheme`, `X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `X-Original-URL`,
//!   `X-Rewrite-URL`, `X-Original-Host`, `X-Host`.
//! - Method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`)
//!   are dropped from GET and HEAD, the methods whose answers are stored: honoured, they
//!   would run another handler (a POST's) whose answer is stored under the GET's key.
//!   Other methods keep them; their answers are never stored.
//!
//! An origin that varies its response on any other request header must name it in
//! `Vary`; see SECURITY.md for the whole trust model.
//!
//! What is stored, reused and invalidated is [`MemcacheLayer`]'s RFC 9111 shared-cache
//! policy (see the README's directive table): GET and HEAD keyed by host, path and query
//! (namespace `proxy`), variants by `Vary`, revalidation with `If-None-Match` /
//! `If-Modified-Since`, `stale-while-revalidate` and `stale-if-error`, invalidation by
//! POST, PUT, PATCH, DELETE and unknown methods, tags from `Surrogate-Key`. As with
//! srcache, request cookies are not part of the key: an origin that personalises a response
//! must say `private` or `Vary`. The proxy's own 502 and 504 carry
//! [`OriginUnreachable`], so a stale entry can stand in for them. `RUST_LOG=debug` shows
//! every cache decision.
//!
//! An example session, with Python's file server as the origin:
//!
//! ```text
//! $ mkdir /tmp/site && echo hello > /tmp/site/index.html
//! $ python3 -m http.server 8080 --bind 127.0.0.1 --directory /tmp/site &
//! $ memcached -l 127.0.0.1 -p 11311 -U 0 &          # add -u root when running as root
//! $ cargo run --release --example reverse_proxy -- \
//!       --listen 127.0.0.1:3001 --upstream http://127.0.0.1:8080 --memcache 127.0.0.1:11311
//! tower-memcache reverse proxy on http://127.0.0.1:3001 -> http://127.0.0.1:8080 (memcached 127.0.0.1:11311, 2 threads, a runtime per thread)
//!
//! $ curl -si http://127.0.0.1:3001/index.html | grep -i -e ^cache-status -e ^age
//! cache-status: tower-memcache; fwd=uri-miss; stored
//! $ curl -si http://127.0.0.1:3001/index.html | grep -i -e ^cache-status -e ^age
//! age: 0
//! cache-status: tower-memcache; hit
//! $ curl -si -X POST -d 'x=1' http://127.0.0.1:3001/index.html | head -1   # passes through
//! HTTP/1.1 501 Unsupported method ('POST')
//! $ curl -si -H 'Host: 127.0.0.1:3001/a' http://127.0.0.1:3001/index.html | head -1
//! HTTP/1.1 400 Bad Request
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, TryFutureExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tower::{Layer, Service};
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{
    CDN_CACHE_CONTROL, InvalidTarget, MemcacheLayer, OriginUnreachable, RequestTarget,
};
use tower_memcache::cache::{CacheMode, is_hop_by_hop};
use tracing_subscriber::EnvFilter;

// glibc's malloc was about a tenth of the CPU time of a cache hit here (a hit allocates
// for the request, the entry's headers and the response); mimalloc's thread-local
// free lists fit a server whose threads each allocate and free their own requests'.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: reverse_proxy --upstream http://HOST[:PORT] [--listen ADDR] \
[--memcache HOST:PORT[,HOST:PORT...]] [--mode origin|routes] [--ttl SECS] [--threads N] \
[--runtime per-thread|shared] [--upstream-host] [--stale-if-unreachable SECS] \
[--targeted-cache-control NAME[,NAME...]|none] [--metrics ADDR]";

/// How long the origin may take to send its response head.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Request headers that tell an origin where a request came from or what it "really"
/// asked for. Clients' copies never reach the origin (see the module docs): the first
/// four are replaced by the proxy's own values, the rest dropped.
const FORWARDING: [HeaderName; 18] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-host"),
];

/// Headers that make some frameworks run another method's handler; dropped from GET and
/// HEAD, whose answers are stored under the GET's key.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// The command line.
struct Args {
    listen: SocketAddr,
    upstream: Uri,
    /// The `--memcache` list as given.
    memcache: Option<String>,
    mode: CacheMode,
    ttl: Duration,
    threads: Option<usize>,
    runtime: RuntimeKind,
    upstream_host: bool,
    stale_if_unreachable: Option<Duration>,
    /// RFC 9213's target list (`--targeted-cache-control`).
    targeted: Vec<HeaderName>,
    /// Where to serve the metrics (`--metrics`).
    metrics: Option<SocketAddr>,
}

/// How the proxy uses its threads (`--runtime`).
#[derive(Clone, Copy, Debug)]
enum RuntimeKind {
    /// A single-threaded runtime per thread, each with its own listener and cache layer.
    PerThread,
    /// One multi-threaded (work-stealing) runtime, one listener, one cache layer.
    Shared,
}

impl Args {
    /// `Ok(None)` when help was asked for.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut listen = SocketAddr::from(([127, 0, 0, 1], 3001));
        let mut upstream = None;
        let mut memcache = None;
        let mut mode = CacheMode::Origin;
        let mut ttl = Duration::from_secs(3600);
        let mut threads = None;
        let mut runtime = RuntimeKind::PerThread;
        let mut upstream_host = false;
        let mut stale_if_unreachable = Some(Duration::from_secs(3600));
        let mut targeted = vec![CDN_CACHE_CONTROL];
        let mut metrics = None;
        while let Some(arg) = args.next() {
            // Both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_string(), Some(value.to_string()))
                }
                _ => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--listen" => {
                    let v = value()?;
                    listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
                }
                "--upstream" => upstream = Some(parse_upstream(&value()?)?),
                "--memcache" => memcache = Some(value()?),
                "--mode" => {
                    mode = match value()?.as_str() {
                        "origin" => CacheMode::Origin,
                        "routes" => CacheMode::Routes,
                        other => return Err(format!("--mode {other:?}: origin or routes")),
                    };
                }
                "--ttl" => {
                    let v = value()?;
                    let secs = v.parse().map_err(|e| format!("--ttl {v:?}: {e}"))?;
                    ttl = Duration::from_secs(secs);
                }
                "--threads" => {
                    let v = value()?;
                    let n: usize = v.parse().map_err(|e| format!("--threads {v:?}: {e}"))?;
                    threads = Some(n.max(1));
                }
                "--runtime" => {
                    runtime = match value()?.as_str() {
                        "per-thread" => RuntimeKind::PerThread,
                        "shared" => RuntimeKind::Shared,
                        other => return Err(format!("--runtime {other:?}: per-thread or shared")),
                    };
                }
                "--upstream-host" => upstream_host = true,
                "--stale-if-unreachable" => {
                    let v = value()?;
                    let secs: u64 = v
                        .parse()
                        .map_err(|e| format!("--stale-if-unreachable {v:?}: {e}"))?;
                    stale_if_unreachable = (secs > 0).then(|| Duration::from_secs(secs));
                }
                "--targeted-cache-control" => targeted = parse_targeted(&value()?)?,
                "--metrics" => {
                    let v = value()?;
                    metrics = Some(v.parse().map_err(|e| format!("--metrics {v:?}: {e}"))?);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let upstream = upstream.ok_or("--upstream is required")?;
        Ok(Some(Self {
            listen,
            upstream,
            memcache,
            mode,
            ttl,
            threads,
            runtime,
            upstream_host,
            stale_if_unreachable,
            targeted,
            metrics,
        }))
    }
}

/// `--targeted-cache-control`: comma-separated field names, or `none`.
fn parse_targeted(text: &str) -> Result<Vec<HeaderName>, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("--targeted-cache-control {name:?}: {e}"))
        })
        .collect()
}

/// `http://host[:port]`, nothing else.
fn parse_upstream(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("--upstream {text:?}: {e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!(
            "--upstream {text:?}: only http:// origins are supported"
        ));
    }
    if uri.authority().is_none() {
        return Err(format!("--upstream {text:?}: no host"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(format!(
            "--upstream {text:?}: a path prefix is not supported; give http://host[:port]"
        ));
    }
    Ok(uri)
}

/// What the forwarding service knows: where the origin is and a pooled client to it.
struct Upstream {
    client: Client<HttpConnector, ProxyRequestBody>,
    authority: Authority,
    /// The authority as a `Host` value, for `--upstream-host`.
    host_value: HeaderValue,
    upstream_host: bool,
}

/// The origin's body, or a short body the proxy made up (502, 504).
type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The client's request body, or none for a request the cache makes of its own (the whole
/// representation after a range request's miss: see `MemcacheLayer::own_request_body`).
type ProxyRequestBody = Either<Incoming, Empty<Bytes>>;

/// The inner service: forwards one request to the origin. Never fails: trouble with the
/// origin is a 502 or 504 response.
async fn forward(
    upstream: Arc<Upstream>,
    client_addr: SocketAddr,
    mut request: Request<ProxyRequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    // `ValidTarget` lets only valid targets through; checked again rather than trusted.
    let target = match RequestTarget::from_parts("http", request.uri(), request.headers()) {
        Ok(target) => target,
        Err(invalid) => return Ok(refused(invalid).map(Either::Right)),
    };
    let client_host = match target.authority() {
        "" => None,
        authority => HeaderValue::from_str(authority).ok(),
    };
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build();
    *request.uri_mut() = match uri {
        Ok(uri) => uri,
        Err(err) => {
            tracing::debug!(error = %err, "request target not forwardable");
            return Ok(made_up(StatusCode::BAD_REQUEST, "400 Bad Request\n"));
        }
    };
    // The pool speaks HTTP/1.1 to the origin whatever the client spoke.
    *request.version_mut() = Version::HTTP_11;

    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    set_forwarding(headers, client_addr, client_host.as_ref());
    if upstream.upstream_host {
        headers.insert(header::HOST, upstream.host_value.clone());
    } else if let Some(host) = client_host {
        headers.insert(header::HOST, host);
    }
    // No client host at all (HTTP/1.0): the client pool fills in the upstream's.

    let method = request.method().clone();
    match tokio::time::timeout(UPSTREAM_TIMEOUT, upstream.client.request(request)).await {
        Ok(Ok(mut response)) => {
            // Our own version towards the client, whatever the origin spoke (hyper still
            // answers HTTP/1.0 clients in 1.0). An origin's `HTTP/1.0` passed on (and
            // stored, and replayed on hits) would make HTTP/1.1 clients close the
            // connection after every response.
            *response.version_mut() = Version::HTTP_11;
            strip_hop_by_hop(response.headers_mut());
            Ok(response.map(Either::Left))
        }
        Ok(Err(err)) => {
            tracing::warn!(%method, upstream = %upstream.authority, error = %error_chain(&err), "upstream request failed");
            Ok(unreachable(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"))
        }
        Err(_) => {
            tracing::warn!(%method, upstream = %upstream.authority, "upstream sent no response in time");
            Ok(unreachable(
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout\n",
            ))
        }
    }
}

/// Drops the hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, headers))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Replaces every forwarding header of the client's by the proxy's own (see the module
/// docs).
fn set_forwarding(headers: &mut HeaderMap, peer: SocketAddr, client_host: Option<&HeaderValue>) {
    for name in &FORWARDING {
        headers.remove(name);
    }
    let ip = peer.ip();
    if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // RFC 7239 §6: an IPv6 node is bracketed and quoted; a host with a port needs quotes.
    let mut forwarded = match ip {
        std::net::IpAddr::V4(v4) => format!("for={v4}"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    if let Some(host) = client_host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        // A validated authority holds no quote or backslash.
        if let Ok(host) = host.to_str() {
            forwarded.push_str(&format!(";host=\"{host}\""));
        }
    }
    forwarded.push_str(";proto=http");
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

/// Why a request is refused before the cache sees it, if it is.
fn check_target<B>(request: &Request<B>) -> Result<(), InvalidTarget> {
    // The proxy listens on plain HTTP only: an `https://` target here is a lie (and would
    // be keyed apart from the same page under `http://`).
    if request
        .uri()
        .scheme_str()
        .is_some_and(|scheme| !scheme.eq_ignore_ascii_case("http"))
    {
        return Err(InvalidTarget::UnsupportedScheme);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    if request.version() == Version::HTTP_11 && !request.headers().contains_key(header::HOST) {
        return Err(InvalidTarget::MalformedAuthority);
    }
    RequestTarget::from_parts("http", request.uri(), request.headers()).map(drop)
}

/// The 400 for a target the proxy refuses.
fn refused(invalid: InvalidTarget) -> Response<Full<Bytes>> {
    tracing::debug!(reason = %invalid, "request refused: 400");
    plain(StatusCode::BAD_REQUEST, "400 Bad Request\n")
}

fn made_up(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    plain(status, text).map(Either::Right)
}

/// A short `text/plain` answer of the proxy's own, never stored.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A 502 or 504 for an origin that did not answer: marked so that the cache layer may let a
/// stale entry stand in (`stale-if-error`) or answer 504 for a `must-revalidate` one.
fn unreachable(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = made_up(status, text);
    response.extensions_mut().insert(OriginUnreachable);
    response
}

/// The outermost service: drops method overrides from GET and HEAD, and answers 400 to a
/// request whose target the proxy refuses ([`check_target`]), before the cache or the
/// origin see it; passes the rest on.
#[derive(Clone)]
struct ValidTarget<S> {
    inner: S,
}

/// The inner service's response, or the 400.
type GuardedResponse<B> = Response<Either<B, Full<Bytes>>>;

impl<S, B> Service<Request<Incoming>> for ValidTarget<S>
where
    S: Service<Request<ProxyRequestBody>, Response = Response<B>, Error = Infallible>,
{
    type Response = GuardedResponse<B>;
    type Error = Infallible;
    type Future = future::Either<
        future::Ready<Result<GuardedResponse<B>, Infallible>>,
        future::MapOk<S::Future, fn(Response<B>) -> GuardedResponse<B>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        if matches!(*request.method(), Method::GET | Method::HEAD) {
            // A method override on a GET could run another method's handler at the origin
            // for an answer stored under the GET's key. Dropped here, before the cache
            // (which would otherwise bypass such a request), the origin never sees it.
            for name in &METHOD_OVERRIDES {
                request.headers_mut().remove(name);
            }
        }
        match check_target(&request) {
            Err(invalid) => {
                future::Either::Left(future::ready(Ok(refused(invalid).map(Either::Right))))
            }
            Ok(()) => future::Either::Right(
                self.inner
                    .call(request.map(Either::Left))
                    .map_ok(passed as fn(Response<B>) -> GuardedResponse<B>),
            ),
        }
    }
}

fn passed<B>(response: Response<B>) -> GuardedResponse<B> {
    response.map(Either::Left)
}

/// An error and its sources on one line (hyper's own messages are terse).
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn main() -> Result<(), BoxError> {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    if let Some(addr) = args.metrics {
        serve_metrics(addr)?;
    }
    match args.memcache.clone() {
        #[cfg(feature = "tcp")]
        Some(servers) => {
            let backend = || {
                tower_memcache::backend::TcpBackend::builder()
                    .server_list(&servers)
                    .build()
                    .map_err(|err| format!("--memcache {servers:?}: {err}"))
            };
            // Checked once here, so that a bad list is reported before anything starts.
            let description = format!("memcached {}", backend()?.server_names().join(","));
            start(&args, &description, || Ok(backend()?))
        }
        #[cfg(not(feature = "tcp"))]
        Some(_) => Err("--memcache needs the crate's `tcp` feature".into()),
        None => {
            // One store for every thread: the cache is the process's, whatever the runtime.
            let memory = MemoryBackend::new();
            start(&args, "in-process memory", || Ok(memory.clone()))
        }
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

/// Installs the Prometheus recorder and its HTTP listener on `addr`, before any layer
/// counts (the layer registers its metrics with the recorder of its first count). With no
/// runtime running yet, the exporter runs on a thread of its own, so scrapes never wait
/// behind proxied requests.
#[cfg(feature = "metrics")]
fn serve_metrics(addr: SocketAddr) -> Result<(), BoxError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|err| format!("--metrics {addr}: {err}"))?;
    tracing::info!(%addr, "serving metrics");
    Ok(())
}

/// Without the `metrics` feature the layer emits nothing: an empty endpoint would mislead.
#[cfg(not(feature = "metrics"))]
fn serve_metrics(_addr: SocketAddr) -> Result<(), BoxError> {
    Err("--metrics needs the crate's `metrics` feature (--features metrics)".into())
}

/// Runs the proxy on `args.threads` threads until Ctrl-C. `backend` makes the backend of
/// each cache layer: one per thread with `--runtime per-thread`, one in all with `shared`.
fn start<B, F>(args: &Args, description: &str, backend: F) -> Result<(), BoxError>
where
    B: Backend,
    F: Fn() -> Result<B, BoxError> + Sync,
{
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    match args.runtime {
        RuntimeKind::PerThread => run_per_thread(args, threads, description, &backend),
        RuntimeKind::Shared => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = TcpListener::bind(args.listen).await?;
                let worker = Worker {
                    listener,
                    layer: cache_layer(backend()?, args),
                    upstream: upstream(args)?,
                };
                announce(args, worker.listener.local_addr()?, description, threads);
                worker
                    .serve(async {
                        let _ = tokio::signal::ctrl_c().await;
                        announce_shutdown();
                    })
                    .await;
                Ok(())
            })
        }
    }
}

/// One single-threaded runtime per thread, each with its own listening socket, upstream
/// pool, cache layer (and, over memcached, its own connections): nginx's worker model. A
/// hit is then served start to end on one thread, with no hand-off between threads and
/// no work stealing; the kernel spreads incoming connections over the sockets
/// (`SO_REUSEPORT`).
fn run_per_thread<B, F>(
    args: &Args,
    threads: usize,
    description: &str,
    backend: &F,
) -> Result<(), BoxError>
where
    B: Backend,
    F: Fn() -> Result<B, BoxError> + Sync,
{
    // Everything that can fail is set up here, before any thread starts serving; the first
    // socket resolves port 0, and the others bind the same address.
    let mut workers = Vec::with_capacity(threads);
    let mut addr = args.listen;
    for _ in 0..threads {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Sockets and pools register with the runtime they are made in.
        let _entered = runtime.enter();
        let listener = bind_shared(addr).map_err(|err| format!("--listen {addr}: {err}"))?;
        addr = listener.local_addr()?;
        let worker = Worker {
            listener,
            layer: cache_layer(backend()?, args),
            upstream: upstream(args)?,
        };
        drop(_entered);
        workers.push((runtime, worker));
    }
    announce(args, addr, description, threads);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::scope(|scope| {
        for (index, (runtime, worker)) in workers.into_iter().enumerate() {
            let mut stopped = stopped.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("proxy-{index}"))
                .spawn_scoped(scope, move || {
                    runtime.block_on(worker.serve(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    }));
                });
            if let Err(err) = spawned {
                // The threads already started stop before the scope ends.
                let _ = stop.send(true);
                return Err(err.into());
            }
        }
        let signals = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match signals {
            Ok(signals) => {
                let _ = signals.block_on(tokio::signal::ctrl_c());
                announce_shutdown();
                let _ = stop.send(true);
                Ok(())
            }
            Err(err) => {
                let _ = stop.send(true);
                Err(err.into())
            }
        }
    })
}

/// A listening socket that other threads of this process may bind to the same address
/// (`SO_REUSEPORT`); the kernel spreads incoming connections over them.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted proxy can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // nginx's default backlog on Linux.
    socket.listen(511)
}

fn announce(args: &Args, addr: SocketAddr, description: &str, threads: usize) {
    let runtime = match args.runtime {
        RuntimeKind::PerThread => "a runtime per thread",
        RuntimeKind::Shared => "one shared runtime",
    };
    println!(
        "tower-memcache reverse proxy on http://{addr} -> http://{} ({description}, {threads} threads, {runtime})",
        args.upstream
            .authority()
            .map_or("", |authority| authority.as_str()),
    );
}

fn announce_shutdown() {
    println!(
        "shutting down: finishing open requests ({} s at most)",
        GRACE.as_secs()
    );
}

/// How long open requests may take to finish at shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// The pooled client to the origin; made inside the runtime that will use it.
fn upstream(args: &Args) -> Result<Arc<Upstream>, BoxError> {
    let authority = args
        .upstream
        .authority()
        .cloned()
        .ok_or("--upstream has no host")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector);
    Ok(Arc::new(Upstream {
        client,
        host_value: HeaderValue::from_str(authority.as_str())?,
        authority,
        upstream_host: args.upstream_host,
    }))
}

fn cache_layer<B: Backend>(backend: B, args: &Args) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("proxy")
        .mode(args.mode)
        .default_lifetime(args.ttl)
        .stale_if_unreachable(args.stale_if_unreachable)
        .targeted_cache_control(args.targeted.iter().cloned())
        .own_request_body(|| ProxyRequestBody::Right(Empty::new()))
}

/// What one runtime serves with: its listener, its cache layer (whose services share
/// statistics and request coalescing) and its pool to the origin.
struct Worker<B> {
    listener: TcpListener,
    layer: MemcacheLayer<B>,
    upstream: Arc<Upstream>,
}

impl<B: Backend> Worker<B> {
    /// Accepts and serves connections until `shutdown` completes, then lets open requests
    /// finish ([`GRACE`] at most).
    async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            layer,
            upstream,
        } = self;
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        let mut shutdown = pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            // A cache service per connection, so the forwarding service knows the client's
            // address (for X-Forwarded-For) at no cost per request: cache hits never need it.
            let upstream = Arc::clone(&upstream);
            let service = ValidTarget {
                inner: layer.layer(tower::service_fn(move |request| {
                    forward(Arc::clone(&upstream), peer, request)
                })),
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%peer, error = %error_chain(&*err), "connection ended with an error");
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(GRACE) => {}
        }
    }
}
