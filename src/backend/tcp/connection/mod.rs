//! One pipelined connection to one memcached server.
//!
//! Many requests share the socket. Text protocol replies come back in request order, so a
//! reply is matched to its request through a FIFO of waiters (the shape of redis-rs'
//! multiplexed connection), kept in the same order as the requests' bytes on the socket.
//!
//! **Writing.** The write side has one owner at a time: nobody, a task writing
//! synchronously (a caller, or the reader), or the writer task. Requests that are not
//! written at once wait in a backlog, in order, behind whatever the owner is writing.
//!
//! - On an idle connection (nothing in flight) a caller claims the write side and writes
//!   its request itself, in its own task, with a non-blocking write: no hand-off to another
//!   task, no extra wakeup.
//! - When requests are already in flight, its reply comes after theirs anyway, so the
//!   caller claims the write side, puts its request in the backlog and yields once, letting
//!   the other tasks that are ready to run add theirs behind it, then writes the whole
//!   backlog in one `writev`. One write for several requests costs memcached and both
//!   kernels much less than one each. Consecutive gets in the backlog are merged into one
//!   multi-key line while they wait, which memcached answers with one write instead of one
//!   each ([`super::merge`]). A caller dropped during its yield hands the write
//!   side to the writer task. One that is neither dropped nor polled again is taken over:
//!   the reader writes the backlog when it finds the same caller still yielding at its next
//!   reply, and, when no reply is due, its stall tick does. So the backlog never waits long
//!   for a caller that went away.
//! - An owner never waits for the socket: when the socket is full (or after a few rounds of
//!   other callers' backlog) it hands ownership and the rest of the bytes to the writer
//!   task, which waits for the socket to drain.
//!
//! A waiter's place in the FIFO, the backlog and the owner change together under one lock,
//! and an owner's writes are synchronous (no `.await` between claiming the write side and
//! handing it on), so a caller whose future is dropped cannot leave half a request on the
//! socket or a waiter out of order. Every change of owner is a method of [`WriteTurn`],
//! which checks the rules it relies on in debug builds.
//!
//! **Reading.** A reader task parses replies and hands each to the oldest waiter. It reads
//! even when nothing is in flight, so a server that hangs up or sends something nobody
//! asked for is noticed before the connection is used again. Reading and writing are done
//! by different tasks when the socket is full, so a large batch being written while the
//! server's replies fill the socket buffer cannot deadlock with the server.
//!
//! **Deadlines.** A caller's deadline goes with its waiter, and the connection keeps them
//! all with one timer, which the reader polls: a timer per call would be registered in and
//! removed from tokio's timer wheel on every call (about 0.75k instructions of a 10k get
//! at one task). When it fires, every caller whose deadline passed is given up on (its
//! channel closed, its place in the FIFO kept: its reply is still read, and dropped), and
//! the timer is armed for the earliest deadline left. A caller resets it only when its own
//! deadline comes first. Waiting for a slot or for a connection to open is rare and has a
//! timer of its own.
//!
//! When anything goes wrong (I/O error, EOF, unparseable or unsolicited bytes, a reply of a
//! kind its request cannot get or for a request not yet written, a reply that stalls) the
//! connection is marked closed, every waiter gets the error, both tasks stop,
//! and the owner replaces the connection.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, TryAcquireError, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

mod read;
mod write;

use self::read::{Reader, read_loop};
use self::write::{MAX_SYNC_BATCHES, WriteTurn, Yielding, write_loop, write_now};
use super::merge::{OpenGets, Retrieval, Waiter, Waiting, earliest};
use super::protocol::{self, Asked, Limits, ProtocolError, Reply};
use crate::backend::{BackendError, ProtocolViolation, UnreachableReason};

/// How a connection is set up and bounded.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub(crate) connect_timeout: Duration,
    /// Requests outstanding with no reply completed for this long end the connection.
    pub(crate) stall_timeout: Duration,
    /// Requests accepted but not yet answered (written, or in the backlog), at most; further
    /// callers wait for a reply to free a slot.
    pub(crate) max_in_flight: usize,
    pub(crate) limits: Limits,
}

/// A handle to a live connection; dropping the last handle ends its tasks.
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

