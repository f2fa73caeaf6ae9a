//! URLs whose latest response was one the cache never stores (`private`, `no-store`, a
//! cookie, no lifetime…). Requests for such a URL go to the origin side by side rather
//! than wait for each other: waiting for a response that will not be shared only added
//! the request ahead's time to each one's (a private page asked for by two users at once
//! took the second one twice the origin's time). Their responses are still stored when
//! they can be, which ends the memory at once; Varnish calls this "hit-for-miss".
//!
//! Kept in the process (one per layer and its clones), bounded in count and time, read on
//! misses only. A `HashMap` by hand: `quick_cache` (the near tier's) has no expiry, and
//! `moka`'s, with its maintenance work, is more than a few hundred short-lived marks need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, as the coalescing deadlines: tests with paused time move it.
use tokio::time::Instant;

/// How long a URL is remembered after a response the cache did not store.
pub(crate) const REMEMBERED_FOR: Duration = Duration::from_secs(60);

/// At most this many URLs are remembered; past it, URLs no longer remembered make room,
/// and a URL finding none is not remembered (its requests wait for each other, as
/// before).
pub(crate) const MAX_REMEMBERED: usize = 4096;

/// With the map full, room is looked for at most this often. A look is a pass over all
/// [`MAX_REMEMBERED`] URLs under the lock: made on every refused response, a client
/// keeping the map full of live URLs (each of its private pages asked for once a minute)
/// made every other URL's refused response pay for one.
const SWEEP_INTERVAL: Duration = Duration::from_secs(4);

/// At most this many requests for one remembered URL go side by side; more wait for each
/// other as for any URL. A client can get a URL remembered (a request the origin answers
/// `private`, its cookie say), and its next response may well be stored: the requests
/// that went side by side until then each cost an origin call, where waiting costs one.
pub(crate) const MAX_SIDE_BY_SIDE: usize = 8;

/// The URLs (flight keys) whose requests go without waiting for each other.
#[derive(Clone, Default)]
pub(crate) struct Passes {
    remembered: Arc<Mutex<Urls>>,
}

#[derive(Default)]
struct Urls {
    by_key: HashMap<String, Remembered>,
    /// With the map full, no look for room before then: none of the URLs found live at
    /// the last look lapses sooner, and looks are [`SWEEP_INTERVAL`] apart at least.
    /// (Room made meanwhile by `forget` and the last places of lapsed URLs needs no look.)
    next_sweep: Option<Instant>,
    /// Looks for room made, for the tests.
    #[cfg(test)]
    sweeps: usize,
}

struct Remembered {
    /// Remembered until then; past it (or forgotten), only its places still out are.
    until: Instant,
    /// Requests for it going side by side now. Counted until the last is back, whatever
    /// the URL's memory does meanwhile: a record dropped while places were out and made
    /// anew counted from zero, and the requests still out took their places back from the
    /// new count, 8 more beside them each time a stored response and a refused one came
    /// in turn (review RQ).
    going: usize,
}

/// A request for a remembered URL going without waiting: one of [`MAX_SIDE_BY_SIDE`]
/// until dropped.
pub(crate) struct Going {
    passes: Passes,
    key: String,
}

impl Drop for Going {
    fn drop(&mut self) {
        let mut remembered = self.passes.lock();
        if let Some(url) = remembered.by_key.get_mut(&self.key) {
            url.going = url.going.saturating_sub(1);
            // The last place of a URL no longer remembered: nothing left to count.
            if url.going == 0 && url.until <= Instant::now() {
                remembered.by_key.remove(&self.key);
            }
        }
    }
}

