//! How the HTTP cache lays itself out in the backend, and the rules that make a purge
//! hold.
//!
//! - The **primary key** of a URL (`md5(namespace ++ canonical request key)`, the
//!   formula) holds its entry; or, when its responses vary on request headers, a
//!   [`VariantIndex`], each variant then living under a key made of the canonical key, the
//!   index id and the selecting header values; or, while one request refills the URL, a
//!   [`Placeholder`].
//! - **Everything a lookup needs lives on the server of the entry it guards** (libmemcached's
//!   "by key" routing): variants, the namespace generation and the tag generations are
//!   read and written with the primary key as the route. So a lookup is one server's
//!   business, and a dead server costs only the URLs it held. Each server keeps its own
//!   copy of the namespace and tag generations; purges write them on every server, and a
//!   server that was marked down has its copy of the namespace generation deleted before it
//!   serves again ([`Backend::reset_on_rejoin`]), which orphans whatever it held.
//! - A **generation** is a fresh unique number (the clock in nanoseconds), never a counter:
//!   a generation that memcached evicted reads as "absent", which matches no entry (a miss,
//!   never a resurrected one). Being a time, it also says when a purge happened.
//! - **A store replaces exactly what its lookup saw, by compare-and-swap**: the placeholder
//!   its request put in the primary key before going to the origin, or the stale entry it
//!   refreshes, or (for a variant) the index whose id the variant key carries. A purge or
//!   invalidation deletes the primary key, so every store of a response produced before it
//!   fails. Namespace and tag generations are read before the response is produced (tags, which
//!   only the response names, are checked for purges newer than the request instead).
//! - A **store epoch** per server and stripe of URLs ([`EPOCH_STRIPES`] of them, the
//!   stripe a function of the primary key) is given a fresh unique number after every
//!   store that replaces an entry (a refresh, a variant added under an index) and every
//!   invalidation, by every process. A near tier that read the epoch before it read an
//!   entry, and reads the same epoch later, knows that nothing replaced or removed the
//!   entry meanwhile (a store into an empty slot does not write it: no tier can hold what
//!   was not there). Like a generation, an epoch that memcached evicted matches nothing.
//!
//! Every operation is bounded by the layer's timeout and fails open.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

use super::background::Background;
use super::stored;
use crate::backend::{Backend, BackendError, CasOutcome, Item, Lifetime};
use crate::cache::entry::{
    Entry, EntryMeta, FLAG_HTTP_ENTRY, FLAG_PLACEHOLDER, FLAG_VARIANT_INDEX, Placeholder,
    VariantIndex, decode_entry, decode_index, encode_entry, encode_index,
};
use crate::cache::near::{Basis, Mark, NearCache, Seen};
use crate::cache::policy::normalized_header;
use crate::cache::stats::CacheStats;
use crate::key::{build_key, md5_hex_prefixed};

/// At most this many tags per response are kept (bounded work per store and per read).
pub(crate) const MAX_TAGS: usize = 32;
/// Longer tags are ignored.
pub(crate) const MAX_TAG_LEN: usize = 128;
/// Sets of selecting header names a URL's variant index keeps (the most recent ones).
pub(crate) const MAX_NAME_SETS: usize = 4;
/// How far apart the clocks of processes sharing memcached may be. A response whose
/// request went out less than this before a purge of one of its tags counts as produced
/// before it.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(1);
/// The most a purge or invalidation waits for every server to answer.
pub(crate) const PURGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a fill may take and still be stored: its placeholder's lifetime in
/// memcached.
pub(crate) const FILL_HOLD: Duration = Duration::from_secs(300);

/// How long a released placeholder stays: long enough for a write that was on its way to
/// land and find it ([`Storage::release_unsure`]), short enough to be gone soon.
const RELEASED_FOR: Duration = Duration::from_secs(1);

/// Store epochs per server: a replacement makes a near tier read again in full only the
/// entries of its stripe. Part of the layout every process sharing a namespace agrees on.
pub(crate) const EPOCH_STRIPES: usize = 64;

/// The store-epoch stripe of a primary key (FNV-1a: the same in every process, unlike
/// std's seeded hasher).
fn epoch_stripe(primary_key: &str) -> usize {
    let hash = primary_key
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    // The remainder is below EPOCH_STRIPES, so it fits.
    (hash % EPOCH_STRIPES as u64) as usize
}

/// A clock that ticks once per placeholder put in place (or stale entry guarded) in this
/// process: cheaper on every lookup than reading the time, and all the single flight needs
/// to tell a lookup that started before a placeholder landed from one that started after.
static PLACEMENTS: AtomicU64 = AtomicU64::new(0);

/// The placement clock now.
pub(crate) fn placements() -> u64 {
    PLACEMENTS.load(Ordering::SeqCst)
}

/// Ticks the placement clock: lookups that start from now on count as after this.
pub(crate) fn placed() -> u64 {
    PLACEMENTS.fetch_add(1, Ordering::SeqCst) + 1
}

/// What a lookup found.
pub(crate) enum Lookup {
    Found(Found),
    /// The backend failed or timed out.
    Unavailable,
}

/// What the primary key held when a lookup read it: what a store must find there still.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Not read (the lookup failed or was skipped): nothing may be stored.
    #[default]
    Unknown,
    Absent,
    /// A refill under way (maybe this request's own).
    Placeholder {
        cas: u64,
        placeholder: Placeholder,
    },
    /// An entry, an index, or bytes that are not ours.
    Value {
        cas: u64,
    },
}

impl Slot {
    fn of(item: &Item) -> Self {
        let Some(cas) = item.cas else {
            return Self::Unknown;
        };
        match item.flags {
            FLAG_PLACEHOLDER => match Placeholder::decode(&item.value) {
                Some(placeholder) => Self::Placeholder { cas, placeholder },
                None => Self::Value { cas },
            },
            _ => Self::Value { cas },
        }
    }
}

