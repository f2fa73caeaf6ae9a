//! Review SG: the TCP backend's reply reader as a shared or hostile memcached sees it.
//!
//! memcached is trusted to keep data, not to be well-formed, and it may be shared: another
//! client (or another process of ours configured for larger items), writing to a memcached
//! started with a larger `-I` than the backend is configured for, can leave a value under
//! a key the layer reads that is larger than the reader buffers (four times
//! `item_size_limit`, at least 4 MiB). The reader refused it as a protocol violation and
//! dropped the connection: every caller pipelined on it (or merged into its line) failed
//! with it, on every read of that key. One such key cost the server's hits to everyone,
//! again on each request for its URL. Such a value is now skipped without being buffered
//! (its bytes are discarded as they arrive) and reads as a miss for its key alone.
//!
//! The reply checks of review SC (a reply of another request's kind, or for a request not
//! yet written, drops the connection) are tried against what a legitimate server sends
//! under normal load: none of it may cost a connection. Through twemproxy in front of a
//! dead server the connection churned all the same, for another reason: twemproxy answers
//! a multi-get (a lookup's entry and generation) that touches a server it cannot reach
//! with one error and closes the connection, with the lookups pipelined behind it. To a
//! server taken for twemproxy a multi-get now goes as one get per key.
//!
//! Each test fails if the defect it names returns.
#![cfg(feature = "tcp")]

use crate::support;

use std::time::Duration;

use futures_util::future::join_all;
use http::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tower_memcache::backend::{Backend, BackendError, Lifetime, TcpBackend};
use tower_memcache::key::build_key;

use support::scripted_service::{Origin, Reply, lines};
use support::{Watch, assert_hit, bounded, send};

const NAMESPACE: &str = "review-sg";

/// Larger than any value the backend buffers at its default item size limit (1 MiB,
/// values up to 4 MiB read), within what a memcached started with `-I 16m` holds.
const FOREIGN_LEN: usize = 5 * 1024 * 1024;

/// A page naming its path, cacheable for five minutes.
fn origin() -> Origin {
    Origin::replying(|request, _| {
        Reply::ok(
            lines(&[
                ("content-type", "text/plain"),
                ("cache-control", "max-age=300"),
            ]),
            format!("page {}", request.uri().path()),
        )
    })
}

/// One connection to the server (so every lookup is pipelined on it), and timeouts no
/// loaded machine reaches.
fn one_connection(addr: &str) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Another client of the same memcached, speaking the text protocol itself.
struct Foreign {
    reader: BufReader<TcpStream>,
}

impl Foreign {
    async fn connect(addr: &str) -> Self {
        Foreign {
            reader: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).await.unwrap();
        line
    }

    /// Stores `len` bytes under `key`.
    async fn set(&mut self, key: &str, len: usize) {
        let mut request = format!("set {key} 0 0 {len}\r\n").into_bytes();
        request.resize(request.len() + len, b'x');
        request.extend_from_slice(b"\r\n");
        self.reader.get_mut().write_all(&request).await.unwrap();
        assert_eq!(self.line().await, "STORED\r\n");
    }

    /// The connections the server has accepted since it started.
    async fn total_connections(&mut self) -> u64 {
        self.reader.get_mut().write_all(b"stats\r\n").await.unwrap();
        let mut total = None;
        loop {
            let line = self.line().await;
            if line == "END\r\n" {
                break;
            }
            if let Some(count) = line.strip_prefix("STAT total_connections ") {
                total = Some(count.trim().parse().unwrap());
            }
        }
        total.expect("memcached reports total_connections")
    }

    /// Reads what is left of a value of `len` bytes.
    async fn drain(&mut self, len: usize) {
        let mut rest = vec![0; len];
        self.reader.read_exact(&mut rest).await.unwrap();
    }
}

