//! One cacheable request on its way through the cache: what was planned for it, what the
//! lookup found, why it goes to the origin and, once it has, what was sent.

use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

use super::status::{Detail, Forward};
use super::storage::Found;
use crate::cache::policy::CacheControl;

/// One cacheable request after its lookup: the state every later phase (coalescing,
/// the origin exchange, filling, revalidation) works from, in one value instead of
/// loose arguments.
pub(super) struct Exchange {
    pub(super) plan: Plan,
    /// What the lookup found (nothing, when the request skipped it).
    pub(super) found: Found,
    /// Why the request goes to the origin, if it does.
    pub(super) fwd: Forward,
    /// Why the cache was of no help, if it was not (the backend could not be asked).
    pub(super) detail: Option<Detail>,
    pub(super) is_head: bool,
}

/// What an exchange sent to the origin: the request's fields (before the cache's own
/// validators were added) and when it went.
pub(super) struct Sent {
    pub(super) request_headers: HeaderMap,
    pub(super) request_time: SystemTime,
    /// When it went, on the monotonic clock: how the wall clock moved since tells whether
    /// it was set back meanwhile (see [`Target::sent`](super::storage::Target)).
    pub(super) sent_at: Instant,
}

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
    /// The single-flight epoch when the request arrived: a flight led since then went to
    /// the origin after it, and its response is a validation this request's `no-cache`
    /// (or `max-age`) accepts (RFC 9111 §5.2.1.4).
    pub(super) arrived: u64,
}
