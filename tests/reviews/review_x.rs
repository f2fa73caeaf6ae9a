//! Review X: an adversarial review of the TCP connection's deadline timer (one timer per
//! connection, polled by its reader task, instead of one per call). Each test names a way
//! a caller could wait past its deadline, be told the wrong thing, or leak a slot, with a
//! fake memcached on loopback that answers late, never, or a byte at a time, and fails if
//! a call outlives its deadline by more than a margin (every wait is bounded here).
#![cfg(feature = "tcp")]

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_memcache::backend::{Backend, BackendError, TcpBackend};

const TIMEOUT: Duration = Duration::from_millis(100);

/// What [`fake_server`] does with the gets it reads.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Nothing, ever (it keeps reading), but `stats`: a server that hangs once its
    /// connections are open.
    Never,
    /// Nothing at all, `stats` included (a stopped process: the kernel still accepts).
    Silent,
    /// Every reply after this long.
    After(Duration),
    /// Every reply a byte per this long.
    Trickle(Duration),
}

/// A memcached on loopback that answers `stats` with an empty listing and each get (each
/// key with data `data of <key>`) as `answer` says, counting its connections.
async fn fake_server(answer: Answer) -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            *counted.lock().unwrap() += 1;
            tokio::spawn(async move {
                socket.set_nodelay(true).unwrap();
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: Vec<u8> = if line.starts_with("stats") {
                        b"END\r\n".to_vec()
                    } else if let Some(keys) = line
                        .strip_prefix("gets ")
                        .or_else(|| line.strip_prefix("get "))
                    {
                        let mut reply = Vec::new();
                        for key in keys.split(' ').filter(|key| !key.is_empty()) {
                            let data = format!("data of {key}");
                            reply.extend_from_slice(
                                format!("VALUE {key} 0 {} 7\r\n{data}\r\n", data.len()).as_bytes(),
                            );
                        }
                        reply.extend_from_slice(b"END\r\n");
                        reply
                    } else {
                        let _ = lines.next_line().await;
                        b"STORED\r\n".to_vec()
                    };
                    match answer {
                        Answer::Silent => continue,
                        Answer::Never if !line.starts_with("stats") => continue,
                        Answer::Never => {
                            if write.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                        Answer::After(delay) => {
                            tokio::time::sleep(delay).await;
                            if write.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                        Answer::Trickle(every) => {
                            for byte in reply {
                                tokio::time::sleep(every).await;
                                if write.write_all(&[byte]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

fn backend(addr: &str) -> TcpBackend {
    support::one_connection_backend(addr, TIMEOUT)
}

/// A `TcpBackend` for the fake server at `addr` with the default health settings (so a
/// server that fails is marked down), `TIMEOUT` per reply and `connect_timeout`.
fn health_checked(addr: &str, connect_timeout: Duration) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .timeout(TIMEOUT)
        .connect_timeout(connect_timeout)
        .build()
        .unwrap()
}

/// Lookups as the layer makes them (see `support::fake_memcached::lookups_until_marked_down`),
/// `pause` apart for up to `within`, against a fake server answering as `answer`:
/// whether the server was marked down, and how many connections it was sent.
async fn marked_down_by_lookups(
    answer: Answer,
    within: Duration,
    pause: Duration,
) -> (bool, usize) {
    let (addr, connections) = fake_server(answer).await;
    let memcached = health_checked(&addr, TIMEOUT);
    support::fake_memcached::lookups_until_marked_down(&memcached, within, pause).await;
    let opened = *connections.lock().unwrap();
    (memcached.is_server_down(0), opened)
}

/// A clone of a backend shares its connections, and so the runtime that opened them
/// (the docs say as much). When that runtime is still there but no longer driven (a
/// current-thread runtime that ran a warm-up `block_on` and is kept), the connection's
/// reader, and with it the one deadline timer, never runs again: a call made from
/// another runtime must still give up at its deadline (as it did with a timer of its
/// own), so that the server is eventually marked down and the connection replaced,
/// rather than wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reported, not fixed: the fix costs every call a runtime check or a timer"]
async fn a_call_from_another_runtime_than_its_connections_gives_up_at_its_deadline() {
    let (addr, _) = fake_server(Answer::Never).await;
    let backend = backend(&addr);
    let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let warm = backend.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Opens the connection on this runtime (the get itself times out).
        let _ = runtime.block_on(warm.get("warm"));
        opened_tx.send(()).unwrap();
        // Kept, not driven, until the test ends.
        let _ = parked_rx.recv();
        drop(runtime);
    });
    opened_rx.recv().unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(2), backend.get("k")).await;
    let _ = parked_tx.send(());
    thread.join().unwrap();
    let outcome = outcome.unwrap_or_else(|_| {
        panic!(
            "a call on a connection whose runtime is not driven never returned ({:?})",
            started.elapsed()
        )
    });
    assert!(
        matches!(outcome, Err(BackendError::Timeout { .. })),
        "{outcome:?}"
    );
}

/// Calls to a server that never answers, one after another while each times out: the
/// expiries are no progress, so the connection is still given up after the stall timeout
/// (twice the operation timeout) and replaced, and every call returns at its deadline.
#[tokio::test]
async fn callers_timing_out_on_a_silent_server_do_not_keep_its_connection_alive() {
    let (addr, connections) = fake_server(Answer::Never).await;
    let backend = backend(&addr);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(2), backend.get("k"))
            .await
            .expect("a call outlived its deadline");
        assert!(
            matches!(
                outcome,
                Err(BackendError::Timeout { .. } | BackendError::Unreachable { .. })
            ),
            "{outcome:?}"
        );
        // The deadline is the operation timeout after the connect timeout.
        assert!(
            started.elapsed() < 2 * TIMEOUT + Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        *connections.lock().unwrap() >= 2,
        "the silent connection was never given up"
    );
}

/// A server that trickles its replies a byte at a time, each reply taking far longer than
/// the timeout but never stalling: every call still returns at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_server_cannot_hold_callers_past_their_deadlines() {
    let (addr, _) = fake_server(Answer::Trickle(Duration::from_millis(10))).await;
    let backend = backend(&addr);
    let callers: Vec<_> = (0..40)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 20)).await;
                let started = Instant::now();
                let outcome =
                    tokio::time::timeout(Duration::from_secs(2), backend.get(&format!("k{i}")))
                        .await;
                (outcome, started.elapsed())
            })
        })
        .collect();
    for caller in callers {
        let (outcome, after) = caller.await.unwrap();
        let outcome = outcome.expect("a call outlived its deadline");
        assert!(
            matches!(outcome, Err(BackendError::Timeout { .. })),
            "{outcome:?}"
        );
        assert!(
            after < 2 * TIMEOUT + Duration::from_millis(150),
            "{after:?}"
        );
    }
}

