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
//!   refreshes, or (for a variant) the index whose id the variant key carries (an index
//!   put over a placeholder takes its token as id, so a fill that went out alongside under
//!   the same token finds its variant's index there), and the variant's own key as the
//!   lookup read it (`add` over nothing, `cas` over a value; `add` under an index over
//!   its own placeholder, which no lookup read: of two fills of one variant in flight,
//!   the older answer never lands over the newer). A purge or
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
//! - A **tag-purge mark** per server and namespace is created with the namespace's
//!   generation there ("no tag purge since") and set to its time by every tag purge
//!   (before the tag's generation). A tag's generation can be evicted after its purge and
//!   created anew, which tells a store nothing of that purge: a store accepts a tag whose
//!   generation is missing, or was created after its request went out, only if the mark
//!   shows no tag purge on that server since the request. A mark that is gone tells
//!   nothing: the store is refused and the mark written anew. Stores read it; lookups
//!   do not.
//!
//! Every operation is bounded by the layer's timeout and fails open.
//!
//! The modules below follow a URL's life in the backend: [`lookup`] finds a request's
//! stored response, [`placeholder`] holds the URL while one request refills it, [`store`]
//! writes the response over what its lookup saw, and [`purge`] removes URLs and gives
//! namespaces and tags new generations. Keys, generations and store epochs are here.

mod lookup;
mod placeholder;
mod purge;
mod store;

pub(crate) use lookup::{Found, Lookup, VariantRead};
pub(crate) use placeholder::{Placed, arming};
pub(crate) use purge::LocalPurges;
pub(crate) use store::{StoreOutcome, Target};

pub(crate) use crate::generation::unique;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

use super::background::Background;
use super::stored;
use crate::backend::{Backend, BackendError, CasOutcome, Item, Lifetime};
use crate::cache::entry::{Entry, FLAG_PLACEHOLDER, Placeholder, VariantIndex, decode_entry};
use crate::cache::near::NearCache;
use crate::cache::policy::{
    NotServed, Policy, StoredRuling, answers_credentials, is_never_stored, normalized_header,
};
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

/// Purges and invalidations started in this process (by any layer): a flight whose leader
/// could not read memcached admits requests that come after it went out only while this
/// stands still, since nothing in memcached can show them a purge since.
static PURGES: AtomicU64 = AtomicU64::new(0);

/// The count of purges started in this process.
pub(crate) fn purges() -> u64 {
    PURGES.load(Ordering::SeqCst)
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
    /// Read, but with no CAS value to write against: memcached numbers them from 1, and
    /// one started with `-C` (CAS disabled) answers 0 and refuses every `cas`. Nothing
    /// can be stored over it, released or armed again, so nobody waits for it. Yet it
    /// was read, unlike [`Unknown`](Self::Unknown): a placeholder's `token` still tells
    /// whose refill it is (a purge deletes it), and a flight admits by it. Read as
    /// unknown, another process's placeholder put there after its purge let a request
    /// that came after the purge join a flight that went out before it (review SE).
    /// `None`: an entry, an index or bytes not ours, which tell nothing.
    Uncas {
        token: Option<u64>,
    },
}

impl Slot {
    fn of(item: &Item) -> Self {
        let Some(cas) = item.cas else {
            return Self::Unknown;
        };
        let placeholder = match item.flags {
            FLAG_PLACEHOLDER => Placeholder::decode(&item.value),
            _ => None,
        };
        match placeholder {
            // A placeholder read so could never be replaced nor released, and was waited
            // for (`lease_wait`) by every request for the URL until its time was up.
            _ if cas == 0 => Self::Uncas {
                token: placeholder.map(|placeholder| placeholder.token),
            },
            Some(placeholder) => Self::Placeholder { cas, placeholder },
            None => Self::Value { cas },
        }
    }
}

/// What the services and purgers of one layer share beside the backend: the tag purges
/// it made recently, and the backend's outages the near tier's memory was last emptied
/// for (shared: the proxy makes a service per connection, and one that counted from zero
/// took an old outage for a new one).
#[derive(Clone, Default)]
pub(crate) struct LayerMemory {
    pub(crate) purges: Arc<LocalPurges>,
    pub(crate) outages: Arc<AtomicU64>,
}

