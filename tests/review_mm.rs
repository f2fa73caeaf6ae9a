//! Review MM: the memcache client API (`MemcacheClient`) and the TCP backend's public
//! surface, attacked: hostile keys, names and values, twemproxy in front, servers that
//! misbehave, and the bounds of one connection.
#![cfg(feature = "tcp")]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_memcache::MemcacheClient;
use tower_memcache::backend::{Backend, BackendError, TcpBackend};

/// Bounds every test: none may hang.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 60 s"))
}

/// nutcracker on a free loopback port in front of memcached servers, killed when dropped
/// (as in `merge_adversarial.rs`).
struct Nutcracker {
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
    /// Starts nutcracker, or `None` (after a skip line) when it is not installed.
    fn start(servers: &[support::Memcached]) -> Option<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let binary = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join("nutcracker"))
            .find(|candidate| candidate.is_file());
        let Some(binary) = binary else {
            assert!(
                !support::memcached_required(),
                "MEMCACHED_REQUIRED=1 but nutcracker is not installed (apt-get install -y nutcracker)"
            );
            eprintln!("SKIP review_mm: nutcracker not installed");
            return None;
        };
        for _ in 0..5 {
            let (port, stats_port) = (support::free_port(), support::free_port());
            if port == stats_port {
                continue;
            }
            let dir = std::env::temp_dir().join(format!(
                "tower-memcache-review-mm-nutcracker-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let servers: String = servers
                .iter()
                .map(|server| format!("    - {}:1\n", server.addr()))
                .collect();
            let conf = dir.join("nutcracker.yml");
            std::fs::write(
                &conf,
                format!(
                    "mm:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  \
                     distribution: ketama\n  redis: false\n  auto_eject_hosts: false\n  \
                     timeout: 2000\n  servers:\n{servers}"
                ),
            )
            .unwrap();
            let mut child = Command::new(&binary)
                .arg("-c")
                .arg(&conf)
                .arg("-o")
                .arg(dir.join("nutcracker.log"))
                .args(["-a", "127.0.0.1", "-s", &stats_port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Some(Nutcracker { child, dir, port });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("nutcracker did not start");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A backend through twemproxy: the defaults (failure threshold 3) but one connection, so
/// that every call shares it.
fn through(proxy: &Nutcracker) -> TcpBackend {
    TcpBackend::builder()
        .server(proxy.addr())
        .connections_per_server(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// twemproxy
// ---------------------------------------------------------------------------------------

/// nutcracker 0.5 closes a client connection on `stats` and `flush_all` (it supports
/// neither), dropping the replies of every request pipelined with them. A status page
/// calling `MemcacheClient::stats`, or an admin action calling `invalidate_all`, a few
/// times must not mark the proxy down (every lookup failing fast, and the keys registered
/// with `reset_on_rejoin`, versioned namespaces' epochs and the layer's generations,
/// deleted when it is back: the whole cache orphaned), nor fail the gets sharing the
/// connection. Each says clearly that the server does not support it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_flush_all_through_twemproxy_fail_clearly_and_cost_nothing() {
    let Some(memcached) = support::Memcached::start("review_mm::twemproxy_admin") else {
        return;
    };
    let Some(proxy) = Nutcracker::start(std::slice::from_ref(&memcached)) else {
        return;
    };
    bounded("twemproxy admin", async {
        let backend = through(&proxy);
        let client = MemcacheClient::new(backend.clone())
            .with_namespace("users")
            .with_versioned_namespace(true);
        client.set("alice", &1u32).await;
        assert_eq!(client.query::<u32>("alice").await, Some(1));
        for round in 0..5 {
            let stats = client.try_stats().await;
            assert!(stats.is_err(), "round {round}: {stats:?}");
            let flushed = client.try_invalidate_all().await;
            assert!(flushed.is_err(), "round {round}: {flushed:?}");
            // Gets on the same connection meanwhile.
            let (got, _, _) = tokio::join!(
                client.try_query::<u32>("alice"),
                client.try_stats(),
                client.try_query::<u32>("alice"),
            );
            assert_eq!(got.unwrap(), Some(1), "round {round}");
        }
        assert!(!backend.is_server_down(0), "the proxy was marked down");
        assert_eq!(backend.outages(), 0);
        // Nothing was reset: the versioned namespace still finds its value.
        assert_eq!(client.query::<u32>("alice").await, Some(1));
        let refused = backend.flush_all().await;
        assert!(
            matches!(refused, Err(BackendError::Unsupported { command: "flush_all", .. })),
            "{refused:?}"
        );
        let refused = backend.stats().await;
        assert!(
            matches!(refused, Err(BackendError::Unsupported { command: "stats", .. })),
            "{refused:?}"
        );
        assert!(client.stats().await.is_empty());
    })
    .await;
}
