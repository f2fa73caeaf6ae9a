//! Review QG: a second look at the last merges (reviews QB, QC, QD): the origin bound's
//! places, the retry of a request an origin closed under, `Connection` and the cache's
//! fields, `Host` for target-named misses, the TCP reader's buffer swap.

use crate::support;

use support::origin::scripted_origin;
use support::proxy::{Proxy, start_proxy};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `GET path` (with `extra` fields) on a fresh connection: the status and the body.
async fn get(proxy: &Proxy, path: &str, extra: &str) -> (u16, String) {
    support::proxy::raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n{extra}"),
    )
    .await
}

/// A cacheable origin: every page 64 KiB, fresh for a second, stale-while-revalidate for a
/// minute, with an ETag it answers 304 for. Counts calls.
async fn page_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = {
        let calls = Arc::clone(&calls);
        move |request: Request<Incoming>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let path = request.uri().path().to_string();
                let builder = Response::builder()
                    .header("cache-control", "max-age=1, stale-while-revalidate=60")
                    .header("etag", "\"v1\"");
                let response = if request.headers().get("if-none-match").is_some() {
                    builder.status(304).body(Full::new(Bytes::new()))
                } else {
                    let mut body = path.into_bytes();
                    body.resize(64 * 1024, b'.');
                    builder.body(Full::new(Bytes::from(body)))
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        }
    };
    support::origin::serve_http1(listener, handle);
    (addr, calls)
}

/// Waits (5 s at most) until a fresh miss gets its place at the origin (200, not 503).
async fn place_free(proxy: &Proxy, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in 0.. {
        let (status, _) = get(proxy, &format!("/probe/{what}/{n}"), "").await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the place never came back after {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Misses that end every way a response can (a HEAD, a 304 passed on, a range miss and
/// its whole fill, a stale entry refreshed in the background, a client gone mid-body)
/// each give their place at the origin back: with one place and no queue, the next miss
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_miss_ends_gives_its_place_back() {
    let (origin, _calls) = page_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "1",
            "--upstream-queue-timeout",
            "0s",
        ],
    );
    place_free(&proxy, "start").await;
    let head = support::proxy::raw(&proxy, "HEAD /head HTTP/1.1\r\nHost: shop.example\r\n");
    assert_eq!(head.await.0, 200);
    place_free(&proxy, "head").await;
    assert_eq!(
        get(&proxy, "/cond", "If-None-Match: \"v1\"\r\n").await.0,
        304
    );
    place_free(&proxy, "304").await;
    // (The origin ignores `Range`: a 200, whose whole the layer stores.)
    assert_eq!(get(&proxy, "/range", "Range: bytes=0-9\r\n").await.0, 200);
    place_free(&proxy, "range").await;
    assert_eq!(get(&proxy, "/swr", "").await.0, 200);
    support::proxy::until_cached(&proxy, "GET /swr HTTP/1.1\r\nHost: shop.example\r\n").await;
    // Past its second of freshness: answered stale, refreshed in the background.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&proxy, "/swr", "").await.0, 200);
    place_free(&proxy, "swr").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /gone HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let mut some = [0u8; 100];
    let _ = stream.read(&mut some).await;
    drop(stream);
    place_free(&proxy, "gone").await;
}

// ---------------------------------------------------------------------------------------
// The retry of a request an origin closed a connection under.

/// A request whose fresh connection the origin closes without answering (a handler that
/// crashes its worker on it: a "query of death") is no keep-alive race: it was sent once
/// more, and each such request an attacker sent cost the origin two crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_connection_closed_unanswered_is_not_sent_again() {
    let (origin, seen) = scripted_origin(b"", true).await;
    let proxy = start_proxy(origin, &[]);
    let (status, _) = get(&proxy, "/crash", "").await;
    assert_eq!(status, 502);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [("/crash".to_string(), 0)], "sent again: {seen:?}");
}

/// A kept-alive connection the origin closed after it began its answer (part of a
/// response head) answered the request: no idle-timeout race, and the request was sent
/// once more all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_in_part_is_not_sent_again() {
    let (origin, seen) = scripted_origin(
        b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-",
        false,
    )
    .await;
    let proxy = start_proxy(origin, &[]);
    let mut statuses = Vec::new();
    for n in 0..6 {
        statuses.push(get(&proxy, &format!("/page/{n}"), "").await.0);
    }
    let seen = seen.lock().unwrap().clone();
    // Some requests went on a kept-alive connection (and were answered in part).
    let partial: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, _)| p)
        .collect();
    assert!(!partial.is_empty(), "no connection reused: {seen:?}");
    for n in 0..6 {
        let path = format!("/page/{n}");
        let times = seen.iter().filter(|(p, _)| *p == path).count();
        assert_eq!(times, 1, "{path} sent {times} times: {seen:?}");
        let expected = if partial.contains(&&path) { 502 } else { 200 };
        assert_eq!(statuses[n], expected, "{path}: {statuses:?} {seen:?}");
    }
}

// ---------------------------------------------------------------------------------------
// `Connection` and the fields the cache decides by.

/// An origin's `Connection: content-range` hid the `Content-Range` of a 200 that held part
/// of its representation: the layer refuses any response with `Content-Range` (its body
/// may not be the whole), but it never saw the field, and stored ten bytes of a hundred as
/// the whole page for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_hide_content_range_from_the_cache() {
    let answer = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Range: bytes 0-9/100\r\nConnection: content-range\r\nContent-Length: 10\r\n\r\n0123456789";
    let (origin, _seen) = scripted_origin(answer, true).await;
    let proxy = start_proxy(origin, &[]);
    let response =
        support::proxy::raw_text(&proxy, "GET /part HTTP/1.1\r\nHost: shop.example\r\n").await;
    let cache_status = response
        .lines()
        .find(|line| line.starts_with("cache-status:"))
        .unwrap_or_default();
    assert!(!cache_status.contains("stored"), "stored: {response:?}");
    assert!(
        response.contains("content-range: bytes 0-9/100"),
        "{response:?}"
    );
}

