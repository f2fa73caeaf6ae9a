//! [`TcpBackend`]: memcached over TCP, for production.
//!
//! - The text protocol (works through twemproxy and mcrouter), parsed by pure functions.
//! - A few pipelined connections per server, many requests in flight on each; no connect,
//!   checkout or health round trip per request.
//! - Every call is bounded by the operation timeout (100 ms by default) after a connect
//!   timeout (100 ms by default) when a connection must be opened first.
//! - Many servers through libmemcached-compatible weighted ketama, so the same key lands on
//!   the same server as with libmemcached, pylibmc or any client built on it.
//! - Fail-fast health: after a few consecutive failures a server is marked down and its
//!   keys fail at once; a background probe puts it back as soon as it answers `version`
//!   (after deleting the keys registered with [`Backend::reset_on_rejoin`] on it).
//!   [`TcpBackend::sibling`] makes a backend with connections of its own that shares this
//!   health: one backend per runtime, one view of the servers per process.
//! - Routing by key (libmemcached's `*_by_key`), writes to every server, and multi-gets
//!   that answer with what the servers that answered hold.
//! - Each server's item size limit (`item_size_max`, and the sizes it refused) is learned,
//!   so an item it would refuse is refused before it is sent.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_memcache::MemcacheClient;
//! use tower_memcache::backend::TcpBackend;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = TcpBackend::builder()
//!     .server("10.0.0.1:11211")
//!     .weighted_server("10.0.0.2:11211", 2)
//!     .timeout(Duration::from_millis(50))
//!     .build()?;
//! let client = MemcacheClient::new(backend);
//! client.set("cache_key", "cached value").await;
//! # Ok(()) }
//! ```

mod builder;
mod connection;
mod everywhere;
mod execute;
mod gets;
mod health;
mod ketama;
mod merge;
mod protocol;
mod replies;
mod server;

pub use self::builder::{ConfigError, MIN_PROBE_INTERVAL, TcpBackendBuilder};

pub use self::protocol::ProtocolError;
/// Re-exported from [`backend`](super), where it moved with [`Backend::cas`].
#[doc(no_inline)]
pub use super::CasOutcome;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;

use self::connection::ConnectionSettings;
use self::everywhere::detached;
use self::ketama::{Ring, ServerSpec};
use self::protocol::{Reply, StoreCommand};
use self::replies::{
    Expect, cas_outcome, delete_reply, error_reply, into_item, number_reply, set_reply,
};
use self::server::Server;
use super::{
    Advanced, Backend, BackendError, ITEM_OVERHEAD, Item, Lifetime, MAX_RESET_ON_REJOIN_KEYS,
    ServerStats, UnreachableReason, check_item_size, validate_key, validate_route,
};

/// Keys per `gets` line: long multi-gets are split so no request line grows unbounded.
const MAX_KEYS_PER_GET: usize = 100;

/// memcached over TCP: pipelined connections, libmemcached-compatible ketama over many
/// servers, per-server health with fast failure and background probing.
///
/// Cheap to clone; clones share connections. [`sibling`](Self::sibling) makes a backend
/// with connections of its own that shares everything else (for one backend per runtime).
/// See the [module docs](self) for an example.
#[derive(Clone)]
pub struct TcpBackend {
    inner: Arc<Inner>,
}

/// One backend's connections and settings (its clones share them).
struct Inner {
    /// Each server's connections, and its [`Health`](server), which the siblings share.
    servers: Vec<Server>,
    settings: ConnectionSettings,
    timeout: Duration,
    failure_threshold: u32,
    probe_interval: Duration,
    remove_failed_servers: bool,
    item_size_limit: usize,
    /// What the siblings share besides each server's health. Strong: a sibling keeps
    /// the family alive; the family only knows its members weakly.
    family: Arc<Family>,
}

