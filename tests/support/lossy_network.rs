//! A process's view of a shared `MemoryBackend` through a network of its own: each call
//! runs as usual, is lost, loses its reply, or reaches the store late in a task of its
//! own, as its [`Network`] decides (reviews S and TC).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tower_memcache::backend::{
    Backend, BackendError, CasOutcome, Item, Lifetime, MemoryBackend, ServerStats,
};

/// What happens to one backend call.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Runs as usual.
    None,
    /// Fails before reaching the store: nothing happens.
    Lost,
    /// Reaches the store, but the reply is lost (an error is returned).
    ReplyLost,
    /// Reaches the store `ms` later, in a task of its own: a caller that gives up (its
    /// timeout) does not stop it, as a request already on the wire is not stopped.
    Late(u64),
}

/// Decides each call's fate.
pub trait Network: Clone + Send + Sync + 'static {
    /// The next call's fault (drawn once per call, in call order).
    fn fault(&self) -> Fault;

    /// Before a write (`set`, `add` or `cas`) to `key` is sent: where a schedule may hold
    /// it. Nothing by default.
    fn before_write(&self, key: &str) -> impl Future<Output = ()> + Send {
        let _ = key;
        async {}
    }
}

/// `inner` (a clone of the shared store) reached through `network`.
#[derive(Clone)]
pub struct Through<N> {
    pub inner: MemoryBackend,
    pub network: N,
}

impl<N: Network> Through<N> {
    async fn run<T, F>(&self, call: impl FnOnce(MemoryBackend) -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>> + Send + 'static,
        T: Send + 'static,
    {
        let error = |after| BackendError::Timeout {
            server: "lossy network".into(),
            after,
        };
        match self.network.fault() {
            Fault::None => call(self.inner.clone()).await,
            Fault::Lost => Err(error(Duration::from_millis(1))),
            Fault::ReplyLost => {
                let _ = call(self.inner.clone()).await;
                Err(error(Duration::from_millis(1)))
            }
            Fault::Late(ms) => {
                let call = call(self.inner.clone());
                let task = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    call.await
                });
                task.await
                    .unwrap_or_else(|_| Err(error(Duration::from_millis(ms))))
            }
        }
    }
}

impl<N: Network> Backend for Through<N> {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        let key = key.to_owned();
        self.run(move |b| async move { b.get(&key).await }).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.run(move |b| async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            b.get_many(&keys).await
        })
        .await
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.network.before_write(key).await;
        let key = key.to_owned();
        self.run(move |b| async move { b.set(&key, value, flags, lifetime).await })
            .await
    }
    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.network.before_write(key).await;
        let key = key.to_owned();
        self.run(move |b| async move { b.add(&key, value, flags, lifetime).await })
            .await
    }
    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        self.network.before_write(key).await;
        let key = key.to_owned();
        self.run(move |b| async move { b.cas(&key, value, flags, lifetime, cas).await })
            .await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let key = key.to_owned();
        self.run(move |b| async move { b.delete(&key).await }).await
    }
    async fn touch(&self, key: &str, lifetime: Lifetime) -> Result<bool, BackendError> {
        let key = key.to_owned();
        self.run(move |b| async move { b.touch(&key, lifetime).await })
            .await
    }
    async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        let key = key.to_owned();
        self.run(move |b| async move { b.incr(&key, delta).await })
            .await
    }
    async fn flush_all(&self) -> Result<(), BackendError> {
        self.run(move |b| async move { b.flush_all().await }).await
    }
    async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
        self.inner.stats().await
    }
    fn server_of(&self, route: &str) -> Option<usize> {
        self.inner.server_of(route)
    }
    fn outages(&self) -> u64 {
        self.inner.outages()
    }
}
