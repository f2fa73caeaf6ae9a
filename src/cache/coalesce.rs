//! Coalescing: requests for a URL being refilled wait for the one that refills it, in this
//! process (the single flight) and across processes (the lease in memcached).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::exchange::{Exchange, Plan};
use super::lease::{self, Acquired, Lease};
use super::service::Shared;
use super::single_flight::{self, Flight, Leader};
use super::storage::{Found, Lookup};
use crate::backend::Backend;
use crate::cache::entry::Entry;
use crate::cache::policy::freshness::Freshness;

/// What coordinating with the other requests for a key gave.
pub(super) enum Coordinated<B: Backend> {
    /// Another request's response, usable for this one.
    Answered(Arc<Entry>, Freshness),
    /// Go to the origin, holding what this request leads (maybe nothing).
    Go(Filler<B>),
}

impl<B: Backend> Shared<B> {
    /// Coordinates with other requests for the key: in this process (lead the flight, or
    /// wait for its leader), then across processes (take the lease, or wait for its
    /// holder's entry).
    pub(super) async fn coordinate(
        &self,
        ex: &Exchange,
        request_headers: &HeaderMap,
    ) -> Coordinated<B> {
        let plan = &ex.plan;
        let mut filler = Filler::none();
        if ex.is_head || !plan.from_cache {
            return Coordinated::Go(filler);
        }
        match self
            .config
            .flights
            .join(&plan.key, self.config.max_coalesced)
        {
            Flight::Leader(leader) => filler.leader = Some(leader),
            Flight::Follower(rx) => {
                self.config.stats.record_coalesced();
                tracing::debug!(key = %plan.key, "waiting for the response of a request under way");
                let entry = single_flight::wait(rx, self.config.coalesce_timeout).await;
                if let Some(entry) = entry {
                    if let Some(freshness) = self.usable_now(&entry, plan, request_headers) {
                        return Coordinated::Answered(entry, freshness);
                    }
                }
                tracing::debug!(key = %plan.key, "no usable response from the request waited for (timed out, failed or not stored); going on alone");
            }
            Flight::Alone => {}
        }
        let Some(ttl) = self.config.lease else {
            return Coordinated::Go(filler);
        };
        if filler.leader.is_none() || ex.detail.is_some() {
            return Coordinated::Go(filler);
        }
        match lease::acquire(&self.storage, &plan.canonical, ttl).await {
            Acquired::Mine(lease) => {
                tracing::debug!(key = %plan.key, "lease taken: this request refills the entry");
                filler.lease = Some(lease);
            }
            Acquired::Elsewhere => {
                tracing::debug!(key = %plan.key, "another process holds the lease; waiting for its entry");
                if let Some((entry, freshness)) =
                    Box::pin(wait_for_other_process(self, plan, request_headers)).await
                {
                    filler.publish(Some(Arc::clone(&entry)));
                    return Coordinated::Answered(entry, freshness);
                }
                tracing::debug!(key = %plan.key, "no entry from the lease holder (released, or the wait ended); going to the inner service");
            }
            Acquired::Unknown => {}
        }
        Coordinated::Go(filler)
    }
}

/// Held by the request that refills a URL: its followers in this process and its lease
/// across processes are released when it is dropped (after the store lands).
pub(super) struct Filler<B: Backend> {
    pub(super) leader: Option<Leader>,
    pub(super) lease: Option<Lease<B>>,
}

impl<B: Backend> Filler<B> {
    pub(super) fn none() -> Self {
        Self {
            leader: None,
            lease: None,
        }
    }

    pub(super) fn publish(&self, entry: Option<Arc<Entry>>) {
        if let Some(leader) = &self.leader {
            leader.publish(entry);
        }
    }

    /// Nothing will be stored: followers go on their own, the lease is gone when this
    /// returns.
    pub(super) async fn release(self) {
        self.publish(None);
        if let Some(lease) = self.lease {
            lease.release().await;
        }
    }
}

/// Polls for the entry another process is refilling, for at most the lease wait, and
/// stops early when that process released its lease without storing anything.
pub(super) async fn wait_for_other_process<B: Backend>(
    shared: &Shared<B>,
    plan: &Plan,
    request_headers: &HeaderMap,
) -> Option<(Arc<Entry>, Freshness)> {
    let now = tokio::time::Instant::now();
    // A configured wait too long to add is as good as forever: the lease's own lifetime
    // still ends the wait.
    let deadline = now
        .checked_add(shared.config.lease_wait)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
    loop {
        tokio::time::sleep(shared.config.lease_poll).await;
        // The lease before the entry: its holder releases it only once its entry is
        // stored, so a lease found gone means the lookup that follows sees that entry,
        // whereas a lookup read first could miss a store that lands just before the
        // release (and send this request to the origin as well).
        let released = !lease::held(&shared.storage, &plan.canonical).await;
        let lookup = shared
            .storage
            .lookup(&plan.canonical, &plan.key, request_headers)
            .await;
        if let Lookup::Found(Found {
            entry: Some(entry), ..
        }) = lookup
        {
            if let Some(freshness) = shared.usable_now(&entry, plan, request_headers) {
                return Some((entry, freshness));
            }
        }
        // Released with nothing stored: stop waiting, go to the origin.
        if released || tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::service::testing::{entry, exchange_for, get, shared};

    #[tokio::test]
    async fn a_second_request_waits_for_the_first_and_gets_its_entry() {
        let layer = MemcacheLayer::new(MemoryBackend::new()).lease(None);
        let shared = shared(&layer);
        let request = get("http://site.example/w");
        let first = exchange_for(&shared, &request).await;
        let Coordinated::Go(filler) = shared.coordinate(&first, request.headers()).await else {
            panic!("the first request goes to the origin")
        };
        assert!(filler.leader.is_some(), "and leads the flight");
        let follower = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let request = get("http://site.example/w");
                let second = exchange_for(&shared, &request).await;
                match shared.coordinate(&second, request.headers()).await {
                    Coordinated::Answered(entry, _) => Some(entry.body.clone()),
                    Coordinated::Go(_) => None,
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        filler.publish(Some(Arc::new(entry(&first, &[]))));
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
        let Coordinated::Go(filler) = shared.coordinate(&ex, request.headers()).await else {
            panic!("goes alone")
        };
        assert!(filler.leader.is_none() && filler.lease.is_none());
    }
}
