//! The `metrics` feature: what the layer and the TCP backend emit through the `metrics`
//! facade, read back in Prometheus' text format after known traffic, in process (a global
//! Prometheus recorder, each scenario under a namespace of its own) and from the reverse
//! proxy's `--metrics` endpoint.
#![cfg(feature = "metrics")]

mod support;

use support::Watch;
use support::proxy::{raw_request, start_proxy_with_metrics};

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, ServiceExt};
use tower_memcache::backend::Backend;

/// The one recorder of this test process, installed before any layer counts.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder")
    })
}

/// A namespace no other scenario of this process uses.
fn fresh_namespace(scenario: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{scenario}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn get<S>(service: &S, method: Method, path: &str) -> String
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_memcache::cache::ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let request = Request::builder()
        .method(method)
        .uri(format!("http://example.com{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    body.collect().await.unwrap();
    parts
        .headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A miss that is stored, a hit, a bypass (POST): each counted once under
/// `tower_memcache_requests_total{outcome}`, and the stores, bytes served and invalidations
/// as the layer's own counters say (RFC 9111 §3 stores, §4 serves, §4.4 invalidates).
async fn rfc9111_4_requests_are_counted_by_outcome<B: Backend>(backend: B) {
    let handle = recorder();
    let namespace = fresh_namespace("outcomes");
    let layer = support::layer(backend).namespace(namespace.clone());
    let watch = Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap(),
        )
    }));
    let first = get(&service, Method::GET, "/page").await;
    assert!(first.contains("fwd=uri-miss"), "{first}");
    watch.settled().await;
    let second = get(&service, Method::GET, "/page").await;
    assert!(second.starts_with("tower-memcache; hit"), "{second}");
    get(&service, Method::POST, "/page").await;
    watch.settled().await;

    let text = handle.render();
    let ns = namespace.as_str();
    let count = |name: &str, outcome: Option<&str>| {
        let mut labels = vec![("namespace", ns)];
        labels.extend(outcome.map(|o| ("outcome", o)));
        support::prometheus_sample(&text, name, &labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let requests = "tower_memcache_requests_total";
    assert_eq!(count(requests, Some("miss")), 1.0);
    assert_eq!(count(requests, Some("hit")), 1.0);
    assert_eq!(count(requests, Some("bypass")), 1.0);
    assert_eq!(count("tower_memcache_stores_total", None), 1.0);
    assert_eq!(count("tower_memcache_bytes_served_total", None), 5.0);
    // Registered with the first count even while still zero.
    assert_eq!(count(requests, Some("stale")), 0.0);
    assert_eq!(count("tower_memcache_store_failures_total", None), 0.0);
    assert_eq!(
        count("tower_memcache_mismatched_not_modified_total", None),
        0.0
    );
    let snapshot = watch.snapshot();
    assert_eq!(
        count("tower_memcache_invalidations_total", None),
        snapshot.invalidations as f64
    );
    assert_eq!(
        count("tower_memcache_backend_errors_total", None),
        snapshot.backend_errors as f64
    );
}

/// A 304 naming another representation than the stored one (RFC 9111 §4.3.4) is counted
/// for the operator, as `tower_memcache_mismatched_not_modified_total` and in the
/// snapshot: the origin answers the cache's `If-None-Match: "v1"` with `ETag: "v2"`.
async fn rfc9111_4_3_4_a_304_for_another_representation_is_counted<B: Backend>(backend: B) {
    let handle = recorder();
    let namespace = fresh_namespace("mismatched");
    let layer = support::layer(backend)
        .namespace(namespace.clone())
        .mode(tower_memcache::cache::CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let response = if req.headers().contains_key("if-none-match") {
            Response::builder()
                .status(304)
                .header("etag", "\"v2\"")
                .body(Full::new(Bytes::new()))
        } else {
            Response::builder()
                .header("cache-control", "max-age=1")
                .header("age", "5")
                .header("etag", "\"v1\"")
                .body(Full::new(Bytes::from_static(b"hello")))
        };
        Ok::<_, Infallible>(response.unwrap())
    }));
    get(&service, Method::GET, "/page").await;
    watch.settled().await;
    let revalidated = get(&service, Method::GET, "/page").await;
    assert!(revalidated.contains("fwd=stale"), "{revalidated}");
    watch.settled().await;
    let text = handle.render();
    let name = "tower_memcache_mismatched_not_modified_total";
    assert_eq!(
        support::prometheus_sample(&text, name, &[("namespace", namespace.as_str())]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(watch.snapshot().mismatched_not_modified, 1);
}

on_every_backend!("metrics"; rfc9111_4_requests_are_counted_by_outcome, rfc9111_4_3_4_a_304_for_another_representation_is_counted);

/// The TCP backend times each request per server and exports whether the server is in use:
/// 1 while it answers, 0 once it is marked down.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn backend_latency_and_health_per_server() {
    let handle = recorder();
    let server = memcached_or_skip!("metrics::backend_latency_and_health_per_server");
    let name = server.addr();
    let backend = tower_memcache::backend::TcpBackend::builder()
        .server(name.clone())
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(200))
        .failure_threshold(1)
        .probe_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..3 {
        backend.get("metrics-key").await.unwrap();
    }
    let labels = [("server", name.as_str())];
    let text = handle.render();
    let timed = support::prometheus_sample(
        &text,
        "tower_memcache_backend_request_duration_seconds_count",
        &labels,
    )
    .unwrap_or_else(|| panic!("no duration for {name} in\n{text}"));
    assert!(timed >= 3.0, "{timed}");
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_backend_server_up", &labels),
        Some(1.0)
    );

    drop(server);
    let _ = backend.get("metrics-key").await;
    assert!(backend.is_server_down(0));
    let text = handle.render();
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_backend_server_up", &labels),
        Some(0.0),
        "{text}"
    );
}

