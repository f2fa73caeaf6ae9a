//! [`Config`]: everything a layer is configured with, shared by the layer, its services and
//! its purger (which is why it lives apart from all three).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::background::Background;
use super::fill::FillBudget;
use super::key::Canonical;
use super::near::NearCache;
use super::passes::Passes;
use super::single_flight::SingleFlight;
use super::storage::{LayerMemory, Storage};
use crate::backend::Backend;
use crate::cache::policy::Policy;
use crate::cache::stats::CacheStats;

#[derive(Clone)]
pub(crate) struct Config<B> {
    pub(crate) backend: B,
    pub(crate) namespace: String,
    pub(crate) policy: Policy,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) canonical: Canonical,
    pub(crate) cache_status: Option<String>,
    pub(crate) lifetime_header: Option<HeaderName>,
    pub(crate) max_entry_size: usize,
    pub(crate) lookup_timeout: Duration,
    pub(crate) coalesce_timeout: Duration,
    /// How long a request the layer makes of its own (a refresh, a range miss's whole
    /// representation) may run, body included, before it is dropped.
    pub(crate) background_timeout: Duration,
    pub(crate) max_coalesced: usize,
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) keep_stale: Duration,
    /// How stale a stored response may be to stand in for an origin that cannot be
    /// reached; `None`: only within `stale-if-error`.
    pub(crate) stale_if_unreachable: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) lease_wait: Duration,
    pub(crate) lease_poll: Duration,
    pub(crate) stats: CacheStats,
    pub(crate) flights: SingleFlight,
    /// URLs whose latest response was not stored: their requests do not wait for each
    /// other.
    pub(crate) passes: Passes,
    /// Shared by the layer's clones: what clients have not read yet of responses being
    /// stored.
    pub(crate) fill_budget: Arc<FillBudget>,
    /// Stores, refreshes and lease releases still running, shared by the layer's clones.
    pub(crate) background: Background,
    /// Whole-representation fills after range misses under way (bounded).
    pub(crate) whole_fills: Arc<tokio::sync::Semaphore>,
    /// Unsafe requests followed to the origin's answer after their clients left (bounded).
    pub(crate) unanswered: Arc<tokio::sync::Semaphore>,
    /// Background (stale-while-revalidate) refreshes under way (bounded).
    pub(crate) refreshes: Arc<tokio::sync::Semaphore>,
    /// Tag purges made by this layer and its purgers, recently.
    pub(crate) memory: LayerMemory,
    /// Makes the body of the layer's own requests (a range miss's whole-representation
    /// GET); `None`: a few common body types only.
    pub(crate) own_request_body: Option<super::own_request::MakeBody>,
    /// The in-process tier in front of the backend, when there is one.
    pub(crate) near: Option<NearCache>,
}

impl<B: Backend> Config<B> {
    /// The backend seen through the cache's key layout.
    pub(crate) fn storage(&self) -> Storage<B> {
        Storage::new(
            self.backend.clone(),
            &self.namespace,
            self.lookup_timeout,
            self.stats.clone(),
            self.background.clone(),
            self.memory.clone(),
            self.near.clone(),
        )
        .judged_by(&self.policy)
        .consuming(
            [self.lifetime_header.clone(), self.tag_header.clone()]
                .into_iter()
                .flatten(),
        )
        .keyed_by(&self.key_headers)
    }
}