impl Inner {
    /// The most a call may take: connecting, then the reply. Saturating: `Duration::MAX`
    /// is no timeout, not a panic.
    fn call_limit(&self) -> Duration {
        self.timeout.saturating_add(self.settings.connect_timeout)
    }
}

/// What a backend and its [siblings](TcpBackend::sibling) share besides each server's
/// health.
struct Family {
    specs: Vec<ServerSpec>,
    ring: RwLock<Arc<Ring>>,
    /// Keys deleted on a server that answers its probe, before it is marked up
    /// ([`Backend::reset_on_rejoin`]); at most [`MAX_RESET_ON_REJOIN_KEYS`].
    reset_on_rejoin: Mutex<Vec<String>>,
    /// A key past [`MAX_RESET_ON_REJOIN_KEYS`] was registered: a rejoining server is
    /// flushed instead (the keys it would not delete could otherwise hold generations
    /// from before purges it missed).
    reset_overflowed: AtomicBool,
    /// Servers marked down so far ([`Backend::outages`]), counted before each transition
    /// (see `Server::mark_down`).
    outages: AtomicU64,
    /// The siblings, whose connections to a server marked down are all closed.
    members: Mutex<Vec<Weak<Inner>>>,
}

impl Family {
    fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The siblings still alive.
    fn members(&self) -> Vec<Arc<Inner>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

impl fmt::Debug for TcpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<_> = self
            .inner
            .servers
            .iter()
            .map(|s| (s.name.to_string(), if s.is_down() { "down" } else { "up" }))
            .collect();
        f.debug_struct("TcpBackend")
            .field("servers", &servers)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl TcpBackend {
    /// A builder.
    pub fn builder() -> TcpBackendBuilder {
        TcpBackendBuilder::default()
    }

    /// A backend over these servers (weight 1 each) with the default settings.
    pub fn new<I, S>(servers: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder().servers(servers).build()
    }

    /// A backend over the same servers with the same settings and connections of its own
    /// (opened on first use, on the runtime of the call that needs them), sharing
    /// everything it knows about the servers with this one: each server's health (a server
    /// marked down by one sibling is down for all at once, and watched by one probe, which
    /// resets it once and puts it back for all), the ring, the keys to
    /// [reset on rejoin](Backend::reset_on_rejoin), the [outages](Backend::outages) counter
    /// and the item size limits learned.
    ///
    /// For one backend per runtime in one process (a runtime per thread, as
    /// `tower-memcache-proxy` runs by default): each thread's calls stay on its own
    /// connections, while a purge made through one thread holds for all of them. A
    /// [`clone`](Clone::clone) shares the connections too, and so the runtime that opened
    /// them.
    ///
    /// ```
    /// use tower_memcache::backend::{Backend, TcpBackend};
    ///
    /// let first = TcpBackend::new(["127.0.0.1:11211", "127.0.0.1:11212"])?;
    /// first.reset_on_rejoin("namespace-generation");
    /// // One per thread, each made (and first used) in that thread's runtime.
    /// let threads: Vec<_> = (0..2)
    ///     .map(|_| {
    ///         let backend = first.sibling();
    ///         std::thread::spawn(move || {
    ///             let runtime = tokio::runtime::Builder::new_current_thread()
    ///                 .enable_all()
    ///                 .build()
    ///                 .unwrap();
    ///             runtime.block_on(async move {
    ///                 // Fails open when nothing listens there, like any call.
    ///                 let _ = backend.get("key").await;
    ///                 backend.outages()
    ///             })
    ///         })
    ///     })
    ///     .collect();
    /// for thread in threads {
    ///     // The counter is the family's: every sibling reads the same.
    ///     let _outages = thread.join().unwrap();
    /// }
    /// assert_eq!(first.sibling().server_names(), first.server_names());
    /// # Ok::<(), tower_memcache::backend::tcp::ConfigError>(())
    /// ```
    pub fn sibling(&self) -> TcpBackend {
        let inner = &self.inner;
        Self::join(Inner {
            servers: inner.servers.iter().map(Server::sibling).collect(),
            settings: inner.settings.clone(),
            timeout: inner.timeout,
            failure_threshold: inner.failure_threshold,
            probe_interval: inner.probe_interval,
            remove_failed_servers: inner.remove_failed_servers,
            item_size_limit: inner.item_size_limit,
            family: Arc::clone(&inner.family),
        })
    }

    /// A backend of `inner`, made a member of its family.
    fn join(inner: Inner) -> TcpBackend {
        let inner = Arc::new(inner);
        let mut members = inner
            .family
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        members.retain(|member| member.strong_count() > 0);
        members.push(Arc::downgrade(&inner));
        drop(members);
        TcpBackend { inner }
    }

    /// The servers' names (`host:port`), in configuration order.
    pub fn server_names(&self) -> Vec<String> {
        self.inner
            .servers
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// Which server (index into [`server_names`](Self::server_names)) holds `key` under
    /// libmemcached's weighted ketama, given which servers are in the ring now.
    pub fn server_for_key(&self, key: &str) -> Option<usize> {
        self.ring().server_for(key.as_bytes())
    }

    /// Whether a server is marked down (by index into
    /// [`server_names`](Self::server_names)).
    pub fn is_server_down(&self, index: usize) -> bool {
        self.inner.servers.get(index).is_some_and(Server::is_down)
    }

    /// Stores only if the key already holds a value (`replace`); `Ok(false)` when it did
    /// not.
    pub async fn replace(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        let reply = self
            .store(StoreCommand::Replace, None, key, value, flags, lifetime)
            .await?;
        Ok(matches!(reply, Reply::Stored))
    }

    /// Appends bytes to an existing value (`append`); `Ok(false)` when the key is absent.
    pub async fn append(&self, key: &str, value: Bytes) -> Result<bool, BackendError> {
        let reply = self
            .store(StoreCommand::Append, None, key, value, 0, Lifetime::NEVER)
            .await?;
        Ok(matches!(reply, Reply::Stored))
    }

    /// Prepends bytes to an existing value (`prepend`); `Ok(false)` when the key is absent.
    pub async fn prepend(&self, key: &str, value: Bytes) -> Result<bool, BackendError> {
        let reply = self
            .store(StoreCommand::Prepend, None, key, value, 0, Lifetime::NEVER)
            .await?;
        Ok(matches!(reply, Reply::Stored))
    }

    /// Subtracts from a decimal counter, stopping at 0 as memcached does; `Ok(None)` when the
    /// key is absent.
    pub async fn decr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        validate_key(key)?;
        let mut request = BytesMut::new();
        protocol::encode_decr(&mut request, key, delta, false);
        number_reply(self.keyed(key, request, Expect::Number).await?)
    }

    /// Every server's version string, by server name; servers that do not answer are left
    /// out.
    pub async fn versions(&self) -> Vec<(String, String)> {
        let calls = (0..self.inner.servers.len()).map(|index| async move {
            let mut request = BytesMut::new();
            protocol::encode_version(&mut request);
            match self.execute(index, request.freeze(), Expect::Version).await {
                Ok(Reply::Version(version)) => {
                    Some((self.inner.servers[index].name.to_string(), version))
                }
                _ => None,
            }
        });
        join_all(calls).await.into_iter().flatten().collect()
    }

    fn ring(&self) -> Arc<Ring> {
        self.inner.family.ring()
    }

    fn server_index(&self, key: &str) -> Result<usize, BackendError> {
        server_in(&self.ring(), key)
    }

    async fn keyed(
        &self,
        key: &str,
        request: BytesMut,
        expect: Expect,
    ) -> Result<Reply, BackendError> {
        let index = self.server_index(key)?;
        self.execute(index, request.freeze(), expect).await
    }

    /// The item size limit for server `index`: the configured one, or less when the
    /// server was found to accept less.
    fn limit_of(&self, index: usize) -> usize {
        self.inner
            .item_size_limit
            .min(self.inner.servers[index].item_limit().get())
    }

    /// Stores on the server of `route`, or of `key` without one.
    async fn store(
        &self,
        command: StoreCommand,
        route: Option<&str>,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<Reply, BackendError> {
        // The route first, as the trait's defaults (`MemoryBackend`'s) and the reads and
        // deletes by key check it: a call with several faults is refused for the same one
        // by every backend (review TW).
        if let Some(route) = route {
            validate_route(route)?;
        }
        validate_key(key)?;
        // Bad input is refused before a server is chosen (which fails while none is left).
        check_item_size(key, value.len(), self.inner.item_size_limit)?;
        let index = match route {
            Some(route) => self.server_index(route)?,
            None => self.server_index(key)?,
        };
        check_item_size(key, value.len(), self.limit_of(index))?;
        let mut request = BytesMut::with_capacity(key.len() + value.len() + 64);
        protocol::encode_store(
            &mut request,
            command,
            key,
            flags,
            lifetime.exptime(),
            &value,
            false,
        );
        match self.execute(index, request.freeze(), Expect::Store).await? {
            reply @ (Reply::Stored | Reply::NotStored | Reply::Exists | Reply::NotFound) => {
                Ok(reply)
            }
            other => Err(self.store_error(index, key.len(), value.len(), other)),
        }
    }

    /// The error for a store's error reply. A refusal as too large lowers the server's
    /// limit below that item, so that the same size is refused before it is sent again.
    fn store_error(
        &self,
        index: usize,
        key_len: usize,
        value_len: usize,
        reply: Reply,
    ) -> BackendError {
        let Reply::ServerError(msg) = &reply else {
            return error_reply(reply, Some(value_len));
        };
        if !msg.contains("too large") {
            return error_reply(reply, Some(value_len));
        }
        let server = &self.inner.servers[index];
        let size = key_len + value_len + ITEM_OVERHEAD;
        let limit = server
            .item_limit()
            .refused(size)
            .min(self.inner.item_size_limit);
        tracing::debug!(server = %server.name, size, limit, "memcached refused an item as too large; limit lowered");
        BackendError::ValueTooLarge {
            size: value_len,
            limit: limit.saturating_sub(key_len + ITEM_OVERHEAD),
        }
    }
}

/// The server of `key` on `ring`.
fn server_in(ring: &Ring, key: &str) -> Result<usize, BackendError> {
    ring.server_for(key.as_bytes())
        .ok_or_else(|| BackendError::Unreachable {
            server: "(none)".to_string(),
            reason: UnreachableReason::NoServerLeft,
        })
}

impl Backend for TcpBackend {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        validate_key(key)?;
        let mut request = BytesMut::with_capacity(key.len() + 8);
        protocol::encode_get(&mut request, &[key], true);
        match self.keyed(key, request, Expect::Values).await? {
            // At most one value, for the one key asked (the parser checked that).
            Reply::Values(values) => Ok(values.into_iter().next().map(into_item)),
            other => Err(error_reply(other, None)),
        }
    }

    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
        for key in keys {
            validate_key(key)?;
        }
        // The common case (a cache hit reads its entry and what validates it): every key
        // on one server, one request, none of the per-server bookkeeping below.
        let ring = self.ring();
        let indexes = keys
            .iter()
            .map(|key| server_in(&ring, key))
            .collect::<Result<Vec<_>, _>>()?;
        drop(ring);
        if let Some(&first) = indexes.first() {
            if indexes.iter().all(|&i| i == first) {
                return self.get_on(first, keys).await;
            }
        }
        // One multi-get per server (in chunks), all servers at once.
        let mut by_server: HashMap<usize, Vec<&str>> = HashMap::new();
        for (&key, index) in keys.iter().zip(indexes) {
            by_server.entry(index).or_default().push(key);
        }
        let calls = by_server
            .iter()
            .map(|(&index, keys)| self.get_on(index, keys));
        // What the servers that answered hold: a failed server's keys are absent, as
        // misses are; only when none answered is that an error.
        let mut found = HashMap::with_capacity(keys.len());
        let mut answered = false;
        let mut first_error = None;
        for reply in join_all(calls).await {
            match reply {
                Ok(items) => {
                    answered = true;
                    found.extend(items);
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) if !answered => Err(err),
            _ => Ok(found),
        }
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        set_reply(
            self.store(StoreCommand::Set, None, key, value, flags, lifetime)
                .await?,
        )
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        Ok(matches!(
            self.store(StoreCommand::Add, None, key, value, flags, lifetime)
                .await?,
            Reply::Stored
        ))
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        Ok(cas_outcome(
            self.store(StoreCommand::Cas(cas), None, key, value, flags, lifetime)
                .await?,
        ))
    }

    /// With `remove_failed_servers`, on every server (see
    /// [`TcpBackendBuilder::remove_failed_servers`]): a copy written while the key's own
    /// server was out of the ring would come back the next time it is out.
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        validate_key(key)?;
        let mut request = BytesMut::new();
        protocol::encode_delete(&mut request, key, false);
        if self.inner.remove_failed_servers {
            return self.delete_everywhere(request.freeze()).await;
        }
        delete_reply(self.keyed(key, request, Expect::Delete).await?)
    }

