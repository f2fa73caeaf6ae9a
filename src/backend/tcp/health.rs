//! Each server's health as calls see it: outcomes counted, servers marked down (every
//! sibling's connections closed, the ring rebuilt), and the probe that puts a server back
//! once it answers and the keys to reset on rejoin are deleted on it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use tokio::time::Instant;

use super::connection::{Elapsed, deadline_in};
use super::ketama::Ring;
use super::protocol::{self, Reply};
use super::replies::{Expect, error_reply};
use super::server::{ProbeClaim, Server, Transition};
use super::{Inner, ProtocolError, TcpBackend};
use crate::backend::{BackendError, ProtocolViolation};

impl TcpBackend {
    /// Counts a call's outcome towards its server's health; at the failure threshold the
    /// server is marked down and probed.
    pub(super) fn account(&self, index: usize, outcome: &Result<Reply, BackendError>) {
        let server = &self.inner.servers[index];
        let outages = &self.inner.family.outages;
        if server.record(outcome, self.inner.failure_threshold, outages) == Transition::WentDown {
            let probe_wait = server.probe_wait(self.inner.probe_interval);
            tracing::warn!(
                server = %server.name,
                ?probe_wait,
                "memcached server marked down; probing"
            );
            self.went_down(index);
        }
    }

    /// Marks a server down at once, whatever its failure count, after it failed `err`.
    pub(super) fn force_down(&self, index: usize, err: &BackendError) {
        let server = &self.inner.servers[index];
        if server.mark_down(&self.inner.family.outages) {
            tracing::warn!(
                server = %server.name,
                error = %err,
                probe_wait = ?server.probe_wait(self.inner.probe_interval),
                "memcached server missed a write every server must hold; marked down until reset"
            );
            self.went_down(index);
        }
    }

    /// A server was just marked down (for every sibling; the outage already counted):
    /// its connections go, every sibling's, the ring is rebuilt, and a probe watches for
    /// its return.
    pub(super) fn went_down(&self, index: usize) {
        let family = &self.inner.family;
        for member in family.members() {
            member.servers[index].close_connections();
        }
        self.inner.servers[index].export_health();
        rebuild_ring(&self.inner);
        self.watch(index);
    }

    /// Starts a probe of server `index` (marked down) on the caller's runtime, with this
    /// backend's connections, unless one watches it already: one for the whole family. A
    /// probe ends with the sibling or the runtime it runs on; the next call that finds the
    /// server down then starts another.
    pub(super) fn watch(&self, index: usize) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(claim) = self.inner.servers[index].claim_probe() {
            runtime.spawn(probe(Arc::downgrade(&self.inner), index, claim));
        }
    }
}

/// A call in [`TcpBackend::execute`]; dropped unfinished (its caller gave up), it counts as
/// a timeout once it has waited the backend's timeout. Calls given up earlier say nothing
/// about the server, except that a stall of one of its connections noticed meanwhile counts
/// ([`Server::take_stalls`]).
pub(super) struct Abandoned<'a> {
    pub(super) backend: &'a TcpBackend,
    pub(super) index: usize,
    pub(super) started: tokio::time::Instant,
    /// Cleared once the call finished: dropping the guard then counts nothing.
    pub(super) armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = &self.backend.inner;
        let server = &inner.servers[self.index];
        // Given up before our timeout, the call says nothing; a connection of the server
        // that stalled meanwhile with nobody told does (a server that answers nothing to
        // callers bounded tighter than the timeout must still be marked down).
        let failures = if self.started.elapsed() >= inner.timeout {
            1
        } else {
            server.take_stalls()
        };
        for _ in 0..failures {
            let timeout = Err(BackendError::Timeout {
                server: server.name.to_string(),
                after: inner.timeout,
            });
            self.backend.account(self.index, &timeout);
        }
    }
}

/// With `remove_failed_servers`, the ring of the servers in use now. Computed under the
/// write lock: siblings rebuilding at once (each after its own transition) leave the ring
/// of the later view, never an earlier one.
pub(super) fn rebuild_ring(inner: &Inner) {
    if !inner.remove_failed_servers {
        return;
    }
    let family = &inner.family;
    let mut ring = family.ring.write().unwrap_or_else(|p| p.into_inner());
    let excluded: Vec<bool> = inner.servers.iter().map(Server::is_down).collect();
    *ring = Arc::new(Ring::without(&family.specs, &excluded));
}

