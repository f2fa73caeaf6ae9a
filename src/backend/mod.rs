//! The storage interface: memcached's commands and rules, with nothing about HTTP or
//! namespaces.
//!
//! [`Backend`] is implemented by [`MemoryBackend`], an in-process fake that follows
//! memcached's rules, and (with the `tcp` feature) by `TcpBackend`, which talks to real
//! servers. Both check keys and value sizes with the same functions before doing anything,
//! so a bad key is refused identically everywhere.
//!
//! ```
//! use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_memcache::backend::BackendError> {
//! let backend = MemoryBackend::new();
//! backend.set("greeting", "hello".into(), 0, Lifetime::from_secs(60)).await?;
//! let item = backend.get("greeting").await?.expect("just stored");
//! assert_eq!(&item.value[..], b"hello");
//! assert!(!backend.add("greeting", "again".into(), 0, Lifetime::NEVER).await?);
//! # Ok(())
//! # }
//! ```

mod advance;
mod error;
mod lifetime;
pub mod memory;
#[cfg(feature = "tcp")]
pub mod tcp;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use advance::Advanced;
pub use error::{BackendError, ProtocolViolation, UnreachableReason};
pub use lifetime::Lifetime;
#[doc(inline)]
pub use memory::MemoryBackend;
#[cfg(feature = "tcp")]
#[doc(inline)]
pub use tcp::TcpBackend;

/// The longest key memcached accepts, in bytes.
pub const MAX_KEY_LEN: usize = 250;

/// memcached's default item size limit (`-I 1m`).
pub const DEFAULT_ITEM_SIZE_LIMIT: usize = 1024 * 1024;

/// Bytes memcached spends on an item besides its key and value (item header, CAS, the
/// `\r\n` suffix and flags): 59 to 63 on memcached 1.6 (measured against `-I 512k`),
/// rounded up, so that a value the fake accepts is one memcached accepts too.
pub const ITEM_OVERHEAD: usize = 64;

/// One stored value as memcached returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The stored bytes.
    pub value: Bytes,
    /// The 32-bit client flags stored with the value.
    pub flags: u32,
    /// The CAS unique value, when the backend reports one.
    pub cas: Option<u64>,
}

/// Statistics of one server: memcached's stat names (`curr_items`, `get_hits`, …) to their
/// values, exactly as the server reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStats {
    /// The server's name, `host:port` for TCP servers and `memory` for the fake.
    pub server: String,
    /// Stat name to value.
    pub stats: HashMap<String, String>,
}

impl ServerStats {
    /// A stat parsed as an unsigned integer, if present and numeric.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use tower_memcache::backend::ServerStats;
    /// let stats = ServerStats {
    ///     server: "memory".into(),
    ///     stats: HashMap::from([("curr_items".to_string(), "3".to_string())]),
    /// };
    /// assert_eq!(stats.get_u64("curr_items"), Some(3));
    /// assert_eq!(stats.get_u64("missing"), None);
    /// ```
    pub fn get_u64(&self, name: &str) -> Option<u64> {
        self.stats.get(name)?.parse().ok()
    }
}

/// The outcome of a compare-and-swap ([`Backend::cas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was replaced.
    Stored,
    /// Someone changed the item since it was read; nothing was stored.
    Exists,
    /// The item is gone; nothing was stored.
    NotFound,
}

/// The most keys [`Backend::reset_on_rejoin`] keeps, so the work a rejoining server waits
/// for stays bounded. Past it `TcpBackend` flushes a rejoining server instead (with a
/// warning): everything it held goes, the keys it would not delete with the rest.
pub const MAX_RESET_ON_REJOIN_KEYS: usize = 64;

