use std::time::Duration;

/// Why a backend call failed.
///
/// Callers that cache treat every variant as a miss; the variants exist so that those who
/// want to know (the `try_*` methods, logs, stats) can tell bad input from a server that is
/// gone.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The key breaks memcached's rules; nothing was sent.
    #[error("invalid memcache key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key, escaped and shortened for display.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The value does not fit the item size limit; nothing was sent.
    #[error("value of {size} bytes is larger than the item size limit allows ({limit} bytes)")]
    ValueTooLarge {
        /// The value's length.
        size: usize,
        /// The largest value the limit allows for this key.
        limit: usize,
    },
    /// The server could not be reached, or is marked down after repeated failures.
    #[error("memcached server {server} is unreachable: {reason}")]
    Unreachable {
        /// `host:port`, or `memory` for the fake.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The server did not answer within the operation timeout.
    #[error("memcached server {server} did not answer within {after:?}")]
    Timeout {
        /// `host:port`, or `memory` for the fake.
        server: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The server answered with an error (`SERVER_ERROR`, `CLIENT_ERROR`, `ERROR`).
    #[error("memcached server error: {0}")]
    Server(String),
    /// The server's reply could not be understood; the connection was dropped.
    #[error("memcached protocol error: {0}")]
    Protocol(String),
}

impl BackendError {
    /// Whether the error says the server is unreachable or slow, as opposed to bad input
    /// or a refusal by a working server.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}
