//! `--upstream-max-connections` and `--upstream-queue-timeout`: how many requests the
//! proxy has under way at its origin at once, over all its threads (nginx's `max_conns`,
//! with the `queue` of its commercial version).
//!
//! The pool speaks HTTP/1.1, one request per connection at a time, so without a bound an
//! attacker's slow misses (or as many distinct URLs) made the proxy open as many origin
//! connections as there were requests in flight: up to `--max-connections` times the
//! HTTP/2 streams of each. A request takes a place before it is sent and keeps it until its
//! response body ended (or was dropped); one that finds none waits, in order, at most
//! `--upstream-queue-timeout`, and no more requests wait than there are places. The others
//! get the proxy's own 503, marked [`OriginUnreachable`](tower_memcache::cache::OriginUnreachable)
//! so that a stale entry may stand in. Cache hits never take a place.
//!
//! A place is held at the client's pace too: while its request body comes in, and while
//! its response goes out. So that clients who send or take their bytes slowly (a byte a
//! second) cannot keep every place and have every other miss wait and get 503, requests
//! that wait for a place wake the connections' watchers ([`UpstreamLimit::pressure`]),
//! which close the connections that hold places and move too little through them (see
//! `connections::watch_connection`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Places for requests at the origin, shared by every worker.
#[derive(Debug)]
pub(crate) struct UpstreamLimit {
    places: Arc<Semaphore>,
    max: usize,
    /// Requests waiting for a place now; at most `max`.
    waiting: AtomicUsize,
    queue_timeout: Duration,
    /// Whether the limit is reached: warned of once per episode, not per request.
    full: AtomicBool,
    /// Bumped once per episode, when the limit is reached: wakes every connection's
    /// watcher.
    pressure: watch::Sender<u64>,
}

/// Why a request got no place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoPlace {
    /// As many requests as there are places already wait.
    QueueFull,
    /// None freed within `--upstream-queue-timeout`.
    QueueTimeout,
}

impl NoPlace {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
        }
    }
}

/// Takes one off the waiting count when the wait ends, however it ends (a client gone
/// drops the future mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamLimit {
    pub(crate) fn new(max: usize, queue_timeout: Duration) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            places: Arc::new(Semaphore::new(max)),
            max,
            waiting: AtomicUsize::new(0),
            queue_timeout,
            full: AtomicBool::new(false),
            pressure: watch::Sender::new(0),
        }
    }

    /// Changes once per episode in which requests wait for a place.
    pub(crate) fn pressure(&self) -> watch::Receiver<u64> {
        self.pressure.subscribe()
    }

    /// Whether the episode goes on: the limit was reached, and no request has found a
    /// place at once since.
    pub(crate) fn is_pressed(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Whether requests wait for a place now.
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// A place for one request at the origin, held until the permit is dropped.
    pub(crate) async fn admit(&self) -> Result<OwnedSemaphorePermit, NoPlace> {
        if let Ok(place) = Arc::clone(&self.places).try_acquire_owned() {
            // The episode ended (if its waiters all timed out, none said so). A load
            // first: the flag's line is only written once per episode.
            if self.full.load(Ordering::Relaxed) {
                self.full.store(false, Ordering::Relaxed);
            }
            return Ok(place);
        }
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = self.max,
                "--upstream-max-connections reached: requests to the origin wait for a place"
            );
            self.pressure
                .send_modify(|episode| *episode = episode.wrapping_add(1));
        }
        let refused = if before >= self.max {
            NoPlace::QueueFull
        } else {
            let place = Arc::clone(&self.places).acquire_owned();
            match tokio::time::timeout(self.queue_timeout, place).await {
                // The episode goes on: this request waited, the bound was full all along
                // (ended, the next request that waited warned again: a line per request
                // under a sustained load). Only a place found at once ends it.
                Ok(Ok(place)) => return Ok(place),
                // Err(_) from the semaphore: never closed; counted as a timeout all the same.
                Ok(Err(_)) | Err(_) => NoPlace::QueueTimeout,
            }
        };
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_memcache_proxy_upstream_rejected_total", "reason" => refused.as_str())
            .increment(1);
        Err(refused)
    }

    /// The places in all.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Requests under way at the origin now (the `--metrics` gauge).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn active(&self) -> usize {
        self.max - self.places.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn places_queue_and_refusals() {
        let limit = Arc::new(UpstreamLimit::new(1, Duration::from_secs(5)));
        let first = limit.admit().await.unwrap();
        assert_eq!(limit.active(), 1);
        // One waits (as many as there are places), the next is refused at once.
        let waiter = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.admit().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(limit.admit().await.unwrap_err(), NoPlace::QueueFull);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(limit.active(), 0);
        // A waiter that gets no place in time is refused.
        let held = limit.admit().await.unwrap();
        assert_eq!(limit.admit().await.unwrap_err(), NoPlace::QueueTimeout);
        assert_eq!(limit.waiting.load(Ordering::Relaxed), 0);
        drop(held);
        assert!(limit.admit().await.is_ok());
    }
}