/// A memcached-like store: a cloneable handle whose async methods have memcached's
/// semantics.
///
/// Keys are checked with [`validate_key`] before anything is sent; values larger than the
/// backend's item size limit are refused with [`BackendError::ValueTooLarge`]. Lifetimes
/// follow memcached's rules through [`Lifetime`].
///
/// # Several servers
///
/// A backend may spread keys over several servers. Three groups of methods exist for that,
/// each with a default that suits a backend with a single store (such as
/// [`MemoryBackend`]), so such backends and wrappers need not implement them:
///
/// - the `*_by_key` methods (libmemcached's `memcached_*_by_key`) place a key on the
///   server of another key, its `route`, so that a lookup that needs several keys (an
///   entry and the copies of what validates it) asks one server only;
/// - [`set_on_every_server`](Self::set_on_every_server) writes a key to every server, for
///   values every server must hold (a purge), and
///   [`advance_on_every_server`](Self::advance_on_every_server) moves such a value on
///   (a generation, which concurrent purges must not set back);
/// - [`reset_on_rejoin`](Self::reset_on_rejoin) names keys to delete on a server that was
///   unreachable before it is used again, since it may have missed such writes.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Fetches one item.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Item>, BackendError>> + Send;

    /// Fetches several items at once; absent keys are absent from the map.
    ///
    /// Over several servers, each server holding some of the keys is asked once (in
    /// bounded chunks). A server that fails contributes no items: its keys are absent, as
    /// if missing. The call fails only when no server answered (with the first error).
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Item>, BackendError>> + Send;

    /// Stores a value unconditionally.
    fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stores a value only if the key holds none; `Ok(false)` when it already did.
    fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Compare-and-swap (memcached's `cas`): stores only if the item is unchanged since it
    /// was read, that is if its CAS value ([`Item::cas`]) is still `cas`.
    /// [`CasOutcome::Exists`] when it changed meanwhile, [`CasOutcome::NotFound`] when it
    /// is gone (deleted, evicted or expired); a stored value gets a new CAS value.
    fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> impl Future<Output = Result<CasOutcome, BackendError>> + Send;

    /// Removes a key; `Ok(false)` when it was not there.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Gives an existing item a new lifetime; `Ok(false)` when it was not there.
    fn touch(
        &self,
        key: &str,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Adds `delta` to a decimal counter, wrapping at 2^64 as memcached does; `Ok(None)`
    /// when the key is absent. A value that is not a decimal number is a server error.
    fn incr(
        &self,
        key: &str,
        delta: u64,
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send;

    /// Invalidates every item on every server.
    fn flush_all(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Statistics of every server.
    fn stats(&self) -> impl Future<Output = Result<Vec<ServerStats>, BackendError>> + Send;

    /// Whether the backend currently believes it can serve `key` (its server is not marked
    /// down). A cheap, synchronous check used to skip work while a server is gone; the
    /// default says yes.
    fn is_available(&self, key: &str) -> bool {
        let _ = key;
        true
    }

    /// Which server the `*_by_key` methods send `route`'s keys to now, as an index that
    /// names the same server for the backend's life; `None` when unknown (the default).
    /// For callers that remember what they read per server: the near tier reuses a
    /// server's generations it read recently only when this says which server an entry
    /// lives on (without it, it reads them with every lookup).
    ///
    /// ```
    /// use tower_memcache::backend::{Backend, MemoryBackend};
    ///
    /// assert_eq!(MemoryBackend::new().server_of("page"), Some(0));
    /// ```
    fn server_of(&self, route: &str) -> Option<usize> {
        let _ = route;
        None
    }

    /// How many times one of the backend's servers was marked down, over the backend's
    /// life; the default, for backends that never mark one down, is 0. A server marked
    /// down may miss writes every server must hold (purges) and rejoins reset
    /// ([`reset_on_rejoin`](Self::reset_on_rejoin)): a caller that remembers values it
    /// read per server ([`server_of`](Self::server_of)), as the near tier does, forgets
    /// them when this changes, or they would vouch for what the reset orphaned.
    fn outages(&self) -> u64 {
        0
    }

    /// The largest item (key + value + [`ITEM_OVERHEAD`]) the backend currently accepts on
    /// every server: larger ones are refused with [`BackendError::ValueTooLarge`] before
    /// anything is sent. It may shrink as the backend learns its servers' limits. The
    /// default is [`DEFAULT_ITEM_SIZE_LIMIT`].
    fn item_size_limit(&self) -> usize {
        DEFAULT_ITEM_SIZE_LIMIT
    }

    /// [`get_many`](Self::get_many) from the server of `route`: keep what a lookup needs
    /// on the server of the entry it guards, so that the lookup asks one server and
    /// depends on that one only. Every key is read from that server, wherever it would
    /// live on its own, so the keys must have been stored with the same `route` (through
    /// the other `*_by_key` methods). As that is one server, the call fails when it does.
    ///
    /// `route` is hashed like a key but never sent: it may be any non-empty string
    /// ([`validate_route`]). The default, for backends with a single store, ignores it.
    fn get_many_by_key(
        &self,
        route: &str,
        keys: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Item>, BackendError>> + Send {
        let routed = validate_route(route);
        async move {
            routed?;
            self.get_many(keys).await
        }
    }

    /// [`get_many_by_key`](Self::get_many_by_key) answered in the order of `keys` (`None`
    /// for a key that missed; a key listed twice gets its value at both places), and
    /// bounded by `limit`: past it the call fails with [`BackendError::Deadline`].
    ///
    /// What a cache lookup uses: it knows which keys it asked, so it needs no map keyed by
    /// copies of them, and a backend that bounds its calls by a timer of its own can take
    /// `limit` into that timer instead of running a second one. The default maps the
    /// answer of [`get_many_by_key`](Self::get_many_by_key) within a
    /// [`tokio::time::timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_memcache::backend::BackendError> {
    /// let backend = MemoryBackend::new();
    /// backend.set_by_key("page", "b", "two".into(), 0, Lifetime::NEVER).await?;
    /// let found = backend
    ///     .get_many_by_key_ordered("page", &["a", "b"], Duration::from_millis(100))
    ///     .await?;
    /// assert!(found[0].is_none());
    /// assert_eq!(found[1].as_ref().map(|item| &item.value[..]), Some(&b"two"[..]));
    /// # Ok(())
    /// # }
    /// ```
    fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> impl Future<Output = Result<Vec<Option<Item>>, BackendError>> + Send {
        let read = self.get_many_by_key(route, keys);
        async move {
            let found = tokio::time::timeout(limit, read)
                .await
                .map_err(|_| BackendError::Deadline { after: limit })??;
            Ok(keys.iter().map(|key| found.get(*key).cloned()).collect())
        }
    }

    /// [`set`](Self::set) on the server of `route`: keep what a lookup needs on the server
    /// of the entry it guards. See [`get_many_by_key`](Self::get_many_by_key).
    fn set_by_key(
        &self,
        route: &str,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let routed = validate_route(route);
        async move {
            routed?;
            self.set(key, value, flags, lifetime).await
        }
    }

    /// [`add`](Self::add) on the server of `route`: keep what a lookup needs on the server
    /// of the entry it guards. See [`get_many_by_key`](Self::get_many_by_key).
    fn add_by_key(
        &self,
        route: &str,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        let routed = validate_route(route);
        async move {
            routed?;
            self.add(key, value, flags, lifetime).await
        }
    }

    /// [`cas`](Self::cas) on the server of `route`: keep what a lookup needs on the server
    /// of the entry it guards. See [`get_many_by_key`](Self::get_many_by_key).
    fn cas_by_key(
        &self,
        route: &str,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> impl Future<Output = Result<CasOutcome, BackendError>> + Send {
        let routed = validate_route(route);
        async move {
            routed?;
            self.cas(key, value, flags, lifetime, cas).await
        }
    }

    /// [`delete`](Self::delete) on the server of `route`: keep what a lookup needs on the
    /// server of the entry it guards. See [`get_many_by_key`](Self::get_many_by_key).
    fn delete_by_key(
        &self,
        route: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        let routed = validate_route(route);
        async move {
            routed?;
            self.delete(key).await
        }
    }

    /// Deletes `key` on every server: where a key may have lived while its own server was
    /// out of the ring (`remove_failed_servers`), a stale copy can wait for the next
    /// outage. Like [`set_on_every_server`](Self::set_on_every_server), a server that
    /// misses the delete is marked down until it has been reset; `Ok` when at least one
    /// server answered and none that missed it is still in use. The default deletes on the
    /// key's server.
    fn delete_on_every_server(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let deleted = self.delete(key);
        async move { deleted.await.map(drop) }
    }

    /// Stores a value on every server, for values every server must hold (a namespace or
    /// tag generation that lookups routed to any server compare against).
    ///
    /// `Ok` when at least one server stored it. A server that is marked down is skipped,
    /// and a server that fails the write is marked down at once: either way it has missed
    /// the value, so it must not serve until [`reset_on_rejoin`](Self::reset_on_rejoin)'s
    /// keys are deleted on it. A server that answers for others and is left in use when
    /// one behind it missed the write (`TcpBackend` over twemproxy, which answers
    /// `SERVER_ERROR` for a memcached it cannot reach) makes the call fail with that
    /// error, whoever else took it: nothing makes up for the write that server missed. A server that refuses it for lack of memory (memcached run
    /// with `-M`, full) has the key deleted instead, as if it had evicted it (which every
    /// such value must already survive), and is not marked down. The default, for
    /// backends with a single store, is [`set`](Self::set).
    fn set_on_every_server(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        self.set(key, value, flags, lifetime)
    }

    /// Advances a decimal counter on every server, as a max-register: each server's value
    /// becomes the larger of `stamp` and its value plus one, so that it always changes
    /// (a generation is compared by equality: even a stamp below the value held, from a
    /// clock set back, must change it) and never goes below the stamp of any advance that
    /// returned, whatever order concurrent advances land in. For generations written by
    /// several processes at once, where [`set_on_every_server`](Self::set_on_every_server)
    /// is last-writer-wins: a purge whose write landed last set back the time of a later
    /// purge that had returned.
    ///
    /// On each server: read the value (`gets`); `add` the stamp where it is absent, or
    /// `cas` the next value over it; when another writer came first, read again after a
    /// short random wait, and stop there if that writer moved the value past the stamp
    /// (it holds this advance's stamp as well). At most 16 rounds, then
    /// [`BackendError::Contended`] for that server. A value that is no decimal number (or
    /// is `u64::MAX`) is overwritten with the stamp, as if absent; a server that gives no
    /// CAS value (memcached run with `-C`) gets a plain `set` of the next value (last
    /// writer wins there, as before). Values are stored with flags 0.
    ///
    /// As for [`set_on_every_server`](Self::set_on_every_server): `Ok` when at least one
    /// server took it and none that missed it is still in use; a server marked down is
    /// skipped, one that fails is marked down at once, and one that refuses it for memory
    /// has the key deleted instead. The outcome
    /// tells what the key holds and which others' values that stands for ([`Advanced`]).
    /// The default, for backends with a single store, runs those rounds with
    /// [`get`](Self::get), [`add`](Self::add), [`cas`](Self::cas) and [`set`](Self::set).
    ///
    /// ```
    /// use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_memcache::backend::BackendError> {
    /// let backend = MemoryBackend::new();
    /// // Two purges stamp 200 then 300; the later one's write lands first.
    /// backend.advance_on_every_server("generation", 300, Lifetime::NEVER).await?;
    /// let late = backend.advance_on_every_server("generation", 200, Lifetime::NEVER).await?;
    /// // The earlier stamp, landing last, does not set the value back.
    /// assert_eq!(late.value, 301);
    /// assert_eq!(late.absorbed, Some(300));
    /// let held = backend.get("generation").await?.expect("written");
    /// assert_eq!(&held.value[..], b"301");
    /// # Ok(())
    /// # }
    /// ```
    fn advance_on_every_server(
        &self,
        key: &str,
        stamp: u64,
        lifetime: Lifetime,
    ) -> impl Future<Output = Result<Advanced, BackendError>> + Send {
        advance::on_one_store(self, key, stamp, lifetime)
    }

    /// Registers a key to delete on a server that comes back after being marked down,
    /// before it serves again.
    ///
    /// A server that was unreachable may have missed writes made meanwhile on every server
    /// ([`set_on_every_server`](Self::set_on_every_server): purges), so what it still holds
    /// under those keys is stale. Deleting them when it rejoins makes it hold nothing
    /// rather than an old value. Keys are deduplicated and shared by clones; at most
    /// [`MAX_RESET_ON_REJOIN_KEYS`] are kept (past them `TcpBackend` flushes a rejoining
    /// server instead, with a warning), and invalid keys are ignored with a warning. The
    /// default, for backends whose store never leaves, does nothing.
    fn reset_on_rejoin(&self, key: &str) {
        let _ = key;
    }
}

/// Checks the `route` of the `*_by_key` methods ([`Backend::get_many_by_key`]): any
/// non-empty string, since it is only hashed to pick a server, never sent.
///
/// ```
/// use tower_memcache::backend::validate_route;
/// assert!(validate_route("page:/news").is_ok());
/// assert!(validate_route("with spaces is fine").is_ok());
/// assert!(validate_route("").is_err());
/// ```
pub fn validate_route(route: &str) -> Result<(), BackendError> {
    if route.is_empty() {
        return Err(BackendError::InvalidKey {
            key: String::new(),
            reason: "route is empty",
        });
    }
    Ok(())
}

/// Checks a key against memcached's rules: 1 to 250 bytes, no whitespace or control
/// characters.
///
/// ```
/// use tower_memcache::backend::validate_key;
/// assert!(validate_key("0a42907b589a309ad94f8874eacbc63f").is_ok());
/// assert!(validate_key("").is_err());
/// assert!(validate_key("two words").is_err());
/// assert!(validate_key(&"k".repeat(251)).is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), BackendError> {
    let reason = if key.is_empty() {
        "key is empty"
    } else if key.len() > MAX_KEY_LEN {
        "key is longer than 250 bytes"
    // Without an early exit the check vectorizes: every lookup validates its keys.
    } else if key
        .bytes()
        .fold(false, |bad, b| bad | (b <= b' ') | (b == 0x7f))
    {
        "key contains whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(BackendError::InvalidKey {
        key: truncate_for_message(key),
        reason,
    })
}

/// Checks that an item (key, value and memcached's per-item overhead) fits `limit`.
pub fn check_item_size(key: &str, value_len: usize, limit: usize) -> Result<(), BackendError> {
    let size = key.len() + value_len + ITEM_OVERHEAD;
    if size > limit {
        return Err(BackendError::ValueTooLarge {
            size: value_len,
            limit: limit.saturating_sub(key.len() + ITEM_OVERHEAD),
        });
    }
    Ok(())
}

fn truncate_for_message(key: &str) -> String {
    const SHOWN: usize = 64;
    if key.len() <= SHOWN {
        return key.escape_debug().to_string();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", key[..end].escape_debug(), key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend with only the required methods: every default at work.
    #[derive(Clone)]
    struct Plain(MemoryBackend);

    impl Backend for Plain {
        async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
            self.0.get(key).await
        }
        async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
            self.0.get_many(keys).await
        }
        async fn set(
            &self,
            key: &str,
            value: Bytes,
            flags: u32,
            at: Lifetime,
        ) -> Result<(), BackendError> {
            self.0.set(key, value, flags, at).await
        }
        async fn add(
            &self,
            key: &str,
            value: Bytes,
            flags: u32,
            at: Lifetime,
        ) -> Result<bool, BackendError> {
            self.0.add(key, value, flags, at).await
        }
        async fn cas(
            &self,
            key: &str,
            value: Bytes,
            flags: u32,
            at: Lifetime,
            cas: u64,
        ) -> Result<CasOutcome, BackendError> {
            self.0.cas(key, value, flags, at, cas).await
        }
        async fn delete(&self, key: &str) -> Result<bool, BackendError> {
            self.0.delete(key).await
        }
        async fn touch(&self, key: &str, at: Lifetime) -> Result<bool, BackendError> {
            self.0.touch(key, at).await
        }
        async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
            self.0.incr(key, delta).await
        }
        async fn flush_all(&self) -> Result<(), BackendError> {
            self.0.flush_all().await
        }
        async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
            self.0.stats().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_ordered_read_maps_get_many_by_key_within_its_limit() {
        let backend = Plain(MemoryBackend::new());
        backend
            .set("b", "two".into(), 3, Lifetime::NEVER)
            .await
            .unwrap();
        let limit = Duration::from_millis(20);
        let found = backend
            .get_many_by_key_ordered("r", &["a", "b", "b"], limit)
            .await
            .unwrap();
        let two = backend.0.peek("b");
        assert_eq!(found, [None, two.clone(), two]);
        assert!(matches!(
            backend.get_many_by_key_ordered("", &["a"], limit).await,
            Err(BackendError::InvalidKey { .. })
        ));
        backend.0.set_latency(Duration::from_millis(50));
        let started = tokio::time::Instant::now();
        let late = backend.get_many_by_key_ordered("r", &["b"], limit).await;
        assert!(
            matches!(late, Err(BackendError::Deadline { after }) if after == limit),
            "{late:?}"
        );
        assert_eq!(started.elapsed(), limit);
    }

    #[test]
    fn keys_of_250_bytes_pass_and_251_fail() {
        assert!(validate_key(&"k".repeat(250)).is_ok());
        let err = validate_key(&"k".repeat(251)).unwrap_err();
        assert!(matches!(err, BackendError::InvalidKey { .. }));
        assert!(err.to_string().contains("251 bytes"), "{err}");
    }

    #[test]
    fn whitespace_and_control_characters_are_refused() {
        for key in ["a b", "a\nb", "a\rb", "a\tb", "a\0b", "a\x7fb", " "] {
            assert!(validate_key(key).is_err(), "{key:?}");
        }
        assert!(validate_key("ümlaut-ok").is_ok());
    }

    #[test]
    fn item_size_counts_key_and_overhead() {
        let limit = 1024;
        assert!(check_item_size("k", limit - ITEM_OVERHEAD - 1, limit).is_ok());
        let err = check_item_size("k", limit - ITEM_OVERHEAD, limit).unwrap_err();
        assert!(
            matches!(err, BackendError::ValueTooLarge { size, .. } if size == limit - ITEM_OVERHEAD)
        );
    }
}
