//! Review LL: the reverse proxy as operators run it, attacked: its access log, its
//! `--metrics` listener, its connection bounds and signals.

#![cfg(feature = "proxy")]

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::proxy::{proxy_binary, spawn_listening};

/// The proxy's child process, killed when dropped, with its stdout (the access log) read
/// line by line on a thread of its own.
struct Logged {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Logged {
    /// The proxy in front of `origin`, one thread, its access log on.
    fn start(origin: SocketAddr, args: &[&str]) -> Self {
        let (mut child, addr) = spawn_listening(|addr| {
            let mut command = Command::new(proxy_binary());
            command
                .args(["--upstream", &format!("http://{origin}")])
                .args(["--listen", &addr.to_string(), "--threads", "1"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            command
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, addr, lines }
    }

    /// The next access log line, 10 s at most.
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an access log line within 10 s")
    }
}

/// Reads one request head from `stream` (and nothing past it), 5 s at most.
fn read_head(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends `head` (with `Connection: close`) and reads the whole answer, 5 s at most.
fn request(addr: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// An origin that reflects a request's `X-Reflect` field as its `Cache-Status` (an origin
/// behind a cache of its own, or one echoing request headers), fresh for a minute.
/// Serves `connections` connections, one request each.
fn reflecting_origin(connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let head = read_head(&mut stream);
            let reflected = head
                .lines()
                .find_map(|line| line.strip_prefix("x-reflect: "))
                .unwrap_or("")
                .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nCache-Status: {reflected}\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    addr
}

/// The access log's last field is what this proxy did, whatever the origin's
/// `Cache-Status` says. An origin that reflects a request field (or sits behind a cache
/// of its own) puts members in `Cache-Status` that the proxy keeps for its client (RFC
/// 9211 §2: the last member is the cache nearest the user); the log wrote the whole
/// field, so a client sending `X-Reflect: tower-memcache; hit` had every miss it caused
/// logged as starting with "tower-memcache; hit", and a log-based hit ratio counted it.
#[test]
fn an_origins_cache_status_never_speaks_for_the_proxy_in_the_access_log() {
    let origin = reflecting_origin(4);
    let proxy = Logged::start(origin, &[]);
    let response = request(
        proxy.addr,
        "GET /page HTTP/1.1\r\nHost: example.com\r\nX-Reflect: tower-memcache; hit\r\n",
    );
    // The client still reads every member, the proxy's last.
    assert!(
        response.contains("cache-status: tower-memcache; hit, tower-memcache; fwd=uri-miss"),
        "{response}"
    );
    let line = proxy.next_line();
    assert!(
        line.contains("\"GET /page HTTP/1.1\" 200 2 ")
            && line.contains(" \"tower-memcache; fwd=uri-miss; stored\" "),
        "the log line must carry the proxy's outcome alone: {line}"
    );
    // A POST the cache does not store, with a forged member.
    let response = request(
        proxy.addr,
        "POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nX-Reflect: tower-memcache; hit\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let line = proxy.next_line();
    assert!(
        line.contains(" \"tower-memcache; fwd=method\" "),
        "the log line must carry the proxy's outcome alone: {line}"
    );
}

/// A request whose client hangs up before the response head is logged (nginx's 499),
/// not left out. Before, the line was written only when the head was ready, so a client
/// could send requests to the origin (a `DELETE`, a costly search) and leave no trace in
/// the access log by closing its connection first.
#[test]
fn a_request_its_client_abandons_is_still_logged() {
    // An origin that reads a request, says so, and answers nothing until the test ends.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    let (received, arrived) = mpsc::channel();
    let (release, held) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let head = read_head(&mut stream);
        let _ = received.send(head);
        // Held until the test ends (its sender dropped), 30 s at most.
        let _ = held.recv_timeout(Duration::from_secs(30));
    });
    let proxy = Logged::start(origin, &[]);
    let mut client = TcpStream::connect(proxy.addr).unwrap();
    client
        .write_all(b"DELETE /account/7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: quiet\r\n\r\n")
        .unwrap();
    let head = arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the origin");
    assert!(head.starts_with("DELETE /account/7 "), "{head}");
    drop(client);
    let line = proxy.next_line();
    assert!(
        line.starts_with("127.0.0.1 - - [")
            && line.contains("\"DELETE /account/7 HTTP/1.1\" 499 - \"-\" \"quiet\" \"-\" "),
        "{line}"
    );
    drop(release);
}

/// The `--metrics` listener is bounded as the main one is: a client that opens
/// connections to it and sends nothing is closed after `--client-header-timeout`, and a
/// few such connections at once are all it holds (the rest wait in the listen backlog).
/// Before, the exporter's own listener accepted every connection and kept it forever
/// (no header timeout, no limit): anyone who could reach the metrics port (a Prometheus
/// port is often open to a whole cluster) could use up the process's file descriptors,
/// and the proxy then accepted no client at all.
#[cfg(all(unix, feature = "metrics"))]
#[test]
fn idle_metrics_connections_cannot_starve_the_proxy_of_file_descriptors() {
    const IDLE: usize = 200;
    let origin = reflecting_origin(2);
    let metrics_addr = std::cell::Cell::new(None);
    // 128 open files: a proxy that accepts every metrics connection runs out.
    let (child, addr) = spawn_listening(|addr| {
        let metrics: SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        metrics_addr.set(Some(metrics));
        let mut command = Command::new("sh");
        command
            .args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
            .arg(proxy_binary())
            .args(["--upstream", &format!("http://{origin}")])
            .args(["--listen", &addr.to_string(), "--threads", "1"])
            .args(["--metrics", &metrics.to_string()])
            .args(["--client-header-timeout", "2s", "--access-log", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    });
    let mut proxy = support::proxy::Proxy { child, addr };
    let metrics = metrics_addr.get().expect("spawn_listening ran the command");
    // A scrape works.
    let scrape = request(metrics, "GET /metrics HTTP/1.1\r\nHost: m\r\n");
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // Give the proxy time to accept what it will (the test asserts only the outcome).
    std::thread::sleep(Duration::from_millis(500));
    let response = request(addr, "GET /after HTTP/1.1\r\nHost: example.com\r\n");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "a client of the proxy was not answered while {IDLE} idle metrics connections were open: {response:?}"
    );
    // An idle metrics connection is closed: the first one, within the header timeout
    // (2 s) and a wide margin.
    let mut first = idle.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = first.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|err| err.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle metrics connection was kept open for {:?}: {read:?}",
        started.elapsed()
    );
    let _ = proxy.child.kill();
}

/// SIGHUP (a closed terminal, an operator's nginx habit of `kill -HUP` to reload, a log
/// rotation script) neither kills the proxy nor cuts the request under way: the proxy has
/// nothing to reload, says so and goes on. Before, SIGHUP's default action ended the
/// process at once, the response in flight cut off and (without memcached) the whole
/// cache lost.
#[cfg(unix)]
#[test]
fn sighup_cuts_no_request_and_ends_no_proxy() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    // An origin that answers its first request once told to, and the others at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    let (received, arrived) = mpsc::channel();
    let (release, mut held) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let answer = |mut stream: TcpStream| {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
            );
        };
        let mut first = true;
        for stream in listener.incoming().take(3) {
            let Ok(mut stream) = stream else { continue };
            let _ = read_head(&mut stream);
            if std::mem::take(&mut first) {
                let _ = received.send(());
                let held = std::mem::replace(&mut held, mpsc::channel().1);
                std::thread::spawn(move || {
                    let _ = held.recv_timeout(Duration::from_secs(20));
                    answer(stream);
                });
            } else {
                answer(stream);
            }
        }
    });
    let proxy = Logged::start(origin, &["--access-log", "off"]);
    let addr = proxy.addr;
    let in_flight =
        std::thread::spawn(move || request(addr, "GET /long HTTP/1.1\r\nHost: example.com\r\n"));
    arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the origin");
    let pid = Pid::from_raw(i32::try_from(proxy.child.id()).unwrap());
    kill(pid, Signal::SIGHUP).unwrap();
    // Sent, not yet handled, at worst: a request after it shows the proxy is still there.
    let after = request(addr, "GET /after HTTP/1.1\r\nHost: example.com\r\n");
    release.send(()).unwrap();
    let response = in_flight.join().unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("done"),
        "the request in flight was cut by SIGHUP: {response:?}"
    );
    assert!(
        after.starts_with("HTTP/1.1 200") && after.ends_with("done"),
        "the proxy stopped answering after SIGHUP: {after:?}"
    );
}
