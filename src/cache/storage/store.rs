//! Stores: a response written by compare-and-swap over what its request's lookup saw, and
//! the store epochs that tell near tiers an entry was replaced.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::backend::{Backend, CasOutcome, Item, Lifetime};
use crate::cache::entry::{
    EntryMeta, FLAG_HTTP_ENTRY, FLAG_VARIANT_INDEX, VariantIndex, decode_index, encode_entry,
    encode_index,
};

use super::purge::Over;
use super::{
    CLOCK_SKEW, CREATED, MAX_NAME_SETS, Slot, Storage, VariantRead, nanos, nanos_of,
    parse_generation, parse_tag_mark, unique,
};

/// Compare-and-swap rounds of a variant index that find it changed since it was read (a
/// sibling variant's store) before the variant is given up: each round reads it again.
const INDEX_ROUNDS: usize = 3;

/// Where and against what an entry is stored: the URL's primary key, what the request's
/// lookup saw there (or the placeholder it put there), and the generation it was produced
/// under.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) key: String,
    pub(crate) slot: Slot,
    pub(crate) index: Option<VariantIndex>,
    /// The variant keys the lookup read and what each held: a variant stored under one
    /// replaces only that.
    pub(crate) variants: Vec<VariantRead>,
    pub(crate) generation: Option<u64>,
    /// When the request that produced the response went to the origin.
    pub(crate) requested: SystemTime,
    /// The same moment on the monotonic clock, which no one sets.
    pub(crate) sent: Instant,
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
        since: Instant,
    },
    /// Not stored: the backend failed, or nothing guards the write.
    Failed,
}

