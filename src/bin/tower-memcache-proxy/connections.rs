//! Bounds on client connections: how many the proxy holds at once
//! (`--max-connections`), and how long one may go without starting a request
//! (`--client-header-timeout`, which hyper applies to HTTP/1 heads but not to HTTP/2).
//!
//! An HTTP/2 client that sent its preface could otherwise keep its connection (a socket,
//! hyper's buffers and this task) open forever by never sending a request, and enough
//! such clients exhaust the process's file descriptors. Closing is graceful (hyper's
//! GOAWAY for HTTP/2, no keep-alive for HTTP/1), so a request under way always finishes.
//!
//! Bytes of response bodies held for clients that have not taken them yet are counted
//! here too, per connection and for the whole process ([`UnsentBudget`],
//! `--max-unsent-bytes`): an HTTP/2 client that keeps its windows shut holds what it
//! asked for (a cache hit each stream, decoded into a buffer of its own) for as long as
//! its connection lives, and many connections could hold the process's memory. Past the
//! budget, connections that do not take what they hold are closed, the others go on:
//! requests never wait for the budget, so a few stalled clients cannot stall everyone.
//!
//! Places at the origin (`--upstream-max-connections`) are held at the client's pace
//! too: while a request body comes in, while a response goes out. While requests wait
//! for a place, connections that hold places and move under 1 KiB a second through each
//! that waits for their client (bodies sent, responses taken) are closed, so that
//! clients who trickle their bytes cannot keep every place and have every other miss
//! wait and get 503.
//!
//! The drain on shutdown is done here too, rather than by hyper-util's
//! `GracefulShutdown`: its `watch` takes only hyper-util's own connection types (a sealed
//! trait), so the idle bound could not wrap what it watches.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tower::Service;

use crate::upstream_limit::UpstreamLimit;

/// The connections the whole process may hold at once, shared by every worker.
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    /// Whether the limit is reached: warned of once per episode, not per connection.
    full: AtomicBool,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            full: AtomicBool::new(false),
        }
    }

    /// A place for the connection just accepted, once one is free. Until then it is not
    /// read, and its worker accepts no other: later clients wait in the kernel's listen
    /// backlog, as with nginx's `worker_connections`.
    pub(crate) async fn admit(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return permit;
        }
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = self.max,
                "--max-connections reached: new connections wait until one closes"
            );
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await;
        self.full.store(false, Ordering::Relaxed);
        match permit {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The bytes of response bodies the whole process holds for its clients and has not
/// written yet: bodies answered from the cache and not polled (HTTP/2 polls a body only
/// when its stream's window is open), and frames polled but still in hyper's buffers.
/// `--max-unsent-bytes`. Past the limit the connections' watchers are woken, and close
/// those that take what they hold too slowly (see [`watch_connection`]).
pub(crate) struct UnsentBudget {
    held: AtomicU64,
    limit: u64,
    /// Set when `held` passes `limit` (and the watchers are woken), cleared once it fell
    /// under seven eighths of it: a process hovering at the limit wakes them once.
    over: AtomicBool,
    /// Bumped to wake every connection's watcher.
    wake: watch::Sender<u64>,
}

impl UnsentBudget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            held: AtomicU64::new(0),
            limit,
            over: AtomicBool::new(false),
            wake: watch::Sender::new(0),
        }
    }

    /// The bytes held now (the `--metrics` gauge).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn is_over(&self) -> bool {
        self.held() > self.limit
    }

    fn charge(&self, bytes: u64) {
        let after = self
            .held
            .fetch_add(bytes, Ordering::Relaxed)
            .wrapping_add(bytes);
        // A load first: the flag's line is only written once per episode.
        if after > self.limit
            && !self.over.load(Ordering::Relaxed)
            && !self.over.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                limit = self.limit,
                "--max-unsent-bytes reached: closing connections that do not read"
            );
            self.wake
                .send_modify(|episode| *episode = episode.wrapping_add(1));
        }
    }

    fn release(&self, bytes: u64) {
        let after = self
            .held
            .fetch_sub(bytes, Ordering::Relaxed)
            .wrapping_sub(bytes);
        if after <= self.limit - self.limit / 8 && self.over.load(Ordering::Relaxed) {
            self.over.store(false, Ordering::Relaxed);
        }
    }
}

