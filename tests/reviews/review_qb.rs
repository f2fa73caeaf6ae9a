//! Review QB: the reverse proxy's side toward its origin. How many requests it has under
//! way there at once (`--upstream-max-connections`, `--upstream-queue-timeout`), and what
//! a hostile origin's answers (a 101 nobody asked for, `Connection` nominating the fields
//! the cache decides by) can make it serve or store.

use crate::support;
use support::desync::get;

use support::raw_http::{header_of, ok};

use support::proxy::start_proxy;

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
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// An origin that holds its answers.

/// Requests the origin is answering now, and the most it ever was at once.
#[derive(Default)]
struct Counts {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A hyper origin: `/held/*` is answered once `release` says so (10 s at most), anything
/// else at once; every answer is the path, `no-store`.
async fn holding_origin() -> (SocketAddr, Arc<Counts>, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let (release, released) = watch::channel(false);
    let handle = {
        let counts = Arc::clone(&counts);
        move |request: Request<Incoming>| {
            let counts = Arc::clone(&counts);
            let mut released = released.clone();
            async move {
                counts.calls.fetch_add(1, Ordering::SeqCst);
                let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                counts.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let path = request.uri().path().to_string();
                if path.starts_with("/held/") {
                    let wait = released.wait_for(|released| *released);
                    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                }
                counts.in_flight.fetch_sub(1, Ordering::SeqCst);
                let response = Response::builder()
                    .header("cache-control", "no-store")
                    .body(Full::new(Bytes::from(path)))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }
    };
    support::origin::serve_http1(listener, handle);
    (addr, counts, release)
}

/// Waits (5 s at most) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An attacker's slow misses (or as many distinct URLs) each held a connection to the
/// origin: the proxy opened as many as there were requests in flight. Now at most
/// `--upstream-max-connections` are under way at the origin; as many more wait for a place
/// (`--upstream-queue-timeout`) and get a 503 when none frees in time, the rest a 503 at
/// once. Once the held requests end, their places serve the next requests. The bound is
/// the process's, whatever the runtime: with a runtime (and a pool) per thread too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_origin_limit_wait_a_bounded_time_then_get_503() {
    for runtime in ["shared", "per-thread"] {
        past_the_origin_limit(runtime).await;
    }
}

async fn past_the_origin_limit(runtime: &str) {
    let (origin, counts, release) = holding_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "2",
            "--upstream-queue-timeout",
            "1s",
            "--runtime",
            runtime,
            "--threads",
            "2",
        ],
    );
    let proxy = Arc::new(proxy);
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..2 {
        let proxy = Arc::clone(&proxy);
        requests.spawn(async move { get(&proxy, &format!("/held/{n}")).await });
    }
    until("two requests at the origin", || {
        counts.in_flight.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut refused = tokio::task::JoinSet::new();
    for n in 0..6 {
        let proxy = Arc::clone(&proxy);
        refused.spawn(async move { get(&proxy, &format!("/held/more-{n}")).await });
    }
    // Every one of them is answered while the first two are still held.
    while let Some(answer) = refused.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(body, "503 Service Unavailable\n");
    }
    assert_eq!(counts.calls.load(Ordering::SeqCst), 2);
    assert_eq!(counts.max_in_flight.load(Ordering::SeqCst), 2);
    let _ = release.send(true);
    let mut held = Vec::new();
    while let Some(answer) = requests.join_next().await {
        held.push(answer.unwrap());
    }
    held.sort();
    assert_eq!(
        held,
        [(200, "/held/0".to_string()), (200, "/held/1".to_string())]
    );
    // The places came back: more requests than there are places, one after another.
    for n in 0..5 {
        assert_eq!(
            get(&proxy, &format!("/after/{n}")).await,
            (200, format!("/after/{n}"))
        );
    }
    assert!(counts.max_in_flight.load(Ordering::SeqCst) <= 2);
}

