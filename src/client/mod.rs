//! The memcache utility of lovely.memcached and p01.memcache over any [`Backend`]: [`MemcacheClient`] and named
//! invalidation through [`CacheRegistry`].
//!
//! The convenience methods never fail, as those utilities promise: with the server gone,
//! [`query`](MemcacheClient::query) gives `None` and [`set`](MemcacheClient::set) stores
//! nothing but still returns the key it would have used ([`build_key`](MemcacheClient::build_key)'s;
//! with namespace versioning, whose keys need the generation the server holds, that plain
//! key rather than the versioned one a stored value gets); the next call after the server is
//! back uses it again. Every one of them has a `try_*` twin that returns the error.
//!
//! ```
//! use tower_memcache::{MemcacheClient, backend::MemoryBackend};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backend = MemoryBackend::new();
//! let util1 = MemcacheClient::new(backend.clone()).with_namespace("1");
//! let util2 = MemcacheClient::new(backend.clone()).with_namespace("2");
//! util1.set(&1, &1).await;
//! util2.set(&2, &2).await;
//! assert_eq!(util1.query::<i32>(&1).await, Some(1));
//! assert_eq!(util1.query::<i32>(&2).await, None);
//! // lovely.memcached's `ns=` argument: another namespace for one call.
//! assert_eq!(util1.with_namespace("2").query::<i32>(&2).await, Some(2));
//!
//! backend.set_unreachable(true);
//! assert_eq!(util1.query::<i32>(&1).await, None); // no error, just a miss
//! backend.set_unreachable(false);
//! assert_eq!(util1.query::<i32>(&1).await, Some(1)); // back at once
//! # }
//! ```

mod registry;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, BackendError, Item, Lifetime, ServerStats};
use crate::codec::{self, CodecError, FLAG_BINCODE, FLAG_RAW};
use crate::generation::unique;
use crate::key::{KeyBase, build_key, md5_hex, md5_hex_prefixed};

pub use registry::CacheRegistry;

/// Why a `try_*` call of [`MemcacheClient`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed or refused the call (server gone, value too large, …).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The value could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// [`MemcacheClient::try_invalidate_namespace`] on a client without namespace
    /// versioning, or without a namespace.
    #[error("namespace invalidation needs a namespace and namespace versioning turned on")]
    NamespaceNotVersioned,
}

/// The memcache utility of lovely.memcached and p01.memcache: namespaced md5 keys, a default lifetime, typed and raw
/// values, invalidation and statistics over any [`Backend`].
///
/// Cheap to clone: clones share the backend.
#[derive(Clone)]
pub struct MemcacheClient<B> {
    backend: B,
    namespace: Option<Arc<str>>,
    lifetime: Lifetime,
    versioned: bool,
}

impl<B: fmt::Debug> fmt::Debug for MemcacheClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcacheClient")
            .field("backend", &self.backend)
            .field("namespace", &self.namespace)
            .field("lifetime", &self.lifetime)
            .field("versioned", &self.versioned)
            .finish()
    }
}

