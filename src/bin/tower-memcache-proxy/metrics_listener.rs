//! `--metrics`: the Prometheus text exposition of the cache's metrics, served on a thread
//! (and a single-threaded runtime) of its own, so that scrapes never wait behind proxied
//! requests.
//!
//! Served here rather than by `metrics-exporter-prometheus`'s own HTTP listener: that one
//! accepts every connection and keeps it for as long as its client likes (no header
//! timeout, no limit), so anyone who could reach the metrics port could use up the
//! process's file descriptors and leave the proxy unable to accept a client. Here at most
//! [`MAX_CONNECTIONS`] are held at once (the others wait in the listen backlog), and each
//! serves one scrape, closed after `--client-header-timeout` at most.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::BoxError;
use crate::connections::UnsentBudget;
use crate::upstream_limit::UpstreamLimit;

/// Connections to the metrics listener held at once: a few scrapers' worth.
const MAX_CONNECTIONS: usize = 16;

/// The most a scrape's request head may take (hyper's smallest read buffer).
const MAX_HEAD: usize = 8 * 1024;

/// How often histograms are drained into their distributions (the exporter's own
/// default), which its own listener did for it.
const UPKEEP: Duration = Duration::from_secs(5);

/// Buckets make the backend's latency a Prometheus histogram (aggregatable over servers
/// and proxies) rather than a summary: 100 µs (a loopback hit) to the 100 ms lookup
/// timeout and beyond.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the Prometheus recorder and starts serving it on `addr`, before any layer
/// counts (the layer registers its metrics with the recorder of its first count). A
/// connection has `within` to send its request and take the answer.
pub(crate) fn serve(
    addr: SocketAddr,
    within: Duration,
    unsent: Arc<UnsentBudget>,
    origin_limit: Arc<UpstreamLimit>,
) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Bound before the recorder is installed: a port in use is reported at startup.
    let listener = {
        let _entered = runtime.enter();
        bind(addr).map_err(|err| format!("--metrics {addr}: {err}"))?
    };
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tower_memcache_backend_request_duration_seconds".into()),
            &LATENCY_BUCKETS,
        )
        .map_err(|err| format!("--metrics {addr}: {err}"))?
        .install_recorder()
        .map_err(|err| format!("--metrics {addr}: {err}"))?;
    // The port bound, not the one asked for: `--metrics 127.0.0.1:0` takes a free one,
    // which this line is the only way to learn.
    let bound = listener.local_addr().unwrap_or(addr);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept(listener, handle, within, unsent, origin_limit)))?;
    tracing::info!(addr = %bound, "serving metrics");
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(511)
}

/// Accepts a connection whenever fewer than [`MAX_CONNECTIONS`] are open, forever.
async fn accept(
    listener: TcpListener,
    handle: PrometheusHandle,
    within: Duration,
    unsent: Arc<UnsentBudget>,
    origin_limit: Arc<UpstreamLimit>,
) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Taken before the accept: past the limit, clients wait in the backlog and cost
        // the process no file descriptor.
        let Ok(place) = Arc::clone(&places).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off a little.
                tracing::warn!(error = %err, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let unsent = Arc::clone(&unsent);
        let origin_limit = Arc::clone(&origin_limit);
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                // Read at the scrape: kept up to date on every response, a gauge would
                // cost the hit path a registry lookup.
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("tower_memcache_proxy_unsent_bytes").set(unsent.held() as f64);
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("tower_memcache_proxy_upstream_active")
                    .set(origin_limit.active() as f64);
                let mut response = Response::new(Full::new(Bytes::from(handle.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(within)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // One scrape per connection, `within` in all: a client that does not read
            // its answer holds its place no longer.
            if let Ok(Err(err)) = tokio::time::timeout(within, connection).await {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
            drop(place);
        });
    }
}