/// `--targeted-cache-control` names the fields the cache obeys before `Cache-Control`
/// (RFC 9213), any names: only those ending in `-cache-control` were kept from an origin's
/// `Connection`, so `Connection: edge-control` hid an `Edge-Control: no-store` and the page
/// was stored by its `Cache-Control`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_hide_a_configured_targeted_field() {
    let answer = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nEdge-Control: no-store\r\nConnection: edge-control\r\nContent-Length: 4\r\n\r\npage";
    let (origin, _seen) = scripted_origin(answer, true).await;
    let proxy = start_proxy(origin, &["--targeted-cache-control", "edge-control"]);
    let response =
        support::proxy::raw_text(&proxy, "GET /page HTTP/1.1\r\nHost: shop.example\r\n").await;
    let cache_status = response
        .lines()
        .find(|line| line.starts_with("cache-status:"))
        .unwrap_or_default();
    assert!(!cache_status.contains("stored"), "stored: {response:?}");
}

// ---------------------------------------------------------------------------------------
// The origin bound's warning.

/// A hyper origin: `/slow/*` is answered once the test adds a permit to `gate`, `/big` with
/// a head over the proxy's 64 KiB, anything else at once. Counts what it answers now.
async fn gated_origin() -> (SocketAddr, Arc<tokio::sync::Semaphore>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let handle = {
        let gate = Arc::clone(&gate);
        let in_flight = Arc::clone(&in_flight);
        move |request: Request<Incoming>| {
            let gate = Arc::clone(&gate);
            let in_flight = Arc::clone(&in_flight);
            async move {
                let path = request.uri().path().to_string();
                let mut response = Response::builder().header("cache-control", "no-store");
                if path.starts_with("/slow/") {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let permit = tokio::time::timeout(Duration::from_secs(10), gate.acquire());
                    if let Ok(Ok(permit)) = permit.await {
                        permit.forget();
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                } else if path == "/big" {
                    response = response.header("x-big", "b".repeat(300 * 1024));
                }
                Ok::<_, Infallible>(response.body(Full::new(Bytes::from(path))).unwrap())
            }
        }
    };
    support::origin::serve_http1(listener, handle);
    (addr, gate, in_flight)
}

/// Waits (5 s at most) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The warning that the origin bound is full is once per episode: an episode ends when a
/// request finds a place without waiting. A waiter that got its place after waiting
/// ended it too, although the bound was full throughout: under a sustained load (an
/// attacker's slow misses) every request that waited made the next one warn again, a
/// warning line per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_origin_bound_is_warned_of_once_while_it_stays_full() {
    let (origin, gate, in_flight) = gated_origin().await;
    let log = std::env::temp_dir().join(format!("review_qg_warn_{}.log", std::process::id()));
    let (child, addr) = support::proxy::spawn_listening(|addr| {
        let mut command = std::process::Command::new(support::proxy::proxy_binary());
        command
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://{origin}")])
            .args(["--threads", "1", "--access-log", "off"])
            .args(["--upstream-max-connections", "1"])
            .args(["--upstream-queue-timeout", "10s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        command
    });
    let proxy = Arc::new(Proxy { child, addr });
    let warnings = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("--upstream-max-connections reached")
            .count()
    };
    let ask = |path: &'static str| {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move { get(&proxy, path, "").await })
    };
    // `a` holds the place, `b` waits for it.
    let a = ask("/slow/a");
    until("a at the origin", || in_flight.load(Ordering::SeqCst) == 1).await;
    let b = ask("/slow/b");
    until("b warned of", || warnings() == 1).await;
    // `a` answered, `b` takes its place after waiting: the bound is as full as before.
    gate.add_permits(1);
    assert_eq!(a.await.unwrap().0, 200);
    until("b at the origin", || in_flight.load(Ordering::SeqCst) == 1).await;
    let c = ask("/slow/c");
    // Time for `c` to queue (and, before the fix, to warn); the outcome never depends on
    // it once fixed: `c` waits or finds `b`'s place, and warns of nothing either way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.add_permits(2);
    assert_eq!(b.await.unwrap().0, 200);
    assert_eq!(c.await.unwrap().0, 200);
    // A line logged after every warning `c` could have caused: the 502 of a head too large.
    let (status, _) = get(&proxy, "/big", "").await;
    assert_eq!(status, 502);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    until("the 502 logged", || {
        logged().contains("upstream request failed")
    })
    .await;
    let (count, text) = (warnings(), logged());
    let _ = std::fs::remove_file(&log);
    assert_eq!(count, 1, "{text}");
}

// ---------------------------------------------------------------------------------------
// The bound on an origin's response head.

/// An origin's response head is bounded at 64 KiB (larger: 502), but hyper checks its
/// read buffer's bound only between reads, and one read may take it well past: a head of
/// 100 KiB passed, and was stored in the entry every hit decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_past_64_kib_is_a_502_whatever_the_reads() {
    let filler = "x".repeat(100 * 1024);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nX-Filler: {filler}\r\nContent-Length: 2\r\n\r\nok"
    );
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    let (origin, _seen) = scripted_origin(answer, true).await;
    let proxy = start_proxy(origin, &[]);
    let (status, body) = get(&proxy, "/big", "").await;
    assert_eq!((status, body.as_str()), (502, "502 Bad Gateway\n"));
}
