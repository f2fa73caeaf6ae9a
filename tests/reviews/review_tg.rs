//! Review TG: the reverse proxy's resource bounds against a hostile client ("Bounded
//! everywhere": one client's latency is bounded by the origin's, never by another
//! client's pace). Idle and half-open connections, slowloris on heads, HTTP/2 floods,
//! rapid resets and shut windows, and coalesced waiters were tried by earlier reviews (H,
//! N, LL, QB, RZ, SN, SS). Here:
//!
//! - the origin's places (`--upstream-max-connections`) held at a pace the client
//!   chooses: request bodies that trickle in (HTTP/1.1, and many HTTP/2 streams of one
//!   connection) and responses read a few hundred bytes a second, so that every other
//!   client's miss waited and got 503 (fixed: taken back while requests wait), and what
//!   must keep its place (a slow origin, an honest upload);
//! - HTTP/1.1 pipelining never read (held: one answer at a time, the connection closed);
//! - "MadeYouReset" (CVE-2025-8671), streams the proxy itself resets (held: their origin
//!   requests end with them).
//!
//! Each test runs the proxy binary over the in-process memory backend (no memcached),
//! on loopback, and ends by itself within seconds.

#![cfg(feature = "proxy")]

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Incoming;
use support::h2_client;
use support::h2_frames::{DATA, END_HEADERS, HEADERS, PREFACE, SETTINGS, frame, literal_block};
use support::proxy::start_proxy;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// An origin that reads a request body whole before it answers (`took N`), and answers
/// anything else with a page nobody may store, so that every GET is a miss that needs a
/// place at the origin; `/slow` after 2.5 s; `/big-page`, 512 KiB stored for ten minutes;
/// `/download`, 256 MiB not stored.
async fn start_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        let path = request.uri().path().to_string();
        if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        if path == "/big-page" {
            return Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(Either::Left(Full::new(Bytes::from(vec![b'p'; 512 << 10]))))
                    .unwrap(),
            );
        }
        if path == "/download" {
            // 256 MiB, more than any buffer on the way holds.
            let chunk = Bytes::from(vec![b'd'; 1 << 20]);
            let frames = futures_util::stream::iter(
                (0..256).map(move |_| Ok::<_, Infallible>(hyper::body::Frame::data(chunk.clone()))),
            );
            return Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "no-store")
                    .body(Either::Right(StreamBody::new(frames)))
                    .unwrap(),
            );
        }
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let text = if body.is_empty() {
            format!("page {path}")
        } else {
            format!("took {}", body.len())
        };
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "no-store")
                .body(Either::Left(Full::new(Bytes::from(text))))
                .unwrap(),
        )
    });
    (addr, serving)
}

/// Writes `bytes` (a byte of each body) every `every` until `until`; ends quietly once
/// the proxy closed the connection.
async fn trickle<W>(mut write: W, bytes: Vec<u8>, every: Duration, until: Duration)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + until;
    while tokio::time::Instant::now() < deadline {
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Slowloris on request bodies. Each upload below takes a place at the origin when its
/// head arrives and keeps it until the origin answered; the proxy cut one off only when
/// its client paused for `--upstream-timeout` (60 s: 408), so a client that sends a
/// byte a second (a few bytes a second for all of them) kept every place for as long as
/// it liked, and every other client's miss waited `--upstream-queue-timeout` for a place
/// and got 503. Bounded by the origin's pace, a miss must not wait on how slowly another
/// client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_uploads_cannot_hold_every_place_at_the_origin() {
    let (origin, _serving) = start_origin().await;
    let proxy = support::origin_places::two_places(origin);
    let mut uploads = Vec::new();
    for _ in 0..2 {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100000\r\n\r\nx",
            )
            .await
            .unwrap();
        uploads.push(tokio::spawn(trickle(
            client,
            b"x".to_vec(),
            Duration::from_millis(500),
            Duration::from_secs(12),
        )));
    }
    // Both uploads hold their places by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = support::origin_places::victim(&proxy).await;
    for upload in uploads {
        upload.abort();
    }
    assert_eq!(
        status,
        Some(200),
        "a miss waited for places held by uploads trickling at a byte per half second"
    );
}

/// Slow reading: each client below takes its download (256 MiB the origin sends as fast
/// as it is taken) at 640 bytes a second, over a small receive buffer: more than the
/// 1 KiB per `--client-header-timeout` (10 s here) under which a client counts as
/// stalled, and far too little to deserve the origin connection it keeps busy. Each held its place
/// for as long as it liked, and every other client's miss got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cannot_hold_every_place_at_the_origin() {
    let (origin, _serving) = start_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "2",
            "--upstream-queue-timeout",
            "4s",
            "--client-header-timeout",
            "10s",
        ],
    );
    let mut readers = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket.connect(proxy.addr).await.unwrap();
        client
            .write_all(b"GET /download HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await
            .unwrap();
        readers.push(tokio::spawn(async move {
            let mut buffer = [0; 256];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while tokio::time::Instant::now() < deadline {
                match tokio::io::AsyncReadExt::read(&mut client, &mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(400)).await,
                }
            }
        }));
    }
    // Past the buffers on the way, and one stall period: both still held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = support::origin_places::victim(&proxy).await;
    for reader in readers {
        reader.abort();
    }
    assert_eq!(
        status,
        Some(200),
        "a miss waited for places held by clients reading 640 bytes a second"
    );
}

