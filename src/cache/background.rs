//! [`Background`]: the layer's work that outlives a response (stores, refreshes, lease
//! releases, bodies being read into the cache, an unsafe request's invalidation whose
//! client went), counted so that a caller can wait for it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Best-effort background tasks of a layer beyond which more best-effort work is skipped
/// ([`Background::spawn_best_effort`]).
pub(crate) const MAX_BEST_EFFORT: usize = 1024;

/// A handle on a layer's background work. Get one from
/// [`MemcacheLayer::background`](super::MemcacheLayer::background); clones share it.
///
/// Tests, graceful shutdowns and examples wait for stores with [`idle`](Self::idle)
/// instead of sleeping:
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_memcache::MemcacheLayer;
/// use tower_memcache::backend::MemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = MemcacheLayer::new(MemoryBackend::new());
/// let (stats, background) = (layer.stats(), layer.background());
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<()>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
/// });
/// let request = Request::get("http://example.com/").body(()).unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// response.into_body().collect().await.unwrap();
/// background.idle().await;
/// assert_eq!(stats.snapshot().stores, 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Background {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    /// Of `running`, the best-effort tasks: the ones [`MAX_BEST_EFFORT`] bounds.
    best_effort: AtomicUsize,
    idle: Notify,
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("running", &self.running())
            .finish()
    }
}

/// Counts a task as finished however it ends (completed, cancelled, panicked); a
/// best-effort one in both counts.
struct Running {
    inner: Arc<Inner>,
    best_effort: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.best_effort {
            self.inner.best_effort.fetch_sub(1, Ordering::AcqRel);
        }
        if self.inner.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Background {
    /// Runs `task` on the current tokio runtime, counted until it ends; `false` (and the
    /// task dropped) outside a runtime.
    pub(crate) fn spawn<F>(&self, task: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        self.run_counted(&runtime, task, false);
        true
    }

    /// Spawns `task` on `runtime`; the caller has already counted it in `running` (and in
    /// `best_effort` if it is).
    fn run_counted<F>(&self, runtime: &tokio::runtime::Handle, task: F, best_effort: bool)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let running = Running {
            inner: Arc::clone(&self.inner),
            best_effort,
        };
        runtime.spawn(async move {
            let _running = running;
            task.await;
        });
    }

    /// [`spawn`](Self::spawn), unless the layer already runs [`MAX_BEST_EFFORT`] best-effort
    /// tasks: for work whose skipping has a bounded cost (a placeholder left to expire, an
    /// epoch write the next full read makes up for), so that a dead server or clients
    /// hanging up en masse cannot grow it with the request rate.
    ///
    /// Only best-effort tasks count towards the bound. Counted with the rest (an unsafe
    /// request's invalidation whose client went, which never is skipped; bodies read into
    /// the cache at their clients' pace), they let clients that post and go at once, or
    /// read slowly, hold the layer past it, and every lease release and epoch write again
    /// was skipped for everyone meanwhile (review SW).
    pub(crate) fn spawn_best_effort<F>(&self, task: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        // Counted in the same step as the check: threads spawning at once cannot each
        // see room for one more and pass the bound together.
        let counted =
            self.inner
                .best_effort
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                    (running < MAX_BEST_EFFORT).then_some(running + 1)
                });
        if counted.is_err() {
            return false;
        }
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        self.run_counted(&runtime, task, true);
        true
    }

    /// How many background tasks are running now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Waits until no background task is running, including those the running ones start
    /// (a store a refresh makes). Returns at once when there are none.
    ///
    /// A body on its way into the cache counts until the origin has sent it or its client
    /// has gone; past the layer's `fill_buffer` it is read at its client's pace. A graceful
    /// shutdown that must not wait on a stalled client should bound this wait with a
    /// timeout.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so an end between the two is not missed.
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_tasks_and_the_tasks_they_start() {
        let background = Background::default();
        background.idle().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let inner = background.clone();
        assert!(background.spawn(async move {
            let _ = rx.await;
            inner.spawn(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
        }));
        assert_eq!(background.running(), 1);
        let waiting = tokio::spawn({
            let background = background.clone();
            async move { background.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(background.running(), 0);
    }

    /// Threads spawning best-effort work at once near the bound: the check and the count
    /// were two steps, so two threads could each see room for one more (CI saw 1025).
    #[test]
    fn best_effort_work_spawned_from_many_threads_at_once_stays_within_the_bound() {
        const THREADS: usize = 8;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        for _round in 0..200 {
            let background = Background::default();
            let release = Arc::new(tokio::sync::Semaphore::new(0));
            // Leaves a little room so that every thread arrives at the bound together.
            for _ in 0..MAX_BEST_EFFORT - THREADS * 4 {
                let release = Arc::clone(&release);
                let _guard = runtime.enter();
                assert!(background.spawn_best_effort(async move {
                    let _ = release.acquire().await;
                }));
            }
            let start = Arc::new(std::sync::Barrier::new(THREADS));
            let spawned: usize = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let (background, release, start) = (&background, &release, &start);
                        let handle = runtime.handle().clone();
                        scope.spawn(move || {
                            let _guard = handle.enter();
                            start.wait();
                            (0..64)
                                .filter(|_| {
                                    let release = Arc::clone(release);
                                    background.spawn_best_effort(async move {
                                        let _ = release.acquire().await;
                                    })
                                })
                                .count()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(spawned, THREADS * 4, "spawned past the bound");
            assert_eq!(background.running(), MAX_BEST_EFFORT);
            release.close();
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), background.idle())
                    .await
                    .unwrap()
            });
        }
    }

    /// Work that is never skipped (an invalidation whose client went) counts for `idle`,
    /// not towards the bound on best-effort work (review SW).
    #[tokio::test]
    async fn only_best_effort_work_counts_towards_its_bound() {
        let background = Background::default();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        for _ in 0..MAX_BEST_EFFORT + 1 {
            let release = Arc::clone(&release);
            assert!(background.spawn(async move {
                let _ = release.acquire().await;
            }));
        }
        assert!(background.spawn_best_effort(async {}));
        release.close();
        tokio::time::timeout(Duration::from_secs(5), background.idle())
            .await
            .unwrap();
        assert_eq!(background.inner.best_effort.load(Ordering::Acquire), 0);
    }

    #[test]
    fn outside_a_runtime_nothing_is_spawned() {
        let background = Background::default();
        assert!(!background.spawn(async {}));
        assert_eq!(background.running(), 0);
    }
}
