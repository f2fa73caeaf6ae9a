//! One cacheable request on its way through the cache: what was planned for it.

use std::time::Duration;

use crate::policy::CacheControl;

/// What the layer does with one cacheable request.
pub(super) struct Plan {
    pub(super) canonical: String,
    pub(super) key: String,
    /// The route's lifetime.
    pub(super) lifetime: Duration,
    pub(super) request_cc: CacheControl,
    /// `false` for requests with preconditions only the origin can evaluate: they are never
    /// answered from the cache, neither from a lookup nor from another request's response.
    pub(super) from_cache: bool,
}
