//! Purges and invalidations: a URL's primary key removed, a namespace's or a tag's
//! generation bumped on every server.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use crate::backend::{Advanced, Backend, BackendError, Lifetime};

use super::{CLOCK_SKEW, Storage, unique};

/// The generations this process gave tags by purging (or creating) them, for as long as
/// the clock skew margin, each with when it was recorded on the monotonic clock: a fill
/// here compares when its request went out with that, so needs no margin (a page purged
/// and refilled at once by one process is stored again at once, and its followers get
/// it). Not with the stamp, a wall-clock time: a step back of the clock by less than the
/// margin (an NTP step) went unnoticed, and a purge after the request, stamped before
/// it, let the response it purged be stored (review SM). Recorded once the stamp is
/// taken, never before: a request that went out in between counts as after the purge.
///
/// A purge's write advances each server's value past what it held
/// ([`Backend::advance_on_every_server`]): the value written may be another than the
/// stamp, and stands for the purges it advanced over too, maybe another process's that
/// came after a fill here went out (and returned before the fill's store). So each value
/// is kept with what it replaced ([`Over`]): the instant is this purge's (taken with the
/// stamp, before anything was written, as above), and what it replaced is compared as
/// another process's purge, with the margin (review SX). And a request that went out
/// while the write was under way is compared with the value itself, with the margin:
/// another process's purge begun after the request, stamped by a clock a little behind,
/// may have read the key before the value landed and found it past its stamp after,
/// and stopped there (its advance settled by this value, which then stands for it too:
/// review TA).
#[derive(Default)]
pub(crate) struct LocalPurges(Mutex<Records>);

/// [`LocalPurges`]' records in the order made, and the latest of each value by value: a
/// tagged store asks for each of its tags' values, most of them made by no purge here,
/// and a scan of the whole record for each (4096 of them once an origin named that many
/// new tags within the margin) held the lock for as long (review TD).
#[derive(Default)]
struct Records {
    in_order: VecDeque<Made>,
    latest: HashMap<u64, Made>,
}

/// A value this process wrote, and when (see [`LocalPurges`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Made {
    value: u64,
    /// When the purge (or creation) that wrote it began, once its stamp was taken.
    pub(crate) at: Instant,
    /// When its write was known to have landed (for a creation, `at`): a request that
    /// went out before may be followed by another process's purge that this value stands
    /// for (see [`LocalPurges`]).
    pub(crate) landed: Instant,
    pub(crate) over: Over,
}

/// What a value this process wrote replaced, besides its own purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Over {
    /// Nothing that was a purge: created where there was none (an `add`), or written
    /// over bytes that told no usable time.
    Nothing,
    /// At most this purge time (the highest replaced on any server).
    Purge(u64),
    /// Not known yet: the write is under way, and may be landing over a purge made
    /// after this one began.
    Unknown,
}

impl LocalPurges {
    /// Most purges remembered: older ones get the margin, which is only a lost store.
    const MAX: usize = 4096;

    /// A value created or written here, over nothing that was a purge.
    pub(super) fn record(&self, generation: u64) {
        let now = Instant::now();
        self.push(generation, now, now, Over::Nothing);
    }

    /// A purge's stamp, about to be written: when it began (returned, for
    /// [`written`](Self::written)).
    fn begin(&self, stamp: u64) -> Instant {
        let at = Instant::now();
        self.push(stamp, at, at, Over::Unknown);
        at
    }

    /// What the purge stamped `stamp` and begun `at` left: the stamp, and the value
    /// where it differs, each over what it absorbed.
    fn written(&self, stamp: u64, at: Instant, advanced: Advanced) {
        let over = advanced.absorbed.map_or(Over::Nothing, Over::Purge);
        let landed = Instant::now();
        self.push(stamp, at, landed, over);
        if advanced.value != stamp {
            self.push(advanced.value, at, landed, over);
        }
    }

    fn push(&self, value: u64, at: Instant, landed: Instant, over: Over) {
        let mut records = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Records { in_order, latest } = &mut *records;
        while in_order
            .front()
            .is_some_and(|made| made.at.elapsed() > CLOCK_SKEW)
            || in_order.len() >= Self::MAX
        {
            let Some(oldest) = in_order.pop_front() else {
                break;
            };
            // Unless a later record of the same value replaced it there.
            if latest
                .get(&oldest.value)
                .is_some_and(|kept| *kept == oldest)
            {
                latest.remove(&oldest.value);
            }
        }
        let made = Made {
            value,
            at,
            landed,
            over,
        };
        in_order.push_back(made);
        latest.insert(value, made);
    }

    /// When `generation` was written here and over what, if it was (and is still
    /// remembered): the latest record of it.
    pub(super) fn made(&self, generation: u64) -> Option<Made> {
        let records = self.0.lock().unwrap_or_else(|p| p.into_inner());
        records.latest.get(&generation).copied()
    }
}

impl<B: Backend> Storage<B> {
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
        // On every server too, as the delete: see `try_bump_epoch_everywhere`.
        let bumped = self.try_bump_epoch_everywhere(primary_key).await;
        if deleted.is_err() || bumped.is_err() {
            self.bump_epoch_later(primary_key, true);
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
        // The mark first: a fill that finds the tag's generation evicted (after this
        // purge, or before it, and created since) is then refused by the mark. Bumped even
        // when the mark failed (its deadline passed, one server hung, after the others
        // took it): the servers that answer purge the tag's pages, as before the mark;
        // the caller learns of the failure all the same.
        let marked = self.write_fresh(&self.tag_purges_key.clone()).await;
        let bumped = self.bump(&key).await;
        let bumped = marked.and(bumped);
        if let Some(near) = &self.near {
            near.forget_tag(tag);
        }
        bumped
    }

