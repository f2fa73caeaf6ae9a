//! Review SS: HTTP/2 clients of the reverse proxy: flow-control windows kept shut (bytes
//! held for clients that do not take them), and h2-specific request forms (`:authority`
//! against `host`, connection-specific fields, `:path` forms).

#![cfg(feature = "proxy")]

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use support::proxy::{Proxy, raw_request, start_proxy_with_metrics};
use tokio::net::TcpStream;

/// An origin answering every path with `size` bytes, cacheable for ten minutes.
async fn origin(size: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = Bytes::from(vec![b'p'; size]);
    let task = support::origin::serve_http1(listener, move |_request: Request<Incoming>| {
        let mut response = Response::new(Full::new(page.clone()));
        response
            .headers_mut()
            .insert("cache-control", "max-age=600".parse().unwrap());
        async move { Ok::<_, Infallible>(response) }
    });
    (addr, task)
}

type H2 = h2::client::SendRequest<Bytes>;

/// An h2 connection to the proxy whose streams get `window` bytes of receive window.
async fn h2_client(
    proxy: &Proxy,
    window: u32,
) -> (H2, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(stream)
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

/// One GET read to its end: status, `cache-status`, body length.
async fn h2_get(sender: &H2, proxy: &Proxy, path: &str) -> Result<(u16, String, usize), h2::Error> {
    let mut sender = sender.clone().ready().await?;
    let request = Request::get(format!("http://{}{path}", proxy.addr))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_default();
    let mut body = response.into_body();
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        len += chunk.len();
    }
    Ok((status, cache_status, len))
}

/// The value of an untagged gauge or counter in a `--metrics` scrape, if present.
fn scrape(metrics: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = raw_request(metrics, "GET /metrics HTTP/1.1\r\nHost: m\r\n");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok())?
        })
}

const UNSENT: &str = "tower_memcache_proxy_unsent_bytes";

/// Polls `scrape` until `until` holds of it, `within` at most; the last value read.
async fn scrape_until(
    metrics: SocketAddr,
    name: &str,
    within: Duration,
    until: impl Fn(f64) -> bool,
) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = tokio::task::spawn_blocking({
            let name = name.to_string();
            move || scrape(metrics, &name)
        })
        .await
        .unwrap();
        if value.is_some_and(&until) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pages are cached (served from memcached) before the attack.
