//! The `tower-memcache-proxy` binary as an operator runs it: its `--help`, its environment
//! variables, its access log and its graceful shutdown on SIGTERM. What it caches is tested
//! through it in `tests/reverse_proxy.rs` and the others that use `support::proxy`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::proxy::{proxy_binary, raw_request, spawn_listening};

/// Every flag, with the environment variable that also sets it.
const FLAGS: [(&str, &str); 27] = [
    ("--upstream", "TOWER_MEMCACHE_PROXY_UPSTREAM"),
    ("--namespace", "TOWER_MEMCACHE_PROXY_NAMESPACE"),
    ("--listen", "TOWER_MEMCACHE_PROXY_LISTEN"),
    ("--memcache", "TOWER_MEMCACHE_PROXY_MEMCACHE"),
    ("--mode", "TOWER_MEMCACHE_PROXY_MODE"),
    ("--ttl", "TOWER_MEMCACHE_PROXY_TTL"),
    (
        "--stale-if-unreachable",
        "TOWER_MEMCACHE_PROXY_STALE_IF_UNREACHABLE",
    ),
    ("--threads", "TOWER_MEMCACHE_PROXY_THREADS"),
    ("--runtime", "TOWER_MEMCACHE_PROXY_RUNTIME"),
    ("--upstream-host", "TOWER_MEMCACHE_PROXY_UPSTREAM_HOST"),
    (
        "--targeted-cache-control",
        "TOWER_MEMCACHE_PROXY_TARGETED_CACHE_CONTROL",
    ),
    ("--near-cache", "TOWER_MEMCACHE_PROXY_NEAR_CACHE"),
    ("--max-entry-size", "TOWER_MEMCACHE_PROXY_MAX_ENTRY_SIZE"),
    ("--cache-timeout", "TOWER_MEMCACHE_PROXY_CACHE_TIMEOUT"),
    (
        "--upstream-timeout",
        "TOWER_MEMCACHE_PROXY_UPSTREAM_TIMEOUT",
    ),
    ("--connect-timeout", "TOWER_MEMCACHE_PROXY_CONNECT_TIMEOUT"),
    (
        "--client-header-timeout",
        "TOWER_MEMCACHE_PROXY_CLIENT_HEADER_TIMEOUT",
    ),
    ("--shutdown-grace", "TOWER_MEMCACHE_PROXY_SHUTDOWN_GRACE"),
    ("--metrics", "TOWER_MEMCACHE_PROXY_METRICS"),
    ("--access-log", "TOWER_MEMCACHE_PROXY_ACCESS_LOG"),
    (
        "--access-log-query",
        "TOWER_MEMCACHE_PROXY_ACCESS_LOG_QUERY",
    ),
    ("--log-format", "TOWER_MEMCACHE_PROXY_LOG_FORMAT"),
    ("--max-connections", "TOWER_MEMCACHE_PROXY_MAX_CONNECTIONS"),
    (
        "--max-unsent-bytes",
        "TOWER_MEMCACHE_PROXY_MAX_UNSENT_BYTES",
    ),
    (
        "--underscores-in-headers",
        "TOWER_MEMCACHE_PROXY_UNDERSCORES_IN_HEADERS",
    ),
    (
        "--upstream-max-connections",
        "TOWER_MEMCACHE_PROXY_UPSTREAM_MAX_CONNECTIONS",
    ),
    (
        "--upstream-queue-timeout",
        "TOWER_MEMCACHE_PROXY_UPSTREAM_QUEUE_TIMEOUT",
    ),
];