/// What the callers, the writer task and the reader task share.
struct Shared {
    socket: OwnedWriteHalf,
    state: Mutex<State>,
    /// One permit per request that may be outstanding; the reader gives a permit back with
    /// every reply. Closed when the connection is.
    slots: Semaphore,
    /// The permits `slots` started with.
    max_outstanding: usize,
    /// Wakes the writer task when it is handed the write side.
    wake_writer: Notify,
    /// Mirrors `State::closed` for a lock-free check.
    closed: AtomicBool,
    /// Set when the stall tick ended the connection with no caller left waiting to be told
    /// (every one given up at its deadline, or gone): the server's health hears of it from
    /// [`Connection::take_unreported_stall`] instead.
    unreported_stall: AtomicBool,
    /// Whether queued gets may be merged into one line: only once the server showed it is
    /// memcached itself ([`Connection::merge_gets`]).
    merge_gets: AtomicBool,
    /// The two tasks, aborted when the connection ends.
    tasks: OnceLock<[AbortHandle; 2]>,
    server: Arc<str>,
}

struct State {
    /// Whom each request's reply goes to, in the order of their bytes on the socket: one
    /// per request in the backlog or written, not yet for the open merged gets.
    waiters: VecDeque<Waiting>,
    /// What each of those requests asked for, in the same order, until the reader takes it
    /// to bound the request's reply while parsing it.
    asked: VecDeque<Asked>,
    /// Who writes, and what waits to be written.
    write: WriteTurn,
    /// Set once the connection is finished: no request is accepted after it. The write
    /// side's methods are only called while it is clear.
    closed: bool,
    /// The callers' deadlines, one timer for the connection rather than one per call: the
    /// reader polls it, and when it fires gives up on every caller whose deadline passed
    /// ([`State::expire`]) and arms it for the earliest deadline left. A caller only
    /// resets it when its deadline comes before what it is armed for, so callers with
    /// the same timeout, one after another, leave it alone: it fires once per timeout at
    /// most, finds their deadlines later and moves on to the earliest.
    timer: Pin<Box<Sleep>>,
    /// What `timer` is armed for: no later than the deadline of any caller still waiting.
    /// `None` while it is armed for [`far_future`].
    timer_at: Option<Instant>,
}

impl State {
    /// Queues a caller's `request` (which asked `asked`, its reply for `waiter`) and says
    /// how it goes out. With `merge`, a get queued behind an owner joins the open merged
    /// gets when it fits (see [`super::merge`]).
    fn accept(&mut self, request: Bytes, asked: Asked, waiter: Waiter, merge: bool) -> Claim {
        // Requests queued before this one await replies, so its reply comes after theirs
        // anyway and it may yield first.
        let in_flight = !self.waiters.is_empty();
        let idle = self.write.is_idle();
        if idle && !in_flight {
            self.waiters.push_back(Waiting::One(waiter));
            self.asked.push_back(asked);
            self.write.claim_now();
            return Claim::Now(request);
        }
        match merge.then(|| Retrieval::of(&request, &asked)).flatten() {
            Some(retrieval) => {
                let waiter = match self.write.open.as_mut() {
                    Some(open) => match open.join(&retrieval, waiter) {
                        Ok(()) => return Claim::Queued,
                        Err(waiter) => waiter,
                    },
                    None => waiter,
                };
                self.seal();
                self.write.open = Some(OpenGets::open(request, retrieval, waiter));
            }
            None => {
                self.seal();
                self.waiters.push_back(Waiting::One(waiter));
                self.asked.push_back(asked);
                self.write.backlog.push_back(request);
            }
        }
        if idle {
            Claim::AfterYield(self.write.claim_after_yield())
        } else {
            Claim::Queued
        }
    }

    /// Closes the open merged gets, if any, into the backlog (with its waiters and what it
    /// asked): nothing joins it any more. Done before a batch is taken from the backlog,
    /// so it is written with it, and before another request queues behind it.
    fn seal(&mut self) {
        if let Some(open) = self.write.open.take() {
            let (request, asked, waiting) = open.seal();
            self.write.backlog.push_back(request);
            self.asked.push_back(asked);
            self.waiters.push_back(waiting);
        }
    }

    /// [`WriteTurn::resume`], with the open merged gets in the backlog.
    fn resume(&mut self, epoch: u64, batch: &mut VecDeque<Bytes>) -> bool {
        // Harmless when the yield was taken over: the gets only stops taking joiners.
        self.seal();
        self.write.resume(epoch, batch)
    }

    /// [`WriteTurn::next_batch`], with the open merged gets in the backlog.
    fn next_batch(&mut self, by: Owner, batch: &mut VecDeque<Bytes>) -> bool {
        self.seal();
        self.write.next_batch(by, batch)
    }

    /// Arms the timer for a caller's `deadline`, unless it is armed for that or earlier.
    fn arm(&mut self, deadline: Instant) {
        if self.timer_at.is_none_or(|at| deadline < at) {
            self.timer_at = Some(deadline);
            self.timer.as_mut().reset(deadline);
        }
    }

