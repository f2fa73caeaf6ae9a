use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;
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
        /// `host:port`, `memory` for the fake, or `(none)` when no server is left.
        server: String,
        /// What happened.
        #[source]
        reason: UnreachableReason,
    },
    /// The server did not answer within the operation timeout.
    #[error("memcached server {server} did not answer within {after:?}")]
    Timeout {
        /// `host:port`, or `memory` for the fake.
        server: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The caller's own deadline (the cache layer's lookup timeout) passed before the
    /// backend answered; the backend may not have timed out itself, and which server was
    /// slow is not known at that level.
    #[error("no answer from the backend within the caller's deadline of {after:?}")]
    Deadline {
        /// The deadline that passed.
        after: Duration,
    },
    /// The server answered with an error (`SERVER_ERROR`, `CLIENT_ERROR`, `ERROR`).
    #[error("memcached server error: {0}")]
    Server(String),
    /// The server does not take this command: a proxy such as twemproxy, which closes
    /// the connection on `stats` and `flush_all` (every request sharing it would fail).
    /// Nothing was sent; the server's health is unchanged.
    #[error("memcached server {server} does not support `{command}` (a proxy?); nothing was sent")]
    Unsupported {
        /// `host:port`.
        server: String,
        /// The command refused.
        command: &'static str,
    },
    /// A read-modify-write ([`Backend::advance_on_every_server`](super::Backend::advance_on_every_server))
    /// found the value changed by another writer at each of its rounds, and gave up.
    #[error(
        "memcached key {key:?} kept changing under compare-and-swap; given up after {rounds} rounds"
    )]
    Contended {
        /// The key, escaped and shortened for display.
        key: String,
        /// The rounds tried.
        rounds: usize,
    },
    /// The server's reply could not be understood; the connection was dropped.
    #[error("memcached protocol error: {0}")]
    Protocol(#[source] ProtocolViolation),
}

impl BackendError {
    /// Whether the error says the server is unreachable or slow, as opposed to bad input
    /// or a refusal by a working server.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// Why a server is unreachable: the reason in [`BackendError::Unreachable`].
///
/// The I/O variants hold the error the socket returned (shared, so that every request
/// waiting on a failed connection gets the same one); it is their source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UnreachableReason {
    /// Opening the connection failed (refused, no route, ...).
    Connect(Arc<io::Error>),
    /// Writing a request to the connection failed; the connection was dropped.
    Write(Arc<io::Error>),
    /// Reading from the connection failed; the connection was dropped.
    Read(Arc<io::Error>),
    /// The server closed the connection (end of stream) while it was in use or idle.
    ClosedByPeer,
    /// This client closed the connection, or found it already closed: it was replaced or
    /// dropped, its server was marked down, or it had failed for one of the other reasons
    /// (the requests in flight at that moment got that reason; this is for those that
    /// came after, or whose connection was closed because another reply on it broke the
    /// protocol).
    Closed,
    /// The server failed too often in a row; calls fail at once until a probe finds it
    /// answering again.
    MarkedDown,
    /// Every server is marked down, so no server is left for the key.
    NoServerLeft,
    /// A failure injected into the in-process fake
    /// ([`MemoryBackend::set_unreachable`](crate::backend::MemoryBackend::set_unreachable)).
    Injected,
}

impl fmt::Display for UnreachableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(err) => write!(f, "connect failed: {err}"),
            Self::Write(err) => write!(f, "write failed: {err}"),
            Self::Read(err) => write!(f, "read failed: {err}"),
            Self::ClosedByPeer => f.write_str("connection closed by server"),
            Self::Closed => f.write_str("connection closed"),
            Self::MarkedDown => f.write_str("marked down after repeated failures"),
            Self::NoServerLeft => f.write_str("every server is marked down"),
            Self::Injected => f.write_str("failure injected"),
        }
    }
}

impl Error for UnreachableReason {
    /// The `io::Error` itself, not the `Arc` holding it, so that `downcast_ref` finds it.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Connect(err) | Self::Write(err) | Self::Read(err) => Some(&**err),
            _ => None,
        }
    }
}

/// A reply that breaks the memcached protocol: what [`BackendError::Protocol`] holds.
///
/// Formats as the error it wraps and gives that error's source, like [`io::Error`] does
/// for a custom error. `TcpBackend`'s violations are `tcp::ProtocolError`s (with the `tcp`
/// feature), reached with [`ProtocolViolation::downcast_ref`]; other [`Backend`]
/// implementations may wrap their own error with [`ProtocolViolation::new`].
///
/// [`Backend`]: crate::backend::Backend
#[derive(Clone)]
pub struct ProtocolViolation(Arc<dyn Error + Send + Sync>);

impl ProtocolViolation {
    /// Wraps the error that says how a reply broke the protocol.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The wrapped error as an `E`, if it is one.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Error for ProtocolViolation {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_the_errors_themselves_not_their_arcs() {
        let refused = BackendError::Unreachable {
            server: "h:1".to_string(),
            reason: UnreachableReason::Connect(Arc::new(io::ErrorKind::ConnectionRefused.into())),
        };
        let io = refused.source().and_then(Error::source);
        assert!(io.is_some_and(|io| io.downcast_ref::<io::Error>().is_some()));

        let violation = ProtocolViolation::new(io::Error::other("bad reply"));
        assert!(violation.downcast_ref::<io::Error>().is_some());
        let err = BackendError::Protocol(violation);
        assert_eq!(err.to_string(), "memcached protocol error: bad reply");
        let clone = err.clone();
        assert!(
            matches!(clone, BackendError::Protocol(v) if v.get_ref().to_string() == "bad reply")
        );
    }
}