/// Probes a server marked down until it answers `version` and the keys to reset on rejoin
/// are deleted on it, then puts it back, for every sibling. Holds only a weak reference, so
/// a dropped backend ends its probes (and releases `claim`: a sibling's next call to the
/// server, still down, starts another).
pub(super) async fn probe(inner: Weak<Inner>, index: usize, mut claim: ProbeClaim) {
    loop {
        let interval = match inner.upgrade() {
            // Longer for a server that failed again before answering a call since the
            // last time a probe put it back (review TU).
            Some(inner) => inner.servers[index].probe_wait(inner.probe_interval),
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let server = &inner.servers[index];
        let mut request = BytesMut::new();
        protocol::encode_version(&mut request);
        let attempt = server
            .call(
                request.freeze(),
                &inner.settings,
                deadline_in(inner.call_limit()),
                None,
            )
            .await;
        if let Ok(Ok((_, Reply::Version(version)))) = attempt {
            // It may have missed writes every server must hold while it was gone: what
            // it holds under those keys goes before it serves again. Writes from now on
            // reach it: one skipped after the reset began would not be made up for.
            if !server.begin_rejoin() {
                // Not marked down: not this probe's business (one watches a server, for
                // every sibling).
                return;
            }
            if let Err(err) = reset(&inner, index).await {
                server.abort_rejoin();
                tracing::debug!(server = %server.name, error = %err, "reset on rejoin failed; probing on");
                continue;
            }
            if !server.finish_rejoin() {
                tracing::debug!(server = %server.name, "a write failed during the reset on rejoin; resetting again");
                continue;
            }
            server.export_health();
            rebuild_ring(&inner);
            // `?`: the server's text, escaped (a control byte in it could forge log lines).
            tracing::info!(server = %server.name, ?version, "memcached server answers again; back in use");
            // A sibling that marked it down again since found this probe still watching
            // and started none: watch on, unless a probe of its own got the claim.
            drop(claim);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !server.is_down() {
                return;
            }
            match server.claim_probe() {
                Some(again) => claim = again,
                None => return,
            }
        }
    }
}

/// Sends `request` to server `index` directly (it is marked down, so ordinary calls fail
/// fast) and takes its reply only if it is one `expect` accepts and no error.
async fn direct(
    inner: &Inner,
    index: usize,
    request: Bytes,
    expect: Expect,
    deadline: Instant,
) -> Result<Reply, BackendError> {
    let server = &inner.servers[index];
    let reply = server
        .call(
            request,
            &inner.settings,
            deadline,
            expect.refused_by_proxies(),
        )
        .await
        .map_err(|Elapsed| BackendError::Timeout {
            server: server.name.to_string(),
            after: inner.timeout,
        })?;
    match reply? {
        (_, other @ (Reply::Error | Reply::ClientError(_) | Reply::ServerError(_))) => {
            Err(error_reply(other, None))
        }
        (_, reply) if expect.accepts(&reply) => Ok(reply),
        (conn, other) => {
            // Out of sync: this connection cannot be trusted with the next probe.
            conn.close();
            Err(BackendError::Protocol(ProtocolViolation::new(
                ProtocolError::UnexpectedReply {
                    reply: format!("{other:?}"),
                    expected: expect.expected(),
                },
            )))
        }
    }
}

/// Deletes the keys registered with [`Backend::reset_on_rejoin`](crate::backend::Backend::reset_on_rejoin) on server `index`, directly
/// (it is marked down, so ordinary calls fail fast). Absent keys count as deleted. First
/// a `flush_all`, when one is owed, more keys were registered than are kept, or the
/// server was out of the ring (`remove_failed_servers`).
async fn reset(inner: &Inner, index: usize) -> Result<(), BackendError> {
    let server = &inner.servers[index];
    // Taken whether or not the keys overflowed: a flush made now pays the debt.
    let owed = server.take_missed_flush();
    // Out of the ring, its keys lived on the others meanwhile: every write and delete of
    // them went there, so whatever it holds may be undone by one (an invalidation that
    // returned, a value replaced), and no key list could tell which.
    let moved = inner.remove_failed_servers;
    if owed || moved || inner.family.reset_overflowed.load(Ordering::SeqCst) {
        // First: the keys below are gone with it, and it holds nothing from before.
        let mut request = BytesMut::new();
        protocol::encode_flush_all(&mut request, false);
        let deadline = deadline_in(inner.call_limit());
        match direct(inner, index, request.freeze(), Expect::Ok, deadline).await {
            Ok(_) if moved => {
                tracing::info!(server = %server.name, "a memcached server back in the ring flushed: its keys were written elsewhere while it was out");
            }
            Ok(_) if owed => {
                tracing::info!(server = %server.name, "a flush_all it missed made on a rejoining memcached server");
            }
            Ok(_) => {
                tracing::info!(server = %server.name, "a rejoining memcached server flushed: more keys to reset than kept");
            }
            // A proxy (twemproxy) takes no flush: there is none to make up for.
            Err(BackendError::Unsupported { .. }) => {}
            // Refused by the server (memcached `-F`): it never takes one, and a reset that
            // waited for it would keep the server out of use for good (every one of its
            // keys a miss, far more than its share). The keys below are reset all the same.
            Err(BackendError::Server(reply)) => {
                tracing::warn!(server = %server.name, %reply, "a rejoining memcached server refuses the flush_all it missed; it may hold what the flush removed elsewhere");
            }
            Err(err) => {
                if owed {
                    server.missed_flush();
                }
                return Err(err);
            }
        }
    }
    let mut done = 0;
    // Keys are only ever appended, at most MAX_RESET_ON_REJOIN_KEYS of them: those
    // registered during a round are deleted in the next, so the rounds are bounded too.
    loop {
        let keys: Vec<String> = {
            let registered = inner
                .family
                .reset_on_rejoin
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            registered.get(done..).unwrap_or_default().to_vec()
        };
        if keys.is_empty() {
            break;
        }
        let deadline = deadline_in(inner.call_limit());
        let deletes = keys.iter().map(|key| {
            let mut request = BytesMut::new();
            protocol::encode_delete(&mut request, key, false);
            direct(inner, index, request.freeze(), Expect::Delete, deadline)
        });
        // Deleted or not found: either way the key is gone.
        for reply in join_all(deletes).await {
            reply?;
        }
        done += keys.len();
    }
    if done > 0 {
        tracing::info!(server = %server.name, keys = done, "keys reset on a rejoining memcached server");
    }
    Ok(())
}
