//! Review TM: an adversarial second look at reviews TG and TI's rule for places at the
//! origin (`--upstream-max-connections`) held at a client's pace: while requests wait
//! for a place, a connection that holds places and moves under 1 KiB a second through
//! each that waits for its client is closed and its places freed. Tried both ways: an
//! attacker who wants to keep places anyway (HTTP/2 windows shut from the start,
//! streams judged together, pipelining, uploads stopped after their heads, responses
//! never read), and one who wants an honest client closed (pressure made cheaply,
//! another client's place counted as its own).
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
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use support::h2_client;
use support::proxy::{Proxy, start_proxy};
use tokio::net::TcpListener;

/// The bytes of `/download`: more than any buffer on the way holds.
const DOWNLOAD: usize = 16 << 20;

/// `/download`: [`DOWNLOAD`] bytes nobody may store, sent as fast as they are taken; a
/// POST: read whole, then a page nobody may store; `/slow`: that page after 3 s; anything
/// else: that page at once.
async fn start_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        if request.uri().path() == "/download" {
            let chunk = Bytes::from(vec![b'd'; 1 << 20]);
            let frames = futures_util::stream::iter(
                (0..DOWNLOAD >> 20).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            return Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "no-store")
                    .body(StreamBody::new(frames).boxed())
                    .unwrap(),
            );
        }
        if request.method() == http::Method::POST {
            let _ = request.into_body().collect().await;
        } else if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from_static(b"slow page")).boxed())
                .unwrap(),
        )
    });
    (addr, serving)
}

/// Held: an HTTP/2 client that opens its streams with no window at all
/// (`SETTINGS_INITIAL_WINDOW_SIZE` 0, RFC 9113 §6.5.2) and asks for two downloads
/// nobody may store: each takes a place at the origin, and its response head comes
/// back. A place counts as waiting for its client only once its origin body handed over
/// a frame not asked past yet (`Place::downloads`); had hyper waited for window before
/// asking the body for its first frame (as it once reserved capacity first, hyper
/// #4003), neither body would ever be polled, the places would not count, and the
/// connection, moving nothing, would keep both until the 30 s stall check. hyper asks
/// for the frame first and holds it: the places count, and are taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_whose_windows_never_open_cannot_hold_every_place() {
    let (origin, _serving) = start_origin().await;
    let proxy = support::origin_places::two_places(origin);
    let (client, driving) = h2_client::connect(proxy.addr, 0).await;
    let mut heads = Vec::new();
    for n in 0..2 {
        let request = Request::get(format!("http://shop.example/download?n={n}"))
            .body(())
            .unwrap();
        let (response, _) = h2_client::send(&client, request, true).await;
        heads.push(response);
    }
    // Both heads came back: both places are held by bodies the client never lets out.
    for head in &mut heads {
        let status = tokio::time::timeout(Duration::from_secs(3), head)
            .await
            .expect("a head within 3 s")
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let status = support::origin_places::victim(&proxy).await;
    driving.abort();
    assert_eq!(
        status,
        Some(200),
        "a miss waited for places held by an HTTP/2 connection whose windows never opened"
    );
}

/// A client on a slow network that downloads `/download` over HTTP/1.1 through a small
/// receive buffer, 2 KiB every 125 ms (16 KiB a second) for `paced`, then the rest at
/// once: the whole response as it came (short if the proxy cut it off).
fn slow_download(proxy: &Proxy, paced: Duration) -> tokio::task::JoinHandle<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = proxy.addr;
    tokio::spawn(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let mut client = socket.connect(addr).await.unwrap();
        client
            .write_all(b"GET /download HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let mut buffer = vec![0; 2 << 10];
        let paced_until = tokio::time::Instant::now() + paced;
        while tokio::time::Instant::now() < paced_until {
            match client.read(&mut buffer).await {
                Ok(0) | Err(_) => return response,
                Ok(n) => response.extend_from_slice(&buffer[..n]),
            }
            tokio::time::sleep(Duration::from_millis(125)).await;
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut response)).await;
        response
    })
}

/// Whether `response` is the whole of `/download`.
fn whole(response: &[u8]) -> bool {
    response.len() > DOWNLOAD && response.ends_with(b"\r\n0\r\n\r\n")
}

/// An honest client on a slow network (16 KiB a second, sixteen times the pace asked of
/// a place) downloads a large file nobody may store over HTTP/1.1, while an attacker
/// makes requests wait for a place at no cost (two misses to a slow URL). The kernel's
/// send buffer grew to megabytes and, once full, let hyper write again only when a
/// third of it had left: the proxy saw the client take nothing for seconds on end, and
/// the first one-second probe closed the connection, cutting the download off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_slow_download_is_not_closed_under_pressure() {
    let (origin, _serving) = start_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "2",
            "--upstream-queue-timeout",
            "5s",
        ],
    );
    let reading = slow_download(&proxy, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attackers = support::origin_places::attack(&proxy);
    let response = reading.await.unwrap();
    for attacker in attackers {
        let _ = attacker.await;
    }
    assert!(
        whole(&response),
        "the download was cut off after {} bytes",
        response.len()
    );
}

/// The same lumps without any pressure, against the stall check (nginx's `send_timeout`:
/// under 1 KiB taken in a `--client-header-timeout`, 2 s here): the client taking 16 KiB
/// a second took nothing for longer than that, as far as the proxy could tell, and was
/// closed as one that stopped reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_slow_download_is_not_closed_as_stalled() {
    let (origin, _serving) = start_origin().await;
    let proxy = start_proxy(origin, &["--client-header-timeout", "2s"]);
    let response = slow_download(&proxy, Duration::from_secs(7)).await.unwrap();
    assert!(
        whole(&response),
        "the download was cut off after {} bytes",
        response.len()
    );
}
