//! How the HTTP cache lays itself out in the backend.
//!
//! - The **primary key** of a URL (`md5(namespace ++ canonical request key)`, the
//!   formula) holds its entry, or, when its responses vary on request headers, a
//!   [`VariantIndex`]. Each variant then lives under a key made of the canonical key, the
//!   index id and the selecting header values, so variants coexist, and deleting the index
//!   invalidates all of them at once.
//! - The **namespace generation** and one **generation per tag** are raw decimal values
//!   under their own keys. Every entry records the generations it was stored under, and a
//!   read checks them, so a purge in any process is seen by every process at once. A
//!   generation is a fresh unique number, never a counter: if memcached evicts it, the
//!   next read sees "absent", which matches no entry (a miss, never a resurrected one).
//! - A **lease** key is `add`ed by the one process that refills a missing URL.
//!
//! Every operation is bounded by the layer's timeout and fails open.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

use super::background::Background;
use super::stored;
use crate::backend::{Backend, BackendError, Item, Lifetime};
use crate::cache::entry::{
    Entry, EntryMeta, FLAG_HTTP_ENTRY, FLAG_VARIANT_INDEX, VariantIndex, decode_entry,
    decode_index, encode_entry, encode_index,
};
use crate::cache::policy::normalized_header;
use crate::cache::stats::CacheStats;
use crate::key::build_key;

/// At most this many tags per response are kept (bounded work per store and per read).
pub(crate) const MAX_TAGS: usize = 32;
/// Longer tags are ignored.
pub(crate) const MAX_TAG_LEN: usize = 128;

/// What a lookup found.
pub(crate) enum Lookup {
    Found(Found),
    /// The backend failed or timed out.
    Unavailable,
}

#[derive(Default)]
pub(crate) struct Found {
    /// A stored response for this request (same canonical key, same variant, current
    /// generations); its freshness is the caller's business.
    pub(crate) entry: Option<Arc<Entry>>,
    /// The URL's variant index, when its responses vary.
    pub(crate) index: Option<VariantIndex>,
    /// The namespace generation read with the entry.
    pub(crate) generation: Option<u64>,
}

/// The backend, seen through the cache's key layout.
#[derive(Clone)]
pub(crate) struct Storage<B> {
    backend: B,
    namespace: Arc<str>,
    generation_key: Arc<str>,
    timeout: Duration,
    stats: CacheStats,
    background: Background,
}

