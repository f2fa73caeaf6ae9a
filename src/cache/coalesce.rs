//! Coalescing: requests for a URL being refilled wait for the one that refills it, in this
//! process (the single flight, one per variant) and across processes (the placeholder the
//! refilling request puts in memcached, see [`lease`](super::lease)).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
// Tokio's clock: the deadlines bound tokio's sleeps and timeouts, so tests with paused
// time move them too. `std`'s outside such tests (tokio's `test-util` is a dev feature),
// and read only on a miss that waits.
use tokio::time::Instant;

use super::body::OnStall;
use super::exchange::{Exchange, Plan, Sent};
use super::lease::Lease;
use super::passes::Going;
use super::shared::Shared;
use super::single_flight::{self, Flight, Leader, Mark, Published, Waited};
use super::storage::{
    FILL_HOLD, Found, Lookup, Placed, Slot, Target, VariantRead, arming, placed, purges, unique,
};
use super::stored::now_ms;
use crate::backend::Backend;
use crate::cache::entry::{Entry, VariantIndex};
use crate::cache::policy::freshness::Freshness;

/// How long other processes wait for a placeholder when this layer has leases off (they
/// may have them on).
const DEFAULT_HOLD: Duration = Duration::from_secs(5);

/// The most add or compare-and-swap attempts of one placement that find something else in
/// place (another request's placeholder or an entry) before the request goes unguarded.
/// Each such round costs two round trips and waits for nothing: under honest contention
/// another request won each (a live placeholder to wait for follows), so a few suffice;
/// a memcached whose compare-and-swap never matches the unique its `gets` gave made
/// every round one of them, up to the count of `lease_wait`'s polls (about 10 s for a
/// 1 s wait polled every 5 ms, at 25 ms a reply).
const MAX_CONTENDED_ROUNDS: u32 = 4;

/// The mark of a flight whose leader holds no guard: only requests that looked before the
/// leader went out join it.
const UNGUARDED: Option<u64> = None;

/// What coordinating with the other requests for a key gave.
// Returned once per request and taken apart at once: boxing the filler would cost an
// allocation on every miss to save a move.
#[allow(clippy::large_enum_variant)]
pub(super) enum Coordinated<B: Backend> {
    /// Another request's response, usable for this one.
    Answered(Arc<Entry>, Freshness),
    /// Go to the origin, holding what this request leads (maybe nothing).
    Go(Filler<B>),
    /// The request waited for did not help (another variant, overtaken by a purge): look
    /// the URL up again and coordinate anew.
    Retry,
}

/// What a store must find in the primary key, as read by the latest lookup before this
/// request went to the origin.
#[derive(Clone)]
pub(super) struct Guard {
    slot: Slot,
    generation: Option<u64>,
    index: Option<VariantIndex>,
    variants: Vec<VariantRead>,
}

impl Guard {
    fn of(found: &Found) -> Self {
        Self {
            slot: found.slot,
            generation: found.generation,
            index: found.index.clone(),
            variants: found.variants.clone(),
        }
    }
}

/// A request's waits for other requests' responses, over all its rounds (a wait that gave
/// nothing usable sends it back to its lookup, and it may wait again): counted in
/// `coalesced` once, and bounded by one `coalesce_timeout` in all for leaders in this
/// process and one `lease_wait` for other processes' placeholders. A fresh timeout per
/// round let leaders that hang up in turn (or are declined, or overtaken) hold a request
/// that may not lead several timeouts long, and placeholders armed again in step with its
/// lookups hold it several `lease_wait`s.
#[derive(Default)]
pub(super) struct Waiting {
    /// Counted in `coalesced` already.
    counted: bool,
    /// When its waits for a leader end: set by the first. On tokio's clock, which is
    /// `std`'s unless a test paused it.
    until: Option<Instant>,
    /// When its waits for other processes' placeholders end: set by the first (for a live
    /// placeholder: one nobody waits for any longer starts no wait), so that placeholders
    /// armed again in step with its lookups hold it no longer than one `lease_wait`.
    lease_until: Option<Instant>,
}

impl Waiting {
    /// For the layer's own requests: no client's, never counted in `coalesced`.
    pub(super) fn uncounted() -> Self {
        Self {
            counted: true,
            until: None,
            lease_until: None,
        }
    }
}

