//! TcpBackend under faults: killed and restarted servers, servers that never answer, and
//! servers that answer garbage. Every wait is bounded; every test ends by itself.
#![cfg(feature = "tcp")]

mod support;

use std::task::Poll;
use std::time::{Duration, Instant};

use support::fake_memcached::{Reply, scripted};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tower_memcache::backend::tcp::ProtocolError;
use tower_memcache::backend::{Backend, BackendError, Lifetime, TcpBackend, UnreachableReason};

const TIMEOUT: Duration = Duration::from_millis(100);
/// The most any call may take: connect timeout + operation timeout, plus scheduling slack
/// for a loaded 2-core CI machine.
const CALL_BOUND: Duration = Duration::from_millis(200 + 300);

fn backend(addr: String) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_calls_in_flight_within_their_timeout() {
    let mut server = memcached_or_skip!("tcp_faults::killed_server");
    let backend = backend(server.addr());
    backend
        .set("k", vec![b'x'; 100_000].into(), 0, Lifetime::NEVER)
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..200 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            // Keep the connection busy until the server dies under us.
            let mut results = Vec::new();
            for _ in 0..20 {
                let started = Instant::now();
                let result = if i % 2 == 0 {
                    backend.get("k").await.map(drop)
                } else {
                    backend
                        .set(&format!("k{i}"), "v".into(), 0, Lifetime::NEVER)
                        .await
                };
                results.push((started.elapsed(), result));
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.kill();

    let mut errors = 0;
    for task in tasks {
        let results = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a call hung after the server was killed")
            .expect("task panicked");
        for (elapsed, result) in results {
            assert!(elapsed <= CALL_BOUND, "a call took {elapsed:?}");
            if let Err(err) = result {
                assert!(err.is_unavailable(), "unexpected error kind: {err:?}");
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "killing the server produced no errors");
    // Marked down by now: further calls fail at once.
    let started = Instant::now();
    assert!(backend.get("k").await.is_err());
    assert!(
        started.elapsed() < TIMEOUT,
        "no fast failure: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn restarted_server_is_used_within_a_second_of_answering() {
    let mut server = memcached_or_skip!("tcp_faults::restarted_server");
    let backend = backend(server.addr());
    backend
        .set("k", "v".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    server.kill();
    for _ in 0..5 {
        assert!(backend.get("k").await.is_err());
    }
    assert!(
        backend.is_server_down(0),
        "not marked down after repeated failures"
    );

    server.restart();
    let answering = Instant::now();
    loop {
        if backend
            .set("k", "back".into(), 0, Lifetime::NEVER)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            answering.elapsed() < Duration::from_secs(1),
            "restarted server not used within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(&backend.get("k").await.unwrap().unwrap().value[..], b"back");
}

/// A server that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, handle)
}

#[tokio::test]
async fn silent_server_times_out_then_fails_fast() {
    let (addr, silent) = silent_server().await;
    let backend = backend(addr);
    for _ in 0..3 {
        let started = Instant::now();
        let err = backend.get("k").await.unwrap_err();
        assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() <= CALL_BOUND, "{:?}", started.elapsed());
    }
    assert!(backend.is_server_down(0));
    let started = Instant::now();
    let err = backend.get("k").await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unreachable {
                reason: UnreachableReason::MarkedDown,
                ..
            }
        ),
        "{err:?}"
    );
    // `MarkedDown` is decided before any I/O: well within one call timeout, however
    // loaded the machine (the bound was 20 ms).
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    silent.abort();
}

/// A caller that bounds a call by the backend's own timeout (as `MemcacheLayer` does with
/// its lookup timeout) drops it at that moment; a hung server must still be marked down.
#[tokio::test]
async fn calls_abandoned_at_the_timeout_count_as_timeouts() {
    let (addr, silent) = silent_server().await;
    let backend = backend(addr.clone());
    // The first call connects (well inside the connect timeout), so it is abandoned
    // waiting for its reply, as the later ones are.
    for _ in 0..3 {
        let abandoned = tokio::time::timeout(TIMEOUT, backend.get("k")).await;
        assert!(
            abandoned.is_err(),
            "a silent server answered: {abandoned:?}"
        );
    }
    assert!(backend.is_server_down(0));
    // Calls given up well before the timeout say nothing about the server.
    let patient = self::backend(addr);
    for _ in 0..3 {
        let abandoned = tokio::time::timeout(TIMEOUT / 5, patient.get("k")).await;
        assert!(
            abandoned.is_err(),
            "a silent server answered: {abandoned:?}"
        );
    }
    assert!(!patient.is_server_down(0));
    silent.abort();
}

/// What the fake server does on each accepted connection, in order; later connections
/// behave like memcached for `get` (always a miss) and `set`. Every connection answers
/// `stats settings` (asked first on each new connection) with an empty listing, so that
/// the behaviour meets the request under test.
#[derive(Clone, Copy)]
enum Behaviour {
    Garbage,
    Truncated,
    WrongKind,
    /// Reads a request, then closes the connection without answering.
    HangUp,
    Proper,
}

async fn fake_server(script: Vec<Behaviour>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Ok((socket, _)) = listener.accept().await {
            let behaviour = script.next().unwrap_or(Behaviour::Proper);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("stats") {
                        if write.write_all(b"END\r\n").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let reply: &[u8] = match behaviour {
                        Behaviour::HangUp => return,
                        Behaviour::Garbage => b"HELLO THERE\r\n",
                        Behaviour::Truncated => b"VALUE k 0 10\r\nabc",
                        Behaviour::WrongKind => b"STORED\r\n",
                        Behaviour::Proper if line.starts_with("get") => b"END\r\n",
                        Behaviour::Proper if line.starts_with("version") => b"VERSION fake\r\n",
                        Behaviour::Proper => {
                            // set: skip the data line, then answer.
                            let _ = lines.next_line().await;
                            b"STORED\r\n"
                        }
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                    if matches!(behaviour, Behaviour::Truncated) {
                        return; // hang up mid-reply
                    }
                }
            });
        }
    });
    (addr, handle)
}

