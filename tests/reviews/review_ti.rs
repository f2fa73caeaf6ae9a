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
use support::h2_client;
use support::proxy::{raw, start_proxy};
use tokio::net::TcpListener;

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
    let (client, driving) = h2_client::connect(proxy.addr, 4096).await;
    let page = Request::get("http://shop.example/page").body(()).unwrap();
    let (page, _) = h2_client::send(&client, page, true).await;
    let reading = tokio::spawn(async move {
        let mut body = page.await.map_err(|_| 0usize)?.into_body();
        // 256 bytes every half second.
        let every = Duration::from_millis(500);
        let taken = h2_client::read_paced(&mut body, 256, every, Duration::from_secs(5)).await?;
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
    let attackers = support::origin_places::attack(&proxy);
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

    let (client, driving) = h2_client::connect(proxy.addr, 4096).await;
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };
    let (page, _) = h2_client::send(&client, get("/big-page"), true).await;
    let page = tokio::spawn(async move {
        let mut body = page.await.ok()?.into_body();
        let every = Duration::from_millis(500);
        h2_client::read_paced(&mut body, 256, every, Duration::from_secs(5))
            .await
            .ok()
    });
    let (miss, _) = h2_client::send(&client, get("/slow?phone"), true).await;
    let miss = tokio::spawn(h2_client::read_all(miss));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attackers = support::origin_places::attack(&proxy);
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
    let (client, driving) = h2_client::connect(proxy.addr, 4096).await;
    let upload = Request::post("http://shop.example/upload")
        .header("content-length", "100000")
        .body(())
        .unwrap();
    let (upload, mut sending) = h2_client::send(&client, upload, false).await;
    sending.send_data(Bytes::from_static(b"x"), false).unwrap();
    let download = Request::get("http://shop.example/download")
        .body(())
        .unwrap();
    let (download, _) = h2_client::send(&client, download, true).await;
    let mut download = download.await.unwrap().into_body();
    // Its window full, the download waits for the client.
    let first = download.data().await.unwrap().unwrap();
    assert!(!first.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    sending.send_reset(h2::Reason::CANCEL);
    drop(upload);
    drop(download);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let miss = Request::get("http://shop.example/slow?mine")
        .body(())
        .unwrap();
    let (miss, _) = h2_client::send(&client, miss, true).await;
    let miss = tokio::spawn(h2_client::read_all(miss));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attackers = support::origin_places::attack(&proxy);
    let miss = miss.await.unwrap();
    for attacker in attackers {
        let _ = attacker.await;
    }
    driving.abort();
    assert_eq!(miss.as_deref(), Some("slow page"));
}
