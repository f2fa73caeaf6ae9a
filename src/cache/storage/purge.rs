//! Purges and invalidations: a URL's primary key removed, a namespace's or a tag's
//! generation bumped on every server.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

use crate::backend::{Backend, BackendError, Lifetime};

use super::{CLOCK_SKEW, Storage, unique};

/// The generations this process gave tags by purging (or creating) them, for as long as
/// the clock skew margin, each with when it was recorded on the monotonic clock: a fill
/// here compares when its request went out with that, so needs no margin (a page purged
/// and refilled at once by one process is stored again at once, and its followers get
/// it). Not with the stamp, a wall-clock time: a step back of the clock by less than the
/// margin (an NTP step) went unnoticed, and a purge after the request, stamped before
/// it, let the response it purged be stored (review SM). Recorded once the stamp is
/// taken, never before: a request that went out in between counts as after the purge.
#[derive(Default)]
pub(crate) struct LocalPurges(Mutex<VecDeque<(u64, Instant)>>);

impl LocalPurges {
    /// Most purges remembered: older ones get the margin, which is only a lost store.
    const MAX: usize = 4096;

    pub(super) fn record(&self, generation: u64) {
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

    /// When `generation` was given here, if it was (and is still remembered).
    pub(super) fn made_at(&self, generation: u64) -> Option<Instant> {
        let purges = self.0.lock().unwrap_or_else(|p| p.into_inner());
        purges
            .iter()
            .find(|(made, _)| *made == generation)
            .map(|(_, at)| *at)
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
        let generation = unique();
        self.local_purges.record(generation);
        self.write_everywhere(key, generation).await?;
        self.stats.record_invalidation();
        Ok(())
    }

    /// The time of this tag purge (a fresh [`unique`] stamp) as the namespace's tag-purge
    /// mark on every server (no purge of its own, so not counted as one).
    async fn write_fresh(&self, key: &str) -> Result<(), BackendError> {
        let mark = unique();
        // On this process's clock: its fills need no margin against it.
        self.local_purges.record(mark);
        self.write_everywhere(key, mark).await
    }

    async fn write_everywhere(&self, key: &str, value: u64) -> Result<(), BackendError> {
        let value = Bytes::from(value.to_string());
        let write = self
            .backend
            .set_on_every_server(key, value, 0, Lifetime::NEVER);
        self.bounded_purge(write).await
    }
}