/// The backend, seen through the cache's key layout.
#[derive(Clone)]
pub(crate) struct Storage<B> {
    backend: B,
    local_purges: Arc<LocalPurges>,
    namespace: Arc<str>,
    generation_key: Arc<str>,
    /// The namespace's tag-purge mark: the time of the latest tag purge (or "created"),
    /// read by stores, so a store can tell that no tag purge came during its fill when a
    /// tag's own generation cannot (evicted, or created since).
    tag_purges_key: Arc<str>,
    timeout: Duration,
    stats: CacheStats,
    background: Background,
    /// The in-process tier: what this process purges, invalidates or stores leaves it.
    near: Option<NearCache>,
    /// The backend's [`Backend::outages`] when the near tier's memory of generations was
    /// last known to predate none of them (the layer's: see [`LayerMemory`]).
    outages: Arc<AtomicU64>,
    /// The layer's storage policy (without route rules): an entry it would not have
    /// stored, or holding a field it keeps out, is a miss ([`Policy::judge_stored`]).
    policy: Arc<Policy>,
    /// The layer's `key_headers` (lower-case names): an entry not selected by each of
    /// them is a miss.
    key_headers: Arc<[String]>,
    /// The response fields the layer consumes (its tag and lifetime headers), never in
    /// an entry it writes: an entry holding one was stored by a process that did not read
    /// it (no tags to purge it by; a lifetime of 0 not honoured), and is a miss.
    own_fields: Arc<[HeaderName]>,
    /// What the three above judge by, as one number: a near tier shared by layers of other
    /// settings answers each only with what a lookup of its own settings judged.
    reader: u64,
}

impl<B: Backend> Storage<B> {
    pub(crate) fn new(
        backend: B,
        namespace: &str,
        timeout: Duration,
        stats: CacheStats,
        background: Background,
        memory: LayerMemory,
        near: Option<NearCache>,
    ) -> Self {
        let generation_key: Arc<str> = internal_key(namespace, "\0generation").into();
        // A server that comes back may have missed purges: its copy of the generation goes,
        // and with it everything it held for this namespace.
        backend.reset_on_rejoin(&generation_key);
        Self {
            generation_key,
            tag_purges_key: internal_key(namespace, "\0tag purges").into(),
            local_purges: memory.purges,
            namespace: namespace.into(),
            backend,
            timeout,
            stats,
            background,
            near,
            outages: memory.outages,
            policy: Arc::new(Policy::default()),
            key_headers: Arc::from([]),
            own_fields: Arc::from([]),
            reader: 0,
        }
        .with_reader()
    }

    /// Entries read back are judged by `policy` (the layer's).
    pub(crate) fn judged_by(mut self, policy: &Policy) -> Self {
        self.policy = Arc::new(policy.for_reading());
        self.with_reader()
    }

    /// The request fields every entry must be selected by (the layer's `key_headers`).
    pub(crate) fn keyed_by(mut self, names: &[http::HeaderName]) -> Self {
        if names.is_empty() {
            return self;
        }
        self.key_headers = names.iter().map(|name| name.as_str().to_owned()).collect();
        self.with_reader()
    }

    /// The response fields the layer consumes (its tag and lifetime headers).
    pub(crate) fn consuming(mut self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.own_fields = fields.into_iter().collect();
        self.with_reader()
    }

    /// [`reader`](Self::reader) for the settings as they are now.
    fn with_reader(mut self) -> Self {
        use std::hash::{Hash, Hasher};
        // std's `DefaultHasher::new` has fixed keys: the same settings give the same
        // number in every layer of the process, and in every process of one build (the
        // number is stored with each entry). Another build may hash otherwise: its
        // entries are then judged again, which is slower, never wrong. The crate's
        // version is in it, as a later one may judge alike settings otherwise, and the
        // revision of the admission rules ([`ADMISSION_RULES`]), for builds between versions.
        let mut hasher = std::hash::DefaultHasher::new();
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        ADMISSION_RULES.hash(&mut hasher);
        self.policy.hash_reading(&mut hasher);
        self.key_headers.hash(&mut hasher);
        for name in self.own_fields.iter() {
            name.as_str().hash(&mut hasher);
        }
        self.own_fields.len().hash(&mut hasher);
        self.reader = hasher.finish();
        self
    }