    /// The timer fired: gives up on the callers whose deadline passed (their requests keep
    /// their place, and their replies are read and dropped) and arms the timer for the
    /// earliest deadline left.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut next = None;
        for waiting in self.waiters.iter_mut() {
            next = earliest(next, waiting.expire(now));
        }
        // Gets queued but not yet sealed into the backlog wait too.
        if let Some(open) = self.write.open.as_mut() {
            next = earliest(next, open.expire(now));
        }
        self.timer_at = next;
        self.timer.as_mut().reset(next.unwrap_or_else(far_future));
    }

    /// [`WriteTurn::take_over_stale_yield`], with the open merged gets in the backlog.
    fn take_over_stale_yield(
        &mut self,
        seen: &mut Option<u64>,
        batch: &mut VecDeque<Bytes>,
    ) -> bool {
        if self.write.owner == Owner::Yielding && *seen == Some(self.write.yield_epoch) {
            self.seal();
        }
        self.write.take_over_stale_yield(seen, batch)
    }
}

/// Who may write to the socket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    /// Nobody.
    Idle,
    /// A caller that yields before writing the backlog (see the module docs).
    Yielding,
    /// A task writing synchronously: a caller, or the reader flushing the backlog.
    Sync,
    /// The writer task, which waits for the socket to take the backlog.
    Task,
}

/// A call's deadline passed before its reply came.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// A deadline for no deadline, as `tokio::time` uses: about 30 years from now.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// The deadline `after` from now; a duration too large to add is no deadline (as
/// `tokio::time::timeout` treats it).
pub(crate) fn deadline_in(after: Duration) -> Instant {
    Instant::now().checked_add(after).unwrap_or_else(far_future)
}

/// How a caller's request goes out.
enum Claim {
    /// The caller owns the write side and writes its request at once.
    Now(Bytes),
    /// The caller owns the write side; its request is the first in the backlog, which it
    /// writes after a yield. Holds the yield's epoch.
    AfterYield(u64),
    /// The request is in the backlog, for the owner.
    Queued,
}