/// Another client stores a 5 MiB value (memcached runs with `-I 16m`) under the key the
/// layer reads for one URL. Requests for that URL and for eight cached others, at once,
/// share the backend's one connection (their lookups pipelined, merged into one line).
/// Before, the reader refused the large value and dropped the connection: every lookup
/// pipelined with it failed, eight hits lost (and a new connection) on every round. Now
/// the value is skipped: the other URLs hit, on the same connection, and the URL with the
/// foreign value goes to the origin (the value is never answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_over_the_read_limit_costs_only_its_own_url() {
    let memcached = memcached_or_skip!("review_sg::foreign_value", "-I", "16m");
    let backend = one_connection(&memcached.addr());
    let cache = support::layer(backend)
        .namespace(NAMESPACE)
        .lookup_timeout(Duration::from_secs(2));
    let origin = origin();
    let svc = origin.service(&cache);
    let pages: Vec<String> = (0..8)
        .map(|page| format!("http://review-sg.test/page/{page}"))
        .collect();
    for url in &pages {
        send(&svc, Method::GET, url, &[]).await;
    }
    support::stores(&Watch::of(&cache), 8).await;
    for url in &pages {
        assert_hit(send(&svc, Method::GET, url, &[]).await.cache_status());
    }

    let big = "http://review-sg.test/big";
    let mut foreign = Foreign::connect(&memcached.addr()).await;
    foreign
        .set(
            &build_key(Some(NAMESPACE), &format!("GET {big}")[..]),
            FOREIGN_LEN,
        )
        .await;
    let connections = foreign.total_connections().await;

    for round in 0..3 {
        // The foreign key's lookup in the middle of the others.
        let mut urls: Vec<&str> = pages.iter().map(String::as_str).collect();
        urls.insert(4, big);
        let answers = bounded(
            "a round of lookups",
            join_all(urls.iter().map(|url| send(&svc, Method::GET, url, &[]))),
        )
        .await;
        for (url, answer) in urls.iter().zip(&answers) {
            assert_eq!(answer.status, 200, "{url}");
            assert_eq!(
                answer.body,
                format!("page {}", url.trim_start_matches("http://review-sg.test")),
            );
            if *url != big {
                assert_eq!(
                    answer.cache_status(),
                    support::HIT,
                    "round {round}: {url} lost its hit to another client's value"
                );
            }
        }
        Watch::of(&cache).settled().await;
    }
    assert_eq!(
        foreign.total_connections().await,
        connections,
        "the backend's connection was dropped and opened again"
    );
}

/// The same at the backend: a multi-get whose middle key holds a value over the read
/// limit answers the keys around it and reads that one as a miss; a get pipelined behind
/// it is answered, on the same connection; a get of the key alone is a miss. Before, all
/// of them failed with a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_get_answers_the_keys_around_a_value_over_the_read_limit() {
    let memcached = memcached_or_skip!("review_sg::multi_get", "-I", "16m");
    let backend = one_connection(&memcached.addr());
    backend
        .set("before", "one".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    backend
        .set("after", "two".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let mut foreign = Foreign::connect(&memcached.addr()).await;
    foreign.set("big", FOREIGN_LEN).await;
    let connections = foreign.total_connections().await;

    let (many, behind) = bounded("a multi-get and a get behind it", async {
        tokio::join!(
            backend.get_many(&["before", "big", "after"]),
            backend.get("after"),
        )
    })
    .await;
    let many = many.unwrap();
    assert_eq!(many.len(), 2, "{:?}", many.keys());
    assert_eq!(&many["before"].value[..], b"one");
    assert_eq!(&many["after"].value[..], b"two");
    assert_eq!(&behind.unwrap().unwrap().value[..], b"two");
    let alone = bounded("a get of the key alone", backend.get("big")).await;
    assert!(matches!(alone, Ok(None)), "{alone:?}");
    assert_eq!(
        foreign.total_connections().await,
        connections,
        "the backend's connection was dropped and opened again"
    );
    // Still there for the client that stored it.
    foreign
        .reader
        .get_mut()
        .write_all(b"get big\r\n")
        .await
        .unwrap();
    assert_eq!(
        foreign.line().await,
        format!("VALUE big 0 {FOREIGN_LEN}\r\n")
    );
    foreign.drain(FOREIGN_LEN + 2).await;
    assert_eq!(foreign.line().await, "END\r\n");
}

/// Through twemproxy (nutcracker 0.5.0) in front of two memcached servers, one of which
/// (not the one holding the namespace generation) dies. A lookup reads its entry and the
/// generation in one `gets`; for a URL whose entry was on the dead server, twemproxy
/// answers that line with one `SERVER_ERROR` and closes the connection. Every lookup
/// pipelined behind it on the connection failed with it (a miss for URLs on the live
/// server), on each request for such a URL, and the failures marked the proxy down: a
/// dead server behind the proxy cost far more than its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_twemproxy_a_dead_server_costs_only_the_urls_it_held() {
    let test = "review_sg::twemproxy_dead_server";
    let mut servers = [memcached_or_skip!(test), memcached_or_skip!(test)];
    let Some(proxy) = support::nutcracker::Nutcracker::start(test, &servers) else {
        return;
    };
    let backend = one_connection(&proxy.addr());
    let cache = support::layer(backend)
        .namespace(NAMESPACE)
        .lookup_timeout(Duration::from_secs(2));
    let origin = origin();
    let svc = origin.service(&cache);
    let urls: Vec<String> = (0..40)
        .map(|page| format!("http://review-sg.test/spread/{page}"))
        .collect();
    for url in &urls {
        send(&svc, Method::GET, url, &[]).await;
    }
    support::stores(&Watch::of(&cache), 40).await;

    // Which server holds what, as twemproxy spread it.
    let direct: Vec<TcpBackend> = servers.iter().map(|s| one_connection(&s.addr())).collect();
    let holds = |index: usize, key: String| {
        let server = direct[index].clone();
        async move { server.get(&key).await.unwrap().is_some() }
    };
    let generation = format!("g:{}", build_key(Some(NAMESPACE), "\0generation"));
    let live = if holds(0, generation.clone()).await {
        0
    } else {
        assert!(holds(1, generation).await, "no generation stored");
        1
    };
    let mut on_live = Vec::new();
    let mut on_dead = Vec::new();
    for url in &urls {
        let key = build_key(Some(NAMESPACE), &format!("GET {url}")[..]);
        if holds(live, key).await {
            on_live.push(url.as_str());
        } else {
            on_dead.push(url.as_str());
        }
    }
    assert!(
        on_live.len() >= 8 && !on_dead.is_empty(),
        "not spread: {on_live:?} {on_dead:?}"
    );
    servers[1 - live].kill();

    // Whether a lookup behind the dead URL's went out in the same write as it (answered)
    // or in a later one (lost with the connection) is a matter of timing: many rounds.
    for round in 0..100 {
        // Lookups of URLs on the live server, one of a URL on the dead one among them.
        let mut round_urls: Vec<&str> = on_live[..8].to_vec();
        round_urls.insert(2, on_dead[round % on_dead.len()]);
        let answers = bounded(
            "a round of lookups",
            join_all(
                round_urls
                    .iter()
                    .map(|url| send(&svc, Method::GET, url, &[])),
            ),
        )
        .await;
        for (url, answer) in round_urls.iter().zip(&answers) {
            assert_eq!(answer.status, 200, "{url}");
            if on_live.contains(url) {
                assert_eq!(
                    answer.cache_status(),
                    support::HIT,
                    "round {round}: {url}, on the live server, lost its hit"
                );
            }
        }
        Watch::of(&cache).settled().await;
    }
}

