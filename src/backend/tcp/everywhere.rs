//! Writes every server must take (purges, `flush_all`, generations advanced): a server
//! that misses one is marked down at once, and reset before it serves again.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;

use super::TcpBackend;
use super::execute::Reaches;
use super::protocol::{self, Reply, StoreCommand};
use super::replies::{Expect, delete_reply, error_reply, into_item};
use crate::backend::advance::{ADVANCE_ROUNDS, Advance, Plan, Write, contended, encoded};
use crate::backend::{Advanced, BackendError, UnreachableReason};

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
        let (request, instead, judge) = (&request, instead.as_ref(), &judge);
        let outcomes = self
            .on_every_server(|index| async move {
                match self
                    .write_on(index, request.clone(), expect, instead)
                    .await?
                {
                    Some(reply) => judge(index, reply),
                    None => Ok(()),
                }
            })
            .await?;
        took_any(outcomes).map(drop)
    }

    /// Advances `key` on every server as a max-register (see
    /// [`Backend::advance_on_every_server`](crate::backend::Backend::advance_on_every_server)),
    /// as a write every server must take ([`on_every_server`](Self::on_every_server)).
    pub(super) async fn advance_everywhere(
        &self,
        key: &str,
        stamp: u64,
        exptime: u32,
    ) -> Result<Advanced, BackendError> {
        let mut delete = BytesMut::with_capacity(key.len() + 16);
        protocol::encode_delete(&mut delete, key, false);
        let delete = &delete.freeze();
        let outcomes = self
            .on_every_server(|index| self.advance_on(index, key, stamp, exptime, delete))
            .await?;
        let advanced = took_any(outcomes)?
            .into_iter()
            .flatten()
            .reduce(Advanced::merge);
        // Deleted instead everywhere it was asked (out of memory): nothing written.
        Ok(advanced.unwrap_or(Advanced {
            value: stamp,
            absorbed: None,
        }))
    }

    /// The advance on server `index`: rounds of `gets` and the write
    /// [`Advance::plan`] says (`add` where the key is absent, `cas` where it is not, a
    /// plain `set` where the server gives no CAS value: run with `-C`), again from the
    /// read when another writer came first. `None` when the server refused the write for
    /// memory and had the key deleted instead.
    async fn advance_on(
        &self,
        index: usize,
        key: &str,
        stamp: u64,
        exptime: u32,
        delete: &Bytes,
    ) -> Result<Option<Advanced>, BackendError> {
        let mut advance = Advance::new(stamp);
        for round in 0..ADVANCE_ROUNDS {
            if round > 0 {
                advance.back_off(round).await;
            }
            let mut gets = BytesMut::with_capacity(key.len() + 8);
            protocol::encode_get(&mut gets, &[key], true);
            let read = self
                .execute_on(
                    index,
                    gets.freeze(),
                    Expect::Values,
                    None,
                    Reaches::Rejoining,
                )
                .await?;
            let item = match read {
                // At most one value, for the one key asked (the parser checked that).
                Reply::Values(values) => values.into_iter().next().map(into_item),
                other => return Err(error_reply(other, None)),
            };
            let (write, advanced) = match advance.plan(item.as_ref()) {
                Plan::Done(advanced) => return Ok(Some(advanced)),
                Plan::Write(write, advanced) => (write, advanced),
            };
            let command = match write {
                Write::Add => StoreCommand::Add,
                Write::Cas(cas) => StoreCommand::Cas(cas),
                Write::Set => StoreCommand::Set,
            };
            let value = encoded(advanced.value);
            let mut request = BytesMut::with_capacity(key.len() + value.len() + 64);
            protocol::encode_store(&mut request, command, key, 0, exptime, &value, false);
            let written = self
                .write_on(index, request.freeze(), Expect::Store, Some(delete))
                .await?;
            match written {
                None => return Ok(None),
                Some(Reply::Stored) => return Ok(Some(advanced)),
                // Another writer came first: again, from what it wrote.
                Some(Reply::NotStored | Reply::Exists | Reply::NotFound) => {}
                Some(reply) => return Err(self.store_error(index, key.len(), value.len(), reply)),
            }
        }
        Err(contended(key))
    }

    /// Runs `write` on every server not marked down (a server whose reset on rejoin is
    /// under way too), marking down at once each whose write fails: it missed a write
    /// every server must have, and must not serve until it has been reset (again, if its
    /// reset was under way). The outcomes of the servers asked; an error when a server
    /// that failed it was left in use (a proxy's error line): nothing makes up for the
    /// write it missed, so the write as a whole was not made, whoever else took it.
    async fn on_every_server<T, W>(
        &self,
        write: impl Fn(usize) -> W,
    ) -> Result<Vec<Result<T, BackendError>>, BackendError>
    where
        W: Future<Output = Result<T, BackendError>>,
    {
        let write = &write;
        let calls = (0..self.inner.servers.len()).map(|index| async move {
            let server = &self.inner.servers[index];
            if server.misses_writes_to_every_server() {
                // Skipped: it is reset before it serves again (its reset has not
                // begun: one under way gets the write).
                if !server.is_probed() {
                    self.watch(index);
                }
                return None;
            }
            let outcome = write(index).await;
            let left_in_use = match &outcome {
                // An error line from twemproxy is its forward of the one server behind it
                // that the key hashes to and it could not reach: the proxy itself answered.
                // Marked down, it failed every lookup, on every server, and its reset
                // deleted the namespace's generation through it (every entry orphaned), on
                // each such purge, or each POST to a URL on that server (review TO). The
                // caller gets the error; a reset of the proxy cannot reach that server.
                Err(BackendError::Server(_)) if server.is_closing_proxy() => true,
                Err(err) => {
                    self.force_down(index, err);
                    false
                }
                Ok(_) => false,
            };
            Some((outcome, left_in_use))
        });
        let mut outcomes = Vec::with_capacity(self.inner.servers.len());
        let mut missed = None;
        for (outcome, left_in_use) in join_all(calls).await.into_iter().flatten() {
            match outcome {
                // Not `Ok` because another server took it (review TQ): the purge that
                // returned would not hold once the server behind the proxy answers again
                // with its content.
                Err(err) if left_in_use => {
                    missed.get_or_insert(err);
                }
                outcome => outcomes.push(outcome),
            }
        }
        match missed {
            Some(err) => Err(err),
            None => Ok(outcomes),
        }
    }

    /// `request` on server `index`, as a write every server must take (sent to a server
    /// whose reset on rejoin is under way too): its reply, or `None` when the server
    /// refused it for memory and took `instead` (a `delete`). Without `instead`, that
    /// refusal is the reply.
    async fn write_on(
        &self,
        index: usize,
        request: Bytes,
        expect: Expect,
        instead: Option<&Bytes>,
    ) -> Result<Option<Reply>, BackendError> {
        let reply = self
            .execute_on(index, request, expect, None, Reaches::Rejoining)
            .await?;
        match (reply, instead) {
            (Reply::ServerError(msg), Some(delete)) if msg.contains("out of memory") => self
                .execute_on(
                    index,
                    delete.clone(),
                    Expect::Delete,
                    None,
                    Reaches::Rejoining,
                )
                .await
                .and_then(delete_reply)
                .map(|_| None),
            (reply, _) => Ok(Some(reply)),
        }
    }
}

/// Whether a write every server must take was taken: the outcomes of the servers that
/// did, when at least one did; otherwise the last error (or, when no server was asked,
/// that none is left).
fn took_any<T>(outcomes: Vec<Result<T, BackendError>>) -> Result<Vec<T>, BackendError> {
    let mut took = Vec::with_capacity(outcomes.len());
    let mut last_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(value) => took.push(value),
            Err(err) => last_error = Some(err),
        }
    }
    match last_error {
        Some(err) if took.is_empty() => Err(err),
        None if took.is_empty() => Err(BackendError::Unreachable {
            server: "(none)".to_string(),
            reason: UnreachableReason::NoServerLeft,
        }),
        _ => Ok(took),
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