async fn warm(proxy: &Proxy, pages: usize, size: usize) {
    let (sender, _driver) = h2_client(proxy, 65_535).await;
    for page in 0..pages {
        let path = format!("/p/{page}");
        let mut hit = false;
        for _ in 0..100 {
            let (status, cache_status, len) = h2_get(&sender, proxy, &path).await.unwrap();
            assert_eq!((status, len), (200, size), "{path}");
            if cache_status.contains("hit") {
                hit = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(hit, "{path} never became a hit");
    }
}

/// The bug review H measured and left: HTTP/2 clients that keep their receive windows
/// shut hold cached bodies in the proxy's memory, each memcached hit decoded into a
/// buffer of its own that is never polled, until the per-connection stall cut-off
/// (`--client-header-timeout`, 30 s by default); the only bound was connections × 128
/// streams × entry size. Two such connections grew the proxy by 222 MiB.
///
/// Here three connections each open 100 streams for cached 48 KiB pages and read
/// nothing: about 14 MiB, over the default budget that `--max-entry-size 64K` gives
/// (128 × 64 KiB = 8 MiB). The header timeout is two minutes, so only the budget can
/// close them within the 30 s waited: it must, and the bytes held must fall back under
/// the budget (read through the `--metrics` gauge, not RSS).
#[tokio::test]
async fn h2_clients_with_shut_windows_cannot_hold_more_than_the_unsent_budget() {
    shut_windows_against_the_budget("review_ss_unsent_budget", None).await;
}

/// The same with `Range: bytes=0-0`: each 206 is one byte, a slice of the hit's decoded
/// entry, so it pins the whole entry (48 KiB) while it waits. Counted as the one byte it
/// sends, 300 such streams held 14 MiB and passed for 300 bytes: the budget never
/// tripped. A hit now counts the body it was cut from.
#[tokio::test]
async fn one_byte_ranges_count_the_entry_they_pin() {
    shut_windows_against_the_budget("review_ss_unsent_ranges", Some("bytes=0-0")).await;
}

async fn shut_windows_against_the_budget(test: &str, range: Option<&str>) {
    const SIZE: usize = 48 * 1024;
    const PAGES: usize = 10;
    const STREAMS: usize = 100;
    const BUDGET: f64 = 128.0 * 64.0 * 1024.0;
    let memcached = memcached_or_skip!(test);
    let (origin, _origin) = origin(SIZE).await;
    let (proxy, metrics) = start_proxy_with_metrics(
        origin,
        &[
            "--memcache",
            &memcached.addr(),
            "--client-header-timeout",
            "120s",
            "--max-entry-size",
            "64K",
            // Every stream a hit even on a loaded machine: a lookup that timed out would
            // stream the origin's body instead, which fill_buffer bounds, not this budget.
            "--cache-timeout",
            "5s",
        ],
    );
    warm(&proxy, PAGES, SIZE).await;

    let mut drivers = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (sender, driver) = h2_client(&proxy, 0).await;
        let mut responses = Vec::new();
        for stream in 0..STREAMS {
            let Ok(mut ready) = sender.clone().ready().await else {
                break;
            };
            let mut request = Request::get(format!("http://{}/p/{}", proxy.addr, stream % PAGES));
            if let Some(range) = range {
                request = request.header("range", range);
            }
            let request = request.body(()).unwrap();
            match ready.send_request(request, true) {
                Ok((response, _)) => responses.push(response),
                Err(_) => break,
            }
        }
        drivers.push(driver);
        held.push((sender, responses));
    }
    // Every head answered (or its connection already closed): the bodies are in the
    // proxy, waiting for windows that never open. Kept: a body dropped unread resets
    // its stream.
    let mut bodies = Vec::new();
    for (_, responses) in &mut held {
        for response in responses.drain(..) {
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(20), response).await
            {
                bodies.push(response);
            }
        }
    }

    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if drivers.iter().any(|driver| driver.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{} h2 connections holding ~14 MiB of unsent bodies were all still open after 30 s \
         (unsent budget 8 MiB, header timeout 120 s)",
        drivers.len()
    );
    let unsent = scrape_until(metrics, UNSENT, Duration::from_secs(20), |v| v <= BUDGET).await;
    assert!(
        unsent.is_some_and(|v| v <= BUDGET),
        "bytes held for clients that do not read: {unsent:?}, budget {BUDGET}"
    );
    // The proxy still serves.
    let (sender, _driver) = h2_client(&proxy, 65_535).await;
    let (status, _, len) = h2_get(&sender, &proxy, "/p/1").await.unwrap();
    assert_eq!((status, len), (200, SIZE));
    drop((held, bodies));
}