impl<B: Backend> Storage<B> {
    pub(crate) fn new(
        backend: B,
        namespace: &str,
        timeout: Duration,
        stats: CacheStats,
        background: Background,
    ) -> Self {
        Self {
            generation_key: build_key(Some(namespace), "\0generation").into(),
            namespace: namespace.into(),
            backend,
            timeout,
            stats,
            background,
        }
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// Where work that outlives a request runs.
    pub(crate) fn background(&self) -> &Background {
        &self.background
    }

    pub(crate) fn primary_key(&self, canonical: &str) -> String {
        build_key(Some(&self.namespace), canonical)
    }

    fn tag_key(&self, tag: &str) -> String {
        build_key(Some(&self.namespace), &format!("\0tag\0{tag}"))
    }

    pub(crate) fn lease_key(&self, canonical: &str) -> String {
        build_key(Some(&self.namespace), &format!("\0lease\0{canonical}"))
    }

    fn variant_key(&self, canonical: &str, id: u64, values: &[(String, Option<String>)]) -> String {
        let mut base = format!("{canonical}\0{id}");
        for (name, value) in values {
            match value {
                Some(value) => {
                    let _ = write!(base, "\0{name}={value}");
                }
                None => {
                    let _ = write!(base, "\0{name}");
                }
            }
        }
        build_key(Some(&self.namespace), &base)
    }

    /// Runs one backend operation within the timeout; failures are logged and counted.
    async fn timed<T>(
        &self,
        what: &'static str,
        operation: impl Future<Output = Result<T, BackendError>>,
    ) -> Option<T> {
        self.bounded(operation)
            .await
            .inspect_err(|err| {
                tracing::debug!(error = %err, what, "cache backend failed");
                self.stats.record_backend_error();
            })
            .ok()
    }

    /// Finds the stored response for a request: one round trip for the entry and the
    /// namespace generation, one more for a variant, one more for tags.
    pub(crate) async fn lookup(
        &self,
        canonical: &str,
        primary_key: &str,
        request_headers: &HeaderMap,
    ) -> Lookup {
        let keys = [primary_key, &*self.generation_key];
        let Some(mut items) = self.timed("lookup", self.backend.get_many(&keys)).await else {
            return Lookup::Unavailable;
        };
        let generation = items
            .remove(&*self.generation_key)
            .and_then(|item| parse_generation(&item));
        let mut found = Found {
            generation,
            ..Found::default()
        };
        let entry = match items.remove(primary_key) {
            Some(item) if item.flags == FLAG_HTTP_ENTRY => decode(item.value),
            Some(item) if item.flags == FLAG_VARIANT_INDEX => match decode_index(&item.value) {
                Ok(index) if index.canonical_key == canonical => {
                    let values = index
                        .names
                        .iter()
                        .map(|name| (name.clone(), normalized_header(request_headers, name)))
                        .collect::<Vec<_>>();
                    let key = self.variant_key(canonical, index.id, &values);
                    found.index = Some(index);
                    match self.timed("variant lookup", self.backend.get(&key)).await {
                        Some(item) => item
                            .filter(|item| item.flags == FLAG_HTTP_ENTRY)
                            .and_then(|item| decode(item.value)),
                        None => return Lookup::Unavailable,
                    }
                }
                _ => None,
            },
            _ => None,
        };
        let Some(entry) = entry else {
            return Lookup::Found(found);
        };
        let meta = &entry.meta;
        if !stored::selects(meta, canonical, request_headers) {
            tracing::debug!(key = primary_key, "entry stored for another request; miss");
            return Lookup::Found(found);
        }
        if generation != Some(meta.generation) {
            tracing::debug!(
                key = primary_key,
                "entry from before a namespace purge; miss"
            );
            return Lookup::Found(found);
        }
        if !meta.tags.is_empty() && !self.tags_current(&meta.tags).await {
            tracing::debug!(key = primary_key, "entry from before a tag purge; miss");
            return Lookup::Found(found);
        }
        found.entry = Some(Arc::new(entry));
        Lookup::Found(found)
    }

    async fn tags_current(&self, tags: &[(String, u64)]) -> bool {
        let keys: Vec<String> = tags.iter().map(|(tag, _)| self.tag_key(tag)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let Some(items) = self.timed("tag lookup", self.backend.get_many(&refs)).await else {
            return false;
        };
        keys.iter()
            .zip(tags)
            .all(|(key, (_, stored))| items.get(key).and_then(parse_generation) == Some(*stored))
    }

    /// The current generation under `key`, created when absent.
    async fn ensure_generation(&self, key: &str) -> Option<u64> {
        let fresh = unique();
        let value = Bytes::from(fresh.to_string());
        if self
            .timed(
                "generation add",
                self.backend.add(key, value, 0, Lifetime::NEVER),
            )
            .await?
        {
            return Some(fresh);
        }
        let item = self
            .timed("generation get", self.backend.get(key))
            .await??;
        parse_generation(&item)
    }

    /// The namespace generation to store an entry under.
    pub(crate) async fn generation(&self, known: Option<u64>) -> Option<u64> {
        match known {
            Some(generation) => Some(generation),
            None => self.ensure_generation(&self.generation_key).await,
        }
    }

    /// The current generation of each tag, created when absent.
    pub(crate) async fn tag_generations(&self, tags: &[String]) -> Option<Vec<(String, u64)>> {
        let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let items = self
            .timed("tag lookup", self.backend.get_many(&refs))
            .await?;
        let mut generations = Vec::with_capacity(tags.len());
        for (tag, key) in tags.iter().zip(&keys) {
            let generation = match items.get(key).and_then(parse_generation) {
                Some(generation) => generation,
                None => self.ensure_generation(key).await?,
            };
            generations.push((tag.clone(), generation));
        }
        Some(generations)
    }

    /// Writes an entry (and, when it varies, the URL's variant index) for `ttl`.
    /// `index` is the index the lookup found, reused when the selecting headers are the
    /// same so the URL's other variants stay reachable.
    pub(crate) async fn store(
        &self,
        primary_key: &str,
        meta: &EntryMeta,
        body: &[u8],
        index: Option<&VariantIndex>,
        ttl: Duration,
    ) -> bool {
        let bytes = match encode_entry(meta, body) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::debug!(key = primary_key, error = %err, "entry not encodable");
                return false;
            }
        };
        let lifetime = Lifetime::from_duration(ttl);
        if meta.vary.is_empty() {
            let set = self
                .backend
                .set(primary_key, bytes, FLAG_HTTP_ENTRY, lifetime);
            return self.timed("store", set).await.is_some();
        }
        let names: Vec<String> = meta.vary.iter().map(|(name, _)| name.clone()).collect();
        let index = match index {
            Some(index) if index.names == names && index.canonical_key == meta.canonical_key => {
                index.clone()
            }
            _ => match self
                .create_index(primary_key, &meta.canonical_key, names)
                .await
            {
                Some(index) => index,
                None => return false,
            },
        };
        let variant_key = self.variant_key(&meta.canonical_key, index.id, &meta.vary);
        let set = self
            .backend
            .set(&variant_key, bytes, FLAG_HTTP_ENTRY, lifetime);
        self.timed("variant store", set).await.is_some()
    }

