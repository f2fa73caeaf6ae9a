//! `tower-memcache-proxy`: a caching reverse proxy in front of any HTTP origin, the
//! deployment people know from nginx + srcache + memc (or Varnish), as a tower stack over
//! memcached. Install it with `cargo install tower-memcache --features proxy` (add
//! `metrics` for `--metrics`); `tower-memcache-proxy --help` lists every flag, its
//! environment variable and its default. `contrib/tower-memcache-proxy.service` is an
//! example systemd unit.
//!
//! Logs: an access log line per request on stdout (`--access-log off` turns it off,
//! `--access-log-query off` keeps queries out of it; the format is in the `access_log`
//! module: nginx's `combined` plus the `Cache-Status` and the time to the response head); events on stderr, filtered by `RUST_LOG` (default `info`;
//! `RUST_LOG=tower_memcache=debug` shows every cache decision), as text or
//! `--log-format json`.
//!
//! Shutdown: on SIGTERM or Ctrl-C (SIGINT) the proxy stops accepting, lets the open
//! requests finish and the cache finish its pending stores, `--shutdown-grace` (10 s) at
//! most in all, then exits with status 0. SIGHUP is logged and ignored: there is nothing
//! to reload.
//!
//! Every method, path, query and end-to-end header is forwarded, except the forwarding
//! headers below and `Expect` (the proxy sends `100 Continue` itself); the request body
//! streams through until the origin's answer to it begins (framed by its length) or
//! ends (chunked; while a chunked answer is under way, only as long as the client takes
//! it and it runs no more than 64 KiB ahead of the body): the rest is not sent, as an
//! origin that answered early would read it as a request. Hop-by-hop headers (`Connection` and
//! the headers it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`,
//! `Upgrade`, `Trailer`, `Proxy-Authorization`, `Proxy-Authenticate`) are dropped both
//! ways, but for the response fields the cache decides by (`Cache-Control`, `Vary`,
//! `Set-Cookie`, `Surrogate-Key` and the like), which an origin's `Connection` cannot make
//! hop-by-hop. An origin's 101 Switching Protocols (no `Upgrade` is forwarded) is a 502, as
//! is a response head over 64 KiB. Upstream connections are pooled and kept alive (but for
//! one that carried a request body, closed after its response: an origin that answered
//! without reading the body would read it as the next request, and its answer would go to
//! the next client sent there), and spoken to in HTTP/1.1 whatever the client spoke;
//! responses go out as the proxy's own HTTP/1.1 (HTTP/1.0 clients still get 1.0), not the
//! origin's version. An origin that cannot be reached answers 502 Bad Gateway (a safe
//! request without body that a kept-alive connection closed under unanswered is sent once
//! more first; not one a fresh connection closed under, nor one whose answer had begun:
//! the origin took those), one that sends no response head within `--upstream-timeout`
//! (60 s) of the request's last byte 504 Gateway Timeout (a request body that pauses that
//! long on its way gets 408 Request Timeout, and one the client breaks, a malformed chunk
//! or an HTTP/2 stream reset before its end,
//! 400 Bad Request: the client's fault, not the origin's); none is cached. At most `--upstream-max-connections`
//! (1024) requests are under way at the origin at once, over all threads; past it a
//! request waits in order for a place, `--upstream-queue-timeout` (5 s) at most and behind
//! no more waiters than there are places, else gets 503 Service Unavailable (not cached; a
//! stale entry stands in within `stale-if-error`); while requests wait, connections that
//! hold places and move under 1 KiB a second through each that waits for their client
//! are closed. A response body of which the origin sends nothing for
//! `--upstream-timeout` is cut off, and not stored. A response whose `Transfer-Encoding`
//! names a coding other than `chunked` (`gzip, chunked`), or `chunked` twice or not last
//! (`chunked, chunked`, `chunked, identity`), is answered 502 too: the proxy cannot undo
//! it, and the body would go on (and into the cache) still coded. An origin's
//! `Content-Length` beside `Transfer-Encoding` is dropped (RFC 9112 §6.3).
//!
//! # Requests refused
//!
//! Before the cache sees it, a request is answered `400 Bad Request` (RFC 9112 §3.2) when
//! its authority cannot be keyed safely ([`RequestTarget::from_parts`](tower_memcache::cache::RequestTarget::from_parts)): a `Host` that is
//! not `host[:port]` (`127.0.0.1:3001/a` would otherwise let `GET /b` be stored as
//! `/a/b`), user information, more than one `Host`, a `Host` that disagrees with an
//! absolute-form target; also an HTTP/1.1 request without `Host`, and an absolute-form
//! target whose scheme is not `http` (the proxy only listens on plain HTTP). A request
//! body whose `Transfer-Encoding` names a coding besides its one `chunked` (`gzip,
//! chunked`, `chunked, chunked`) is answered `501 Not Implemented` (RFC 9112 §6.1), as
//! nginx answers it: the proxy undoes the chunking only, and the origin would take the
//! still-coded bytes for the body.
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
//! - `Via` (RFC 9110 §7.6.3): `1.1 tower-memcache-<token>` (the version the client
//!   spoke; a random token per process), appended to any `Via` the request carries,
//!   which stays: it names hops, not where the client is or what it asked for. A request
//!   whose `Via` holds this process's own member looped back to it: `508 Loop Detected`.
//! - Dropped and not replaced: `X-Forwarded-Port`, `X-Forwarded-Prefix`,
//!   `X-Forwarded-Server`, `X-Forwarded-Scheme`, `X-Forwarded-Ssl`, `Front-End-Https`,
//!   `X-Url-Scheme`, `X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `X-Original-URL`,
//!   `X-Rewrite-URL`, `X-Original-Host`, `X-Host`, `X-Forwarded-Uri`,
//!   `X-Forwarded-Path`, `X-Original-URI`, `X-HTTP-Host-Override`, `X-Original-For`,
//!   `X-Original-Proto`, `Client-IP`, `X-Cluster-Client-IP`, `X-Forwarded`,
//!   `Forwarded-For`, `CF-Connecting-IP`, `Fastly-Client-IP` (what PHP's common "real
//!   client IP" helpers read before or beside `X-Forwarded-For`, and the CDNs' own),
//!   `Proxy` (`HTTP_PROXY` to a CGI-style origin: "httpoxy"), the mount point and scheme
//!   under other servers' names (`Script-Name`, whose `SCRIPT_NAME` spelling gunicorn
//!   reads, `X-Script-Name`, Tornado's `X-Scheme`, gunicorn's `X-Forwarded-Protocol`),
//!   and what an origin leaves to the proxy in front, which this one does not do
//!   (Rack::Sendfile's `X-Sendfile-Type` and `X-Accel-Mapping`, ESI's
//!   `Surrogate-Capability`), and the client certificate fields a TLS terminator would
//!   set (`X-Client-Cert`, `X-Forwarded-Client-Cert`, `X-SSL-Client-Verify` and their
//!   kin: this proxy speaks no TLS, so a client's copy is forged).
//! - Method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`)
//!   are dropped from GET and HEAD, the methods whose answers are stored: honoured, they
//!   would run another handler (a POST's) whose answer is stored under the GET's key.
//!   Other methods keep them; their answers are never stored.
//! - Fields whose names hold `_` are dropped (nginx's `underscores_in_headers off`): a
//!   CGI-style gateway reads `X_Forwarded_Host` as `X-Forwarded-Host`, and
//!   `Accept_Language` as `Accept-Language`. `--underscores-in-headers` passes them,
//!   except the `_` spellings of the fields above.
//! - HTTP/2 cookie crumbs (one `Cookie` field per cookie) go to the origin as one line
//!   joined with `; ` (RFC 9113 §8.2.3).
//!
//! The cache looks a request up as the origin will see it (hop-by-hop fields dropped,
//! forwarding headers replaced), so a `Vary` on one of them selects by the proxy's value.
//! An origin that varies its response on any other request header must name it in
//! `Vary`; see SECURITY.md for the whole trust model.
//!
//! What is stored, reused and invalidated is [`MemcacheLayer`]'s RFC 9111 shared-cache
//! policy (see the README's directive table): GET and HEAD keyed by host, path and query
//! (namespace `proxy:` and the upstream's authority, or `--namespace`: proxies in front
//! of different origins sharing memcached keep apart), variants by `Vary`, revalidation
//! with `If-None-Match` / `If-Modified-Since`, `stale-while-revalidate` and
//! `stale-if-error`, invalidation by POST, PUT, PATCH, DELETE and unknown methods, tags
//! from `Surrogate-Key`. As with
//! srcache, request cookies are not part of the key: an origin that personalises a response
//! must say `private` or `Vary`. The proxy's own 502 and 504 carry
//! [`OriginUnreachable`](tower_memcache::cache::OriginUnreachable), so a stale entry can stand in for them. `RUST_LOG=debug` shows
//! every cache decision.
//!
//! An example session, with Python's file server as the origin:
//!
//! ```text
//! $ mkdir /tmp/site && echo hello > /tmp/site/index.html
//! $ python3 -m http.server 8080 --bind 127.0.0.1 --directory /tmp/site &
//! $ memcached -l 127.0.0.1 -p 11311 -U 0 &          # add -u root when running as root
//! $ tower-memcache-proxy \
//!       --listen 127.0.0.1:3001 --upstream http://127.0.0.1:8080 --memcache 127.0.0.1:11311
//! tower-memcache-proxy on http://127.0.0.1:3001 -> http://127.0.0.1:8080 (memcached 127.0.0.1:11311, 2 threads, one shared runtime)
//!
//! $ curl -si http://127.0.0.1:3001/index.html | grep -i -e ^cache-status -e ^age
//! cache-status: tower-memcache; fwd=uri-miss; stored
//! $ curl -si http://127.0.0.1:3001/index.html | grep -i -e ^cache-status -e ^age
//! age: 0
//! cache-status: tower-memcache; fwd=stale; fwd-status=304
//! ```
//!
//! The file was just written: a tenth of its age (the heuristic freshness of a response
//! with `Last-Modified` alone) is nothing, so each request revalidates the stored copy
//! with `If-Modified-Since` and the origin's 304 answers it from the cache without the
//! body. A file modified ten days ago is fresh for a day: the second request says
//! `hit`. With the origin stopped, a stale entry stands in for the proxy's 502
//! (`--stale-if-unreachable`): `fwd=stale; ttl=-7; detail=origin-unreachable`.

