//! Fault soak: the `tower-memcache-proxy` binary over two memcached servers while they fail in
//! turn (SIGSTOP/SIGCONT, SIGKILL and restart, both restarted, a server answering garbage
//! on one's port), under concurrent clients whose every body is checked against its URL.
//!
//! Asserted: no wrong body, nothing but the origin's 200, every request within
//! [`MAX_LATENCY`], and caching back within [`RECOVERY`] of each fault's end. The figures
//! per phase are printed (`--nocapture`). About 20 s by default; `SOAK_SECS=600` repeats
//! the faults for ten minutes. Skips without memcached unless `MEMCACHED_REQUIRED=1`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use support::Memcached;
use support::proxy::start_proxy;

/// Distinct URLs the clients spread their requests over.
const URLS: usize = 200;
/// Concurrent clients.
const CLIENTS: usize = 8;
/// The most a client sends per second of the run: a bound besides time, far above what
/// a debug build serves.
const MAX_REQUESTS_PER_CLIENT_PER_SEC: u64 = 5_000;
/// No request may take longer, faults or not.
const MAX_LATENCY: Duration = Duration::from_secs(2);
/// How long each fault lasts.
const FAULT: Duration = Duration::from_millis(1500);
/// Traffic after each fault, before the next.
const AFTER: Duration = Duration::from_millis(2500);
/// Caching must be back this soon after a fault ends.
const RECOVERY: Duration = Duration::from_secs(1);
/// "Back": a bucket of this length whose answers are mostly hits.
const BUCKET: Duration = Duration::from_millis(200);
const BACK_RATIO: f64 = 0.75;

/// The origin: every URL is cacheable for an hour and its body names it.
async fn start_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    support::origin::serve_http1(listener, |request: Request<Incoming>| async move {
        let body = format!("url {}", request.uri());
        let response = Response::builder()
            .header("cache-control", "max-age=3600")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    addr
}

/// A "memcached" on `port` that answers every line it reads (but `version`) with
/// garbage, of several kinds in turn. Aborting the task closes the port and its connections.
async fn garbage_server(port: u16) -> tokio::task::JoinHandle<()> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The killed memcached's port: retry briefly if the kernel has not let it go yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(err) => {
                assert!(Instant::now() < deadline, "bind {addr}: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        let mut seed = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            seed += 1;
            connections.spawn(answer_garbage(stream, seed));
        }
    })
}

/// Replies [`garbage_server`] sent: proof that the proxy did talk to it.
static GARBAGE_REPLIES: AtomicU64 = AtomicU64::new(0);