/// What a connection has done, for [`watch_connection`]: requests started, bytes of
/// responses taken, responses on their way out, bytes of them held. Relaxed adds on lines
/// only that connection's tasks touch (and the process's [`UnsentBudget`]).
pub(crate) struct Activity {
    started: AtomicU64,
    /// Bytes of response bodies hyper took to send ([`Unsent`] advanced past them): what
    /// the client's socket or window let go. Not the bytes written to the socket: those
    /// count the acknowledgements of an HTTP/2 client's PINGs and the window the proxy
    /// grants it, which a client that takes nothing of its responses has the proxy write
    /// as fast as it likes.
    taken: AtomicU64,
    /// Responses whose head is ready and whose body has not been dropped yet.
    sending: AtomicUsize,
    /// Of those, the ones whose body was last asked for a frame and had none: they wait
    /// for their origin (bounded by `--upstream-timeout`), not for the client.
    waiting: AtomicUsize,
    /// Bytes of their bodies held and not written yet (this connection's share of the
    /// budget's).
    unsent: AtomicU64,
    budget: Arc<UnsentBudget>,
    /// Places at the origin its requests hold ([`Place`]).
    places: AtomicUsize,
    /// Bytes of request bodies its client sent on their way to the origin.
    received: AtomicU64,
    /// Request bodies on their way to the origin that wait for their client's next bytes.
    uploads_waiting: AtomicUsize,
    /// Origin response bodies whose last frame was taken and that have not been asked for
    /// the next one: they wait for whoever reads them ([`Place::downloads`]).
    downloads_waiting: AtomicUsize,
    /// `--upstream-max-connections`, whose waiting requests make places worth taking back.
    origin: Arc<UpstreamLimit>,
}

impl Activity {
    pub(crate) fn new(budget: Arc<UnsentBudget>, origin: Arc<UpstreamLimit>) -> Self {
        Self {
            started: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            sending: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            unsent: AtomicU64::new(0),
            budget,
            places: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            uploads_waiting: AtomicUsize::new(0),
            downloads_waiting: AtomicUsize::new(0),
            origin,
        }
    }

