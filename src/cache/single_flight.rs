//! Request coalescing inside one process: the first miss for a key calls the inner
//! service, later misses for the same key wait (bounded in number and time) for its entry.
//!
//! A request joins a flight only if its own lookup saw what the leader's did (the same
//! placeholder or stored response, the same namespace generation), or looked before the
//! leader put its placeholder in place: a request whose lookup shows the URL purged since
//! starts a flight of its own. A leader's response that a purge overtook is handed only to
//! the followers that joined before the purge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::storage::{Found, Slot, purges};
use crate::cache::entry::Entry;

/// An entry and, when a purge overtook it, the time after which joiners may not have it.
/// An entry, and the moment (on the monotonic clock: nobody sets it back between a
/// cutoff and a join) before which a follower must have joined to take it, if any.
pub(crate) type Published = (Arc<Entry>, Option<Instant>);

/// What a leader publishes (`None` until it does).
type Outcome = Option<LeaderOutcome>;

/// A leader's published outcome.
#[derive(Clone)]
enum LeaderOutcome {
    /// Its entry, fetched by its request.
    Entry(Published),
    /// An entry it found stored by another process (fetched when, it cannot tell).
    Found(Published),
    /// Nothing to share (its response is not stored).
    Nothing,
    /// Nothing, only because of what its request was (see [`Waited::Declined`]).
    Declined { credentials: bool },
    /// The leader went away unfinished while requests waited for it: the flight goes on
    /// under the follower that takes its new leader first (see [`Waited::Heir`]).
    Succession(Succession),
}

/// The new leader of a flight whose leader went away unfinished, for one of its
/// followers to take. Nobody taking it, it is dropped with the last of them, and ends (or
/// hands on) the flight as any leader does.
#[derive(Clone)]
pub(crate) struct Succession(Arc<Mutex<Option<Leader>>>);

impl Succession {
    /// The flight's new leader, for the first follower that asks.
    pub(crate) fn take(&self) -> Option<Leader> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

struct InFlight {
    id: u64,
    rx: watch::Receiver<Outcome>,
    followers: usize,
    mark: Option<Mark>,
}

/// What the leader's store will replace, and the generation its response is produced
/// under: a joiner must have seen the same.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    /// The placeholder token or the CAS value the leader's store expects (`None`: it holds
    /// no guard, and only requests that looked before it went out join).
    pub(crate) guard: Option<u64>,
    pub(crate) generation: Option<u64>,
    /// When the guard was in place, on the placement clock (`storage::placements`).
    pub(crate) at: u64,
    /// The count of this process's purges (`storage::purges`) when the mark was made.
    pub(crate) purges: u64,
}

impl Mark {
    fn admits(&self, seen: &Found) -> bool {
        if seen.generation != self.generation {
            return false;
        }
        if seen.started < self.at {
            // Looked before the leader's placeholder landed: the leader's request goes out
            // after this one arrived.
            return true;
        }
        match seen.slot {
            Slot::Placeholder { placeholder, .. } => Some(placeholder.token) == self.guard,
            Slot::Value { cas } => Some(cas) == self.guard,
            // Neither could read memcached (a server down or hung): nothing there can show
            // a purge since the leader went out, and this process's own would have moved
            // the count. Without this, every request for a hot URL went to the origin
            // while memcached was gone (lookups failing fast never overlap a leader's).
            Slot::Unknown => self.guard.is_none() && self.purges == purges(),
            // Read from a memcached without CAS: the leader's own placeholder is the same
            // refill (a purge would have deleted it); anything else tells nothing, and a
            // lookup that read it is no lookup that failed.
            Slot::Uncas { token } => token.is_some() && token == self.guard,
            Slot::Absent => false,
        }
    }
}

#[derive(Clone, Default)]
pub(crate) struct SingleFlight {
    state: Arc<Mutex<State>>,
    /// The next flight's id. Outside the lock: every request reads it when it arrives
    /// ([`epoch`](Self::epoch)), and a lock per hit would be shared by every thread.
    next_id: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    inflight: HashMap<String, InFlight>,
}