/// One connection of [`garbage_server`]: a reply of the next kind for every line.
async fn answer_garbage(mut stream: TcpStream, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0; 64 * 1024];
    let mut kind = seed as usize;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in text.split("\r\n").filter(|line| !line.is_empty()) {
            let mut words = line.split(' ');
            let verb = words.next().unwrap_or("");
            let key = words.next().unwrap_or("k");
            let cas = if verb == "gets" { " 7" } else { "" };
            if verb == "version" {
                // Probes pass, so the client keeps coming back for more garbage.
                if stream.write_all(b"VERSION 1.6.99\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            kind += 1;
            GARBAGE_REPLIES.fetch_add(1, Ordering::Relaxed);
            let reply: Vec<u8> = match kind % 9 {
                0 => {
                    let mut noise = vec![0; rng.random_range(1..200)];
                    rng.fill_bytes(&mut noise);
                    noise
                }
                1 => format!("VALUE {key} 0 99999999999999{cas}\r\n").into_bytes(),
                2 => format!("VALUE {key} 0 10{cas}\r\nshort\r\nEND\r\n").into_bytes(),
                3 => format!("VALUE not-{key} 0 5{cas}\r\nhello\r\nEND\r\n").into_bytes(),
                4 => {
                    // Well-formed for the key asked; the value is no entry.
                    let mut value = vec![0; rng.random_range(0..2000)];
                    rng.fill_bytes(&mut value);
                    let mut reply = format!("VALUE {key} 0 {}{cas}\r\n", value.len()).into_bytes();
                    reply.extend_from_slice(&value);
                    reply.extend_from_slice(b"\r\nEND\r\n");
                    reply
                }
                5 => format!("VALUE {key} x y{cas}\r\n").into_bytes(),
                6 => b"SERVER_ERROR out of memory\r\nERROR\r\nSTORED\r\n".to_vec(),
                7 => b"VALUE\r\nEND\nEND\r\r\n".to_vec(),
                _ => {
                    // Cut off in the middle of a value.
                    let _ = stream
                        .write_all(format!("VALUE {key} 0 100{cas}\r\nabc").as_bytes())
                        .await;
                    return;
                }
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// What the clients saw in one [`BUCKET`] of time.
#[derive(Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    hits: u64,
    max_latency: Duration,
}

/// What the clients saw, by time since the start.
struct Record {
    start: Instant,
    buckets: Mutex<Vec<Bucket>>,
    /// Wrong bodies, other statuses, transport errors: each one a test failure.
    failures: Mutex<(u64, Vec<String>)>,
}

impl Record {
    fn count(&self, sent: Instant, latency: Duration, hit: bool) {
        let index = (sent - self.start).as_millis() / BUCKET.as_millis();
        let index = usize::try_from(index).unwrap();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() <= index {
            buckets.resize(index + 1, Bucket::default());
        }
        let bucket = &mut buckets[index];
        bucket.requests += 1;
        bucket.hits += u64::from(hit);
        bucket.max_latency = bucket.max_latency.max(latency);
    }

    fn fail(&self, what: String) {
        let mut failures = self.failures.lock().unwrap();
        failures.0 += 1;
        if failures.1.len() < 20 {
            failures.1.push(what);
        }
    }
}

/// One client: random URLs until told to stop, each body checked against its URL.
async fn client(
    proxy: SocketAddr,
    index: u64,
    max_requests: u64,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut rng = StdRng::seed_from_u64(index);
    for _ in 0..max_requests {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let path = format!("/soak/{}", rng.random_range(0..URLS));
        let request = Request::get(format!("http://{proxy}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let sent = Instant::now();
        let answer = tokio::time::timeout(MAX_LATENCY * 2, async {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
        })
        .await;
        let latency = sent.elapsed();
        let (parts, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                record.fail(format!("{path}: {err}"));
                continue;
            }
            Err(_) => {
                record.fail(format!("{path}: no answer within {:?}", MAX_LATENCY * 2));
                continue;
            }
        };
        let cache_status = parts
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if parts.status != StatusCode::OK || body != format!("url {path}").as_bytes() {
            record.fail(format!(
                "{path}: {} {body:?} ({cache_status})",
                parts.status
            ));
        }
        if latency > MAX_LATENCY {
            record.fail(format!("{path}: took {latency:?} ({cache_status})"));
        }
        record.count(sent, latency, cache_status.contains("hit"));
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Nothing: the warm-up.
    None,
    /// Server A SIGSTOPped, then SIGCONTed.
    Stopped,
    /// Server A killed, then restarted on its port (empty).
    Killed,
    /// Both servers restarted (the whole cache lost).
    BothRestarted,
    /// A server answering garbage on A's port, then memcached again.
    Garbage,
}

/// Runs `fault` for [`FAULT`] and ends it.
async fn inject(fault: Fault, a: &mut Memcached, b: &mut Memcached) {
    let signal = |server: &Memcached, signal: Signal| {
        let pid = i32::try_from(server.pid().unwrap()).unwrap();
        kill(Pid::from_raw(pid), signal).unwrap();
    };
    // Memcached's restarts wait (in blocking sleeps) for the port.
    use tokio::task::block_in_place as blocking;
    match fault {
        Fault::None => {}
        Fault::Stopped => {
            signal(a, Signal::SIGSTOP);
            tokio::time::sleep(FAULT).await;
            signal(a, Signal::SIGCONT);
        }
        Fault::Killed => {
            a.kill();
            tokio::time::sleep(FAULT).await;
            blocking(|| a.restart());
        }
        Fault::BothRestarted => {
            blocking(|| {
                a.restart();
                b.restart();
            });
        }
        Fault::Garbage => {
            a.kill();
            let fake = garbage_server(a.port()).await;
            tokio::time::sleep(FAULT).await;
            fake.abort();
            let _ = fake.await;
            blocking(|| a.restart());
        }
    }
}

/// One phase: a fault from `start` to `fault_end`, then traffic until `end` (times since
/// the start of the run).
struct Phase {
    fault: Fault,
    start: Duration,
    fault_end: Duration,
    end: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_over_failing_memcached_serves_only_right_bodies() {
    let test = "fault_soak::proxy_over_failing_memcached_serves_only_right_bodies";
    let mut a = memcached_or_skip!(test);
    let mut b = memcached_or_skip!(test);
    let soak = std::env::var("SOAK_SECS")
        .ok()
        .map(|secs| Duration::from_secs(secs.parse().expect("SOAK_SECS: seconds")));
    let origin = start_origin().await;
    let servers = format!("{},{}", a.addr(), b.addr());
    let proxy = start_proxy(origin, &["--memcache", &servers, "--threads", "2"]);

    let record = Arc::new(Record {
        start: Instant::now(),
        buckets: Mutex::new(Vec::new()),
        failures: Mutex::new((0, Vec::new())),
    });
    let stop = Arc::new(AtomicBool::new(false));
    // The short run takes about 20 s.
    let planned = soak.map_or(20, |soak| soak.as_secs().max(20));
    let mut clients = JoinSet::new();
    for index in 0..CLIENTS as u64 {
        clients.spawn(client(
            proxy.addr,
            index,
            planned * MAX_REQUESTS_PER_CLIENT_PER_SEC,
            Arc::clone(&record),
            Arc::clone(&stop),
        ));
    }

    let mut phases = Vec::new();
    let since = |at: Instant| at - record.start;
    let mut faults = vec![Fault::None];
    loop {
        faults.extend([
            Fault::Stopped,
            Fault::Killed,
            Fault::BothRestarted,
            Fault::Garbage,
        ]);
        for fault in faults.drain(..) {
            let start = since(Instant::now());
            inject(fault, &mut a, &mut b).await;
            let fault_end = since(Instant::now());
            tokio::time::sleep(AFTER).await;
            phases.push(Phase {
                fault,
                start,
                fault_end,
                end: since(Instant::now()),
            });
        }
        if soak.is_none_or(|soak| record.start.elapsed() >= soak) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = clients.join_next().await {
        joined.unwrap();
    }

    let buckets = record.buckets.lock().unwrap().clone();
    let in_range = |from: Duration, to: Duration| {
        let first = (from.as_millis() / BUCKET.as_millis()) as usize;
        let last = (to.as_millis() / BUCKET.as_millis()) as usize;
        buckets
            .iter()
            .enumerate()
            .filter(move |(i, _)| (first..last).contains(i))
    };
    let mut total = Bucket::default();
    let mut slowest_recovery = Duration::ZERO;
    let mut not_back = Vec::new();
    println!(
        "fault soak: {CLIENTS} clients over {URLS} URLs, 2 memcached, faults of {FAULT:?}, \
         {AFTER:?} after each"
    );
    println!("| phase | requests | hits | misses | max latency | caching back after |");
    println!("|---|---:|---:|---:|---:|---:|");
    for phase in &phases {
        let mut sum = Bucket::default();
        for (_, bucket) in in_range(phase.start, phase.end) {
            sum.requests += bucket.requests;
            sum.hits += bucket.hits;
            sum.max_latency = sum.max_latency.max(bucket.max_latency);
        }
        // The end of the first bucket, from the fault's end on, whose answers are mostly
        // hits.
        let back = in_range(phase.fault_end, phase.end)
            .find(|(_, bucket)| {
                bucket.requests >= 10 && bucket.hits as f64 >= BACK_RATIO * bucket.requests as f64
            })
            .map(|(i, _)| (BUCKET * (i as u32 + 1)).saturating_sub(phase.fault_end));
        let back_text = match back {
            Some(back) => format!("{} ms", back.as_millis()),
            None => "never".to_string(),
        };
        println!(
            "| {:?} | {} | {} | {} | {} ms | {back_text} |",
            phase.fault,
            sum.requests,
            sum.hits,
            sum.requests - sum.hits,
            sum.max_latency.as_millis(),
        );
        total.requests += sum.requests;
        total.hits += sum.hits;
        total.max_latency = total.max_latency.max(sum.max_latency);
        match back {
            Some(back) => slowest_recovery = slowest_recovery.max(back),
            None => not_back.push(phase.fault),
        }
    }
    let (failures, examples) = record.failures.lock().unwrap().clone();
    println!(
        "total: {} requests, {} hits, {} misses, max latency {} ms, caching back within {} ms, \
         {failures} failures, {:.1} s",
        total.requests,
        total.hits,
        total.requests - total.hits,
        total.max_latency.as_millis(),
        slowest_recovery.as_millis(),
        record.start.elapsed().as_secs_f64(),
    );
    let garbage = GARBAGE_REPLIES.load(Ordering::Relaxed);
    println!("garbage replies sent: {garbage}");
    assert!(garbage > 0, "the proxy never asked the garbage server");
    assert_eq!(
        failures, 0,
        "wrong bodies, statuses or latencies: {examples:#?}"
    );
    assert!(total.max_latency <= MAX_LATENCY, "{:?}", total.max_latency);
    assert!(
        not_back.is_empty(),
        "caching never came back after {not_back:?}"
    );
    assert!(
        slowest_recovery <= RECOVERY,
        "caching came back only {slowest_recovery:?} after a fault"
    );
    drop(proxy);
}