    /// Writes a new variant index for a URL, unless a concurrent store just wrote one for
    /// the same headers: `add` lets the first writer win, so every variant stored at the
    /// same time ends up under one index id.
    async fn create_index(
        &self,
        primary_key: &str,
        canonical: &str,
        names: Vec<String>,
    ) -> Option<VariantIndex> {
        let fresh = VariantIndex {
            canonical_key: canonical.to_string(),
            names,
            id: unique(),
        };
        let bytes = encode_index(&fresh).ok()?;
        // The index outlives any one variant; memcached's LRU ages it out when unused.
        let add = self.backend.add(
            primary_key,
            bytes.clone(),
            FLAG_VARIANT_INDEX,
            Lifetime::NEVER,
        );
        if self.timed("index add", add).await? {
            return Some(fresh);
        }
        let existing = self
            .timed("index get", self.backend.get(primary_key))
            .await?;
        if let Some(index) = existing
            .filter(|item| item.flags == FLAG_VARIANT_INDEX)
            .and_then(|item| decode_index(&item.value).ok())
            .filter(|index| index.canonical_key == canonical && index.names == fresh.names)
        {
            return Some(index);
        }
        // A plain entry, or an index for other headers: this response replaces it.
        let set = self
            .backend
            .set(primary_key, bytes, FLAG_VARIANT_INDEX, Lifetime::NEVER);
        self.timed("index store", set).await?;
        Some(fresh)
    }

    /// Deletes a URL's entry or variant index (and so every variant).
    pub(crate) async fn invalidate(&self, primary_key: &str) -> Result<(), BackendError> {
        self.bounded(self.backend.delete(primary_key)).await?;
        self.stats.record_invalidation();
        Ok(())
    }

    /// Gives the namespace a new generation: every entry stored before is a miss.
    pub(crate) async fn purge_namespace(&self) -> Result<(), BackendError> {
        self.bump(&self.generation_key.clone()).await
    }

    /// Gives a tag a new generation: every entry stored with it before is a miss.
    pub(crate) async fn purge_tag(&self, tag: &str) -> Result<(), BackendError> {
        self.bump(&self.tag_key(tag)).await
    }

    async fn bump(&self, key: &str) -> Result<(), BackendError> {
        let value = Bytes::from(unique().to_string());
        self.bounded(self.backend.set(key, value, 0, Lifetime::NEVER))
            .await?;
        self.stats.record_invalidation();
        Ok(())
    }

    /// Runs an operation whose error the caller wants, within the timeout.
    pub(crate) async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(self.timeout, operation)
            .await
            .map_err(|_| BackendError::Deadline {
                after: self.timeout,
            })?
    }
}

fn decode(value: Bytes) -> Option<Entry> {
    decode_entry(value)
        .inspect_err(|err| tracing::debug!(error = %err, "undecodable cache entry; miss"))
        .ok()
}

fn parse_generation(item: &Item) -> Option<u64> {
    std::str::from_utf8(&item.value).ok()?.trim().parse().ok()
}

/// A number no earlier call in any process is likely to have produced: the clock in
/// nanoseconds, strictly increasing within this process.
pub(crate) fn unique() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(now);
    now.max(previous.saturating_add(1))
}

/// The tags a response header lists (space- or comma-separated), bounded.
pub(crate) fn parse_tags<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut tags: Vec<String> = values
        .into_iter()
        .flat_map(|v| v.split(|c: char| c.is_ascii_whitespace() || c == ','))
        .filter(|tag| !tag.is_empty() && tag.len() <= MAX_TAG_LEN)
        .map(str::to_string)
        .collect();
    tags.sort();
    tags.dedup();
    tags.truncate(MAX_TAGS);
    tags
}
