//! A purge's write held on its way to the server: a backend wrapper whose first write to
//! one key waits at a gate until the test releases it, and the keys of a namespace's
//! generations and tag-purge mark to hold (reviews SX and TA).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tower_memcache::backend::{Backend, BackendError, CasOutcome, Lifetime};
use tower_memcache::key::md5_hex;

/// A generation or mark key of `namespace` (`Storage::internal_key`).
pub fn internal_key(namespace: &str, base: &str) -> String {
    format!("g:{}", md5_hex(&[namespace.as_bytes(), base.as_bytes()]))
}

/// The key of `tag`'s generation in `namespace`.
pub fn tag_key(namespace: &str, tag: &str) -> String {
    internal_key(namespace, &format!("\0tag\0{tag}"))
}

/// The key of `namespace`'s tag-purge mark.
pub fn tag_purges_key(namespace: &str) -> String {
    internal_key(namespace, "\0tag purges")
}

/// How long a held write waits for its release at most (a schedule that never releases
/// it must not hang the test).
const MOST: Duration = Duration::from_secs(2);

/// Holds the first write (`set`, `add` or `cas`) to one key until released (or [`MOST`]
/// passed), so that a test orders it with others (reviews SX, TA and TC).
pub struct Gate {
    key: String,
    armed: AtomicBool,
    caught: Semaphore,
    release: Semaphore,
}

impl Gate {
    pub fn new(key: String) -> Arc<Self> {
        Arc::new(Self {
            key,
            armed: AtomicBool::new(true),
            caught: Semaphore::new(0),
            release: Semaphore::new(0),
        })
    }

    /// A write to `key`: held if it is the first to the gate's key.
    pub async fn pass(&self, key: &str) {
        if key == self.key && self.armed.swap(false, Ordering::SeqCst) {
            self.caught.add_permits(1);
            let release = self.release.acquire();
            if let Ok(Ok(permit)) = tokio::time::timeout(MOST, release).await {
                permit.forget();
            }
        }
    }

    /// Until a write is held.
    pub async fn caught(&self) {
        let _ = self.caught.acquire().await.map(|permit| permit.forget());
    }

    /// Until a write is held; false if none was within `within`.
    pub async fn caught_within(&self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.caught.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                true
            }
            _ => false,
        }
    }

    /// Lets the held write (or the next one to come) go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

/// `inner`, with writes to the gate's key passing the gate. Everything else (and every
/// default method, which goes through these) as `inner`.
#[derive(Clone)]
pub struct Held<B> {
    pub inner: B,
    pub gate: Arc<Gate>,
}

impl<B: Backend> Backend for Held<B> {
    crate::forward_to_inner!(get, get_many, delete, touch, incr, flush_all, stats);

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.gate.pass(key).await;
        self.inner.set(key, value, flags, lifetime).await
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.gate.pass(key).await;
        self.inner.add(key, value, flags, lifetime).await
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        self.gate.pass(key).await;
        self.inner.cas(key, value, flags, lifetime, cas).await
    }
}
