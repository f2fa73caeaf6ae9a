//! `examples/reverse_proxy.rs` as a child process, and a raw HTTP/1.1 client for requests
//! a real client would not send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The example binary, killed when dropped.
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

/// The example binary, built once per test process: `cargo test --test X` builds no
/// examples, and a binary left from an earlier build would test old code.
pub fn example_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_example).clone()
}

fn build_example() -> PathBuf {
    // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/reverse_proxy
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let mut features = Vec::new();
    if cfg!(feature = "tcp") {
        features.push("tcp");
    }
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
        .args(["build", "--quiet", "--example", "reverse_proxy"])
        .args(["--no-default-features", "--features", &features.join(",")]);
    if profile_dir.ends_with("release") {
        command.arg("--release");
    }
    let status = command.status().expect("run cargo build --example");
    assert!(
        status.success(),
        "cargo build --example reverse_proxy failed"
    );
    let binary = profile_dir
        .join("examples")
        .join(format!("reverse_proxy{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} not built", binary.display());
    binary
}

/// The proxy in front of `upstream`, on one thread unless `args` say otherwise.
pub fn start_proxy(upstream: SocketAddr, args: &[&str]) -> Proxy {
    let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
    let child = Command::new(example_binary())
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            &format!("http://{upstream}"),
            "--threads",
            "1",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = Proxy { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy
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
