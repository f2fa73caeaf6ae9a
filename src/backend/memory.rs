//! [`MemoryBackend`]: an in-process fake of memcached that tests can trust.
//!
//! It keeps memcached's rules (key checks, item size limit, lifetimes, `add` only when
//! absent, flags, CAS values, decimal counters, LRU eviction under a memory limit, stats
//! under memcached's names), lets tests look inside like p01.memcache's `getFakeBackend(..)
//! .cache`, and can be made unreachable or slow to test fail-open paths.
//!
//! Every [`Backend`] method answers as `TcpBackend` over one memcached does, in what
//! review TW's differential checker compares (values and flags, `Ok` values, error
//! kinds, counters) over seeded random sequences of all of them. Where it deliberately
//! differs:
//!
//! - **Lifetimes run to the instant.** memcached's clock ticks once a second, and an item
//!   expires at the first tick its lifetime reaches: an item of `n` seconds lives more
//!   than `n - 1` and at most `n` seconds there, while the fake keeps it exactly `n`. A
//!   test that reads an item later than `n - 1` seconds after storing it passes on the
//!   fake and fails at times on memcached: wait past `n` seconds for "gone", read within
//!   `n - 1` for "still there".
//! - **Eviction is one LRU over bytes.** memcached evicts per slab class and may evict
//!   an item while the fake, counting key, value and [`ITEM_OVERHEAD`] against
//!   [`memory_limit`](MemoryBackendBuilder::memory_limit), still holds it.
//! - **`incr` always writes in place.** memcached pads a shorter result with spaces to the
//!   old length only while no other connection holds the item, else it stores it
//!   unpadded: compare counters read back with trailing spaces trimmed.
//! - **Stats** are a subset under memcached's names (see [`Backend::stats`]); `flush_all`
//!   removes the items at once rather than when next read, so `curr_items` drops with it.
//! - **Faults are injected**, never real: [`MemoryBackend::set_unreachable`] and
//!   [`MemoryBackend::set_latency`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;

use super::{
    Backend, BackendError, CasOutcome, DEFAULT_ITEM_SIZE_LIMIT, ITEM_OVERHEAD, Item, Lifetime,
    ServerStats, UnreachableReason, check_item_size, validate_key, validate_route,
};

/// The name the fake reports for itself in errors and stats.
const SERVER_NAME: &str = "memory";

/// memcached's default memory limit (`-m 64`).
const DEFAULT_MEMORY_LIMIT: usize = 64 * 1024 * 1024;

/// An in-process memcached: same rules, bounded memory, inspectable, breakable.
///
/// Cloning is cheap and every clone shares the same store, like several connections to one
/// server.
///
/// ```
/// use std::time::Duration;
/// use tower_memcache::backend::{Backend, BackendError, Lifetime, MemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BackendError> {
/// let backend = MemoryBackend::builder()
///     .memory_limit(1024 * 1024)
///     .item_size_limit(64 * 1024)
///     .build();
/// backend.set("k", "v".into(), 7, Lifetime::NEVER).await?;
///
/// // Look inside, as p01.memcache's tests do with their fake.
/// let item = backend.peek("k").expect("stored");
/// assert_eq!((&item.value[..], item.flags), (&b"v"[..], 7));
///
/// // Break it: every call now fails as if the server were gone.
/// backend.set_unreachable(true);
/// assert!(matches!(backend.get("k").await, Err(BackendError::Unreachable { .. })));
/// backend.set_unreachable(false);
/// assert!(backend.get("k").await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    memory_limit: usize,
    item_size_limit: usize,
    started: SystemTime,
    unreachable: AtomicBool,
    latency_micros: AtomicU64,
}

struct State {
    items: LruCache<String, Stored>,
    bytes: usize,
    next_cas: u64,
    counters: Counters,
}

struct Stored {
    value: Bytes,
    flags: u32,
    expires: Option<SystemTime>,
    cas: u64,
}

impl Stored {
    fn size(&self, key: &str) -> usize {
        key.len() + self.value.len() + ITEM_OVERHEAD
    }

    fn is_live(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|at| at > now)
    }

    fn item(&self) -> Item {
        Item {
            value: self.value.clone(),
            flags: self.flags,
            cas: Some(self.cas),
        }
    }
}

#[derive(Default)]
struct Counters {
    total_items: u64,
    cmd_get: u64,
    get_hits: u64,
    get_misses: u64,
    get_expired: u64,
    cmd_set: u64,
    cmd_touch: u64,
    touch_hits: u64,
    touch_misses: u64,
    delete_hits: u64,
    delete_misses: u64,
    incr_hits: u64,
    incr_misses: u64,
    cas_hits: u64,
    cas_misses: u64,
    cas_badval: u64,
    cmd_flush: u64,
    evictions: u64,
}

