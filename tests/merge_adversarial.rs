//! Adversarial tests of merged gets (`src/backend/tcp/merge.rs`): gets that queue on a
//! connection behind its write-side owner go out as one multi-key line, and its reply is
//! split back to the callers by key position.
//!
//! What must hold whatever the server and the callers do: a caller only ever gets values for
//! the keys it asked, each at its own place; it never loses its reply (it gets values or an
//! error, in bounded time); its request slot comes back; and the connection stays in sync.
//!
//! The fake server answers every value with its key as data and a cas and flags derived from
//! the key, so a value handed to the wrong caller or place shows at once. Merges are forced
//! deterministically: a get the server holds back is put in flight, then the callers are
//! polled once each, in order, which queues their requests behind it (the first takes the
//! write side and yields, the others join its line) before any of them is written.
#![cfg(feature = "tcp")]

mod support;

use support::nutcracker::Nutcracker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tower_memcache::backend::{Backend, BackendError, CasOutcome, Item, Lifetime, TcpBackend};

/// How long the fake server holds back a get of a `hold…` key: the callers queue behind it.
const HOLD: Duration = Duration::from_millis(100);

/// The most a round of calls may take, whatever the server does.
const ROUND_BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The fake server.

/// How the fake server answers a get line of its first connection (held gets and `warm…`
/// gets are always answered honestly; later connections answer everything honestly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A value per key asked, in order; none for keys starting with `miss`.
    Honest,
    /// The same values, last key first.
    Reversed,
    /// The same values, from the middle of the line on, wrapping around: each caller's
    /// values come at another caller's place.
    Rotated,
    /// A key listed more than once answered at its first place only (as a proxy that
    /// deduplicates may).
    FirstOccurrenceOnly,
    /// The honest values, then the first one again.
    DuplicateFirst,
    /// The honest values with one for a key nobody asked among them.
    UnaskedKey,
    /// A value for every key listed, misses included, and one more.
    MoreValuesThanKeys,
    /// `SERVER_ERROR busy` instead of values.
    ErrorLine,
    /// The first value, then `SERVER_ERROR out of memory writing get response`.
    ValuesThenError,
    /// Each value followed by its own `END`, as if each key had been asked alone.
    EndAfterEachValue,
    /// Half a value, then nothing more (the connection stays open).
    TruncatedThenSilent,
    /// Half a value, then the connection is closed.
    TruncatedThenClose,
    /// The connection is closed instead of an answer.
    Close,
}

impl Answer {
    /// Whether the answer ends where it should, so the connection stays (and keeps
    /// answering so).
    fn keeps_the_connection(self) -> bool {
        matches!(self, Answer::ErrorLine | Answer::ValuesThenError)
    }

    /// Whether every member of a line so answered must get an error.
    fn fails_the_line(self) -> bool {
        !matches!(
            self,
            Answer::Honest
                | Answer::Reversed
                | Answer::Rotated
                | Answer::FirstOccurrenceOnly
                | Answer::EndAfterEachValue
        )
    }
}

/// A fake memcached on a loopback port; stops accepting when dropped.
struct FakeServer {
    addr: String,
    /// Every request line read (not data blocks), on any connection, in order.
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&lines);
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((socket, _)) = listener.accept().await {
                let answer = if std::mem::take(&mut first) {
                    answer
                } else {
                    Answer::Honest
                };
                tokio::spawn(serve(socket, answer, Arc::clone(&record)));
            }
        });
        FakeServer { addr, lines, task }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The get lines read since line `from`, as their key lists.
    fn get_lines_since(&self, from: usize) -> Vec<Vec<String>> {
        self.lines()[from..]
            .iter()
            .filter_map(|line| {
                let mut words = line.split(' ');
                matches!(words.next(), Some("get" | "gets"))
                    .then(|| words.map(str::to_string).collect())
            })
            .collect()
    }
}

/// FNV-1a of `key`: the cas (and, truncated, the flags) the fake server gives its value.
fn cas_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn flags_of(key: &str) -> u32 {
    cas_of(key) as u32
}

fn value_block(key: &str, with_cas: bool) -> String {
    let (flags, len) = (flags_of(key), key.len());
    if with_cas {
        format!("VALUE {key} {flags} {len} {}\r\n{key}\r\n", cas_of(key))
    } else {
        format!("VALUE {key} {flags} {len}\r\n{key}\r\n")
    }
}

/// The reply `answer` gives to a get of `keys`.
fn values(keys: &[&str], with_cas: bool, answer: Answer) -> Vec<u8> {
    let hits: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|key| !key.starts_with("miss"))
        .collect();
    let order: Vec<&str> = match answer {
        Answer::Reversed => hits.iter().rev().copied().collect(),
        Answer::Rotated => {
            let mut order = hits.clone();
            let middle = order.len() / 2;
            order.rotate_left(middle);
            order
        }
        Answer::FirstOccurrenceOnly => {
            let mut seen = Vec::new();
            for key in hits {
                if !seen.contains(&key) {
                    seen.push(key);
                }
            }
            seen
        }
        Answer::DuplicateFirst => {
            let mut order = hits.clone();
            order.extend(hits.first());
            order
        }
        Answer::UnaskedKey => {
            let mut order = hits.clone();
            order.insert(order.len() / 2, "notasked");
            order
        }
        Answer::MoreValuesThanKeys => {
            let mut order = keys.to_vec();
            order.extend(keys.first());
            order
        }
        Answer::ErrorLine => return b"SERVER_ERROR busy\r\n".to_vec(),
        Answer::ValuesThenError => {
            let mut out = hits
                .first()
                .map(|key| value_block(key, with_cas))
                .unwrap_or_default();
            out += "SERVER_ERROR out of memory writing get response\r\n";
            return out.into_bytes();
        }
        _ => hits,
    };
    let mut out = String::new();
    for key in &order {
        out += &value_block(key, with_cas);
        if answer == Answer::EndAfterEachValue {
            out += "END\r\n";
        }
    }
    if answer != Answer::EndAfterEachValue || order.is_empty() {
        out += "END\r\n";
    }
    out.into_bytes()
}

