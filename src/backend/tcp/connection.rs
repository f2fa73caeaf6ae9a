//! One pipelined connection to one memcached server.
//!
//! Many requests share the socket: a writer task batches queued requests into as few
//! writes as it can, a reader task parses replies and hands each to the oldest waiter. Text
//! protocol replies come back in request order, so matching is a FIFO (the shape of
//! redis-rs' multiplexed connection). Two tasks rather than one, because a single task
//! that is busy writing a large batch while the server's replies fill the socket buffer
//! would deadlock with the server.
//!
//! When anything goes wrong (I/O error, EOF, unparseable or unsolicited bytes, a reply that
//! stalls) both tasks stop, every waiter gets the error, and the owner replaces the
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::protocol::{self, Limits, Reply};
use crate::backend::BackendError;

/// Largest batch the writer gathers before writing, so one burst cannot grow the write
/// buffer without bound.
const MAX_BATCH_BYTES: usize = 256 * 1024;

type Waiter = oneshot::Sender<Result<Reply, BackendError>>;

struct Command {
    request: Bytes,
    waiter: Waiter,
}

/// How a connection is set up and bounded.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub(crate) connect_timeout: Duration,
    /// A reply that makes no progress for this long ends the connection.
    pub(crate) stall_timeout: Duration,
    /// Requests written but not yet answered, at most; more wait in the queue.
    pub(crate) max_in_flight: usize,
    /// Requests queued for the writer, at most; senders wait beyond that.
    pub(crate) max_queued: usize,
    pub(crate) limits: Limits,
}

/// A handle to a live connection; dropping the last handle ends its tasks.
pub(crate) struct Connection {
    commands: mpsc::Sender<Command>,
    writer: AbortHandle,
    reader: AbortHandle,
    /// Set the moment the connection is known to be finished; aborting tasks takes effect
    /// later, and no new request may be queued in between.
    closed: Arc<AtomicBool>,
    server: Arc<str>,
}

