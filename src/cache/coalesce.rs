//! Coalescing: requests for a URL being refilled wait for the one that refills it, in this
//! process (the single flight) and across processes (the lease in memcached).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::exchange::Plan;
use super::lease::{self, Lease};
use super::service::Shared;
use super::single_flight::Leader;
use super::storage::{Found, Lookup};
use crate::backend::Backend;
use crate::codec::entry::Entry;
use crate::policy::freshness::Freshness;

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
