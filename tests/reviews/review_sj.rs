//! Review SJ: an adversarial second look at review SG's skip of a value over the read
//! limit.
//!
//! The reader cuts such a value's bytes out of its buffer as they arrive and reads its key
//! as a miss. These tests drive the skip as a connection sees it: the value trickled over
//! many reads in chunks that end anywhere (its terminator and the replies behind it in
//! one read), its caller given up half way, other callers' gets (merged or not), a store
//! and a delete pipelined behind it. Every caller must get its own reply and nothing
//! else, the skipped key must read as a miss, and the connection must stay. A hostile
//! server that answers a skipped key a second time is refused, and the requests behind it
//! get no reply of another's.

#![cfg(feature = "tcp")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tower_memcache::backend::{Backend, Lifetime, TcpBackend};

/// Larger than the 4 MiB the backend buffers at its default item size limit.
const BIG_LEN: usize = 5 * 1024 * 1024;

/// What the fake answers for key `small`.
const SMALL: &[u8] = b"abc";

/// How the fake answers a get line's keys.
#[derive(Clone, Copy)]
enum Script {
    /// `big` with a `BIG_LEN` value, `small` with `SMALL`, anything else a miss.
    Honest,
    /// As honest, but `big` is answered twice (the second time within the limit).
    BigTwice,
}

/// A memcached stand-in for one `TcpBackend` connection: it reads request lines for
/// `gather` after the first get arrives (the pipelined requests behind it), then writes
/// all their replies in chunks of `chunk` bytes, a millisecond apart. Returns its address
/// and the connections it accepted.
async fn trickling(script: Script, chunk: usize) -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            *counted.lock().unwrap() += 1;
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("stats") {
                        let listing = b"STAT item_size_max 1048576\r\nEND\r\n";
                        if write.write_all(listing).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // The first request after connecting: gather those pipelined behind.
                    let mut pending = vec![line];
                    let gather = tokio::time::sleep(Duration::from_millis(150));
                    tokio::pin!(gather);
                    loop {
                        tokio::select! {
                            () = &mut gather => break,
                            next = lines.next_line() => match next {
                                Ok(Some(next)) => pending.push(next),
                                _ => break,
                            },
                        }
                    }
                    let mut out = Vec::new();
                    let mut data_block = false;
                    for line in &pending {
                        if std::mem::take(&mut data_block) {
                            continue;
                        }
                        answer(script, line, &mut out, &mut data_block);
                    }
                    for piece in out.chunks(chunk) {
                        if write.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Appends the reply to request `line` to `out`; `data_block` set when a data line follows.
fn answer(script: Script, line: &str, out: &mut Vec<u8>, data_block: &mut bool) {
    let mut words = line.split(' ');
    match words.next() {
        Some("get" | "gets") => {
            for key in words.filter(|key| !key.is_empty()) {
                match key {
                    "big" => {
                        out.extend_from_slice(format!("VALUE big 0 {BIG_LEN} 7\r\n").as_bytes());
                        out.resize(out.len() + BIG_LEN, b'\r');
                        out.extend_from_slice(b"\r\n");
                        if let Script::BigTwice = script {
                            out.extend_from_slice(b"VALUE big 0 3 7\r\nBIG\r\n");
                        }
                    }
                    "small" => {
                        out.extend_from_slice(b"VALUE small 0 3 8\r\n");
                        out.extend_from_slice(SMALL);
                        out.extend_from_slice(b"\r\n");
                    }
                    _ => {}
                }
            }
            out.extend_from_slice(b"END\r\n");
        }
        Some("set") => {
            *data_block = true;
            out.extend_from_slice(b"STORED\r\n");
        }
        Some("delete") => out.extend_from_slice(b"DELETED\r\n"),
        _ => out.extend_from_slice(b"ERROR\r\n"),
    }
}

fn one_connection(addr: &str) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A 5 MiB value for `big`, trickled in chunks of every alignment (its terminator, `END`
/// and the replies behind it sharing reads), its first caller given up half way: the
/// multi-get around it gets `small` alone, the store and the delete pipelined behind it
/// their own replies, a later get of `small` its value, all on the one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_skip_leaves_every_pipelined_reply_with_its_caller() {
    let bounded = tokio::time::timeout(Duration::from_secs(60), async {
        for chunk in [1024 * 1024 + 3, 65_537, 16_411] {
            let (addr, accepted) = trickling(Script::Honest, chunk).await;
            let memcached = one_connection(&addr);
            // Connected (and its settings asked) before the pipelined calls.
            assert_eq!(memcached.get("none").await.unwrap(), None);
            let given_up = tokio::time::timeout(Duration::from_millis(20), memcached.get("big"));
            let (given_up, many, stored, deleted, small) = tokio::join!(
                given_up,
                memcached.get_many(&["big", "small"]),
                memcached.set("k", Bytes::from_static(b"v"), 0, Lifetime::NEVER),
                memcached.delete("d"),
                memcached.get("small"),
            );
            assert!(given_up.is_err(), "chunk {chunk}: the first caller gave up");
            let many = many.unwrap();
            assert_eq!(many.len(), 1, "chunk {chunk}: {many:?}");
            assert_eq!(&many["small"].value[..], SMALL, "chunk {chunk}");
            stored.unwrap();
            assert!(deleted.unwrap(), "chunk {chunk}");
            assert_eq!(&small.unwrap().unwrap().value[..], SMALL, "chunk {chunk}");
            // And the skipped key reads as a miss, on the same connection.
            assert_eq!(memcached.get("big").await.unwrap(), None, "chunk {chunk}");
            assert_eq!(*accepted.lock().unwrap(), 1, "chunk {chunk}: reconnected");
        }
    });
    bounded.await.expect("bounded");
}

/// A server that answers `big` again after its skipped value (within the limit the second
/// time), in a multi-get with room for another value, is refused: the key was answered
/// (the skip counts as its answer), and the second value never reaches its caller as a
/// hit; the store and the delete pipelined behind it get no reply of another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_key_answered_again_is_refused() {
    let bounded = tokio::time::timeout(Duration::from_secs(30), async {
        let (addr, _) = trickling(Script::BigTwice, 65_537).await;
        let memcached = one_connection(&addr);
        assert_eq!(memcached.get("none").await.unwrap(), None);
        let (big, stored, deleted) = tokio::join!(
            memcached.get_many(&["big", "other"]),
            memcached.set("k", Bytes::from_static(b"v"), 0, Lifetime::NEVER),
            memcached.delete("d"),
        );
        assert!(big.is_err(), "the second answer was taken: {big:?}");
        // The reader stopped at the broken reply: what is behind it is nobody's.
        assert!(stored.is_err(), "{stored:?}");
        assert!(deleted.is_err(), "{deleted:?}");
    });
    bounded.await.expect("bounded");
}
