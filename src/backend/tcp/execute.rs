//! One request on one server: fast failure while the server is down, the operation
//! timeout or the caller's deadline (kept by the connection's timer), health accounting,
//! and a connection that lost sync dropped.

use std::time::Duration;

use bytes::Bytes;

use super::connection::Elapsed;
use super::health::Abandoned;
use super::protocol::Reply;
use super::replies::Expect;
use super::{ProtocolError, TcpBackend};
use crate::backend::{BackendError, ProtocolViolation, UnreachableReason};

impl TcpBackend {
    /// Runs one request on one server: fast failure while it is down, the operation
    /// timeout, health accounting, and dropping a connection that lost sync.
    pub(super) fn execute(
        &self,
        index: usize,
        request: Bytes,
        expect: Expect,
    ) -> impl Future<Output = Result<Reply, BackendError>> {
        // Not an `async fn` around the other: that would hold the call's future twice.
        self.execute_on(index, request, expect, None, Reaches::Up)
    }

    /// [`execute`](Self::execute), given up at `limit` (see
    /// [`execute_on`](Self::execute_on)).
    pub(super) fn execute_within(
        &self,
        index: usize,
        request: Bytes,
        expect: Expect,
        limit: Option<Duration>,
    ) -> impl Future<Output = Result<Reply, BackendError>> {
        self.execute_on(index, request, expect, limit, Reaches::Up)
    }

    /// [`execute`](Self::execute), given up at `limit` (the caller's deadline) if that comes
    /// before the operation timeout, with [`BackendError::Deadline`]: one deadline serves
    /// both, kept by the connection's timer (no timer per call), where a caller's own
    /// timeout around the call would be a timer of its own. A call given
    /// up so counts towards the server's health exactly as a call its caller drops.
    /// `reaches`: which servers out of use it is sent to all the same.
    pub(super) async fn execute_on(
        &self,
        index: usize,
        request: Bytes,
        expect: Expect,
        limit: Option<Duration>,
        reaches: Reaches,
    ) -> Result<Reply, BackendError> {
        let inner = &self.inner;
        let server = &inner.servers[index];
        let refused = match reaches {
            Reaches::Up => server.is_down(),
            Reaches::Rejoining => server.misses_writes_to_every_server(),
        };
        if refused {
            // A probe ends with the sibling (or runtime) it ran on: the server is still
            // down, so another one starts here. One load while one runs.
            if !server.is_probed() {
                self.watch(index);
            }
            return Err(BackendError::Unreachable {
                server: server.name.to_string(),
                reason: UnreachableReason::MarkedDown,
            });
        }
        let deadline = inner.call_limit();
        // Counts the call as a timeout if its caller drops it past our timeout: a caller
        // bounding calls by the same time (`MemcacheLayer` does) gives up first, and a hung
        // server must still be marked down.
        // One clock read serves the deadline, the guard and the latency metric.
        let started = tokio::time::Instant::now();
        let mut abandoned = Abandoned {
            backend: self,
            index,
            started,
            armed: true,
        };
        // The call future is built in place (binding it first would copy it once more).
        // A timeout too large to add is no timeout (as `tokio::time::timeout` treats it).
        let far = || started + Duration::from_secs(86_400 * 365 * 30);
        let own = started.checked_add(deadline).unwrap_or_else(far);
        // The caller's deadline where it comes first; on a tie ours, as when the caller's
        // timer ran around ours (the inner future is polled first).
        let (deadline, theirs) = match limit {
            Some(limit) => match started.checked_add(limit).unwrap_or_else(far) {
                at if at < own => (at, Some(limit)),
                _ => (own, None),
            },
            None => (own, None),
        };
        // The deadline is kept by the connection's one timer, not a timer per call.
        let proxy_closes = expect.refused_by_proxies();
        let outcome = match server
            .call(request, &inner.settings, deadline, proxy_closes)
            .await
        {
            Err(Elapsed) => match theirs {
                // The caller's deadline: the call is given up as if dropped there, and
                // the guard counts it (or not) as it counts a dropped call.
                Some(limit) => return Err(BackendError::Deadline { after: limit }),
                None => Err(BackendError::Timeout {
                    server: server.name.to_string(),
                    after: inner.timeout,
                }),
            },
            // Refused unsent: says nothing of the server's health.
            Ok(Err(err @ BackendError::Unsupported { .. })) => {
                abandoned.armed = false;
                return Err(err);
            }
            Ok(Err(err)) => Err(err),
            Ok(Ok((conn, reply))) if expect.accepts(&reply) => {
                drop(conn);
                Ok(reply)
            }
            Ok(Ok((conn, reply))) => {
                // A reply of the wrong kind means we no longer know which reply belongs to
                // which request: drop the connection.
                conn.close();
                Err(BackendError::Protocol(ProtocolViolation::new(
                    ProtocolError::UnexpectedReply {
                        reply: format!("{reply:?}"),
                        expected: expect.expected(),
                    },
                )))
            }
        };
        // Finished: counted below, by its outcome.
        abandoned.armed = false;
        #[cfg(feature = "metrics")]
        server.observe_duration(started.elapsed());
        self.account(index, &outcome);
        outcome
    }
}

/// Which servers a call is sent to.
#[derive(Clone, Copy)]
pub(super) enum Reaches {
    /// Those in use only.
    Up,
    /// Those rejoining too: a write every server must take.
    Rejoining,
}
