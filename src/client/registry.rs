use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use super::MemcacheClient;
use crate::backend::Backend;
use crate::key::KeyBase;

/// Named clients, so that a key can be invalidated in all of them or in one by name: the
/// p01.memcache's `InvalidateCacheEvent(key, cacheName=…)`.
///
/// ```
/// use tower_memcache::{CacheRegistry, MemcacheClient, backend::MemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let backend = MemoryBackend::new();
/// let registry = CacheRegistry::new();
/// let one = MemcacheClient::new(backend.clone()).with_namespace("one");
/// let two = MemcacheClient::new(backend.clone()).with_namespace("two");
/// registry.register("cacheOne", one.clone());
/// registry.register("two", two.clone());
///
/// one.set("key", &"v1").await;
/// two.set("key", &"v2").await;
/// registry.invalidate_in("cacheOne", "key").await;
/// assert_eq!(one.query::<String>("key").await, None);
/// assert_eq!(two.query::<String>("key").await.as_deref(), Some("v2"));
///
/// registry.invalidate("key").await;
/// assert_eq!(two.query::<String>("key").await, None);
/// # }
/// ```
pub struct CacheRegistry<B> {
    clients: Arc<RwLock<BTreeMap<String, MemcacheClient<B>>>>,
}

impl<B> Clone for CacheRegistry<B> {
    fn clone(&self) -> Self {
        Self {
            clients: Arc::clone(&self.clients),
        }
    }
}

impl<B> Default for CacheRegistry<B> {
    fn default() -> Self {
        Self {
            clients: Arc::default(),
        }
    }
}

impl<B> fmt::Debug for CacheRegistry<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheRegistry")
            .field("names", &self.names())
            .finish()
    }
}

impl<B> CacheRegistry<B> {
    /// An empty registry. Clones share it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, MemcacheClient<B>>> {
        // Every write is one insert or remove, so a poisoned map is still consistent.
        self.clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, MemcacheClient<B>>> {
        self.clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<B: Backend> CacheRegistry<B> {
    /// Registers a client under `name`, returning the client it replaces.
    pub fn register(
        &self,
        name: impl Into<String>,
        client: MemcacheClient<B>,
    ) -> Option<MemcacheClient<B>> {
        self.write().insert(name.into(), client)
    }

    /// Removes a client by name.
    pub fn unregister(&self, name: &str) -> Option<MemcacheClient<B>> {
        self.write().remove(name)
    }

    /// The client registered under `name`.
    pub fn get(&self, name: &str) -> Option<MemcacheClient<B>> {
        self.read().get(name).cloned()
    }

    /// Invalidates `key` in every registered client (each in its own namespace). Never
    /// fails; clients whose backend is gone are skipped.
    pub async fn invalidate(&self, key: &(impl KeyBase + ?Sized)) {
        // Clone out of the lock: it must not be held across an await.
        let clients: Vec<_> = self.read().values().cloned().collect();
        for client in clients {
            client.invalidate(key).await;
        }
    }

    /// Invalidates `key` in the client registered under `name` only; `false` when no client
    /// has that name.
    pub async fn invalidate_in(&self, name: &str, key: &(impl KeyBase + ?Sized)) -> bool {
        let Some(client) = self.get(name) else {
            return false;
        };
        client.invalidate(key).await;
        true
    }
}