/// Builds a [`MemoryBackend`] with limits other than memcached's defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBackendBuilder {
    memory_limit: usize,
    item_size_limit: usize,
}

impl MemoryBackendBuilder {
    /// Total bytes of items (keys, values and per-item overhead) kept before the least
    /// recently used are evicted. Defaults to 64 MiB, memcached's `-m 64`.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The largest item (key, value and overhead) accepted. Defaults to 1 MiB, memcached's
    /// `-I 1m`.
    pub fn item_size_limit(mut self, bytes: usize) -> Self {
        self.item_size_limit = bytes;
        self
    }

    /// Builds the backend.
    pub fn build(self) -> MemoryBackend {
        MemoryBackend {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    items: LruCache::unbounded(),
                    bytes: 0,
                    next_cas: 1,
                    counters: Counters::default(),
                }),
                memory_limit: self.memory_limit,
                // An item can never be larger than the whole store.
                item_size_limit: self.item_size_limit.min(self.memory_limit),
                started: SystemTime::now(),
                unreachable: AtomicBool::new(false),
                latency_micros: AtomicU64::new(0),
            }),
        }
    }
}

impl Default for MemoryBackendBuilder {
    fn default() -> Self {
        Self {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            item_size_limit: DEFAULT_ITEM_SIZE_LIMIT,
        }
    }
}

impl MemoryBackend {
    /// A fake with memcached's default limits: 64 MiB of memory, 1 MiB items.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for other limits.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder::default()
    }

    /// The item size limit in force (also [`Backend::item_size_limit`]).
    pub fn item_size_limit(&self) -> usize {
        self.inner.item_size_limit
    }

    /// Makes every call fail with [`BackendError::Unreachable`] (`true`) or work again
    /// (`false`), as if the server went away and came back.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.inner.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// Delays every call by `latency` before it runs, like a slow network or server.
    /// `Duration::ZERO` removes the delay.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.inner.latency_micros.store(micros, Ordering::SeqCst);
    }

    /// The live entries, sorted by key, without touching stats or LRU order: p01.memcache's
    /// `getFakeBackend(client).cache`.
    pub fn entries(&self) -> Vec<(String, Item)> {
        let now = SystemTime::now();
        let state = self.lock();
        let mut entries: Vec<_> = state
            .items
            .iter()
            .filter(|(_, stored)| stored.is_live(now))
            .map(|(key, stored)| (key.clone(), stored.item()))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// One live entry's raw bytes and flags, without touching stats or LRU order.
    pub fn peek(&self, key: &str) -> Option<Item> {
        let now = SystemTime::now();
        let state = self.lock();
        state
            .items
            .peek(key)
            .filter(|stored| stored.is_live(now))
            .map(Stored::item)
    }

    /// How many items are stored, expired ones not yet reclaimed included (memcached's
    /// `curr_items`).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in use, counted as memcached's `bytes` stat.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every mutation is a
        // single insert/remove), so a poisoned lock is still safe to use.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn fault(&self) -> Result<(), BackendError> {
        let micros = self.inner.latency_micros.load(Ordering::SeqCst);
        if micros > 0 {
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
        if self.inner.unreachable.load(Ordering::SeqCst) {
            return Err(BackendError::Unreachable {
                server: SERVER_NAME.to_string(),
                reason: UnreachableReason::Injected,
            });
        }
        Ok(())
    }

    fn store(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        only_if_absent: bool,
    ) -> Result<bool, BackendError> {
        validate_key(key)?;
        check_item_size(key, value.len(), self.inner.item_size_limit)?;
        let now = SystemTime::now();
        let mut state = self.lock();
        state.counters.cmd_set += 1;
        if only_if_absent && state.live(key, now).is_some() {
            // memcached bumps an existing item on a failed add.
            return Ok(false);
        }
        state.put(key, value, flags, lifetime, now, self.inner.memory_limit);
        Ok(true)
    }
}

impl State {
    /// Stores a new item under `key` with a fresh CAS value.
    fn put(
        &mut self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        now: SystemTime,
        memory_limit: usize,
    ) {
        let cas = self.next_cas;
        self.next_cas += 1;
        let stored = Stored {
            value,
            flags,
            expires: lifetime.deadline(now),
            cas,
        };
        self.insert(key, stored, memory_limit);
    }

