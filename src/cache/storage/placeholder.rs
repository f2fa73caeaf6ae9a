//! Placeholders: one request's claim on a URL while it refills it, which others wait for,
//! and which that request's store must find still there.

use std::time::{Duration, SystemTime};

use crate::backend::{Backend, CasOutcome, Lifetime};
use crate::cache::entry::{FLAG_PLACEHOLDER, Placeholder};

use super::{FILL_HOLD, Slot, Storage, millis, placed, unique};

/// How long a released placeholder stays: long enough for a write that was on its way to
/// land and find it ([`Storage::release_unsure`]), short enough to be gone soon.
const RELEASED_FOR: Duration = Duration::from_secs(1);

/// A placeholder put in place by [`Storage::place`], or why none was.
pub(crate) enum Placed {
    /// This request refills the URL; its token and when the placeholder landed (on the
    /// [`placements`](super::placements) clock).
    Mine(Placeholder, u64),
    /// Something arrived first (another request's placeholder, an entry, an index).
    Taken,
    /// The backend did not answer.
    Unknown,
}

impl<B: Backend> Storage<B> {
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
        if !self.end_wait(key, mine, RELEASED_FOR).await {
            self.release_later(key, mine);
        }
    }

    /// Ends the wait for this request's placeholder, keeping it (token and all) for as
    /// long as a fill may take: the request still fills, at its client's pace, and may
    /// store over it, while others arm it again for themselves and go alongside. Best
    /// effort: memcached not answering, others wait `lease_wait` as for any slow fill.
    pub(crate) async fn stop_waits(&self, key: &str, mine: Placeholder) {
        let _ = self.end_wait(key, mine, FILL_HOLD).await;
    }

    /// [`release`](Self::release) again in the background, after a release memcached did
    /// not answer (hung a moment, or dropping the connection): left armed, the placeholder
    /// made every request for the URL, this process's too, wait `lease_wait` for a fill
    /// that was over. Tried at doubling intervals from the timeout on, until the
    /// placeholder's own wait ends (a few tries; best effort, as other background work).
    fn release_later(&self, key: &str, mine: Placeholder) {
        let (storage, key) = (self.clone(), key.to_owned());
        self.background.spawn_best_effort(async move {
            let mut delay = storage.timeout;
            loop {
                tokio::time::sleep(delay).await;
                if crate::cache::stored::now_ms() >= mine.until_ms
                    || storage.end_wait(&key, mine, RELEASED_FOR).await
                {
                    return;
                }
                delay = delay.saturating_mul(2);
            }
        });
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
    /// for) to be waited for no longer, with the same token, for `lifetime`. False when
    /// memcached did not answer: the placeholder may still be armed.
    async fn end_wait(&self, key: &str, placeholder: Placeholder, lifetime: Duration) -> bool {
        let item = match self.timed("placeholder read", self.backend.get(key)).await {
            Some(Some(item)) => item,
            Some(None) => return true,
            None => return false,
        };
        let (
            Some(cas),
            Slot::Placeholder {
                placeholder: now, ..
            },
        ) = (item.cas, Slot::of(&item))
        else {
            return true;
        };
        // The token alone is not this request's: another request that armed the
        // placeholder again shares it (`rearm`), and ending its arming would end its fill
        // (nobody waits for it, and the placeholder lives a second: its store is lost).
        if now.token != placeholder.token
            || now.until_ms != placeholder.until_ms
            || now.until_ms == 0
        {
            return true;
        }
        let ended = Placeholder {
            token: placeholder.token,
            until_ms: 0,
        };
        let lifetime = Lifetime::from_duration(lifetime);
        let cas = self
            .backend
            .cas(key, ended.encode(), FLAG_PLACEHOLDER, lifetime, cas);
        self.timed("placeholder end", cas).await.is_some()
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