/// A waiter whose client hangs up gives up its turn, and a request that gets no answer in
/// time (504) gives its place back: neither leaks a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_come_back_from_timeouts_and_clients_gone() {
    let (origin, counts, _release) = holding_origin().await;
    let proxy = start_proxy(
        origin,
        &[
            "--upstream-max-connections",
            "1",
            "--upstream-queue-timeout",
            "10s",
            "--upstream-timeout",
            "1s",
        ],
    );
    // Held past --upstream-timeout: a 504, and its place is free again.
    assert_eq!(get(&proxy, "/held/a").await.0, 504);
    assert_eq!(get(&proxy, "/free").await, (200, "/free".to_string()));
    // Clients that hang up while waiting behind a held request.
    let proxy = Arc::new(proxy);
    let holder = tokio::spawn({
        let proxy = Arc::clone(&proxy);
        async move { get(&proxy, "/held/b").await }
    });
    // (The origin's handler for `/held/a` still runs: its connection was closed, and the
    // calls are what tell that `/held/b` arrived.)
    until("the held request at the origin", || {
        counts.calls.load(Ordering::SeqCst) == 3
    })
    .await;
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /gone HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
    }
    assert_eq!(holder.await.unwrap().0, 504);
    assert_eq!(get(&proxy, "/free2").await, (200, "/free2".to_string()));
}

// ---------------------------------------------------------------------------------------
// A raw origin: says what hyper-based origins never would.

/// Reads each connection's request head, records it, writes what `script` says for it
/// and closes the connection.
async fn raw_origin(
    script: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let script = Arc::new(script);
    tokio::spawn({
        let heads = Arc::clone(&heads);
        async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, heads) = (Arc::clone(&script), Arc::clone(&heads));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    heads.lock().unwrap().push(head.clone());
                    let _ = stream.write_all(&script(&head)).await;
                    let _ = stream.shutdown().await;
                    // Read until the proxy closes (5 s at most), so that the answer is
                    // never cut by a reset.
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                            .await;
                });
            }
        }
    });
    (addr, heads)
}

/// Reads from `stream` until `done` holds of what came (3 s at most): what came.
async fn read_until(stream: &mut tokio::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut chunk = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&all)) {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => all.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// An origin answering 101 to a request that asked for no upgrade (the proxy never
/// forwards `Upgrade`): the 101 went to the client, which was told its connection had
/// switched, and hyper then dropped the client's connection with the requests pipelined
/// behind it; over HTTP/2 the stream was reset with a protocol error. Now a 502, the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_is_a_502_and_the_connection_goes_on() {
    let (origin, _heads) = raw_origin(|head| {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        match path.as_str() {
            "/upgrade" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 4\r\n\r\nEVIL".to_vec(),
            _ => ok("", &path).into_bytes(),
        }
    })
    .await;
    let proxy = start_proxy(origin, &[]);
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: shop.example\r\n\r\n\
              GET /second HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_until(&mut stream, |text| text.ends_with("/second")).await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text:?}");
    assert!(!text.contains("101") && !text.contains("EVIL"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n/second"), "{text:?}");

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut sender = sender.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/upgrade", proxy.addr))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 502);
}

/// What `Connection` may not hide: an origin whose response nominates a field the cache
/// decides by (RFC 9110 §7.6.1 forbids it for `Cache-Control`) had the field dropped
/// before the cache saw the response, and the page stored and served for everyone: one
/// language's page for all (`Vary`), a `private` one, one setting a cookie, one its CDN
/// field keeps out of shared caches. The origin reflects a request field into the page:
/// whoever asks gets their own or a miss. Other fields `Connection` names still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_hide_the_fields_the_cache_decides_by() {
    let (origin, _heads) = raw_origin(|head| {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let user = header_of(head, "accept-language").unwrap_or_default();
        let fields = match path.as_str() {
            "/vary" => "Cache-Control: public, max-age=60\r\nVary: Accept-Language\r\nConnection: vary",
            "/private" => "Cache-Control: private\r\nLast-Modified: Sat, 01 Jan 2000 00:00:00 GMT\r\nConnection: cache-control",
            "/cookie" => "Cache-Control: public, max-age=60\r\nSet-Cookie: session=secret\r\nConnection: set-cookie",
            "/cdn" => "Cache-Control: public, max-age=60\r\nCDN-Cache-Control: no-store\r\nConnection: cdn-cache-control",
            _ => "Cache-Control: public, max-age=60\r\nX-Debug: internal\r\nConnection: x-debug",
        };
        format!("HTTP/1.1 200 OK\r\n{fields}\r\nContent-Length: {}\r\n\r\n{user}", user.len())
            .into_bytes()
    })
    .await;
    let proxy = start_proxy(origin, &[]);
    let ask = |path: &str, user: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nAccept-Language: {user}\r\n")
    };
    let response = support::proxy::raw_text(&proxy, &ask("/vary", "fr")).await;
    assert!(
        response.contains("\r\nvary: Accept-Language\r\n"),
        "{response:?}"
    );
    assert_eq!(
        support::proxy::until_cached(&proxy, &ask("/vary", "fr")).await,
        "fr"
    );
    let (status, body) = support::proxy::raw(&proxy, &ask("/vary", "en")).await;
    assert_eq!((status, body.as_str()), (200, "en"));

    for (path, kept) in [
        ("/private", "cache-control: private"),
        ("/cookie", "set-cookie: session=secret"),
        ("/cdn", "cdn-cache-control: no-store"),
    ] {
        let response = support::proxy::raw_text(&proxy, &ask(path, "alice")).await;
        let cache_status = response
            .lines()
            .find(|line| line.starts_with("cache-status:"))
            .unwrap_or_default();
        assert!(
            !cache_status.contains("stored"),
            "{path} stored: {response:?}"
        );
        assert!(response.contains(kept), "{path}: {response:?}");
        let (_, body) = support::proxy::raw(&proxy, &ask(path, "bob")).await;
        assert_eq!(body, "bob", "{path}");
    }

    let response = support::proxy::raw_text(&proxy, &ask("/debug", "x")).await;
    assert!(
        !response.to_ascii_lowercase().contains("x-debug"),
        "{response:?}"
    );
}