impl Connection {
    /// Connects to `host:port` within the connect timeout and starts the two tasks.
    pub(crate) async fn connect(
        host: &str,
        port: u16,
        server: Arc<str>,
        settings: &ConnectionSettings,
    ) -> Result<Self, BackendError> {
        let stream =
            tokio::time::timeout(settings.connect_timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| BackendError::Timeout {
                    server: server.to_string(),
                    after: settings.connect_timeout,
                })?
                .map_err(|err| unreachable(&server, UnreachableReason::Connect(Arc::new(err))))?;
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let max_outstanding = settings.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            socket: write_half,
            state: Mutex::new(State {
                waiters: VecDeque::new(),
                asked: VecDeque::new(),
                write: WriteTurn::new(),
                closed: false,
                timer: Box::pin(tokio::time::sleep_until(far_future())),
                timer_at: None,
            }),
            slots: Semaphore::new(max_outstanding),
            max_outstanding,
            wake_writer: Notify::new(),
            closed: AtomicBool::new(false),
            unreported_stall: AtomicBool::new(false),
            merge_gets: AtomicBool::new(false),
            tasks: OnceLock::new(),
            server: Arc::clone(&server),
        });
        let writer = tokio::spawn(write_loop(Arc::clone(&shared))).abort_handle();
        let reader = tokio::spawn(read_loop(
            Reader {
                shared: Arc::clone(&shared),
            },
            read_half,
            settings.clone(),
        ))
        .abort_handle();
        let _ = shared.tasks.set([writer, reader]);
        // A task may have failed the connection before its handles were stored.
        if shared.is_closed() {
            shared.abort_tasks();
        }
        tracing::debug!(%server, "memcached connection opened");
        Ok(Self { shared })
    }

    /// Lets gets queued on this connection be merged into one multi-key line from now on
    /// (see [`super::merge`]). Only for memcached itself: twemproxy (nutcracker 0.5) answers
    /// a multi-get that touches an unreachable server with one error for all its keys and
    /// closes the connection, which would fail every caller merged into the line.
    pub(crate) fn merge_gets(&self) {
        self.shared.merge_gets.store(true, Ordering::Relaxed);
    }

    /// Whether the connection has ended and must be replaced.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Whether the stall tick ended the connection while every caller had given up, which
    /// nobody was told (once: cleared here). A server that answers nothing to callers
    /// bounded tighter than its timeout is noticed so.
    pub(crate) fn take_unreported_stall(&self) -> bool {
        self.shared.unreported_stall.swap(false, Ordering::AcqRel)
    }

    /// Requests accepted and not yet answered (a snapshot).
    pub(crate) fn outstanding(&self) -> usize {
        self.shared
            .max_outstanding
            .saturating_sub(self.shared.slots.available_permits())
    }

    /// Sends one encoded request and waits for its reply, until `deadline` if there is
    /// one ([`Elapsed`] then). The deadline is kept by the connection's one timer (see
    /// [`State::timer`]), not by a timer of the call's own. A caller that gives up, or is
    /// given up on, leaves the connection in sync: its reply is still read, and dropped.
    pub(crate) async fn call(
        &self,
        request: Bytes,
        deadline: Option<Instant>,
    ) -> Result<Result<Reply, BackendError>, Elapsed> {
        let shared = &*self.shared;
        // Cancelling here is harmless: nothing is queued yet.
        let permit = match shared.slots.try_acquire() {
            Ok(permit) => Ok(permit),
            // Rare (every slot taken): a timer of its own for the wait.
            Err(TryAcquireError::NoPermits) => match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, shared.slots.acquire())
                    .await
                    .map_err(|_| Elapsed)?,
                None => shared.slots.acquire().await,
            },
            Err(TryAcquireError::Closed) => return Ok(Err(shared.closed_error())),
        };
        let Ok(permit) = permit else {
            return Ok(Err(shared.closed_error()));
        };
        let (sender, reply) = oneshot::channel();
        let asked = Asked::of_request(&request);
        let claim = {
            let mut state = shared.lock();
            if state.closed {
                return Ok(Err(shared.closed_error()));
            }
            // The reader gives the slot back when it hands this waiter its reply.
            permit.forget();
            if let Some(deadline) = deadline {
                state.arm(deadline);
            }
            state.accept(
                request,
                asked,
                Waiter::new(sender, deadline),
                shared.merge_gets.load(Ordering::Relaxed),
            )
        };
        match claim {
            Claim::Now(request) => shared.write_request(request),
            Claim::AfterYield(epoch) => {
                // Let the other tasks that are ready to run queue their requests behind
                // this one, then write them all at once (see the module docs).
                let yielding = Yielding {
                    shared,
                    epoch,
                    armed: true,
                };
                tokio::task::yield_now().await;
                yielding.resume();
            }
            Claim::Queued => {}
        }
        match reply.await {
            Ok(reply) => Ok(reply),
            // Every waiter is answered, except one given up on at its deadline (its sender
            // dropped): the clock tells which, in case the connection failed meanwhile.
            Err(_) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => Err(Elapsed),
            Err(_) => Ok(Err(shared.closed_error())),
        }
    }

    /// Ends the connection now; waiters get an error.
    pub(crate) fn close(&self) {
        self.shared.fail(self.shared.closed_error());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every critical section
        // only pushes, pops or sets plain fields.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn closed_error(&self) -> BackendError {
        unreachable(&self.server, UnreachableReason::Closed)
    }

    /// Ready once the callers' timer fired and the callers whose deadline passed were given
    /// up on (see [`State::timer`]).
    fn poll_deadlines(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.closed {
            // Every waiter was answered; the reader stops at its next look.
            return Poll::Pending;
        }
        ready!(state.timer.as_mut().poll(cx));
        state.expire();
        Poll::Ready(())
    }

    /// Takes the write side from a caller found yielding at two observations in a row
    /// (`seen` holds the epoch of the previous one) and writes the backlog: that caller was
    /// not polled again in between, and the requests behind it must not wait for it.
    /// Returns whether it took over.
    fn take_over_stale_yield(&self, seen: &mut Option<u64>) -> bool {
        let mut batch = VecDeque::new();
        {
            let mut state = self.lock();
            if state.closed {
                *seen = None;
                return false;
            }
            if !state.take_over_stale_yield(seen, &mut batch) {
                return false;
            }
        }
        self.write_owned(batch);
        true
    }

    /// Writes a request (just claimed with the write side) from the current task: the
    /// common case on an idle connection, one `write` and no batch to build.
    fn write_request(&self, mut request: Bytes) {
        loop {
            match self.socket.try_write(&request) {
                Ok(0) => {
                    let err = io::Error::from(io::ErrorKind::WriteZero);
                    return self.fail(write_failed(&self.server, err));
                }
                Ok(written) if written == request.len() => break,
                Ok(written) => request.advance(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return self.hand_to_writer(VecDeque::from([request]));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.fail(write_failed(&self.server, err)),
            }
        }
        // Then whatever other callers queued meanwhile, if anything.
        self.write_owned(VecDeque::new());
    }

    /// Writes `batch` (just claimed with the write side) from the current task without
    /// waiting, then up to [`MAX_SYNC_BATCHES`] batches of the backlog. Whatever the
    /// socket does not take at once goes to the writer task with the write side.
    /// Synchronous on purpose: see the module docs.
    fn write_owned(&self, mut batch: VecDeque<Bytes>) {
        for _ in 0..MAX_SYNC_BATCHES {
            match write_now(&self.socket, &mut batch) {
                Ok(true) => {}
                Ok(false) => return self.hand_to_writer(batch),
                Err(err) => return self.fail(write_failed(&self.server, err)),
            }
            let mut state = self.lock();
            if state.closed || !state.next_batch(Owner::Sync, &mut batch) {
                return;
            }
        }
        self.hand_to_writer(batch)
    }

    /// Gives the write side and the unwritten `rest` (which goes before the backlog) to the
    /// writer task.
    fn hand_to_writer(&self, mut rest: VecDeque<Bytes>) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.write.hand_on(&mut rest);
        }
        self.wake_writer.notify_one();
    }

    /// Ends the connection with `err`: no more requests, every waiter gets `err`, both
    /// tasks stop. Only the first call has an effect.
    fn fail(&self, err: BackendError) {
        let waiters = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            // Its callers get the error with the others.
            state.seal();
            state.write.close();
            state.asked.clear();
            std::mem::take(&mut state.waiters)
        };
        self.closed.store(true, Ordering::Release);
        self.slots.close();
        if failure_is_noteworthy(&err) {
            tracing::debug!(server = %self.server, error = %err, "memcached connection closed");
        }
        for waiting in waiters {
            waiting.answer(Err(err.clone()));
        }
        self.abort_tasks();
    }

    fn abort_tasks(&self) {
        if let Some(tasks) = self.tasks.get() {
            for task in tasks {
                task.abort();
            }
        }
    }
}