impl<B: Backend> MemcacheClient<B> {
    /// A client with their defaults: no namespace, a lifetime of 3600 seconds.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            namespace: None,
            lifetime: Lifetime::default(),
            versioned: false,
        }
    }

    /// The same client in another namespace; `None` or `""` for none. Cheap: use it per
    /// call for lovely.memcached's `ns=`.
    ///
    /// Namespaces keep keys apart as the seed's formula does: the md5 of namespace and key
    /// concatenated, so namespace `"1"` with key `"23"` is the same memcache key as
    /// namespace `"12"` with key `"3"`. Keep apart only namespaces none of which starts
    /// with another (all of one length, say), or use
    /// [`with_versioned_namespace`](Self::with_versioned_namespace), whose keys end the
    /// namespace with a `\0`.
    #[must_use]
    pub fn with_namespace<'a>(&self, namespace: impl Into<Option<&'a str>>) -> Self {
        let namespace = namespace.into().filter(|ns| !ns.is_empty()).map(Arc::from);
        Self {
            namespace,
            ..self.clone()
        }
        .registered()
    }

    /// The same client with another default lifetime (lovely.memcached's `defaultLifetime`).
    /// Defaults to 3600 seconds.
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Turns namespace versioning on or off. Defaults to off.
    ///
    /// When on, a generation number kept in memcached is mixed into the namespace, so
    /// [`invalidate_namespace`](Self::invalidate_namespace) can drop one namespace without
    /// flushing the others. It costs one extra `get` per call, and keys are then
    /// `md5(namespace ++ "\0" ++ epoch ++ "\0" ++ generation ++ key)` rather than the plain
    /// formula, so every client sharing a namespace must agree on this setting.
    ///
    /// Each server keeps its own copy of the generation, next to the values it holds (a
    /// value and its generation are routed by the plain key): losing one of several
    /// servers costs only the values it held. An invalidation writes a new generation on
    /// every server; one that misses it is marked down and, before it serves again, loses
    /// its epoch ([`Backend::reset_on_rejoin`]), a number read with the generation: a new
    /// one moves every versioned namespace on that server to new keys.
    ///
    /// ```
    /// use tower_memcache::{MemcacheClient, backend::MemoryBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let backend = MemoryBackend::new();
    /// let users = MemcacheClient::new(backend.clone()).with_namespace("users").with_versioned_namespace(true);
    /// let posts = MemcacheClient::new(backend.clone()).with_namespace("posts");
    /// users.set("alice", &1).await;
    /// posts.set("hello", &2).await;
    ///
    /// users.invalidate_namespace().await;
    /// assert_eq!(users.query::<i32>("alice").await, None);
    /// assert_eq!(posts.query::<i32>("hello").await, Some(2));
    /// # }
    /// ```
    #[must_use]
    pub fn with_versioned_namespace(mut self, versioned: bool) -> Self {
        self.versioned = versioned;
        self.registered()
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The default lifetime (lovely.memcached's `defaultLifetime`, 3600 seconds unless changed).
    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// p01.memcache's `buildKey`: md5 of the namespace and the key's base bytes.
    ///
    /// ```
    /// use tower_memcache::{MemcacheClient, backend::MemoryBackend};
    ///
    /// let client = MemcacheClient::new(MemoryBackend::new());
    /// assert_eq!(client.build_key("cache_key"), "0a42907b589a309ad94f8874eacbc63f");
    /// ```
    pub fn build_key<K: KeyBase + ?Sized>(&self, key: &K) -> String {
        build_key(self.namespace(), key)
    }

    /// Stores a value for the default lifetime and returns its memcache key. Never fails:
    /// when the backend is gone, or the value cannot be stored, nothing is stored (and a
    /// value that cannot be stored, too large or unencodable, removes the one it was to
    /// replace, as memcached does with one too large). A set that failed returns
    /// [`build_key`](Self::build_key)'s key, which with namespace versioning is not the
    /// key a stored value gets: use [`try_set`](Self::try_set) to tell them apart.
    pub async fn set<K, T>(&self, key: &K, value: &T) -> String
    where
        K: KeyBase + ?Sized,
        T: Serialize + ?Sized,
    {
        self.set_with_lifetime(key, value, self.lifetime).await
    }

    /// [`set`](Self::set) with an explicit lifetime.
    pub async fn set_with_lifetime<K, T>(&self, key: &K, value: &T, lifetime: Lifetime) -> String
    where
        K: KeyBase + ?Sized,
        T: Serialize + ?Sized,
    {
        match self.try_set_with_lifetime(key, value, lifetime).await {
            Ok(stored_under) => stored_under,
            Err(err) => {
                tracing::debug!(error = %err, "memcache set failed; nothing stored");
                self.build_key(key)
            }
        }
    }

    /// [`set`](Self::set) that reports failure.
    pub async fn try_set<K, T>(&self, key: &K, value: &T) -> Result<String, Error>
    where
        K: KeyBase + ?Sized,
        T: Serialize + ?Sized,
    {
        self.try_set_with_lifetime(key, value, self.lifetime).await
    }

    /// [`set_with_lifetime`](Self::set_with_lifetime) that reports failure.
    pub async fn try_set_with_lifetime<K, T>(
        &self,
        key: &K,
        value: &T,
        lifetime: Lifetime,
    ) -> Result<String, Error>
    where
        K: KeyBase + ?Sized,
        T: Serialize + ?Sized,
    {
        let bytes = match codec::encode_value(value) {
            Ok(bytes) => bytes,
            Err(err) => {
                self.drop_replaced(key).await;
                return Err(err.into());
            }
        };
        self.store(key, Bytes::from(bytes), FLAG_BINCODE, lifetime)
            .await
    }

    /// Reads a value stored by [`set`](Self::set). A miss, a server that is gone, a value
    /// of another type or one that does not decode are all `None`; a value of ours that
    /// does not decode is deleted.
    pub async fn query<T: DeserializeOwned>(&self, key: &(impl KeyBase + ?Sized)) -> Option<T> {
        self.try_query(key).await.unwrap_or_else(|err| {
            tracing::debug!(error = %err, "memcache query failed; treated as a miss");
            None
        })
    }

    /// [`query`](Self::query) that reports backend failures (decode failures stay misses).
    pub async fn try_query<T: DeserializeOwned>(
        &self,
        key: &(impl KeyBase + ?Sized),
    ) -> Result<Option<T>, Error> {
        let resolved = self.resolve_key(key).await?;
        let Some(item) = self.get_resolved(&resolved).await? else {
            return Ok(None);
        };
        let memcache_key = &resolved.key;
        if item.flags != FLAG_BINCODE {
            // Someone else's value (a raw value, another client's format): not ours to
            // decode, and not ours to delete.
            tracing::debug!(key = %memcache_key, flags = item.flags, "value with foreign flags; miss");
            return Ok(None);
        }
        match codec::decode_value(&item.value) {
            Ok(value) => Ok(Some(value)),
            Err(err) => {
                tracing::debug!(key = %memcache_key, error = %err, "undecodable value deleted; miss");
                // Best effort: a failure to delete leaves a value that will miss again.
                let _ = self.delete_resolved(&resolved).await;
                Ok(None)
            }
        }
    }

    /// Stores bytes as they are, with flags 0, so any memcached client can read them (the
    /// p01.memcache's `raw=True`). Never fails; returns the memcache key.
    ///
    /// ```
    /// use tower_memcache::{MemcacheClient, backend::MemoryBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let backend = MemoryBackend::new();
    /// let client = MemcacheClient::new(backend.clone());
    /// let key = client.set_raw("a", "value of a").await;
    /// assert_eq!(key, "0cc175b9c0f1b6a831c399e269772661");
    /// assert_eq!(&backend.peek(&key).unwrap().value[..], b"value of a");
    /// assert_eq!(client.query_raw("a").await.as_deref(), Some(&b"value of a"[..]));
    /// # }
    /// ```
    ///
    /// Raw values are bytes only: where p01.memcache raised `ValueError: Data must be a
    /// string`, anything else does not compile.
    ///
    /// ```compile_fail
    /// # use tower_memcache::{MemcacheClient, backend::MemoryBackend};
    /// # async fn f(client: MemcacheClient<MemoryBackend>) {
    /// client.set_raw("a", 42u32).await;
    /// # }
    /// ```
    pub async fn set_raw(&self, key: &(impl KeyBase + ?Sized), value: impl Into<Bytes>) -> String {
        self.set_raw_with_lifetime(key, value, self.lifetime).await
    }

    /// [`set_raw`](Self::set_raw) that reports failure.
    ///
    /// ```
    /// use tower_memcache::{MemcacheClient, backend::MemoryBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let backend = MemoryBackend::new();
    /// let client = MemcacheClient::new(backend.clone());
    /// assert!(client.try_set_raw("page", "<p>hi</p>").await.is_ok());
    /// backend.set_unreachable(true);
    /// assert!(client.try_set_raw("page", "<p>hi</p>").await.is_err());
    /// # }
    /// ```
    pub async fn try_set_raw(
        &self,
        key: &(impl KeyBase + ?Sized),
        value: impl Into<Bytes>,
    ) -> Result<String, Error> {
        self.try_set_raw_with_lifetime(key, value, self.lifetime)
            .await
    }

    /// [`set_raw`](Self::set_raw) with an explicit lifetime.
    pub async fn set_raw_with_lifetime(
        &self,
        key: &(impl KeyBase + ?Sized),
        value: impl Into<Bytes>,
        lifetime: Lifetime,
    ) -> String {
        match self.try_set_raw_with_lifetime(key, value, lifetime).await {
            Ok(stored_under) => stored_under,
            Err(err) => {
                tracing::debug!(error = %err, "memcache raw set failed; nothing stored");
                self.build_key(key)
            }
        }
    }

    /// [`set_raw_with_lifetime`](Self::set_raw_with_lifetime) that reports failure.
    pub async fn try_set_raw_with_lifetime(
        &self,
        key: &(impl KeyBase + ?Sized),
        value: impl Into<Bytes>,
        lifetime: Lifetime,
    ) -> Result<String, Error> {
        self.store(key, value.into(), FLAG_RAW, lifetime).await
    }

    /// Reads raw bytes stored with flags 0 (by [`set_raw`](Self::set_raw) or any other
    /// client). A value stored with other flags is a miss.
    pub async fn query_raw(&self, key: &(impl KeyBase + ?Sized)) -> Option<Bytes> {
        self.try_query_raw(key).await.unwrap_or_else(|err| {
            tracing::debug!(error = %err, "memcache raw query failed; treated as a miss");
            None
        })
    }

    /// [`query_raw`](Self::query_raw) that reports backend failures.
    pub async fn try_query_raw(
        &self,
        key: &(impl KeyBase + ?Sized),
    ) -> Result<Option<Bytes>, Error> {
        let resolved = self.resolve_key(key).await?;
        let item = self.get_resolved(&resolved).await?;
        Ok(item
            .filter(|item| item.flags == FLAG_RAW)
            .map(|item| item.value))
    }

    /// Removes a key's value. Never fails.
    pub async fn invalidate(&self, key: &(impl KeyBase + ?Sized)) {
        if let Err(err) = self.try_invalidate(key).await {
            tracing::debug!(error = %err, "memcache invalidate failed");
        }
    }

    /// [`invalidate`](Self::invalidate) that reports failure; `Ok(false)` when nothing was
    /// stored under the key.
    pub async fn try_invalidate(&self, key: &(impl KeyBase + ?Sized)) -> Result<bool, Error> {
        let resolved = self.resolve_key(key).await?;
        Ok(self.delete_resolved(&resolved).await?)
    }

    /// Flushes everything on every server, every namespace included, as `invalidateAll` in both
    /// utilities does. Never fails.
    pub async fn invalidate_all(&self) {
        if let Err(err) = self.try_invalidate_all().await {
            tracing::debug!(error = %err, "memcache flush_all failed");
        }
    }

    /// [`invalidate_all`](Self::invalidate_all) that reports failure.
    pub async fn try_invalidate_all(&self) -> Result<(), Error> {
        Ok(self.backend.flush_all().await?)
    }

    /// Drops every value of this client's namespace and no other, by moving the namespace
    /// to a new generation. Needs [`with_versioned_namespace`](Self::with_versioned_namespace).
    /// Never fails; a misconfigured client logs a warning.
    pub async fn invalidate_namespace(&self) {
        match self.try_invalidate_namespace().await {
            Ok(()) => {}
            Err(Error::NamespaceNotVersioned) => {
                tracing::warn!("invalidate_namespace on a client without namespace versioning");
            }
            Err(err) => tracing::debug!(error = %err, "memcache namespace invalidation failed"),
        }
    }

    /// [`invalidate_namespace`](Self::invalidate_namespace) that reports failure.
    pub async fn try_invalidate_namespace(&self) -> Result<(), Error> {
        let (true, Some(namespace)) = (self.versioned, self.namespace()) else {
            return Err(Error::NamespaceNotVersioned);
        };
        // Every server holds its own copy, read with the values it holds: a new one on
        // each. A server that misses it is marked down and, before it serves again, loses
        // its epoch (`registered`), which orphans the values of the old generation.
        self.backend
            .set_on_every_server(
                &generation_key(namespace),
                fresh_generation(),
                FLAG_RAW,
                Lifetime::NEVER,
            )
            .await?;
        Ok(())
    }

    /// Statistics of every server (`getStatistics` in both utilities); empty when the backend is
    /// gone.
    pub async fn stats(&self) -> Vec<ServerStats> {
        self.try_stats().await.unwrap_or_else(|err| {
            tracing::debug!(error = %err, "memcache stats failed");
            Vec::new()
        })
    }

    /// [`stats`](Self::stats) that reports failure.
    pub async fn try_stats(&self) -> Result<Vec<ServerStats>, Error> {
        Ok(self.backend.stats().await?)
    }

    async fn store(
        &self,
        key: &(impl KeyBase + ?Sized),
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<String, Error> {
        let resolved = self.resolve_key(key).await?;
        let stored = match &resolved.route {
            Some(route) => {
                self.backend
                    .set_by_key(route, &resolved.key, value, flags, lifetime)
                    .await
            }
            None => {
                self.backend
                    .set(&resolved.key, value, flags, lifetime)
                    .await
            }
        };
        if let Err(err) = stored {
            if matches!(err, BackendError::ValueTooLarge { .. }) {
                // Refused before sending, where memcached would have dropped the old value.
                let _ = self.delete_resolved(&resolved).await;
            }
            return Err(err.into());
        }
        Ok(resolved.key)
    }

    /// A set whose value cannot be stored drops the value it was to replace, as memcached
    /// does with one too large: the caller must not read back what it meant to replace.
    /// Best effort, like the set.
    async fn drop_replaced(&self, key: &(impl KeyBase + ?Sized)) {
        if let Err(err) = self.try_invalidate(key).await {
            tracing::debug!(error = %err, "memcache delete after a failed set failed");
        }
    }

    async fn get_resolved(&self, resolved: &Resolved) -> Result<Option<Item>, BackendError> {
        match &resolved.route {
            Some(route) => Ok(self
                .backend
                .get_many_by_key(route, &[&resolved.key])
                .await?
                .remove(&resolved.key)),
            None => self.backend.get(&resolved.key).await,
        }
    }

    async fn delete_resolved(&self, resolved: &Resolved) -> Result<bool, BackendError> {
        match &resolved.route {
            Some(route) => self.backend.delete_by_key(route, &resolved.key).await,
            None => self.backend.delete(&resolved.key).await,
        }
    }

    /// The memcache key a call uses: the plain key, or with versioning the key in the
    /// namespace's current generation, which lives (with the value) on the server of the
    /// plain key, the route.
    async fn resolve_key(&self, key: &(impl KeyBase + ?Sized)) -> Result<Resolved, Error> {
        let plain = self.build_key(key);
        let (true, Some(namespace)) = (self.versioned, self.namespace()) else {
            return Ok(Resolved {
                key: plain,
                route: None,
            });
        };
        let (epoch, generation) = self.current_generation(namespace, &plain).await?;
        let key = md5_hex(&[
            namespace.as_bytes(),
            b"\0",
            &epoch,
            b"\0",
            &generation,
            &key.key_base(),
        ]);
        Ok(Resolved {
            key,
            route: Some(plain),
        })
    }

    /// The server's epoch and the namespace's generation on the server of `route`, both
    /// read with one `get`; either is created there when absent.
    async fn current_generation(
        &self,
        namespace: &str,
        route: &str,
    ) -> Result<(Bytes, Bytes), Error> {
        let generation_key = generation_key(namespace);
        let mut found = self
            .backend
            .get_many_by_key(route, &[EPOCH_KEY, &generation_key])
            .await?;
        let epoch = match found.remove(EPOCH_KEY) {
            Some(item) => item.value,
            None => self.create(route, EPOCH_KEY).await?,
        };
        let generation = match found.remove(&generation_key) {
            Some(item) => item.value,
            None => self.create(route, &generation_key).await?,
        };
        Ok((epoch, generation))
    }

    /// A fresh value for an absent epoch or generation (never set, evicted, or reset on
    /// this server): starting from a fresh value keeps values of an earlier one from
    /// coming back. When another client created it first, theirs.
    async fn create(&self, route: &str, key: &str) -> Result<Bytes, Error> {
        let fresh = fresh_generation();
        if self
            .backend
            .add_by_key(route, key, fresh.clone(), FLAG_RAW, Lifetime::NEVER)
            .await?
        {
            return Ok(fresh);
        }
        let mut found = self.backend.get_many_by_key(route, &[key]).await?;
        Ok(found.remove(key).map_or(fresh, |item| item.value))
    }

    /// With versioning, the epoch key goes on every server that rejoins after being
    /// marked down: it may hold generations from before invalidations it missed, and a
    /// new epoch there moves every namespace on it to new keys. One key for all
    /// namespaces: a key per namespace would stop being reset past
    /// [`MAX_RESET_ON_REJOIN_KEYS`](crate::backend::MAX_RESET_ON_REJOIN_KEYS) of them.
    fn registered(self) -> Self {
        if let (true, Some(_)) = (self.versioned, self.namespace()) {
            self.backend.reset_on_rejoin(EPOCH_KEY);
        }
        self
    }
}

/// Each server's epoch of versioned namespaces, mixed into every versioned key: deleted on
/// a server that rejoins ([`Backend::reset_on_rejoin`]), so that what it held from before
/// is orphaned, whatever namespace it was in.
const EPOCH_KEY: &str = "tower-memcache:namespace-epoch";

/// Where a call's value lives.
struct Resolved {
    /// Its memcache key.
    key: String,
    /// With namespace versioning, the plain key, whose server holds the namespace's
    /// generation and the value (`*_by_key`); `None`: the value is found by its key.
    route: Option<String>,
}

/// A namespace's generation key. Prefixed, so that no key built by
/// [`build_key`] (32 hex digits) names it: a crafted user key could
/// otherwise read a generation and, after an invalidation, write the old one back.
fn generation_key(namespace: &str) -> String {
    md5_hex_prefixed("ng:", &[namespace.as_bytes()])
}

/// A generation no earlier one is likely to equal (see [`unique`]).
fn fresh_generation() -> Bytes {
    Bytes::from(unique().to_string())
}