mod access_log;
mod args;
mod connections;
mod download;
mod fields;
mod first_bytes;
mod forward;
mod log_sink;
#[cfg(feature = "metrics")]
mod metrics_listener;
mod origin_connection;
mod request_writes;
mod response_heads;
mod size;
mod target;
mod upload;
mod upstream_limit;

use std::error::Error;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;
use tower::Layer;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, MemoryBackend};
use tower_memcache::cache::{CacheMode, NearCache};
use tracing_subscriber::EnvFilter;

use access_log::AccessLog;
use args::{Args, LogFormat, Mode, OnOff, RuntimeKind};
use connections::{
    Activity, ConnectionLimit, CountRequests, UnsentBudget, keep_little_unsent, run_bounded,
};
use fields::PeerFields;
use first_bytes::FirstBytes;
use forward::{Upstream, error_chain, forward};
use target::ValidTarget;
use upload::ProxyRequestBody;
use upstream_limit::UpstreamLimit;

// glibc's malloc was about a tenth of the CPU time of a cache hit here (a hit allocates
// for the request, the entry's headers and the response); mimalloc's thread-local
// free lists fit a server whose threads each allocate and free their own requests'.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse_checked();
    // The last lines of the logs, unless their readers stopped reading, on every way out
    // of `main` (dropped before an error it returns is printed).
    let _flush = log_sink::FlushOnExit;
    // `info` when RUST_LOG is unset; one with a mistake in it (`tower_memcache=dbug`) is
    // refused: dropped for `info`, the operator who asked for more got none, unsaid.
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Err(_) => EnvFilter::new("info"),
        Ok(text) => EnvFilter::try_new(&text)
            .map_err(|err| format!("{}={text:?}: {err}", EnvFilter::DEFAULT_ENV))?,
    };
    // stderr: stdout is the access log's. Off the request threads, as the access log.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_sink::Stderr);
    match args.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    // One budget and one bound on the origin for the whole process, whatever the runtime.
    let unsent = Arc::new(UnsentBudget::new(unsent_budget(&args)));
    let origin_limit = Arc::new(UpstreamLimit::new(
        usize::try_from(args.upstream_max_connections).unwrap_or(usize::MAX),
        args.upstream_queue_timeout,
    ));
    if let Some(addr) = args.metrics {
        serve_metrics(
            addr,
            args.client_header_timeout,
            Arc::clone(&unsent),
            Arc::clone(&origin_limit),
        )?;
    }
    // One near tier for the whole process, whatever the runtime: one bound, and every
    // thread's purges apply to what every thread answers.
    let near = args
        .near_cache
        .0
        .map(|(size, staleness)| NearCache::new(size, staleness));
    match args.memcache.clone() {
        Some(servers) => {
            // Built once here, so that a bad list is reported before anything starts.
            // The backend's own timeouts at least `--cache-timeout`: left at their 100 ms
            // defaults, a longer `--cache-timeout` (memcached over a slow link) would be
            // cut short by the backend, every lookup failing and the server marked down.
            // Never below the defaults: stores and purges keep their time.
            let call_timeout = args.cache_timeout.max(Duration::from_millis(100));
            let first = tower_memcache::backend::TcpBackend::builder()
                .server_list(&servers)
                .timeout(call_timeout)
                .connect_timeout(call_timeout)
                .build()
                .map_err(|err| format!("--memcache {servers:?}: {err}"))?;
            let description = format!("memcached {}", first.server_names().join(","));
            // Each thread's backend has its own connections (made on its own runtime), and
            // shares each server's health with the others: a server one thread marks down
            // is down for all, so a purge that skipped it holds on every thread.
            let shared = Shared {
                near: near.as_ref(),
                unsent: &unsent,
                origin_limit: &origin_limit,
            };
            start(&args, &description, &shared, || Ok(first.sibling()))
        }
        None => {
            // One store for every thread: the cache is the process's, whatever the runtime.
            let memory = MemoryBackend::new();
            let shared = Shared {
                near: near.as_ref(),
                unsent: &unsent,
                origin_limit: &origin_limit,
            };
            start(&args, "in-process memory", &shared, || Ok(memory.clone()))
        }
    }
}

