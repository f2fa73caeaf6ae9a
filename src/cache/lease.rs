//! The placeholder a request puts in a missing URL's primary key before it goes to the
//! origin. It is the URL's lease across processes (others wait for its entry) and the
//! guard of the store: the entry replaces it by compare-and-swap, so a purge or
//! invalidation, which deletes it, keeps a response produced before it out of the cache.

use super::background::Background;
use super::storage::Storage;
use crate::backend::Backend;
use crate::cache::entry::Placeholder;

/// A placeholder this request holds. Ended without an entry ([`release`](Lease::release),
/// or dropped, which releases it in the background), it is replaced by one nobody waits
/// for, so the next request for the URL, here or in another process, goes straight on.
pub(crate) struct Lease<B: Backend> {
    storage: Storage<B>,
    key: String,
    placeholder: Placeholder,
    background: Background,
    /// Replaced by an entry, or released: nothing left to do.
    done: bool,
}

impl<B: Backend> Lease<B> {
    pub(crate) fn new(storage: &Storage<B>, key: &str, placeholder: Placeholder) -> Self {
        Self {
            storage: storage.clone(),
            key: key.to_string(),
            placeholder,
            background: storage.background().clone(),
            done: false,
        }
    }

    pub(crate) fn placeholder(&self) -> Placeholder {
        self.placeholder
    }

    /// What ends the placeholder's wait from elsewhere, in the background, keeping the
    /// placeholder and its token: a fill that has to wait for its client (see
    /// `fill::reader`) is waited for no longer, here or in other processes. The next
    /// request arms it again for itself and goes alongside, and whichever stores first
    /// stores over the token, as after a wait that ran out.
    pub(crate) fn ending_wait(&self) -> impl FnOnce() + Send + 'static {
        let (storage, key, placeholder, background) = (
            self.storage.clone(),
            self.key.clone(),
            self.placeholder,
            self.background.clone(),
        );
        move || {
            let started = background.spawn_best_effort(async move {
                storage.stop_waits(&key, placeholder).await;
            });
            if !started {
                tracing::debug!(
                    "too much background work to end a stalled fill's placeholder wait"
                );
            }
        }
    }

    /// The entry replaced the placeholder.
    pub(crate) fn fulfilled(mut self) {
        self.done = true;
    }

    /// Guarding the add (or CAS) of what is now in place: `placeholder` as it landed.
    pub(crate) fn placed(mut self, placeholder: Placeholder) -> Self {
        self.placeholder = placeholder;
        self
    }

    /// What it guarded was not put in place (another request's placeholder or an entry
    /// was there): nothing to release.
    pub(crate) fn not_placed(mut self) {
        self.done = true;
    }

    /// Ends the placeholder before returning.
    pub(crate) async fn release(mut self) {
        self.storage.release(&self.key, self.placeholder).await;
        // Done only once the release ran: a request dropped while it waits for memcached
        // (its client gone, a background fill at its deadline) leaves the release to the
        // drop's, not the placeholder armed for its whole hold time.
        self.done = true;
    }
}

impl<B: Backend> Drop for Lease<B> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (storage, key, placeholder) = (
            self.storage.clone(),
            std::mem::take(&mut self.key),
            self.placeholder,
        );
        // Dropped during its add, or after giving up on it: the add may still land.
        // Best effort: skipped, the placeholder holds the URL until its own hold time
        // ends, as one whose process died would.
        let started = self.background.spawn_best_effort(async move {
            storage.release_unsure(&key, placeholder).await;
        });
        if !started {
            tracing::debug!(
                "lease dropped; too much background work to release it, left to expire"
            );
        }
    }
}