/// An origin on a thread of its own: every request gets a 5-byte body fresh for a minute.
/// Bounded: it serves at most 64 connections.
fn start_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\
                  Connection: close\r\n\r\nhello",
            );
        }
    });
    addr
}

/// The proxy's `--metrics` endpoint, scraped after known traffic: the counts match what
/// the clients saw in `Cache-Status`.
#[test]
fn reverse_proxy_serves_metrics_for_prometheus() {
    let origin = start_origin();
    let (proxy, metrics_addr) = start_proxy_with_metrics(origin, &["--namespace", "proxy"]);
    let request = "GET /page HTTP/1.1\r\nHost: example.com\r\n";
    let (mut hits, mut misses) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hits < 2 {
        assert!(Instant::now() < deadline, "no hits through the proxy");
        let (status, response) = raw_request(proxy.addr, request);
        assert_eq!(status, 200, "{response}");
        if response
            .to_ascii_lowercase()
            .contains("cache-status: tower-memcache; hit")
        {
            hits += 1;
        } else {
            misses += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (status, _) = raw_request(
        proxy.addr,
        "POST /page HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n",
    );
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(metrics_addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the metrics endpoint did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, text) = raw_request(metrics_addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
    assert_eq!(status, 200, "{text}");
    // The proxy's layer has the namespace `--namespace` gives it.
    let ns = ("namespace", "proxy");
    let requests = "tower_memcache_requests_total";
    let outcome = |o| support::prometheus_sample(&text, requests, &[ns, ("outcome", o)]);
    assert_eq!(outcome("hit"), Some(f64::from(hits)), "{text}");
    assert_eq!(outcome("miss"), Some(f64::from(misses)), "{text}");
    assert_eq!(outcome("bypass"), Some(1.0), "{text}");
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_stores_total", &[ns]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_bytes_served_total", &[ns]),
        Some(5.0 * f64::from(hits)),
        "{text}"
    );
}

/// `memcached_stat(addr, "evictions")`: one number from memcached's own `stats`.
fn memcached_stat(addr: &str, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"stats\r\n").unwrap();
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    while !text.ends_with("END\r\n") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "memcached closed during stats");
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("STAT {name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// What the proxy reads rather than counts: memcached's evictions, items and memory (a
/// server made to evict before the proxy starts), the near tier's size and hits, and the
/// backend latency as a Prometheus histogram with buckets.
#[test]
fn reverse_proxy_exports_memcached_and_near_tier_gauges() {
    let Some(server) = support::Memcached::start_with_args(
        "metrics::reverse_proxy_exports_memcached_and_near_tier_gauges",
        &["-m", "2"],
    ) else {
        return;
    };
    // 4 MiB of 100 KiB values into 2 MiB: memcached evicts.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let value = vec![b'v'; 100 * 1024];
    for i in 0..40 {
        stream
            .write_all(format!("set filler{i} 0 0 {}\r\n", value.len()).as_bytes())
            .unwrap();
        stream.write_all(&value).unwrap();
        stream.write_all(b"\r\n").unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"STORED\r\n");
    }
    let evictions = memcached_stat(&server.addr(), "evictions");
    assert!(evictions > 0, "memcached -m 2 evicted nothing");

    let origin = start_origin();
    let memcache = server.addr();
    let (proxy, metrics_addr) = start_proxy_with_metrics(
        origin,
        &[
            "--memcache",
            &memcache,
            "--near-cache",
            "1M,30s",
            "--namespace",
            "proxy",
        ],
    );
    let request = "GET /page HTTP/1.1\r\nHost: example.com\r\n";
    let mut near_hits = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while near_hits < 3 {
        assert!(Instant::now() < deadline, "no near hits through the proxy");
        let (status, response) = raw_request(proxy.addr, request);
        assert_eq!(status, 200, "{response}");
        if response.contains("; hit; detail=near") {
            near_hits += 1;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(metrics_addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the metrics endpoint did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, text) = raw_request(metrics_addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
    assert_eq!(status, 200, "{text}");
    let at = [("server", memcache.as_str())];
    // Read when the proxy started, after the filling and before its own traffic.
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_memcached_evictions_total", &at),
        Some(evictions as f64),
        "{text}"
    );
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_memcached_limit_bytes", &at),
        Some(f64::from(2u32 << 20)),
        "{text}"
    );
    assert!(
        support::prometheus_sample(&text, "tower_memcache_memcached_items", &at)
            .is_some_and(|n| n > 0.0)
    );
    let ns = ("namespace", "proxy");
    assert_eq!(
        support::prometheus_sample(&text, "tower_memcache_near_hits_total", &[ns]),
        Some(f64::from(near_hits)),
        "{text}"
    );
    assert!(
        support::prometheus_sample(
            &text,
            "tower_memcache_backend_request_duration_seconds_bucket",
            &[("server", memcache.as_str()), ("le", "0.1")]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
}