/// A hung memcached (accepts, reads, never answers) under `MemcacheLayer`: each request
/// costs about the lookup timeout, never hangs, and is answered by the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_memcached_costs_each_request_about_the_lookup_timeout_and_fails_open() {
    use http_body_util::{BodyExt, Full};
    use tower::{Service, ServiceExt};

    let (addr, _) = fake_server(Answer::Never).await;
    let lookup = Duration::from_millis(50);
    let layer = tower_memcache::MemcacheLayer::new(backend(&addr)).lookup_timeout(lookup);
    let origin = tower::service_fn(|request: http::Request<()>| async move {
        Ok::<_, std::convert::Infallible>(
            http::Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(bytes::Bytes::from(format!(
                    "origin {}",
                    request.uri().path()
                ))))
                .unwrap(),
        )
    });
    let service = tower::Layer::layer(&layer, origin);
    let request = |path: String| {
        let mut service = service.clone();
        async move {
            let started = Instant::now();
            let request = http::Request::builder()
                .uri(format!("http://example.com{path}"))
                .body(())
                .unwrap();
            let response = tokio::time::timeout(Duration::from_secs(2), async {
                service.ready().await.unwrap();
                service.call(request).await.unwrap()
            })
            .await
            .expect("a request hung on memcached");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (body, started.elapsed())
        }
    };
    // One at a time, the same URL again and again, and many at once.
    for i in 0..6 {
        let (body, after) = request("/same".to_string()).await;
        assert_eq!(body, "origin /same", "request {i}");
        assert!(after < lookup * 4, "request {i} took {after:?}");
    }
    let many: Vec<_> = (0..30)
        .map(|i| tokio::spawn(request(format!("/p{i}"))))
        .collect();
    for (i, one) in many.into_iter().enumerate() {
        let (body, after) = one.await.unwrap();
        assert_eq!(body, format!("origin /p{i}"));
        assert!(after < lookup * 4, "request {i} took {after:?}");
    }
}

/// A server that never answers is marked down by calls that wait the operation timeout
/// (callers bounding a read by the same limit, as the layer does by default).
#[tokio::test]
async fn a_hung_server_is_marked_down_by_reads_bounded_by_the_timeout() {
    let (addr, _) = fake_server(Answer::Never).await;
    let backend = TcpBackend::builder()
        .server(&addr)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .failure_threshold(3)
        .build()
        .unwrap();
    for _ in 0..3 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(2),
            backend.get_many_by_key_ordered("r", &["a", "b"], TIMEOUT),
        )
        .await
        .expect("a read outlived its deadline");
        assert!(outcome.is_err(), "{outcome:?}");
    }
    assert!(backend.is_server_down(0), "a hung server stayed in use");
}