/// Review SC's reply checks against what a legitimate memcached answers under load: every
/// kind of reply to every command the client sends (`NOT_STORED`, `EXISTS`, `NOT_FOUND`,
/// a number, `TOUCHED`, `DELETED`, `VERSION`, a `STAT` listing, and the error lines:
/// `CLIENT_ERROR` to an `incr` of text, to a `flush_all` memcached runs without (`-F`)),
/// each pipelined with gets that must be answered. None may cost the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_a_memcached_sends_keeps_the_connection() {
    let memcached = memcached_or_skip!("review_sg::every_reply", "-F");
    let backend = one_connection(&memcached.addr());
    backend
        .set("text", "not a number".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    backend
        .set("n", "41".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let mut foreign = Foreign::connect(&memcached.addr()).await;
    let connections = foreign.total_connections().await;
    for round in 0..5 {
        let got = || async {
            let found = backend.get("n").await;
            assert!(found.is_ok(), "round {round}: {found:?}");
        };
        let cas = backend.get("text").await.unwrap().unwrap().cas.unwrap();
        let (_, added, _, replaced, _, swapped, _, touched, _, deleted, _) =
            bounded("commands pipelined with gets", async {
                tokio::join!(
                    got(),
                    backend.add("text", "x".into(), 0, Lifetime::NEVER),
                    got(),
                    backend.replace("absent", "x".into(), 0, Lifetime::NEVER),
                    got(),
                    backend.cas("text", "x".into(), 0, Lifetime::NEVER, cas + 1),
                    got(),
                    backend.touch("absent", Lifetime::NEVER),
                    got(),
                    backend.delete("absent"),
                    got(),
                )
            })
            .await;
        assert!(matches!(added, Ok(false)), "{added:?}");
        assert!(matches!(replaced, Ok(false)), "{replaced:?}");
        assert!(swapped.is_ok(), "{swapped:?}");
        assert!(matches!(touched, Ok(false)), "{touched:?}");
        assert!(matches!(deleted, Ok(false)), "{deleted:?}");
        let (_, counted, _, refused, _, flushed, _, versions, _, stats, _) =
            bounded("more commands pipelined with gets", async {
                tokio::join!(
                    got(),
                    backend.incr("n", 1),
                    got(),
                    backend.incr("text", 1),
                    got(),
                    backend.flush_all(),
                    got(),
                    backend.versions(),
                    got(),
                    backend.stats(),
                    got(),
                )
            })
            .await;
        assert!(matches!(counted, Ok(Some(_))), "{counted:?}");
        assert!(
            matches!(refused, Err(BackendError::Server(ref message)) if message.starts_with("CLIENT_ERROR")),
            "{refused:?}"
        );
        assert!(flushed.is_err(), "memcached -F flushed");
        assert_eq!(versions.len(), 1);
        assert!(stats.is_ok(), "{stats:?}");
    }
    assert_eq!(
        foreign.total_connections().await,
        connections,
        "a legitimate reply cost the connection"
    );
    assert!(!backend.is_server_down(0));
}