/// The same over HTTP/2, from one connection: each stream's upload holds a place, and
/// the connection as a whole moves a few bytes a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_of_trickling_uploads_cannot_hold_every_place_at_the_origin() {
    let (origin, _serving) = start_origin().await;
    let proxy = support::origin_places::two_places(origin);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
    for stream in [1u32, 3] {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"shop.example"),
            (b":path", b"/upload"),
            (b"content-length", b"100000"),
        ];
        bytes.extend_from_slice(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &literal_block(&fields),
        ));
        bytes.extend_from_slice(&frame(DATA, 0, stream, b"x"));
    }
    client.write_all(&bytes).await.unwrap();
    let (mut read, write) = client.into_split();
    // What the proxy says (its SETTINGS, their acknowledgement) is read and dropped.
    let reading = tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut read, &mut sink).await;
    });
    let mut each = frame(DATA, 0, 1, b"x");
    each.extend_from_slice(&frame(DATA, 0, 3, b"x"));
    let uploads = tokio::spawn(trickle(
        write,
        each,
        Duration::from_millis(500),
        Duration::from_secs(12),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = support::origin_places::victim(&proxy).await;
    uploads.abort();
    reading.abort();
    assert_eq!(
        status,
        Some(200),
        "a miss waited for places held by one HTTP/2 connection's trickling uploads"
    );
}

/// What the places are not taken back from: requests that wait for their origin (a slow
/// page), and uploads whose clients send at an honest pace, while another request waits
/// for a place. Each gets its whole answer; the waiting request gets its place when one
/// of them ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_held_for_a_slow_origin_or_an_honest_upload_are_kept() {
    let (origin, _serving) = start_origin().await;
    let proxy = support::origin_places::two_places(origin);
    let slow = tokio::task::spawn_blocking({
        let addr = proxy.addr;
        move || support::proxy::raw_request(addr, "GET /slow HTTP/1.1\r\nHost: shop.example\r\n")
    });
    // 64 KiB every 200 ms: 320 KiB a second, 1 MiB in all.
    let size = 1 << 20;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let upload = tokio::spawn(async move {
        for _ in 0..size / (64 << 10) {
            client.write_all(&[b'x'; 64 << 10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer),
        )
        .await
        .expect("the upload's answer within 5 s")
        .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = support::origin_places::victim(&proxy).await;
    let slow = slow.await.unwrap();
    let upload = upload.await.unwrap();
    assert_eq!(
        (status, slow.0, upload.ends_with(&format!("took {size}"))),
        (Some(200), 200, true),
        "slow page: {slow:?}; upload answered {upload:?}"
    );
}

/// "MadeYouReset" (CVE-2025-8671), rapid reset's sequel: the client does not reset its
/// streams itself (which h2 counts), it makes the proxy reset them, here by a
/// WINDOW_UPDATE on each stream that overflows its window (a stream error,
/// FLOW_CONTROL_ERROR: RFC 9113 §6.9.1) sent once its request reached the origin. (A
/// WINDOW_UPDATE of 0, the other way in, is a connection error in h2: every stream ends.) A stream reset so no longer counts against the 128
/// streams of its connection: if the work it started went on, each connection could keep
/// any number of origin requests running. Requests whose streams were reset must end at
/// the origin too, and a bystander's miss must be answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_proxy_resets_for_a_window_overflow_end_their_origin_requests() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let _serving = support::origin::serve_http1(listener, {
        let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
        move |request: Request<Incoming>| {
            let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
            async move {
                // Counted while the proxy keeps the request: a request it drops drops
                // this future with its connection.
                struct Counted(Arc<AtomicUsize>);
                impl Drop for Counted {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _counted = Counted(Arc::clone(&in_flight));
                if request.uri().path().starts_with("/held/") {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "no-store")
                        .body(Full::new(Bytes::from_static(b"page")))
                        .unwrap(),
                )
            }
        }
    });
    let proxy = start_proxy(origin, &[]);
    assert_eq!(support::origin_places::victim(&proxy).await, Some(200));

    // 1000 in all: h2 closes a connection after 1024 streams it had to reset.
    const ROUNDS: u32 = 10;
    const PER_ROUND: u32 = 100;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(PREFACE).await.unwrap();
    client.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let reading = tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut read, &mut sink).await;
    });
    let mut next = 1u32;
    let mut sent = 0;
    for round in 0..ROUNDS {
        let first = next;
        let mut heads = Vec::new();
        for i in 0..PER_ROUND {
            let path = format!("/held/{round}-{i}");
            let fields: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"shop.example"),
                (b":path", path.as_bytes()),
            ];
            heads.extend_from_slice(&frame(
                HEADERS,
                END_HEADERS | 0x1,
                next,
                &literal_block(&fields),
            ));
            next += 2;
        }
        if write.write_all(&heads).await.is_err() {
            break;
        }
        // The requests on their way to the origin, then each stream made to be reset.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut updates = Vec::new();
        for stream in (first..next).step_by(2) {
            updates.extend_from_slice(&frame(0x8, 0, stream, &0x7fff_ffffu32.to_be_bytes()));
        }
        if write.write_all(&updates).await.is_err() {
            break;
        }
        sent += PER_ROUND;
    }
    let status = support::origin_places::victim(&proxy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (most, left) = (
        most.load(Ordering::SeqCst),
        in_flight.load(Ordering::SeqCst),
    );
    reading.abort();
    eprintln!(
        "{sent} streams reset by the proxy; at most {most} at the origin at once, {left} left"
    );
    assert_eq!(status, Some(200), "a bystander's miss during the attack");
    assert!(
        sent >= 1000 && most <= 2 * PER_ROUND as usize + 1 && left <= 1,
        "{sent} streams reset by the proxy kept {most} origin requests at once ({left} left after)"
    );
}

