//! Review TY: an adversarial second look at reviews TU and TW.
//!
//! - Review TU: a server marked down again before it answered a call since its rejoin
//!   waits twice as long for its next probe. Measured here on real memcached, killed and
//!   restarted: how long after it is marked down it is back in use, after a first outage,
//!   after a second with no call in between (idle traffic: the backoff applies), and after
//!   a third that came once a call had answered (no backoff left).
//! - Review TW: the advance reads a counter padded with spaces (as memcached's `incr` and
//!   `decr` leave a shorter result) as its number. Values memcached itself pads or wraps,
//!   and ones another writer leaves (`05`, a tab, a leading space, a created tag's mark),
//!   are advanced on: the number a lookup reads changes, never goes below the stamp, and
//!   two processes advancing at once over a padded value end on the highest.
//!
//! Guards: these held. Each skips without memcached unless `MEMCACHED_REQUIRED=1`.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tower_memcache::backend::{Backend, Lifetime, TcpBackend};

use support::Memcached;

/// Sends one text-protocol command to memcached at `addr` on a connection of its own, and
/// returns its one-line reply.
fn raw(addr: &str, command: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).unwrap();
        reply.push(byte[0]);
    }
    String::from_utf8(reply).unwrap()
}

/// The number a lookup takes a generation's bytes for (`Storage`'s reader: surrounding
/// ASCII whitespace trimmed, a created tag's `c` mark stripped).
fn as_read(value: &[u8]) -> Option<u64> {
    let text = value.trim_ascii();
    let text = text.strip_suffix(b"c").unwrap_or(text);
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// How long after server 0 of `backend` was marked down (by a `get` failing on it, killed)
/// it is in use again, memcached restarted at once on its port (empty); 5 s at most.
async fn back_after_restart(backend: &TcpBackend, server: &mut Memcached) -> Duration {
    server.kill();
    assert!(backend.get("k").await.is_err(), "a call to a killed server");
    let down = Instant::now();
    assert!(
        backend.is_server_down(0),
        "marked down at the first failure"
    );
    server.restart();
    while backend.is_server_down(0) {
        assert!(
            down.elapsed() < Duration::from_secs(5),
            "not back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    down.elapsed()
}

/// A server killed and restarted three times. After the first outage it is probed at the
/// interval; after a second with no call answered since its return (idle traffic: the
/// probe cannot tell this from a server that answers `version` and hangs lookups), twice
/// the interval, as review TU means; once a call has answered, the interval again. A
/// healthy server is never kept out longer than that.
#[tokio::test]
async fn a_restarted_server_is_back_within_its_probe_wait_and_one_answer_ends_the_backoff() {
    let mut server =
        memcached_or_skip!("review_ty::a_restarted_server_is_back_within_its_probe_wait");
    let interval = Duration::from_millis(400);
    let backend = TcpBackend::builder()
        .server(server.addr())
        .connections_per_server(1)
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .failure_threshold(1)
        .probe_interval(interval)
        .build()
        .unwrap();
    backend
        .set("k", "v".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let first = back_after_restart(&backend, &mut server).await;
    // No call between its return and its next outage.
    let idle = back_after_restart(&backend, &mut server).await;
    assert!(backend.get("k").await.unwrap().is_none(), "restarted empty");
    let answered = back_after_restart(&backend, &mut server).await;
    eprintln!(
        "review_ty: back in use after {first:?} (first outage), {idle:?} (again, no call \
         between), {answered:?} (again, after an answer); probe interval {interval:?}"
    );
    // Slack for a loaded machine (the restart itself, the probe, the reset), kept below
    // the interval so that one wait and two stay apart.
    let slack = Duration::from_millis(350);
    assert!(first <= interval + slack, "first outage: {first:?}");
    assert!(
        idle >= interval + interval / 2 && idle <= 2 * interval + slack,
        "a second outage before any call answered waits twice: {idle:?}"
    );
    assert!(
        answered <= interval + slack,
        "an answered call ended the backoff: {answered:?}"
    );
}

/// Values in a generation's key that memcached pads or wraps, and that another writer may
/// leave, each advanced over by one process: the value written is a plain decimal number
/// at least the stamp and another than the one a lookup read there, and what the advance
/// says it absorbed is that number whenever it took the bytes for one.
#[tokio::test]
async fn an_advance_over_padded_wrapped_or_foreign_values_moves_the_generation_on() {
    let server = memcached_or_skip!("review_ty::an_advance_over_padded_wrapped_or_foreign");
    let addr = server.addr();
    let backend = support::patient_backend([addr.clone()]);
    // A stamp as `generation::unique` gives one: the clock in nanoseconds.
    let stamp = 1_765_000_000_000_000_000_u64;
    // What to leave in the key, then the bytes memcached holds after it.
    let cases: [(&str, &[&str], &[u8]); 9] = [
        // `decr` in place: shorter, padded.
        (
            "decr",
            &["set g 0 0 4\r\n5000\r\n", "decr g 4995\r\n"],
            b"5   ",
        ),
        // A generation past the stamp, shortened by `decr`: padded.
        (
            "decr past the stamp",
            &[
                "set g 0 0 20\r\n18000000000000000000\r\n",
                "decr g 16000000000000000000\r\n",
            ],
            b"2000000000000000000 ",
        ),
        // `incr` past the largest number wraps, in place: zero and nineteen spaces.
        (
            "incr wraps",
            &["set g 0 0 20\r\n18446744073709551615\r\n", "incr g 1\r\n"],
            b"0                   ",
        ),
        (
            "padded largest but one",
            &["set g 0 0 23\r\n18446744073709551614   \r\n"],
            b"18446744073709551614   ",
        ),
        ("leading zero", &["set g 0 0 2\r\n05\r\n"], b"05"),
        ("tab", &["set g 0 0 2\r\n5\t\r\n"], b"5\t"),
        ("leading space", &["set g 0 0 2\r\n 5\r\n"], b" 5"),
        (
            "created tag mark",
            &["set g 0 0 20\r\n1765000000000000009c\r\n"],
            b"1765000000000000009c",
        ),
        (
            "created past the stamp",
            &["set g 0 0 20\r\n1765000000500000000c\r\n"],
            b"1765000000500000000c",
        ),
    ];
    for (what, commands, held) in cases {
        for command in commands {
            let reply = raw(&addr, command);
            assert!(
                !reply.contains("ERROR"),
                "{what}: {command:?} answered {reply:?}"
            );
        }
        let before = backend.get("g").await.unwrap().expect("held");
        assert_eq!(&before.value[..], held, "{what}: memcached holds");
        let read_before = as_read(&before.value);
        let advanced = backend
            .advance_on_every_server("g", stamp, Lifetime::NEVER)
            .await
            .unwrap();
        let after = backend.get("g").await.unwrap().expect("written");
        let text = std::str::from_utf8(&after.value).unwrap();
        let written: u64 = text.parse().unwrap_or_else(|_| panic!("{what}: {text:?}"));
        assert_eq!(written, advanced.value, "{what}");
        assert!(written >= stamp, "{what}: {written} below the stamp");
        assert_ne!(Some(written), read_before, "{what}: the generation stuck");
        // Absorbed: the number it replaced, when it took the bytes for one (a padded
        // `incr` result included), and nothing else.
        let digits = before.value.trim_ascii_end();
        let number = (before
            .value
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b' ')
            && !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten()
        .filter(|&n| n != u64::MAX);
        assert_eq!(advanced.absorbed, number, "{what}");
    }
}

/// Two processes (backends of their own) advance one key at once, over a value `decr`
/// left padded and past both stamps: both move it on, and the key ends on the higher of
/// what they returned, which is past what it held.
#[tokio::test]
async fn two_processes_advancing_over_a_padded_value_end_on_the_highest() {
    let server = memcached_or_skip!("review_ty::two_processes_advancing_over_a_padded_value");
    let addr = server.addr();
    for round in 0..20_u64 {
        raw(&addr, "set g 0 0 20\r\n18000000000000000000\r\n");
        raw(&addr, "decr g 16000000000000000000\r\n");
        let held = 2_000_000_000_000_000_000_u64;
        let (one, two) = (
            support::patient_backend([addr.clone()]),
            support::patient_backend([addr.clone()]),
        );
        let stamps = (
            1_765_000_000_000_000_000 + round,
            1_765_000_000_000_000_001 + round,
        );
        let (a, b) = tokio::join!(
            one.advance_on_every_server("g", stamps.0, Lifetime::NEVER),
            two.advance_on_every_server("g", stamps.1, Lifetime::NEVER),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let now = one.get("g").await.unwrap().expect("written");
        let now: u64 = std::str::from_utf8(&now.value).unwrap().parse().unwrap();
        assert!(
            a.value > held && b.value > held,
            "round {round}: {a:?} {b:?}"
        );
        assert_eq!(now, a.value.max(b.value), "round {round}: {a:?} {b:?}");
    }
}