fn unreachable(server: &str, reason: UnreachableReason) -> BackendError {
    BackendError::Unreachable {
        server: server.to_string(),
        reason,
    }
}

fn write_failed(server: &str, err: io::Error) -> BackendError {
    unreachable(server, UnreachableReason::Write(Arc::new(err)))
}

/// Whether a connection's end is worth a log line: not when this client closed it.
fn failure_is_noteworthy(err: &BackendError) -> bool {
    !matches!(
        err,
        BackendError::Unreachable {
            reason: UnreachableReason::Closed,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers `get <keys>` with a value per key whose data is the key,
    /// holding the first answer back for `first_delay`.
    async fn echo_server(first_delay: Duration) -> (String, u16) {
        let (host, port, _) = recording_echo_server(first_delay).await;
        (host, port)
    }

    /// [`echo_server`], which also keeps the request lines it read, and has no value for
    /// keys that start with `miss`.
    async fn recording_echo_server(
        first_delay: Duration,
    ) -> (String, u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut first = true;
            while let Ok(Some(line)) = lines.next_line().await {
                record.lock().unwrap().push(line.clone());
                let keys = line.trim_start_matches("gets ").trim_start_matches("get ");
                if std::mem::take(&mut first) {
                    tokio::time::sleep(first_delay).await;
                }
                // Merged gets ask for several keys: a value for each.
                let mut reply = String::new();
                for key in keys.split(' ').filter(|key| !key.starts_with("miss")) {
                    reply += &format!("VALUE {key} 0 {}\r\n{key}\r\n", key.len());
                }
                reply += "END\r\n";
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        ("127.0.0.1".to_string(), port, seen)
    }

    /// A connection to `host:port` with [`settings`]`(stall_timeout)`.
    async fn connected(host: &str, port: u16, stall_timeout: Duration) -> Arc<Connection> {
        Arc::new(
            Connection::connect(host, port, "test".into(), &settings(stall_timeout))
                .await
                .unwrap(),
        )
    }

    fn settings(stall_timeout: Duration) -> ConnectionSettings {
        ConnectionSettings {
            connect_timeout: Duration::from_secs(1),
            stall_timeout,
            max_in_flight: 16,
            limits: Limits::default(),
        }
    }

    fn get(key: &str) -> Bytes {
        get_keys(&[key])
    }

    fn get_keys(keys: &[&str]) -> Bytes {
        let mut request = BytesMut::new();
        protocol::encode_get(&mut request, keys, false);
        request.freeze()
    }

    fn value_of(reply: Result<Reply, BackendError>) -> String {
        match reply {
            Ok(Reply::Values(values)) if values.len() == 1 => {
                String::from_utf8(values[0].data.to_vec()).unwrap()
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    impl Connection {
        /// [`Connection::call`] without a deadline.
        async fn call_unbounded(&self, request: Bytes) -> Result<Reply, BackendError> {
            match self.call(request, None).await {
                Ok(reply) => reply,
                Err(Elapsed) => panic!("a call without a deadline elapsed"),
            }
        }
    }

    /// Polls `future` once, without a waker that would ever poll it again.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Connects to a fresh [`echo_server`] and puts a first request in flight.
    async fn connection_with_one_in_flight(
        stall_timeout: Duration,
    ) -> (
        Arc<Connection>,
        tokio::task::JoinHandle<Result<Reply, BackendError>>,
    ) {
        let (host, port) = echo_server(Duration::from_millis(50)).await;
        let conn = connected(&host, port, stall_timeout).await;
        let first = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.call_unbounded(get("a")).await }
        });
        while conn.shared.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        (conn, first)
    }

    #[tokio::test]
    async fn gets_queued_behind_an_owner_share_one_line_and_each_caller_gets_its_own_values() {
        let (host, port, lines) = recording_echo_server(Duration::from_millis(50)).await;
        let conn = connected(&host, port, Duration::from_secs(5)).await;
        conn.merge_gets();
        // In flight, its answer held back: the callers below queue behind it.
        let first = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.call_unbounded(get("first")).await }
        });
        while conn.shared.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        let callers: Vec<_> = (0..12)
            .map(|i| {
                let conn = Arc::clone(&conn);
                tokio::spawn(async move {
                    // The same key in every caller, one of its own, and one nobody has.
                    let own = format!("k{i}");
                    let missing = format!("miss{i}");
                    let keys = if i % 3 == 0 {
                        vec!["ns", &missing, &own]
                    } else {
                        vec!["ns", &own]
                    };
                    (keys.len(), conn.call_unbounded(get_keys(&keys)).await)
                })
            })
            .collect();
        assert_eq!(value_of(first.await.unwrap()), "first");
        for (i, caller) in callers.into_iter().enumerate() {
            let (asked, reply) = caller.await.unwrap();
            let Ok(Reply::Values(values)) = reply else {
                panic!("caller {i}: unexpected reply {reply:?}");
            };
            let got: Vec<(usize, String)> = values
                .into_iter()
                .map(|value| (value.asked, String::from_utf8(value.data.to_vec()).unwrap()))
                .collect();
            // Positions are the caller's own, whatever line its keys went out in.
            assert_eq!(
                got,
                vec![(0, "ns".to_string()), (asked - 1, format!("k{i}"))],
                "caller {i}"
            );
        }
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines.len() < 13
                && lines
                    .iter()
                    .any(|line| line.contains(" k0 ") && line.contains(" k1")),
            "the queued gets were not merged: {lines:?}"
        );
        assert_eq!(conn.outstanding(), 0, "every caller's slot was given back");
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn caller_dropped_in_its_yield_hands_the_backlog_to_the_writer() {
        // A stall tick far beyond the deadline below: only the hand-over can meet it.
        let (conn, first) = connection_with_one_in_flight(Duration::from_secs(30)).await;
        let mut dropped = Box::pin(conn.call_unbounded(get("b")));
        assert!(poll_once(dropped.as_mut()).is_pending());
        assert_eq!(conn.shared.lock().write.owner, Owner::Yielding);
        let queued = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.call_unbounded(get("c")).await }
        });
        drop(dropped);
        let last = tokio::time::timeout(Duration::from_secs(2), queued)
            .await
            .expect("the backlog was never written");
        assert_eq!(value_of(last.unwrap()), "c");
        assert_eq!(value_of(first.await.unwrap()), "a");
        assert_eq!(conn.shared.lock().write.owner, Owner::Idle);
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn request_queued_by_a_caller_that_never_comes_back_is_still_written() {
        // A short stall tick: the parked caller is taken over at the second tick.
        let (conn, first) = connection_with_one_in_flight(Duration::from_millis(100)).await;
        // Queued its request, then yields; polled again never (kept) or dropped.
        let mut parked = pin!(conn.call_unbounded(get("b")));
        assert!(poll_once(parked.as_mut()).is_pending());
        let mut dropped = Box::pin(conn.call_unbounded(get("c")));
        assert!(poll_once(dropped.as_mut()).is_pending());
        drop(dropped);
        // Behind them; written once the reader or the stall tick takes the parked caller over.
        let last = tokio::time::timeout(Duration::from_secs(2), conn.call_unbounded(get("d")))
            .await
            .expect("the backlog was never written");
        assert_eq!(value_of(last), "d");
        assert_eq!(value_of(first.await.unwrap()), "a");
        // The parked caller's reply was delivered in order too.
        match poll_once(parked.as_mut()) {
            Poll::Ready(reply) => assert_eq!(value_of(reply), "b"),
            Poll::Pending => panic!("the parked caller's reply was not delivered"),
        }
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn callers_are_given_up_on_at_their_deadlines_and_late_replies_dropped() {
        // The first answer is held back well past every deadline below.
        let (host, port) = echo_server(Duration::from_millis(400)).await;
        let conn = connected(&host, port, Duration::from_secs(30)).await;
        let started = Instant::now();
        let call = |key: &'static str, after: Duration| {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move {
                let result = conn.call(get(key), Some(started + after)).await;
                (result.map(value_of), started.elapsed())
            })
        };
        // Queued in this order; the later caller's deadline comes first.
        let first = call("a", Duration::from_millis(200));
        while conn.shared.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        let second = call("b", Duration::from_millis(60));
        for (caller, deadline) in [(second, 60), (first, 200)] {
            let (result, after) = caller.await.unwrap();
            assert!(result.is_err(), "a reply before the deadline: {result:?}");
            assert!(
                after >= Duration::from_millis(deadline) && after < Duration::from_millis(350),
                "given up after {after:?}, deadline {deadline} ms"
            );
        }
        // Their replies come late and are dropped: the next caller gets its own.
        let (result, _) = call("c", Duration::from_secs(5)).await.unwrap();
        assert_eq!(result.unwrap(), "c");
        assert_eq!(conn.outstanding(), 0, "every caller's slot was given back");
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn a_reader_dropped_with_its_runtime_fails_its_waiters() {
        let (host, port) = echo_server(Duration::from_secs(30)).await;
        // The connection's tasks run on a runtime of their own, shut down below.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let conn = runtime
            .spawn(async move { connected(&host, port, Duration::from_secs(30)).await })
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move { conn.call_unbounded(get("a")).await }
        });
        while conn.shared.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        tokio::task::spawn_blocking(move || drop(runtime))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the waiter was never answered")
            .unwrap();
        assert!(reply.is_err(), "{reply:?}");
        assert!(conn.is_closed());
    }

    /// Review X: callers that give up (at deadlines past, short, mixed with none, in
    /// merged gets whose members' deadlines differ) each return at their deadline, and every
    /// slot comes back once the late replies are read: a leak would shrink the in-flight
    /// bound call by call until every caller waits for a slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn review_x_expiring_callers_return_on_time_and_give_every_slot_back() {
        let (host, port) = late_server(Duration::from_millis(20)).await;
        let conn = connected(&host, port, Duration::from_secs(5)).await;
        conn.merge_gets();
        for round in 0..30 {
            let started = Instant::now();
            let callers: Vec<_> = (0..12)
                .map(|i| {
                    let conn = Arc::clone(&conn);
                    tokio::spawn(async move {
                        let deadline = match i % 4 {
                            // Passed before the call.
                            0 => Some(started - Duration::from_millis(1)),
                            1 => Some(started + Duration::from_millis(3)),
                            2 => None,
                            _ => Some(started + Duration::from_secs(2)),
                        };
                        let key = format!("r{round}k{i}");
                        let outcome = tokio::time::timeout(
                            Duration::from_secs(3),
                            conn.call(get_keys(&["ns", &key]), deadline),
                        )
                        .await
                        .expect("a call outlived its deadline");
                        (deadline, key, outcome, started.elapsed())
                    })
                })
                .collect();
            for caller in callers {
                let (deadline, key, outcome, after) = caller.await.unwrap();
                match (deadline, outcome) {
                    (Some(deadline), Err(Elapsed)) => {
                        // When the caller returned, not when this loop got to it (after
                        // the callers before it); generous, for a loaded machine: one
                        // that waited for the server would be held to the 3 s timeout.
                        let late = (started + after).saturating_duration_since(deadline);
                        assert!(late < Duration::from_secs(1), "{key}: {late:?} late");
                    }
                    (_, Ok(Ok(Reply::Values(values)))) => {
                        let data: Vec<_> = values.iter().map(|v| v.data.clone()).collect();
                        assert_eq!(data, vec![Bytes::from("ns"), Bytes::from(key.clone())]);
                        assert!(
                            deadline.is_none_or(|d| d > started + Duration::from_millis(10)),
                            "{key}: a reply after its deadline ({after:?})"
                        );
                    }
                    (_, other) => panic!("{key}: unexpected {other:?}"),
                }
            }
        }
        // The replies of the callers given up on are still read, and give their slots back.
        let settled = Instant::now() + Duration::from_secs(2);
        while conn.outstanding() > 0 && Instant::now() < settled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conn.outstanding(), 0, "slots leaked by callers given up on");
        assert!(!conn.is_closed());
    }

    /// Review X: callers dropped by timers of their own around the call, before, at or
    /// after their deadline, from several threads at once, with merging on: every slot
    /// comes back, and the connection stays in sync for the next caller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn review_x_callers_dropped_around_their_deadlines_leak_no_slot() {
        let (host, port) = late_server(Duration::from_millis(4)).await;
        let conn = connected(&host, port, Duration::from_secs(5)).await;
        conn.merge_gets();
        let tasks: Vec<_> = (0..6u64)
            .map(|task| {
                let conn = Arc::clone(&conn);
                tokio::spawn(async move {
                    for i in 0..150u64 {
                        let key = format!("t{task}i{i}");
                        let deadline = Instant::now() + Duration::from_millis(1 + (i % 5));
                        let own = Duration::from_millis((i * 7 + task) % 8);
                        let call = conn.call(get_keys(&["ns", &key]), Some(deadline));
                        match tokio::time::timeout(own, call).await {
                            Err(_) | Ok(Err(Elapsed)) => {}
                            Ok(Ok(reply)) => assert!(
                                matches!(&reply, Ok(Reply::Values(v)) if v.len() == 2 && v[1].data == key.as_bytes()),
                                "{key}: {reply:?}"
                            ),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let settled = Instant::now() + Duration::from_secs(2);
        while conn.outstanding() > 0 && Instant::now() < settled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conn.outstanding(), 0, "slots leaked by dropped callers");
        assert_eq!(value_of(conn.call_unbounded(get("last")).await), "last");
        assert!(!conn.is_closed());
    }

    /// A server that answers every line (merged or not) after `delay`, in order.
    async fn late_server(delay: Duration) -> (String, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            let (read, mut write) = socket.into_split();
            let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if lines_tx.send((Instant::now(), line)).is_err() {
                        return;
                    }
                }
            });
            while let Some((read_at, line)) = lines_rx.recv().await {
                tokio::time::sleep_until(read_at + delay).await;
                let keys = line.trim_start_matches("gets ").trim_start_matches("get ");
                let mut reply = String::new();
                for key in keys.split(' ') {
                    reply += &format!("VALUE {key} 0 {}\r\n{key}\r\n", key.len());
                }
                reply += "END\r\n";
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        ("127.0.0.1".to_string(), port)
    }

    /// Review X: a caller whose deadline comes before the armed one, arriving while the
    /// reader gives up on others (many deadlines passing at once), and a far-future
    /// deadline armed first: each returns at its own deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn review_x_deadlines_set_around_expiries_and_far_ones_hold() {
        // Never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let (mut read, _write) = socket.into_split();
            let _ = read.read_to_end(&mut sink).await;
        });
        let conn = Arc::new(
            Connection::connect(
                "127.0.0.1",
                port,
                "test".into(),
                &ConnectionSettings {
                    max_in_flight: 100_000,
                    ..settings(Duration::from_secs(30))
                },
            )
            .await
            .unwrap(),
        );
        // Armed for (about) never first.
        let far = tokio::spawn({
            let conn = Arc::clone(&conn);
            async move {
                conn.call(get("far"), Some(deadline_in(Duration::MAX)))
                    .await
            }
        });
        for wave in 0..20u64 {
            let started = Instant::now();
            let callers: Vec<_> = (0..50u64)
                .map(|i| {
                    let conn = Arc::clone(&conn);
                    // Many the same, some a little before or after the others.
                    let after = Duration::from_millis(5 + (i % 3) + wave % 2);
                    tokio::spawn(async move {
                        let deadline = started + after;
                        let outcome = tokio::time::timeout(
                            Duration::from_secs(2),
                            conn.call(get(&format!("w{wave}k{i}")), Some(deadline)),
                        )
                        .await;
                        (outcome, Instant::now().saturating_duration_since(deadline))
                    })
                })
                .collect();
            for caller in callers {
                let (outcome, late) = caller.await.unwrap();
                assert!(
                    matches!(outcome, Ok(Err(Elapsed))),
                    "wave {wave}: {:?}",
                    outcome.map(|o| o.map(|_| ()))
                );
                assert!(
                    late < Duration::from_millis(300),
                    "wave {wave}: {late:?} late"
                );
            }
        }
        assert!(!far.is_finished());
        assert!(!conn.is_closed());
        far.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_callers_leave_the_connection_in_sync() {
        let (host, port) = echo_server(Duration::ZERO).await;
        let conn = connected(&host, port, Duration::from_secs(5)).await;
        let mut tasks = Vec::new();
        for task in 0..8 {
            let conn = Arc::clone(&conn);
            tasks.push(tokio::spawn(async move {
                for i in 0..200 {
                    let key = format!("k{task}-{i}");
                    if i % 3 == 0 {
                        // Give up at once, at whatever point the call has reached.
                        let mut call = Box::pin(conn.call_unbounded(get(&key)));
                        let _ = poll_once(call.as_mut());
                        continue;
                    }
                    assert_eq!(value_of(conn.call_unbounded(get(&key)).await), key);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(!conn.is_closed());
    }
}
