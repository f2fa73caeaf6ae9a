//! A private memcached for one point of a sweep: started on a free loopback port with the
//! memory size asked for, killed when dropped.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of memcached's stderr is kept for an error message.
const STDERR_TAIL: usize = 4096;

/// A running memcached, killed on drop.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `binary -p PORT -l 127.0.0.1 -m MEMORY_MB -U 0 [-I ITEM_SIZE] [EXTRA...]` and
    /// waits until it accepts connections. `PORT` is `preferred` when it is free (the
    /// sweep gives each point's servers the ports of the point before: the client's
    /// ketama ring hashes `host:port`, so the same ports spread keys the same way), else
    /// any free port.
    pub async fn start(
        binary: &str,
        memory_mb: u64,
        item_size_kb: Option<u64>,
        extra: &[String],
        preferred: Option<u16>,
    ) -> Result<Self, String> {
        let mut last_error = String::new();
        let mut preferred = preferred.filter(|&port| port_is_free(port));
        // A port free a moment ago can be taken before memcached binds it: try again.
        for _ in 0..10 {
            let port = match preferred.take() {
                Some(port) => port,
                None => free_port()?,
            };
            match Self::spawn(binary, port, memory_mb, item_size_kb, extra).await {
                Ok(server) => return Ok(server),
                Err(Spawn::Fatal(message)) => return Err(message),
                Err(Spawn::Retry(message)) => last_error = message,
            }
        }
        Err(format!(
            "memcached did not start on a free port: {last_error}"
        ))
    }

    async fn spawn(
        binary: &str,
        port: u16,
        memory_mb: u64,
        item_size_kb: Option<u64>,
        extra: &[String],
    ) -> Result<Self, Spawn> {
        let mut command = Command::new(binary);
        command.args([
            "-p",
            &port.to_string(),
            "-l",
            "127.0.0.1",
            "-m",
            &memory_mb.to_string(),
            "-U",
            "0",
            // memcached refuses to run as root without `-u`, and ignores it otherwise.
            "-u",
            "root",
        ]);
        if let Some(kb) = item_size_kb {
            command.args(["-I", &format!("{kb}k")]);
        }
        command.args(extra);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            Spawn::Fatal(if e.kind() == std::io::ErrorKind::NotFound {
                not_installed(binary)
            } else {
                format!("cannot run {binary}: {e}")
            })
        })?;
        let stderr = drain(&mut child);

        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the reader thread take what memcached wrote before it exited.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let said = stderr
                    .lock()
                    .map(|tail| String::from_utf8_lossy(&tail).trim().to_string())
                    .unwrap_or_default();
                // "failed to listen" is a port someone took in between; anything else
                // (bad -m or -I, no such user) fails the same way every time.
                let message = format!("memcached on port {port} exited ({status}): {said}");
                return Err(if said.contains("listen") || said.contains("bind") {
                    Spawn::Retry(message)
                } else {
                    Spawn::Fatal(message)
                });
            }
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(Self { child, port });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(Spawn::Retry(format!(
            "memcached on port {port} did not accept connections within 5 s"
        )))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Spawn {
    Fatal(String),
    Retry(String),
}

fn not_installed(binary: &str) -> String {
    format!(
        "cannot run {binary:?}: memcached is not installed (or not on PATH). Install it \
         (Debian/Ubuntu: apt-get install memcached; macOS: brew install memcached), point \
         --memcached-bin at it, use running servers with --memcache HOST:PORT, or measure \
         without memcached with --backend memory"
    )
}

/// `memcached --version`, e.g. `memcached 1.6.18`.
pub fn version(binary: &str) -> Result<String, String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                not_installed(binary)
            } else {
                format!("cannot run {binary}: {e}")
            }
        })?;
    if !output.status.success() {
        return Err(format!("{binary} --version failed ({})", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Keeps the last [`STDERR_TAIL`] bytes of the child's stderr, read by a thread so that a
/// chatty memcached never blocks on a full pipe.
fn drain(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let tail = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut stderr) = child.stderr.take() {
        let tail = Arc::clone(&tail);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut tail) = tail.lock() {
                    tail.extend_from_slice(&chunk[..n]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL);
                    tail.drain(..excess);
                }
            }
        });
    }
    tail
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// The largest `stats <group>` reply read (a `stats slabs` of every class is a few KiB).
const MAX_STATS_REPLY: usize = 1 << 20;

/// `stats <group>` over a connection of its own (the crate's backend asks only plain
/// `stats`): `STAT name value` lines up to `END`, as name and value.
pub async fn stats_group(addr: &str, group: &str) -> Result<Vec<(String, String)>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        stream
            .write_all(format!("stats {group}\r\n").as_bytes())
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 8192];
        while !(reply.ends_with(b"END\r\n") || reply.ends_with(b"ERROR\r\n")) {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("connection closed before END".to_string());
            }
            if reply.len() + n > MAX_STATS_REPLY {
                return Err(format!("reply over {MAX_STATS_REPLY} bytes"));
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        Ok(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no reply within 2 s".to_string())
        .and_then(|r| r)
        .map_err(|e| format!("memcached {addr} stats {group}: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("STAT ")?.splitn(2, ' ');
            Some((parts.next()?.to_string(), parts.next()?.trim().to_string()))
        })
        .collect())
}