/// The accounting of bytes handed to hyper returns to zero once responses were sent,
/// whichever way they went: h2 and HTTP/1.1, hits and misses, HEAD, a stream reset
/// before its body was read. A leak would close innocent connections in the end.
#[tokio::test]
async fn unsent_bytes_return_to_zero_after_every_kind_of_response() {
    const SIZE: usize = 40 * 1024;
    let memcached = memcached_or_skip!("review_ss_unsent_zero");
    let (origin, _origin) = origin(SIZE).await;
    let (proxy, metrics) = start_proxy_with_metrics(origin, &["--memcache", &memcached.addr()]);
    warm(&proxy, 3, SIZE).await;
    let (sender, _driver) = h2_client(&proxy, 65_535).await;
    for page in 0..6 {
        let (status, _, len) = h2_get(&sender, &proxy, &format!("/p/{page}"))
            .await
            .unwrap();
        assert_eq!((status, len), (200, SIZE));
    }
    // Streams reset before their bodies were read: hits and a miss.
    let (stalled, _stalled_driver) = h2_client(&proxy, 0).await;
    for path in ["/p/0", "/p/1", "/p/reset-miss"] {
        let mut ready = stalled.clone().ready().await.unwrap();
        let request = Request::get(format!("http://{}{path}", proxy.addr))
            .body(())
            .unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        // Dropped with its body unread: the stream is reset.
        drop(response.await.unwrap());
    }
    let host = proxy.addr;
    for (head, expected) in [
        (format!("GET /p/2 HTTP/1.1\r\nHost: {host}\r\n"), 200),
        (
            format!("GET /p/2 HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-0\r\n"),
            206,
        ),
        (
            format!("GET /p/2 HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-0,5-9\r\n"),
            206,
        ),
        (
            "GET /p/h1-miss HTTP/1.1\r\nHost: site.example\r\n".to_string(),
            200,
        ),
        (format!("HEAD /p/2 HTTP/1.1\r\nHost: {host}\r\n"), 200),
    ] {
        let (status, _) = tokio::task::spawn_blocking(move || raw_request(host, &head))
            .await
            .unwrap();
        assert_eq!(status, expected);
    }
    drop(stalled);
    let unsent = scrape_until(metrics, UNSENT, Duration::from_secs(20), |v| v == 0.0).await;
    assert_eq!(
        unsent,
        Some(0.0),
        "bytes still counted as unsent after every response"
    );
}

// ---------------------------------------------------------------------------------------
// Requests h2 spells differently: raw frames, for what the h2 crate will not send.

mod raw {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    pub(super) use super::support::h2_frames::{END_HEADERS, END_STREAM, HEADERS, frame};
    use super::support::h2_frames::{PREFACE, SETTINGS, hpack_literal};

    /// Literal fields without indexing, in the order given (pseudo-fields included).
    pub(super) fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            hpack_literal(&mut out, false, name.as_bytes(), value.as_bytes());
        }
        out
    }

    pub(super) async fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PREFACE).await.unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        stream
    }
}

/// What an origin saw of each request: `host`, then every field name (sorted).
async fn recording_origin() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let task = support::origin::serve_http1(listener, move |request: Request<Incoming>| {
        let host = request
            .headers()
            .get_all("host")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join("|");
        let mut names: Vec<_> = request.headers().keys().map(|n| n.to_string()).collect();
        names.sort();
        let line = format!("{} host={host} fields={}", request.uri(), names.join(","));
        record.lock().unwrap().push(line.clone());
        let mut response = Response::new(Full::new(Bytes::from(line)));
        response
            .headers_mut()
            .insert("cache-control", "public, max-age=60".parse().unwrap());
        async move { Ok::<_, Infallible>(response) }
    });
    (addr, seen, task)
}