    /// The settings entries read back are judged by ([`Policy::judge_stored`], key
    /// headers), as one number: what the near tier keeps for this layer it answers only
    /// to layers of the same.
    pub(crate) fn reader(&self) -> u64 {
        self.reader
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

    /// Replaces what `key` holds on `route`'s server by a fresh unique value (a purge's:
    /// only misses follow), if it is still `read` (compare-and-swap: a purge written
    /// meanwhile stays). For values no process of ours wrote (not a number), which would
    /// otherwise refuse stores for as long as they stayed. The value written, if it was.
    async fn overwrite(
        &self,
        what: &'static str,
        route: &str,
        key: &str,
        read: &Item,
    ) -> Option<u64> {
        let cas = read.cas?;
        let fresh = unique();
        let value = Bytes::from(fresh.to_string());
        let replace = self
            .backend
            .cas_by_key(route, key, value, 0, Lifetime::NEVER, cas);
        match self.timed(what, replace).await? {
            CasOutcome::Stored => Some(fresh),
            CasOutcome::Exists | CasOutcome::NotFound => None,
        }
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

    /// Gives the store epoch guarding `route` a new value: after a store that replaced an
    /// entry or an invalidation, so that near tiers that read an entry against the old
    /// value read it again; or where a lookup found none (a fresh server, an eviction,
    /// bytes that are not an epoch). A set, not an add: any new value is safe, only an
    /// unchanged one across a replacement would not be. The value, once written.
    async fn bump_epoch(&self, route: &str) -> Option<u64> {
        let bumped = self.try_bump_epoch(route).await;
        self.logged("epoch bump", bumped)
    }

    /// [`bump_epoch`](Self::bump_epoch), with the error.
    async fn try_bump_epoch(&self, route: &str) -> Result<u64, BackendError> {
        let fresh = unique();
        let value = Bytes::from(fresh.to_string());
        let key = self.epoch_key(route);
        let set = self
            .backend
            .set_by_key(route, &key, value, 0, Lifetime::NEVER);
        self.bounded(set).await.map(|()| fresh)
    }

    /// [`try_bump_epoch`](Self::try_bump_epoch) on every server, for an invalidation,
    /// whose delete reached every server: a process whose ring differs from ours (it
    /// removes failed servers and we do not, or it has noticed an outage we have not)
    /// reads the URL's entry and epoch on another server, and an epoch left unchanged
    /// there let its near tier confirm, for up to eight windows, the entry the delete
    /// removed (review SO). `Ok` when at least one server took it; one that missed it is
    /// marked down (rejoining reset, its epochs orphaned with the rest).
    async fn try_bump_epoch_everywhere(&self, route: &str) -> Result<u64, BackendError> {
        let fresh = unique();
        let value = Bytes::from(fresh.to_string());
        let key = self.epoch_key(route);
        let set = self
            .backend
            .set_on_every_server(&key, value, 0, Lifetime::NEVER);
        self.bounded_purge(set).await.map(|()| fresh)
    }

    /// [`bump_epoch`](Self::bump_epoch) once more, a timeout from now, in the background:
    /// a write that failed (timed out) may still land after the first bump, from the
    /// socket it was written to, and a first bump may itself have failed. `everywhere`:
    /// on every server, after an invalidation (see
    /// [`try_bump_epoch_everywhere`](Self::try_bump_epoch_everywhere)).
    ///
    /// Best effort, and bounded ([`Background::spawn_best_effort`]): a dead server fails
    /// every write; the full read every 8 windows still bounds what a skipped one would
    /// have shown.
    fn bump_epoch_later(&self, route: &str, everywhere: bool) {
        let (storage, route) = (self.clone(), route.to_owned());
        self.background.spawn_best_effort(async move {
            tokio::time::sleep(storage.timeout).await;
            if everywhere {
                let bumped = storage.try_bump_epoch_everywhere(&route).await;
                storage.logged("epoch bump", bumped);
            } else {
                storage.bump_epoch(&route).await;
            }
        });
    }

    /// Runs a write to every server: bounded by the backend's own timeouts (a server that
    /// does not answer is marked down, which a purge waits for), and here by
    /// [`PURGE_TIMEOUT`] at most.
    pub(crate) async fn bounded_purge<T>(
        &self,
        operation: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        // Counted before anything is written (`operation` is lazy): a request that joins
        // an unguarded flight after this is refused it (`single_flight::Mark::admits`).
        PURGES.fetch_add(1, Ordering::SeqCst);
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

/// Whether an entry was received later than [`CLOCK_SKEW`] past `now_ms`: by a clock
/// further ahead than that, or by this one before it was set back. Its age cannot be told
/// (counted from a time still to come, it would be zero until then).
pub(crate) fn received_ahead(meta: &crate::cache::entry::EntryMeta, now_ms: u64) -> bool {
    meta.stored_at_ms > now_ms.saturating_add(millis_of(CLOCK_SKEW))
}

fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn nanos_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl<B> Storage<B> {
    /// An entry read back, or `None` (a miss) when it does not decode, or when this
    /// layer's settings would not have stored it as it is ([`Policy::judge_stored`]):
    /// processes sharing a namespace may be configured apart (a rolling change, a
    /// canary), and the writer's admission is not the reader's. A field the layer keeps
    /// out (a cookie kept while the layer shared cookies would be replayed to everyone
    /// after the operator turned that off; a field a targeted `private="…"` names, stored
    /// by a process that did not read that field; a hop-by-hop field, another tool's
    /// value), a status it does not store (a `400` kept after `statuses` was narrowed to
    /// end its cache poisoning), a response its ruling directives keep out of shared
    /// caches: each is a miss, and the URL is refilled over it. A `no-cache` or
    /// `must-revalidate` by this layer's directives holds for the entry, whatever the
    /// writer's directives made of it.
    ///
    /// So is an entry stored for a request with credentials that holds its answer to them
    /// (`WWW-Authenticate`, see `answers_credentials`), an entry holding a field the layer
    /// consumes (its tag or lifetime header:
    /// stored by a process that did not read it, its tags unrecorded, its lifetime of 0
    /// not honoured), one not selected by each of the layer's key headers (stored before
    /// one was configured), and one received later than [`CLOCK_SKEW`] past this process's
    /// now: written by a process whose clock runs ahead, its age would count from a time
    /// still to come (zero until then), and a page the origin let be reused for a second
    /// was served as fresh, never revalidated, for as long as that clock was ahead and
    /// memcached kept it.
    fn decode(&self, value: Bytes) -> Option<Entry> {
        let entry = decode_entry(value)
            .inspect_err(|err| tracing::debug!(error = %err, "undecodable cache entry; miss"))
            .ok()?;
        if received_ahead(&entry.meta, stored::now_ms()) {
            tracing::debug!(
                stored_at_ms = entry.meta.stored_at_ms,
                "cache entry received past this clock's tolerated skew; miss"
            );
            return None;
        }
        let mut entry = entry;
        // Stored by a layer of these very settings, whose admission judged it as this
        // layer's would: judged again only when written by another's (a header map
        // built and `Cache-Control` parsed on every remote hit otherwise).
        let judged = if entry.meta.judged_by == self.reader {
            // Bytes edited or written by another tool keep the number: the fields no
            // layer stores are looked for all the same (a hop-by-hop field replayed
            // breaks every hit of the URL).
            let share = self.policy.shares_set_cookie();
            match entry
                .meta
                .headers
                .iter()
                .find(|(name, _)| is_never_stored(name, share))
            {
                Some((name, _)) => Err(NotServed::Field(name.clone())),
                None => Ok(StoredRuling::default()),
            }
        } else {
            self.policy
                .judge_stored(entry.meta.status, &entry.meta.headers)
        };
        match judged {
            Ok(ruling) => {
                entry.meta.no_cache |= ruling.no_cache;
                entry.meta.forbids_stale |= ruling.forbids_stale;
            }
            Err(NotServed::Field(name)) => {
                tracing::debug!(field = %name, "cache entry holds a field this layer keeps out; miss");
                return None;
            }
            Err(NotServed::Refused(reason)) => {
                tracing::debug!(
                    ?reason,
                    "cache entry is one this layer would not store; miss"
                );
                return None;
            }
        }
        // First stored for a request with credentials, yet holding that request's answer
        // to them (its `Negotiate` token: see `answers_credentials`): a build before the
        // rule, or another tool's bytes, whatever the writer's settings.
        // (Anonymous entries, most of them, skip the scan: this runs on every hit.)
        if let Some((name, _)) = entry
            .meta
            .authenticated
            .then(|| {
                entry
                    .meta
                    .headers
                    .iter()
                    .find(|(name, _)| answers_credentials(name, true))
            })
            .flatten()
        {
            tracing::debug!(field = %name, "cache entry holds one user's answer to credentials; miss");
            return None;
        }
        // Stored by a process that did not consume the field: its tags were not recorded
        // (a purge of them here would not reach it), its lifetime of 0 not honoured.
        if let Some((name, _)) = entry
            .meta
            .headers
            .iter()
            .find(|(name, _)| self.own_fields.contains(name))
        {
            tracing::debug!(field = %name, "cache entry holds a field this layer consumes; miss");
            return None;
        }
        // Stored before the key header was configured (by a process without it, during a
        // rolling change): selected by the other fields alone, one tenant's page answered
        // every tenant for as long as it lived.
        if let Some(name) = self
            .key_headers
            .iter()
            .find(|name| !entry.meta.vary.iter().any(|(named, _)| named == *name))
        {
            tracing::debug!(field = %name, "cache entry not selected by a key header; miss");
            return None;
        }
        Some(entry)
    }
}

/// The revision of the rules entries are admitted and judged by (`Policy::storable`,
/// `Policy::judge_stored`, `Admission`), in the settings number: bump it with any change
/// to what they let in. Two builds of one crate version whose rules differ (a fix deployed
/// without a version bump) then judge each other's entries again, rather than each
/// taking the other's admission for its own (review RQ's note).
const ADMISSION_RULES: u32 = 3;

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