/// A small origin on its own threads: `/slow` answers after 800 ms, everything else at
/// once; every answer is fresh for a minute. Counts the requests it got.
struct Origin {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        std::thread::spawn(move || {
            // Bounded: the test process ends long before this many connections.
            for stream in listener.incoming().take(1000) {
                let Ok(stream) = stream else { continue };
                let counted = Arc::clone(&counted);
                std::thread::spawn(move || answer(stream, &counted));
            }
        });
        Self { addr, calls }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Serves the requests of one connection until the client closes it.
fn answer(stream: TcpStream, calls: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        calls.fetch_add(1, Ordering::SeqCst);
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
        if path == "/slow" {
            std::thread::sleep(Duration::from_millis(800));
        }
        let body = if path == "/big" {
            "b".repeat(4096)
        } else {
            format!("origin {path}")
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The proxy in front of `origin`, configured by `env` alone, with its stdout piped.
fn spawn(env: &[(&str, String)]) -> (Child, SocketAddr) {
    spawn_listening(|addr| {
        let mut command = Command::new(proxy_binary());
        // Whatever the environment of the test run says, only ours counts.
        for (_, var) in FLAGS {
            command.env_remove(var);
        }
        command
            .env("TOWER_MEMCACHE_PROXY_LISTEN", addr.to_string())
            .env("TOWER_MEMCACHE_PROXY_THREADS", "1")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command
    })
}

/// Waits for `child` to exit, 10 s at most.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the proxy did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn help_documents_every_flag_its_variable_and_default() {
    let output = Command::new(proxy_binary()).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, var) in FLAGS {
        assert!(help.contains(flag), "--help does not mention {flag}");
        assert!(help.contains(var), "--help does not mention {var}");
    }
    // And the list is whole: a new flag is listed here, with its variable.
    for line in help.lines() {
        // A flag's own line is indented six spaces; its description more.
        let Some(flag) = line.strip_prefix("      --") else {
            continue;
        };
        let flag = format!("--{}", flag.split([' ', '\t']).next().unwrap_or(""));
        assert!(
            flag == "--help" || FLAGS.iter().any(|(listed, _)| *listed == flag),
            "{flag} is not in FLAGS"
        );
    }
    for default in [
        "[default: 127.0.0.1:3001]",
        "[default: origin]",
        "[default: 3600]",
        "[default: shared]",
        "[default: cdn-cache-control]",
        "[default: on]",
        "[default: off]",
        "[default: 1008K]",
        "[default: 100ms]",
        "[default: 60s]",
        "[default: 5s]",
        "[default: 10s]",
    ] {
        assert!(help.contains(default), "--help does not say {default}");
    }
}

/// Every flag from the environment: here the listen address, the origin and `--mode
/// routes`, whose fixed lifetime stores a response the origin did not mark (it did here,
/// so a second request is a hit either way; the point is that the values are read).
#[test]
fn flags_are_read_from_environment_variables() {
    let origin = Origin::start();
    let (mut child, addr) = spawn(&[
        (
            "TOWER_MEMCACHE_PROXY_UPSTREAM",
            format!("http://{}", origin.addr),
        ),
        ("TOWER_MEMCACHE_PROXY_MODE", "routes".into()),
        ("TOWER_MEMCACHE_PROXY_ACCESS_LOG", "off".into()),
    ]);
    let (status, response) = raw_request(addr, "GET /env HTTP/1.1\r\nHost: example.com\r\n");
    assert_eq!(status, 200, "{response}");
    assert!(response.ends_with("origin /env"), "{response}");
    let (status, response) = raw_request(addr, "GET /env HTTP/1.1\r\nHost: example.com\r\n");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("; hit"), "{response}");
    assert_eq!(origin.calls(), 1);
    // A bad value from the environment is refused like one on the command line.
    let output = Command::new(proxy_binary())
        .env("TOWER_MEMCACHE_PROXY_UPSTREAM", "https://example.com")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("only http://"));
    let _ = child.kill();
    let _ = child.wait();
    // `--access-log off`: nothing on stdout.
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(stdout, "");
}

/// RFC 9211 §2: the access log carries each response's cache outcome (its `Cache-Status`),
/// one line per request in nginx's `combined` format.
#[test]
fn rfc9211_2_access_log_lines_carry_the_cache_status() {
    let origin = Origin::start();
    let (mut child, addr) = spawn(&[(
        "TOWER_MEMCACHE_PROXY_UPSTREAM",
        format!("http://{}", origin.addr),
    )]);
    for _ in 0..2 {
        let (status, _) = raw_request(
            addr,
            "GET /logged?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: probe \"x\"\r\n",
        );
        assert_eq!(status, 200);
    }
    let (status, _) = raw_request(addr, "GET / HTTP/1.1\r\nHost: a/b\r\n");
    assert_eq!(status, 400);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    for line in &lines[..2] {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains(
                " +0000] \"GET /logged?q=1 HTTP/1.1\" 200 18 \"-\" \"probe \\x22x\\x22\" \""
            ),
            "{line}"
        );
    }
    assert!(
        lines[0].contains("\"tower-memcache; fwd=uri-miss; stored\""),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("\"tower-memcache; hit"), "{}", lines[1]);
    // Refused before the cache: no Cache-Status.
    assert!(lines[2].contains("\"GET / HTTP/1.1\" 400 "), "{}", lines[2]);
    assert!(lines[2].contains("\"-\" \"-\" \"-\" "), "{}", lines[2]);
}

/// A request hyper refuses before any service sees it (a head it cannot parse, one larger
/// than the proxy takes) is logged too, as nginx logs its 400s: an attacker probing for
/// request smuggling must not leave the access log empty.
#[test]
fn requests_refused_while_parsing_their_head_are_logged() {
    let origin = Origin::start();
    let (mut child, addr) = spawn(&[(
        "TOWER_MEMCACHE_PROXY_UPSTREAM",
        format!("http://{}", origin.addr),
    )]);
    let (status, _) = raw_request(addr, "GET / HTTP/1.1\r\nHost: example.com\r\nNo Colon\r\n");
    assert_eq!(status, 400);
    // More fields than hyper takes (100): small enough to be read whole before the answer.
    let many: String = (0..120).map(|n| format!("X-F{n}: 1\r\n")).collect();
    let (status, _) = raw_request(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: example.com\r\n{many}"),
    );
    assert_eq!(status, 431);
    let (status, _) = raw_request(addr, "GET /after HTTP/1.1\r\nHost: example.com\r\n");
    assert_eq!(status, 200);
    // Read on a thread of its own: a line never written must fail the test, not hang it.
    let stdout = child.stdout.take().unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let lines: Vec<String> = (0..3)
        .map_while(|_| received.recv_timeout(Duration::from_secs(10)).ok())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let refused: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("\"-\" 4"))
        .collect();
    assert_eq!(refused.len(), 2, "{lines:?}");
    for (line, status) in refused.iter().zip(["400", "431"]) {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains(&format!("] \"-\" {status} 0 \"-\" \"-\" \"-\" ")),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains("\"GET /after HTTP/1.1\" 200 ")),
        "{lines:?}"
    );
    assert_eq!(origin.calls(), 1);
}