/// One connection of the fake server.
async fn serve(socket: TcpStream, answer: Answer, record: Arc<Mutex<Vec<String>>>) {
    let _ = socket.set_nodelay(true);
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut silent = false;
    while let Ok(Some(line)) = lines.next_line().await {
        record.lock().unwrap().push(line.clone());
        let mut words = line.split(' ');
        let verb = words.next().unwrap_or_default();
        if matches!(
            verb,
            "set" | "add" | "replace" | "cas" | "append" | "prepend"
        ) {
            // The data block (the values these tests store have no line breaks).
            if !matches!(lines.next_line().await, Ok(Some(_))) {
                return;
            }
        }
        if silent {
            continue;
        }
        let reply: Vec<u8> = match verb {
            "get" | "gets" => {
                let keys: Vec<&str> = words.collect();
                let with_cas = verb == "gets";
                if let Some(held) = keys.iter().find(|key| key.starts_with("hold")) {
                    tokio::time::sleep(HOLD).await;
                    if held.starts_with("holdclose") {
                        return;
                    }
                    values(&keys, with_cas, Answer::Honest)
                } else if keys.iter().all(|key| key.starts_with("warm")) {
                    values(&keys, with_cas, Answer::Honest)
                } else {
                    match answer {
                        Answer::Close => return,
                        Answer::TruncatedThenSilent | Answer::TruncatedThenClose => {
                            let key = keys[0];
                            let half = format!("VALUE {key} 0 {} 1\r\n{key}", key.len() * 2 + 10);
                            if write.write_all(half.as_bytes()).await.is_err() {
                                return;
                            }
                            if answer == Answer::TruncatedThenClose {
                                return;
                            }
                            silent = true;
                            continue;
                        }
                        other => values(&keys, with_cas, other),
                    }
                }
            }
            "set" | "add" | "replace" | "cas" | "append" | "prepend" => b"STORED\r\n".to_vec(),
            "delete" => b"DELETED\r\n".to_vec(),
            "touch" => b"TOUCHED\r\n".to_vec(),
            "incr" | "decr" => b"1\r\n".to_vec(),
            // memcached's settings listing: gets are merged only on connections to a server
            // that gives one.
            "stats" => b"STAT item_size_max 1048576\r\nEND\r\n".to_vec(),
            "version" => b"VERSION fake\r\n".to_vec(),
            _ => b"ERROR\r\n".to_vec(),
        };
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Calls, rounds and checks.

/// The public call a caller makes.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `get` of its one key.
    Get,
    /// `get_many`, mapped back to its key list.
    Many,
    /// `get_many_by_key_ordered`: a value per place.
    Ordered,
}

/// What a caller got: a value (or a miss) per key of its list, in order.
type Outcome = Result<Vec<Option<Item>>, BackendError>;

type Call<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

fn call<'a>(backend: &'a TcpBackend, via: Via, keys: &'a [String]) -> Call<'a> {
    Box::pin(async move {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        match via {
            Via::Get => Ok(vec![backend.get(refs[0]).await?]),
            Via::Many => {
                let found = backend.get_many(&refs).await?;
                assert!(
                    found.keys().all(|key| keys.contains(key)),
                    "get_many of {keys:?} answered other keys: {:?}",
                    found.keys().collect::<Vec<_>>()
                );
                Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
            }
            Via::Ordered => {
                backend
                    .get_many_by_key_ordered("route", &refs, ROUND_BOUND)
                    .await
            }
        }
    })
}

/// `n` callers of round `round` whose keys overlap: a key most callers ask (`shared`, at
/// different places and twice in some), one of each caller's own, the own key of the caller
/// before it, a key asked twice by one caller, and misses.
fn callers(round: &str, n: usize) -> Vec<(Via, Vec<String>)> {
    (0..n)
        .map(|i| {
            let own = format!("{round}-own{i}");
            let before = format!("{round}-own{}", i.saturating_sub(1));
            let miss = format!("miss-{round}-{i}");
            let shared = "shared".to_string();
            match i % 5 {
                0 => (Via::Ordered, vec![shared, own]),
                1 => (Via::Get, vec![own]),
                2 => (Via::Ordered, vec![own.clone(), miss, shared, own]),
                3 => (Via::Many, vec![miss, before, own]),
                _ => (Via::Ordered, vec![before, shared.clone(), shared, own]),
            }
        })
        .collect()
}

/// Checks what a caller of the fake server got for `keys`: each value is the one of the key
/// at its place (data, flags and cas). `exact`: also every key not starting with `miss` was
/// found, and no key that does.
fn check_fake(keys: &[String], found: &[Option<Item>], exact: bool, context: &str) {
    assert_eq!(found.len(), keys.len(), "{context}: one answer per key");
    for (place, (key, item)) in keys.iter().zip(found).enumerate() {
        match item {
            Some(item) => {
                assert_eq!(
                    std::str::from_utf8(&item.value).unwrap_or("<not utf-8>"),
                    key,
                    "{context}: place {place} got another key's value"
                );
                assert_eq!(item.cas, Some(cas_of(key)), "{context}: {key}'s cas");
                assert_eq!(item.flags, flags_of(key), "{context}: {key}'s flags");
                assert!(!key.starts_with("miss"), "{context}: a value for a miss");
            }
            None => assert!(
                !exact || key.starts_with("miss"),
                "{context}: {key} (place {place}) lost"
            ),
        }
    }
}

/// Polls `future` once, with a waker that never wakes it.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// What becomes of a caller of a round after its first poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Awaited to the end.
    Await,
    /// Dropped right after its first poll: the first caller while it yields with the write
    /// side, the others while their keys wait in the open line (or for a slot).
    DropQueued,
    /// Dropped once written (its line is written at the first caller's next poll), while
    /// it waits for the reply.
    DropWaiting,
}

/// What a round returns: the held get's outcome, and each caller's (`None` when dropped).
struct RoundResult {
    held: Result<Option<Item>, BackendError>,
    outcomes: Vec<Option<Outcome>>,
    /// The get lines the server read during the round, as key lists.
    get_lines: Vec<Vec<String>>,
}

