//! nutcracker (twemproxy) on a free loopback port in front of memcached servers: what the
//! suites that run the client through a proxy (`interop.rs`, `merge_adversarial.rs`,
//! `review_mm.rs`) share.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Memcached, free_port, memcached_required};

/// A nutcracker process, killed and its config and log removed when dropped.
pub struct Nutcracker {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nutcracker {
    /// The installed binary (Debian puts it in /usr/sbin), or `None` after a skip line
    /// for `test`; with `MEMCACHED_REQUIRED=1` its absence fails the test instead.
    pub fn binary(test: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let binary = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join("nutcracker"))
            .find(|candidate| candidate.is_file());
        if binary.is_none() {
            assert!(
                !memcached_required(),
                "MEMCACHED_REQUIRED=1 but nutcracker is not installed (apt-get install -y nutcracker)"
            );
            eprintln!("SKIP {test}: nutcracker not installed");
        }
        binary
    }

    /// Starts nutcracker in front of `servers` (2 s per request), or `None` (after a
    /// skip line) when it is not installed.
    pub fn start(test: &str, servers: &[Memcached]) -> Option<Self> {
        Some(Self::start_with(
            &Self::binary(test)?,
            servers,
            Duration::from_secs(2),
        ))
    }

    /// Starts `binary` in front of `servers`, giving up on a server's reply after
    /// `timeout`.
    pub fn start_with(binary: &Path, servers: &[Memcached], timeout: Duration) -> Self {
        let servers: String = servers
            .iter()
            .map(|server| format!("    - {}:1\n", server.addr()))
            .collect();
        // A free port can be taken before nutcracker binds it; then it exits and we retry.
        let mut last_log = String::new();
        for _ in 0..5 {
            let (port, stats_port) = (free_port(), free_port());
            if port == stats_port {
                continue;
            }
            let dir = std::env::temp_dir().join(format!(
                "tower-memcache-nutcracker-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("nutcracker's directory");
            let conf = dir.join("nutcracker.yml");
            let log = dir.join("nutcracker.log");
            let config = format!(
                "pool:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  \
                 distribution: ketama\n  redis: false\n  auto_eject_hosts: false\n  \
                 timeout: {}\n  servers:\n{servers}",
                timeout.as_millis()
            );
            std::fs::write(&conf, config).expect("write nutcracker config");
            let child = Command::new(binary)
                .arg("-c")
                .arg(&conf)
                .arg("-o")
                .arg(&log)
                // Stats on loopback and a port of our own, not 0.0.0.0:22222.
                .args(["-a", "127.0.0.1", "-s", &stats_port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nutcracker");
            let mut proxy = Nutcracker { child, dir, port };
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && proxy.child.try_wait().unwrap().is_none() {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return proxy;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            drop(proxy);
        }
        panic!("nutcracker did not start; last log:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