    async fn touch(&self, key: &str, lifetime: Lifetime) -> Result<bool, BackendError> {
        validate_key(key)?;
        let mut request = BytesMut::new();
        protocol::encode_touch(&mut request, key, lifetime.exptime(), false);
        match self.keyed(key, request, Expect::Touch).await? {
            Reply::Touched => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(error_reply(other, None)),
        }
    }

    async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        validate_key(key)?;
        let mut request = BytesMut::new();
        protocol::encode_incr(&mut request, key, delta, false);
        number_reply(self.keyed(key, request, Expect::Number).await?)
    }

    /// `flush_all` on every server, as a write every server must take: in a task of its
    /// own (it is judged even if the caller gives up), sent to rejoining servers too, and a
    /// server that misses it (marked down, or failing it) owes it and is marked down at
    /// once, so that it is flushed before it serves again (`health::reset`). A server that
    /// answers with a refusal (memcached `-F`) or a proxy that takes no flush owe nothing:
    /// no rejoin could make it.
    async fn flush_all(&self) -> Result<(), BackendError> {
        let backend = self.clone();
        detached(async move { backend.flush_everywhere().await }).await
    }

    async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
        let calls = (0..self.inner.servers.len()).map(|index| {
            let mut request = BytesMut::new();
            protocol::encode_stats(&mut request, None);
            self.execute(index, request.freeze(), Expect::Stats)
        });
        let mut answered = Vec::new();
        let mut last_error = None;
        for (index, reply) in join_all(calls).await.into_iter().enumerate() {
            let server = self.inner.servers[index].name.to_string();
            match reply {
                Ok(Reply::Stats(stats)) => answered.push(ServerStats {
                    server,
                    stats: stats.into_iter().collect(),
                }),
                Ok(Reply::Values(_)) => answered.push(ServerStats {
                    server,
                    stats: HashMap::new(),
                }),
                Ok(other) => last_error = Some(error_reply(other, None)),
                Err(err) => last_error = Some(err),
            }
        }
        // The servers that answered, as getStatistics in lovely.memcached and p01.memcache lists the connected ones;
        // an error only when none did.
        match (answered.is_empty(), last_error) {
            (true, Some(err)) => Err(err),
            _ => Ok(answered),
        }
    }

    fn server_of(&self, route: &str) -> Option<usize> {
        self.server_for_key(route)
    }

    fn outages(&self) -> u64 {
        self.inner.family.outages.load(Ordering::SeqCst)
    }

    fn is_available(&self, key: &str) -> bool {
        self.server_for_key(key)
            .is_some_and(|index| !self.inner.servers[index].is_down())
    }

    /// The smallest limit over the servers: the configured one, or less for a server that
    /// reported a smaller `item_size_max` or refused an item as too large.
    fn item_size_limit(&self) -> usize {
        (0..self.inner.servers.len())
            .map(|index| self.limit_of(index))
            .min()
            .unwrap_or(self.inner.item_size_limit)
    }

    /// One `gets` (a line per 100 keys) to the server of `route` on the current ring.
    async fn get_many_by_key(
        &self,
        route: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, Item>, BackendError> {
        validate_route(route)?;
        for key in keys {
            validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let index = self.server_index(route)?;
        self.get_on(index, keys).await
    }

    /// One `gets` (a line per 100 keys) to the server of `route`, as
    /// [`get_many_by_key`](Backend::get_many_by_key); each value goes to the place of the
    /// key it answers, so no key is copied and no map built. `limit` joins the operation
    /// timeout's deadline: one deadline per call, kept by its connection.
    async fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        validate_route(route)?;
        for key in keys {
            validate_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let index = self.server_index(route)?;
        self.get_ordered_on(index, keys, limit).await
    }

    async fn set_by_key(
        &self,
        route: &str,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        set_reply(
            self.store(StoreCommand::Set, Some(route), key, value, flags, lifetime)
                .await?,
        )
    }

    async fn add_by_key(
        &self,
        route: &str,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        Ok(matches!(
            self.store(StoreCommand::Add, Some(route), key, value, flags, lifetime)
                .await?,
            Reply::Stored
        ))
    }

    async fn cas_by_key(
        &self,
        route: &str,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        Ok(cas_outcome(
            self.store(
                StoreCommand::Cas(cas),
                Some(route),
                key,
                value,
                flags,
                lifetime,
            )
            .await?,
        ))
    }

    async fn delete_by_key(&self, route: &str, key: &str) -> Result<bool, BackendError> {
        validate_route(route)?;
        validate_key(key)?;
        let index = self.server_index(route)?;
        let mut request = BytesMut::new();
        protocol::encode_delete(&mut request, key, false);
        delete_reply(
            self.execute(index, request.freeze(), Expect::Delete)
                .await?,
        )
    }

    /// Sends `set` to every configured server at once, those out of the ring included.
    /// The writes run in a task of their own: they finish, and a server that fails one is
    /// marked down, even if the returned future is dropped.
    async fn set_on_every_server(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        validate_key(key)?;
        // Every server must take it: held to the smallest limit.
        check_item_size(key, value.len(), self.item_size_limit())?;
        let mut request = BytesMut::with_capacity(key.len() + value.len() + 64);
        protocol::encode_store(
            &mut request,
            StoreCommand::Set,
            key,
            flags,
            lifetime.exptime(),
            &value,
            false,
        );
        let request = request.freeze();
        let mut delete = BytesMut::with_capacity(key.len() + 16);
        protocol::encode_delete(&mut delete, key, false);
        let delete = delete.freeze();
        let backend = self.clone();
        let (key_len, value_len) = (key.len(), value.len());
        detached(async move {
            backend
                .set_everywhere(request, delete, key_len, value_len)
                .await
        })
        .await
    }

    /// On every configured server at once, those out of the ring included, in a task of
    /// its own (as [`set_on_every_server`](Self::set_on_every_server)).
    async fn advance_on_every_server(
        &self,
        key: &str,
        stamp: u64,
        lifetime: Lifetime,
    ) -> Result<Advanced, BackendError> {
        validate_key(key)?;
        // Every server must take it: held to the smallest limit (a u64 has 20 digits).
        check_item_size(key, 20, self.item_size_limit())?;
        let backend = self.clone();
        let key = key.to_owned();
        let exptime = lifetime.exptime();
        detached(async move { backend.advance_everywhere(&key, stamp, exptime).await }).await
    }

    async fn delete_on_every_server(&self, key: &str) -> Result<(), BackendError> {
        validate_key(key)?;
        let mut request = BytesMut::with_capacity(key.len() + 16);
        protocol::encode_delete(&mut request, key, false);
        self.delete_everywhere(request.freeze()).await.map(drop)
    }

    fn reset_on_rejoin(&self, key: &str) {
        if let Err(err) = validate_key(key) {
            tracing::warn!(error = %err, "key to reset on rejoin ignored");
            return;
        }
        let mut keys = self
            .inner
            .family
            .reset_on_rejoin
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if keys.iter().any(|known| known == key) {
            return;
        }
        if keys.len() >= MAX_RESET_ON_REJOIN_KEYS {
            // Ignored, a server that missed a purge of what the key guards would come
            // back with its old value under it, and serve what the purge removed: the
            // whole server is flushed instead (bounded work, at the cost of everything
            // else it held).
            if !self
                .inner
                .family
                .reset_overflowed
                .swap(true, Ordering::SeqCst)
            {
                tracing::warn!(
                    key,
                    max = MAX_RESET_ON_REJOIN_KEYS,
                    "too many keys to reset on rejoin; a rejoining server is flushed instead"
                );
            }
            return;
        }
        keys.push(key.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers.
    async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn ordered_reads_given_up_at_their_limit_count_as_dropped_calls() {
        const TIMEOUT: Duration = Duration::from_millis(100);
        // Scheduling slack for a loaded machine.
        const SLACK: Duration = Duration::from_millis(300);
        let (addr, silent) = silent_server().await;
        let backend = |addr: &str| {
            TcpBackend::builder()
                .server(addr)
                .timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                .build()
                .unwrap()
        };
        let read = |backend: &TcpBackend, limit| {
            let backend = backend.clone();
            async move {
                let started = tokio::time::Instant::now();
                let err = backend
                    .get_many_by_key_ordered("r", &["k", "j"], limit)
                    .await
                    .unwrap_err();
                (err, started.elapsed())
            }
        };
        // Given up at the operation timeout (before the backend's own deadline, which
        // adds the connect timeout): the caller's error, and a timeout for the server's
        // health, as for a call its caller drops then.
        let bounded = backend(&addr);
        for _ in 0..3 {
            let (err, took) = read(&bounded, TIMEOUT).await;
            assert!(
                matches!(err, BackendError::Deadline { after } if after == TIMEOUT),
                "{err:?}"
            );
            assert!(took >= TIMEOUT && took < TIMEOUT + SLACK, "{took:?}");
        }
        assert!(bounded.is_server_down(0));
        // Given up well before the timeout: nothing said about the server.
        let patient = backend(&addr);
        for _ in 0..3 {
            let (err, took) = read(&patient, TIMEOUT / 5).await;
            assert!(
                matches!(err, BackendError::Deadline { after } if after == TIMEOUT / 5),
                "{err:?}"
            );
            assert!(took < TIMEOUT, "{took:?}");
        }
        assert!(!patient.is_server_down(0));
        // A limit past the backend's own deadline: the backend's timeout.
        let (err, took) = read(&patient, Duration::from_secs(5)).await;
        assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
        assert!(took < 2 * TIMEOUT + SLACK, "{took:?}");
        silent.abort();
    }

    #[test]
    fn seed_servers_place_keys_like_libmemcached() {
        let backend =
            TcpBackend::new(["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"]).unwrap();
        assert_eq!(backend.server_for_key("foo"), Some(0));
        assert_eq!(backend.server_for_key("bar"), Some(1));
        assert_eq!(backend.server_for_key("baz"), Some(1));
    }
}