    /// Counts `permit`, a place at the origin, as this connection's until it is dropped.
    pub(crate) fn hold(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Place {
        self.places.fetch_add(1, Ordering::Relaxed);
        Place {
            _permit: permit,
            activity: Arc::clone(self),
            waits_for_reader: false,
        }
    }

    /// `bytes` of a request body came from the client.
    pub(crate) fn received(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A request body began (`true`) or stopped (`false`) waiting for its client.
    pub(crate) fn upload_waits(&self, waits: bool) {
        if waits {
            self.uploads_waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.uploads_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Bytes its client moved: of request bodies sent, of responses taken.
    fn moved(&self) -> u64 {
        self.taken
            .load(Ordering::Relaxed)
            .wrapping_add(self.received.load(Ordering::Relaxed))
    }

    /// How many of its places wait for its client: request bodies for the next bytes,
    /// origin responses for their next frame to be asked for. Not the responses it is
    /// sending: a hit holds no place, and a cache fill reads its origin's body at the
    /// origin's pace, whatever the client takes of it.
    fn waiting_for_client(&self) -> u64 {
        let uploads = self.uploads_waiting.load(Ordering::Relaxed);
        let downloads = self.downloads_waiting.load(Ordering::Relaxed);
        uploads.saturating_add(downloads) as u64
    }

    fn charge(&self, bytes: u64) {
        if bytes > 0 {
            self.unsent.fetch_add(bytes, Ordering::Relaxed);
            self.budget.charge(bytes);
        }
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.unsent.fetch_sub(bytes, Ordering::Relaxed);
            self.budget.release(bytes);
        }
    }
}

/// A request's place at the origin, counted in its connection's [`Activity`] while held.
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    /// Counted in [`Activity::downloads_waiting`].
    waits_for_reader: bool,
}

impl Place {
    /// Notes whether the origin's response body waits for its reader (`true`: a frame
    /// was taken and the next not asked for yet) or for its origin (`false`); atomics
    /// only on a change.
    pub(crate) fn downloads(&mut self, waits_for_reader: bool) {
        if self.waits_for_reader == waits_for_reader {
            return;
        }
        self.waits_for_reader = waits_for_reader;
        if waits_for_reader {
            self.activity
                .downloads_waiting
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.activity
                .downloads_waiting
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.downloads(false);
        self.activity.places.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The most bytes of its responses the kernel keeps for a client and has not sent yet
/// (`TCP_NOTSENT_LOWAT`), beyond what is on its way: Cloudflare's value.
const UNSENT_IN_KERNEL: u32 = 16 * 1024;

/// Has the kernel keep little of what `stream`'s client has not taken yet. Its send
/// buffer grows to megabytes (4 MiB on loopback, the size of the congestion window on a
/// slow network with deep queues), and once full it lets the proxy write again only
/// when a third of it left: a client taking 100 KiB a second took nothing, as far as
/// the proxy could tell, for seconds on end, and was closed as one that holds places at
/// the origin at its own pace ([`watch_connection`]). Kept small, what hyper writes
/// follows what the client takes; what leaves at once (the congestion window) is not
/// bounded by it.
pub(crate) fn keep_little_unsent(stream: &tokio::net::TcpStream) {
    // Best effort: a socket that refuses is judged on lumps, as before.
    #[cfg(any(target_os = "android", target_os = "linux"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_IN_KERNEL);
    #[cfg(not(any(target_os = "android", target_os = "linux")))]
    let _ = stream;
}

/// How long a connection is watched, once the process holds more than its
/// [`UnsentBudget`], before it is closed for taking too little of what it holds (or
/// `--client-header-timeout`, if shorter).
const BUDGET_PROBE: Duration = Duration::from_secs(1);

/// A response body that holds bytes in memory before it is polled: a cache hit's.
pub(crate) trait HeldBody {
    /// The bytes held now, not read yet.
    fn held(&self) -> u64;
}

impl<B> HeldBody for tower_memcache::cache::ResponseBody<B> {
    fn held(&self) -> u64 {
        self.cached_len()
    }
}

impl<L: HeldBody, R: HeldBody> HeldBody for http_body_util::Either<L, R> {
    fn held(&self) -> u64 {
        match self {
            Self::Left(body) => body.held(),
            Self::Right(body) => body.held(),
        }
    }
}

/// The proxy's own short answers (400, 502): counted once polled, like streamed bodies.
impl HeldBody for http_body_util::Full<Bytes> {
    fn held(&self) -> u64 {
        0
    }
}

/// Fewer bytes of its responses than this taken in a whole period while they wait to go
/// out: the client has stopped reading.
const STALLED_BELOW: u64 = 1024;

/// How many probes a connection that holds places at the origin is judged over, each
/// [`STALLED_BELOW`] bytes per place: the one just ended and the one before (what
/// `watch_connection` keeps of them). A client's bytes leave the proxy in lumps, not
/// byte by byte: hyper writes again only once the socket takes more (see
/// [`keep_little_unsent`]), and a receiver opens its window by a share of its buffer at
/// a time. Judged on one second alone, a client taking 16 KiB a second could move
/// nothing within it, and was closed.
const ORIGIN_PROBES: u64 = 2;

/// Counts the requests that reach `inner` in its connection's [`Activity`], and the
/// responses it is sending.
#[derive(Clone)]
pub(crate) struct CountRequests<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
}

impl<S, R, B> Service<R> for CountRequests<S>
where
    S: Service<R, Response = http::Response<B>>,
    B: HeldBody,
{
    type Response = http::Response<Sending<B>>;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        Counted {
            inner: self.inner.call(request),
            activity: Some(Arc::clone(&self.activity)),
        }
    }
}

pin_project! {
    /// A response future of [`CountRequests`].
    pub(crate) struct Counted<F> {
        #[pin]
        inner: F,
        activity: Option<Arc<Activity>>,
    }
}

impl<F, B, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: HeldBody,
{
    type Output = Result<http::Response<Sending<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let activity = this.activity.take();
        let held = response.body().held();
        if let Some(activity) = &activity {
            activity.sending.fetch_add(1, Ordering::Relaxed);
            activity.charge(held);
        }
        Poll::Ready(Ok(response.map(|body| Sending {
            body,
            guard: SendingGuard {
                activity,
                waiting: false,
                prepaid: held,
            },
        })))
    }
}

pin_project! {
    /// A response body on its way out, counted in [`Activity`] until dropped; its bytes
    /// are counted as unsent from the moment they are held (a hit's at once, a streamed
    /// body's as its frames are polled) until hyper let go of them ([`Unsent`]).
    pub(crate) struct Sending<B> {
        #[pin]
        body: B,
        guard: SendingGuard,
    }
}

struct SendingGuard {
    activity: Option<Arc<Activity>>,
    /// Counted in [`Activity::waiting`].
    waiting: bool,
    /// Bytes counted when the response was ready (a hit's body) and not polled yet.
    prepaid: u64,
}

impl SendingGuard {
    /// Notes whether the body waits for its origin; atomics only on a change, so a body
    /// that is always ready (a hit) costs a comparison per frame.
    fn waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        if let Some(activity) = &self.activity {
            if waiting {
                activity.waiting.fetch_add(1, Ordering::Relaxed);
            } else {
                activity.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for SendingGuard {
    fn drop(&mut self) {
        self.waiting(false);
        if let Some(activity) = &self.activity {
            activity.sending.fetch_sub(1, Ordering::Relaxed);
            activity.release(self.prepaid);
        }
    }
}

impl<B: Body> Body for Sending<B> {
    type Data = Unsent<B::Data>;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        this.guard.waiting(polled.is_pending());
        let frame = ready!(polled);
        let end = this.body.is_end_stream();
        let guard = this.guard;
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| {
                frame.map_data(|data| {
                    let Some(activity) = &guard.activity else {
                        return Unsent {
                            data,
                            activity: None,
                            left: 0,
                            pinned: 0,
                        };
                    };
                    let len = data.remaining() as u64;
                    let prepaid = len.min(guard.prepaid);
                    guard.prepaid -= prepaid;
                    activity.charge(len - prepaid);
                    // The last frame of a hit that is a slice (a range) keeps the rest of
                    // what was counted in memory until it is written.
                    let pinned = if end {
                        std::mem::take(&mut guard.prepaid)
                    } else {
                        0
                    };
                    Unsent {
                        data,
                        activity: Some(Arc::clone(activity)),
                        left: len,
                        pinned,
                    }
                })
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A frame of a [`Sending`] body: its bytes stay counted as unsent until hyper wrote them
/// (advanced past them) or dropped the frame.
pub(crate) struct Unsent<D> {
    data: D,
    activity: Option<Arc<Activity>>,
    /// Bytes of `data` still counted.
    left: u64,
    /// Bytes counted beyond `data`'s, that it keeps in memory (a range's slice of a
    /// stored body): released with it.
    pinned: u64,
}

impl<D: Buf> Unsent<D> {
    /// Releases what has left the buffer.
    fn settle(&mut self) {
        let remaining = self.data.remaining() as u64;
        if remaining < self.left {
            if let Some(activity) = &self.activity {
                activity
                    .taken
                    .fetch_add(self.left - remaining, Ordering::Relaxed);
                activity.release(self.left - remaining);
            }
            self.left = remaining;
        }
    }
}

impl<D> Drop for Unsent<D> {
    fn drop(&mut self) {
        if let Some(activity) = &self.activity {
            activity.release(self.left + self.pinned);
        }
    }
}

impl<D: Buf> Buf for Unsent<D> {
    fn remaining(&self) -> usize {
        self.data.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.data.chunk()
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [io::IoSlice<'a>]) -> usize {
        self.data.chunks_vectored(dst)
    }

    fn advance(&mut self, cnt: usize) {
        self.data.advance(cnt);
        self.settle();
    }

    // `Bytes`' own (a slice, no copy), not the default's copy.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        let bytes = self.data.copy_to_bytes(len);
        self.settle();
        bytes
    }
}

/// Drives `connection` to its end, draining it (`drain`: hyper's graceful shutdown) once
/// `shutdown` says so or once a whole `idle` period passed in which it started no request
/// and sent nothing, and dropping it (closing the socket) once a whole period passed in
/// which it had responses to send and took almost nothing of them: a client that stopped
/// reading (an HTTP/2 receive window kept shut, pipelined requests never read) would
/// otherwise hold their bodies, up to an entry each, for as long as it likes (nginx's
/// `send_timeout`). A receiver of `shutdown` is held until the connection ended, so that
/// the serving loop's `watch::Sender::closed` waits for it.
///
/// The timer and the shutdown signal are watched by a task of their own, which hands the
/// connection oneshots: the connection's task, woken a few times per request, then polls
/// one of them alone (tens of instructions) rather than a timer and a watch each time.
pub(crate) async fn run_bounded<C, E>(
    connection: C,
    drain: fn(Pin<&mut C>),
    activity: Arc<Activity>,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let (drain_now, mut drained) = oneshot::channel();
    let (close_now, mut closed) = oneshot::channel();
    let signals = Signals {
        drain_now: Some(drain_now),
        close_now,
    };
    tokio::spawn(watch_connection(activity, idle, shutdown.clone(), signals));
    let _held = shutdown;
    let mut connection = pin!(connection);
    let mut draining = false;
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if !draining {
            if let Poll::Ready(said) = Pin::new(&mut drained).poll(cx) {
                draining = true;
                // An error: the watcher is gone (its runtime is stopping), nothing to say.
                if said.is_ok() {
                    drain(connection.as_mut());
                }
            }
        }
        if watching {
            if let Poll::Ready(said) = Pin::new(&mut closed).poll(cx) {
                watching = false;
                if said.is_ok() {
                    tracing::debug!(?idle, "closing a connection whose client stopped reading");
                    return Poll::Ready(Ok(()));
                }
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}

/// What [`watch_connection`] tells the connection.
struct Signals {
    /// Drain: taken once said.
    drain_now: Option<oneshot::Sender<()>>,
    /// Close at once.
    close_now: oneshot::Sender<()>,
}

/// Says drain once `shutdown` says so (or its sender is gone) or once an `idle` period
/// passed in which the connection started no request and had nothing to send; says close
/// once a period passed in which it had responses to send, not all of them waiting for
/// their origin, and took under [`STALLED_BELOW`] bytes of them. While the process holds
/// more unsent bytes than its [`UnsentBudget`], says close too once a [`BUDGET_PROBE`]
/// passed in which the connection held unsent bytes and took under [`STALLED_BELOW`] of
/// them, or too few to send what it holds within `idle` at that pace: such connections go
/// first, the others are not held up. Ends with the connection.
async fn watch_connection(
    activity: Arc<Activity>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut signals: Signals,
) {
    let drain = |signals: &mut Signals| {
        if let Some(drain_now) = signals.drain_now.take() {
            let _ = drain_now.send(());
        }
    };
    // Accepted just as the serving loop stopped: the signal may predate this receiver.
    if *shutdown.borrow_and_update() {
        drain(&mut signals);
    }
    let mut check = tokio::time::interval_at(Instant::now() + idle, idle);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seen_started = activity.started.load(Ordering::Relaxed);
    let mut seen_taken = activity.taken.load(Ordering::Relaxed);

    let budget = Arc::clone(&activity.budget);
    let mut pressure = budget.wake.subscribe();
    let mut pressure_open = true;
    let probe_every = idle.min(BUDGET_PROBE);
    // How many probes fit in `idle`: a connection that would take longer than `idle` to
    // send what it holds, at the pace of its last probe, is closed under pressure.
    let probes_per_idle = u64::try_from(idle.as_millis() / probe_every.as_millis().max(1))
        .unwrap_or(u64::MAX)
        .max(1);
    let probe = tokio::time::sleep(idle);
    let mut probe = pin!(probe);
    // Bytes taken when the running probe started, and whether the connection held
    // unsent bytes then (one that just got its first response is not judged on it); a
    // connection accepted while the process is over its budget is probed from the start.
    let mut probing = None;
    let held_now = || activity.unsent.load(Ordering::Relaxed) > 0;
    if budget.over.load(Ordering::Relaxed) {
        probing = Some((seen_taken, held_now()));
        probe.as_mut().reset(Instant::now() + probe_every);
    }

    // The same for places at the origin while requests wait for one, judged over the
    // last [`ORIGIN_PROBES`] probes: bytes moved when each started, and whether the
    // connection held a place then (the earlier's `None` on the episode's first probe).
    let origin = Arc::clone(&activity.origin);
    let mut origin_pressure = origin.pressure();
    let mut origin_open = true;
    let origin_probe = tokio::time::sleep(idle);
    let mut origin_probe = pin!(origin_probe);
    let places_now = || activity.places.load(Ordering::Relaxed) as u64;
    let origin_start = || (activity.moved(), places_now() > 0);
    let mut origin_probing = None;
    if origin.is_pressed() {
        origin_probing = Some((None, origin_start()));
        origin_probe.as_mut().reset(Instant::now() + probe_every);
    }
    loop {
        tokio::select! {
            () = signals.close_now.closed() => return,
            _ = shutdown.changed(), if signals.drain_now.is_some() => drain(&mut signals),
            changed = pressure.changed(), if pressure_open => {
                if changed.is_err() {
                    pressure_open = false;
                } else if probing.is_none() {
                    probing = Some((activity.taken.load(Ordering::Relaxed), held_now()));
                    probe.as_mut().reset(Instant::now() + probe_every);
                }
            }
            changed = origin_pressure.changed(), if origin_open => {
                if changed.is_err() {
                    origin_open = false;
                } else if origin_probing.is_none() {
                    origin_probing = Some((None, origin_start()));
                    origin_probe.as_mut().reset(Instant::now() + probe_every);
                }
            }
            () = &mut origin_probe, if origin_probing.is_some() => {
                let (earlier, latest) = origin_probing.take().unwrap_or_default();
                let moved = activity.moved();
                let places = places_now();
                // Under 1 KiB a second through each place it holds at its client's pace
                // (an HTTP/2 connection's streams are judged together, not one by the
                // others; those waiting for the origin ask nothing of the client), over
                // the last probes: a client's bytes leave in lumps (see
                // [`ORIGIN_PROBES`]).
                let at_clients_pace = places.min(activity.waiting_for_client());
                // Judged once a whole span of probes passed, if it held a place then.
                let progress = earlier
                    .filter(|&(_, held_before)| held_before)
                    .map(|(since, _)| moved.wrapping_sub(since));
                if let Some(progress) = progress.filter(|&progress| {
                    origin.has_waiters()
                        && at_clients_pace > 0
                        && progress
                            < STALLED_BELOW
                                .saturating_mul(ORIGIN_PROBES)
                                .saturating_mul(at_clients_pace)
                }) {
                    tracing::debug!(
                        places,
                        progress,
                        "closing a connection that holds places at the origin at its own pace while requests wait for one"
                    );
                    count_close("origin_places");
                    let _ = signals.close_now.send(());
                    return;
                }
                if origin.is_pressed() {
                    origin_probing = Some((Some(latest), (moved, places > 0)));
                    origin_probe.as_mut().reset(Instant::now() + probe_every);
                }
            }
            () = &mut probe, if probing.is_some() => {
                let (since, held_before) = probing.take().unwrap_or_default();
                let taken = activity.taken.load(Ordering::Relaxed);
                let unsent = activity.unsent.load(Ordering::Relaxed);
                let progress = taken.wrapping_sub(since);
                if budget.is_over()
                    && held_before
                    && unsent > 0
                    && (progress < STALLED_BELOW
                        || progress.saturating_mul(probes_per_idle) < unsent)
                {
                    tracing::debug!(
                        unsent,
                        progress,
                        "closing a connection that holds unsent bytes past --max-unsent-bytes"
                    );
                    count_close("unsent_budget");
                    let _ = signals.close_now.send(());
                    return;
                }
                // Watched for as long as the episode lasts: the process may pass its
                // limit again without a new wake-up.
                if budget.over.load(Ordering::Relaxed) {
                    probing = Some((taken, unsent > 0));
                    probe.as_mut().reset(Instant::now() + probe_every);
                }
            }
            _ = check.tick() => {
                let started = activity.started.load(Ordering::Relaxed);
                let taken = activity.taken.load(Ordering::Relaxed);
                let sending = activity.sending.load(Ordering::Relaxed);
                // A response waiting for its origin (a slow event stream) is not one the
                // client fails to take: only the others count as stalled.
                let waiting = activity.waiting.load(Ordering::Relaxed);
                let stalled = sending > waiting;
                if stalled && taken.wrapping_sub(seen_taken) < STALLED_BELOW {
                    count_close("send_timeout");
                    let _ = signals.close_now.send(());
                    return;
                }
                if sending == 0 && started == seen_started && signals.drain_now.is_some() {
                    tracing::debug!(?idle, "closing a connection that started no request");
                    drain(&mut signals);
                }
                seen_started = started;
                seen_taken = taken;
            }
        }
    }
}

/// Counts a connection closed for not reading (`--metrics`).
fn count_close(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tower_memcache_proxy_stalled_closes_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}