#[tokio::test]
async fn garbage_truncated_and_mismatched_replies_drop_the_connection() {
    let (addr, server) = fake_server(vec![
        Behaviour::Garbage,
        Behaviour::Truncated,
        Behaviour::WrongKind,
        Behaviour::HangUp,
    ])
    .await;
    let backend = TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(TIMEOUT)
        .failure_threshold(10)
        .build()
        .unwrap();

    let err = backend.get("k").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Protocol(violation)
            if matches!(violation.downcast_ref(), Some(ProtocolError::UnknownLine { .. }))),
        "garbage: {err:?}"
    );
    let err = backend.get("k").await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unreachable { .. } | BackendError::Protocol(_)
        ),
        "truncated: {err:?}"
    );
    let err = backend.get("k").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Protocol(violation)
            if matches!(violation.downcast_ref(), Some(ProtocolError::UnexpectedReply { .. }))),
        "wrong kind: {err:?}"
    );
    let err = backend.get("k").await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unreachable {
                reason: UnreachableReason::ClosedByPeer,
                ..
            }
        ),
        "hang-up: {err:?}"
    );
    // Each bad connection was dropped; the next one works.
    assert_eq!(backend.get("k").await.unwrap(), None);
    backend
        .set("k", "v".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_sent() {
    // Nothing listens here: any attempt to send would fail as unreachable, not as bad input.
    let backend = backend(format!("127.0.0.1:{}", support::free_port()));
    assert!(matches!(
        backend.get("bad key").await,
        Err(BackendError::InvalidKey { .. })
    ));
    assert!(matches!(
        backend
            .set("k", vec![0; 2 * 1024 * 1024].into(), 0, Lifetime::NEVER)
            .await,
        Err(BackendError::ValueTooLarge { .. })
    ));
    assert!(
        !backend.is_server_down(0),
        "bad input counted as a server failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_keeps_replies_matched_under_concurrency() {
    let server = memcached_or_skip!("tcp_faults::pipelining");
    // What is tested is that every reply reaches its own caller; the default 100 ms call
    // timeout is for a calm machine (3,200 calls on two connections, beside the other tests
    // of this file, timed out on a loaded one).
    let backend = TcpBackend::builder()
        .server(server.addr())
        .connections_per_server(2)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..64 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let key = format!("t{task}-{i}");
                let value = format!("{key}-{}", "x".repeat(i * 37));
                backend
                    .set(&key, value.clone().into(), i as u32, Lifetime::NEVER)
                    .await
                    .unwrap();
                let item = backend.get(&key).await.unwrap().unwrap();
                assert_eq!(item.value, value.as_bytes());
                assert_eq!(item.flags, i as u32);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// libmemcached's REMOVE_FAILED_SERVERS: a server marked down leaves the ring, its keys move
/// to the others, and come back when it answers again.
#[tokio::test]
async fn removed_failed_servers_move_their_keys_and_come_back() {
    let a = memcached_or_skip!("tcp_faults::remove_failed");
    let mut b = memcached_or_skip!("tcp_faults::remove_failed");
    let backend = TcpBackend::builder()
        .servers([a.addr(), b.addr()])
        .timeout(TIMEOUT)
        .remove_failed_servers(true)
        .build()
        .unwrap();
    let on_b: Vec<String> = (0..200)
        .map(|i| format!("key-{i}"))
        .filter(|key| backend.server_for_key(key) == Some(1))
        .collect();
    assert!(!on_b.is_empty());
    b.kill();
    for _ in 0..5 {
        let _ = backend.get(&on_b[0]).await;
    }
    assert!(backend.is_server_down(1));
    // Keys of the dead server now live on the other one.
    for key in &on_b {
        assert_eq!(backend.server_for_key(key), Some(0));
        backend
            .set(key, "moved".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!(
            &backend.get(key).await.unwrap().unwrap().value[..],
            b"moved"
        );
    }
    b.restart();
    let deadline = Instant::now() + Duration::from_secs(2);
    while backend.is_server_down(1) {
        assert!(Instant::now() < deadline, "server not back in the ring");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.server_for_key(&on_b[0]), Some(1));
    assert_eq!(
        backend.get(&on_b[0]).await.unwrap(),
        None,
        "restarted server is empty"
    );
}

/// A backend with a single connection, so that a second call shows whether the first
/// connection was replaced.
fn one_connection_backend(addr: String) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

/// One flood: `VALUE <key> 0 <len>` blocks, `blocks` of them and no `END`, in answer to a
/// one-key get of `k`.
#[derive(Clone, Copy, Debug)]
struct Flood {
    /// `k` every time (asked, but once), or `k0`, `k1`, ... (never asked).
    distinct_keys: bool,
    len: usize,
    blocks: usize,
}

/// A server that answers the first request of its first connection (after `stats
/// settings`, answered with an empty listing) with `flood`, writing until it is done or
/// the client hangs up, and reports the bytes it got out; later connections answer like a
/// memcached holding nothing.
async fn flooding_server(flood: Flood) -> (String, tokio::sync::oneshot::Receiver<usize>) {
    // A small send buffer, so that the bytes written track what the client took.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (report, written) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut report = Some(report);
        while let Ok((socket, _)) = listener.accept().await {
            let first = report.take();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                if let Some(report) = first {
                    loop {
                        let Ok(Some(line)) = lines.next_line().await else {
                            return;
                        };
                        if !line.starts_with("stats") {
                            break;
                        }
                        if write.write_all(b"END\r\n").await.is_err() {
                            return;
                        }
                    }
                    let data = vec![b'x'; flood.len];
                    let mut written = 0;
                    for n in 0..flood.blocks {
                        let key = if flood.distinct_keys {
                            format!("k{n}")
                        } else {
                            "k".to_string()
                        };
                        let header = format!("VALUE {key} 0 {}\r\n", flood.len);
                        let mut block = [header.as_bytes(), &data, b"\r\n"].concat();
                        let mut rest = &mut block[..];
                        // Counted write by write, so a block cut off counts what went out.
                        while !rest.is_empty() {
                            match write.write(rest).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    written += n;
                                    rest = &mut rest[n..];
                                }
                            }
                        }
                        if !rest.is_empty() {
                            break;
                        }
                    }
                    let _ = report.send(written);
                    return;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if line.starts_with("get") || line.starts_with("stats") {
                        b"END\r\n"
                    } else {
                        b"VERSION fake\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, written)
}

/// A one-key get answered with a hundred large values and no `END` (the same key again,
/// keys never asked, values over the item size limit): the connection is dropped at the
/// first header the request does not allow, so the call fails at once with a protocol
/// error rather than a timeout, the client takes about one value and the server no more
/// than that plus what the sockets hold, and the next call gets a new connection.
#[tokio::test]
async fn flood_of_values_for_a_one_key_get_is_cut_off_at_once() {
    const MIB: usize = 1024 * 1024;
    let floods = [
        Flood {
            distinct_keys: false,
            len: MIB,
            blocks: 100,
        },
        Flood {
            distinct_keys: true,
            len: MIB,
            blocks: 100,
        },
        Flood {
            distinct_keys: true,
            len: 4 * MIB,
            blocks: 100,
        },
    ];
    for flood in floods {
        let (addr, written) = flooding_server(flood).await;
        let backend = one_connection_backend(addr);
        let started = Instant::now();
        let err = backend.get("k").await.unwrap_err();
        assert!(
            matches!(err, BackendError::Protocol(_)),
            "{flood:?}: {err:?}"
        );
        assert!(
            started.elapsed() < TIMEOUT,
            "{flood:?}: {:?}",
            started.elapsed()
        );
        let written = tokio::time::timeout(Duration::from_secs(20), written)
            .await
            .expect("the flood never ended")
            .unwrap();
        // At most one value (the item size limit) plus what the sockets buffer (about
        // 200 KiB here; 4 MiB of room): the flood is 100 MiB or more.
        assert!(
            written < 5 * MIB,
            "{flood:?}: the server got {written} bytes out"
        );
        assert!(!backend.is_server_down(0));
        assert_eq!(backend.get("k").await.unwrap(), None, "{flood:?}");
    }
}

/// A reply with a value for a key that was not asked for is refused, not passed on:
/// `get_many` must return only keys it asked for.
#[tokio::test]
async fn value_for_a_key_not_asked_for_drops_the_connection() {
    // The first connection smuggles a value for a key never asked.
    let addr = scripted(|connection, line| {
        Reply::Send(if line.starts_with("stats") {
            b"END\r\n"
        } else if connection == 0 {
            b"VALUE a 0 1\r\n1\r\nVALUE evil 0 4\r\nevil\r\nVALUE b 0 1\r\n2\r\nEND\r\n"
        } else {
            b"VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n"
        })
    })
    .await;
    let backend = one_connection_backend(addr);
    let started = Instant::now();
    let err = backend.get_many(&["a", "b"]).await.unwrap_err();
    assert!(matches!(err, BackendError::Protocol(_)), "{err:?}");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    // A new connection, which behaves.
    let found = backend.get_many(&["a", "b"]).await.unwrap();
    let mut keys: Vec<_> = found.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["a", "b"]);
}

#[tokio::test]
async fn refused_connect_is_unreachable_with_its_io_error() {
    // A port nobody listens on any more.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = backend(addr).get("k").await.unwrap_err();
    let BackendError::Unreachable {
        reason: UnreachableReason::Connect(io),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{err:?}");
    // The I/O error is the end of the source chain.
    let source = std::error::Error::source(&err).and_then(std::error::Error::source);
    assert!(
        source.is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()),
        "{err:?}"
    );
    assert!(err.to_string().contains("connect failed"), "{err}");
}

/// What a task knows of one of its keys: the last version it set that was confirmed, and
/// the last it asked for (a set given up on may have been applied or not).
#[derive(Clone, Copy, Default)]
struct Versions {
    confirmed: Option<u64>,
    attempted: Option<u64>,
}

impl Versions {
    /// Checks a value read by a request queued when the versions were `self`: one of the
    /// key's own values, no older than the last confirmed set and no newer than the last
    /// attempted one (the task's requests share one connection, so go out in order).
    fn check(self, key: &str, value: Option<&[u8]>, context: &str) {
        let Some(value) = value else {
            assert!(
                self.confirmed.is_none(),
                "{context}: {key} missing after a confirmed set"
            );
            return;
        };
        let text = String::from_utf8_lossy(value);
        let version = text
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<u64>().ok());
        let Some(version) = version else {
            panic!("{context}: {key} answered with another request's value {text:?}");
        };
        assert!(
            self.confirmed.is_none_or(|c| version >= c)
                && self.attempted.is_some_and(|a| version <= a),
            "{context}: {key} = version {version}, expected between {:?} and {:?}",
            self.confirmed,
            self.attempted
        );
    }
}

/// A value for version `n` of `key`: small, or now and then large enough to fill the socket,
/// so that writers also hand the rest of a batch to the writer task.
fn stress_value(rng: &mut impl rand::Rng, key: &str, n: u64) -> bytes::Bytes {
    let mut value = format!("{key}:{n}:").into_bytes();
    if rng.random_bool(0.1) {
        value.resize(value.len() + rng.random_range(64 * 1024..512 * 1024), b'x');
    }
    value.into()
}

/// Polls `future` once, with a waker that never wakes it.
fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// Polls `call` once and leaves it unpolled while other tasks run; then either awaits it
/// (`Some`) or drops it.
async fn park<F: std::future::Future>(rng: &mut impl rand::Rng, call: F) -> Option<F::Output> {
    let mut call = Box::pin(call);
    let first = poll_once(call.as_mut());
    for _ in 0..rng.random_range(0..4) {
        tokio::task::yield_now().await;
    }
    if !rng.random_bool(0.5) {
        return None;
    }
    Some(match first {
        Poll::Ready(output) => output,
        Poll::Pending => call.await,
    })
}

/// One task of the stress test: random sets and gets on its own keys, some awaited, some
/// given up on at a random point (a short timeout), some polled once and then parked
/// (yielding, unpolled) before being awaited or dropped. Every answer is checked.
async fn stress_task(backend: TcpBackend, seed: u64, prefix: String, steps: usize) {
    use rand::{Rng, SeedableRng};

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keys: Vec<String> = (0..4).map(|k| format!("{prefix}-{k}")).collect();
    let mut versions = vec![Versions::default(); keys.len()];
    let mut next_version = 0u64;
    for step in 0..steps {
        let k = rng.random_range(0..keys.len());
        let key = keys[k].as_str();
        let context = format!("{prefix} step {step}");
        match rng.random_range(0..9) {
            // A set, awaited.
            0 | 1 => {
                next_version += 1;
                versions[k].attempted = Some(next_version);
                let value = stress_value(&mut rng, key, next_version);
                let result = backend.set(key, value, 0, Lifetime::NEVER).await;
                result.unwrap_or_else(|err| panic!("{context}: set failed: {err}"));
                versions[k].confirmed = Some(next_version);
            }
            // A get, awaited.
            2 | 3 => {
                let known = versions[k];
                let item = backend.get(key).await;
                let item = item.unwrap_or_else(|err| panic!("{context}: get failed: {err}"));
                known.check(key, item.as_ref().map(|i| &i.value[..]), &context);
            }
            // A get of every key, awaited.
            4 => {
                let all: Vec<&str> = keys.iter().map(String::as_str).collect();
                let known = versions.clone();
                let found = backend.get_many(&all).await;
                let found = found.unwrap_or_else(|err| panic!("{context}: get_many: {err}"));
                for (k, key) in keys.iter().enumerate() {
                    let value = found.get(key).map(|i| &i.value[..]);
                    known[k].check(key, value, &context);
                }
            }
            // A call given up on at a random point.
            5 => {
                let bound = Duration::from_micros(rng.random_range(0..1500));
                if rng.random_bool(0.5) {
                    next_version += 1;
                    versions[k].attempted = Some(next_version);
                    let value = stress_value(&mut rng, key, next_version);
                    let set = backend.set(key, value, 0, Lifetime::NEVER);
                    if let Ok(result) = tokio::time::timeout(bound, set).await {
                        result.unwrap_or_else(|err| panic!("{context}: set failed: {err}"));
                        versions[k].confirmed = Some(next_version);
                    }
                } else {
                    let known = versions[k];
                    if let Ok(item) = tokio::time::timeout(bound, backend.get(key)).await {
                        let item = item.unwrap_or_else(|err| panic!("{context}: get: {err}"));
                        known.check(key, item.as_ref().map(|i| &i.value[..]), &context);
                    }
                }
            }
            // A call polled once, left unpolled (perhaps holding the write side in its
            // yield) while other tasks run, then awaited or dropped.
            6 => {
                let known = versions[k];
                if let Some(item) = park(&mut rng, backend.get(key)).await {
                    let item = item.unwrap_or_else(|err| panic!("{context}: parked get: {err}"));
                    known.check(key, item.as_ref().map(|i| &i.value[..]), &context);
                }
            }
            _ => {
                next_version += 1;
                versions[k].attempted = Some(next_version);
                let value = stress_value(&mut rng, key, next_version);
                let set = backend.set(key, value, 0, Lifetime::NEVER);
                if let Some(result) = park(&mut rng, set).await {
                    result.unwrap_or_else(|err| panic!("{context}: parked set: {err}"));
                    versions[k].confirmed = Some(next_version);
                }
            }
        }
        for _ in 0..rng.random_range(0..3) {
            tokio::task::yield_now().await;
        }
    }
}

/// Seeded randomized stress of a connection's write hand-off: many tasks share one
/// connection to a real memcached and call it concurrently, giving up on calls at random
/// points and leaving calls parked mid-yield. Every reply must belong to its request (each
/// value names its key and version, checked against what the task set before), no call may
/// fail or time out (a request left unwritten would stall), and each round must end in
/// time. `TCP_STRESS_SEED` replays a seed, `TCP_STRESS_ROUNDS` runs more rounds (one seed
/// each).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_hand_off_survives_randomized_concurrent_calls() {
    use rand::{Rng, SeedableRng};

    let server = memcached_or_skip!("tcp_faults::write_hand_off_stress");
    let base_seed = std::env::var("TCP_STRESS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed_u64);
    let rounds: u64 = std::env::var("TCP_STRESS_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let seed = base_seed.wrapping_add(round);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Sometimes few request slots, so that callers also wait for one (and give up
        // while waiting).
        let max_in_flight = [4, 16, 1024][rng.random_range(0..3)];
        let tasks = rng.random_range(8..48);
        let steps = 150;
        eprintln!(
            "write hand-off stress: TCP_STRESS_SEED={seed} ({tasks} tasks, {steps} steps, \
             max_in_flight {max_in_flight})"
        );
        let backend = TcpBackend::builder()
            .server(server.addr())
            .connections_per_server(1)
            .max_in_flight(max_in_flight)
            // Generous: under this load on a slow machine, only a stuck request is late.
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let mut handles = Vec::new();
        for task in 0..tasks {
            handles.push(tokio::spawn(stress_task(
                backend.clone(),
                rng.random(),
                format!("s{seed}-t{task}"),
                steps,
            )));
        }
        let all = async {
            for handle in handles {
                if let Err(err) = handle.await {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the calls did not finish within 60 s"));
        assert!(!backend.is_server_down(0), "seed {seed}");
        // The connection is still in sync.
        backend
            .set("after", "v".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        let item = backend.get("after").await.unwrap().unwrap();
        assert_eq!(&item.value[..], b"v", "seed {seed}");
    }
}

/// What [`line_server`] does with one request line.
enum Answer {
    /// Writes these bytes.
    Reply(&'static [u8]),
    /// Reads the data line of a storage command, then writes these bytes.
    AfterData(&'static [u8]),
    /// Closes the connection.
    Close,
}

/// A fake memcached that answers each request line with `answer(line)`; every connection
/// alike. Aborting the task closes the port (connections end when the client closes them).
async fn line_server<F>(answer: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: Fn(&str) -> Answer + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = std::sync::Arc::new(answer);
    let handle = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let answer = std::sync::Arc::clone(&answer);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match answer(&line) {
                        Answer::Reply(reply) => reply,
                        Answer::AfterData(reply) => {
                            let Ok(Some(_)) = lines.next_line().await else {
                                return;
                            };
                            reply
                        }
                        Answer::Close => return,
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, handle)
}

/// twemproxy closes the connection on `stats`, which a new connection asks first (`stats
/// settings`): the backend opens another connection, which asks once more (one closed
/// query may have been a restart), then one that skips it, so calls still work, nothing
/// counts as a failure, and later connections do not ask again.
#[tokio::test]
async fn server_closing_the_connection_on_stats_settings_is_still_used() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let asked = Arc::new(AtomicUsize::new(0));
    let (addr, server) = line_server({
        let asked = Arc::clone(&asked);
        move |line| {
            if line.starts_with("stats") {
                asked.fetch_add(1, Ordering::SeqCst);
                Answer::Close
            } else if line.starts_with("get") {
                Answer::Reply(b"END\r\n")
            } else {
                Answer::AfterData(b"STORED\r\n")
            }
        }
    })
    .await;
    let backend = TcpBackend::builder()
        .server(addr)
        .connections_per_server(2)
        .timeout(TIMEOUT)
        .failure_threshold(1)
        .build()
        .unwrap();
    for i in 0..20 {
        assert_eq!(backend.get("k").await.unwrap(), None, "call {i}");
        backend
            .set("k", "v".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
    }
    // Enough concurrent calls to open the second connection too.
    let calls = (0..200).map(|_| backend.get("k"));
    for reply in futures_util::future::join_all(calls).await {
        assert_eq!(reply.unwrap(), None);
    }
    assert!(!backend.is_server_down(0));
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "asked again after the second close"
    );
    assert_eq!(backend.item_size_limit(), 1024 * 1024);
    server.abort();
}

/// A server that refuses items as too large without telling its limit (no
/// `item_size_max`): each refusal lowers the limit below the refused item, so that size
/// is refused before it is sent again; smaller items are still sent.
#[tokio::test]
async fn items_refused_as_too_large_are_not_sent_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SERVER_LIMIT: usize = 1000;
    let sets = Arc::new(AtomicUsize::new(0));
    let (addr, server) = line_server({
        let sets = Arc::clone(&sets);
        move |line| {
            if line.starts_with("stats") {
                return Answer::Reply(b"STAT pid 1\r\nSTAT item_size_max nonsense\r\nEND\r\n");
            }
            sets.fetch_add(1, Ordering::SeqCst);
            // set <key> <flags> <exptime> <bytes>
            let len: usize = line.split(' ').nth(4).and_then(|n| n.parse().ok()).unwrap();
            if len > SERVER_LIMIT {
                Answer::AfterData(b"SERVER_ERROR object too large for cache\r\n")
            } else {
                Answer::AfterData(b"STORED\r\n")
            }
        }
    })
    .await;
    let backend = one_connection_backend(addr);
    let value = |len: usize| bytes::Bytes::from(vec![b'x'; len]);
    let size = |len: usize| "k".len() + len + tower_memcache::backend::ITEM_OVERHEAD;

    let err = backend
        .set("k", value(2000), 0, Lifetime::NEVER)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ValueTooLarge {
                size: 2000,
                limit: 1999
            }
        ),
        "{err:?}"
    );
    assert_eq!(sets.load(Ordering::SeqCst), 1);
    assert_eq!(backend.item_size_limit(), size(2000) - 1);
    for len in [2000, 5000] {
        let err = backend
            .set("k", value(len), 0, Lifetime::NEVER)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::ValueTooLarge { .. }), "{err:?}");
    }
    assert_eq!(
        sets.load(Ordering::SeqCst),
        1,
        "a refused size was sent again"
    );
    // Smaller, still too large for the server: sent once, refused, lower again.
    assert!(
        backend
            .set("k", value(1500), 0, Lifetime::NEVER)
            .await
            .is_err()
    );
    assert_eq!(sets.load(Ordering::SeqCst), 2);
    assert_eq!(backend.item_size_limit(), size(1500) - 1);
    backend
        .set("k", value(SERVER_LIMIT), 0, Lifetime::NEVER)
        .await
        .unwrap();
    assert_eq!(sets.load(Ordering::SeqCst), 3);
    // A refusal is not a failure of the server.
    assert!(!backend.is_server_down(0));
    server.abort();
}

/// A server that answers its probe but cannot delete the keys to reset stays down, probed
/// on, until the deletes succeed (`NOT_FOUND` counts); a write to every server that the
/// server refuses with an error reply marks it down at once.
#[tokio::test]
async fn server_stays_down_until_its_keys_are_reset() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let deletes = Arc::new(AtomicUsize::new(0));
    let can_delete = Arc::new(AtomicBool::new(false));
    let (addr, server) = line_server({
        let deletes = Arc::clone(&deletes);
        let can_delete = Arc::clone(&can_delete);
        move |line| {
            if line.starts_with("stats") {
                Answer::Reply(b"END\r\n")
            } else if line.starts_with("version") {
                Answer::Reply(b"VERSION fake\r\n")
            } else if line == "delete generation" {
                deletes.fetch_add(1, Ordering::SeqCst);
                if can_delete.load(Ordering::SeqCst) {
                    Answer::Reply(b"NOT_FOUND\r\n")
                } else {
                    Answer::Reply(b"SERVER_ERROR busy\r\n")
                }
            } else if line.starts_with("get") {
                Answer::Reply(b"END\r\n")
            } else {
                Answer::AfterData(b"SERVER_ERROR out of memory storing object\r\n")
            }
        }
    })
    .await;
    let backend = TcpBackend::builder()
        .server(addr)
        .timeout(TIMEOUT)
        .failure_threshold(100)
        .probe_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    backend.reset_on_rejoin("generation");
    // The only server refused it: an error, and marked down although error replies never
    // count towards the threshold.
    let err = backend
        .set_on_every_server("generation", "2".into(), 0, Lifetime::NEVER)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Server(_)), "{err:?}");
    assert!(backend.is_server_down(0));

    let deadline = Instant::now() + Duration::from_secs(5);
    while deletes.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "the probe does not try the reset"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(backend.is_server_down(0), "back without its reset");

    can_delete.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.is_server_down(0) {
        assert!(Instant::now() < deadline, "not back after its reset");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(backend.get("generation").await.unwrap(), None);
    server.abort();
}

/// A server whose first connection closes on `stats settings` (memcached restarted just
/// then) and which then answers as memcached: one closed query is not taken for a proxy
/// that does not support `stats` (twemproxy closes on every one). Taken so, `flush_all`
/// (`Purger::purge_all`, `MemcacheClient::invalidate_all`) and `stats` were refused as
/// unsupported until the server happened to be marked down and up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stats_settings_lost_to_a_restart_does_not_disable_flush_all() {
    let addr = scripted(|connection, line| match line {
        // The first connection's query: the server goes away.
        "stats settings" if connection == 0 => Reply::Close,
        "stats settings" => Reply::Send(b"STAT item_size_max 1048576\r\nEND\r\n"),
        "stats" => Reply::Send(b"STAT pid 1\r\nEND\r\n"),
        "flush_all" => Reply::Send(b"OK\r\n"),
        _ => Reply::Send(b"ERROR\r\n"),
    })
    .await;
    let backend = TcpBackend::builder()
        .server(addr)
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let flushed = tokio::time::timeout(Duration::from_secs(10), backend.flush_all())
        .await
        .expect("flush_all still running after 10 s");
    assert!(flushed.is_ok(), "{flushed:?}");
    let stats = tokio::time::timeout(Duration::from_secs(10), backend.stats())
        .await
        .expect("stats still running after 10 s");
    assert!(stats.is_ok(), "{stats:?}");
}