/// Installs the Prometheus recorder and its bounded HTTP listener on `addr`
/// ([`metrics_listener`]), on a thread of its own.
#[cfg(feature = "metrics")]
fn serve_metrics(
    addr: SocketAddr,
    within: Duration,
    unsent: Arc<UnsentBudget>,
    origin_limit: Arc<UpstreamLimit>,
) -> Result<(), BoxError> {
    metrics_listener::serve(addr, within, unsent, origin_limit)
}

/// Without the `metrics` feature the layer emits nothing: an empty endpoint would mislead.
#[cfg(not(feature = "metrics"))]
fn serve_metrics(
    _addr: SocketAddr,
    _within: Duration,
    _unsent: Arc<UnsentBudget>,
    _origin_limit: Arc<UpstreamLimit>,
) -> Result<(), BoxError> {
    Err("--metrics needs the crate's `metrics` feature (--features proxy,metrics)".into())
}

/// `--max-unsent-bytes`, or its default: the 128 streams of one HTTP/2 connection, each
/// holding an entry.
fn unsent_budget(args: &Args) -> u64 {
    args.max_unsent_bytes
        .unwrap_or_else(|| args.max_entry_size.saturating_mul(MAX_STREAMS.into()))
}

/// Listens for SIGTERM (what systemd, Docker and Kubernetes send) and SIGINT (Ctrl-C) from
/// the call on, so that a signal sent as soon as the proxy accepts connections is never the
/// default action (an exit without draining); the future completes on the first. Called
/// inside a runtime.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    // SIGHUP's default action ends the process at once, cutting the responses under way
    // (a closed terminal, a `kill -HUP` meant as nginx's reload). There is nothing to
    // reload (flags are read once, the logs are inherited streams): said and ignored.
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                let mut hangup = hangup.ok();
                loop {
                    tokio::select! {
                        _ = terminate.recv() => break,
                        _ = interrupt.recv() => break,
                        Some(()) = async {
                            match &mut hangup {
                                Some(hangup) => hangup.recv().await,
                                None => std::future::pending().await,
                            }
                        } => {
                            log_sink::stderr_line(
                                "SIGHUP ignored: nothing to reload (restart the proxy to change its flags)".into(),
                            );
                        }
                    }
                }
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        announce_shutdown();
    }
}