/// A timeout of `Duration::MAX` ("no timeout", as `tokio::time::timeout` reads it, and as
/// the backend's own deadline code means to): calls to a server that answers are answered,
/// rather than panic on the arithmetic of the deadline or of the stall tick.
#[tokio::test]
async fn a_timeout_of_duration_max_is_no_timeout() {
    let (addr, _) = fake_server(Answer::After(Duration::ZERO)).await;
    for (timeout, connect_timeout) in [
        (Duration::MAX, TIMEOUT),
        (TIMEOUT, Duration::MAX),
        (Duration::MAX, Duration::MAX),
    ] {
        let backend = TcpBackend::builder()
            .server(&addr)
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .build()
            .unwrap();
        let call = tokio::spawn(async move {
            let one = backend.get("a").await;
            let many = backend
                .get_many_by_key_ordered("r", &["b"], Duration::MAX)
                .await;
            (one, many)
        });
        let (one, many) = tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .expect("a call hung")
            .unwrap_or_else(|err| panic!("{timeout:?}/{connect_timeout:?}: {err}"));
        let item = one.unwrap().expect("a value");
        assert_eq!(item.value, &b"data of a"[..]);
        let many = many.unwrap();
        assert_eq!(many[0].as_ref().expect("a value").value, &b"data of b"[..]);
    }
}

/// A hung memcached behind a layer whose lookup timeout is shorter than the backend's
/// timeout (`tower-memcache-proxy --cache-timeout 50ms` builds exactly that: its backend
/// timeout is never below 100 ms), under light traffic: every lookup is given up at the
/// caller's limit, which "says nothing about the server", and the stall tick that closes
/// each silent connection finds nobody waiting to tell. The server must still be marked
/// down, rather than every request paying the lookup timeout for as long as it hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down() {
    // Light traffic: the stall tick mostly finds nobody waiting.
    let (down, _) = marked_down_by_lookups(
        Answer::Never,
        Duration::from_secs(3),
        Duration::from_millis(400),
    )
    .await;
    assert!(down, "a hung server stayed in use for 3 s of lookups");
}

/// [`a_hung_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down`], the
/// server trickling its replies a byte at a time rather than sending none: bytes kept
/// counting as progress, so the stall check never ended the connection, and every lookup
/// for the server's keys paid its whole limit for as long as the server trickled. Only a
/// completed reply counts now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down() {
    // A two-key reply is about 55 bytes: over half a second, against a 200 ms stall check.
    let (down, _) = marked_down_by_lookups(
        Answer::Trickle(Duration::from_millis(10)),
        Duration::from_secs(3),
        Duration::from_millis(100),
    )
    .await;
    assert!(down, "a trickling server stayed in use for 3 s of lookups");
}

/// [`a_hung_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down`], the
/// server stopped before its connections were open: the new connection's `stats settings`
/// waited for the connect timeout, longer than the lookup's limit, so every lookup gave up
/// while connecting, dropped the half-made connection and said nothing. Each request opened
/// a new TCP connection to the stopped server and paid the lookup timeout, forever. The
/// query is now bounded by the caller's deadline too, and a slow answer keeps the
/// connection, whose stall check then counts against the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down() {
    let (down, opened) = marked_down_by_lookups(
        Answer::Silent,
        Duration::from_secs(2),
        Duration::from_millis(10),
    )
    .await;
    assert!(
        down,
        "a stopped server stayed in use for 2 s of lookups ({opened} connections opened)"
    );
}

/// [`a_hung_memcached_behind_a_shorter_lookup_timeout_is_eventually_marked_down`], the
/// reads bounded by the callers' own timers (dropped, rather than given up on by the
/// connection, whose deadline adds a long connect timeout): nobody is told of the stall
/// either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_memcached_read_under_a_callers_own_shorter_timer_is_eventually_marked_down() {
    let (addr, _) = fake_server(Answer::Never).await;
    let memcached = health_checked(&addr, Duration::from_secs(2));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && !memcached.is_server_down(0) {
        let outcome = tokio::time::timeout(Duration::from_millis(50), memcached.get("k")).await;
        assert!(!matches!(outcome, Ok(Ok(_))), "{outcome:?}");
        // Light traffic: the stall tick mostly finds nobody waiting.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        memcached.is_server_down(0),
        "a hung server stayed in use for 3 s of reads"
    );
}