impl<B: Backend> Shared<B> {
    /// [`coordinate_idle`](Self::coordinate_idle) for a caller that holds nothing to let
    /// go while it waits (the unit tests; every request of the layer holds an inner
    /// service's readiness).
    #[cfg(test)]
    pub(super) async fn coordinate(
        &self,
        ex: &Exchange,
        request_headers: &HeaderMap,
        retry: bool,
        waiting: &mut Waiting,
    ) -> Coordinated<B> {
        self.coordinate_idle(ex, request_headers, retry, waiting, &mut || {})
            .await
    }

    /// Coordinates with other requests for the key: in this process (lead the flight of
    /// this request's variant, or wait for its leader), then across processes (put a
    /// placeholder in place, or wait for the one there). `retry` says whether a wait that
    /// gave nothing usable may send the request back to its lookup. `waiting` holds the
    /// request's waits over its rounds: whether it was counted in `coalesced` already (a
    /// client's request once, whatever its rounds; the layer's own requests pass
    /// [`Waiting::uncounted`], they are no request of a client), and when its waits for
    /// leaders and placeholders end (one `coalesce_timeout` and one `lease_wait` in all).
    /// `idle` is called before each wait for another request's response (in this process
    /// or another), so that the caller lets go of what it holds for a request of its own
    /// to the origin: the inner service's readiness, a slot of a `ConcurrencyLimit` or a
    /// `Buffer` inside the layer, which a waiting request kept from every other request,
    /// hits included.
    pub(super) async fn coordinate_idle(
        &self,
        ex: &Exchange,
        request_headers: &HeaderMap,
        retry: bool,
        waiting: &mut Waiting,
        idle: &mut (dyn FnMut() + Send),
    ) -> Coordinated<B> {
        let plan = &ex.plan;
        let mut filler = Filler::none();
        if ex.is_head || !plan.from_cache {
            return Coordinated::Go(filler);
        }
        let flight = self.flight_key(ex, request_headers);
        let flights = &self.config.flights;
        // A request with `no-store` (its response stored for nobody) follows a flight
        // whose response will be stored, when there is one; else it joins or leads a
        // flight of such requests, kept apart: their responses are shared with each other
        // (see `on_response`), never with a request that would store its own, which an
        // attacker's flood of them could otherwise keep from refreshing the URL. Left to
        // follow only, a flood of `no-cache, no-store` requests went to the origin once
        // each (review RL). No placeholder of theirs in other processes, though: they
        // would wait for a store that never comes.
        let no_store = plan.request_cc.no_store;
        let unstored_flight = if no_store {
            format!("{flight} no-store")
        } else {
            String::new()
        };
        let max = self.config.max_coalesced;
        // With whether it is a flight of this request's own kind, which it may lead.
        let join = || {
            if no_store {
                match flights.follow(&flight, max, &ex.found) {
                    Flight::Alone => (flights.join(&unstored_flight, max, &ex.found), true),
                    followed => (followed, false),
                }
            } else {
                (flights.join(&flight, max, &ex.found), true)
            }
        };
        // A URL whose latest response was not stored: nobody waits for another request's
        // response to it, in this process (no flight) or another (such requests go
        // alongside other processes' placeholders, not wait for them; see `Passes`).
        let going = (!no_store)
            .then(|| self.config.passes.go(&flight))
            .flatten();
        let passes = going.is_some();
        filler.going = going;
        if !passes {
            let (mut joined, mut own_kind) = join();
            // Each round waits for a leader that went away unfinished (see `Waited::Heir`).
            loop {
                match joined {
                    Flight::Leader(leader) => {
                        filler.leader = Some(leader);
                        break;
                    }
                    Flight::Follower(rx) => {
                        // One `coalesce_timeout` across the rounds, however many leaders go
                        // away in turn: a request waits no longer than it did for one.
                        let until = *waiting.until.get_or_insert_with(|| {
                            Instant::now()
                                .checked_add(self.config.coalesce_timeout)
                                .unwrap_or_else(|| {
                                    Instant::now() + Duration::from_secs(86_400 * 365)
                                })
                        });
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            // Its wait used up: it goes on its own, and leaves the flight to
                            // those still waiting (a wait that times out ends the flight).
                            tracing::debug!(key = %plan.key, "waited coalesce_timeout already; not waiting again");
                            drop(rx);
                            return Coordinated::Go(filler);
                        }
                        let validated = rx.led_since(plan.arrived);
                        self.count_wait(waiting);
                        tracing::debug!(key = %plan.key, "waiting for the response of a request under way");
                        idle();
                        let changed = match single_flight::wait(rx, left).await {
                            Waited::Entry(entry, fetched) => {
                                // Fetched after this request arrived: it validates the entry
                                // for this request, whatever its `no-cache`.
                                let validated = validated && fetched;
                                if let Some(freshness) =
                                    self.usable_now(&entry, plan, request_headers, validated)
                                {
                                    return Coordinated::Answered(entry, freshness);
                                }
                                // Another variant's response: its index is stored now, so a new
                                // lookup finds this request's own variant flight.
                                true
                            }
                            // Its leader went away unfinished: the flight goes on, led by the
                            // first of its followers to take it, with the others waiting for
                            // that one (no new look-up, and no request that arrives meanwhile
                            // can take the lead from them).
                            Waited::Heir(succession) if own_kind => {
                                if let Some(leader) = succession.take() {
                                    tracing::debug!(key = %plan.key, "the request waited for went away unfinished; this one leads its flight on");
                                    filler.leader = Some(leader);
                                    break;
                                }
                                drop(succession);
                                (joined, own_kind) = join();
                                continue;
                            }
                            // A `no-store` request following a flight whose response will be
                            // stored does not lead it on (its followers would have nothing
                            // stored): it is left as by a leader gone without a word.
                            Waited::Heir(_) => true,
                            // Nothing learnt, and nobody else is asking now: one of the
                            // followers leads next, rather than all of them going at once.
                            Waited::Overtaken | Waited::Abandoned => true,
                            // Its answer could be stored for a request like this one (one with
                            // credentials too would have it refused for the same reason).
                            Waited::Declined { credentials } => {
                                !(credentials
                                    && request_headers.contains_key(http::header::AUTHORIZATION))
                            }
                            Waited::Nothing => false,
                        };
                        tracing::debug!(key = %plan.key, "no usable response from the request waited for (another variant, overtaken by a purge, its client gone, timed out, failed or not stored)");
                        return if retry && changed {
                            Coordinated::Retry
                        } else {
                            Coordinated::Go(filler)
                        };
                    }
                    Flight::Alone => return Coordinated::Go(filler),
                }
            }
        }
        let mut found = Guard::of(&ex.found);
        if ex.detail.is_some() {
            // Nothing known of the URL: only requests that looked before this one goes out
            // may share its response.
            filler.mark(UNGUARDED, &found, placed());
            return Coordinated::Go(filler);
        }
        if plan.request_cc.no_store {
            // A response stored for nobody: no placeholder makes other processes wait for
            // it. Requests that look later share it while memcached holds what this
            // request's lookup saw there (nothing purged since), as for a store's guard.
            let guard = match found.slot {
                Slot::Value { cas } => Some(cas),
                Slot::Placeholder { placeholder, .. } => Some(placeholder.token),
                Slot::Uncas { token } => token,
                Slot::Absent | Slot::Unknown => UNGUARDED,
            };
            let at = if guard.is_some() {
                ex.found.started
            } else {
                placed()
            };
            filler.mark(guard, &found, at);
            return Coordinated::Go(filler);
        }
        let mut started = ex.found.started;
        // Whether `found` is what a look after waiting for a placeholder saw.
        let mut looked_again = false;
        // Its adds or compare-and-swaps that found something else there.
        let mut contended = 0;
        // Bounded: each round either sleeps a poll interval or changes what it saw.
        for _ in 0..self.max_placement_rounds() {
            let placed = match found.slot {
                Slot::Value { cas } if looked_again && retry => {
                    // The refill waited for stored what this request cannot use as it is
                    // (stale when stored, or the request's `no-cache`; or an index without
                    // its variant): the lookup starts over, so a stored response is
                    // revalidated with its validators, or stands in for a failing origin,
                    // as any is. Gone as a plain miss, it was fetched whole again.
                    tracing::debug!(key = %plan.key, cas, "the refill waited for stored an entry not usable as it is; looking it up again");
                    return Coordinated::Retry;
                }
                Slot::Value { cas } => {
                    // A stored response (stale) or an index: the store replaces it, or the
                    // variant goes under it.
                    filler.mark(Some(cas), &found, started);
                    filler.guard = Some(found);
                    return Coordinated::Go(filler);
                }
                Slot::Uncas { token: Some(token) } => {
                    // Another request's placeholder on a memcached without CAS: nothing
                    // can replace it, so nobody waits for it (nor can this request's
                    // response be stored). Alongside it, shared only with requests that
                    // saw that same placeholder: no purge came between.
                    filler.mark(Some(token), &found, started);
                    filler.guard = Some(found);
                    return Coordinated::Go(filler);
                }
                Slot::Unknown | Slot::Uncas { token: None } => break,
                Slot::Placeholder { placeholder, .. } => {
                    let live = placeholder.until_ms > now_ms();
                    // One `lease_wait` across the request's lookups, from its first wait
                    // for a live placeholder (not from the first placeholder seen: one
                    // whose wait was over started it before the request waited at all):
                    // a wait too long to add is as good as forever (the placeholder's own
                    // time still ends it).
                    let wait_until = (live && self.config.lease.is_some() && !passes)
                        .then(|| {
                            *waiting.lease_until.get_or_insert_with(|| {
                                Instant::now()
                                    .checked_add(self.config.lease_wait)
                                    .unwrap_or_else(|| {
                                        Instant::now() + Duration::from_secs(86_400 * 365)
                                    })
                            })
                        })
                        .filter(|deadline| Instant::now() < *deadline);
                    if let Some(deadline) = wait_until {
                        tracing::debug!(key = %plan.key, "another request is refilling the URL; waiting for its entry");
                        // Waiting for another process's request, as a follower waits for
                        // this process's: `coalesced` counts both.
                        self.count_wait(waiting);
                        idle();
                        // The last poll ends at the deadline, not a whole poll past it.
                        let poll = Instant::now()
                            .checked_add(self.config.lease_poll)
                            .map_or(deadline, |next| next.min(deadline));
                        tokio::time::sleep_until(poll).await;
                        None
                    } else if live && (self.config.lease.is_none() || passes) {
                        // Not waiting for other processes: go now alongside it, and store
                        // only if its token is still there (nothing purged the URL).
                        filler.mark(Some(placeholder.token), &found, started);
                        filler.guard = Some(found);
                        return Coordinated::Go(filler);
                    } else {
                        // Nobody waits for it any longer (released, expired, or its request
                        // is slow): arm it again for this request, same token, so others
                        // wait for this one; whichever request finishes first stores (a
                        // live request's placeholder is never replaced, or a slow origin
                        // would never be stored under load).
                        if live {
                            tracing::debug!(key = %plan.key, "the refilling request did not deliver in time; going alongside it");
                        }
                        let until = self.hold_until();
                        // Guarding what the CAS writes (this request's arming), not what
                        // it replaces: that is another request's.
                        let armed = arming(placeholder.token, until);
                        let pending = Lease::new(&self.storage, &plan.key, armed);
                        let placed = self.storage.rearm(&plan.key, found.slot, until).await;
                        Some((placed, pending))
                    }
                }
                Slot::Absent => {
                    let token = unique();
                    let until = self.hold_until();
                    let pending = Lease::new(&self.storage, &plan.key, arming(token, until));
                    let placed = self.storage.place(&plan.key, token, until).await;
                    Some((placed, pending))
                }
            };
            // `pending` guards the add (or CAS) while it is under way: should this request
            // be dropped meanwhile (its client reset the stream or hung up), what landed
            // is released in the background, rather than left for every request for the
            // URL, here and in other processes, to wait `lease_wait` for.
            match placed {
                Some((Placed::Mine(placeholder, at), pending)) => {
                    tracing::debug!(key = %plan.key, "placeholder in place: this request refills the URL");
                    filler.mark(Some(placeholder.token), &found, at);
                    filler.lease = Some(pending.placed(placeholder));
                    filler.guard = Some(found);
                    return Coordinated::Go(filler);
                }
                // The add (or CAS) may have landed though its reply did not come in time:
                // dropping the guard releases what may be there, in the background, or
                // every request for the URL would wait `lease_wait` for it.
                Some((Placed::Unknown, pending)) => {
                    drop(pending);
                    break;
                }
                // Someone was faster: what is there now? A few times at most (see
                // `MAX_CONTENDED_ROUNDS`).
                Some((Placed::Taken, pending)) => {
                    pending.not_placed();
                    contended += 1;
                    if contended >= MAX_CONTENDED_ROUNDS {
                        tracing::debug!(key = %plan.key, "placeholder contended {contended} times; going unguarded");
                        break;
                    }
                }
                // Waited a poll interval: what is there now?
                None => {}
            }
            let read = std::time::Instant::now();
            match self.look_again(plan, request_headers).await {
                Looked::Usable(entry, freshness) => {
                    // Read now: requests that joined after this read began may come after
                    // a purge, and look for themselves.
                    filler.publish_found((Arc::clone(&entry), Some(read)));
                    return Coordinated::Answered(entry, freshness);
                }
                Looked::Slot(again) => {
                    started = again.started;
                    found = Guard::of(&again);
                    looked_again = true;
                }
                Looked::Unavailable => break,
            }
        }
        // The backend could not tell (or kept telling of someone faster): go unguarded
        // (no placeholder of its own; stored only over what the exchange's lookup saw, if
        // still there: another request's placeholder, alongside it, never an empty key),
        // sharing the response only with requests that looked before it goes out.
        filler.guard = None;
        filler.mark(UNGUARDED, &found, placed());
        Coordinated::Go(filler)
    }

    /// Counts a request that waits for another's response in `coalesced`, once.
    fn count_wait(&self, waiting: &mut Waiting) {
        if !waiting.counted {
            waiting.counted = true;
            self.config.stats.record_coalesced();
        }
    }

    /// Until when other requests wait for a placeholder this request holds.
    fn hold_until(&self) -> SystemTime {
        let hold = self.config.lease.unwrap_or(DEFAULT_HOLD);
        SystemTime::now()
            .checked_add(hold)
            .unwrap_or_else(|| SystemTime::now() + FILL_HOLD)
    }

    fn max_placement_rounds(&self) -> u32 {
        let polls = self.config.lease_wait.as_millis() / self.config.lease_poll.as_millis().max(1);
        u32::try_from(polls)
            .unwrap_or(u32::MAX)
            .saturating_add(MAX_CONTENDED_ROUNDS)
    }

    /// The single flight a request joins: its URL's, or, once the URL is known to vary, its
    /// variant's, so that requests for one variant never wait for another's response.
    ///
    /// Among the layers of its own settings ([`Storage::reader`]) only: clones of one layer
    /// share its flights, and a clone configured otherwise (another key header, other
    /// statuses or targeted fields) would take a response its settings do not admit, such
    /// as the page another layer fetched for alice, answered to bob's keyed request.
    ///
    /// [`Storage::reader`]: crate::cache::storage::Storage::reader
    pub(super) fn flight_key(&self, ex: &Exchange, request_headers: &HeaderMap) -> String {
        let key = match &ex.found.index {
            Some(index) => self
                .storage
                .variant_keys(index, request_headers)
                .into_iter()
                .next()
                .unwrap_or_else(|| ex.plan.key.clone()),
            None => ex.plan.key.clone(),
        };
        format!("{:016x}{key}", self.storage.reader())
    }

    async fn look_again(&self, plan: &Plan, request_headers: &HeaderMap) -> Looked {
        match self
            .storage
            .lookup(&plan.canonical, &plan.key, request_headers)
            .await
        {
            Lookup::Found(found) => {
                if let Some(entry) = &found.entry {
                    if let Some(freshness) = self.usable_now(entry, plan, request_headers, false) {
                        return Looked::Usable(Arc::clone(entry), freshness);
                    }
                }
                Looked::Slot(found)
            }
            Lookup::Unavailable => Looked::Unavailable,
        }
    }
}

