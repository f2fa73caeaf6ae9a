//! Request coalescing inside one process: the first miss for a key calls the inner
//! service, later misses for the same key wait (bounded in number and time) for its entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::cache::entry::Entry;

/// What a leader publishes: `Some(Some(entry))` stored, `Some(None)` nothing to share.
type Outcome = Option<Option<Arc<Entry>>>;

struct InFlight {
    id: u64,
    rx: watch::Receiver<Outcome>,
    followers: usize,
}

#[derive(Clone, Default)]
pub(crate) struct SingleFlight {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    inflight: HashMap<String, InFlight>,
    next_id: u64,
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
/// a client that went away) releases the followers to go on their own.
pub(crate) struct Leader {
    flights: SingleFlight,
    key: String,
    id: u64,
    tx: watch::Sender<Outcome>,
}

impl SingleFlight {
    pub(crate) fn join(&self, key: &str, max_followers: usize) -> Flight {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = state.inflight.get_mut(key) {
            if flight.followers >= max_followers {
                return Flight::Alone;
            }
            flight.followers += 1;
            return Flight::Follower(Follower {
                rx: flight.rx.clone(),
                flights: self.clone(),
                key: key.to_string(),
                id: flight.id,
            });
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
        let id = state.next_id;
        state.next_id += 1;
        let (tx, rx) = watch::channel(None);
        let flight = InFlight {
            id,
            rx,
            followers: 0,
        };
        state.inflight.insert(key.to_string(), flight);
        Leader {
            flights: self.clone(),
            key: key.to_string(),
            id,
            tx,
        }
    }
}

impl Leader {
    /// Publishes the outcome to every follower, and to requests that join until the leader
    /// is dropped (keep it until the entry is in the backend, so nobody misses in between).
    pub(crate) fn publish(&self, entry: Option<Arc<Entry>>) {
        let _ = self.tx.send(Some(entry));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut state = self.flights.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .inflight
            .get(&self.key)
            .is_some_and(|f| f.id == self.id)
        {
            state.inflight.remove(&self.key);
        }
    }
}

/// A request waiting for a leader. It counts against the flight's bound only while it
/// waits: dropped (answered, timed out, cancelled), it leaves room for another.
pub(crate) struct Follower {
    rx: watch::Receiver<Outcome>,
    flights: SingleFlight,
    key: String,
    id: u64,
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

/// Waits at most `timeout` for the leader; `None` when it had nothing to share, went away
/// or took too long.
pub(crate) async fn wait(follower: Follower, timeout: Duration) -> Option<Arc<Entry>> {
    let mut rx = follower.rx.clone();
    let waited = tokio::time::timeout(timeout, async {
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                // The leader is gone; it may have published just before.
                return rx.borrow().clone().flatten();
            }
        }
    })
    .await;
    waited.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_are_bounded_and_released_when_the_leader_drops() {
        let flights = SingleFlight::default();
        let Flight::Leader(leader) = flights.join("k", 2) else {
            panic!("first is leader")
        };
        let Flight::Follower(a) = flights.join("k", 2) else {
            panic!("follower")
        };
        let Flight::Follower(_b) = flights.join("k", 2) else {
            panic!("follower")
        };
        assert!(matches!(flights.join("k", 2), Flight::Alone));
        // A follower that stops waiting leaves room for another.
        drop(_b);
        let Flight::Follower(_c) = flights.join("k", 2) else {
            panic!("room again")
        };
        drop(leader);
        assert!(wait(a, Duration::from_secs(1)).await.is_none());
        let Flight::Leader(leader) = flights.join("k", 2) else {
            panic!("new leader")
        };
        // Published but not dropped: late joiners still get the outcome at once.
        leader.publish(None);
        let Flight::Follower(late) = flights.join("k", 2) else {
            panic!("late follower")
        };
        assert!(wait(late, Duration::from_millis(10)).await.is_none());
        assert!(flights.try_lead("k").is_none(), "a flight is under way");
        drop(leader);
        assert!(flights.try_lead("k").is_some());
    }
}
