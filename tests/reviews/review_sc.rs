//! Review SC: the pipelined memcached client's reply queue (`TcpBackend`'s connections)
//! against callers that give up or are dropped and against a peer that lies: replies of
//! the wrong kind for their request, replies for requests whose bytes were never sent,
//! replies nobody asked for, and what each does to the callers queued behind it, a purge
//! above all (a purge must never report success on a reply that was not its own). Every
//! wait is bounded.
#![cfg(feature = "tcp")]

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tower_memcache::backend::{Backend, BackendError, Lifetime};

use support::fake_memcached::{Reply, scripted};
use support::{bounded, one_connection_backend};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The first connection answers a get with `STORED` (a reply of the wrong kind: the peer
/// is out of step) in the same write as the `STORED` of a purge's set pipelined behind
/// it. The purge's reply followed one that was visibly not its request's, so it is not
/// known to be the purge's own: the purge must fail, not report the tombstone stored.
/// Before, the wrong kind was only noticed by the get's caller, after the reader had
/// handed the next reply to the purge, which reported success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_pipelined_behind_a_reply_of_the_wrong_kind_fails() {
    let addr = scripted(|connection, line| {
        Reply::Send(match line {
            "stats settings" => b"STAT item_size_max 1048576\r\nEND\r\n",
            "gets a" if connection == 0 => b"",
            line if line.starts_with("gets ") => b"END\r\n",
            line if line.starts_with("set ") => b"",
            // The set's data line: on the first connection, the get's `STORED` and the
            // set's, in one write.
            _ if connection == 0 => b"STORED\r\nSTORED\r\n",
            _ => b"STORED\r\n",
        })
    })
    .await;
    let backend = one_connection_backend(&addr, TIMEOUT);
    // Connected, so that both calls below go out on the one connection, pipelined.
    assert!(
        bounded("warm", backend.get("warm"))
            .await
            .unwrap()
            .is_none()
    );
    let (got, purged) = bounded("get and purge", async {
        tokio::join!(
            backend.get("a"),
            backend.set_on_every_server("p", Bytes::from_static(b"tomb"), 0, Lifetime::NEVER),
        )
    })
    .await;
    assert!(matches!(got, Err(BackendError::Protocol(_))), "{got:?}");
    assert!(
        purged.is_err(),
        "the purge reported success on a reply that followed one out of step: {purged:?}"
    );
}

/// A get's caller gives up at its deadline; its reply comes later, and is `STORED`: the
/// peer is out of step, whoever still waits. The connection must be dropped there, and
/// the get queued behind it fail, rather than take the `END` that follows (whose request
/// it answers is unknown). Before, the late reply was dropped unread with its caller and
/// the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_of_the_wrong_kind_to_a_caller_given_up_on_drops_the_connection() {
    let addr = scripted(|connection, line| {
        Reply::Send(match line {
            "stats settings" => b"STAT item_size_max 1048576\r\nEND\r\n",
            "gets slow" => b"",
            // The slow get's answer comes with the next one's.
            "gets next" if connection == 0 => b"STORED\r\nEND\r\n",
            _ => b"END\r\n",
        })
    })
    .await;
    let backend = one_connection_backend(&addr, TIMEOUT);
    assert!(
        bounded("warm", backend.get("warm"))
            .await
            .unwrap()
            .is_none()
    );
    let slow = bounded(
        "slow get",
        backend.get_many_by_key_ordered("r", &["slow"], Duration::from_millis(50)),
    )
    .await;
    assert!(slow.is_err(), "{slow:?}");
    let next = bounded("next get", backend.get("next")).await;
    assert!(
        matches!(next, Err(BackendError::Protocol(_))),
        "a get took the reply after one of the wrong kind: {next:?}"
    );
    // A new connection, which behaves.
    let again = bounded("get on a new connection", backend.get("next")).await;
    assert!(matches!(again, Ok(None)), "{again:?}");
}

/// A purge's delete waits unwritten behind a large set the peer stopped reading (the
/// socket is full). The peer sends `STORED` and `DELETED`: the second can only be a lie
/// or a reply out of step, since the delete's bytes never reached it. Before, the purge
/// reported the key deleted everywhere; a reply for a request not yet begun is now
/// refused as unsolicited, the connection dropped, and the purge fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_a_delete_never_written_is_refused() {
    let socket = TcpSocket::new_v4().unwrap();
    // A small receive buffer, inherited by the accepted socket: the set fills it.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (lied_tx, lied) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("stats"), "{line}");
        write
            .write_all(b"STAT item_size_max 67108864\r\nEND\r\n")
            .await
            .unwrap();
        line.clear();
        read.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("set big"), "{line}");
        // Reads nothing more: the set's data fills the sockets, and the delete queued
        // behind it is never written. Time for the purge to queue it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        write.write_all(b"STORED\r\nDELETED\r\n").await.unwrap();
        let _ = lied_tx.send(());
        // Keeps the connection open (unread) until the test ends.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(read);
    });
    let backend = tower_memcache::backend::TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(Duration::from_secs(3))
        .connect_timeout(TIMEOUT)
        .failure_threshold(1000)
        .item_size_limit(64 << 20)
        .build()
        .unwrap();
    let big = Bytes::from(vec![b'x'; 24 << 20]);
    let set = tokio::spawn({
        let backend = backend.clone();
        async move { backend.set("big", big, 0, Lifetime::NEVER).await }
    });
    // The set is out first (it connects; the delete waits for its connection).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let purged = bounded("purge", backend.delete_on_every_server("p")).await;
    bounded("lie", lied).await.unwrap();
    assert!(
        purged.is_err(),
        "the purge took a reply for a delete it never sent: {purged:?}"
    );
    let _ = bounded("set", set).await;
    server.abort();
}

/// An `END` too many after a get's reply, with nothing else asked: bytes nobody asked
/// for. The connection is dropped when they come, so the next get goes out on a new one
/// rather than take the extra `END` for its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_too_many_between_requests_drops_the_connection() {
    let gets = Arc::new(Mutex::new(Vec::new()));
    let addr = scripted({
        let gets = Arc::clone(&gets);
        move |connection, line| {
            if line.starts_with("gets ") {
                gets.lock().unwrap().push((connection, line.to_string()));
            }
            Reply::Send(match line {
                "stats settings" => b"STAT item_size_max 1048576\r\nEND\r\n",
                "gets a" if connection == 0 => b"END\r\nEND\r\n",
                "gets b" if connection == 0 => b"VALUE b 0 5\r\nstale\r\nEND\r\n",
                _ => b"END\r\n",
            })
        }
    })
    .await;
    let backend = one_connection_backend(&addr, TIMEOUT);
    assert!(bounded("get a", backend.get("a")).await.unwrap().is_none());
    // The extra END has come by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = bounded("get b", backend.get("b")).await;
    assert!(matches!(b, Ok(None)), "{b:?}");
    assert_eq!(
        gets.lock().unwrap().last(),
        Some(&(1, "gets b".to_string())),
        "the get went out on the connection that sent bytes nobody asked for"
    );
}
