//! Review K: what an operator relies on, attacked or stressed: the access log, the
//! counters behind `--metrics`, the validation of flags, graceful shutdown, and the
//! memcache utility's hostile inputs.

mod support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use support::Watch;
use support::proxy::{exit_of, exit_within, proxy_binary, spawn_listening, startup_command};
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

/// An origin on a thread of its own: every request gets `body` (fresh for a minute), then
/// the connection closes. Bounded: it serves `connections` connections at most.
fn start_origin(body: &'static str, connections: usize) -> SocketAddr {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    support::origin::canned(answer.into_bytes(), connections)
}

/// A duration flag large enough to overflow a clock reading (`Instant + Duration` panics)
/// is refused at startup with a clear error, exit status 2, like any other bad value.
/// Before, `--shutdown-grace 18446744073709551615` started, and the proxy panicked (exit
/// 101) on SIGTERM; as large a `--client-header-timeout` panicked on every connection.
#[test]
fn durations_that_would_overflow_the_clock_are_refused_at_startup() {
    const HUGE: &str = "18446744073709551615";
    let near = format!("1M,{HUGE}");
    for (flag, value) in [
        ("--shutdown-grace", HUGE),
        ("--client-header-timeout", HUGE),
        ("--cache-timeout", HUGE),
        ("--upstream-timeout", HUGE),
        ("--connect-timeout", HUGE),
        ("--near-cache", near.as_str()),
        ("--shutdown-grace", "600000000000000000s"),
    ] {
        let (status, stderr) =
            exit_of(&mut startup_command(&[flag, value]), Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{flag} {value}: accepted"));
        assert_eq!(status.code(), Some(2), "{flag} {value}: {status}\n{stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("at most"),
            "{flag} {value}: {stderr}"
        );
    }
}

/// The access log goes to stdout; a log collector that stops reading (a full pipe) must
/// not stop the proxy: requests are still answered, and SIGTERM still ends the process
/// within `--shutdown-grace`. Before, each request's line was written to stdout by the
/// thread serving it, which blocked in `write` once the pipe was full: after a few dozen
/// requests the proxy answered nothing, and ignored SIGTERM until the pipe was read.
#[cfg(unix)]
#[test]
fn a_stalled_access_log_reader_stops_neither_requests_nor_shutdown() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    const REQUESTS: usize = 200;
    let origin = start_origin("stalled log", REQUESTS);
    // stdout is a pipe that this test never reads: 64 KiB and it is full.
    let (mut child, addr) = spawn_listening(|addr| {
        let mut command = Command::new(proxy_binary());
        command
            .args(["--upstream", &format!("http://{origin}")])
            .args(["--listen", &addr.to_string(), "--threads", "1"])
            .args(["--shutdown-grace", "2s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command
    });
    // Each line carries a 2 KiB User-Agent: 200 lines are 400 KiB, six pipes' worth.
    let agent = "a".repeat(2000);
    for n in 0..REQUESTS {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        write!(
            stream,
            "GET /page/{n} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        let read = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        assert!(
            read.is_ok() && text.starts_with("HTTP/1.1 200"),
            "request {n} not answered while nobody reads the access log: {read:?} {text:?}"
        );
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let exit = exit_within(&mut child, Duration::from_secs(6));
    let exit = exit.expect("did not exit within --shutdown-grace (2 s) and a margin");
    assert!(exit.success(), "{exit}");
}

/// The same for stderr, where tracing's events go: an origin that refuses connections
/// makes every request log a warning, and with nobody reading stderr the request threads
/// blocked in `write` once the pipe was full (the events are now queued to a writer
/// thread as the access log's lines are).
#[cfg(unix)]
#[test]
fn a_stalled_stderr_reader_stops_neither_requests_nor_shutdown() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    // Each 502 logs a warning of about 150 bytes: 1,500 of them are 3 pipes' worth.
    const REQUESTS: usize = 1_500;
    let closed = format!("127.0.0.1:{}", support::free_port());
    let (mut child, addr) = spawn_listening(|addr| {
        let mut command = Command::new(proxy_binary());
        command
            .args(["--upstream", &format!("http://{closed}")])
            .args(["--listen", &addr.to_string(), "--threads", "1"])
            .args(["--shutdown-grace", "2s", "--access-log", "off"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    });
    for n in 0..REQUESTS {
        // 5 s at most each: a blocked proxy fails here.
        let (status, _) = support::proxy::raw_request(
            addr,
            &format!("GET /page/{n} HTTP/1.1\r\nHost: example.com\r\n"),
        );
        assert_eq!(status, 502, "request {n}");
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let exit = exit_within(&mut child, Duration::from_secs(6));
    let exit = exit.expect("did not exit within --shutdown-grace (2 s) and a margin");
    assert!(exit.success(), "{exit}");
}

/// `tower_memcache_requests_total{outcome}` (and the snapshot's hits and misses) count
/// client requests, each once. A request whose stored response was revalidated was
/// counted twice (`revalidate` and `hit` for a 304, `revalidate` and `stale` for a
/// stale-if-error answer); a background refresh (stale-while-revalidate) added a
/// `revalidate`, and a `hit` when the origin said 304, to the request it ran for; a range
/// miss's background fetch of the whole representation added a second `miss`. A
/// dashboard's hit ratio, and its request rate, were wrong by those amounts.
#[tokio::test]
async fn each_request_is_counted_once_whatever_the_layer_does_in_the_background() {
    #[cfg(feature = "metrics")]
    let recorder = metrics_recorder();
    // The origin: `/revalidated` is stored stale at once and answers its revalidations
    // 304; `/swr` may be served stale for a minute while it is refreshed; `/failing` may
    // stand in stale for a minute when the origin fails, which it does after its first
    // answer; `/ranged` is a 10-byte body, ranges answered 206.
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let path = request.uri().path().to_string();
            let conditional = request.headers().contains_key(http::header::IF_NONE_MATCH);
            let ranged = request.headers().contains_key(http::header::RANGE);
            async move {
                let builder = Response::builder().header("etag", "\"v1\"");
                let response = match path.as_str() {
                    "/revalidated" | "/swr" if conditional => builder
                        .status(StatusCode::NOT_MODIFIED)
                        .body(Full::default()),
                    "/revalidated" => builder
                        .header("cache-control", "max-age=0")
                        .body(Full::from("revalidated")),
                    "/swr" => builder
                        .header("cache-control", "max-age=1, stale-while-revalidate=60")
                        .body(Full::from("swr")),
                    "/failing" if call > 0 && conditional => builder
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Full::default()),
                    "/failing" => builder
                        .header("cache-control", "max-age=0, stale-if-error=60")
                        .body(Full::from("failing")),
                    _ if ranged => builder
                        .status(StatusCode::PARTIAL_CONTENT)
                        .header("content-range", "bytes 0-1/10")
                        .header("cache-control", "max-age=60")
                        .body(Full::from("01")),
                    _ => builder
                        .header("cache-control", "max-age=60")
                        .body(Full::from("0123456789")),
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        })
    };
    let layer = tower_memcache::MemcacheLayer::new(MemoryBackend::new())
        .namespace("review-k-counts")
        .mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let get = async |path: &str, headers: &[(&str, &str)]| {
        let url = format!("http://example.com{path}");
        let answer = support::send(&service, Method::GET, &url, headers).await;
        watch.settled().await;
        answer.cache_status().to_string()
    };
    let mut requests = 0;
    let mut count = async |path: &str, headers: &[(&str, &str)]| {
        requests += 1;
        get(path, headers).await
    };

    // Stored, then revalidated by a 304.
    count("/revalidated", &[]).await;
    let status = count("/revalidated", &[]).await;
    assert!(status.contains("fwd-status=304"), "{status}");
    // Stored; once stale, served stale and refreshed in the background (a 304).
    count("/swr", &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = count("/swr", &[]).await;
    assert!(status.contains("hit; ttl=-"), "{status}");
    // Stored; then the origin fails its revalidation and the stale entry stands in.
    count("/failing", &[]).await;
    let status = count("/failing", &[]).await;
    assert!(status.contains("stale-if-error"), "{status}");
    // A range miss: the 206 passes, the whole is fetched in the background and stored.
    let status = count("/ranged", &[("range", "bytes=0-1")]).await;
    assert!(status.contains("uri-miss"), "{status}");
    let status = count("/ranged", &[]).await;
    assert!(status.ends_with("hit"), "{status}");

    let snapshot = watch.snapshot();
    // Misses: the first request for each URL, no more.
    assert_eq!(snapshot.misses, 4, "{snapshot:?}");
    // Hits: the stale `/swr`, the stale-if-error `/failing`, the whole `/ranged`, and the
    // 304-refreshed `/revalidated`, all answered from the cache; a background refresh
    // answers nobody.
    assert_eq!(snapshot.hits, 4, "{snapshot:?}");
    // Conditional requests sent: all three, the background one included.
    assert_eq!(snapshot.revalidations, 3, "{snapshot:?}");

    #[cfg(feature = "metrics")]
    {
        let text = recorder.render();
        let outcomes: Vec<(String, f64)> = text
            .lines()
            .filter(|line| {
                line.starts_with("tower_memcache_requests_total{")
                    && line.contains("namespace=\"review-k-counts\"")
            })
            .filter_map(|line| {
                let (labels, value) = line.rsplit_once(' ')?;
                Some((labels.to_string(), value.parse().ok()?))
            })
            .collect();
        let total: f64 = outcomes.iter().map(|(_, value)| value).sum();
        assert_eq!(total, f64::from(requests), "{outcomes:?}");
    }
}

/// The process's Prometheus recorder, installed before any layer counts.
#[cfg(feature = "metrics")]
fn metrics_recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

/// `--memcache` refuses port 0 whatever the host's spelling: `[::1]:0` was taken (only
/// the unbracketed form was checked), so the proxy started with a server it could never
/// reach, every lookup a silent miss.
#[cfg(feature = "tcp")]
#[test]
fn a_memcached_address_with_port_0_is_refused_in_every_spelling() {
    use tower_memcache::backend::TcpBackend;
    for list in [
        "127.0.0.1:0",
        "[::1]:0",
        "localhost:0",
        "[]:11211",
        "[::1] :11211",
    ] {
        assert!(
            TcpBackend::builder().server_list(list).build().is_err(),
            "{list} accepted"
        );
    }
    assert!(TcpBackend::builder().server_list("[::1]").build().is_ok());
}

/// RFC 9111 §4.2.4 / RFC 5861 §3: a response without `stale-while-revalidate` is never
/// served stale while it is revalidated in the background. At the millisecond where an
/// entry's age equalled its lifetime (a `max-age=0` response, asked for again as it was
/// stored: a burst of requests for an always-revalidated page) its staleness, zero, was
/// "within" the absent window of zero, and the stale response went out as
/// `hit; ttl=-0` without the origin being asked.
#[tokio::test]
async fn rfc5861_3_no_window_no_stale_while_revalidate_even_at_age_equal_lifetime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let conditional = request.headers().contains_key(http::header::IF_NONE_MATCH);
            async move {
                let builder = Response::builder()
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=0");
                let response = if conditional {
                    builder
                        .status(StatusCode::NOT_MODIFIED)
                        .body(Full::default())
                } else {
                    builder.body(Full::<Bytes>::from("always revalidated"))
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        })
    };
    let layer = tower_memcache::MemcacheLayer::new(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    for n in 0..50 {
        let url = format!("http://example.com/always/{n}");
        support::send(&service, Method::GET, &url, &[]).await;
        watch.settled().await;
        let answer = support::send(&service, Method::GET, &url, &[]).await;
        let status = answer.cache_status();
        assert!(
            !status.contains("; hit"),
            "{url}: a max-age=0 response served stale without revalidation: {status}"
        );
        watch.settled().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100);
}