impl<B: Backend> Storage<B> {
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
    ) -> (StoreOutcome, Option<Instant>) {
        let tagged = !tags.is_empty() || !meta.tags.is_empty();
        let checked = Instant::now();
        let mut under_anothers_index = false;
        let (outcome, tags_checked) = self
            .store_checked(to, meta, body, tags, ttl, &mut under_anothers_index)
            .await;
        // Over an entry or an index (what a near tier may hold), and maybe written even
        // when it failed (half way, or its reply lost): near tiers must read it again.
        // So for a variant over a placeholder that went under an index another fill put
        // there (`index_for`), beside variants a near tier may hold; not for one that put
        // its own index there, the first fill of a varying URL, which no tier can hold
        // (an epoch written then would send every entry of its stripe a tier keeps back
        // to a full read).
        let replaced = (matches!(to.slot, Slot::Value { .. }) || under_anothers_index)
            && matches!(outcome, StoreOutcome::Stored | StoreOutcome::Failed);
        if replaced {
            let bumped = self.bump_epoch(&to.key).await.is_some();
            // Once more a timeout later: a failed store may land late, and an epoch write
            // that failed (refused, lost) left the old epoch vouching for the old entry.
            if outcome == StoreOutcome::Failed || !bumped {
                self.bump_epoch_later(&to.key, false);
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
            _ => Some(to.sent),
        };
        (outcome, cutoff)
    }

    /// Which of the requests that joined a flight may have its tagged response when it is
    /// shared but stored for nobody (a `no-store` flight): those that joined before the
    /// returned time. That is when this read of the tags began, if it shows none purged
    /// since `requested` (when the response's request went out) and, for a tag `kept`
    /// from a stored entry a 304 refreshed, the generation the entry was read under: a
    /// purge that returned before the read shows in it, as for a store (see
    /// [`store`](Self::store)). Otherwise (a purge, a mark created or rewritten since, a
    /// read that failed) `requested`: only those that joined before the request went out,
    /// whose lookups came before any purge that could touch the response; those alone too
    /// when the wall clock was set back since the request went out. Times returned are
    /// on the monotonic clock, as followers' joins are.
    pub(crate) async fn share_cutoff(
        &self,
        route: &str,
        tags: &[(String, Option<u64>)],
        requested: SystemTime,
        sent: Instant,
    ) -> Instant {
        // As for a store: the request's time cannot be compared with purges since.
        if set_back_since(requested, sent) {
            return sent;
        }
        let checked = Instant::now();
        let tag_keys: Vec<String> = tags.iter().map(|(tag, _)| self.tag_key(tag)).collect();
        let keys: Vec<&str> = tag_keys.iter().map(String::as_str).collect();
        let read = self.backend.get_many_by_key(route, &keys);
        let Some(now) = self.timed("share check", read).await else {
            return sent;
        };
        let requested_ns = nanos(requested);
        let future = nanos(SystemTime::now()).saturating_add(nanos_of(CLOCK_SKEW));
        let unpurged = tags.iter().zip(&tag_keys).all(|((_, kept), key)| {
            match (now.get(key.as_str()).and_then(parse_tag_mark), kept) {
                (Some((value, _)), Some(kept)) => value == *kept,
                (Some((at, Some(_))), None) if at > future => false,
                (Some((at, _)), None) => !self.after_request(at, requested_ns, sent),
                (None, _) => false,
            }
        });
        if unpurged { checked } else { sent }
    }

    /// [`store`](Self::store); and whether the tags were checked.
    async fn store_checked(
        &self,
        to: &Target,
        meta: &EntryMeta,
        body: &[u8],
        tags: &[String],
        ttl: Duration,
        under_anothers_index: &mut bool,
    ) -> (StoreOutcome, bool) {
        let failed = (StoreOutcome::Failed, false);
        let Some(generation) = to.generation else {
            tracing::debug!(key = %to.key, "no namespace generation read before the request; not stored");
            return failed;
        };
        let route = to.key.as_str();
        let mut tag_names: Vec<String> = if tags.is_empty() {
            meta.tags.iter().map(|(tag, _)| tag.clone()).collect()
        } else {
            tags.to_vec()
        };
        // The tags the entry will carry; those after them are only checked: a refresh whose
        // 304 names other tags keeps a body stored under the entry's, and a purge of one of
        // those since the request went out is a purge of that body, whatever the 304 says.
        let carried = tag_names.len();
        if !tags.is_empty() {
            let dropped = meta.tags.iter().map(|(tag, _)| tag);
            let dropped: Vec<String> = dropped.filter(|t| !tags.contains(t)).cloned().collect();
            tag_names.extend(dropped);
        }
        let tag_keys: Vec<String> = tag_names.iter().map(|tag| self.tag_key(tag)).collect();
        let mut keys: Vec<&str> = vec![route, &self.generation_key];
        if !tag_names.is_empty() {
            keys.push(&self.tag_purges_key);
        }
        keys.extend(tag_keys.iter().map(String::as_str));
        // Tag purge times are compared with the request's time on the wall clock: set back
        // since the request went out (more than the tolerated skew), it timed the request
        // later than any purge since, which the store would outlive. Refused (a lost store,
        // once); followers that joined before the request went out may still have it.
        if !tag_names.is_empty() && set_back_since(to.requested, to.sent) {
            tracing::debug!(key = %to.key, "the clock was set back since the request went out; not stored");
            return (StoreOutcome::Superseded { since: to.sent }, false);
        }
        let read = self.backend.get_many_by_key(route, &keys);
        let Some(mut now) = self.timed("store check", read).await else {
            return failed;
        };
        // The namespace's tag-purge mark, asked only of a tag whose generation tells
        // nothing of its purges (evicted, created since); once true, the store returns.
        let mark = now.get(&*self.tag_purges_key).cloned();
        let superseded = |since: Instant| (StoreOutcome::Superseded { since }, true);
        // Tags: a purge newer than the request, or (for a refresh) another generation.
        let mut resolved = Vec::with_capacity(tag_names.len());
        let requested_ns = nanos(to.requested);
        // Whether the read shows every tag purge since the request went out: not when a
        // tag's generation was created after it (or is created now). A flush, a restart
        // or an eviction took its purges with it, and followers that joined after such a
        // purge must not take the read as proof that none came.
        let mut vouched = true;
        // A purge time past this is no time on a clock within the tolerated skew of ours.
        let future = nanos(SystemTime::now()).saturating_add(nanos_of(CLOCK_SKEW));
        for (position, (tag, key)) in tag_names.iter().zip(&tag_keys).enumerate() {
            let item = now.get(key.as_str());
            let (value, purged_at) = match item.and_then(parse_tag_mark) {
                // A purge or creation by a process whose clock runs ahead, or bytes that
                // are no mark: every store of the tag's pages was refused until that clock
                // (a creation counts as during every fill, and asks the tag-purge mark,
                // which tells of a purge of any tag within the skew: review TD), or for as
                // long as the bytes stayed, read by every fill. The purge (or creation),
                // whenever it was, came before this read: the mark becomes a purge now, on
                // this process's clock, and later fills are stored.
                Some((at, _)) if at > future => {
                    self.repair_tag_mark(route, key, item).await;
                    return superseded(to.sent);
                }
                Some((created, None)) => {
                    if self.after_request(created, requested_ns, to.sent) {
                        vouched = false;
                        // Created after the request went out: maybe anew, after an
                        // eviction took a purge made during the fill with it.
                        if self
                            .tag_purged_since(route, mark.as_ref(), requested_ns, to.sent)
                            .await
                        {
                            tracing::debug!(key = %to.key, tag, "tag created during the fill, after a tag purge; not stored");
                            return superseded(to.sent);
                        }
                    }
                    (created, None)
                }
                Some(mark) => mark,
                None if item.is_some() => {
                    self.repair_tag_mark(route, key, item).await;
                    return superseded(to.sent);
                }
                None => {
                    vouched = false;
                    // First use of the tag on this server, or an eviction, which may have
                    // taken a purge made during the fill with it: stored only if no tag
                    // was purged here since the request went out. Created either way.
                    let since = self
                        .tag_purged_since(route, mark.as_ref(), requested_ns, to.sent)
                        .await;
                    let fresh = unique();
                    let add = self.backend.add_by_key(
                        route,
                        key,
                        Bytes::from(format!("{fresh}{CREATED}")),
                        0,
                        Lifetime::NEVER,
                    );
                    match self.timed("tag generation add", add).await {
                        Some(true) if since => {
                            self.local_purges.record(fresh);
                            tracing::debug!(key = %to.key, tag, "tag generation missing, a tag purged during the fill; not stored");
                            return superseded(to.sent);
                        }
                        Some(true) => {
                            // On this process's clock: later fills here need no margin.
                            self.local_purges.record(fresh);
                            (fresh, None)
                        }
                        // Created or purged at this very moment by someone else.
                        Some(false) => return superseded(to.sent),
                        None => return failed,
                    }
                }
            };
            let kept = meta.tags.iter().find(|(t, _)| t == tag).map(|(_, g)| *g);
            let purged_since = match (kept, purged_at) {
                // A refresh keeps the generations its entry was read under.
                (Some(kept), _) if tags.is_empty() => value != kept,
                (_, Some(at)) => self.after_request(at, requested_ns, to.sent),
                (_, None) => false,
            };
            if purged_since {
                tracing::debug!(key = %to.key, tag, "tag purged during the fill; not stored");
                // Followers that joined before the request went out may have it; not those
                // that joined before the purge found: a tag keeps only its latest purge's
                // time, and an earlier purge may have come (and returned) between the
                // request and that one, with followers joining after it.
                return superseded(to.sent);
            }
            if position < carried {
                resolved.push((tag.clone(), value));
            }
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
        // Admitted by this layer's settings: a reader of the same need not judge it again.
        meta.judged_by = self.reader;
        let primary = now.remove(route);
        let varies = !meta.vary.is_empty();
        let Some(primary_cas) = self.guarded(to, primary.as_ref(), varies) else {
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
        if !varies {
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
        let index = match self
            .index_for(
                to,
                &meta.canonical_key,
                names,
                primary,
                primary_cas,
                under_anothers_index,
            )
            .await
        {
            Ok(index) => index,
            Err(StoreOutcome::Overtaken) => return overtaken,
            Err(_) => return failed_checked,
        };
        let variant_key = self.variant_key(&meta.canonical_key, index.id, &meta.vary);
        // Replaces only what its lookup read there, as a plain entry does (its placeholder,
        // or the entry it refreshes): nothing (`add`), or that value (`cas`). Two fills or
        // refreshes of one variant in flight (two processes' misses of it, or reloads, or
        // a background revalidation beside one) each found the index unchanged, and the
        // one whose answer came back last was written last by a plain `set`, however old:
        // memcached went back to an older response after a newer one had been answered
        // (review TF). Now the first to land is kept. So for a first fill, whose lookup
        // read no index: under an index whose id is its placeholder's token (unique to
        // that placeholder), only a fill alongside it under the same token (a lease wait
        // run out, leases off) can have written, and the first to land is kept, as over a
        // plain placeholder (review TK). Another key the lookup did not read (the response
        // names another set of fields) is written as it comes.
        let first_fill = matches!(
            to.slot,
            Slot::Placeholder { placeholder, .. } if placeholder.token == index.id
        );
        let read = to.variants.iter().find(|read| read.key == variant_key);
        let read = read
            .map(|read| read.cas)
            .or_else(|| first_fill.then_some(None));
        let written = match read {
            Some(Some(cas)) => {
                let cas = self.backend.cas_by_key(
                    route,
                    &variant_key,
                    bytes,
                    FLAG_HTTP_ENTRY,
                    lifetime,
                    cas,
                );
                match self.timed("variant store", cas).await {
                    Some(CasOutcome::Stored) => Some(true),
                    Some(CasOutcome::Exists | CasOutcome::NotFound) => Some(false),
                    None => None,
                }
            }
            Some(None) => {
                let add =
                    self.backend
                        .add_by_key(route, &variant_key, bytes, FLAG_HTTP_ENTRY, lifetime);
                self.timed("variant store", add).await
            }
            None => {
                let set =
                    self.backend
                        .set_by_key(route, &variant_key, bytes, FLAG_HTTP_ENTRY, lifetime);
                self.timed("variant store", set).await.map(|()| true)
            }
        };
        match written {
            Some(true) => (StoreOutcome::Stored, vouched),
            Some(false) => overtaken,
            None => failed_checked,
        }
    }

    /// The variant index a variant of `names` goes under, written first when it does not
    /// list `names` first (or is not there yet: where the request's placeholder, or the
    /// stale entry it refreshes, was). `primary` is what the store check read in the
    /// primary key, `cas` its CAS value once [`guarded`](Self::guarded).
    ///
    /// A new index put over a placeholder takes the placeholder's token as its id: a fill
    /// that went out alongside this one, under the same token (leases off, or a lease wait
    /// that ran out), finds that index where its placeholder was, knows that it replaced
    /// the placeholder with no purge since (a purge deletes it; an index written after one
    /// stands over another placeholder, of another token), and stores its variant under it
    /// rather than being refused (review RV: the second of two first fills of a URL's
    /// variants was lost). An index changed between the read and the compare-and-swap (a
    /// sibling variant's name set added) is read again and merged, a few rounds at most.
    /// `under_anothers_index` is set once the variant may go under an index this call did
    /// not write over its request's own placeholder (or entry).
    async fn index_for(
        &self,
        to: &Target,
        canonical: &str,
        names: Vec<String>,
        mut primary: Option<Item>,
        mut cas: u64,
        under_anothers_index: &mut bool,
    ) -> Result<VariantIndex, StoreOutcome> {
        let route = to.key.as_str();
        for round in 0..INDEX_ROUNDS {
            // An index of another URL (an md5 collision, another writer's bytes) is no
            // index of this one: every lookup of the URL refuses it, and a variant stored
            // under it would never be found. Replaced, as a plain entry would be.
            let existing = primary
                .as_ref()
                .filter(|item| item.flags == FLAG_VARIANT_INDEX)
                .and_then(|item| decode_index(&item.value).ok())
                .filter(|index| index.canonical_key == canonical);
            *under_anothers_index |= round > 0 || existing.is_some();
            let mut index = match existing {
                Some(index) if index.name_sets.first() == Some(&names) => return Ok(index),
                Some(index) => index,
                None => VariantIndex {
                    canonical_key: canonical.to_owned(),
                    name_sets: Vec::new(),
                    id: match to.slot {
                        Slot::Placeholder { placeholder, .. } => placeholder.token,
                        _ => unique(),
                    },
                },
            };
            // This name set first (bounded, the least recent set goes).
            index.name_sets.retain(|set| *set != names);
            index.name_sets.insert(0, names.clone());
            index.name_sets.truncate(MAX_NAME_SETS);
            let encoded = encode_index(&index).map_err(|_| StoreOutcome::Failed)?;
            // The index outlives any one variant; memcached's LRU ages it out.
            let write = self
                .backend
                .cas(route, encoded, FLAG_VARIANT_INDEX, Lifetime::NEVER, cas);
            match self.timed("index store", write).await {
                Some(CasOutcome::Stored) => return Ok(index),
                Some(CasOutcome::NotFound) => return Err(StoreOutcome::Overtaken),
                Some(CasOutcome::Exists) => {}
                None => return Err(StoreOutcome::Failed),
            }
            // Changed since the check read it: still what this request's lookup saw (the
            // same index, or the one over its placeholder)? Then merged into it.
            let [now] = self
                .read("index read", route, &[route])
                .await
                .ok_or(StoreOutcome::Failed)?;
            cas = self
                .guarded(to, now.as_ref(), true)
                .ok_or(StoreOutcome::Overtaken)?;
            primary = now;
        }
        tracing::debug!(key = %to.key, "variant index contended; not stored");
        Err(StoreOutcome::Overtaken)
    }

    /// Whether a tag purge may have come on `route`'s server after `requested_ns`, by the
    /// namespace's tag-purge mark as the store check read it (`read`). Read by stores
    /// only, so no lookup reads a key more. The mark is
    /// - created with the namespace's generation on that server (`ensure_generation`): no
    ///   tag purge since, which this store's own generation check (the one its lookup
    ///   read) covers back to before its request;
    /// - the time of the latest tag purge there (a [`unique`] stamp, written by every tag
    ///   purge before the tag's own generation), with the margin of a clock not ours;
    /// - or nothing usable (evicted, flushed, bytes that are no mark, a stamp from a clock
    ///   too far ahead): it may hide a purge, so true, and a mark is made now, as a purge
    ///   would make it, so fills requested from now on can tell. The worst an eviction
    ///   costs is a store.
    async fn tag_purged_since(
        &self,
        route: &str,
        read: Option<&Item>,
        requested_ns: u64,
        sent: Instant,
    ) -> bool {
        let future = nanos(SystemTime::now()).saturating_add(nanos_of(CLOCK_SKEW));
        match read.and_then(parse_tag_mark) {
            Some((_, None)) => return false,
            Some((_, Some(at))) if at <= future => {
                return self.after_request(at, requested_ns, sent);
            }
            _ => {}
        }
        let key = &*self.tag_purges_key;
        let made = match read {
            Some(item) => {
                self.overwrite("tag purge mark repair", route, key, item)
                    .await
            }
            None => {
                let fresh = unique();
                let value = Bytes::from(fresh.to_string());
                let add = self
                    .backend
                    .add_by_key(route, key, value, 0, Lifetime::NEVER);
                self.timed("tag purge mark add", add)
                    .await
                    .and_then(|added| added.then_some(fresh))
            }
        };
        if let Some(made) = made {
            // On this process's clock: its later fills need no margin.
            self.local_purges.record(made);
        }
        true
    }

    /// Whether a tag purge (or creation) stamped `at` may have come after a request that
    /// went out at `requested_ns` (wall clock) and `sent` (monotonic). One made here is
    /// compared on the monotonic clock, exactly, whatever steps the wall clock took
    /// meanwhile (see [`LocalPurges`](super::LocalPurges)), and what its write replaced
    /// with the margin (it stands for those purges too, maybe another process's, later
    /// than the request); another process's stamp with the margin of a clock not ours.
    fn after_request(&self, at: u64, requested_ns: u64, sent: Instant) -> bool {
        let margin = |at: u64| at.saturating_add(nanos_of(CLOCK_SKEW)) > requested_ns;
        match self.local_purges.made(at) {
            Some(made) if made.at >= sent => true,
            // Sent while its write was under way: another process's purge, begun after
            // the request (its clock a little behind), may have found this value past its
            // stamp once it landed and stopped there, so it stands for that purge too,
            // whose time is at most this value (review TA).
            Some(made) if made.landed > sent => margin(at),
            Some(made) => match made.over {
                Over::Nothing => false,
                // What it replaced is no purge of ours: compared as another process's.
                // Every value replaced is at most this one, so the margin covers them
                // all. (An earlier purge of ours gets the margin too: a store lost when
                // two purges came within a second of the request.)
                Over::Purge(replaced) => margin(replaced),
                // Under way: it may be landing over a purge later than the request,
                // whose time is not known yet; at most this one's.
                Over::Unknown => margin(at),
            },
            None => margin(at),
        }
    }

    /// Replaces a tag's mark that tells no usable purge time (see
    /// [`store`](Self::store)) by a purge now, if it is still what was read.
    async fn repair_tag_mark(&self, route: &str, key: &str, read: Option<&Item>) {
        let Some(read) = read else {
            return;
        };
        if let Some(purged) = self.overwrite("tag mark repair", route, key, read).await {
            tracing::debug!(key, "a tag mark no clock here could have written, replaced");
            // On this process's clock: its later fills need no margin.
            self.local_purges.record(purged);
        }
    }

    /// The CAS value to replace `now` with, if it is what the request's lookup saw (its own
    /// placeholder, the entry it refreshed, or the index its variant belongs to). A store of
    /// a variant (`varies`) also goes under the index put over its own placeholder by a fill
    /// that went out alongside it ([`index_for`](Self::index_for)).
    fn guarded(&self, to: &Target, now: Option<&Item>, varies: bool) -> Option<u64> {
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
            (
                Slot::Placeholder {
                    placeholder: mine, ..
                },
                Slot::Value { .. },
            ) if varies => {
                // The index took the token of the placeholder it replaced as its id: that
                // was this request's, and no purge came since (it would be gone).
                let index = decode_index(&now.value).ok()?;
                (now.flags == FLAG_VARIANT_INDEX && index.id == mine.token).then_some(cas)
            }
            _ => None,
        }
    }
}

/// Whether the wall clock was set back by more than [`CLOCK_SKEW`] since a request went out
/// at `requested` (by it) and `sent` (by the monotonic clock, which nobody sets).
pub(crate) fn set_back_since(requested: SystemTime, sent: Instant) -> bool {
    let expected = requested.checked_add(sent.elapsed());
    let latest = SystemTime::now().checked_add(CLOCK_SKEW);
    matches!((expected, latest), (Some(expected), Some(latest)) if expected > latest)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use http::Request;

    use super::{StoreOutcome, Target};
    use crate::backend::{Backend, Lifetime, MemoryBackend};
    use crate::cache::MemcacheLayer;
    use crate::cache::shared::Shared;
    use crate::cache::shared::testing::{entry, exchange_for, get, shared};
    use crate::cache::storage::{Placed, Slot, unique};

    /// Stores a response tagged `news` for `request` over a placeholder of its own, as a
    /// fill whose request went out at `requested` (wall clock) and `sent` (monotonic) would.
    async fn store_tagged(
        shared: &Shared<MemoryBackend>,
        request: &Request<()>,
        requested: SystemTime,
        sent: Instant,
    ) -> StoreOutcome {
        let ex = exchange_for(shared, request).await;
        let until = SystemTime::now() + Duration::from_secs(5);
        let Placed::Mine(placeholder, _) =
            shared.storage.place(&ex.plan.key, unique(), until).await
        else {
            panic!("no placeholder placed")
        };
        let to = Target {
            key: ex.plan.key.clone(),
            slot: Slot::Placeholder {
                cas: 0,
                placeholder,
            },
            index: None,
            variants: Vec::new(),
            generation: ex.found.generation,
            requested,
            sent,
        };
        let tags = ["news".to_owned()];
        let (stored, _) = shared
            .store(&to, &tags, &entry(&ex, &[]), Duration::from_secs(60))
            .await;
        stored
    }

    /// Review SL: a process whose clock ran an hour ahead (a bad NTP source, a VM resumed
    /// with a stale offset) and was then set right kept giving stamps from the wrong clock
    /// (strictly increasing: the last one plus one) until its clock caught up, an hour on.
    /// Each tag it purged in that hour carried a purge time an hour in every clock's
    /// future: its own fills of the tag's pages were refused (a "purge" after their
    /// request), and the repair of such a mark wrote another stamp from that hour, so for
    /// the whole hour none of those pages was stored by it, and every other process,
    /// finding the mark from its future, rewrote it and lost a store each time.
    #[tokio::test]
    async fn a_tag_purged_after_the_clock_was_set_back_leaves_its_pages_cacheable() {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        crate::generation::testing::clock_set_back(Duration::from_secs(3600));
        shared.storage.purge_tag("news").await.unwrap();
        let request = get("http://site.example/set-back");
        let outcome = store_tagged(&shared, &request, SystemTime::now(), Instant::now()).await;
        assert_eq!(outcome, StoreOutcome::Stored);
    }

    /// Review SL: a fill whose request went out before the wall clock was set back (by more
    /// than the tolerated skew) carries a request time from before the step, later than any
    /// purge made after it: a purge of its tag while it was under way, after the step, was
    /// taken for one before the request, and the response it purged was stored.
    #[tokio::test]
    async fn a_fill_sent_before_the_clock_was_set_back_is_not_stored_over_a_tag_purge() {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/straddle");
        // Timed an hour ahead: the clock was set back an hour since it went out.
        let requested = SystemTime::now() + Duration::from_secs(3600);
        let sent = Instant::now();
        shared.storage.purge_tag("news").await.unwrap();
        let outcome = store_tagged(&shared, &request, requested, sent).await;
        assert!(
            matches!(outcome, StoreOutcome::Superseded { .. }),
            "{outcome:?}"
        );
    }

    /// Review SM: a purge made here is compared with a fill's request time with no margin
    /// (the same clock), yet the wall clock is set back by less than the tolerated second
    /// unnoticed (an NTP step is from 128 ms). A tag purged here half a second after the
    /// request went out, the clock set back half a second between them, stamped a time
    /// before the request's: the purge that returned was taken for one before it, and
    /// the response it purged was stored over it, a hit until it expired.
    #[tokio::test]
    async fn a_tag_purged_here_after_a_small_set_back_refuses_a_fill_sent_before_it() {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/small-step");
        // Timed half a second ahead: the clock was set back that much since it went out.
        let requested = SystemTime::now() + Duration::from_millis(500);
        let sent = Instant::now();
        shared.storage.purge_tag("news").await.unwrap();
        let outcome = store_tagged(&shared, &request, requested, sent).await;
        assert!(
            matches!(outcome, StoreOutcome::Superseded { .. }),
            "{outcome:?}"
        );
    }

    /// Review SM: the clock set back an hour while a fill was under way (a bad NTP source,
    /// an operator) and forward again before its store (the step undone): a tag purged
    /// here in between was stamped an hour before the request's time, and the wall clock,
    /// moved as much as the monotonic one overall, showed no step back at the store
    /// (`set_back_since`). The purge that returned was taken for one an hour before the
    /// request, and the response it purged was stored.
    #[tokio::test]
    async fn a_tag_purged_here_while_the_clock_was_set_back_refuses_a_fill_sent_before_it() {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/back-and-forth");
        let (requested, sent) = (SystemTime::now(), Instant::now());
        // The purge, made here while the clock read an hour behind: its stamp is that
        // time (stamps restart from a clock set back), written as `purge_tag` writes it.
        let stamp = super::nanos(SystemTime::now() - Duration::from_secs(3600));
        shared.storage.local_purges.record(stamp);
        let storage = &shared.storage;
        let key = storage.tag_key("news");
        let value = bytes::Bytes::from(stamp.to_string());
        let written = storage.backend().set(&key, value, 0, Lifetime::NEVER);
        written.await.unwrap();
        let outcome = store_tagged(&shared, &request, requested, sent).await;
        assert!(
            matches!(outcome, StoreOutcome::Superseded { .. }),
            "{outcome:?}"
        );
    }

    /// Review SM: as for a store, a flight's response stored for nobody (`no-store`) is
    /// shared only with followers that joined before its request went out when a tag of
    /// it was purged here since, whatever a small step back of the clock made of the
    /// purge's time.
    #[tokio::test]
    async fn a_shared_response_is_cut_off_at_its_request_by_a_tag_purged_here_after_a_small_set_back()
     {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/small-step-shared");
        let ex = exchange_for(&shared, &request).await;
        let requested = SystemTime::now() + Duration::from_millis(500);
        let sent = Instant::now();
        shared.storage.purge_tag("news").await.unwrap();
        let tags = [("news".to_owned(), None)];
        let cutoff = shared
            .storage
            .share_cutoff(&ex.plan.key, &tags, requested, sent)
            .await;
        assert_eq!(cutoff, sent);
    }
}