enum Looked {
    Usable(Arc<Entry>, Freshness),
    Slot(Found),
    Unavailable,
}

/// Held by the request that refills a URL: its followers in this process, its placeholder
/// across processes, and what its store must find in memcached.
pub(super) struct Filler<B: Backend> {
    pub(super) leader: Option<Leader>,
    pub(super) lease: Option<Lease<B>>,
    /// What the latest lookup before the request went out saw, when it was not the
    /// exchange's own.
    pub(super) guard: Option<Guard>,
    /// A place among the requests for a URL whose responses were lately not stored,
    /// going without waiting for each other (see `Passes`).
    pub(super) going: Option<Going>,
}

impl<B: Backend> Filler<B> {
    pub(super) fn none() -> Self {
        Self {
            leader: None,
            lease: None,
            guard: None,
            going: None,
        }
    }

    /// A background refresh of the stale entry `found` read: only requests that saw that
    /// same entry may join it.
    pub(super) fn refreshing(leader: Leader, found: &Found) -> Self {
        let filler = Self {
            leader: Some(leader),
            lease: None,
            guard: None,
            going: None,
        };
        if let Slot::Value { cas } = found.slot {
            filler.mark(Some(cas), &Guard::of(found), found.started);
        }
        filler
    }

    fn mark(&self, guard: Option<u64>, found: &Guard, at: u64) {
        if let Some(leader) = &self.leader {
            leader.mark(Mark {
                guard,
                generation: found.generation,
                at,
                purges: purges(),
            });
        }
    }