/// What every worker shares, whatever the runtime.
#[derive(Clone, Copy)]
struct Shared<'a> {
    near: Option<&'a NearCache>,
    /// `--max-unsent-bytes`.
    unsent: &'a Arc<UnsentBudget>,
    /// `--upstream-max-connections`.
    origin_limit: &'a Arc<UpstreamLimit>,
}

/// Runs the proxy on `args.threads` threads until SIGTERM or Ctrl-C. `backend` makes the
/// backend of each cache layer: one per thread with `--runtime per-thread`, one in all with
/// `shared`.
fn start<B, F>(
    args: &Args,
    description: &str,
    shared: &Shared<'_>,
    backend: F,
) -> Result<(), BoxError>
where
    B: Backend,
    F: Fn() -> Result<B, BoxError> + Sync,
{
    let Shared {
        near,
        unsent,
        origin_limit,
    } = *shared;
    let threads = args
        .threads
        .map(usize::from)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let connections = Arc::new(ConnectionLimit::new(
        usize::try_from(args.max_connections).unwrap_or(usize::MAX),
    ));
    match args.runtime {
        RuntimeKind::PerThread => {
            run_per_thread(args, threads, description, shared, &connections, &backend)
        }
        RuntimeKind::Shared => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let signal = shutdown_signal();
                let listener = TcpListener::bind(args.listen)
                    .await
                    .map_err(|err| format!("--listen {}: {err}", args.listen))?;
                let worker = Worker {
                    listener,
                    layer: cache_layer(backend()?, args, near),
                    upstream: forward::upstream(&upstream_settings(args, origin_limit))?,
                    access_log: args.access_log == OnOff::On,
                    log_queries: args.access_log_query == OnOff::On,
                    pass_underscored: args.underscores_in_headers,
                    header_timeout: args.client_header_timeout,
                    connections: Arc::clone(&connections),
                    unsent: Arc::clone(unsent),
                    grace: args.shutdown_grace,
                    gauges: gauges(args, near, &backend)?,
                };
                announce(args, worker.listener.local_addr()?, description, threads);
                worker.serve(signal).await;
                Ok(())
            })
        }
    }
}