/// A response head is bounded as a request head is (64 KiB): hyper's default let each
/// response under way hold about 400 KiB of head (`--upstream-max-connections` of them),
/// and stored it in the entry every hit decodes. Larger heads are a 502, as nginx makes
/// them ("upstream sent too big header"), and stored nowhere; heads under it pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_response_head_is_bounded() {
    let (origin, _heads) = raw_origin(|head| {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let size = match path.as_str() {
            "/big" => 200 * 1024,
            _ => 32 * 1024,
        };
        let filler = "x".repeat(size);
        format!("HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nX-Filler: {filler}\r\nContent-Length: 2\r\n\r\nok")
            .into_bytes()
    })
    .await;
    let proxy = start_proxy(origin, &[]);
    let (status, body) = get(&proxy, "/big").await;
    assert_eq!((status, body.as_str()), (502, "502 Bad Gateway\n"));
    let (status, body) = get(&proxy, "/small").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

/// The metrics of the bound: requests under way at the origin, and those refused a place
/// by reason. `--upstream-queue-timeout 0` refuses at once.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_limit_has_its_metrics() {
    let (origin, counts, release) = holding_origin().await;
    let (proxy, metrics) = support::proxy::start_proxy_with_metrics(
        origin,
        &[
            "--upstream-max-connections",
            "1",
            "--upstream-queue-timeout",
            "0",
        ],
    );
    let proxy = Arc::new(proxy);
    let held = tokio::spawn({
        let proxy = Arc::clone(&proxy);
        async move { get(&proxy, "/held/m").await }
    });
    until("the held request at the origin", || {
        counts.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(&proxy, "/refused").await.0, 503);
    let scrape = tokio::task::spawn_blocking(move || {
        support::proxy::raw_request(metrics, "GET /metrics HTTP/1.1\r\nHost: m\r\n").1
    })
    .await
    .unwrap();
    let value = |name: &str| {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    assert_eq!(
        value("tower_memcache_proxy_upstream_active"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(r#"tower_memcache_proxy_upstream_rejected_total{reason="queue_timeout"}"#),
        Some(1.0),
        "{scrape}"
    );
    let _ = release.send(true);
    assert_eq!(held.await.unwrap().0, 200);
}

/// Every other request to such an origin was a 502 (and, marked unreachable, let a stale
/// entry stand in): the pool sent it on the kept-alive connection the origin was closing.
/// A safe request without body is now sent once more, on another connection (nginx does
/// the same for a failed cached connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closed_unanswered_is_not_a_502() {
    // Each connection's second request is closed without a word: a keep-alive timeout
    // that fires as the request arrives (Node's 5 s, gunicorn's 2 s).
    let (origin, seen) = support::origin::scripted_origin(b"", false).await;
    let proxy = start_proxy(origin, &[]);
    for n in 0..6 {
        let path = format!("/page/{n}");
        assert_eq!(get(&proxy, &path).await, (200, path.clone()));
    }
    // Each answered on a connection of its own.
    let seen = seen.lock().unwrap().clone();
    let firsts = seen.iter().filter(|(_, request)| *request == 0).count();
    assert!(firsts >= 6, "{seen:?}");
}
