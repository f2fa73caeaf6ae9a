//! Loopback stand-ins for a memcached host, for tests of how `TcpBackend` connects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};

/// A host that no longer completes connections: a listener whose accept queue is full
/// (nothing accepts), so the kernel drops further SYNs and a connect hangs until its SYN
/// is sent again (after a second on Linux), as it does to a host gone from the network
/// behind a firewall that drops. Keep `listener` and `queued` open while it is used.
pub struct BlackHole {
    pub addr: String,
    pub listener: TcpListener,
    pub queued: Vec<std::net::TcpStream>,
    /// False where the queue never filled (another kernel's rules): connects complete,
    /// and nothing answers on them.
    pub full: bool,
}

pub async fn black_hole() -> BlackHole {
    black_hole_on("127.0.0.1:0").await
}

/// [`black_hole`] on `addr` (the port of a memcached just killed, to stand for its host
/// gone from the network).
pub async fn black_hole_on(addr: &str) -> BlackHole {
    let socket = TcpSocket::new_v4().unwrap();
    // The port may hold connections of a process just killed (TIME_WAIT).
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr.parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        let connect = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        });
        match connect.await.unwrap() {
            Ok(stream) => queued.push(stream),
            Err(_) => {
                return BlackHole {
                    addr: addr.to_string(),
                    listener,
                    queued,
                    full: true,
                };
            }
        }
    }
    BlackHole {
        addr: addr.to_string(),
        listener,
        queued,
        full: false,
    }
}

/// What a [`serve`]d listener saw.
pub struct Served {
    /// The get lines it read.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// How many connections it accepted.
    pub accepted: Arc<Mutex<usize>>,
    /// How many `stats` it was asked.
    pub stats_asked: Arc<Mutex<usize>>,
}

/// Serves `listener` from now on as a memcached would, enough for connecting: `version`,
/// `stats` (a settings listing, answered on the `n`th connection accepted, from 0, after
/// `stats_after(n)`, reading nothing meanwhile), gets (all misses; one of key `hold`
/// answered after `hold`), `ERROR` to anything else.
pub fn serve(
    listener: TcpListener,
    stats_after: impl Fn(usize) -> Duration + Send + 'static,
    hold: Duration,
) -> Served {
    let served = Served {
        lines: Arc::default(),
        accepted: Arc::default(),
        stats_asked: Arc::default(),
    };
    let (recorded, counted, asked) = (
        Arc::clone(&served.lines),
        Arc::clone(&served.accepted),
        Arc::clone(&served.stats_asked),
    );
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let delay = {
                let mut counted = counted.lock().unwrap();
                *counted += 1;
                stats_after(*counted - 1)
            };
            let (recorded, asked) = (Arc::clone(&recorded), Arc::clone(&asked));
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read).lines();
                while let Ok(Some(line)) = read.next_line().await {
                    let reply = if line.starts_with("version") {
                        "VERSION 1.6.0\r\n".to_string()
                    } else if line.starts_with("stats") {
                        *asked.lock().unwrap() += 1;
                        tokio::time::sleep(delay).await;
                        "STAT item_size_max 1048576\r\nEND\r\n".to_string()
                    } else if let Some(keys) = line
                        .strip_prefix("gets ")
                        .or_else(|| line.strip_prefix("get "))
                    {
                        recorded.lock().unwrap().push(line.clone());
                        if keys.split(' ').any(|key| key == "hold") {
                            tokio::time::sleep(hold).await;
                        }
                        "END\r\n".to_string()
                    } else {
                        "ERROR\r\n".to_string()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    served
}

/// Reads as the layer does (bounded by a 50 ms lookup timeout, none answered), one after
/// another `pause` apart, until server 0 is marked down or `within` has passed.
#[cfg(feature = "tcp")]
pub async fn lookups_until_marked_down(
    memcached: &tower_memcache::backend::TcpBackend,
    within: Duration,
    pause: Duration,
) {
    use tower_memcache::backend::Backend;
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until && !memcached.is_server_down(0) {
        let outcome = tokio::time::timeout(
            Duration::from_secs(2),
            memcached.get_many_by_key_ordered("r", &["g", "e"], Duration::from_millis(50)),
        )
        .await
        .expect("a read outlived its deadline");
        assert!(outcome.is_err(), "{outcome:?}");
        tokio::time::sleep(pause).await;
    }
}

/// Sends a get of key `hold` (which a [`serve`]d listener answers late) and, once the
/// listener has read it, six gets that queue behind it, all misses; returns when all are
/// answered. Whether the six went out merged shows in the get lines the listener read.
#[cfg(feature = "tcp")]
pub async fn gets_queued_behind_a_held_one(
    memcached: &tower_memcache::backend::TcpBackend,
    lines: &Mutex<Vec<String>>,
) {
    use tower_memcache::backend::Backend;
    let held = tokio::spawn({
        let memcached = memcached.clone();
        async move { memcached.get("hold").await }
    });
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("hold"))
    {
        assert!(
            tokio::time::Instant::now() < until,
            "the held get never came"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let keys: Vec<String> = (0..6).map(|i| format!("queued{i}")).collect();
    let gets = keys.iter().map(|key| memcached.get(key));
    for got in futures_util::future::join_all(gets).await {
        assert!(got.unwrap().is_none());
    }
    held.await.unwrap().unwrap();
}

/// What a [`scripted`] stand-in does with a line it read.
pub enum Reply {
    /// Writes these bytes back.
    Send(&'static [u8]),
    /// Closes the connection without answering (a crash, a restart, or a proxy that
    /// does not know the command).
    Close,
}

/// A memcached stand-in on a fresh loopback port that answers every line it reads with
/// `script(connection, line)`: `connection` counts accepted connections from 0, `line`
/// comes without its CR LF. Returns its address.
pub async fn scripted(script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let script = Arc::new(script);
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Reply::Send(reply) = script(connection, line.trim_end()) else {
                        return;
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