/// One single-threaded runtime per thread, each with its own listening socket, upstream
/// pool, cache layer (and, over memcached, its own connections; the servers' health is
/// shared, see `TcpBackend::sibling`): nginx's worker model. A
/// hit is then served start to end on one thread, with no hand-off between threads and
/// no work stealing; the kernel spreads incoming connections over the sockets
/// (`SO_REUSEPORT`).
fn run_per_thread<B, F>(
    args: &Args,
    threads: usize,
    description: &str,
    shared: &Shared<'_>,
    connections: &Arc<ConnectionLimit>,
    backend: &F,
) -> Result<(), BoxError>
where
    B: Backend,
    F: Fn() -> Result<B, BoxError> + Sync,
{
    let Shared {
        near,
        unsent,
        origin_limit,
    } = *shared;
    // Listened for before the sockets are bound, so that a SIGTERM sent as soon as the
    // proxy accepts connections is never the default action (an exit without draining).
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal = {
        let _entered = signals.enter();
        shutdown_signal()
    };
    // Everything that can fail is set up here, before any thread starts serving; the first
    // socket resolves port 0, and the others bind the same address.
    let mut workers = Vec::with_capacity(threads);
    let mut addr = args.listen;
    for index in 0..threads {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Sockets and pools register with the runtime they are made in.
        let _entered = runtime.enter();
        let listener = bind_shared(addr).map_err(|err| format!("--listen {addr}: {err}"))?;
        addr = listener.local_addr()?;
        let worker = Worker {
            listener,
            layer: cache_layer(backend()?, args, near),
            upstream: forward::upstream(&upstream_settings(args, origin_limit))?,
            access_log: args.access_log == OnOff::On,
            log_queries: args.access_log_query == OnOff::On,
            pass_underscored: args.underscores_in_headers,
            header_timeout: args.client_header_timeout,
            connections: Arc::clone(connections),
            unsent: Arc::clone(unsent),
            grace: args.shutdown_grace,
            gauges: if index == 0 {
                gauges(args, near, backend)?
            } else {
                None
            },
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
        signals.block_on(signal);
        let _ = stop.send(true);
        Ok(())
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

/// The startup line, on stderr (stdout is the access log's).
fn announce(args: &Args, addr: SocketAddr, description: &str, threads: usize) {
    let runtime = match args.runtime {
        RuntimeKind::PerThread => "a runtime per thread",
        RuntimeKind::Shared => "one shared runtime",
    };
    let near = match args.near_cache.0 {
        Some((bytes, staleness)) => {
            format!(", near tier {} KiB within {staleness:?}", bytes / 1024)
        }
        None => String::new(),
    };
    log_sink::stderr_line(format!(
        "tower-memcache-proxy on http://{addr} -> http://{} ({description}{near}, {threads} threads, {runtime})",
        args.upstream
            .authority()
            .map_or("", |authority| authority.as_str()),
    ));
}

fn announce_shutdown() {
    log_sink::stderr_line("shutting down: finishing open requests and pending stores".into());
}

/// The gauge poller of `--metrics`, for one worker.
fn gauges<B, F>(
    args: &Args,
    near: Option<&NearCache>,
    backend: &F,
) -> Result<Option<Gauges<B>>, BoxError>
where
    F: Fn() -> Result<B, BoxError>,
{
    if args.metrics.is_none() {
        return Ok(None);
    }
    Ok(Some(Gauges {
        backend: backend()?,
        near: near.cloned(),
    }))
}

fn upstream_settings(args: &Args, limit: &Arc<UpstreamLimit>) -> forward::UpstreamSettings {
    forward::UpstreamSettings {
        origin: args.upstream.clone(),
        upstream_host: args.upstream_host,
        connect_timeout: args.connect_timeout,
        head_timeout: args.upstream_timeout,
        limit: Arc::clone(limit),
        targeted: args.targeted_cache_control.0.clone(),
    }
}

fn cache_layer<B: Backend>(backend: B, args: &Args, near: Option<&NearCache>) -> MemcacheLayer<B> {
    let mode = match args.mode {
        Mode::Origin => CacheMode::Origin,
        Mode::Routes => CacheMode::Routes,
    };
    let layer = MemcacheLayer::new(backend)
        .namespace(args.namespace())
        .mode(mode)
        .default_lifetime(Duration::from_secs(args.ttl()))
        .stale_if_unreachable(
            (args.stale_if_unreachable > 0).then(|| Duration::from_secs(args.stale_if_unreachable)),
        )
        .targeted_cache_control(args.targeted_cache_control.0.iter().cloned())
        .own_request_body(|| ProxyRequestBody::Right(http_body_util::Empty::new()))
        .max_entry_size(usize::try_from(args.max_entry_size).unwrap_or(usize::MAX))
        .lookup_timeout(args.cache_timeout);
    match near {
        Some(near) => layer.near_cache(near.clone()),
        None => layer,
    }
}

/// What one runtime serves with: its listener, its cache layer (whose services share
/// statistics and request coalescing) and its pool to the origin.
struct Worker<B> {
    listener: TcpListener,
    layer: MemcacheLayer<B>,
    upstream: Arc<Upstream>,
    access_log: bool,
    /// `--access-log-query`: queries are written to the access log.
    log_queries: bool,
    /// `--underscores-in-headers`.
    pass_underscored: bool,
    /// `--client-header-timeout`.
    header_timeout: Duration,
    /// `--max-connections`, shared by every worker.
    connections: Arc<ConnectionLimit>,
    /// `--max-unsent-bytes`, shared by every worker.
    unsent: Arc<UnsentBudget>,
    /// `--shutdown-grace`.
    grace: Duration,
    /// With `--metrics`, one worker reads memcached's and the near tier's gauges (a
    /// backend of its own for it).
    gauges: Option<Gauges<B>>,
}

/// What the gauge poller reads.
struct Gauges<B> {
    backend: B,
    near: Option<NearCache>,
}

/// The most an HTTP/1 request head may take (hyper's read buffer): requests with more
/// are refused with 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// The streams an HTTP/2 client may have open at once on a connection.
const MAX_STREAMS: u32 = 128;

/// How often memcached's `stats` and the near tier's size are read for `--metrics`.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
const GAUGE_INTERVAL: Duration = Duration::from_secs(10);

impl<B: Backend> Gauges<B> {
    /// Reads the gauges every [`GAUGE_INTERVAL`] until aborted.
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_async))]
    async fn poll(self) {
        #[cfg(feature = "metrics")]
        loop {
            let servers = tokio::time::timeout(Duration::from_secs(2), self.backend.stats()).await;
            let servers = match servers {
                Ok(Ok(servers)) => servers,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "memcached stats for the gauges failed");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            tower_memcache::cache::record_backend_gauges(&servers, self.near.as_ref());
            tokio::time::sleep(GAUGE_INTERVAL).await;
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (self.backend, self.near);
    }
}

impl<B: Backend> Worker<B> {
    /// Accepts and serves connections until `shutdown` completes, then lets open requests
    /// and the layer's pending stores finish (`grace` at most in all).
    async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            layer,
            upstream,
            access_log,
            log_queries,
            pass_underscored,
            header_timeout,
            connections,
            unsent,
            grace,
            gauges,
        } = self;
        let poller = gauges.map(|gauges| tokio::spawn(gauges.poll()));
        let background = layer.background();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Without a timer hyper keeps no header timeout at all (a client could hold a
        // connection forever by never finishing its head); with one, the timeout also
        // closes kept-alive connections left idle.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // A request head held while it arrives: hyper's default (about 400 KiB) let
            // a client that never finishes one hold that much per connection until the
            // header timeout. nginx allows four 8 KiB buffers.
            .max_buf_size(MAX_REQUEST_HEAD);
        // An HTTP/2 client that stops answering pings (one draining an idle connection
        // among them: a graceful close waits for its ack) is cut off.
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(header_timeout)
            .keep_alive_timeout(header_timeout)
            // nginx's http2_max_concurrent_streams (hyper's default is 200): each stream
            // may hold a response of up to an entry while its client reads it (what all
            // connections hold together is bounded by `--max-unsent-bytes`).
            .max_concurrent_streams(MAX_STREAMS);
        // Every connection task holds a receiver until its connection ended.
        let (drain, draining) = tokio::sync::watch::channel(false);
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
            // Taken after the accept: each worker's socket has its own queue, so a place
            // held by an idle worker would stop another from serving within the limit.
            // A connection accepted past the limit waits here, one per worker.
            let permit = tokio::select! {
                permit = connections.admit() => permit,
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            keep_little_unsent(&stream);
            // A cache service per connection, so the forwarding service knows the client's
            // address (for X-Forwarded-For) at no cost per request: cache hits never need it.
            let upstream = Arc::clone(&upstream);
            let client = Arc::new(PeerFields::new(peer));
            let activity = Arc::new(Activity::new(
                Arc::clone(&unsent),
                Arc::clone(upstream.limit()),
            ));
            let service = ValidTarget {
                inner: layer.layer(tower::service_fn({
                    let client = Arc::clone(&client);
                    let activity = Arc::clone(&activity);
                    move |request| {
                        forward(
                            Arc::clone(&upstream),
                            Arc::clone(&client),
                            Arc::clone(&activity),
                            request,
                        )
                    }
                })),
                client,
                pass_underscored,
            };
            let service = AccessLog {
                inner: CountRequests {
                    inner: service,
                    activity: Arc::clone(&activity),
                },
                peer: peer.ip(),
                enabled: access_log,
                queries: log_queries,
            };
            let connection = builder
                .serve_connection(
                    TokioIo::new(FirstBytes::new(stream, header_timeout)),
                    TowerToHyperService::new(service),
                )
                .into_owned();
            let draining = draining.clone();
            tokio::spawn(async move {
                let ended = run_bounded(
                    connection,
                    auto::Connection::graceful_shutdown,
                    activity,
                    header_timeout,
                    draining,
                )
                .await;
                if let Err(err) = ended {
                    if access_log {
                        access_log::log_refused_head(peer.ip(), &*err);
                    }
                    tracing::debug!(%peer, error = %error_chain(&*err), "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        drop(draining);
        if let Some(poller) = poller {
            poller.abort();
        }
        let deadline = Instant::now() + grace;
        let _ = drain.send(true);
        if tokio::time::timeout_at(deadline, drain.closed())
            .await
            .is_err()
        {
            tracing::warn!("open requests still running at the end of the grace period");
        }
        // Stores of responses just sent (and refreshes) run in the background, on this
        // runtime: they end with it.
        if tokio::time::timeout_at(deadline, background.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                running = background.running(),
                "pending stores dropped at the end of the grace period"
            );
        }
    }
}