    /// The live item under `key`, promoted in LRU order; an expired one is reclaimed.
    fn live(&mut self, key: &str, now: SystemTime) -> Option<&mut Stored> {
        let expired = !self.items.get(key)?.is_live(now);
        if expired {
            self.remove(key);
            self.counters.get_expired += 1;
            return None;
        }
        self.items.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> Option<Stored> {
        let stored = self.items.pop(key)?;
        self.bytes -= stored.size(key);
        Some(stored)
    }

    fn insert(&mut self, key: &str, stored: Stored, memory_limit: usize) {
        self.remove(key);
        self.bytes += stored.size(key);
        self.items.put(key.to_string(), stored);
        self.counters.total_items += 1;
        // The new item is the most recently used, so it is evicted last; the item size
        // limit never exceeds the memory limit, so it always survives.
        while self.bytes > memory_limit {
            let Some((old_key, old)) = self.items.pop_lru() else {
                break;
            };
            self.bytes -= old.size(&old_key);
            self.counters.evictions += 1;
        }
    }
}

/// The number `incr` adds to, read as memcached reads it (`safe_strtoull` on the value and
/// its `\r\n`): optional leading whitespace and sign, decimal digits, then whitespace, a
/// NUL or the end. Too large for 64 bits, or negative, is not a number.
fn incr_operand(value: &[u8]) -> Option<u64> {
    // C's isspace: space, \t, \n, \v, \f, \r.
    let is_space = |b: u8| b == b' ' || (b'\t'..=b'\r').contains(&b);
    let start = value.iter().position(|&b| !is_space(b))?;
    let rest = &value[start..];
    let (negative, rest) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    match rest.get(digits) {
        None | Some(0) => {}
        Some(&b) if is_space(b) => {}
        Some(_) => return None,
    }
    let mut number: u64 = 0;
    for &b in &rest[..digits] {
        number = number.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if !negative {
        return Some(number);
    }
    // strtoull negates; memcached refuses the result only when it is negative as a
    // signed number ("-0" is 0).
    let negated = number.wrapping_neg();
    (i64::try_from(negated).is_ok()).then_some(negated)
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryBackend")
            .field("items", &state.items.len())
            .field("bytes", &state.bytes)
            .field("memory_limit", &self.inner.memory_limit)
            .field("item_size_limit", &self.inner.item_size_limit)
            .field(
                "unreachable",
                &self.inner.unreachable.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Backend for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<Item>, BackendError> {
        self.fault().await?;
        validate_key(key)?;
        let now = SystemTime::now();
        let mut state = self.lock();
        state.counters.cmd_get += 1;
        let item = state.live(key, now).map(|stored| stored.item());
        if item.is_some() {
            state.counters.get_hits += 1;
        } else {
            state.counters.get_misses += 1;
        }
        Ok(item)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Item>, BackendError> {
        self.fault().await?;
        for key in keys {
            validate_key(key)?;
        }
        let now = SystemTime::now();
        let mut state = self.lock();
        let mut found = HashMap::with_capacity(keys.len());
        for &key in keys {
            state.counters.cmd_get += 1;
            match state.live(key, now).map(|stored| stored.item()) {
                Some(item) => {
                    state.counters.get_hits += 1;
                    found.insert(key.to_string(), item);
                }
                None => state.counters.get_misses += 1,
            }
        }
        Ok(found)
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<(), BackendError> {
        self.fault().await?;
        self.store(key, value, flags, lifetime, false).map(drop)
    }

    async fn add(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
    ) -> Result<bool, BackendError> {
        self.fault().await?;
        self.store(key, value, flags, lifetime, true)
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        flags: u32,
        lifetime: Lifetime,
        cas: u64,
    ) -> Result<CasOutcome, BackendError> {
        self.fault().await?;
        validate_key(key)?;
        check_item_size(key, value.len(), self.inner.item_size_limit)?;
        let now = SystemTime::now();
        let mut state = self.lock();
        state.counters.cmd_set += 1;
        let current = state.live(key, now).map(|stored| stored.cas);
        let outcome = match current {
            None => {
                state.counters.cas_misses += 1;
                CasOutcome::NotFound
            }
            Some(current) if current != cas => {
                state.counters.cas_badval += 1;
                CasOutcome::Exists
            }
            Some(_) => {
                state.counters.cas_hits += 1;
                state.put(key, value, flags, lifetime, now, self.inner.memory_limit);
                CasOutcome::Stored
            }
        };
        Ok(outcome)
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.fault().await?;
        validate_key(key)?;
        let now = SystemTime::now();
        let mut state = self.lock();
        let existed = state.live(key, now).is_some();
        if existed {
            state.remove(key);
            state.counters.delete_hits += 1;
        } else {
            state.counters.delete_misses += 1;
        }
        Ok(existed)
    }

    async fn touch(&self, key: &str, lifetime: Lifetime) -> Result<bool, BackendError> {
        self.fault().await?;
        validate_key(key)?;
        let now = SystemTime::now();
        let mut state = self.lock();
        state.counters.cmd_touch += 1;
        let touched = match state.live(key, now) {
            Some(stored) => {
                stored.expires = lifetime.deadline(now);
                true
            }
            None => false,
        };
        if touched {
            state.counters.touch_hits += 1;
        } else {
            state.counters.touch_misses += 1;
        }
        Ok(touched)
    }

    async fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>, BackendError> {
        self.fault().await?;
        validate_key(key)?;
        let now = SystemTime::now();
        let mut state = self.lock();
        let cas = state.next_cas;
        let Some(stored) = state.live(key, now) else {
            state.counters.incr_misses += 1;
            return Ok(None);
        };
        let current = incr_operand(&stored.value).ok_or_else(|| {
            BackendError::Server(
                "CLIENT_ERROR cannot increment or decrement non-numeric value".to_string(),
            )
        })?;
        let next = current.wrapping_add(delta);
        let digits = next.to_string();
        let old_size = stored.value.len();
        // memcached writes a result no longer than the value in place, padded with spaces
        // to the old length (`get` then reads "100 " after `incr` of "0099"); a longer one
        // replaces the value. Either way the item gets a new CAS value.
        let mut value = digits.into_bytes();
        if value.len() < old_size {
            value.resize(old_size, b' ');
        }
        stored.value = Bytes::from(value);
        let new_size = stored.value.len();
        stored.cas = cas;
        state.next_cas += 1;
        state.bytes = state.bytes + new_size - old_size;
        state.counters.incr_hits += 1;
        Ok(Some(next))
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        self.fault().await?;
        let mut state = self.lock();
        state.items.clear();
        state.bytes = 0;
        state.counters.cmd_flush += 1;
        Ok(())
    }

    async fn stats(&self) -> Result<Vec<ServerStats>, BackendError> {
        self.fault().await?;
        let now = SystemTime::now();
        let state = self.lock();
        let c = &state.counters;
        let unix_now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let uptime = now
            .duration_since(self.inner.started)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let numbers: [(&str, u64); 24] = [
            ("pid", u64::from(std::process::id())),
            ("uptime", uptime),
            ("time", unix_now),
            ("curr_items", state.items.len() as u64),
            ("total_items", c.total_items),
            ("bytes", state.bytes as u64),
            ("limit_maxbytes", self.inner.memory_limit as u64),
            ("cmd_get", c.cmd_get),
            ("cmd_set", c.cmd_set),
            ("cmd_flush", c.cmd_flush),
            ("cmd_touch", c.cmd_touch),
            ("get_hits", c.get_hits),
            ("get_misses", c.get_misses),
            ("get_expired", c.get_expired),
            ("touch_hits", c.touch_hits),
            ("touch_misses", c.touch_misses),
            ("delete_hits", c.delete_hits),
            ("delete_misses", c.delete_misses),
            ("incr_hits", c.incr_hits),
            ("incr_misses", c.incr_misses),
            ("cas_hits", c.cas_hits),
            ("cas_misses", c.cas_misses),
            ("cas_badval", c.cas_badval),
            ("evictions", c.evictions),
        ];
        let mut stats: HashMap<String, String> = numbers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        stats.insert(
            "version".to_string(),
            concat!("tower-memcache-memory/", env!("CARGO_PKG_VERSION")).to_string(),
        );
        Ok(vec![ServerStats {
            server: SERVER_NAME.to_string(),
            stats,
        }])
    }

    /// One store.
    fn server_of(&self, _route: &str) -> Option<usize> {
        Some(0)
    }

    fn is_available(&self, _key: &str) -> bool {
        !self.inner.unreachable.load(Ordering::Relaxed)
    }

    fn item_size_limit(&self) -> usize {
        self.inner.item_size_limit
    }

    /// Each key read in place: no map, no copy of a key.
    async fn get_many_by_key_ordered(
        &self,
        route: &str,
        keys: &[&str],
        limit: Duration,
    ) -> Result<Vec<Option<Item>>, BackendError> {
        validate_route(route)?;
        let read = async {
            self.fault().await?;
            for key in keys {
                validate_key(key)?;
            }
            let now = SystemTime::now();
            let mut state = self.lock();
            let found = keys
                .iter()
                .map(|&key| {
                    state.counters.cmd_get += 1;
                    let item = state.live(key, now).map(|stored| stored.item());
                    if item.is_some() {
                        state.counters.get_hits += 1;
                    } else {
                        state.counters.get_misses += 1;
                    }
                    item
                })
                .collect();
            Ok(found)
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| BackendError::Deadline { after: limit })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[tokio::test]
    async fn lru_eviction_keeps_memory_bounded() {
        let backend = MemoryBackend::builder().memory_limit(10_000).build();
        for i in 0..100 {
            backend
                .set(&format!("k{i}"), val(500), 0, Lifetime::NEVER)
                .await
                .unwrap();
            assert!(backend.bytes() <= 10_000);
        }
        assert!(backend.peek("k0").is_none(), "oldest evicted");
        assert!(backend.peek("k99").is_some(), "newest kept");
        let stats = &backend.stats().await.unwrap()[0];
        assert!(stats.get_u64("evictions").unwrap() > 0);
    }

    #[tokio::test]
    async fn recently_read_items_survive_eviction() {
        let backend = MemoryBackend::builder()
            .memory_limit(3 * (500 + 2 + ITEM_OVERHEAD))
            .build();
        for key in ["k1", "k2", "k3"] {
            backend
                .set(key, val(500), 0, Lifetime::NEVER)
                .await
                .unwrap();
        }
        backend.get("k1").await.unwrap();
        backend
            .set("k4", val(500), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert!(backend.peek("k1").is_some());
        assert!(backend.peek("k2").is_none());
    }

    #[tokio::test]
    async fn incr_counts_bytes_and_refuses_text() {
        let backend = MemoryBackend::new();
        backend
            .set("n", "9".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        let before = backend.bytes();
        assert_eq!(backend.incr("n", 1).await.unwrap(), Some(10));
        assert_eq!(backend.bytes(), before + 1);
        assert_eq!(backend.incr("absent", 1).await.unwrap(), None);
        backend
            .set("t", "ten".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert!(matches!(
            backend.incr("t", 1).await,
            Err(BackendError::Server(_))
        ));
        backend
            .set("max", u64::MAX.to_string().into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        assert_eq!(
            backend.incr("max", 2).await.unwrap(),
            Some(1),
            "wraps like memcached"
        );
    }

    #[tokio::test]
    async fn cas_is_counted_as_memcached_counts_it() {
        let backend = MemoryBackend::new();
        backend
            .set("c", "1".into(), 0, Lifetime::NEVER)
            .await
            .unwrap();
        let cas = backend.peek("c").unwrap().cas.unwrap();
        for outcome in [CasOutcome::Stored, CasOutcome::Exists] {
            let got = backend
                .cas("c", "2".into(), 0, Lifetime::NEVER, cas)
                .await
                .unwrap();
            assert_eq!(got, outcome);
        }
        let got = backend
            .cas("absent", "2".into(), 0, Lifetime::NEVER, cas)
            .await
            .unwrap();
        assert_eq!(got, CasOutcome::NotFound);
        let stats = &backend.stats().await.unwrap()[0];
        for name in ["cas_hits", "cas_badval", "cas_misses"] {
            assert_eq!(stats.get_u64(name), Some(1), "{name}");
        }
        assert_eq!(stats.get_u64("cmd_set"), Some(4));
        assert_eq!(backend.bytes(), "c".len() + 1 + ITEM_OVERHEAD);
    }

    #[tokio::test]
    async fn latency_is_injected() {
        let backend = MemoryBackend::new();
        backend.set_latency(Duration::from_millis(50));
        let started = std::time::Instant::now();
        backend.get("k").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        backend.set_latency(Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn ordered_reads_end_at_their_limit() {
        let backend = MemoryBackend::new();
        backend.set_latency(Duration::from_millis(50));
        let limit = Duration::from_millis(20);
        let started = tokio::time::Instant::now();
        let late = backend.get_many_by_key_ordered("r", &["k"], limit).await;
        assert!(
            matches!(late, Err(BackendError::Deadline { after }) if after == limit),
            "{late:?}"
        );
        assert_eq!(started.elapsed(), limit);
        // Counted as memcached counts them.
        let found = backend
            .get_many_by_key_ordered("r", &["k", "k"], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(found, [None, None]);
        let stats = &backend.stats().await.unwrap()[0];
        assert_eq!(stats.get_u64("get_misses"), Some(2));
    }
}