/// Puts a get of `hold_key` in flight (the server holds it back), queues `calls` behind it
/// (each polled once, in order), drops those fated so, then leaves them all unpolled for
/// `park` (the first caller stays in its yield: its line stays open until the connection
/// takes it over or fails), then awaits the rest, all within [`ROUND_BOUND`].
async fn merged_round(
    backend: &TcpBackend,
    server: &FakeServer,
    hold_key: &str,
    calls: &[(Via, Vec<String>)],
    fates: &[Fate],
    park: Duration,
) -> RoundResult {
    let from = server.lines().len();
    let held = tokio::spawn({
        let backend = backend.clone();
        let key = hold_key.to_string();
        async move { backend.get(&key).await }
    });
    let deadline = Instant::now() + ROUND_BOUND;
    while !server.lines()[from..]
        .iter()
        .any(|line| line.contains(hold_key))
    {
        assert!(
            Instant::now() < deadline,
            "the held get never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut pending: Vec<Option<Call<'_>>> = Vec::new();
    let mut outcomes: Vec<Option<Outcome>> = Vec::new();
    for (via, keys) in calls {
        let mut future = call(backend, *via, keys);
        match poll_once(future.as_mut()) {
            Poll::Ready(outcome) => {
                outcomes.push(Some(outcome));
                pending.push(None);
            }
            Poll::Pending => {
                outcomes.push(None);
                pending.push(Some(future));
            }
        }
    }
    let fate = |i: usize| fates.get(i).copied().unwrap_or(Fate::Await);
    for (i, future) in pending.iter_mut().enumerate() {
        if fate(i) == Fate::DropQueued {
            *future = None;
        }
    }
    if !park.is_zero() {
        tokio::time::sleep(park).await;
    }
    let waits = pending
        .into_iter()
        .enumerate()
        .map(|(i, future)| async move {
            let future = future?;
            if fate(i) == Fate::DropWaiting {
                // Long enough for the line to go out, well short of its reply (held back).
                let _ = tokio::time::timeout(HOLD / 4, future).await;
                return None;
            }
            Some(future.await)
        });
    let awaited = tokio::time::timeout(ROUND_BOUND, join_all(waits))
        .await
        .expect("a caller of a merged line never got its reply");
    for (outcome, got) in outcomes.iter_mut().zip(awaited) {
        if outcome.is_none() {
            *outcome = got;
        }
    }
    let held = tokio::time::timeout(ROUND_BOUND, held)
        .await
        .expect("the held get never got its reply")
        .expect("the held get's task");
    RoundResult {
        held,
        outcomes,
        get_lines: server.get_lines_since(from),
    }
}

/// Asserts that the keys of `calls` went out in one line, in the callers' order (a key the
/// line already lists is not listed again: a lookup's namespace generation once per line).
fn assert_merged(get_lines: &[Vec<String>], calls: &[(Via, Vec<String>)]) {
    let merged = get_lines.iter().any(|line| {
        let first_place = |key: &String| line.iter().position(|listed| listed == key);
        // Each caller's keys are all in the line, and its first key new to the line comes
        // after the previous caller's.
        let mut after = 0;
        calls.iter().all(|(_, keys)| {
            let places: Option<Vec<usize>> = keys.iter().map(first_place).collect();
            let Some(places) = places else {
                return false;
            };
            let newest = places.iter().copied().max().unwrap_or(0);
            let in_order = newest >= after;
            after = after.max(newest);
            in_order
        })
    });
    assert!(
        merged,
        "the gets of {} callers were not merged into one line: {get_lines:?}",
        calls.len()
    );
}

/// Checks that every request slot of the connection came back: `free` callers (at most 11,
/// whose keys fit one line) queued behind a held get, as many as the slots left beside it,
/// go out as one line, which they only do when each gets a slot at once; and each gets its
/// values.
async fn assert_slots_intact(backend: &TcpBackend, server: &FakeServer, tag: &str, free: usize) {
    let calls = callers(tag, free);
    let hold = format!("hold-{tag}");
    let result = merged_round(backend, server, &hold, &calls, &[], Duration::ZERO).await;
    check_round_exact(&result, &calls, tag);
    assert_merged(&result.get_lines, &calls);
}

/// Waits (a few seconds at most) until the backend answers again: a connection that went
/// silent is only dropped at its stall tick.
async fn recover(backend: &TcpBackend) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.get("warm").await.is_err() {
        assert!(Instant::now() < deadline, "the backend did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fake_backend(server: &FakeServer, max_in_flight: usize, timeout: Duration) -> TcpBackend {
    TcpBackend::builder()
        .server(server.addr.clone())
        .connections_per_server(1)
        .max_in_flight(max_in_flight)
        .timeout(timeout)
        .connect_timeout(timeout)
        // Hostile answers must not take the only server out: the next call checks recovery.
        .failure_threshold(1000)
        .build()
        .unwrap()
}

/// Checks every outcome of an honest round exactly: each surviving caller got all its own
/// values (and misses), and the held get its value.
fn check_round_exact(result: &RoundResult, calls: &[(Via, Vec<String>)], context: &str) {
    let held = result.held.as_ref().expect("the held get failed");
    assert!(held.is_some(), "{context}: the held get lost its value");
    for (i, ((_, keys), outcome)) in calls.iter().zip(&result.outcomes).enumerate() {
        let Some(outcome) = outcome else { continue };
        let context = format!("{context}, caller {i} ({keys:?})");
        match outcome {
            Ok(found) => check_fake(keys, found, true, &context),
            Err(err) => panic!("{context}: failed: {err:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Against the fake server.

/// Values answered in order, reversed, rotated (each caller's values at another caller's
/// places) or once per repeated key: every caller gets exactly its own values at its own
/// places, over several rounds of two merged lines each (past the 32 keys one line takes) on
/// one connection.
#[tokio::test]
async fn merged_callers_get_only_their_own_values_whatever_the_order_of_the_reply() {
    for answer in [
        Answer::Honest,
        Answer::Reversed,
        Answer::Rotated,
        Answer::FirstOccurrenceOnly,
    ] {
        let server = FakeServer::start(answer).await;
        // Slots for the held get and the 16 callers: each round merges all of them only if
        // the previous rounds gave every slot back.
        let backend = fake_backend(&server, 17, Duration::from_secs(2));
        assert!(backend.get("warm").await.unwrap().is_some());
        for round in 0..3 {
            let context = format!("{answer:?} round {round}");
            let calls = callers(&format!("r{round}"), 16);
            let result = merged_round(
                &backend,
                &server,
                &format!("hold{round}"),
                &calls,
                &[],
                Duration::ZERO,
            )
            .await;
            // 31 keys, then the 13 that do not fit.
            assert_merged(&result.get_lines, &calls[..12]);
            assert_merged(&result.get_lines, &calls[12..]);
            assert!(
                result.get_lines.iter().all(|line| line.len() <= 32),
                "{context}: a line past 32 keys: {:?}",
                result.get_lines
            );
            if answer == Answer::FirstOccurrenceOnly {
                // A repeated key answered once reaches its first place only: a miss for
                // the others, never a wrong value.
                for ((_, keys), outcome) in calls.iter().zip(&result.outcomes) {
                    let found = outcome.as_ref().unwrap().as_ref().unwrap();
                    check_fake(keys, found, false, &context);
                }
            } else {
                check_round_exact(&result, &calls, &context);
            }
        }
        // One connection all along: nothing broke it.
        let connections = server
            .lines()
            .iter()
            .filter(|line| line.starts_with("stats"))
            .count();
        assert_eq!(connections, 1, "{answer:?}: the connection was replaced");
    }
}

/// A hostile or broken answer to a merged line (duplicates, keys nobody asked, more values
/// than keys, error lines, values then an error, an `END` per value, truncation, hang-up):
/// no caller gets a value that is not its own, every caller of the line gets an error when
/// the answer is unusable, none waits past its timeout, and the backend recovers.
#[tokio::test]
async fn hostile_answers_to_a_merged_line_never_reach_the_wrong_caller() {
    for answer in [
        Answer::DuplicateFirst,
        Answer::UnaskedKey,
        Answer::MoreValuesThanKeys,
        Answer::ErrorLine,
        Answer::ValuesThenError,
        Answer::EndAfterEachValue,
        Answer::TruncatedThenSilent,
        Answer::TruncatedThenClose,
        Answer::Close,
    ] {
        let server = FakeServer::start(answer).await;
        // Slots for the held get and the 12 callers: the round after merges them all only
        // if every slot came back.
        let backend = fake_backend(&server, 13, Duration::from_millis(300));
        assert!(backend.get("warm").await.unwrap().is_some());
        // 31 keys: one line.
        let calls = callers("h", 12);
        let started = Instant::now();
        let result = merged_round(&backend, &server, "hold", &calls, &[], Duration::ZERO).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{answer:?}: the callers waited {:?}",
            started.elapsed()
        );
        assert_eq!(
            result
                .get_lines
                .iter()
                .filter(|line| line.len() > 4)
                .count(),
            1,
            "{answer:?}: not one merged line: {:?}",
            result.get_lines
        );
        for (i, ((_, keys), outcome)) in calls.iter().zip(&result.outcomes).enumerate() {
            let context = format!("{answer:?}, caller {i} ({keys:?})");
            match outcome.as_ref().unwrap() {
                Ok(found) => {
                    assert!(
                        !answer.fails_the_line(),
                        "{context}: got values from an unusable answer: {found:?}"
                    );
                    check_fake(keys, found, false, &context);
                }
                Err(err) => assert!(
                    answer.fails_the_line(),
                    "{context}: failed on a usable answer: {err:?}"
                ),
            }
        }
        // Still usable: the same connection if the answer left it in sync (error lines),
        // else a new one, which answers honestly.
        recover(&backend).await;
        let calls = callers("after", 12);
        let result =
            merged_round(&backend, &server, "hold-after", &calls, &[], Duration::ZERO).await;
        assert_merged(&result.get_lines, &calls);
        if answer.keeps_the_connection() {
            assert!(
                result.outcomes.iter().all(|outcome| matches!(
                    outcome,
                    Some(Err(BackendError::Server(message))) if message.starts_with("SERVER_ERROR")
                )),
                "the error line reached every caller: {:?}",
                result.outcomes
            );
            assert!(result.held.unwrap().is_some());
        } else {
            check_round_exact(&result, &calls, &format!("{answer:?}, after"));
        }
        backend
            .set("warm-set", "v".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert!(backend.get("warm-again").await.unwrap().is_some());
    }
}

/// Callers given up at each point: the first caller dropped in its yield (holding the write
/// side, its line still open) or once its line is written; other members dropped while
/// their keys wait in the open line or for the reply; half of them at once. The others get
/// exactly their values, and every slot comes back.
#[tokio::test]
async fn callers_dropped_at_any_point_leave_the_line_and_the_slots_intact() {
    use Fate::{Await as A, DropQueued as Q, DropWaiting as W};
    let server = FakeServer::start(Answer::Honest).await;
    // Fewer slots than a round's requests: some callers also wait (or are dropped) there.
    let backend = fake_backend(&server, 12, Duration::from_secs(2));
    assert!(backend.get("warm").await.unwrap().is_some());
    let patterns: [&[Fate]; 5] = [
        &[Q],
        &[W],
        &[A, Q, A, W, A, A, Q, A, A, A, A, A, A, A, A, W],
        &[Q, A, Q, A, Q, A, Q, A, Q, A, Q, A, Q, A, Q, A],
        &[W, W, W, W, W, W, W, W, W, W, W, W, W, W, W, W],
    ];
    for round in 0..15 {
        let fates = patterns[round % patterns.len()];
        let calls = callers(&format!("c{round}"), 16);
        let result = merged_round(
            &backend,
            &server,
            &format!("hold{round}"),
            &calls,
            fates,
            Duration::ZERO,
        )
        .await;
        if round == 0 {
            // The first caller was dropped in its yield; the others still share a line.
            assert_merged(&result.get_lines, &calls[1..3]);
        }
        check_round_exact(&result, &calls, &format!("round {round} ({fates:?})"));
    }
    assert_slots_intact(&backend, &server, "c-end", 11).await;
}

/// A first caller that is neither polled again nor dropped keeps its line open; the
/// connection takes it over (at the reader's second look, at the latest its stall tick)
/// and every member, the parked caller included, gets its own values.
#[tokio::test]
async fn a_parked_first_caller_is_taken_over_and_its_line_answered() {
    let server = FakeServer::start(Answer::Honest).await;
    // Stall tick every 200 ms: the takeover comes within about 400 ms. The callers'
    // deadline (timeout + connect timeout) past the park: a caller parked past its
    // deadline is given up on at it, even when its reply comes before it is polled again
    // (the connection keeps the deadlines, not a timer polled with the call).
    let backend = TcpBackend::builder()
        .server(server.addr.clone())
        .connections_per_server(1)
        .max_in_flight(13)
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(3))
        .failure_threshold(1000)
        .build()
        .unwrap();
    assert!(backend.get("warm").await.unwrap().is_some());
    let calls = callers("p", 12);
    let result = merged_round(
        &backend,
        &server,
        "hold",
        &calls,
        &[],
        Duration::from_millis(1200),
    )
    .await;
    assert_merged(&result.get_lines, &calls[..2]);
    check_round_exact(&result, &calls, "parked");
    let calls = callers("p-after", 12);
    let result = merged_round(&backend, &server, "hold2", &calls, &[], Duration::ZERO).await;
    check_round_exact(&result, &calls, "after the takeover");
    assert_merged(&result.get_lines, &calls);
}

/// The connection fails while callers wait in a line nobody has written yet (its first
/// caller still in its yield): every one of them gets an error at once, as does the request
/// in flight, and the next calls get a new connection.
#[tokio::test]
async fn a_connection_failing_before_the_open_line_is_written_fails_every_member() {
    let server = FakeServer::start(Answer::Honest).await;
    // A stall tick far beyond the hang-up: only the hang-up ends the line.
    let backend = fake_backend(&server, 1024, Duration::from_secs(2));
    assert!(backend.get("warm").await.unwrap().is_some());
    let calls = callers("f", 12);
    let started = Instant::now();
    let result = merged_round(&backend, &server, "holdclose", &calls, &[], HOLD * 3).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the members waited for their timeout: {:?}",
        started.elapsed()
    );
    assert!(
        matches!(result.held, Err(BackendError::Unreachable { .. })),
        "{:?}",
        result.held
    );
    for (i, outcome) in result.outcomes.iter().enumerate() {
        assert!(
            matches!(outcome, Some(Err(BackendError::Unreachable { .. }))),
            "caller {i}: {outcome:?}"
        );
    }
    // Nothing of the open line reached the hung-up connection.
    assert!(
        result.get_lines.iter().all(|line| line.len() == 1),
        "{:?}",
        result.get_lines
    );
    let calls = callers("f-after", 12);
    let result = merged_round(&backend, &server, "hold2", &calls, &[], Duration::ZERO).await;
    check_round_exact(&result, &calls, "after the hang-up");
}

/// Other commands queued between gets close the open line: requests reach the server in the
/// order they were queued, gets merge only with the gets next to them, and every reply goes
/// to its request.
#[tokio::test]
async fn other_commands_between_gets_close_the_line_and_keep_the_order() {
    let server = FakeServer::start(Answer::Honest).await;
    let backend = fake_backend(&server, 1024, Duration::from_secs(2));
    assert!(backend.get("warm").await.unwrap().is_some());
    let keys = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let get = |k: &[&str]| (Some((Via::Ordered, keys(k))), None);
    #[derive(Debug)]
    enum Other {
        Set,
        Delete,
        Touch,
        Incr,
    }
    let other = |op: Other, k: &str| (None, Some((op, k.to_string())));
    let script = [
        get(&["a1", "a2"]),
        get(&["b1"]),
        other(Other::Set, "s"),
        get(&["c1", "miss-c"]),
        other(Other::Delete, "d"),
        get(&["e1"]),
        get(&["e2", "e1"]),
        other(Other::Touch, "t"),
        other(Other::Incr, "i"),
        get(&["f1"]),
        get(&["f2"]),
    ];
    let from = server.lines().len();
    let held = tokio::spawn({
        let backend = backend.clone();
        async move { backend.get("hold").await }
    });
    while !server.lines()[from..].iter().any(|l| l.contains("hold")) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    type Step<'a> = Pin<Box<dyn Future<Output = Result<String, BackendError>> + Send + 'a>>;
    let b = &backend;
    let mut steps: Vec<Step<'_>> = Vec::new();
    for (get, other) in &script {
        let mut step: Step<'_> = match (get, other) {
            (Some((via, keys)), _) => Box::pin(async move {
                let found = call(b, *via, keys).await?;
                check_fake(keys, &found, true, &format!("{keys:?}"));
                Ok("values".to_string())
            }),
            (None, Some((op, key))) => {
                let backend = b;
                Box::pin(async move {
                    Ok(match op {
                        Other::Set => {
                            backend.set(key, "v".into(), 0, Lifetime::NEVER).await?;
                            "stored".to_string()
                        }
                        Other::Delete => format!("deleted {}", backend.delete(key).await?),
                        Other::Touch => {
                            format!("touched {}", backend.touch(key, Lifetime::NEVER).await?)
                        }
                        Other::Incr => format!("incr {:?}", backend.incr(key, 1).await?),
                    })
                })
            }
            (None, None) => unreachable!(),
        };
        assert!(poll_once(step.as_mut()).is_pending());
        steps.push(step);
    }
    let replies = tokio::time::timeout(ROUND_BOUND, join_all(steps))
        .await
        .expect("a reply was lost");
    let replies: Vec<String> = replies.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        replies,
        [
            "values",
            "values",
            "stored",
            "values",
            "deleted true",
            "values",
            "values",
            "touched true",
            "incr Some(1)",
            "values",
            "values"
        ]
    );
    assert!(held.await.unwrap().unwrap().is_some());
    let lines: Vec<String> = server.lines()[from + 1..]
        .iter()
        .map(|line| {
            // The command and its key(s), without the numbers of storage commands.
            let mut words = line.split(' ');
            let verb = words.next().unwrap_or_default();
            let rest: Vec<&str> = match verb {
                "get" | "gets" => words.collect(),
                _ => words.take(1).collect(),
            };
            format!("{verb} {}", rest.join(" "))
        })
        .collect();
    assert_eq!(
        lines,
        [
            "gets a1 a2 b1",
            "set s",
            "gets c1 miss-c",
            "delete d",
            "gets e1 e2",
            "touch t",
            "incr i",
            "gets f1 f2",
        ]
    );
}

/// Callers beyond the connection's request slots wait for one (and some give up while
/// waiting): those that get a slot while the line is open join it, the others go out later,
/// and every caller gets exactly its values, round after round.
#[tokio::test]
async fn callers_waiting_for_a_slot_join_later_lines_and_slots_are_not_lost() {
    use Fate::{Await as A, DropQueued as Q};
    let server = FakeServer::start(Answer::Honest).await;
    let backend = fake_backend(&server, 4, Duration::from_secs(2));
    assert!(backend.get("warm").await.unwrap().is_some());
    for round in 0..6 {
        let calls = callers(&format!("s{round}"), 10);
        let fates: &[Fate] = if round % 2 == 0 {
            &[]
        } else {
            &[A, A, A, A, Q, A, Q, A, Q, A]
        };
        let result = merged_round(
            &backend,
            &server,
            &format!("hold{round}"),
            &calls,
            fates,
            Duration::ZERO,
        )
        .await;
        check_round_exact(&result, &calls, &format!("round {round}"));
        if round == 0 {
            assert_merged(&result.get_lines, &calls[..3]);
        }
    }
    assert_slots_intact(&backend, &server, "s-end", 3).await;
}

// ---------------------------------------------------------------------------------------
// Against real memcached, directly and through twemproxy.

/// The fixed items every stress task reads: small ones, and ones near the item size limit.
struct Fixed {
    items: HashMap<String, Bytes>,
}

impl Fixed {
    fn new() -> Self {
        let mut items = HashMap::new();
        for i in 0..6 {
            items.insert(format!("sh-{i}"), Bytes::from(format!("sh-{i}=fixed")));
        }
        for i in 0..2 {
            // Near memcached's default 1 MiB item size limit (key and overhead included).
            let mut value = format!("big-{i}=").into_bytes();
            value.resize(1_000_000, b'a' + i as u8);
            items.insert(format!("big-{i}"), Bytes::from(value));
        }
        Fixed { items }
    }

    async fn store(&self, backend: &TcpBackend) {
        for (key, value) in &self.items {
            backend
                .set(key, value.clone(), 7, Lifetime::NEVER)
                .await
                .unwrap_or_else(|err| panic!("storing {key}: {err}"));
        }
    }
}

/// What a task knows of one of its own keys: the last version set that was confirmed, and
/// the last one asked for (a set given up on may have been applied or not).
#[derive(Clone, Copy, Default, Debug)]
struct Versions {
    confirmed: Option<u64>,
    attempted: Option<u64>,
}

/// What one task of the stress expects of every key it reads.
struct Expect<'a> {
    fixed: &'a Fixed,
    own: &'a HashMap<String, Versions>,
}

impl Expect<'_> {
    fn check(&self, key: &str, item: Option<&Item>, context: &str) {
        if key.starts_with("miss") {
            assert!(item.is_none(), "{context}: a value for the miss {key}");
            return;
        }
        if let Some(expected) = self.fixed.items.get(key) {
            let item = item.unwrap_or_else(|| panic!("{context}: {key} lost"));
            assert!(
                item.value == *expected && item.flags == 7,
                "{context}: {key} answered with another value ({} bytes: {:?}…)",
                item.value.len(),
                String::from_utf8_lossy(&item.value[..item.value.len().min(24)])
            );
            return;
        }
        let known = self.own.get(key).copied().unwrap_or_default();
        let Some(item) = item else {
            assert!(
                known.confirmed.is_none(),
                "{context}: {key} missing after a confirmed set"
            );
            return;
        };
        let text = String::from_utf8_lossy(&item.value);
        let version = text
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{context}: {key} answered with another value {text:?}"));
        assert!(
            known.confirmed.is_none_or(|c| version >= c)
                && known.attempted.is_some_and(|a| version <= a),
            "{context}: {key} = version {version}, expected within {known:?}"
        );
    }

    fn check_all(&self, keys: &[String], found: &[Option<Item>], context: &str) {
        assert_eq!(found.len(), keys.len(), "{context}: one answer per key");
        for (key, item) in keys.iter().zip(found) {
            self.check(key, item.as_ref(), context);
        }
    }
}

/// One task of the stress: reads (one key, several, several in order, keys repeated across
/// tasks and within a call, misses, values near the item size limit), awaited, given up at
/// a random point or parked; and, between them, sets, gets followed by a cas, increments,
/// touches and deletes of its own keys. Every answer is checked.
async fn stress_task(
    backend: TcpBackend,
    fixed: Arc<Fixed>,
    seed: u64,
    task: String,
    steps: usize,
    bigs: bool,
) {
    use rand::{Rng, SeedableRng};

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let own_keys: Vec<String> = (0..3).map(|k| format!("t{task}-own{k}")).collect();
    let mut own: HashMap<String, Versions> = HashMap::new();
    let mut version = 0u64;
    let counter = format!("t{task}-ctr");
    let mut count = 0u64;
    backend
        .set(&counter, "0".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let mut pool: Vec<String> = (0..6).map(|i| format!("sh-{i}")).collect();
    pool.extend(own_keys.iter().cloned());
    pool.extend((0..2).map(|i| format!("miss-t{task}-{i}")));
    for step in 0..steps {
        let context = format!("task {task} step {step} (seed {seed})");
        let pick = |rng: &mut rand::rngs::StdRng| {
            if bigs && rng.random_bool(0.03) {
                format!("big-{}", rng.random_range(0..2))
            } else {
                pool[rng.random_range(0..pool.len())].clone()
            }
        };
        let n = rng.random_range(1..7);
        let keys: Vec<String> = (0..n).map(|_| pick(&mut rng)).collect();
        let via = [Via::Get, Via::Many, Via::Ordered][rng.random_range(0..3)];
        let keys = if matches!(via, Via::Get) {
            keys[..1].to_vec()
        } else {
            keys
        };
        match rng.random_range(0..12) {
            0..=4 => {
                let expect = Expect {
                    fixed: &fixed,
                    own: &own,
                };
                let found = call(&backend, via, &keys)
                    .await
                    .unwrap_or_else(|err| panic!("{context}: {keys:?}: {err}"));
                expect.check_all(&keys, &found, &context);
            }
            5 => {
                // Given up at a random point.
                let bound = Duration::from_micros(rng.random_range(0..1500));
                let snapshot = own.clone();
                if let Ok(found) = tokio::time::timeout(bound, call(&backend, via, &keys)).await {
                    let found = found.unwrap_or_else(|err| panic!("{context}: {err}"));
                    let expect = Expect {
                        fixed: &fixed,
                        own: &snapshot,
                    };
                    expect.check_all(&keys, &found, &context);
                }
            }
            6 => {
                // Polled once, left unpolled while other tasks run, then awaited or dropped.
                let mut future = call(&backend, via, &keys);
                let first = poll_once(future.as_mut());
                for _ in 0..rng.random_range(0..4) {
                    tokio::task::yield_now().await;
                }
                if rng.random_bool(0.5) {
                    let found = match first {
                        Poll::Ready(found) => found,
                        Poll::Pending => future.await,
                    };
                    let found = found.unwrap_or_else(|err| panic!("{context}: parked: {err}"));
                    let expect = Expect {
                        fixed: &fixed,
                        own: &own,
                    };
                    expect.check_all(&keys, &found, &context);
                }
            }
            7 | 8 => {
                let key = &own_keys[rng.random_range(0..own_keys.len())];
                version += 1;
                let entry = own.entry(key.clone()).or_default();
                entry.attempted = Some(version);
                let value = Bytes::from(format!("{key}:{version}"));
                if rng.random_bool(0.3) {
                    // A set given up at a random point.
                    let bound = Duration::from_micros(rng.random_range(0..1500));
                    let set = backend.set(key, value, 0, Lifetime::NEVER);
                    if let Ok(result) = tokio::time::timeout(bound, set).await {
                        result.unwrap_or_else(|err| panic!("{context}: set: {err}"));
                        own.get_mut(key).unwrap().confirmed = Some(version);
                    }
                } else {
                    backend
                        .set(key, value, 0, Lifetime::NEVER)
                        .await
                        .unwrap_or_else(|err| panic!("{context}: set: {err}"));
                    own.get_mut(key).unwrap().confirmed = Some(version);
                }
            }
            9 => {
                // A get whose cas token must be this key's: requests of one connection go
                // out in order, so nothing else changes the key in between.
                let key = &own_keys[rng.random_range(0..own_keys.len())];
                let item = backend
                    .get(key)
                    .await
                    .unwrap_or_else(|err| panic!("{context}: get: {err}"));
                let expect = Expect {
                    fixed: &fixed,
                    own: &own,
                };
                expect.check(key, item.as_ref(), &context);
                if let Some(item) = item {
                    version += 1;
                    let value = Bytes::from(format!("{key}:{version}"));
                    let cas = item.cas.expect("gets returns a cas");
                    let outcome = backend
                        .cas(key, value, 0, Lifetime::NEVER, cas)
                        .await
                        .unwrap_or_else(|err| panic!("{context}: cas: {err}"));
                    assert_eq!(
                        outcome,
                        CasOutcome::Stored,
                        "{context}: {key}'s cas token was not its own"
                    );
                    let entry = own.get_mut(key).unwrap();
                    entry.attempted = Some(version);
                    entry.confirmed = Some(version);
                }
            }
            10 => {
                count += 1;
                let got = backend
                    .incr(&counter, 1)
                    .await
                    .unwrap_or_else(|err| panic!("{context}: incr: {err}"));
                assert_eq!(got, Some(count), "{context}: incr of {counter}");
                let key = &own_keys[0];
                let touched = backend
                    .touch(key, Lifetime::NEVER)
                    .await
                    .unwrap_or_else(|err| panic!("{context}: touch: {err}"));
                if own.get(key).is_some_and(|v| v.confirmed.is_some()) {
                    assert!(touched, "{context}: {key} not there to touch");
                }
            }
            _ => {
                let key = format!("t{task}-del");
                backend
                    .set(&key, "d".into(), 0, Lifetime::NEVER)
                    .await
                    .unwrap_or_else(|err| panic!("{context}: set: {err}"));
                assert!(backend.delete(&key).await.unwrap(), "{context}: delete");
                assert!(backend.get(&key).await.unwrap().is_none(), "{context}");
            }
        }
        for _ in 0..rng.random_range(0..3) {
            tokio::task::yield_now().await;
        }
    }
}

/// Runs `tasks` stress tasks on `backend` within a minute.
async fn stress(backend: &TcpBackend, tasks: usize, steps: usize, bigs: bool, base_seed: u64) {
    // Task names unique to the seed: rounds may share a server.
    let fixed = Arc::new(Fixed::new());
    fixed.store(backend).await;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            tokio::spawn(stress_task(
                backend.clone(),
                Arc::clone(&fixed),
                base_seed.wrapping_add(task as u64),
                format!("{base_seed}-{task}"),
                steps,
                bigs,
            ))
        })
        .collect();
    let all = async {
        for handle in handles {
            if let Err(err) = handle.await {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the stress did not finish within 60 s");
}

fn memcached_backend(addr: String, max_in_flight: usize) -> TcpBackend {
    TcpBackend::builder()
        .server(addr)
        .connections_per_server(1)
        .max_in_flight(max_in_flight)
        // Generous: under this load on a slow machine only a lost reply is late.
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn stress_seed() -> u64 {
    std::env::var("MERGE_STRESS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x6d65_7267)
}

/// Many tasks on one connection to a real memcached, on the current-thread runtime (every
/// task's request queues behind the others', so most gets are merged).
#[tokio::test]
async fn real_memcached_stress_current_thread() {
    let server = memcached_or_skip!("merge_adversarial::stress_current_thread");
    for (round, max_in_flight) in [1024, 8].into_iter().enumerate() {
        let backend = memcached_backend(server.addr(), max_in_flight);
        stress(&backend, 32, 150, true, stress_seed() + round as u64 * 1000).await;
        assert!(!backend.is_server_down(0));
    }
}

/// The same on the multi-thread runtime: callers queue from two threads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_memcached_stress_multi_thread() {
    let server = memcached_or_skip!("merge_adversarial::stress_multi_thread");
    for (round, max_in_flight) in [1024, 8].into_iter().enumerate() {
        let backend = memcached_backend(server.addr(), max_in_flight);
        stress(
            &backend,
            32,
            150,
            true,
            stress_seed() + 7 + round as u64 * 1000,
        )
        .await;
        assert!(!backend.is_server_down(0));
    }
}

type Step<'a> = Pin<Box<dyn Future<Output = String> + Send + 'a>>;

/// The values of `keys` read in order, joined by commas (`-` for a miss).
fn ordered_values<'a>(backend: &'a TcpBackend, keys: &'static [&'static str]) -> Step<'a> {
    Box::pin(async move {
        let found = backend
            .get_many_by_key_ordered("route", keys, ROUND_BOUND)
            .await
            .unwrap();
        found
            .iter()
            .map(|item| match item {
                Some(item) => String::from_utf8_lossy(&item.value).into_owned(),
                None => "-".to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Requests queued on one connection reach memcached in order, merged gets included: each
/// get sees exactly the sets, deletes and increments queued before it and none after.
#[tokio::test]
async fn real_memcached_sees_merged_gets_in_the_order_they_were_queued() {
    let server = memcached_or_skip!("merge_adversarial::order");
    let backend = memcached_backend(server.addr(), 1024);
    backend
        .set("k", "v1".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    backend
        .set("n", "5".into(), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let b = &backend;
    let get = |keys: &'static [&'static str]| ordered_values(b, keys);
    let mut steps: Vec<Step<'_>> = vec![
        get(&["k", "n"]),
        get(&["n", "k", "k"]),
        Box::pin(async move {
            b.set("k", "v2".into(), 0, Lifetime::NEVER).await.unwrap();
            "set".to_string()
        }),
        get(&["k"]),
        get(&["miss", "k"]),
        Box::pin(async move { format!("{:?}", b.incr("n", 1).await.unwrap()) }),
        get(&["n"]),
        Box::pin(async move { format!("{}", b.delete("k").await.unwrap()) }),
        get(&["k", "n"]),
        Box::pin(async move {
            format!(
                "{}",
                b.add("k", "v3".into(), 0, Lifetime::NEVER).await.unwrap()
            )
        }),
        get(&["n", "k"]),
        get(&["k"]),
    ];
    // All queued before any is awaited: the first goes out at once, the others queue behind
    // it (and the gets next to each other merge).
    for step in &mut steps {
        assert!(poll_once(step.as_mut()).is_pending());
    }
    let got = tokio::time::timeout(ROUND_BOUND, join_all(steps))
        .await
        .expect("a reply was lost");
    assert_eq!(
        got,
        [
            "v1,5", "5,v1,v1", "set", "v2", "-,v2", "Some(6)", "6", "true", "-,6", "true", "6,v3",
            "v3"
        ]
    );
}

/// A value near the item size limit for every key of a full merged line: 32 values of about
/// 1 MB in one reply, each to its own caller.
#[tokio::test]
async fn real_memcached_full_line_of_values_near_the_size_limit() {
    let server = memcached_or_skip!("merge_adversarial::near_limit");
    let backend = memcached_backend(server.addr(), 1024);
    let mut expected = HashMap::new();
    for i in 0..32 {
        let key = format!("large-{i}");
        let mut value = format!("{key}=").into_bytes();
        value.resize(1_000_000 - i, b'0' + (i % 10) as u8);
        let value = Bytes::from(value);
        backend
            .set(&key, value.clone(), i as u32, Lifetime::NEVER)
            .await
            .unwrap();
        expected.insert(key, value);
    }
    let keys: Vec<Vec<String>> = (0..32)
        .map(|i| vec![format!("large-{i}"), format!("miss-{i}")])
        .collect();
    // Callers of one key and a miss each: 16 per line of 32 keys.
    let calls = keys.iter().map(|keys| call(&backend, Via::Ordered, keys));
    let got = tokio::time::timeout(ROUND_BOUND, join_all(calls))
        .await
        .expect("a reply was lost");
    for (i, (keys, found)) in keys.iter().zip(got).enumerate() {
        let found = found.unwrap_or_else(|err| panic!("caller {i}: {err}"));
        let item = found[0]
            .as_ref()
            .unwrap_or_else(|| panic!("caller {i} lost its value"));
        assert!(
            item.value == expected[&keys[0]] && item.flags == i as u32,
            "caller {i} got another value"
        );
        assert!(found[1].is_none());
    }
}

/// Keys of 250 bytes, the longest memcached takes: merged lines near the 4 KiB of keys one
/// line takes, past the 2 KiB memcached reads before it treats a line as a large multi-get.
#[tokio::test]
async fn real_memcached_lines_of_the_longest_keys() {
    let server = memcached_or_skip!("merge_adversarial::long_keys");
    let backend = memcached_backend(server.addr(), 1024);
    let long = |name: &str| format!("{name:-<250}");
    let shared = long("shared");
    backend
        .set(&shared, Bytes::from(shared.clone()), 0, Lifetime::NEVER)
        .await
        .unwrap();
    let keys: Vec<Vec<String>> = (0..24)
        .map(|i| {
            vec![
                shared.clone(),
                long(&format!("own{i}")),
                long(&format!("miss{i}")),
            ]
        })
        .collect();
    for keys in &keys {
        backend
            .set(&keys[1], Bytes::from(keys[1].clone()), 0, Lifetime::NEVER)
            .await
            .unwrap();
    }
    for round in 0..3 {
        let calls = keys.iter().map(|keys| call(&backend, Via::Ordered, keys));
        let got = tokio::time::timeout(ROUND_BOUND, join_all(calls))
            .await
            .expect("a reply was lost");
        for (i, (keys, found)) in keys.iter().zip(got).enumerate() {
            let found = found.unwrap_or_else(|err| panic!("round {round}, caller {i}: {err}"));
            let values: Vec<Option<&[u8]>> = found
                .iter()
                .map(|item| item.as_ref().map(|item| &item.value[..]))
                .collect();
            assert_eq!(
                values,
                [Some(keys[0].as_bytes()), Some(keys[1].as_bytes()), None],
                "round {round}, caller {i}"
            );
        }
    }
}

/// The stress through twemproxy in front of two servers: it splits each merged line between
/// them and reassembles the reply, in its own order; every caller still gets its own
/// values at its own places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twemproxy_stress() {
    let test = "merge_adversarial::twemproxy";
    let servers = [memcached_or_skip!(test), memcached_or_skip!(test)];
    let Some(proxy) = Nutcracker::start("merge_adversarial", &servers) else {
        return;
    };
    let backend = memcached_backend(format!("127.0.0.1:{}", proxy.port()), 1024);
    stress(&backend, 24, 100, true, stress_seed() + 99).await;
    assert!(!backend.is_server_down(0));
}

/// twemproxy (nutcracker 0.5.0) answers a multi-get that touches a server it cannot reach
/// with one `SERVER_ERROR` for the whole line and then closes the client connection, where a
/// one-key get of that server's key gets the error alone on a connection that stays. A
/// caller whose keys are all on a live server must not lose its values because its get was
/// merged with another caller's key on the dead one: with one of two servers down, nearly
/// every merged line fails, with everything in flight on its connection, and the failures
/// mark the proxy down.
///
/// Broke with the first version of merged gets (635bfd5): the live keys' callers got the
/// `SERVER_ERROR` or a reset connection. Sending the members again on their own does not
/// help (the connection is gone), so gets are merged only on connections to a server that
/// answered `stats settings` (memcached itself); twemproxy closes the connection on it.
#[tokio::test]
async fn twemproxy_error_for_one_callers_key_does_not_fail_the_callers_merged_with_it() {
    let test = "merge_adversarial::twemproxy_dead_server";
    let mut servers = [memcached_or_skip!(test), memcached_or_skip!(test)];
    let Some(proxy) = Nutcracker::start("merge_adversarial", &servers) else {
        return;
    };
    let backend = memcached_backend(format!("127.0.0.1:{}", proxy.port()), 1024);
    let direct: Vec<TcpBackend> = servers
        .iter()
        .map(|server| memcached_backend(server.addr(), 1024))
        .collect();
    // Keys through the proxy, sorted by the server nutcracker put them on.
    let mut on = [Vec::new(), Vec::new()];
    for i in 0..60 {
        let key = format!("tw-{i}-key");
        backend
            .set(&key, Bytes::from(key.clone()), 0, Lifetime::NEVER)
            .await
            .unwrap();
        for (index, server) in direct.iter().enumerate() {
            if server.get(&key).await.unwrap().is_some() {
                on[index].push(key.clone());
            }
        }
    }
    assert!(
        on[0].len() >= 11 && !on[1].is_empty(),
        "keys not spread: {on:?}"
    );
    servers[1].kill();
    // Separately, the live server's keys are still answered.
    assert!(backend.get(&on[0][0]).await.unwrap().is_some());
    assert!(backend.get(&on[1][0]).await.is_err());

    // The first get goes out at once; the next ones queue behind it and merge: a key on
    // the dead server first, then ten on the live one.
    let mut calls: Vec<Vec<String>> = vec![vec![on[0][10].clone()], vec![on[1][0].clone()]];
    calls.extend(on[0][..10].iter().map(|key| vec![key.clone()]));
    let mut futures: Vec<Call<'_>> = calls
        .iter()
        .map(|keys| call(&backend, Via::Ordered, keys))
        .collect();
    for future in &mut futures {
        assert!(poll_once(future.as_mut()).is_pending());
    }
    let outcomes = tokio::time::timeout(ROUND_BOUND, join_all(futures))
        .await
        .expect("a reply was lost");
    assert!(
        outcomes[1].is_err(),
        "the dead server's key: {:?}",
        outcomes[1]
    );
    for (keys, outcome) in calls
        .iter()
        .zip(&outcomes)
        .filter(|(keys, _)| keys[0] != on[1][0])
    {
        match outcome {
            Ok(found) => assert_eq!(
                found[0].as_ref().map(|item| &item.value[..]),
                Some(keys[0].as_bytes()),
                "{keys:?}"
            ),
            Err(err) => panic!("{keys:?}, on the live server, failed: {err:?}"),
        }
    }
}
