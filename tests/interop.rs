//! TcpBackend against software nobody here wrote: pylibmc (libmemcached) sharing a pool in
//! both directions, and twemproxy (nutcracker) as a proxy in front of two servers.
//!
//! Missing tools skip the tests with a `SKIP interop:` line, unless `MEMCACHED_REQUIRED=1`
//! (CI), where they fail instead.

#![cfg(feature = "tcp")]

mod support;

use support::nutcracker::Nutcracker;

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{Memcached, memcached_required};
use tower_memcache::backend::{Backend, Lifetime, TcpBackend};

/// Debian's python3-pylibmc is built for the system interpreter only; a `python3` earlier on
/// PATH (pyenv) does not have it.
const PYTHON: &str = "/usr/bin/python3";

/// Upper bound for a whole test; they normally take well under a second.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

/// Upper bound for one child process (a Python run, nutcracker's start).
const PROCESS_DEADLINE: Duration = Duration::from_secs(10);

/// Keys per direction (besides one empty and one large value).
const KEYS: usize = 200;

/// Reads `key<TAB>hex-value` lines (`set`) or `key` lines (`get`) on stdin.
/// `get` prints `key<TAB>hex-value`, or `key<TAB>MISSING` / `key<TAB>NOT-BYTES type`.
/// Values are `bytes`, which pylibmc stores with flags 0; a `str` would get flags 16
/// (pylibmc's text flag) and come back decoded.
const PYLIBMC_SCRIPT: &str = r#"
import sys
import pylibmc

servers, mode = sys.argv[1].split(","), sys.argv[2]
mc = pylibmc.Client(
    servers,
    binary=False,
    behaviors={"ketama_weighted": True, "connect_timeout": 2000},
)
b = mc.behaviors
# ketama_weighted is libmemcached's weighted ketama with MD5 for keys and points, the
# distribution TcpBackend implements; make sure nothing else is in effect.
expected = {
    "distribution": "consistent weighted",
    "hash": "md5",
    "ketama_hash": pylibmc.hashers["md5"],
    "ketama_weighted": 1,
    "_sort_hosts": 0,
    "_hash_with_prefix_key": 0,
    "remove_failed": 0,
    "auto_eject": 0,
}
wrong = {k: b[k] for k, v in expected.items() if b[k] != v}
if wrong:
    sys.exit("unexpected pylibmc behaviors: %r" % wrong)
# "host:port:weight" must really carry the weight down to libmemcached.
weights = [int(s.rsplit(":", 1)[1]) for s in servers]
specs = pylibmc.client.translate_server_specs(servers)
if [spec[3] for spec in specs] != weights:
    sys.exit("weights not parsed: %r" % specs)

for line in sys.stdin.read().splitlines():
    if mode == "set":
        key, value = line.split("\t")
        if not mc.set(key, bytes.fromhex(value)):
            sys.exit("pylibmc set failed for " + key)
    else:
        value = mc.get(line)
        if value is None:
            print(line + "\tMISSING")
        elif not isinstance(value, bytes):
            print(line + "\tNOT-BYTES " + type(value).__name__)
        else:
            print(line + "\t" + value.hex())
"#;

/// Runs `test` under [`TEST_DEADLINE`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("interop test exceeded its deadline");
}

/// Prints the skip line, or fails when the environment demands every tool.
fn skip_or_fail(what: &str, install: &str) {
    assert!(
        !memcached_required(),
        "interop: MEMCACHED_REQUIRED=1 but {what} ({install})"
    );
    eprintln!("SKIP interop: {what} ({install})");
}

fn pylibmc_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import pylibmc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `name` on PATH, or in the sbin directories a non-root PATH often lacks.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
struct ChildGuard(Child);

impl ChildGuard {
    /// Waits for the process to exit; `None` once `deadline` has passed.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd-length hex {hex:?}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Keys and values for one direction: mostly `value-N`, some with bytes a careless
/// text-protocol parser would trip on, one empty value and one spanning many reads.
fn data_set(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut data: Vec<(String, Vec<u8>)> = (0..KEYS)
        .map(|i| {
            let mut value = format!("value-{i}").into_bytes();
            if i % 7 == 0 {
                value.extend_from_slice(b"\r\nEND\r\nVALUE x 0 1\r\n");
            }
            if i % 11 == 0 {
                value.extend_from_slice(&[0, 0xff, 0x80, b' ', b'\n']);
            }
            (format!("{prefix}-{i}"), value)
        })
        .collect();
    data.push((format!("{prefix}-empty"), Vec::new()));
    data.push((
        format!("{prefix}-large"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect(),
    ));
    data
}

/// Runs [`PYLIBMC_SCRIPT`] with `servers` (`host:port:weight`) in `mode`, feeding `input` on
/// stdin; returns stdout. Bounded by [`PROCESS_DEADLINE`].
fn run_pylibmc(servers: &[String], mode: &str, input: String) -> String {
    let mut child = ChildGuard(
        Command::new(PYTHON)
            .arg("-c")
            .arg(PYLIBMC_SCRIPT)
            .arg(servers.join(","))
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn /usr/bin/python3"),
    );
    // Separate threads for the pipes: Python may fill stdout before it has read all of stdin.
    let mut stdin = child.0.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut stdout = child.0.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let mut stderr = child.0.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out);
        out
    });
    let status = child
        .wait_until(Instant::now() + PROCESS_DEADLINE)
        .unwrap_or_else(|| panic!("pylibmc {mode} did not finish in {PROCESS_DEADLINE:?}"));
    let stderr = errors.join().expect("stderr thread");
    assert!(
        status.success(),
        "pylibmc {mode} failed ({status}): {stderr}"
    );
    writer
        .join()
        .expect("stdin thread")
        .expect("write to python");
    reader
        .join()
        .expect("stdout thread")
        .expect("read python output")
}