    /// Whether this request leads a flight without a guard (its lookup could not read
    /// memcached): its response can be shared with its followers, never stored.
    pub(super) fn leads_unguarded(&self) -> bool {
        self.leader.is_some() && self.lease.is_none() && self.guard.is_none()
    }

    /// What the fill of this request's response does when it has to wait for its client
    /// (the layer's `fill_buffer` spent, by clients that read slowly or not at all): hand
    /// its flight on and end its placeholder's wait, so that no request waits for this
    /// client's reading (DESIGN: one client's latency is never set by another's reading
    /// speed). The fill goes on at its client's pace and may still store.
    pub(super) fn on_stall(&self) -> Option<OnStall> {
        let flight = self.leader.as_ref().map(Leader::handoff);
        let lease = self.lease.as_ref().map(Lease::ending_wait);
        if flight.is_none() && lease.is_none() {
            return None;
        }
        Some(Box::new(move || {
            if let Some(flight) = flight {
                flight.hand_on();
            }
            if let Some(end_wait) = lease {
                end_wait();
            }
        }))
    }

    /// Where this request's response is stored, and against what.
    pub(super) fn target(&self, ex: &Exchange, sent: &Sent) -> Target {
        let guard = self.guard.clone().unwrap_or_else(|| Guard::of(&ex.found));
        let slot = match &self.lease {
            Some(lease) => Slot::Placeholder {
                cas: 0,
                placeholder: lease.placeholder(),
            },
            None => guard.slot,
        };
        Target {
            key: ex.plan.key.clone(),
            slot,
            index: guard.index,
            variants: guard.variants,
            generation: guard.generation,
            requested: sent.request_time,
            sent: sent.sent_at,
        }
    }