/// h2 requests that a lenient server would take and an HTTP/1.1 origin would read
/// another way: several `host` fields (with and without `:authority`), connection-specific
/// fields (RFC 9113 §8.2.2: `connection`, `te` other than `trailers`, `transfer-encoding`,
/// `upgrade`, `keep-alive`, `proxy-connection`), a pseudo-field after a regular one,
/// extended CONNECT (`:protocol`), an empty `:path`. Each is refused (a reset, or a 4xx),
/// or reaches the origin with one `host`, the key's, and no connection-specific field.
#[tokio::test]
async fn h2_requests_with_odd_fields_reach_the_origin_as_keyed_or_not_at_all() {
    let (origin, seen, _origin) = recording_origin().await;
    let proxy = support::proxy::start_proxy(origin, &[]);
    let get = [(":method", "GET"), (":scheme", "http")];
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "two hosts beside :authority",
            vec![
                (":path", "/a"),
                (":authority", "a.example"),
                ("host", "a.example"),
                ("host", "b.example"),
            ],
        ),
        (
            "two hosts, no :authority",
            vec![
                (":path", "/b"),
                ("host", "a.example"),
                ("host", "b.example"),
            ],
        ),
        ("host only", vec![(":path", "/c"), ("host", "b.example")]),
        (
            "connection",
            vec![
                (":path", "/d"),
                (":authority", "a.example"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
            ],
        ),
        (
            "te gzip",
            vec![(":path", "/e"), (":authority", "a.example"), ("te", "gzip")],
        ),
        (
            "transfer-encoding",
            vec![
                (":path", "/f"),
                (":authority", "a.example"),
                ("transfer-encoding", "chunked"),
            ],
        ),
        (
            "upgrade",
            vec![
                (":path", "/g"),
                (":authority", "a.example"),
                ("upgrade", "websocket"),
            ],
        ),
        (
            "keep-alive",
            vec![
                (":path", "/h"),
                (":authority", "a.example"),
                ("keep-alive", "5"),
            ],
        ),
        (
            "proxy-connection",
            vec![
                (":path", "/i"),
                (":authority", "a.example"),
                ("proxy-connection", "keep-alive"),
            ],
        ),
        (
            "pseudo-field after a regular one",
            vec![
                (":path", "/j"),
                ("accept", "*/*"),
                (":authority", "b.example"),
            ],
        ),
        (
            "empty :path",
            vec![(":path", ""), (":authority", "a.example")],
        ),
        (
            "empty :authority beside host",
            vec![(":path", "/l"), (":authority", ""), ("host", "b.example")],
        ),
        (
            ":authority with user information",
            vec![(":path", "/m"), (":authority", "b.example@a.example")],
        ),
        (
            "host with a path",
            vec![(":path", "/n"), ("host", "a.example/x")],
        ),
        (
            "fragment",
            vec![(":path", "/k#frag"), (":authority", "a.example")],
        ),
    ];
    for (name, fields) in &cases {
        let before = seen.lock().unwrap().len();
        let mut all: Vec<(&str, &str)> = get.to_vec();
        all.extend_from_slice(fields);
        let mut stream = raw::connect(proxy.addr).await;
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(&raw::frame(
                raw::HEADERS,
                raw::END_STREAM | raw::END_HEADERS,
                1,
                &raw::block(&all),
            ))
            .await
            .unwrap();
        let status =
            support::h2_frames::status_of_stream_1(&mut stream, Duration::from_secs(5)).await;
        let reached: Vec<String> = seen.lock().unwrap()[before..].to_vec();
        eprintln!("{name}: status byte {status:?}, origin saw {reached:?}");
        for line in &reached {
            let host = line
                .split(" host=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or("");
            assert!(
                host == "a.example" || (*name == "host only" && host == "b.example"),
                "{name}: the origin was told host {host:?}: {line}"
            );
            for field in [
                "connection",
                "te",
                "transfer-encoding",
                "upgrade",
                "keep-alive",
                "proxy-connection",
                "x-secret",
            ] {
                assert!(
                    !line
                        .split("fields=")
                        .nth(1)
                        .unwrap_or("")
                        .split(',')
                        .any(|f| f == field),
                    "{name}: {field} reached the origin: {line}"
                );
            }
        }
    }
    // Extended CONNECT (RFC 8441): not enabled, so refused.
    let before = seen.lock().unwrap().len();
    let mut stream = raw::connect(proxy.addr).await;
    use tokio::io::AsyncWriteExt;
    let block = raw::block(&[
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/chat"),
        (":authority", "a.example"),
    ]);
    stream
        .write_all(&raw::frame(raw::HEADERS, raw::END_HEADERS, 1, &block))
        .await
        .unwrap();
    let status = support::h2_frames::status_of_stream_1(&mut stream, Duration::from_secs(5)).await;
    eprintln!("extended CONNECT: {status:?}");
    assert_ne!(status, Some(0x88), "extended CONNECT was answered 200");
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "extended CONNECT reached the origin"
    );
}
