//! Review SW: an adversarial second look at the proxy's origin connection (review SV's
//! `RequestWrites`, the response head watch of reviews SQ and SV) and at an unsafe
//! request's invalidation as counted background work (review SU).

#![cfg(feature = "proxy")]

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};

use support::origin::serve_each_connection;
use support::proxy::start_proxy;
use support::raw_http::{find, more};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Text an answer's chunk holds that reads as a 204 framing a body by its length.
const ECHOED: &str = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";

/// The data of every chunk of the upload: a request line (a capture, a batch of requests).
const LINE: &str = "GET / HTTP/1.1\r\n";

/// An origin that reads slowly through a small receive buffer (so that the proxy's writes
/// to it come back partial) and answers as it reads: a chunked answer, each of its chunks
/// [`ECHOED`], its size line, data and end written apart.
async fn slow_echo_origin() -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(16).unwrap();
    let _task = serve_each_connection(listener, |mut stream: TcpStream| async move {
        let mut buffer = Vec::new();
        while find(&buffer, b"\r\n\r\n").is_none() {
            if !more(&mut stream, &mut buffer).await {
                return;
            }
        }
        let head =
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut tail = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            let Ok(read) = stream.read(&mut chunk).await else {
                return;
            };
            if read == 0 {
                return;
            }
            tail.extend_from_slice(&chunk[..read]);
            let ended = find(&tail, b"\r\n0\r\n\r\n").is_some();
            let keep = tail.len().saturating_sub(8);
            tail.drain(..keep);
            for piece in [
                format!("{:x}\r\n", ECHOED.len()),
                ECHOED.to_owned(),
                "\r\n".into(),
            ] {
                if stream.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            if ended {
                let _ = stream.write_all(b"0\r\n\r\n").await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    addr
}

/// A chunked upload whose chunks each hold a request line, streamed to an origin that
/// answers as it reads: the answer reaches the client as the origin sent it. Where a
/// write to the origin ends is the kernel's: before the fix, one ended just after a
/// chunk's size line in about half the runs, and the answer's body was read as heads
/// (`request_writes`'s unit tests cut every write at every byte).
#[tokio::test]
async fn a_chunked_upload_of_request_lines_leaves_the_answer_body_alone() {
    let origin = slow_echo_origin().await;
    let proxy = start_proxy(origin, &[]);
    let client = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    let read = tokio::spawn(async move {
        let mut received = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(90), async {
            while find(&received, b"\r\n0\r\n\r\n").is_none() {
                if !more(&mut reader, &mut received).await {
                    return;
                }
            }
        })
        .await;
        received
    });
    writer
        .write_all(b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Chunks as small as they come: a write that ends anywhere ends after a size line
    // once in every 22 bytes. Sent for a while, or until the answer broke.
    let one = format!("{:x}\r\n{LINE}\r\n", LINE.len());
    let batch = one.repeat(1000);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until && !read.is_finished() {
        if writer.write_all(batch.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = writer.write_all(b"0\r\n\r\n").await;
    let received = read.await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{:?}",
        &text[..text.len().min(200)]
    );
    assert!(
        !text.contains("Connection: close"),
        "the answer's body was rewritten"
    );
    assert!(
        text.ends_with("\r\n0\r\n\r\n"),
        "the answer was cut: {:?}",
        &text[text.len().saturating_sub(300)..]
    );
}

/// The flags the layer stores its placeholders under (`entry::FLAG_PLACEHOLDER`).
const FLAG_PLACEHOLDER: u32 = 0x746d_0103;

/// MemoryBackend whose deletes (an invalidation's) wait for a permit, and which counts
/// the adds of an ended placeholder (`<token> 0`): a dropped request's lease released.
#[derive(Clone)]
struct HeldDeletes {
    inner: MemoryBackend,
    gate: Arc<Semaphore>,
    released: Arc<AtomicUsize>,
}

impl Backend for HeldDeletes {
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let _permit = self.gate.acquire().await;
        self.inner.delete(key).await
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        if flags == FLAG_PLACEHOLDER && value.ends_with(b" 0") {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.add(key, value, flags, lifetime).await
    }

    forward_to_inner!(get, get_many, set, cas, touch, incr, flush_all, stats);
}

/// Clients that send a POST and go at once, while memcached is slow to take the
/// invalidations: each invalidation runs on as counted background work (review SU), and
/// the client holds nothing, so one client makes as many as it sends. They counted
/// towards the cap on best-effort work, and past it that work was skipped for everyone:
/// here a dropped request's lease release (the URL's requests then wait out the
/// placeholder), and the epoch writes invalidations and purges make again after a
/// failed one. Best-effort work is now capped by its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_of_clients_gone_do_not_crowd_out_best_effort_work() {
    let gate = Arc::new(Semaphore::new(0));
    let released = Arc::new(AtomicUsize::new(0));
    let backend = HeldDeletes {
        inner: MemoryBackend::new(),
        gate: Arc::clone(&gate),
        released: Arc::clone(&released),
    };
    let layer = MemcacheLayer::new(backend).namespace("review-sw-invalidations");
    let background = layer.background();
    let inner = tower::service_fn(|request: Request<()>| async move {
        if request.method() != Method::POST {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
    });
    let svc = tower::Layer::layer(&layer, inner);
    const POSTS: usize = 1100;
    let clients: Vec<_> = (0..POSTS)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let url = format!("http://review-sw.test/posted/{i}");
                tokio::time::timeout(
                    Duration::from_millis(300),
                    support::send(&svc, Method::POST, &url, &[]),
                )
                .await
                .is_err()
            })
        })
        .collect();
    for client in clients {
        assert!(client.await.unwrap(), "an invalidation returned while held");
    }
    // What one client that holds no connection keeps running: every invalidation.
    assert!(
        background.running() >= POSTS,
        "{} background tasks for {POSTS} invalidations",
        background.running()
    );
    // A request dropped during its miss: its lease is released in the background.
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        support::send(&svc, Method::GET, "http://review-sw.test/slow", &[]),
    )
    .await;
    assert!(dropped.is_err(), "the slow miss came back");
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    tokio::time::timeout(Duration::from_secs(10), background.idle())
        .await
        .expect("the invalidations ended once memcached took them");
    assert_eq!(
        released.load(Ordering::SeqCst),
        1,
        "the dropped request's lease was left armed"
    );
}
