//! Writes every server must take (purges, `flush_all`): a server that misses one is
//! marked down at once, and reset before it serves again.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;

use super::TcpBackend;
use super::execute::Reaches;
use super::protocol::{self, Reply};
use super::replies::{Expect, delete_reply, error_reply};
use crate::backend::{BackendError, UnreachableReason};

impl TcpBackend {
    /// Sets an encoded `set` request on every server that is not marked down, marking down
    /// each that fails it. See [`Backend::set_on_every_server`](crate::backend::Backend::set_on_every_server).
    /// `delete` (the key's) goes instead to a server that refuses the set for memory (run
    /// with `-M`, full): it then holds no value for the key, as if it had evicted it,
    /// which every value written everywhere (a generation, a store epoch) is read to mean
    /// (nothing matches it), so it is not marked down (review ST).
    pub(super) async fn set_everywhere(
        &self,
        request: Bytes,
        delete: Bytes,
        key_len: usize,
        value_len: usize,
    ) -> Result<(), BackendError> {
        let judge = |index, reply| match reply {
            Reply::Stored => Ok(()),
            reply @ (Reply::Error | Reply::ClientError(_) | Reply::ServerError(_)) => {
                Err(self.store_error(index, key_len, value_len, reply))
            }
            other => Err(BackendError::Server(format!("set not stored: {other:?}"))),
        };
        self.everywhere(request, Expect::Store, judge, Some(delete))
            .await
    }

    /// Sends an encoded `delete` to every server, as a write every server must take (see
    /// [`everywhere`](Self::everywhere)), in a task of its own; whether any server held the
    /// key.
    pub(super) async fn delete_everywhere(&self, request: Bytes) -> Result<bool, BackendError> {
        let backend = self.clone();
        detached(async move {
            let found = AtomicBool::new(false);
            backend
                .everywhere(
                    request,
                    Expect::Delete,
                    |_, reply| {
                        if delete_reply(reply)? {
                            found.store(true, Ordering::Relaxed);
                        }
                        Ok(())
                    },
                    None,
                )
                .await?;
            Ok(found.load(Ordering::Relaxed))
        })
        .await
    }

    /// See [`Backend::flush_all`](crate::backend::Backend::flush_all) (`TcpBackend`'s).
    pub(super) async fn flush_everywhere(&self) -> Result<(), BackendError> {
        let calls = (0..self.inner.servers.len()).map(|index| async move {
            let mut request = BytesMut::new();
            protocol::encode_flush_all(&mut request, false);
            let reply = self
                .execute_on(
                    index,
                    request.freeze(),
                    Expect::Ok,
                    None,
                    Reaches::Rejoining,
                )
                .await;
            match reply {
                Ok(Reply::Ok) => Ok(()),
                // Refused unsent (a proxy), or refused by the server (`-F`): it holds
                // everything still, and always will; an error, nothing owed.
                Err(err @ BackendError::Unsupported { .. }) => Err(err),
                Ok(other) => Err(error_reply(other, None)),
                Err(err) => {
                    // Owed first, then marked down: a reset that begins after the mark
                    // sees the debt, and one that had begun (and looked for a debt
                    // already) is undone by the mark and made again.
                    self.inner.servers[index].missed_flush();
                    self.force_down(index, &err);
                    Err(err)
                }
            }
        });
        let mut outcome = Ok(());
        for reply in join_all(calls).await {
            if let Err(err) = reply {
                outcome = Err(err);
            }
        }
        outcome
    }

    /// Sends `request` to every server not marked down (a server whose reset on rejoin is
    /// under way gets it too); a server that fails it (`judge` says how a reply fails) is
    /// marked down at once: it missed a write every server must have, and must not serve
    /// until it has been reset (again, if its reset was under way). `Ok` when at least one
    /// server took it. A server that refuses it for memory gets `instead`, when there is
    /// one (a `delete`), and took the write if that succeeds.
    pub(super) async fn everywhere(
        &self,
        request: Bytes,
        expect: Expect,
        judge: impl Fn(usize, Reply) -> Result<(), BackendError>,
        instead: Option<Bytes>,
    ) -> Result<(), BackendError> {
        let instead = &instead;
        let judge = &judge;
        let calls = (0..self.inner.servers.len()).map(|index| {
            let request = request.clone();
            async move {
                let server = &self.inner.servers[index];
                if server.misses_writes_to_every_server() {
                    // Skipped: it is reset before it serves again (its reset has not
                    // begun: one under way gets the write).
                    if !server.is_probed() {
                        self.watch(index);
                    }
                    return None;
                }
                let outcome = match self
                    .execute_on(index, request, expect, None, Reaches::Rejoining)
                    .await
                {
                    Ok(Reply::ServerError(msg)) if msg.contains("out of memory") => match instead {
                        Some(delete) => self
                            .execute_on(
                                index,
                                delete.clone(),
                                Expect::Delete,
                                None,
                                Reaches::Rejoining,
                            )
                            .await
                            .and_then(delete_reply)
                            .map(drop),
                        None => judge(index, Reply::ServerError(msg)),
                    },
                    replied => replied.and_then(|reply| judge(index, reply)),
                };
                if let Err(err) = &outcome {
                    self.force_down(index, err);
                }
                Some(outcome)
            }
        });
        let mut stored = false;
        let mut last_error = None;
        for outcome in join_all(calls).await.into_iter().flatten() {
            match outcome {
                Ok(()) => stored = true,
                Err(err) => last_error = Some(err),
            }
        }
        match (stored, last_error) {
            (true, _) => Ok(()),
            (false, Some(err)) => Err(err),
            (false, None) => Err(BackendError::Unreachable {
                server: "(none)".to_string(),
                reason: UnreachableReason::NoServerLeft,
            }),
        }
    }
}

/// Runs a write to every server in a task of its own: a caller that gives up cannot leave
/// a server that missed the write in use (it is marked down when its call ends).
pub(super) async fn detached<T: Send + 'static>(
    write: impl Future<Output = Result<T, BackendError>> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::spawn(write).await {
        Ok(outcome) => outcome,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled: only when the runtime shuts down.
        Err(_) => Err(BackendError::Unreachable {
            server: "(none)".to_string(),
            reason: UnreachableReason::Closed,
        }),
    }
}