pub(crate) enum Flight {
    /// Call the inner service, then [`Leader::publish`] its outcome.
    Leader(Leader),
    /// Wait for the leader with [`wait`].
    Follower(Follower),
    /// Too many already waiting for this key: go alone.
    Alone,
}

/// The request that calls the inner service for a key. Dropping it unfinished (an error,
/// a client that went away) hands the flight to one of its followers, if any: the first to
/// take it leads, the others wait for it, and so do requests that join meanwhile. Had they
/// all looked the URL up again instead, a request arriving at that moment (a client that
/// hangs up again and again) could lead each time, until every follower had used up its
/// look-ups and gone to the origin on its own.
pub(crate) struct Leader {
    flights: SingleFlight,
    key: String,
    id: u64,
    /// Shared with [`Handoff`]s of this flight, which end it early.
    tx: Arc<watch::Sender<Outcome>>,
}

/// What ends a leader's flight early, from where the [`Leader`] is not at hand: a fill
/// whose reading has to wait for its client (see `fill::reader`) hands the flight on, so
/// that the requests waiting for it do not wait for that client.
pub(crate) struct Handoff {
    flights: SingleFlight,
    key: String,
    id: u64,
    tx: Arc<watch::Sender<Outcome>>,
}

impl Handoff {
    /// Ends the flight if it is still this one: its followers elect a leader of their own
    /// at once (see [`Waited::Heir`]), and requests that come from now on do not join it.
    /// The leader's later publish reaches only followers that have not moved on; its drop
    /// changes nothing.
    pub(crate) fn hand_on(self) {
        hand_on(&self.flights, &self.key, self.id, &self.tx);
    }
}

/// Takes flight `id` of `key` off the map, if it is still there, and passes it to a new
/// leader among its followers, if it has any.
fn hand_on(flights: &SingleFlight, key: &str, id: u64, tx: &watch::Sender<Outcome>) {
    let mut state = flights.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(flight) = state.inflight.get(key).filter(|f| f.id == id) else {
        // Published, handed on, or ended by a follower that waited in vain.
        return;
    };
    if flight.followers == 0 {
        state.inflight.remove(key);
        return;
    }
    // Unfinished, with followers: a new flight in its place (requests that join now wait
    // for it), led by the follower that takes it first.
    let heir = flights.lead(&mut state, key);
    drop(state);
    let succession = Succession(Arc::new(Mutex::new(Some(heir))));
    // Should every follower be gone by now, the heir comes back and is dropped: it has no
    // followers either, and ends the new flight.
    let _ = tx.send(Some(LeaderOutcome::Succession(succession)));
}

impl SingleFlight {
    /// Takes flight `id` of `key` off the map, if it is still the one there (a flight
    /// ended early and replaced keeps its old members, whose ends touch nothing).
    fn end(&self, key: &str, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.inflight.get(key).is_some_and(|f| f.id == id) {
            state.inflight.remove(key);
        }
    }

    /// Joins the flight for `key` if `seen` (this request's lookup) allows, or leads a new
    /// one.
    pub(crate) fn join(&self, key: &str, max_followers: usize, seen: &Found) -> Flight {
        self.join_as(key, max_followers, seen, true)
    }

    /// Joins the flight for `key` as [`join`](Self::join) does, but never leads one: for a
    /// request whose response cannot be stored, which nobody should wait for.
    pub(crate) fn follow(&self, key: &str, max_followers: usize, seen: &Found) -> Flight {
        self.join_as(key, max_followers, seen, false)
    }

    /// The id the next flight will have: a flight with an id at least this one was led
    /// after this call (its request went out later).
    pub(crate) fn epoch(&self) -> u64 {
        self.next_id.load(Ordering::Acquire)
    }

