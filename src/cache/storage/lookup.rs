//! Finding a request's stored response: the entry (or its variant), the namespace and tag
//! generations that must still vouch for it, and what a near tier remembers of them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use crate::backend::{Backend, Item, Lifetime};
use crate::cache::entry::{
    Entry, EntryMeta, FLAG_HTTP_ENTRY, FLAG_VARIANT_INDEX, VariantIndex, decode_index,
};
use crate::cache::near::{Basis, Mark, NearCache, Seen};
use crate::cache::stored;

use super::{CREATED, Slot, Storage, parse_generation, placements, unique};

/// What a lookup found.
pub(crate) enum Lookup {
    Found(Found),
    /// The backend failed or timed out.
    Unavailable,
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
    /// The variant keys the lookup read and what each held: a store of the variant
    /// under one of them replaces only what the lookup saw there ([`Storage::store`]).
    pub(crate) variants: Vec<VariantRead>,
}

/// A variant key a lookup read, and what it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VariantRead {
    pub(crate) key: String,
    /// `None`: nothing; else the CAS value of what was there (an entry this request
    /// selects or not, or bytes that are no entry).
    pub(crate) cas: Option<u64>,
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
            variants: Vec::new(),
        }
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

impl<B: Backend> Storage<B> {
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
        let Some((entry, index, variants)) = self
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
            variants,
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

    /// The entry (or the variant this request selects) in what the primary key held, the
    /// URL's variant index, and the variant keys read; `None` when the variant read
    /// failed.
    async fn entry_of(
        &self,
        primary: Option<Item>,
        canonical: &str,
        primary_key: &str,
        request_headers: &HeaderMap,
    ) -> Option<(Option<Entry>, Option<VariantIndex>, Vec<VariantRead>)> {
        let Some(item) = primary else {
            return Some((None, None, Vec::new()));
        };
        match item.flags {
            FLAG_HTTP_ENTRY => Some((self.decode(item.value), None, Vec::new())),
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
                    // What each key held (a store replaces only that), read without
                    // its CAS value: unknown, not remembered.
                    let reads = keys
                        .into_iter()
                        .zip(&variants)
                        .filter_map(|(key, item)| match item {
                            None => Some(VariantRead { key, cas: None }),
                            Some(item) => item.cas.map(|cas| VariantRead {
                                key,
                                cas: Some(cas),
                            }),
                        })
                        .collect();
                    let entry = variants
                        .into_iter()
                        .flatten()
                        .filter(|item| item.flags == FLAG_HTTP_ENTRY)
                        .filter_map(|item| self.decode(item.value))
                        .filter(|entry| stored::selects(&entry.meta, canonical, request_headers))
                        .reduce(|best, entry| {
                            if entry.meta.vary.len() > best.meta.vary.len() {
                                entry
                            } else {
                                best
                            }
                        });
                    Some((entry, Some(index), reads))
                }
                _ => Some((None, None, Vec::new())),
            },
            _ => Some((None, None, Vec::new())),
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

    /// The namespace generation on the server of `route`, created when absent.
    async fn ensure_generation(&self, route: &str) -> Option<u64> {
        let key = &*self.generation_key;
        let fresh = unique();
        // A namespace new on this server (a cold server, a flush, an eviction): its
        // tag-purge mark starts with it, as created (no tag purge since), or a first fill
        // would take the mark's absence for an eviction that may hide a tag purge
        // (`Storage::tag_purged_since`) and write a purge nobody made, refusing every
        // tagged fill requested before it. Added before the generation: a fill can only
        // have read a generation written after it, so never finds one without its mark
        // (written after, it was missing in between to fills that read the new one).
        // Added: a purge's mark stays. Added when another request creates the generation
        // meanwhile as well: that generation is as new, and a tag purge since would have
        // written the mark first, so the add finds it.
        let value = Bytes::from(format!("{fresh}{CREATED}"));
        let add = self
            .backend
            .add_by_key(route, &self.tag_purges_key, value, 0, Lifetime::NEVER);
        let _ = self.timed("tag purge mark add", add).await;
        let value = Bytes::from(fresh.to_string());
        let add = self
            .backend
            .add_by_key(route, key, value, 0, Lifetime::NEVER);
        if self.timed("generation add", add).await? {
            return Some(fresh);
        }
        let [generation] = self.read("generation get", route, &[key]).await?;
        let item = generation?;
        if let Some(generation) = parse_generation(&item) {
            return Some(generation);
        }
        // Bytes that are no generation (another tool's, a corrupt write): read on every
        // lookup they never age out, and nothing would be stored on this server again.
        // A fresh generation, as a namespace purge would write.
        self.overwrite("generation repair", route, key, &item).await
    }
}