pub(crate) struct Found {
    /// A stored response for this request (same canonical key, same variant, current
    /// generations); its freshness is the caller's business.
    pub(crate) entry: Option<Arc<Entry>>,
    /// The URL's variant index, when its responses vary.
    pub(crate) index: Option<VariantIndex>,
    /// The namespace generation on the entry's server, read (or created) before anything
    /// went to the origin.
    pub(crate) generation: Option<u64>,
    /// What the primary key held.
    pub(crate) slot: Slot,
    /// When the lookup started, on the [`placements`] clock: a slot read before a
    /// placeholder was put in place says nothing about it.
    pub(crate) started: u64,
    /// When the earliest generation the near tier vouched for the entry with (instead of
    /// its being read in this lookup) was read: the entry is then no more current than
    /// that.
    pub(crate) vouched: Option<Instant>,
    /// The store epoch the entry was read against, when the near tier knew it before the
    /// read.
    pub(crate) basis: Option<Basis>,
}

impl Default for Found {
    fn default() -> Self {
        Self {
            entry: None,
            index: None,
            generation: None,
            slot: Slot::Unknown,
            started: placements(),
            vouched: None,
            basis: None,
        }
    }
}

/// Where and against what an entry is stored: the URL's primary key, what the request's
/// lookup saw there (or the placeholder it put there), and the generation it was produced
/// under.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) key: String,
    pub(crate) slot: Slot,
    pub(crate) index: Option<VariantIndex>,
    pub(crate) generation: Option<u64>,
    /// When the request that produced the response went to the origin.
    pub(crate) requested: SystemTime,
}

/// How a store ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreOutcome {
    Stored,
    /// Not stored: the URL was purged, invalidated or refilled, or the namespace purged,
    /// since the response's request went out. The requests that joined it in this process
    /// looked the URL up before that (the single flight admits no other), so they may still
    /// have it.
    Overtaken,
    /// Not stored: one of the response's tags was purged after its request went out.
    /// Requests that joined after `since` (when the request went out) may not have the
    /// response: tags are only known from it, so their lookups could not tell, and a tag
    /// keeps only its latest purge's time, so the first purge after the request is unknown.
    Superseded {
        since: SystemTime,
    },
    /// Not stored: the backend failed, or nothing guards the write.
    Failed,
}

/// A placeholder put in place by [`Storage::place`], or why none was.
pub(crate) enum Placed {
    /// This request refills the URL; its token and when the placeholder landed (on the
    /// [`placements`] clock).
    Mine(Placeholder, u64),
    /// Something arrived first (another request's placeholder, an entry, an index).
    Taken,
    /// The backend did not answer.
    Unknown,
}

/// The generations this process gave tags by purging (or creating) them, for as long as
/// the clock skew margin: a fill here compares its request time with them on the same
/// clock, so needs no margin (a page purged and refilled at once by one process is stored
/// again at once, and its followers get it).
#[derive(Default)]
pub(crate) struct LocalPurges(Mutex<VecDeque<(u64, Instant)>>);

impl LocalPurges {
    /// Most purges remembered: older ones get the margin, which is only a lost store.
    const MAX: usize = 4096;

    fn record(&self, generation: u64) {
        let mut purges = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while purges
            .front()
            .is_some_and(|(_, at)| at.elapsed() > CLOCK_SKEW)
            || purges.len() >= Self::MAX
        {
            purges.pop_front();
        }
        purges.push_back((generation, Instant::now()));
    }

    fn made_here(&self, generation: u64) -> bool {
        let purges = self.0.lock().unwrap_or_else(|p| p.into_inner());
        purges.iter().any(|(made, _)| *made == generation)
    }
}

/// The near tier's memory of one server's generations, for one lookup.
struct Recall<'a> {
    near: &'a NearCache,
    server: usize,
    /// Taken before the lookup read anything: what it reads is remembered as read then,
    /// and not at all if this process purged something since.
    mark: Mark,
}

impl Recall<'_> {
    fn generation(&self, key: &str) -> Option<Seen> {
        self.near.generation(self.server, key)
    }

    fn epoch(&self, key: &str) -> Option<Seen> {
        self.near.epoch(self.server, key)
    }

    fn remember<B: Backend>(&self, backend: &B, route: &str, read: &[(&str, u64)]) {
        // The ring changed meanwhile (a server left or came back): the read may have gone
        // to another server than the one it would be remembered for.
        if backend.server_of(route) == Some(self.server) {
            self.near.remember(self.server, read, self.mark);
        }
    }
}

/// A value a key should still hold on a server, and what the near tier remembers of it.
struct Expected<'a> {
    key: &'a str,
    value: u64,
    seen: Option<Seen>,
}

/// The earlier of two instants, either of them maybe unknown.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The backend, seen through the cache's key layout.
#[derive(Clone)]
pub(crate) struct Storage<B> {
    backend: B,
    local_purges: Arc<LocalPurges>,
    namespace: Arc<str>,
    generation_key: Arc<str>,
    timeout: Duration,
    stats: CacheStats,
    background: Background,
    /// The in-process tier: what this process purges, invalidates or stores leaves it.
    near: Option<NearCache>,
    /// The backend's [`Backend::outages`] when the near tier's memory of generations was
    /// last known to predate none of them.
    outages: Arc<AtomicU64>,
}