/// [`run_pylibmc`] off the async runtime.
async fn pylibmc(servers: &[String], mode: &'static str, input: String) -> String {
    let servers = servers.to_vec();
    tokio::task::spawn_blocking(move || run_pylibmc(&servers, mode, input))
        .await
        .expect("pylibmc run panicked")
}

/// A backend with room for a loaded CI machine; the defaults (100 ms) are for production.
fn tcp_builder() -> tower_memcache::backend::tcp::TcpBackendBuilder {
    TcpBackend::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
}

/// One backend per server, each talking to that server alone.
fn direct_backends(addrs: &[String]) -> Vec<TcpBackend> {
    addrs
        .iter()
        .map(|addr| tcp_builder().server(addr.clone()).build().unwrap())
        .collect()
}

/// The indices of the servers that hold `key`, asked one server at a time.
async fn holders(direct: &[TcpBackend], key: &str) -> Vec<usize> {
    let mut found = Vec::new();
    for (index, backend) in direct.iter().enumerate() {
        if backend.get(key).await.unwrap().is_some() {
            found.push(index);
        }
    }
    found
}

/// Both directions between pylibmc and TcpBackend over three servers with these weights.
async fn pylibmc_round_trip(test: &str, weights: [u32; 3]) {
    if !pylibmc_available() {
        skip_or_fail(
            "python3-pylibmc not installed",
            "apt-get install -y python3-pylibmc",
        );
        return;
    }
    let servers = [
        memcached_or_skip!(test),
        memcached_or_skip!(test),
        memcached_or_skip!(test),
    ];
    let addrs: Vec<String> = servers.iter().map(Memcached::addr).collect();
    // pylibmc's server strings carry the weight as a third field: "host:port:weight".
    let specs: Vec<String> = addrs
        .iter()
        .zip(weights)
        .map(|(addr, weight)| format!("{addr}:{weight}"))
        .collect();
    let mut builder = tcp_builder();
    for (addr, weight) in addrs.iter().zip(weights) {
        builder = builder.weighted_server(addr.clone(), weight);
    }
    let pool = builder.build().unwrap();
    assert_eq!(pool.server_names(), addrs);

    // pylibmc stores, TcpBackend reads.
    let from_python = data_set("interop-py");
    let input: String = from_python
        .iter()
        .map(|(key, value)| format!("{key}\t{}\n", to_hex(value)))
        .collect();
    pylibmc(&specs, "set", input).await;
    for (key, value) in &from_python {
        let item = pool
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("TcpBackend misses {key} stored by pylibmc"));
        assert_eq!(item.value, value[..], "{key}");
        assert_eq!(item.flags, 0, "{key}");
    }
    let keys: Vec<&str> = from_python.iter().map(|(key, _)| key.as_str()).collect();
    let many = pool.get_many(&keys).await.unwrap();
    assert_eq!(many.len(), from_python.len());
    for (key, value) in &from_python {
        let item = &many[key];
        assert_eq!(item.value, value[..], "{key}");
        assert_eq!(item.flags, 0, "{key}");
    }

    // TcpBackend stores, pylibmc reads.
    let from_rust = data_set("interop-rs");
    for (key, value) in &from_rust {
        pool.set(key, Bytes::from(value.clone()), 0, Lifetime::NEVER)
            .await
            .unwrap();
    }
    let input: String = from_rust
        .iter()
        .map(|(key, _)| format!("{key}\n"))
        .collect();
    let output = pylibmc(&specs, "get", input).await;
    let read: HashMap<&str, &str> = output
        .lines()
        .map(|line| line.split_once('\t').expect("key<TAB>value line"))
        .collect();
    assert_eq!(read.len(), from_rust.len(), "{output}");
    for (key, value) in &from_rust {
        let hex = read[key.as_str()];
        assert!(
            hex != "MISSING" && !hex.starts_with("NOT-BYTES"),
            "pylibmc read {key}: {hex}"
        );
        assert!(from_hex(hex) == *value, "pylibmc read {key}: wrong bytes");
    }

    // Placement, checked without either client's hashing: each key is on exactly the one
    // server TcpBackend's ring names. pylibmc only reads from and writes to the server it
    // hashes a key to, so this pins libmemcached's placement too.
    let direct = direct_backends(&addrs);
    let mut per_server = [0usize; 3];
    for (key, _) in from_python.iter().chain(&from_rust) {
        let expected = pool.server_for_key(key).unwrap();
        assert_eq!(holders(&direct, key).await, [expected], "{key}");
        per_server[expected] += 1;
    }
    assert!(per_server.iter().all(|&n| n > 0), "{per_server:?}");

    // With unequal weights, the ring must differ from the equal-weight one, or the
    // test above would not show that the weights reached libmemcached.
    if weights.iter().any(|&w| w != weights[0]) {
        let equal = tcp_builder().servers(addrs.clone()).build().unwrap();
        let moved = from_python
            .iter()
            .filter(|(key, _)| equal.server_for_key(key) != pool.server_for_key(key))
            .count();
        assert!(moved > 0, "weights {weights:?} moved no key");
    }
}