impl Passes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Urls> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a request for `key` to go without waiting for others, if the URL is
    /// remembered and fewer than [`MAX_SIDE_BY_SIDE`] are going.
    pub(crate) fn go(&self, key: &str) -> Option<Going> {
        let mut remembered = self.lock();
        let url = remembered.by_key.get_mut(key)?;
        if url.until <= Instant::now() {
            // Kept while its places are out (see `Remembered::going`).
            if url.going == 0 {
                remembered.by_key.remove(key);
            }
            return None;
        }
        if url.going >= MAX_SIDE_BY_SIDE {
            return None;
        }
        url.going += 1;
        Some(Going {
            passes: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Remembers that `key`'s latest response was not stored, for [`REMEMBERED_FOR`].
    pub(crate) fn remember(&self, key: &str) {
        let now = Instant::now();
        let Some(until) = now.checked_add(REMEMBERED_FOR) else {
            return;
        };
        let mut remembered = self.lock();
        if let Some(url) = remembered.by_key.get_mut(key) {
            url.until = until;
            return;
        }
        if remembered.by_key.len() >= MAX_REMEMBERED {
            if remembered.next_sweep.is_some_and(|next| now < next) {
                return;
            }
            let mut earliest: Option<Instant> = None;
            remembered.by_key.retain(|_, url| {
                let live = now < url.until;
                if live {
                    earliest = Some(earliest.map_or(url.until, |e| e.min(url.until)));
                }
                live || url.going > 0
            });
            #[cfg(test)]
            {
                remembered.sweeps += 1;
            }
            let soonest = now.checked_add(SWEEP_INTERVAL);
            remembered.next_sweep = match (earliest, soonest) {
                (Some(earliest), Some(soonest)) => Some(earliest.max(soonest)),
                (earliest, soonest) => earliest.or(soonest),
            };
            if remembered.by_key.len() >= MAX_REMEMBERED {
                return;
            }
        }
        remembered
            .by_key
            .insert(key.to_owned(), Remembered { until, going: 0 });
    }

    /// Forgets the key `key()` gives (its response was stored): its requests wait for
    /// each other again. `key` is only called when some URL is remembered.
    pub(crate) fn forget(&self, key: impl FnOnce() -> String) {
        let mut remembered = self.lock();
        if remembered.by_key.is_empty() {
            return;
        }
        let key = key();
        if let Some(url) = remembered.by_key.get_mut(&key) {
            if url.going == 0 {
                remembered.by_key.remove(&key);
            } else {
                // Its places still out keep counting (see `Remembered::going`).
                url.until = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_url_is_remembered_for_a_while_or_until_stored() {
        let passes = Passes::default();
        assert!(passes.go("a").is_none());
        passes.remember("a");
        assert!(passes.go("a").is_some() && passes.go("b").is_none());
        tokio::time::advance(REMEMBERED_FOR - Duration::from_secs(1)).await;
        assert!(passes.go("a").is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(passes.go("a").is_none(), "forgotten after REMEMBERED_FOR");
        passes.remember("a");
        passes.forget(|| "a".to_owned());
        assert!(passes.go("a").is_none(), "forgotten once stored");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_side_by_side_are_bounded() {
        let passes = Passes::default();
        passes.remember("a");
        let going: Vec<Going> = (0..MAX_SIDE_BY_SIDE)
            .filter_map(|_| passes.go("a"))
            .collect();
        assert_eq!(going.len(), MAX_SIDE_BY_SIDE);
        assert!(passes.go("a").is_none(), "the next waits");
        drop(going);
        assert!(passes.go("a").is_some(), "places free again");
    }

    /// Review RQ: the requests of a URL going side by side are bounded while they are at
    /// the origin, whatever its memory did meanwhile. Forgotten (a response stored) or
    /// lapsed, then remembered again, the URL counted from zero, and the requests still
    /// out took their places back from the new count as they ended: each storable
    /// response followed by a refused one let 8 more go beside those already out.
    #[tokio::test(start_paused = true)]
    async fn places_held_outlive_the_urls_memory() {
        let passes = Passes::default();
        passes.remember("a");
        let out: Vec<Going> = (0..MAX_SIDE_BY_SIDE)
            .filter_map(|_| passes.go("a"))
            .collect();
        passes.forget(|| "a".to_owned());
        assert!(passes.go("a").is_none(), "forgotten");
        passes.remember("a");
        assert!(passes.go("a").is_none(), "8 still out");
        tokio::time::advance(REMEMBERED_FOR).await;
        assert!(passes.go("a").is_none(), "lapsed");
        passes.remember("a");
        assert!(passes.go("a").is_none(), "8 still out");
        drop(out);
        let again: Vec<Going> = (0..MAX_SIDE_BY_SIDE + 1)
            .filter_map(|_| passes.go("a"))
            .collect();
        assert_eq!(
            again.len(),
            MAX_SIDE_BY_SIDE,
            "places free again, 8 of them"
        );
        passes.forget(|| "a".to_owned());
        drop(again);
        assert!(
            passes.lock().by_key.is_empty(),
            "forgotten once the last is back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_urls_remembered_are_bounded() {
        let passes = Passes::default();
        for i in 0..MAX_REMEMBERED {
            passes.remember(&i.to_string());
        }
        passes.remember("one more");
        assert!(passes.go("one more").is_none(), "no room");
        assert!(passes.go("0").is_some(), "the remembered stay");
        tokio::time::advance(REMEMBERED_FOR).await;
        passes.remember("one more");
        assert!(
            passes.go("one more").is_some(),
            "room made by those forgotten"
        );
        assert_eq!(passes.lock().by_key.len(), 1);
    }

    /// With the map kept full of live URLs, a refused response of another URL passed
    /// over all 4096 of them under the lock, every time.
    #[tokio::test(start_paused = true)]
    async fn a_full_map_is_not_swept_on_every_refused_response() {
        let passes = Passes::default();
        for i in 0..MAX_REMEMBERED {
            passes.remember(&i.to_string());
        }
        for i in 0..1000 {
            passes.remember(&format!("new {i}"));
        }
        assert_eq!(passes.lock().sweeps, 1, "one look, nothing lapsed");
        tokio::time::advance(SWEEP_INTERVAL).await;
        passes.remember("new again");
        assert_eq!(passes.lock().sweeps, 1, "none lapses before a minute");
        // Half of them renewed, the others lapse: room at the next look, not before.
        for i in 0..MAX_REMEMBERED / 2 {
            passes.remember(&i.to_string());
        }
        tokio::time::advance(REMEMBERED_FOR - SWEEP_INTERVAL).await;
        passes.remember("after a minute");
        assert_eq!(passes.lock().sweeps, 2);
        assert!(passes.go("after a minute").is_some(), "room made");
        assert_eq!(passes.lock().by_key.len(), MAX_REMEMBERED / 2 + 1);
        // Room made by a forgotten URL needs no look.
        for i in 0..MAX_REMEMBERED / 2 - 1 {
            passes.remember(&format!("more {i}"));
        }
        passes.forget(|| "0".to_owned());
        passes.remember("in its place");
        assert!(passes.go("in its place").is_some());
        assert_eq!(passes.lock().sweeps, 2);
    }
}