impl<B: Backend> Storage<B> {
    pub(crate) fn new(
        backend: B,
        namespace: &str,
        timeout: Duration,
        stats: CacheStats,
        background: Background,
        local_purges: Arc<LocalPurges>,
        near: Option<NearCache>,
    ) -> Self {
        let generation_key: Arc<str> = internal_key(namespace, "\0generation").into();
        // A server that comes back may have missed purges: its copy of the generation goes,
        // and with it everything it held for this namespace.
        backend.reset_on_rejoin(&generation_key);
        Self {
            generation_key,
            local_purges,
            namespace: namespace.into(),
            backend,
            timeout,
            stats,
            background,
            near,
            outages: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The in-process tier, when there is one.
    pub(crate) fn near(&self) -> Option<&NearCache> {
        self.near.as_ref()
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

    /// The key of the store epoch that guards `primary_key`'s entries. (Made when needed,
    /// one md5: a near tier's lookups and confirmations and a replacing store need it,
    /// while a layer is built per connection by some servers.)
    fn epoch_key(&self, primary_key: &str) -> String {
        let stripe = epoch_stripe(primary_key);
        internal_key(&self.namespace, &format!("\0epoch\0{stripe}"))
    }

    fn tag_key(&self, tag: &str) -> String {
        internal_key(&self.namespace, &format!("\0tag\0{tag}"))
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

    /// The variant keys of a request under `index`, one per name set, most recent first.
    pub(crate) fn variant_keys(
        &self,
        index: &VariantIndex,
        request_headers: &HeaderMap,
    ) -> Vec<String> {
        index
            .name_sets
            .iter()
            .map(|names| {
                let values: Vec<_> = names
                    .iter()
                    .map(|name| (name.clone(), normalized_header(request_headers, name)))
                    .collect();
                self.variant_key(&index.canonical_key, index.id, &values)
            })
            .collect()
    }

    /// Runs one backend operation within the timeout; failures are logged and counted.
    async fn timed<T>(
        &self,
        what: &'static str,
        operation: impl Future<Output = Result<T, BackendError>>,
    ) -> Option<T> {
        let outcome = self.bounded(operation).await;
        self.logged(what, outcome)
    }

    /// The outcome of one backend operation; a failure is logged and counted. (A function
    /// of the outcome, not of the operation: a wrapping future would hold the operation's
    /// future twice.)
    fn logged<T>(&self, what: &'static str, outcome: Result<T, BackendError>) -> Option<T> {
        outcome
            .inspect_err(|err| {
                tracing::debug!(error = %err, what, "cache backend failed");
                self.stats.record_backend_error();
            })
            .ok()
    }

    /// Reads `N` keys from the server of `route`, in their order, within the timeout (the
    /// backend's own timer takes it when it has one); failures are logged and counted.
    async fn read<const N: usize>(
        &self,
        what: &'static str,
        route: &str,
        keys: &[&str; N],
    ) -> Option<[Option<Item>; N]> {
        let items = self.read_all(what, route, keys).await?;
        <[Option<Item>; N]>::try_from(items).ok()
    }

    /// [`read`](Self::read), for a count known only at run time.
    async fn read_all(
        &self,
        what: &'static str,
        route: &str,
        keys: &[&str],
    ) -> Option<Vec<Option<Item>>> {
        let read = self
            .backend
            .get_many_by_key_ordered(route, keys, self.timeout)
            .await;
        let items = self.logged(what, read)?;
        // A backend that answers with another count is broken: treated as a failure.
        if items.len() != keys.len() {
            tracing::debug!(
                what,
                asked = keys.len(),
                answered = items.len(),
                "cache backend answered out of shape"
            );
            self.stats.record_backend_error();
            return None;
        }
        Some(items)
    }

    /// Finds the stored response for a request: one round trip to the entry's server for
    /// the entry and the namespace generation, one more for a variant, one more for tags.
    ///
    /// With a near tier, generations it read from that server within its reuse window
    /// ([`NearCache::generation`]) vouch for an entry instead of being read again: the
    /// first round trip then reads the entry alone, the tags' only those not vouched for.
    /// A generation that does not vouch for what was found (no entry, another generation)
    /// is read after all, as it would have been.
    pub(crate) async fn lookup(
        &self,
        canonical: &str,
        primary_key: &str,
        request_headers: &HeaderMap,
    ) -> Lookup {
        let started = placements();
        let recall = self.recall(primary_key);
        let cached = recall
            .as_ref()
            .and_then(|recall| recall.generation(&self.generation_key));
        // The store epoch an entry found now is read against must have been read before
        // it (one read in the same line could be newer than the entry): one remembered.
        let epoch_key = recall.as_ref().map(|_| self.epoch_key(primary_key));
        let epoch_key = epoch_key.as_deref().unwrap_or_default();
        let known_epoch = recall.as_ref().and_then(|recall| recall.epoch(epoch_key));
        let read_epoch = recall.is_some() && known_epoch.is_none();
        let mut keys = [primary_key, "", ""];
        let mut asked = 1;
        if cached.is_none() {
            keys[asked] = &self.generation_key;
            asked += 1;
        }
        if read_epoch {
            keys[asked] = epoch_key;
            asked += 1;
        }
        let Some(items) = self.read_all("lookup", primary_key, &keys[..asked]).await else {
            return Lookup::Unavailable;
        };
        let mut items = items.into_iter();
        let primary = items.next().flatten();
        let read_generation = cached.is_none().then(|| {
            items
                .next()
                .flatten()
                .and_then(|item| parse_generation(&item))
        });
        let epoch = if read_epoch {
            match items
                .next()
                .flatten()
                .and_then(|item| parse_generation(&item))
            {
                Some(epoch) => Some(epoch),
                None => Box::pin(self.bump_epoch(primary_key)).await,
            }
        } else {
            None
        };
        let slot = primary.as_ref().map_or(Slot::Absent, Slot::of);
        let Some((entry, index)) = self
            .entry_of(primary, canonical, primary_key, request_headers)
            .await
        else {
            return Lookup::Unavailable;
        };
        let mut vouched = None;
        let mut generation = match (read_generation, cached, &entry) {
            (Some(read), _, _) => read,
            (None, Some(seen), Some(entry)) if entry.meta.generation == seen.value => {
                vouched = Some(seen.read);
                Some(seen.value)
            }
            // No entry, or one of another generation (a purge by another process since,
            // or an entry from before one): what the server holds decides, as without
            // the near tier (a miss goes to the origin next: this round trip is small
            // beside it).
            _ => {
                let key = &*self.generation_key;
                let keys = [key];
                let read = Box::pin(self.read("generation get", primary_key, &keys));
                let Some([read]) = read.await else {
                    return Lookup::Unavailable;
                };
                read.and_then(|item| parse_generation(&item))
            }
        };
        if generation.is_none() {
            // A cold server, a flush, a reset after a rejoin: the generation this request's
            // response will be stored under must exist before the response is produced, or
            // a purge during the fill would not reach it.
            generation = Box::pin(self.ensure_generation(primary_key)).await;
        }
        if let Some(recall) = &recall {
            let generation_read = generation
                .filter(|_| vouched.is_none())
                .map(|value| (&*self.generation_key, value));
            let read: Vec<(&str, u64)> = generation_read
                .into_iter()
                .chain(epoch.map(|value| (epoch_key, value)))
                .collect();
            if !read.is_empty() {
                recall.remember(&self.backend, primary_key, &read);
            }
        }
        let basis = recall
            .as_ref()
            .zip(known_epoch)
            .map(|(recall, seen)| Basis {
                server: recall.server,
                epoch: seen.value,
            });
        let mut found = Found {
            generation,
            started,
            slot,
            index,
            vouched,
            basis,
            ..Found::default()
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
        if !meta.tags.is_empty() {
            // Boxed, as every step of a lookup that not every hit takes: the future of
            // every request holds the lookup's, and a plain hit's stays small.
            let tags = Box::pin(self.tags_current(primary_key, &meta.tags, recall.as_ref()));
            match tags.await {
                Some(tags_vouched) => found.vouched = earliest(found.vouched, tags_vouched),
                None => {
                    tracing::debug!(key = primary_key, "entry from before a tag purge; miss");
                    return Lookup::Found(found);
                }
            }
        }
        found.entry = Some(Arc::new(entry));
        Lookup::Found(found)
    }

    /// The near tier's memory of generations read from the server of `route`, when there
    /// is a near tier and the backend says which server that is.
    fn recall(&self, route: &str) -> Option<Recall<'_>> {
        let near = self.near.as_ref().filter(|near| near.recalls())?;
        let server = self.backend.server_of(route)?;
        // A server marked down since generations were read may have missed purges (this
        // process's too) and rejoins reset: what was read from it must not vouch for what
        // it still holds. Forgotten before this lookup reads the tier's memory.
        let outages = self.backend.outages();
        // Forgotten before the count is noted: a lookup that sees the new count finds the
        // memory already emptied.
        if self.outages.load(Ordering::SeqCst) != outages {
            near.forget_generations();
            self.outages.store(outages, Ordering::SeqCst);
        }
        Some(Recall {
            near,
            server,
            mark: near.mark(route),
        })
    }

    /// The entry (or the variant this request selects) in what the primary key held, and
    /// the URL's variant index; `None` when the variant read failed.
    async fn entry_of(
        &self,
        primary: Option<Item>,
        canonical: &str,
        primary_key: &str,
        request_headers: &HeaderMap,
    ) -> Option<(Option<Entry>, Option<VariantIndex>)> {
        let Some(item) = primary else {
            return Some((None, None));
        };
        match item.flags {
            FLAG_HTTP_ENTRY => Some((decode(item.value), None)),
            FLAG_VARIANT_INDEX => match decode_index(&item.value) {
                Ok(index) if index.canonical_key == canonical && !index.name_sets.is_empty() => {
                    let keys = self.variant_keys(&index, request_headers);
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let read =
                        self.backend
                            .get_many_by_key_ordered(primary_key, &refs, self.timeout);
                    let read = Box::pin(read).await;
                    let variants = self.logged("variant lookup", read)?;
                    // Of the variants this request selects, the one stored for the most
                    // selecting headers (a response the origin chose for a request like
                    // this in more ways), then the most recent name set.
                    let entry = variants
                        .into_iter()
                        .flatten()
                        .filter(|item| item.flags == FLAG_HTTP_ENTRY)
                        .filter_map(|item| decode(item.value))
                        .filter(|entry| stored::selects(&entry.meta, canonical, request_headers))
                        .reduce(|best, entry| {
                            if entry.meta.vary.len() > best.meta.vary.len() {
                                entry
                            } else {
                                best
                            }
                        });
                    Some((entry, Some(index)))
                }
                _ => Some((None, None)),
            },
            _ => Some((None, None)),
        }
    }

    /// Whether an entry's tags are current on the server of `route`: `Some` with when the
    /// earliest generation the near tier vouched for was read (`None`: all were read now),
    /// `None` when one was purged or the read failed.
    async fn tags_current(
        &self,
        route: &str,
        tags: &[(String, u64)],
        recall: Option<&Recall<'_>>,
    ) -> Option<Option<Instant>> {
        let keys: Vec<String> = tags.iter().map(|(tag, _)| self.tag_key(tag)).collect();
        let expected: Vec<Expected<'_>> = keys
            .iter()
            .zip(tags)
            .map(|(key, (_, stored))| Expected {
                key,
                value: *stored,
                seen: recall.and_then(|recall| recall.generation(key)),
            })
            .collect();
        self.unchanged("tag lookup", route, &expected, recall).await
    }

    /// Whether values the server of `route` holds under keys (generations, store epochs)
    /// are still those expected. Those the near tier remembers with that value count as
    /// read when they were; the others are read in one round trip (and remembered, with a
    /// near tier). `Some` with when the earliest remembered one was read (`None`: all
    /// were read now), `None` when one differs or the read failed.
    async fn unchanged(
        &self,
        what: &'static str,
        route: &str,
        expected: &[Expected<'_>],
        recall: Option<&Recall<'_>>,
    ) -> Option<Option<Instant>> {
        let mut vouched = None;
        let mut unread: Vec<(&str, u64)> = Vec::with_capacity(expected.len());
        for item in expected {
            match item.seen {
                Some(seen) if seen.value == item.value => {
                    vouched = earliest(vouched, Some(seen.read));
                }
                _ => unread.push((item.key, item.value)),
            }
        }
        if unread.is_empty() {
            return Some(vouched);
        }
        let keys: Vec<&str> = unread.iter().map(|(key, _)| *key).collect();
        let items = self.read_all(what, route, &keys).await?;
        let values: Vec<Option<u64>> = items
            .iter()
            .map(|item| item.as_ref().and_then(parse_generation))
            .collect();
        if let Some(recall) = recall {
            let read: Vec<(&str, u64)> = keys
                .iter()
                .zip(&values)
                .filter_map(|(key, value)| Some((*key, (*value)?)))
                .collect();
            recall.remember(&self.backend, route, &read);
        }
        let current = unread
            .iter()
            .zip(&values)
            .all(|((_, expected), value)| *value == Some(*expected));
        current.then_some(vouched)
    }

    /// Whether an entry the near tier holds is still what memcached would answer, without
    /// reading it again: its server's store epoch for its stripe (`basis`), the namespace
    /// generation and its tags' generations are what they were when it was read. Values
    /// the tier remembers (read within their reuse window) count; the others are read, in
    /// one round trip. `Some` with when the earliest of the reads it relied on started,
    /// `None` when something changed, failed or moved to another server.
    pub(crate) async fn reconfirm(
        &self,
        primary_key: &str,
        meta: &EntryMeta,
        basis: Basis,
    ) -> Option<Instant> {
        let recall = self.recall(primary_key)?;
        if recall.server != basis.server {
            return None;
        }
        let epoch_key = self.epoch_key(primary_key);
        let tag_keys: Vec<String> = meta.tags.iter().map(|(tag, _)| self.tag_key(tag)).collect();
        let mut expected = vec![
            Expected {
                key: &epoch_key,
                value: basis.epoch,
                seen: recall.epoch(&epoch_key),
            },
            Expected {
                key: &self.generation_key,
                value: meta.generation,
                seen: recall.generation(&self.generation_key),
            },
        ];
        expected.extend(
            tag_keys
                .iter()
                .zip(&meta.tags)
                .map(|(key, (_, value))| Expected {
                    key,
                    value: *value,
                    seen: recall.generation(key),
                }),
        );
        let vouched = self
            .unchanged("near confirm", primary_key, &expected, Some(&recall))
            .await?;
        // What was read now was read from the recall's mark on.
        let read_now = recall.mark.at();
        Some(vouched.map_or(read_now, |at| at.min(read_now)))
    }

    /// Gives the store epoch guarding `route` a new value: after a store that replaced an
    /// entry or an invalidation, so that near tiers that read an entry against the old
    /// value read it again; or where a lookup found none (a fresh server, an eviction,
    /// bytes that are not an epoch). A set, not an add: any new value is safe, only an
    /// unchanged one across a replacement would not be. The value, once written.
    async fn bump_epoch(&self, route: &str) -> Option<u64> {
        let bumped = self.try_bump_epoch(route).await;
        self.logged("epoch bump", bumped)
    }

    /// [`bump_epoch`](Self::bump_epoch), with the error (for a purge, which must not
    /// return `Ok` while near tiers can still confirm what it removed).
    async fn try_bump_epoch(&self, route: &str) -> Result<u64, BackendError> {
        let fresh = unique();
        let value = Bytes::from(fresh.to_string());
        let key = self.epoch_key(route);
        let set = self
            .backend
            .set_by_key(route, &key, value, 0, Lifetime::NEVER);
        self.bounded(set).await.map(|()| fresh)
    }

    /// [`bump_epoch`](Self::bump_epoch) once more, a timeout from now, in the background:
    /// a write that failed (timed out) may still land after the first bump, from the
    /// socket it was written to, and a first bump may itself have failed.
    ///
    /// Best effort, and bounded ([`Background::spawn_best_effort`]): a dead server fails
    /// every write; the full read every 8 windows still bounds what a skipped one would
    /// have shown.
    fn bump_epoch_later(&self, route: &str) {
        let (storage, route) = (self.clone(), route.to_owned());
        self.background.spawn_best_effort(async move {
            tokio::time::sleep(storage.timeout).await;
            storage.bump_epoch(&route).await;
        });
    }

    /// The namespace generation on the server of `route`, created when absent.
    async fn ensure_generation(&self, route: &str) -> Option<u64> {
        let key = &*self.generation_key;
        let fresh = unique();
        let value = Bytes::from(fresh.to_string());
        let add = self
            .backend
            .add_by_key(route, key, value, 0, Lifetime::NEVER);
        if self.timed("generation add", add).await? {
            return Some(fresh);
        }
        let [generation] = self.read("generation get", route, &[key]).await?;
        generation.as_ref().and_then(parse_generation)
    }

    /// Puts a placeholder with `token` (a fresh [`unique`] value, known to the caller
    /// before the add is sent so that it can release what lands should it be dropped
    /// meanwhile) in a URL's primary key, where the lookup saw nothing, before its request
    /// goes to the origin. Other requests wait for it until `until`.
    pub(crate) async fn place(&self, key: &str, token: u64, until: SystemTime) -> Placed {
        let placeholder = arming(token, until);
        let lifetime = Lifetime::from_duration(FILL_HOLD);
        let add = self
            .backend
            .add(key, placeholder.encode(), FLAG_PLACEHOLDER, lifetime);
        match self.timed("placeholder add", add).await {
            Some(true) => Placed::Mine(placeholder, placed()),
            Some(false) => Placed::Taken,
            None => Placed::Unknown,
        }
    }

    /// Takes part in a refill whose placeholder nobody waits for any longer (it expired its
    /// wait, was released, or its request is slow): the placeholder is armed again, with
    /// the same token, for this request's hold, so others wait for it; whichever request
    /// finishes first stores over the token.
    pub(crate) async fn rearm(&self, key: &str, seen: Slot, until: SystemTime) -> Placed {
        let Slot::Placeholder { cas, placeholder } = seen else {
            return Placed::Taken;
        };
        let armed = arming(placeholder.token, until);
        let lifetime = Lifetime::from_duration(FILL_HOLD);
        let cas = self
            .backend
            .cas(key, armed.encode(), FLAG_PLACEHOLDER, lifetime, cas);
        match self.timed("placeholder rearm", cas).await {
            Some(CasOutcome::Stored) => Placed::Mine(armed, placed()),
            Some(CasOutcome::Exists | CasOutcome::NotFound) => Placed::Taken,
            None => Placed::Unknown,
        }
    }

    /// Ends this request's placeholder without an entry: nobody waits for it any longer,
    /// and it soon goes.
    pub(crate) async fn release(&self, key: &str, mine: Placeholder) {
        self.end_wait(key, mine, RELEASED_FOR).await;
    }

    /// [`release`](Self::release) for a placeholder whose add (or CAS) may still be on its
    /// way: the request was dropped during it, or gave up on its reply. Read first, the key
    /// could be empty while that write is still to land, and what landed would then hold
    /// the URL's requests for `lease_wait` with nobody to fill it. So an ended placeholder
    /// is added first: a late add then finds the key taken. Only when something is already
    /// there is it read and ended as usual.
    ///
    /// The added one has a token of its own, never `mine`'s: the key may be empty because
    /// a purge deleted this request's placeholder, and a fill that still holds that token
    /// (this request's, in the background) must find it gone, or its response, produced
    /// before the purge, would be stored after it returned.
    pub(crate) async fn release_unsure(&self, key: &str, mine: Placeholder) {
        let ended = Placeholder {
            token: unique(),
            until_ms: 0,
        };
        let lifetime = Lifetime::from_duration(RELEASED_FOR);
        let add = self
            .backend
            .add(key, ended.encode(), FLAG_PLACEHOLDER, lifetime);
        if self.timed("placeholder release", add).await != Some(true) {
            self.release(key, mine).await;
        }
    }

    /// Rewrites `placeholder` (if it is still there, as this request armed it, and waited
    /// for) to be waited for no longer, with the same token, for `lifetime`.
    async fn end_wait(&self, key: &str, placeholder: Placeholder, lifetime: Duration) {
        let Some(Some(item)) = self.timed("placeholder read", self.backend.get(key)).await else {
            return;
        };
        let (
            Some(cas),
            Slot::Placeholder {
                placeholder: now, ..
            },
        ) = (item.cas, Slot::of(&item))
        else {
            return;
        };
        // The token alone is not this request's: another request that armed the
        // placeholder again shares it (`rearm`), and ending its arming would end its fill
        // (nobody waits for it, and the placeholder lives a second: its store is lost).
        if now.token != placeholder.token
            || now.until_ms != placeholder.until_ms
            || now.until_ms == 0
        {
            return;
        }
        let ended = Placeholder {
            token: placeholder.token,
            until_ms: 0,
        };
        let lifetime = Lifetime::from_duration(lifetime);
        let cas = self
            .backend
            .cas(key, ended.encode(), FLAG_PLACEHOLDER, lifetime, cas);
        self.timed("placeholder end", cas).await;
    }

    /// Writes an entry (and, when it varies, the URL's variant index) for `ttl`, if what
    /// the request's lookup saw is still there and no purge touched it since the request
    /// went out. `tags` are the response's; an entry that names none keeps those in its
    /// metadata (a refresh), which must still be current.
    ///
    /// Also says which of the requests that joined this one in the process may have the
    /// response (`Some(t)`: those that joined before `t`). Only tags need that: a purge of
    /// the URL or of the namespace shows in a lookup, so the single flight admitted no
    /// request that came after one; a tag purge does not.
    pub(crate) async fn store(
        &self,
        to: &Target,
        meta: &EntryMeta,
        body: &[u8],
        tags: &[String],
        ttl: Duration,
    ) -> (StoreOutcome, Option<SystemTime>) {
        let tagged = !tags.is_empty() || !meta.tags.is_empty();
        let checked = SystemTime::now();
        let (outcome, tags_checked) = self.store_checked(to, meta, body, tags, ttl).await;
        // Over an entry or an index (what a near tier may hold), and maybe written even
        // when it failed (half way, or its reply lost): near tiers must read it again.
        let replaced = matches!(to.slot, Slot::Value { .. })
            && matches!(outcome, StoreOutcome::Stored | StoreOutcome::Failed);
        if replaced {
            let bumped = self.bump_epoch(&to.key).await.is_some();
            // Once more a timeout later: a failed store may land late, and an epoch write
            // that failed (refused, lost) left the old epoch vouching for the old entry.
            if outcome == StoreOutcome::Failed || !bumped {
                self.bump_epoch_later(&to.key);
            }
        }
        // Whatever the outcome: a store that failed half way (an index written, its variant
        // refused) or whose reply was lost may have changed memcached all the same.
        if let Some(near) = &self.near {
            near.forget(&to.key);
        }
        let cutoff = match outcome {
            _ if !tagged => None,
            StoreOutcome::Superseded { since } => Some(since),
            // A tag purge that returned before the check read would have shown in it, and
            // nothing (a flush, a restart) can have removed it since: that would have
            // refused this store's compare-and-swap. A store refused or failed proves
            // no such thing: a tag's generation may have gone and come back meanwhile.
            StoreOutcome::Stored if tags_checked => Some(checked),
            _ => Some(to.requested),
        };
        (outcome, cutoff)
    }

    /// [`store`](Self::store); and whether the tags were checked.
    async fn store_checked(
        &self,
        to: &Target,
        meta: &EntryMeta,
        body: &[u8],
        tags: &[String],
        ttl: Duration,
    ) -> (StoreOutcome, bool) {
        let failed = (StoreOutcome::Failed, false);
        let Some(generation) = to.generation else {
            tracing::debug!(key = %to.key, "no namespace generation read before the request; not stored");
            return failed;
        };
        let route = to.key.as_str();
        let tag_names: Vec<String> = if tags.is_empty() {
            meta.tags.iter().map(|(tag, _)| tag.clone()).collect()
        } else {
            tags.to_vec()
        };
        let tag_keys: Vec<String> = tag_names.iter().map(|tag| self.tag_key(tag)).collect();
        let mut keys: Vec<&str> = vec![route, &self.generation_key];
        keys.extend(tag_keys.iter().map(String::as_str));
        let read = self.backend.get_many_by_key(route, &keys);
        let Some(mut now) = self.timed("store check", read).await else {
            return failed;
        };
        let superseded = |since: SystemTime| (StoreOutcome::Superseded { since }, true);
        let margin = |at: u64| {
            if self.local_purges.made_here(at) {
                Duration::ZERO
            } else {
                CLOCK_SKEW
            }
        };
        // Tags: a purge newer than the request, or (for a refresh) another generation.
        let mut resolved = Vec::with_capacity(tag_names.len());
        let requested_ns = nanos(to.requested);
        // Whether the read shows every tag purge since the request went out: not when a
        // tag's generation was created after it (or is created now). A flush, a restart
        // or an eviction took its purges with it, and followers that joined after such a
        // purge must not take the read as proof that none came.
        let mut vouched = true;
        for (tag, key) in tag_names.iter().zip(&tag_keys) {
            let (value, purged_at) = match now.get(key.as_str()).and_then(parse_tag_mark) {
                Some((created, None)) => {
                    if created.saturating_add(nanos_of(margin(created))) > requested_ns {
                        vouched = false;
                    }
                    (created, None)
                }
                Some(mark) => mark,
                None => {
                    vouched = false;
                    // First use of the tag on this server (or an eviction): it starts here,
                    // marked as created rather than purged.
                    let fresh = unique();
                    let add = self.backend.add_by_key(
                        route,
                        key,
                        Bytes::from(format!("{fresh}{CREATED}")),
                        0,
                        Lifetime::NEVER,
                    );
                    match self.timed("tag generation add", add).await {
                        Some(true) => {
                            // On this process's clock: later fills here need no margin.
                            self.local_purges.record(fresh);
                            (fresh, None)
                        }
                        // Created or purged at this very moment by someone else.
                        Some(false) => return superseded(to.requested),
                        None => return failed,
                    }
                }
            };
            let kept = meta.tags.iter().find(|(t, _)| t == tag).map(|(_, g)| *g);
            let purged_since = match (kept, purged_at) {
                // A refresh keeps the generations its entry was read under.
                (Some(kept), _) if tags.is_empty() => value != kept,
                (_, Some(at)) => at.saturating_add(nanos_of(margin(at))) > requested_ns,
                (_, None) => false,
            };
            if purged_since {
                tracing::debug!(key = %to.key, tag, "tag purged during the fill; not stored");
                // Followers that joined before the request went out may have it; not those
                // that joined before the purge found: a tag keeps only its latest purge's
                // time, and an earlier purge may have come (and returned) between the
                // request and that one, with followers joining after it.
                return superseded(to.requested);
            }
            resolved.push((tag.clone(), value));
        }
        let overtaken = (StoreOutcome::Overtaken, vouched);
        let failed_checked = (StoreOutcome::Failed, vouched);
        // Namespace purge since the lookup?
        let current = now
            .remove(&*self.generation_key)
            .and_then(|item| parse_generation(&item));
        if current != Some(generation) {
            tracing::debug!(key = %to.key, "namespace purged during the fill; not stored");
            return overtaken;
        }
        let mut meta = meta.clone();
        meta.generation = generation;
        meta.tags = resolved;
        let primary = now.remove(route);
        let Some(primary_cas) = self.guarded(to, primary.as_ref()) else {
            tracing::debug!(key = %to.key, "the URL was purged or refilled during the fill; not stored");
            return overtaken;
        };
        let bytes = match encode_entry(&meta, body) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::debug!(key = %to.key, error = %err, "entry not encodable");
                return failed_checked;
            }
        };
        let lifetime = Lifetime::from_duration(ttl);
        if meta.vary.is_empty() {
            let cas = self
                .backend
                .cas(route, bytes, FLAG_HTTP_ENTRY, lifetime, primary_cas);
            return match self.timed("store", cas).await {
                Some(CasOutcome::Stored) => (StoreOutcome::Stored, vouched),
                Some(_) => overtaken,
                None => failed_checked,
            };
        }
        let names: Vec<String> = meta.vary.iter().map(|(name, _)| name.clone()).collect();
        let existing = primary
            .filter(|item| item.flags == FLAG_VARIANT_INDEX)
            .and_then(|item| decode_index(&item.value).ok());
        let index = match existing {
            Some(index) if index.name_sets.first() == Some(&names) => index,
            existing => {
                // A new index where a placeholder or a plain entry was; this name set first
                // in an existing one (bounded, the least recent set goes).
                let mut index = existing.unwrap_or_else(|| VariantIndex {
                    canonical_key: meta.canonical_key.clone(),
                    name_sets: Vec::new(),
                    id: unique(),
                });
                index.name_sets.retain(|set| *set != names);
                index.name_sets.insert(0, names);
                index.name_sets.truncate(MAX_NAME_SETS);
                let Ok(encoded) = encode_index(&index) else {
                    return failed_checked;
                };
                // The index outlives any one variant; memcached's LRU ages it out.
                let cas = self.backend.cas(
                    route,
                    encoded,
                    FLAG_VARIANT_INDEX,
                    Lifetime::NEVER,
                    primary_cas,
                );
                match self.timed("index store", cas).await {
                    Some(CasOutcome::Stored) => index,
                    Some(_) => return overtaken,
                    None => return failed_checked,
                }
            }
        };
        let variant_key = self.variant_key(&meta.canonical_key, index.id, &meta.vary);
        let set = self
            .backend
            .set_by_key(route, &variant_key, bytes, FLAG_HTTP_ENTRY, lifetime);
        match self.timed("variant store", set).await {
            Some(()) => (StoreOutcome::Stored, vouched),
            None => failed_checked,
        }
    }

    /// The CAS value to replace `now` with, if it is what the request's lookup saw (its own
    /// placeholder, the entry it refreshed, or the index its variant belongs to).
    fn guarded(&self, to: &Target, now: Option<&Item>) -> Option<u64> {
        let now = now?;
        let cas = now.cas?;
        match (to.slot, Slot::of(now)) {
            (
                Slot::Placeholder {
                    placeholder: mine, ..
                },
                Slot::Placeholder { placeholder, .. },
            ) if mine.token == placeholder.token => Some(cas),
            (Slot::Value { cas: seen }, Slot::Value { .. }) if seen == cas => Some(cas),
            (Slot::Value { .. }, Slot::Value { .. }) => {
                // Changed since the lookup; still the same index (another variant or name
                // set was added) keeps its variants' keys valid.
                let seen = to.index.as_ref()?;
                let index = decode_index(&now.value).ok()?;
                (now.flags == FLAG_VARIANT_INDEX && index.id == seen.id).then_some(cas)
            }
            _ => None,
        }
    }

    /// Removes a URL's entry or variant index (and so every variant), and any placeholder:
    /// a fill under way for it can no longer store.
    /// Deleted on every server: a copy left on another server while the URL's own was out
    /// of the ring must not come back at the next outage.
    pub(crate) async fn invalidate(&self, primary_key: &str) -> Result<(), BackendError> {
        let deleted = self
            .bounded_purge(self.backend.delete_on_every_server(primary_key))
            .await;
        // Even when the delete failed on some server: it may have landed on others. Once
        // more a timeout later when either failed (see `store`).
        let bumped = self.try_bump_epoch(primary_key).await;
        if deleted.is_err() || bumped.is_err() {
            self.bump_epoch_later(primary_key);
        }
        // After memcached (a lookup that read it before is then refused by the near tier),
        // and even when memcached failed: this process at least forgets.
        if let Some(near) = &self.near {
            near.forget(primary_key);
        }
        deleted?;
        // The entry is gone, but other processes' near tiers confirm what they hold by the
        // epoch, unchanged until the later write lands (a timeout from now, if it does):
        // the purge does not hold within their bound yet, and the caller must know. (A
        // server marked down is another matter: it rejoins reset, its epochs orphaned with
        // the rest, as the delete counts on.)
        if let (Err(err), true) = (bumped, self.backend.is_available(primary_key)) {
            self.stats.record_backend_error();
            tracing::debug!(key = primary_key, error = %err, "store epoch not written after an invalidation");
            return Err(err);
        }
        self.stats.record_invalidation();
        Ok(())
    }

    /// Gives the namespace a new generation on every server: every entry stored before,
    /// or produced before and stored after, is a miss.
    pub(crate) async fn purge_namespace(&self) -> Result<(), BackendError> {
        let bumped = self.bump(&self.generation_key.clone()).await;
        if let Some(near) = &self.near {
            near.forget_all();
        }
        bumped
    }

    /// Gives a tag a new generation on every server: every entry stored with it before is
    /// a miss, and fills of responses requested before it are not stored.
    pub(crate) async fn purge_tag(&self, tag: &str) -> Result<(), BackendError> {
        let key = self.tag_key(tag);
        let bumped = self.bump(&key).await;
        if let Some(near) = &self.near {
            near.forget_tag(tag, &key);
        }
        bumped
    }

    async fn bump(&self, key: &str) -> Result<(), BackendError> {
        let generation = unique();
        self.local_purges.record(generation);
        let value = Bytes::from(generation.to_string());
        let write = self
            .backend
            .set_on_every_server(key, value, 0, Lifetime::NEVER);
        self.bounded_purge(write).await?;
        self.stats.record_invalidation();
        Ok(())
    }

    /// Runs a write to every server: bounded by the backend's own timeouts (a server that
    /// does not answer is marked down, which a purge waits for), and here by
    /// [`PURGE_TIMEOUT`] at most.
    pub(crate) async fn bounded_purge<T>(
        &self,
        operation: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let limit = PURGE_TIMEOUT.max(self.timeout);
        tokio::time::timeout(limit, operation)
            .await
            .map_err(|_| BackendError::Deadline { after: limit })?
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

/// The placeholder [`Storage::place`] or [`Storage::rearm`] writes for `token`, waited for
/// until `until`: known before the write is sent, so that the request's lease releases
/// what lands, and only that.
pub(crate) fn arming(token: u64, until: SystemTime) -> Placeholder {
    Placeholder {
        token,
        until_ms: millis(until),
    }
}

/// The key of a generation or epoch of the layer's: `g:` and the md5 of namespace and
/// `base`. Never 32 hex digits, so never a key `build_key` gives: a `MemcacheClient` on the
/// same servers, whose keys a user may pick, could otherwise read a generation and, after
/// a purge, write the old one back (the purged entries served again).
fn internal_key(namespace: &str, base: &str) -> String {
    md5_hex_prefixed("g:", &[namespace.as_bytes(), base.as_bytes()])
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn nanos_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn decode(value: Bytes) -> Option<Entry> {
    decode_entry(value)
        .inspect_err(|err| tracing::debug!(error = %err, "undecodable cache entry; miss"))
        .ok()
}

/// Marks a tag generation created on first use, not by a purge.
const CREATED: char = 'c';

fn parse_generation(item: &Item) -> Option<u64> {
    parse_tag_mark(item).map(|(generation, _)| generation)
}

/// A generation, and when it was purged (`None` when it was created on first use).
fn parse_tag_mark(item: &Item) -> Option<(u64, Option<u64>)> {
    let text = item.value.trim_ascii();
    match text.strip_suffix(&[CREATED as u8]) {
        Some(created) => Some((stored::parse_decimal(created)?, None)),
        None => {
            let purged = stored::parse_decimal(text)?;
            Some((purged, Some(purged)))
        }
    }
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

/// The tags a response header lists (space- or comma-separated), bounded; `None` when it
/// lists more than [`MAX_TAGS`] or one longer than [`MAX_TAG_LEN`]: an entry stored with
/// some of its tags only would outlive a purge of the others, so such a response is not
/// stored.
pub(crate) fn parse_tags<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Vec<String>> {
    let mut tags: Vec<String> = Vec::new();
    for tag in values
        .into_iter()
        .flat_map(|v| v.split(|c: char| c.is_ascii_whitespace() || c == ','))
        .filter(|tag| !tag.is_empty())
    {
        if tag.len() > MAX_TAG_LEN {
            return None;
        }
        if !tags.iter().any(|kept| kept == tag) {
            // Bounded work and memory whatever the header holds.
            if tags.len() == MAX_TAGS {
                return None;
            }
            tags.push(tag.to_string());
        }
    }
    tags.sort();
    Some(tags)
}
