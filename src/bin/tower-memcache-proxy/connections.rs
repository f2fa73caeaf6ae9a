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
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

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

/// How many requests a connection has started: one relaxed add per request, on a line
/// only that connection's tasks touch.
#[derive(Default)]
pub(crate) struct Activity(AtomicU64);

impl Activity {
    fn started(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts the requests that reach `inner` in its connection's [`Activity`].
#[derive(Clone)]
pub(crate) struct CountRequests<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
}

impl<S, R> Service<R> for CountRequests<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.activity.0.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// Drives `connection` to its end, draining it (`drain`: hyper's graceful shutdown) once
/// `shutdown` says so or once a whole `idle` period passed in which it started no
/// request. A receiver of `shutdown` is held until the connection ended, so that the
/// serving loop's `watch::Sender::closed` waits for it.
///
/// The timer and the shutdown signal are watched by a task of their own, which hands the
/// connection one oneshot: the connection's task, woken a few times per request, then
/// polls that alone (tens of instructions) rather than a timer and a watch each time.
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
    tokio::spawn(watch_idle(activity, idle, shutdown.clone(), drain_now));
    let _held = shutdown;
    let mut connection = pin!(connection);
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if watching {
            if let Poll::Ready(said) = Pin::new(&mut drained).poll(cx) {
                watching = false;
                // An error: the watcher is gone (its runtime is stopping), nothing to say.
                if said.is_ok() {
                    drain(connection.as_mut());
                }
            }
        }
        connection.as_mut().poll(cx)
    })
    .await
}

/// Says `drain_now` once `shutdown` says so (or its sender is gone) or once an `idle`
/// period passed in which the connection started no request; ends with the connection.
async fn watch_idle(
    activity: Arc<Activity>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut drain_now: oneshot::Sender<()>,
) {
    // Accepted just as the serving loop stopped: the signal may predate this receiver.
    if !*shutdown.borrow_and_update() {
        let mut idle_check = tokio::time::interval_at(Instant::now() + idle, idle);
        idle_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = activity.started();
        loop {
            tokio::select! {
                () = drain_now.closed() => return,
                _ = shutdown.changed() => break,
                _ = idle_check.tick() => {
                    let started = activity.started();
                    if started == seen {
                        tracing::debug!(?idle, "closing a connection that started no request");
                        break;
                    }
                    seen = started;
                }
            }
        }
    }
    let _ = drain_now.send(());
}
