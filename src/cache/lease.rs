//! Stampede protection across processes. Inside one process the single flight makes
//! concurrent misses for a URL wait for one request; across processes sharing memcached,
//! the process that refills a URL first takes a short lease (an `add` of a lock key, which
//! only one process can win), and the others poll for its entry for a bounded time before
//! going to the origin themselves.

use std::time::Duration;

use bytes::Bytes;

use super::background::Background;
use super::storage::Storage;
use crate::backend::{Backend, Lifetime};

/// A lease this process holds. [`release`](Lease::release) it when the answer will not be
/// stored; dropped, it is released in the background, so a leader that fails or is
/// cancelled frees the URL for others at once instead of after the lease's lifetime.
pub(crate) struct Lease<B: Backend> {
    backend: B,
    key: String,
    timeout: Duration,
    background: Background,
}

impl<B: Backend> Lease<B> {
    /// Deletes the lease before returning, so the next request for the URL, here or in
    /// another process, does not wait for an entry that will never come.
    pub(crate) async fn release(mut self) {
        let key = std::mem::take(&mut self.key);
        match tokio::time::timeout(self.timeout, self.backend.delete(&key)).await {
            Ok(Ok(_)) => {}
            _ => tracing::debug!(%key, "lease release failed; it expires"),
        }
    }
}

impl<B: Backend> Drop for Lease<B> {
    fn drop(&mut self) {
        if self.key.is_empty() {
            return; // released already
        }
        let (backend, key) = (self.backend.clone(), std::mem::take(&mut self.key));
        self.background.spawn(async move {
            if let Err(err) = backend.delete(&key).await {
                tracing::debug!(%key, error = %err, "lease release failed; it expires");
            }
        });
    }
}

pub(crate) enum Acquired<B: Backend> {
    /// This process refills the URL.
    Mine(Lease<B>),
    /// Another process is refilling it.
    Elsewhere,
    /// The backend did not answer: go on without a lease (fail open).
    Unknown,
}

/// Tries to take the lease on `canonical` for at most `ttl` (memcached rounds up to whole
/// seconds).
pub(crate) async fn acquire<B: Backend>(
    storage: &Storage<B>,
    canonical: &str,
    ttl: Duration,
) -> Acquired<B> {
    let key = storage.lease_key(canonical);
    let add = storage.backend().add(
        &key,
        Bytes::from_static(b"1"),
        0,
        Lifetime::from_duration(ttl),
    );
    match storage.bounded(add).await {
        Ok(true) => Acquired::Mine(Lease {
            backend: storage.backend().clone(),
            key,
            timeout: ttl.min(Duration::from_secs(1)),
            background: storage.background().clone(),
        }),
        Ok(false) => Acquired::Elsewhere,
        Err(err) => {
            tracing::debug!(error = %err, "lease not taken; going on without one");
            Acquired::Unknown
        }
    }
}

/// Whether another process still holds the lease on `canonical`; `false` when it was
/// released (its answer was not stored) or the backend cannot tell (fail open).
pub(crate) async fn held<B: Backend>(storage: &Storage<B>, canonical: &str) -> bool {
    let key = storage.lease_key(canonical);
    matches!(
        storage.bounded(storage.backend().get(&key)).await,
        Ok(Some(_))
    )
}
