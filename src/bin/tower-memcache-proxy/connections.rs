//! Bounds on client connections: how many the proxy holds at once
//! (`--max-connections`), and how long one may go without starting a request
//! (`--client-header-timeout`, which hyper applies to HTTP/1 heads but not to HTTP/2).
//!
//! An HTTP/2 client that sent its preface could otherwise keep its connection (a socket,
//! hyper's buffers and this task) open forever by never sending a request, and enough
//! such clients exhaust the process's file descriptors. Closing is graceful (hyper's
//! GOAWAY for HTTP/2, no keep-alive for HTTP/1), so a request under way always finishes.
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

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tower::Service;

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

/// What a connection has done, for [`watch_connection`]: requests started, bytes written,
/// responses on their way out. Relaxed adds on lines only that connection's tasks touch.
#[derive(Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    written: AtomicU64,
    /// Responses whose head is ready and whose body has not been dropped yet.
    sending: AtomicUsize,
    /// Of those, the ones whose body was last asked for a frame and had none: they wait
    /// for their origin (bounded by `--upstream-timeout`), not for the client.
    waiting: AtomicUsize,
}

/// Fewer bytes than this written in a whole period while responses wait to go out: the
/// client has stopped reading (HTTP/2 keep-alive pings alone write a few dozen).
const STALLED_BELOW: u64 = 1024;

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
{
    type Output = Result<http::Response<Sending<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let activity = this.activity.take();
        if let Some(activity) = &activity {
            activity.sending.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(Ok(response.map(|body| Sending {
            body,
            guard: SendingGuard {
                activity,
                waiting: false,
            },
        })))
    }
}

pin_project! {
    /// A response body on its way out, counted in [`Activity`] until dropped.
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
        }
    }
}

impl<B: Body> Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        this.guard.waiting(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `io` whose writes are counted in its connection's [`Activity`].
pub(crate) struct CountWrites<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> CountWrites<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }

    fn count(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(written)) = polled {
            self.activity
                .written
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Drives `connection` to its end, draining it (`drain`: hyper's graceful shutdown) once
/// `shutdown` says so or once a whole `idle` period passed in which it started no request
/// and sent nothing, and dropping it (closing the socket) once a whole period passed in
/// which it had responses to send and wrote almost nothing of them: a client that stopped
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
/// their origin, and wrote under [`STALLED_BELOW`] bytes. Ends with the connection.
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
    let mut seen_written = activity.written.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            () = signals.close_now.closed() => return,
            _ = shutdown.changed(), if signals.drain_now.is_some() => drain(&mut signals),
            _ = check.tick() => {
                let started = activity.started.load(Ordering::Relaxed);
                let written = activity.written.load(Ordering::Relaxed);
                let sending = activity.sending.load(Ordering::Relaxed);
                // A response waiting for its origin (a slow event stream) is not one the
                // client fails to take: only the others count as stalled.
                let waiting = activity.waiting.load(Ordering::Relaxed);
                let stalled = sending > waiting;
                if stalled && written.wrapping_sub(seen_written) < STALLED_BELOW {
                    let _ = signals.close_now.send(());
                    return;
                }
                if sending == 0 && started == seen_started && signals.drain_now.is_some() {
                    tracing::debug!(?idle, "closing a connection that started no request");
                    drain(&mut signals);
                }
                seen_started = started;
                seen_written = written;
            }
        }
    }
}