    fn join_as(&self, key: &str, max_followers: usize, seen: &Found, may_lead: bool) -> Flight {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = state.inflight.get_mut(key) {
            if flight.mark.is_none_or(|mark| mark.admits(seen)) {
                if flight.followers >= max_followers {
                    return Flight::Alone;
                }
                flight.followers += 1;
                return Flight::Follower(Follower {
                    rx: flight.rx.clone(),
                    flights: self.clone(),
                    key: key.to_string(),
                    id: flight.id,
                    joined: Instant::now(),
                });
            }
            // The URL changed under that flight (purged, refilled): this request's response
            // must be its own. The old flight keeps its followers.
        }
        if !may_lead {
            return Flight::Alone;
        }
        Flight::Leader(self.lead(&mut state, key))
    }

    /// Leads a flight for `key` unless one is under way (a background refresh that nobody
    /// waits for).
    pub(crate) fn try_lead(&self, key: &str) -> Option<Leader> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.inflight.contains_key(key) {
            return None;
        }
        Some(self.lead(&mut state, key))
    }

    fn lead(&self, state: &mut State, key: &str) -> Leader {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = watch::channel(None);
        let flight = InFlight {
            id,
            rx,
            followers: 0,
            mark: None,
        };
        state.inflight.insert(key.to_string(), flight);
        Leader {
            flights: self.clone(),
            key: key.to_string(),
            id,
            tx: Arc::new(tx),
        }
    }
}

impl Leader {
    /// Says what the leader's store will replace: from now on, only requests that saw the
    /// same join.
    pub(crate) fn mark(&self, mark: Mark) {
        let mut state = self.flights.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = state
            .inflight
            .get_mut(&self.key)
            .filter(|f| f.id == self.id)
        {
            flight.mark = Some(mark);
        }
    }

    /// Publishes the outcome to every follower and ends the flight: it is published once
    /// the entry is in the backend (or will not be), so later requests find it there.
    pub(crate) fn publish(&self, published: Option<Published>) {
        self.leave();
        let _ = self.tx.send(Some(
            published.map_or(LeaderOutcome::Nothing, LeaderOutcome::Entry),
        ));
    }

    /// Publishes an entry the leader found stored by another process instead of fetching
    /// one: usable to its followers, but no validation made after they arrived.
    pub(crate) fn publish_found(&self, published: Published) {
        self.leave();
        let _ = self.tx.send(Some(LeaderOutcome::Found(published)));
    }

    /// Ends the flight with nothing to share because of what the leader's request was
    /// (see [`Waited::Declined`]).
    pub(crate) fn decline(&self, credentials: bool) {
        self.leave();
        let _ = self.tx.send(Some(LeaderOutcome::Declined { credentials }));
    }

    fn leave(&self) {
        self.flights.end(&self.key, self.id);
    }