/// The proxy's resident memory in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// HTTP/1.1 pipelining: 20 000 requests for a stored 512 KiB page (10 GiB of answers)
/// written at once, none of the answers read. hyper answers one request at a time and
/// reads no further while an answer waits to be written, so the proxy holds about one
/// answer, the socket's buffers and a 64 KiB read buffer, never the queue of answers; and
/// the connection, which takes nothing, is closed as stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_never_read_hold_one_answer_and_are_closed() {
    let (origin, _serving) = start_origin().await;
    let proxy = start_proxy(origin, &["--client-header-timeout", "2s"]);
    let pid = proxy.child.id();
    let page = "GET /big-page HTTP/1.1\r\nHost: shop.example\r\n";
    assert_eq!(support::proxy::raw(&proxy, page).await.0, 200);
    support::proxy::until_cached(&proxy, page).await;
    let before = rss_kib(pid);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let requests = "GET /big-page HTTP/1.1\r\nHost: shop.example\r\n\r\n".repeat(20_000);
    // The proxy reads no further than it answers: most of this waits in the kernel.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.write_all(requests.as_bytes()),
    )
    .await;
    let mut peak = rss_kib(pid);
    // Two stall periods and the watch's tick, reading nothing.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_kib(pid));
    }
    // Read only now: a connection still open answers on (gigabytes: no end within 3 s).
    let started = tokio::time::Instant::now();
    let mut sink = tokio::io::sink();
    let closed = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::copy(&mut client, &mut sink),
    )
    .await
    .is_ok();
    let grown = peak.saturating_sub(before);
    eprintln!(
        "proxy grew {grown} KiB; closed {closed}, read for {:?}",
        started.elapsed()
    );
    assert!(
        grown < 32 * 1024,
        "pipelined requests grew the proxy by {grown} KiB"
    );
    assert!(
        closed,
        "a connection that read nothing of its answers was kept"
    );
}

/// One HTTP/2 connection as a browser's: eight requests waiting for a slow page, and a
/// download it takes at 3 KiB a second, while another client waits for a place. Only the
/// download waits for the client; the eight ask nothing of it, and must not make the
/// pace expected of the connection eight times as high (closed, its eight requests
/// would fail with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_their_origin_ask_no_pace_of_their_connection() {
    let (origin, _serving) = start_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "9",
            "--upstream-queue-timeout",
            "4s",
        ],
    );
    let (client, driving) = h2_client::connect(proxy.addr, 4096).await;
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };
    let mut slow = Vec::new();
    // Eight URLs: the same one would be one request at the origin, the others waiting
    // for its answer in the cache.
    for n in 0..8 {
        let (response, _) = h2_client::send(&client, get(&format!("/slow?n={n}")), true).await;
        slow.push(tokio::spawn(h2_client::read_all(response)));
    }
    let (response, _) = h2_client::send(&client, get("/download"), true).await;
    let download = tokio::spawn(async move {
        let mut body = response.await.ok()?.into_body();
        // 1 KiB every third of a second: 3 KiB a second.
        let every = Duration::from_millis(333);
        h2_client::read_paced(&mut body, 1024, every, Duration::from_secs(5))
            .await
            .ok()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = support::origin_places::victim(&proxy).await;
    let mut answers = Vec::new();
    for slow in slow {
        answers.push(slow.await.unwrap());
    }
    let taken = download.await.unwrap();
    driving.abort();
    assert_eq!(status, Some(200));
    assert!(
        answers
            .iter()
            .all(|answer| answer.as_deref() == Some("page /slow")),
        "{answers:?}"
    );
    assert!(taken.is_some_and(|taken| taken > 8 << 10), "{taken:?}");
}