#[tokio::test]
async fn pylibmc_shares_a_pool_with_equal_weights() {
    bounded(pylibmc_round_trip("interop::pylibmc_equal", [1, 1, 1])).await;
}

#[tokio::test]
async fn pylibmc_shares_a_weighted_pool() {
    bounded(pylibmc_round_trip("interop::pylibmc_weighted", [1, 3, 2])).await;
}

/// TcpBackend through twemproxy: it speaks the text protocol twemproxy forwards.
///
/// Not tested through the proxy: nutcracker 0.5.0 does not support `stats`, `flush_all` or
/// `verbosity`; it answers them by closing the client connection. (`version` is forwarded
/// to a backend server and answered; `gets`, `cas`, `touch`, `incr`/`decr` and `noreply`
/// work.)
#[tokio::test]
async fn twemproxy_in_front_of_two_servers() {
    bounded(async {
        let Some(binary) = find_binary("nutcracker") else {
            skip_or_fail("nutcracker not installed", "apt-get install -y nutcracker");
            return;
        };
        let test = "interop::twemproxy";
        let servers = [memcached_or_skip!(test), memcached_or_skip!(test)];
        let proxy = Nutcracker::start_with(&binary, &servers, Duration::from_millis(400));
        let backend = tcp_builder().server(proxy.addr()).build().unwrap();
        let addrs: Vec<String> = servers.iter().map(Memcached::addr).collect();
        let direct = direct_backends(&addrs);

        // The number is not at the end: twemproxy's ketama hashes keys with the low 32 bits
        // of FNV-1a 64, which barely mixes the last bytes, so `proxy-0` … `proxy-99` would
        // all land in one narrow arc of the ring, on one server.
        let data: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| (format!("proxy-{i}-item"), format!("value-{i}").into_bytes()))
            .collect();
        for (key, value) in &data {
            backend
                .set(key, Bytes::from(value.clone()), 0, Lifetime::NEVER)
                .await
                .unwrap();
        }
        for (key, value) in &data {
            let item = backend.get(key).await.unwrap().expect(key);
            assert_eq!(item.value, value[..], "{key}");
            assert_eq!(item.flags, 0);
        }
        // A multi-get that nutcracker has to split across both servers, plus a miss.
        let mut keys: Vec<&str> = data.iter().map(|(key, _)| key.as_str()).collect();
        keys.push("proxy-missing");
        let many = backend.get_many(&keys).await.unwrap();
        assert_eq!(many.len(), data.len());
        for (key, value) in &data {
            assert_eq!(many[key].value, value[..], "{key}");
        }

        // The values are really on the servers behind the proxy, each on one, and
        // nutcracker's ketama used both.
        let mut per_server = [0usize; 2];
        for (key, value) in &data {
            let found = holders(&direct, key).await;
            assert_eq!(found.len(), 1, "{key} on servers {found:?}");
            let item = direct[found[0]].get(key).await.unwrap().unwrap();
            assert_eq!(item.value, value[..], "{key}");
            per_server[found[0]] += 1;
        }
        assert!(per_server.iter().all(|&n| n > 0), "{per_server:?}");

        // add stores only once, and the first value stays.
        assert!(
            backend
                .add("proxy-add", "first".into(), 3, Lifetime::NEVER)
                .await
                .unwrap()
        );
        assert!(
            !backend
                .add("proxy-add", "second".into(), 0, Lifetime::NEVER)
                .await
                .unwrap()
        );
        let item = backend.get("proxy-add").await.unwrap().unwrap();
        assert_eq!((&item.value[..], item.flags), (&b"first"[..], 3));
        assert_eq!(holders(&direct, "proxy-add").await.len(), 1);

        // delete removes once, from the server behind the proxy too.
        assert!(backend.delete("proxy-add").await.unwrap());
        assert!(!backend.delete("proxy-add").await.unwrap());
        assert_eq!(backend.get("proxy-add").await.unwrap(), None);
        assert!(holders(&direct, "proxy-add").await.is_empty());

        // touch and incr are forwarded as well.
        assert!(
            backend
                .touch("proxy-0-item", Lifetime::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            !backend
                .touch("proxy-missing", Lifetime::from_secs(60))
                .await
                .unwrap()
        );
        backend
            .set("proxy-counter", "41".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!(backend.incr("proxy-counter", 1).await.unwrap(), Some(42));
        assert_eq!(backend.incr("proxy-missing", 1).await.unwrap(), None);
    })
    .await;
}
