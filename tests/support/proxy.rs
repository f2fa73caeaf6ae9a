//! The `tower-memcache-proxy` binary as a child process, and a raw HTTP/1.1 client for requests
//! a real client would not send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The proxy binary, killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tower-memcache-proxy` binary with this test's features. `cargo test` builds it
/// when the `proxy` feature is on (`--all-features`); otherwise it is built here, once per
/// test process, since a binary left from an earlier build (or by another feature set)
/// would test old code.
pub fn proxy_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| match option_env!("CARGO_BIN_EXE_tower-memcache-proxy") {
            // Cargo names the path even when `required-features` kept it from building
            // the binary: trusted only when the `proxy` feature is on.
            Some(built) if cfg!(feature = "proxy") => PathBuf::from(built),
            _ => build_binary(),
        })
        .clone()
}

fn build_binary() -> PathBuf {
    // target/<profile>/deps/<test>-<hash> → target/<profile>/tower-memcache-proxy
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let mut features = vec!["proxy"];
    if cfg!(feature = "axum") {
        features.push("axum");
    }
    if cfg!(feature = "metrics") {
        features.push("metrics");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--bin", "tower-memcache-proxy"])
        .args(["--no-default-features", "--features", &features.join(",")]);
    if profile_dir.ends_with("release") {
        command.arg("--release");
    }
    let status = command.status().expect("run cargo build --bin");
    assert!(
        status.success(),
        "cargo build --bin tower-memcache-proxy failed"
    );
    let binary = profile_dir.join(format!(
        "tower-memcache-proxy{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(binary.exists(), "{} not built", binary.display());
    binary
}

/// The proxy in front of `upstream`, on one thread unless `args` say otherwise.
pub fn start_proxy(upstream: SocketAddr, args: &[&str]) -> Proxy {
    let (child, addr) = spawn_listening(|addr| proxy_command(addr, upstream, args));
    Proxy { child, addr }
}

/// [`start_proxy`] with `--metrics` on a port of its own, which is returned: chosen anew
/// with the listening port whenever the proxy has to be started again (see
/// [`spawn_listening`]), as either port may have been taken meanwhile.
pub fn start_proxy_with_metrics(upstream: SocketAddr, args: &[&str]) -> (Proxy, SocketAddr) {
    let metrics = std::cell::Cell::new(None);
    let (child, addr) = spawn_listening(|addr| {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        metrics.set(Some(metrics_addr));
        let mut command = proxy_command(addr, upstream, args);
        command.args(["--metrics", &metrics_addr.to_string()]);
        command
    });
    let metrics = metrics.get().expect("spawn_listening ran the command");
    (Proxy { child, addr }, metrics)
}

/// [`start_proxy`] with its access log on (`args` may add to it), and its lines as they
/// are written: read on a thread of its own, so that a test waiting for a line never
/// written fails at its own timeout rather than hanging.
pub fn start_proxy_with_log(
    upstream: SocketAddr,
    args: &[&str],
) -> (Proxy, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;

    let (mut child, addr) = spawn_listening(|addr| {
        let mut command = proxy_command(addr, upstream, &[]);
        // A flag given twice takes the last value: this one turns the log on again.
        command
            .args(["--access-log", "on"])
            .args(args)
            .stdout(Stdio::piped());
        command
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (Proxy { child, addr }, lines)
}

/// The proxy on `addr` in front of `upstream`, on one thread unless `args` say otherwise,
/// its output discarded.
fn proxy_command(addr: SocketAddr, upstream: SocketAddr, args: &[&str]) -> Command {
    let mut command = Command::new(proxy_binary());
    command
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            &format!("http://{upstream}"),
            "--threads",
            "1",
            "--access-log",
            "off",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Spawns the command `command(addr)` builds, which is to listen on `addr`, and waits until
/// it does. `free_port` frees its port before the child binds it, and a parallel test may
/// take it meanwhile: the child then exits at once (the probe below may even reach the
/// other test's listener). A child that exits while starting is started again on another
/// port, five ports at most.
pub fn spawn_listening(mut command: impl FnMut(SocketAddr) -> Command) -> (Child, SocketAddr) {
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let mut child = command(addr).spawn().unwrap();
        if listening(&mut child, addr) {
            return (child, addr);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("the child did not start listening (five ports tried)");
}

/// Whether `child` came to listen on `addr` (20 s at most) and is still running.
fn listening(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A port taken by another listener answers the probe while this child fails to bind
    // it: such a child has exited by now.
    std::thread::sleep(Duration::from_millis(100));
    matches!(child.try_wait(), Ok(None))
}

/// Sends `head` (request line and header lines, each ending in CRLF, without the blank
/// line) as is, with `Connection: close`, and returns the status code and the whole
/// response as text. Blocking, 5 s at most.
pub fn raw_request(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    (status, response)
}

/// Sends `head` (request line and fields, each ending in CRLF) as is, from a socket bound
/// to the loopback address `from`, with `Connection: close`; the status and the body. 5 s
/// at most.
pub async fn raw_from(from: &str, proxy: &Proxy, head: &str) -> (u16, String) {
    let response = raw_text_from(from, proxy, head).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string());
    (status, body)
}

/// [`raw_from`] 127.0.0.1, the whole response as text.
pub async fn raw_text(proxy: &Proxy, head: &str) -> String {
    raw_text_from("127.0.0.1", proxy, head).await
}

async fn raw_text_from(from: &str, proxy: &Proxy, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    stream
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the proxy answered within 5 s")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// [`raw_from`] 127.0.0.1.
pub async fn raw(proxy: &Proxy, head: &str) -> (u16, String) {
    raw_from("127.0.0.1", proxy, head).await
}

/// Retries `head` (for 3 s at most) until the proxy answers it from its cache (stores run
/// in the background); the body.
pub async fn until_cached(proxy: &Proxy, head: &str) -> String {
    let head = format!("{head}Cache-Control: only-if-cached\r\n");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = raw(proxy, &head).await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "never stored: {head:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `child` to exit, `limit` at most; `None` if it is still running then (it is
/// killed). A refused flag exits at once; one taken leaves the proxy serving.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `command` (stdout to nowhere, stderr read) and waits `limit` at most for it to
/// exit: its exit status and stderr, or `None` when it went on running (killed).
pub fn exit_of(
    command: &mut Command,
    limit: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let status = exit_within(&mut child, limit);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    status.map(|status| (status, stderr))
}

/// The proxy to start with `args` after an upstream nobody answers on, a free port and
/// one thread: for flags refused (or taken) at startup.
pub fn startup_command(args: &[&str]) -> Command {
    let mut command = Command::new(proxy_binary());
    command
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--threads", "1"])
        .args(args);
    command
}
