//! Review IA: where the changes merged together meet (PP's waiting-for-the-origin stall
//! exemption and SS's unsent budget in the proxy's `Sending` body; TT's declared-length
//! rule, VV's share-only flights and QQ's joined copy in a fill; WW's counting).

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::{Backend, BackendError, Item, MemoryBackend};

/// MemoryBackend whose reads wait for a permit while `hold` is set: memcached hung.
#[derive(Clone)]
struct HeldReads {
    inner: MemoryBackend,
    hold: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
}

impl Backend for HeldReads {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        if self.hold.load(Ordering::SeqCst) {
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
        }
        self.inner.get(key).await
    }
    crate::forward_to_inner!(
        get_many, set, add, cas, delete, touch, incr, flush_all, stats
    );
}

/// `Lease::release` marked the placeholder done before its release ran: a request
/// dropped while the release waited for memcached (its client hung up, or since
/// a6825dc a background fill dropped at `background_timeout`) left the placeholder armed,
/// with neither the release retried nor the drop's release in the background. Every
/// request for the URL then waited `lease_wait` for a fill that was over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_during_its_placeholder_release_leaves_no_armed_placeholder() {
    let hold = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(0));
    let backend = HeldReads {
        inner: MemoryBackend::new(),
        hold: Arc::clone(&hold),
        gate: Arc::clone(&gate),
    };
    let layer = MemcacheLayer::new(backend)
        .namespace("review-ia-release")
        .lookup_timeout(Duration::from_secs(30))
        .lease(Some(Duration::from_secs(60)))
        .lease_wait(Duration::from_secs(20), Duration::from_millis(20));
    let background = layer.background();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = tower::service_fn({
        let (calls, hold) = (Arc::clone(&calls), Arc::clone(&hold));
        move |_request: Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            if call == 0 {
                // From now on memcached hangs: the placeholder's release waits.
                hold.store(true, Ordering::SeqCst);
            }
            async move {
                let mut response = Response::new(Full::new(Bytes::from(format!("v{call}"))));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                response
                    .headers_mut()
                    .insert("cache-control", "no-store".parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        }
    });
    let svc = tower::util::BoxCloneService::new(tower::Layer::layer(&layer, inner));
    let url = "http://review-ia.test/released";
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        support::send(&svc, Method::GET, url, &[]),
    )
    .await;
    assert!(dropped.is_err(), "the release was held");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // memcached answers again; what the drop left to do is done in the background.
    hold.store(false, Ordering::SeqCst);
    gate.add_permits(1000);
    tokio::time::timeout(Duration::from_secs(10), background.idle())
        .await
        .expect("background work settles");
    let started = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(40),
        support::send(&svc, Method::GET, url, &[]),
    )
    .await
    .expect("the next request answered");
    assert_eq!(next.body, "v1");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the next request waited {:?} for a placeholder left armed",
        started.elapsed()
    );
}

#[cfg(feature = "proxy")]
mod proxy {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::support::proxy::start_proxy;

    /// An origin answering every request with an event stream: one byte every 200 ms for up
    /// to 40 s. Says on `closed` when the proxy let go of the origin's connection.
    async fn event_origin() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\
                              Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        let _ = closed.send(());
                        return;
                    }
                    for _ in 0..200 {
                        if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                            let _ = closed.send(());
                            return;
                        }
                        // A closed peer shows on a read, even while the writes still buffer.
                        let mut probe = [0u8; 16];
                        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(
                            Duration::from_millis(200),
                            stream.read(&mut probe),
                        )
                        .await
                        {
                            let _ = closed.send(());
                            return;
                        }
                    }
                });
            }
        });
        (addr, closes)
    }

    /// A probe that held, kept as a regression test. PP exempts a response "waiting for its
    /// origin" (its body's last poll had nothing) from the send timeout; SS counts only
    /// bytes polled against the unsent budget. Were the body polled only while its h2
    /// stream has window, a client that shuts the window (SETTINGS_INITIAL_WINDOW_SIZE 0)
    /// while the body waits between events would keep it "waiting" for good: no timeout,
    /// no budget, an origin connection held. hyper (1.12) polls the body before it waits
    /// for window, so the response leaves "waiting" with the next event and the stall rule
    /// closes the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_h2_client_that_shuts_its_window_between_events_is_not_waiting_for_the_origin() {
        let (origin, mut origin_closed) = event_origin().await;
        let args = ["--client-header-timeout", "1s", "--upstream-timeout", "2s"];
        let proxy = start_proxy(origin, &args);

        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (sender, mut connection) = h2::client::handshake(stream).await.unwrap();
        let (shut, shut_now) = tokio::sync::oneshot::channel::<()>();
        let driver = tokio::spawn(async move {
            tokio::select! {
                ended = &mut connection => return ended.is_ok(),
                _ = shut_now => {}
            }
            connection.set_initial_window_size(0).unwrap();
            (&mut connection).await.is_ok()
        });

        let mut sender = sender.ready().await.unwrap();
        let request = Request::get(format!("http://{}/events", proxy.addr))
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("a head within 10 s")
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first: Bytes = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("a first event within 10 s")
            .expect("an event")
            .unwrap();
        assert!(!first.is_empty());
        // Between two events (200 ms apart) the body waits for its origin: shut the window.
        shut.send(()).unwrap();

        // The origin goes on sending, the client takes none of it: within the send timeout
        // (1 s, checked each second) the connection is closed and the origin's let go.
        let closed = tokio::time::timeout(Duration::from_secs(20), driver).await;
        assert!(
            closed.is_ok(),
            "the connection of a client that takes nothing was still open after 20 s"
        );
        let released = tokio::time::timeout(Duration::from_secs(10), origin_closed.recv()).await;
        assert!(released.is_ok(), "the origin's connection was still held");
        drop(body);
    }
}