impl Connection {
    /// Connects to `host:port` within the connect timeout and starts the two tasks.
    pub(crate) async fn connect(
        host: &str,
        port: u16,
        server: Arc<str>,
        settings: &ConnectionSettings,
    ) -> Result<Self, BackendError> {
        let stream =
            tokio::time::timeout(settings.connect_timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| BackendError::Timeout {
                    server: server.to_string(),
                    after: settings.connect_timeout,
                })?
                .map_err(|err| unreachable(&server, format!("connect: {err}")))?;
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let (commands_tx, commands_rx) = mpsc::channel(settings.max_queued.max(1));
        let (pending_tx, pending_rx) = mpsc::channel(settings.max_in_flight.max(1));
        let closed = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_loop(write_half, commands_rx, pending_tx)).abort_handle();
        let reader = tokio::spawn(read_loop(
            read_half,
            pending_rx,
            settings.clone(),
            Arc::clone(&server),
            writer.clone(),
            Arc::clone(&closed),
        ))
        .abort_handle();
        tracing::debug!(%server, "memcached connection opened");
        Ok(Self {
            commands: commands_tx,
            writer,
            reader,
            closed,
            server,
        })
    }

    /// Whether the connection has ended and must be replaced.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.commands.is_closed()
    }

    /// Sends one encoded request and waits for its reply. Has no timeout of its own: the
    /// caller bounds it, and a caller that gives up leaves the connection in sync.
    pub(crate) async fn call(&self, request: Bytes) -> Result<Reply, BackendError> {
        let (waiter, reply) = oneshot::channel();
        self.commands
            .send(Command { request, waiter })
            .await
            .map_err(|_| self.closed())?;
        reply.await.map_err(|_| self.closed())?
    }

    /// Ends the connection now; waiters get an error.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.writer.abort();
        self.reader.abort();
    }

    fn closed(&self) -> BackendError {
        unreachable(&self.server, "connection closed".to_string())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn unreachable(server: &str, reason: String) -> BackendError {
    BackendError::Unreachable {
        server: server.to_string(),
        reason,
    }
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut commands: mpsc::Receiver<Command>,
    pending: mpsc::Sender<Waiter>,
) {
    let mut batch = BytesMut::with_capacity(16 * 1024);
    while let Some(first) = commands.recv().await {
        // Let the callers that are ready to run queue their requests too: woken through
        // the scheduler's LIFO slot, the writer would otherwise run before any of them and
        // write one request per syscall. Only when requests are in flight: an idle
        // connection writes at once.
        if pending.capacity() < pending.max_capacity() {
            tokio::task::yield_now().await;
        }
        let mut next = Some(first);
        while let Some(command) = next.take() {
            // A caller that already gave up needs no request sent.
            if !command.waiter.is_closed() {
                batch.extend_from_slice(&command.request);
                // Registered before the bytes go out, so the reply always finds its waiter.
                if pending.send(command.waiter).await.is_err() {
                    return; // reader ended: the connection is finished
                }
            }
            if batch.len() < MAX_BATCH_BYTES {
                next = commands.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        if socket.write_all(&batch).await.is_err() {
            return; // the reader sees the broken socket and fails the waiters
        }
        batch.clear();
    }
}

async fn read_loop(
    mut socket: OwnedReadHalf,
    mut pending: mpsc::Receiver<Waiter>,
    settings: ConnectionSettings,
    server: Arc<str>,
    writer: AbortHandle,
    closed: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let failure = loop {
        // Idle: wait for the next waiter, but notice at once if the server hangs up or
        // sends something nobody asked for, so the connection is replaced before it is used.
        let waiter = tokio::select! {
            biased;
            waiter = pending.recv() => match waiter {
                Some(waiter) => waiter,
                None => break None, // writer ended cleanly: no more requests
            },
            read = socket.read_buf(&mut buf) => match read {
                Ok(0) => break Some(unreachable(&server, "connection closed by server".to_string())),
                // A waiter is registered before its request is written, so bytes that
                // answer a request find it now, even if it arrived after `pending` was polled.
                Ok(_) => match pending.try_recv() {
                    Ok(waiter) => waiter,
                    Err(_) => break Some(BackendError::Protocol("unsolicited bytes from server".to_string())),
                },
                Err(err) => break Some(unreachable(&server, format!("read: {err}"))),
            },
        };
        match read_reply(&mut socket, &mut buf, &settings, &server).await {
            Ok(reply) => {
                let _ = waiter.send(Ok(reply));
            }
            Err(err) => {
                let _ = waiter.send(Err(err.clone()));
                break Some(err);
            }
        }
    };
    closed.store(true, Ordering::Release);
    writer.abort();
    pending.close();
    let err = failure.unwrap_or_else(|| unreachable(&server, "connection closed".to_string()));
    if failure_is_noteworthy(&err) {
        tracing::debug!(%server, error = %err, "memcached connection closed");
    }
    while let Ok(waiter) = pending.try_recv() {
        let _ = waiter.send(Err(err.clone()));
    }
}

fn failure_is_noteworthy(err: &BackendError) -> bool {
    !matches!(err, BackendError::Unreachable { reason, .. } if reason == "connection closed")
}

async fn read_reply(
    socket: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    settings: &ConnectionSettings,
    server: &str,
) -> Result<Reply, BackendError> {
    loop {
        match protocol::decode(buf, &settings.limits) {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(err) => return Err(BackendError::Protocol(err.to_string())),
        }
        match tokio::time::timeout(settings.stall_timeout, socket.read_buf(buf)).await {
            Err(_) => {
                return Err(BackendError::Timeout {
                    server: server.to_string(),
                    after: settings.stall_timeout,
                });
            }
            Ok(Ok(0)) => return Err(unreachable(server, "connection closed by server".into())),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(unreachable(server, format!("read: {err}"))),
        }
    }
}