    /// A [`Handoff`] of this flight.
    pub(crate) fn handoff(&self) -> Handoff {
        Handoff {
            flights: self.flights.clone(),
            key: self.key.clone(),
            id: self.id,
            tx: Arc::clone(&self.tx),
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        hand_on(&self.flights, &self.key, self.id, &self.tx);
    }
}

/// A request waiting for a leader. It counts against the flight's bound only while it
/// waits: dropped (answered, timed out, cancelled), it leaves room for another.
pub(crate) struct Follower {
    rx: watch::Receiver<Outcome>,
    flights: SingleFlight,
    key: String,
    id: u64,
    joined: Instant,
}

impl Follower {
    /// Whether the flight followed was led after [`SingleFlight::epoch`] returned `epoch`:
    /// its leader's request went out after that.
    pub(crate) fn led_since(&self, epoch: u64) -> bool {
        self.id >= epoch
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut state = self.flights.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = state
            .inflight
            .get_mut(&self.key)
            .filter(|f| f.id == self.id)
        {
            flight.followers = flight.followers.saturating_sub(1);
        }
    }
}

/// What waiting for a leader gave.
pub(crate) enum Waited {
    /// The leader's entry, and whether its request fetched it (rather than finding it
    /// stored by another process).
    Entry(Arc<Entry>, bool),
    /// The leader's response predates a purge this request came after.
    Overtaken,
    /// The leader went away without a word and without followers to hand on to: nothing
    /// was learnt of the URL, so the followers elect another leader rather than all go to
    /// the origin at once.
    Abandoned,
    /// The leader went away unfinished (its client hung up before the response was
    /// complete): the follower that [takes](Succession::take) the new leader leads the
    /// flight on; the others join it again (and wait for that one).
    Heir(Succession),
    /// The leader had nothing to share (the response is not stored), or took too long.
    Nothing,
    /// The leader's response was not stored only because of what its request was: a part
    /// for its `Range`, a 304 for its own conditions, or (`credentials`) a response that
    /// does not say it may be shared for its `Authorization` (RFC 9111 §3.5). A follower
    /// unlike it may have its answer stored, and elects another leader with the others,
    /// rather than all of them going to the origin at once.
    Declined { credentials: bool },
}

/// Waits at most `timeout` for the leader.
pub(crate) async fn wait(follower: Follower, timeout: Duration) -> Waited {
    let joined = follower.joined;
    match wait_published(follower, timeout).await {
        Some(LeaderOutcome::Entry((_, Some(since))) | LeaderOutcome::Found((_, Some(since))))
            if joined >= since =>
        {
            tracing::debug!("the response waited for predates a purge this request followed");
            Waited::Overtaken
        }
        Some(LeaderOutcome::Entry((entry, _))) => Waited::Entry(entry, true),
        Some(LeaderOutcome::Found((entry, _))) => Waited::Entry(entry, false),
        Some(LeaderOutcome::Nothing) => Waited::Nothing,
        Some(LeaderOutcome::Declined { credentials }) => Waited::Declined { credentials },
        Some(LeaderOutcome::Succession(succession)) => Waited::Heir(succession),
        None => Waited::Abandoned,
    }
}

/// The leader's outcome: `Some(outcome)`, or `None` when it went without publishing;
/// `Some(LeaderOutcome::Nothing)` when the wait timed out.
async fn wait_published(follower: Follower, timeout: Duration) -> Option<LeaderOutcome> {
    let mut rx = follower.rx.clone();
    let waited = tokio::time::timeout(timeout, async {
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return Some(outcome);
            }
            if rx.changed().await.is_err() {
                // The leader is gone; it may have published just before.
                return rx.borrow().clone();
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        follower.end_flight();
        Some(LeaderOutcome::Nothing)
    })
}

impl Follower {
    /// Ends the flight this request waited for in vain: a leader that has not answered
    /// within the wait (a hung origin request, a background refresh nobody bounds) no
    /// longer gathers requests, each of which would wait it out in turn and then go
    /// alone; the next request leads a flight of its own. The old leader's publish or
    /// drop then touches nothing (`leave` checks the flight's id).
    fn end_flight(&self) {
        self.flights.end(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::entry::Placeholder;

    fn seen(slot: Slot) -> Found {
        Found {
            slot,
            generation: Some(1),
            ..Found::default()
        }
    }

    #[test]
    fn a_request_that_only_follows_never_leads() {
        let flights = SingleFlight::default();
        let any = seen(Slot::Absent);
        assert!(matches!(flights.follow("k", 2, &any), Flight::Alone));
        let Flight::Leader(_leader) = flights.join("k", 2, &any) else {
            panic!("nobody led: the first to join leads")
        };
        assert!(matches!(flights.follow("k", 2, &any), Flight::Follower(_)));
    }

    #[tokio::test]
    async fn followers_are_bounded_and_released_when_the_leader_drops() {
        let flights = SingleFlight::default();
        let any = seen(Slot::Absent);
        let Flight::Leader(leader) = flights.join("k", 2, &any) else {
            panic!("first is leader")
        };
        let Flight::Follower(a) = flights.join("k", 2, &any) else {
            panic!("follower")
        };
        let Flight::Follower(_b) = flights.join("k", 2, &any) else {
            panic!("follower")
        };
        assert!(matches!(flights.join("k", 2, &any), Flight::Alone));
        // A follower that stops waiting leaves room for another.
        drop(_b);
        let Flight::Follower(_c) = flights.join("k", 2, &any) else {
            panic!("room again")
        };
        drop(leader);
        // The flight is handed to its followers: the first to take it leads.
        let Waited::Heir(succession) = wait(a, Duration::from_secs(1)).await else {
            panic!("the flight was not handed on")
        };
        let leader = succession.take().expect("the first to ask leads");
        assert!(succession.take().is_none(), "one leader");
        assert!(flights.try_lead("k").is_none(), "a flight is under way");
        // Published: the flight is over, the next request leads.
        leader.publish(None);
        assert!(flights.try_lead("k").is_some());
    }

    /// A leader gone unfinished (its client hung up) hands its flight to its followers. A
    /// request that arrived at that moment led instead (the followers looked the URL up
    /// again, and found its flight): a client that hangs up again and again led every
    /// flight, and the followers, their look-ups used up, each went to the origin.
    #[tokio::test]
    async fn a_leader_gone_unfinished_hands_its_flight_to_a_follower_not_a_newcomer() {
        let flights = SingleFlight::default();
        let any = seen(Slot::Absent);
        let Flight::Leader(leader) = flights.join("k", 8, &any) else {
            panic!("leader")
        };
        let Flight::Follower(follower) = flights.join("k", 8, &any) else {
            panic!("follower")
        };
        drop(leader);
        let Flight::Follower(newcomer) = flights.join("k", 8, &any) else {
            panic!("a request arriving as the leader went took the lead from its followers")
        };
        let Waited::Heir(succession) = wait(follower, Duration::from_secs(1)).await else {
            panic!("the flight was not handed on")
        };
        let heir = succession.take().expect("the follower leads");
        drop(succession);
        heir.publish(None);
        assert!(matches!(
            wait(newcomer, Duration::from_secs(1)).await,
            Waited::Nothing
        ));
        assert!(flights.try_lead("k").is_some(), "the flight is over");
    }

    /// A flight handed to followers that all went away without taking it is handed on to
    /// those that joined since, or ends: nobody waits for a leader that never comes.
    #[tokio::test]
    async fn a_flight_nobody_takes_is_handed_on_or_ends() {
        let flights = SingleFlight::default();
        let any = seen(Slot::Absent);
        let Flight::Leader(leader) = flights.join("k", 8, &any) else {
            panic!("leader")
        };
        let Flight::Follower(gone) = flights.join("k", 8, &any) else {
            panic!("follower")
        };
        drop(leader);
        let Flight::Follower(newcomer) = flights.join("k", 8, &any) else {
            panic!("a follower of the heir")
        };
        drop(gone);
        let Waited::Heir(succession) = wait(newcomer, Duration::from_secs(1)).await else {
            panic!("the flight was not handed on to the one waiting")
        };
        drop(succession);
        // Nobody took it, nobody waits: the flight is over.
        assert!(flights.try_lead("k").is_some());
    }

    #[tokio::test]
    async fn a_request_that_saw_the_url_change_leads_its_own_flight() {
        let flights = SingleFlight::default();
        let before = seen(Slot::Absent);
        let Flight::Leader(leader) = flights.join("k", 8, &before) else {
            panic!("leader")
        };
        let placeholder = Placeholder {
            token: 7,
            until_ms: 0,
        };
        leader.mark(Mark {
            guard: Some(7),
            generation: Some(1),
            at: crate::cache::storage::placed(),
            purges: purges(),
        });
        // Looked before the placeholder landed: joins.
        assert!(matches!(flights.join("k", 8, &before), Flight::Follower(_)));
        // Saw the leader's placeholder: joins.
        let same = seen(Slot::Placeholder {
            cas: 3,
            placeholder,
        });
        assert!(matches!(flights.join("k", 8, &same), Flight::Follower(_)));
        // Saw the URL empty after the placeholder landed (a purge deleted it), or another
        // namespace generation: leads a flight of its own.
        let purged = seen(Slot::Absent);
        assert!(matches!(flights.join("k", 8, &purged), Flight::Leader(_)));
        let Flight::Leader(second) = flights.join("k2", 8, &before) else {
            panic!("leader")
        };
        second.mark(Mark {
            guard: Some(9),
            generation: Some(1),
            at: crate::cache::storage::placed(),
            purges: purges(),
        });
        let mut other_generation = seen(Slot::Value { cas: 9 });
        other_generation.generation = Some(2);
        assert!(matches!(
            flights.join("k2", 8, &other_generation),
            Flight::Leader(_)
        ));
    }

    #[test]
    fn a_flight_memcached_could_not_guard_admits_failed_lookups_until_a_purge() {
        let flights = SingleFlight::default();
        let failed = Found::default();
        let Flight::Leader(leader) = flights.join("k", 8, &failed) else {
            panic!("leader")
        };
        leader.mark(Mark {
            guard: None,
            generation: None,
            at: crate::cache::storage::placed(),
            purges: purges(),
        });
        // Looked after the leader went out, and could not read memcached either: joins.
        let after = Found {
            started: crate::cache::storage::placements() + 1,
            ..Found::default()
        };
        assert!(matches!(flights.join("k", 8, &after), Flight::Follower(_)));
        // A lookup that did read memcached saw what the leader could not: its own flight.
        let read = Found {
            started: after.started,
            ..seen(Slot::Absent)
        };
        assert!(matches!(flights.join("k", 8, &read), Flight::Leader(_)));
        // Once a purge started in this process, a failed lookup joins no earlier flight.
        let Flight::Leader(leader) = flights.join("k2", 8, &failed) else {
            panic!("leader")
        };
        leader.mark(Mark {
            guard: None,
            generation: None,
            at: crate::cache::storage::placed(),
            purges: purges().wrapping_sub(1),
        });
        assert!(matches!(flights.join("k2", 8, &after), Flight::Leader(_)));
    }

    /// Review SL: a leader's cutoff (when its store's check began) and its followers' join
    /// times were wall-clock readings: the clock set back between them (an NTP step, an
    /// operator) put a later join before the cutoff, and a follower whose lookup came after
    /// a tag purge the check could not show got the response that purge predates.
    #[tokio::test]
    async fn a_follower_that_joins_after_the_cutoff_is_refused_across_a_clock_set_back() {
        let flights = SingleFlight::default();
        let any = seen(Slot::Absent);
        let Flight::Leader(leader) = flights.join("k", 8, &any) else {
            panic!("leader")
        };
        // Read before the wall clock was set back: the monotonic one was not.
        let cutoff = Instant::now();
        let Flight::Follower(late) = flights.join("k", 8, &any) else {
            panic!("follower")
        };
        let entry = Arc::new(crate::cache::shared::testing::bare_entry());
        leader.publish(Some((entry, Some(cutoff))));
        assert!(matches!(
            wait(late, Duration::from_secs(1)).await,
            Waited::Overtaken
        ));
    }

    #[tokio::test]
    async fn a_response_overtaken_by_a_purge_reaches_only_earlier_followers() {
        let flights = SingleFlight::default();
        let any = seen(Slot::Absent);
        let Flight::Leader(leader) = flights.join("k", 8, &any) else {
            panic!("leader")
        };
        let Flight::Follower(early) = flights.join("k", 8, &any) else {
            panic!("follower")
        };
        let purge = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let Flight::Follower(late) = flights.join("k", 8, &any) else {
            panic!("follower")
        };
        let entry = Arc::new(crate::cache::shared::testing::bare_entry());
        leader.publish(Some((entry, Some(purge))));
        assert!(matches!(
            wait(early, Duration::from_secs(1)).await,
            Waited::Entry(..)
        ));
        assert!(matches!(
            wait(late, Duration::from_secs(1)).await,
            Waited::Overtaken
        ));
    }
}