    pub(super) fn publish(&self, published: Option<Published>) {
        if let Some(leader) = &self.leader {
            leader.publish(published);
        }
    }

    /// Publishes an entry found stored by another process (see [`Leader::publish_found`]).
    pub(super) fn publish_found(&self, published: Published) {
        if let Some(leader) = &self.leader {
            leader.publish_found(published);
        }
    }

    /// Nothing will be stored only because of what this request was (its `Range`, its
    /// conditions, its credentials): its followers unlike it elect another leader now
    /// (the placeholder goes with [`release`](Self::release)).
    pub(super) fn decline(&mut self, credentials: bool) {
        if let Some(leader) = self.leader.take() {
            leader.decline(credentials);
        }
    }

    /// Nothing will be stored: followers go on their own, the placeholder is gone when this
    /// returns.
    pub(super) async fn release(self) {
        self.publish(None);
        if let Some(lease) = self.lease {
            lease.release().await;
        }
    }

    /// The entry is stored: the placeholder was replaced by it.
    pub(super) fn fulfilled(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.fulfilled();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::shared::testing::{entry, exchange_for, get, shared};

    #[tokio::test]
    async fn a_second_request_waits_for_the_first_and_gets_its_entry() {
        let layer = MemcacheLayer::new(MemoryBackend::new()).lease(None);
        let shared = shared(&layer);
        let request = get("http://site.example/w");
        let first = exchange_for(&shared, &request).await;
        let Coordinated::Go(filler) = shared
            .coordinate(&first, request.headers(), false, &mut Waiting::default())
            .await
        else {
            panic!("the first request goes to the origin")
        };
        assert!(filler.leader.is_some(), "and leads the flight");
        let follower = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let request = get("http://site.example/w");
                let second = exchange_for(&shared, &request).await;
                match shared
                    .coordinate(&second, request.headers(), false, &mut Waiting::default())
                    .await
                {
                    Coordinated::Answered(entry, _) => Some(entry.body.clone()),
                    Coordinated::Go(_) | Coordinated::Retry => None,
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        filler.publish(Some((Arc::new(entry(&first, &[])), None)));
        let answered = tokio::time::timeout(Duration::from_secs(1), follower)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answered.as_deref(), Some(&b"stored"[..]));
    }

    #[tokio::test]
    async fn a_head_or_an_origin_precondition_coordinates_with_nobody() {
        let layer = MemcacheLayer::new(MemoryBackend::new());
        let shared = shared(&layer);
        let request = get("http://site.example/h");
        let mut ex = exchange_for(&shared, &request).await;
        ex.is_head = true;
        let Coordinated::Go(filler) = shared
            .coordinate(&ex, request.headers(), false, &mut Waiting::default())
            .await
        else {
            panic!("goes alone")
        };
        assert!(filler.leader.is_none() && filler.lease.is_none());
    }

    /// Review RG: a follower sent back to its lookup (its leader declined) and following
    /// the next leader waits what is left of one `coalesce_timeout`, not a fresh one.
    /// Under tokio's paused clock only once the deadlines are on that clock: on `std`'s,
    /// which paused time does not move, every round waited a whole timeout.
    #[tokio::test(start_paused = true)]
    async fn a_follower_waits_one_coalesce_timeout_across_its_rounds() {
        const TIMEOUT: Duration = Duration::from_secs(5);
        let layer = MemcacheLayer::new(MemoryBackend::new())
            .lease(None)
            .coalesce_timeout(TIMEOUT);
        let shared = shared(&layer);
        let url = "http://site.example/rounds";
        let lead = || {
            let shared = Arc::clone(&shared);
            async move {
                let request = get(url);
                let ex = exchange_for(&shared, &request).await;
                match shared
                    .coordinate(&ex, request.headers(), false, &mut Waiting::default())
                    .await
                {
                    Coordinated::Go(filler) if filler.leader.is_some() => filler,
                    _ => panic!("leads"),
                }
            }
        };
        let follow = |mut waiting: Waiting| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let request = get(url);
                let ex = exchange_for(&shared, &request).await;
                let coordinated = shared
                    .coordinate(&ex, request.headers(), true, &mut waiting)
                    .await;
                (matches!(coordinated, Coordinated::Retry), waiting)
            })
        };
        // The clock paused time moves.
        let started = tokio::time::Instant::now();
        let mut first = lead().await;
        let round = follow(Waiting::default());
        tokio::time::sleep(Duration::from_secs(3)).await;
        first.decline(false);
        let (retry, waiting) = round.await.unwrap();
        assert!(
            retry,
            "a declined leader sends its follower back to its lookup"
        );
        // The next leader never answers: the follower goes at the end of its one wait.
        let _second = lead().await;
        let (retry, _) = follow(waiting).await.unwrap();
        assert!(!retry, "its wait used up, it goes to the origin");
        let waited = started.elapsed();
        assert!(
            waited <= TIMEOUT + Duration::from_millis(50),
            "held {waited:?} for a coalesce_timeout of {TIMEOUT:?}"
        );
    }

    /// Review RG: the one `lease_wait` of a request starts at its first wait for another
    /// process's placeholder. It started at the first placeholder its placement saw,
    /// waited for or not: one whose wait was over (released) set it, and a request that
    /// then waited for a leader in this process past that `lease_wait` found its lease
    /// wait used up before it had waited at all, and went to the origin alongside the
    /// next live placeholder instead of waiting for its entry.
    #[tokio::test(start_paused = true)]
    async fn a_placeholder_nobody_waits_for_starts_no_lease_wait() {
        use crate::backend::Backend;
        use crate::cache::shared::testing::put;
        use crate::cache::storage::{Placed, Slot, Target, unique};

        const LEASE_WAIT: Duration = Duration::from_secs(2);
        let backend = MemoryBackend::new();
        let layer = MemcacheLayer::new(backend.clone())
            .lease(Some(Duration::from_secs(30)))
            .lease_wait(LEASE_WAIT, Duration::from_millis(20))
            .coalesce_timeout(Duration::from_secs(5));
        let shared = shared(&layer);
        let url = "http://site.example/released";
        let request = get(url);
        let key = exchange_for(&shared, &request).await.plan.key;
        // A placeholder whose wait is over (released by its request).
        let released = shared
            .storage
            .place(&key, unique(), SystemTime::UNIX_EPOCH)
            .await;
        assert!(matches!(released, Placed::Mine(..)));
        let ex = exchange_for(&shared, &request).await;
        assert!(matches!(ex.found.slot, Slot::Placeholder { .. }));
        // Another process's fill lands before this request arms it again: stale, so this
        // request looks the URL up again.
        backend.delete(&key).await.unwrap();
        let mut stale = entry(&ex, &[]);
        stale.meta.fresh_for_ms = 0;
        put(&shared, &request, &stale).await;
        let mut waiting = Waiting::default();
        let round = shared
            .coordinate(&ex, request.headers(), true, &mut waiting)
            .await;
        assert!(matches!(round, Coordinated::Retry), "looks again");
        // Its next round waits for a leader in this process, longer than a `lease_wait`,
        // which declines.
        let leading = exchange_for(&shared, &request).await;
        let Coordinated::Go(mut leader) = shared
            .coordinate(&leading, request.headers(), false, &mut Waiting::default())
            .await
        else {
            panic!("revalidates")
        };
        let round = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let request = get(url);
                let ex = exchange_for(&shared, &request).await;
                let round = shared
                    .coordinate(&ex, request.headers(), true, &mut waiting)
                    .await;
                (matches!(round, Coordinated::Retry), waiting)
            })
        };
        tokio::time::sleep(LEASE_WAIT + Duration::from_secs(1)).await;
        leader.decline(false);
        let (retry, mut waiting) = round.await.unwrap();
        assert!(retry, "looks again");
        // Now another process refills the URL (after a purge): this request waits for
        // its entry, as any that finds a live placeholder does.
        backend.delete(&key).await.unwrap();
        let token = unique();
        let until = SystemTime::now() + Duration::from_secs(30);
        let Placed::Mine(placeholder, _) = shared.storage.place(&key, token, until).await else {
            panic!("placed")
        };
        let round = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let request = get(url);
                let ex = exchange_for(&shared, &request).await;
                match shared
                    .coordinate(&ex, request.headers(), true, &mut waiting)
                    .await
                {
                    Coordinated::Answered(entry, _) => Some(entry.body.clone()),
                    Coordinated::Go(_) | Coordinated::Retry => None,
                }
            })
        };
        tokio::time::sleep(LEASE_WAIT / 4).await;
        let filled = Target {
            key: key.clone(),
            slot: Slot::Placeholder {
                cas: 0,
                placeholder,
            },
            index: None,
            variants: Vec::new(),
            generation: ex.found.generation,
            requested: SystemTime::now(),
            sent: std::time::Instant::now(),
        };
        let mut fresh = entry(&ex, &[]);
        fresh.body = bytes::Bytes::from_static(b"the other process's fill");
        let (stored, _) = shared
            .store(&filled, &[], &fresh, Duration::from_secs(60))
            .await;
        assert_eq!(stored, crate::cache::storage::StoreOutcome::Stored);
        let answered = round.await.unwrap();
        assert_eq!(
            answered.as_deref(),
            Some(&b"the other process's fill"[..]),
            "went to the origin alongside a live placeholder without waiting for it"
        );
    }

    /// The last poll for another process's placeholder ends at the `lease_wait`
    /// deadline: a request waited whole polls, so up to a `lease_poll` past it (1.4 s
    /// for a 1 s wait polled every 0.7 s).
    #[tokio::test(start_paused = true)]
    async fn the_last_lease_poll_ends_at_the_lease_wait() {
        use crate::cache::storage::{Placed, unique};

        const LEASE_WAIT: Duration = Duration::from_secs(1);
        let layer = MemcacheLayer::new(MemoryBackend::new())
            .lease(Some(Duration::from_secs(30)))
            .lease_wait(LEASE_WAIT, Duration::from_millis(700))
            .coalesce_timeout(Duration::from_secs(5));
        let shared = shared(&layer);
        let request = get("http://site.example/polled");
        let key = exchange_for(&shared, &request).await.plan.key;
        // Another process's live placeholder, whose fill never comes.
        let until = SystemTime::now() + Duration::from_secs(30);
        let placed = shared.storage.place(&key, unique(), until).await;
        assert!(matches!(placed, Placed::Mine(..)));
        let ex = exchange_for(&shared, &request).await;
        let started = tokio::time::Instant::now();
        let went = shared
            .coordinate(&ex, request.headers(), true, &mut Waiting::default())
            .await;
        let waited = started.elapsed();
        assert!(matches!(went, Coordinated::Go(_)), "goes after its wait");
        assert!(
            waited >= LEASE_WAIT && waited <= LEASE_WAIT + Duration::from_millis(100),
            "waited {waited:?} for a lease_wait of {LEASE_WAIT:?}"
        );
    }
}