/// SIGTERM, what systemd and container runtimes send: the proxy stops accepting, lets the
/// request in progress finish, and exits 0, in both runtime modes.
#[cfg(unix)]
#[test]
fn sigterm_finishes_open_requests_then_exits_cleanly() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    for runtime in ["per-thread", "shared"] {
        let origin = Origin::start();
        let (mut child, addr) = spawn(&[
            (
                "TOWER_MEMCACHE_PROXY_UPSTREAM",
                format!("http://{}", origin.addr),
            ),
            ("TOWER_MEMCACHE_PROXY_RUNTIME", runtime.into()),
            ("TOWER_MEMCACHE_PROXY_ACCESS_LOG", "off".into()),
        ]);
        let slow = std::thread::spawn(move || {
            raw_request(addr, "GET /slow HTTP/1.1\r\nHost: example.com\r\n")
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while origin.calls() == 0 {
            assert!(
                Instant::now() < deadline,
                "{runtime}: /slow never reached the origin"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let (status, response) = slow.join().unwrap();
        assert_eq!(status, 200, "{runtime}: {response}");
        assert!(response.ends_with("origin /slow"), "{runtime}: {response}");
        let exit = wait_exit(&mut child);
        assert!(exit.success(), "{runtime}: {exit}");
        assert!(
            TcpStream::connect(addr).is_err(),
            "{runtime}: still listening"
        );
    }
}

/// `--near-cache`: the third request for a page is answered from the proxy's memory
/// (`detail=near`), even once memcached lost it, and a POST through the proxy (an
/// invalidation) takes it out at once. Over the in-process store and over memcached.
#[test]
fn near_cache_answers_hot_pages_and_forgets_what_the_proxy_invalidates() {
    let origin = Origin::start();
    let server = support::Memcached::start("proxy_binary::near_cache");
    let memcache = server.as_ref().map(|server| server.addr().to_string());
    let mut args = vec!["--near-cache", "1M,30s"];
    if let Some(memcache) = &memcache {
        args.extend(["--memcache", memcache.as_str()]);
    }
    let proxy = support::proxy::start_proxy(origin.addr, &args);
    let get = || raw_request(proxy.addr, "GET /hot HTTP/1.1\r\nHost: example.com\r\n");
    let statuses: Vec<String> = (0..3)
        .map(|_| {
            let (status, response) = get();
            assert_eq!(status, 200, "{response}");
            // The store is in the background: let it land before the next request.
            std::thread::sleep(Duration::from_millis(100));
            cache_status(&response)
        })
        .collect();
    assert_eq!(
        statuses,
        [
            "tower-memcache; fwd=uri-miss; stored",
            "tower-memcache; hit",
            "tower-memcache; hit; detail=near"
        ]
    );
    if let Some(server) = &server {
        server.flush_all();
        assert_eq!(cache_status(&get().1), "tower-memcache; hit; detail=near");
    }
    assert_eq!(origin.calls(), 1);
    let (status, _) = raw_request(
        proxy.addr,
        "POST /hot HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(
        cache_status(&get().1),
        "tower-memcache; fwd=uri-miss; stored"
    );
}

/// `--upstream-timeout`: an origin slower than it gets the client a 504 in about that
/// time; `--max-entry-size`: a larger body is passed through, never stored.
#[test]
fn upstream_timeout_and_max_entry_size_are_obeyed() {
    let origin = Origin::start();
    let proxy = support::proxy::start_proxy(
        origin.addr,
        &["--upstream-timeout", "300ms", "--max-entry-size", "1K"],
    );
    let started = Instant::now();
    let (status, response) = raw_request(proxy.addr, "GET /slow HTTP/1.1\r\nHost: example.com\r\n");
    assert_eq!(status, 504, "{response}");
    assert!(
        started.elapsed() < Duration::from_millis(790),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..2 {
        let (status, response) =
            raw_request(proxy.addr, "GET /big HTTP/1.1\r\nHost: example.com\r\n");
        assert_eq!(status, 200);
        assert!(response.ends_with(&"b".repeat(4096)));
        assert!(!cache_status(&response).contains("; hit"), "{response}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cache_status(response: &str) -> String {
    response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("cache-status")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}