    async fn bump(&self, key: &str) -> Result<(), BackendError> {
        self.advance_everywhere(key).await?;
        self.stats.record_invalidation();
        Ok(())
    }

    /// The time of this tag purge (a fresh [`unique`] stamp) as the namespace's tag-purge
    /// mark on every server (no purge of its own, so not counted as one).
    async fn write_fresh(&self, key: &str) -> Result<(), BackendError> {
        self.advance_everywhere(key).await
    }

    /// Advances `key` on every server to a fresh stamp at least, and past what it held (a
    /// max-register): a purge whose write lands after a later purge's does not set its
    /// time back (review SX). Recorded as this process's (see [`LocalPurges`]): its fills
    /// are ordered with it on the monotonic clock, with what it advanced over by the
    /// margin.
    async fn advance_everywhere(&self, key: &str) -> Result<(), BackendError> {
        let stamp = unique();
        let began = self.local_purges.begin(stamp);
        let write = self
            .backend
            .advance_on_every_server(key, stamp, Lifetime::NEVER);
        let advanced = self.bounded_purge(write).await?;
        self.local_purges.written(stamp, began, advanced);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tag an origin names is created on its first fill, and recorded: a stream of
    /// new tags (a crawl of pages tagged by product) must not grow the record without
    /// bound, and the latest values stay (review TD).
    #[test]
    fn the_values_remembered_stay_bounded_under_many_distinct_tags() {
        let purges = LocalPurges::default();
        for value in 0..3 * LocalPurges::MAX as u64 {
            purges.record(value);
        }
        let records = purges.0.lock().unwrap_or_else(|p| p.into_inner());
        let (held, indexed) = (records.in_order.len(), records.latest.len());
        drop(records);
        assert!(held <= LocalPurges::MAX, "{held}");
        assert!(indexed <= held, "{indexed} indexed of {held}");
        let last = 3 * LocalPurges::MAX as u64 - 1;
        assert!(purges.made(last).is_some());
        assert!(purges.made(0).is_none());
    }

    /// A value written again is found by its latest record once the first is evicted.
    #[test]
    fn a_value_written_again_outlives_its_first_record() {
        let purges = LocalPurges::default();
        purges.record(7);
        for value in 100..100 + LocalPurges::MAX as u64 - 2 {
            purges.record(value);
        }
        purges.record(7);
        let again = purges.made(7).map(|made| made.at);
        // Evicts the first record of 7 (and one more), not the second.
        purges.record(1);
        purges.record(2);
        assert!(purges.made(100).is_none(), "the oldest was not evicted");
        assert_eq!(purges.made(7).map(|made| made.at), again);
    }

    /// The index answers exactly what the scan it replaced answered (review TL): pushes of
    /// values written once and again, records past the margin among fresh ones (a purge's
    /// record taken at its beginning lands behind later ones), and more records than
    /// [`LocalPurges::MAX`], each seed against a plain queue scanned from its newest end.
    #[test]
    fn the_index_answers_as_the_scan_of_every_record() {
        use std::time::Duration;

        /// The queue as it was before the index (review TD's `d4dd119`).
        #[derive(Default)]
        struct Scanned(VecDeque<Made>);

        impl Scanned {
            fn push(&mut self, made: Made) {
                while self
                    .0
                    .front()
                    .is_some_and(|made| made.at.elapsed() > CLOCK_SKEW)
                    || self.0.len() >= LocalPurges::MAX
                {
                    self.0.pop_front();
                }
                self.0.push_back(made);
            }

            fn made(&self, value: u64) -> Option<Made> {
                self.0
                    .iter()
                    .rev()
                    .find(|made| made.value == value)
                    .copied()
            }
        }

        // Instants an hour away: the records past the margin or within it stay so for
        // the whole run, however long it takes, in both.
        let base = Instant::now();
        let hour = Duration::from_secs(3600);
        for seed in 1..=4u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut draw = |below: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % below
            };
            let purges = LocalPurges::default();
            let mut scanned = Scanned::default();
            let mut values = Vec::new();
            for step in 0..3 * LocalPurges::MAX as u64 {
                // Most from a few values (written again), the rest each new.
                let value = if draw(10) < 7 { draw(32) } else { 1_000 + step };
                values.push(value);
                // Each record its own instants: no two alike, as `Instant::now` makes them.
                let offset = Duration::from_nanos(step + 1);
                let at = if draw(10) < 3 {
                    base - hour - offset
                } else {
                    base + hour + offset
                };
                let over = match draw(3) {
                    0 => Over::Nothing,
                    1 => Over::Unknown,
                    _ => Over::Purge(draw(1 << 20)),
                };
                purges.push(value, at, at + offset, over);
                scanned.push(Made {
                    value,
                    at,
                    landed: at + offset,
                    over,
                });
                let asked = [value, draw(32), values[draw(values.len() as u64) as usize]];
                for asked in asked {
                    assert_eq!(
                        purges.made(asked),
                        scanned.made(asked),
                        "seed {seed}, step {step}: {asked}"
                    );
                }
            }
            let records = purges.0.lock().unwrap_or_else(|p| p.into_inner());
            assert!(records.in_order.len() <= LocalPurges::MAX);
            let distinct: std::collections::HashSet<u64> =
                records.in_order.iter().map(|made| made.value).collect();
            assert_eq!(records.latest.len(), distinct.len(), "seed {seed}");
            drop(records);
            for value in values {
                assert_eq!(
                    purges.made(value),
                    scanned.made(value),
                    "seed {seed}: {value}"
                );
            }
        }
    }
}
