//! Review TI: a second, adversarial look at review TG's change, which closes client
//! connections that hold places at the origin (`--upstream-max-connections`) and move
//! under 1 KiB a second through each that waits for their client, while requests wait
//! for a place. Pressure is cheap to make (a few misses to a slow URL), so what it
//! judges must be only the places that really wait for their client: never a cache hit
//! (which takes no place), never a place that waits for its origin.
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
use support::proxy::{raw, start_proxy};
use tokio::net::{TcpListener, TcpStream};

/// `/big-page`: 512 KiB stored for ten minutes; `/page`: 896 KiB stored for ten minutes,
/// sent at the origin's own pace (512 KiB at once, then 64 KiB a second: some 6 s in
/// all); `/download`: 64 MiB nobody may store; a POST: read whole, then a page nobody
/// may store; anything else: that page after 3 s.
async fn start_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        if request.uri().path() == "/big-page" {
            return Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(Full::new(Bytes::from(vec![b'p'; 512 << 10])).boxed())
                    .unwrap(),
            );
        }
        if request.uri().path() == "/page" {
            let chunk = Bytes::from(vec![b'f'; 64 << 10]);
            let frames = futures_util::stream::unfold(0, move |sent| {
                let chunk = chunk.clone();
                async move {
                    if sent == 14 {
                        return None;
                    }
                    // The first 512 KiB at once, then 64 KiB a second.
                    if sent >= 8 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Some((Ok::<_, Infallible>(Frame::data(chunk)), sent + 1))
                }
            });
            return Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(StreamBody::new(frames).boxed())
                    .unwrap(),
            );
        }
        if request.uri().path() == "/download" {
            // 64 MiB, more than any buffer on the way holds.
            let chunk = Bytes::from(vec![b'd'; 1 << 20]);
            let frames = futures_util::stream::iter(
                (0..64).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
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
        } else {
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

/// The attacker's pressure at no cost: two misses to the slow URL on connections of
/// their own, one that takes the other of two places and one that waits for a place.
fn attack(proxy: &support::proxy::Proxy) -> Vec<tokio::task::JoinHandle<(u16, String)>> {
    (0..2)
        .map(|n| {
            let addr = proxy.addr;
            std::thread::sleep(Duration::from_millis(100));
            tokio::task::spawn_blocking(move || {
                support::proxy::raw_request(
                    addr,
                    &format!("GET /slow?attacker={n} HTTP/1.1\r\nHost: shop.example\r\n"),
                )
            })
        })
        .collect()
}

/// An honest phone (HTTP/2) takes an uncached page of 896 KiB, a miss the cache fills,
/// at 512 bytes a second. Its place at the origin is held at the origin's pace, not the
/// phone's: the cache's fill reads the origin's body as it comes, whatever the client
/// takes, and gives the place back when the origin is done (some 6 s here). Yet under an
/// attacker's pressure the phone's connection was judged by its own pace (its response
/// had bytes ready for it) and closed within a second or two: the page cut off, and the
/// fill, which a client going away ends, never stored. Before review TG it was kept, and
/// closing it frees no place that the origin would not free at its own pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_of_a_fill_at_the_origins_pace_is_not_closed() {
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
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(4096)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let driving = tokio::spawn(connection);
    let (page, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(
            Request::get("http://shop.example/page").body(()).unwrap(),
            true,
        )
        .unwrap();
    let reading = tokio::spawn(async move {
        let mut body = page.await.map_err(|_| 0usize)?.into_body();
        let mut taken = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // 256 bytes every half second.
        while tokio::time::Instant::now() < deadline {
            let chunk = match body.data().await {
                Some(Ok(chunk)) => chunk,
                _ => return Err(taken),
            };
            let mut left = chunk.len();
            while left > 0 && tokio::time::Instant::now() < deadline {
                let len = left.min(256);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = body.flow_control().release_capacity(len);
                taken += len;
                left -= len;
            }
            let _ = body.flow_control().release_capacity(left);
        }
        // Past what the client's window had let in before: 16 KiB more, read at once.
        let more = async {
            let mut more = 0;
            while more < 16 << 10 {
                let chunk = body.data().await?.ok()?;
                let _ = body.flow_control().release_capacity(chunk.len());
                more += chunk.len();
            }
            Some(())
        };
        match tokio::time::timeout(Duration::from_secs(3), more).await {
            Ok(Some(())) => Ok(taken),
            _ => Err(taken),
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let attackers = attack(&proxy);
    let read = reading.await.unwrap();
    for attacker in attackers {
        let _ = attacker.await;
    }
    driving.abort();
    assert!(
        read.is_ok(),
        "the phone's connection was closed after {read:?} bytes"
    );
}

/// Held: an honest HTTP/2 client (a phone's browser) takes a large cached page slowly, 512
/// bytes a second, while on the same connection one of its misses waits for a slow
/// origin. An attacker makes pressure at no cost: two misses to the slow URL, one that
/// takes the other place and one that waits. The phone's miss holds its place for the
/// origin, and its hit holds no place at all: neither may count as a place that waits
/// for its client, and the connection is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hit_beside_a_miss_waiting_for_its_origin_is_not_closed() {
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
    // Stored: from now on a hit.
    let (status, _) = raw(&proxy, "GET /big-page HTTP/1.1\r\nHost: shop.example\r\n").await;
    assert_eq!(status, 200);

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(4096)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let driving = tokio::spawn(connection);
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };
    let (page, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(get("/big-page"), true)
        .unwrap();
    let page = tokio::spawn(async move {
        let mut body = page.await.ok()?.into_body();
        let mut taken = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let chunk = body.data().await?.ok()?;
            for start in (0..chunk.len()).step_by(256) {
                let len = (chunk.len() - start).min(256);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = body.flow_control().release_capacity(len);
                taken += len;
            }
        }
        Some(taken)
    });
    let (miss, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(get("/slow?phone"), true)
        .unwrap();
    let miss = tokio::spawn(async move {
        let mut body = miss.await.ok()?.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        Some(String::from_utf8_lossy(&text).into_owned())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attackers = attack(&proxy);
    let miss = miss.await.unwrap();
    let taken = page.await.unwrap();
    for attacker in attackers {
        let _ = attacker.await;
    }
    driving.abort();
    assert_eq!(miss.as_deref(), Some("slow page"), "page taken: {taken:?}");
    assert!(taken.is_some_and(|taken| taken >= 2048), "{taken:?}");
}

/// Held: the counts of places that wait for their client go back when a request ends
/// however it ends. An HTTP/2 client resets an upload that waits for its next bytes and
/// a download that waits for it to take more (each had a place, counted as waiting for
/// the client); then, on the same connection, a miss waits for a slow origin while an
/// attacker makes requests wait for a place. Had either count stayed, the miss's place
/// would have been judged at the client's pace and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_of_reset_streams_leave_no_count_behind() {
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
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(4096)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let driving = tokio::spawn(connection);
    let (upload, mut sending) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(
            Request::post("http://shop.example/upload")
                .header("content-length", "100000")
                .body(())
                .unwrap(),
            false,
        )
        .unwrap();
    sending.send_data(Bytes::from_static(b"x"), false).unwrap();
    let (download, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(
            Request::get("http://shop.example/download")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let mut download = download.await.unwrap().into_body();
    // Its window full, the download waits for the client.
    let first = download.data().await.unwrap().unwrap();
    assert!(!first.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    sending.send_reset(h2::Reason::CANCEL);
    drop(upload);
    drop(download);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (miss, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(
            Request::get("http://shop.example/slow?mine")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let miss = tokio::spawn(async move {
        let mut body = miss.await.ok()?.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        Some(String::from_utf8_lossy(&text).into_owned())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attackers = attack(&proxy);
    let miss = miss.await.unwrap();
    for attacker in attackers {
        let _ = attacker.await;
    }
    driving.abort();
    assert_eq!(miss.as_deref(), Some("slow page"));
}
