//! One configured memcached server: its small pool of pipelined connections (filled in
//! order, see [`Server::pick`]) and its health.
//!
//! Health is a count of consecutive failures. At the threshold the server is marked down:
//! calls for its keys fail at once, without connecting or waiting, while a background probe
//! sends `version` at a short interval and marks it up the moment it answers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::connection::{Connection, ConnectionSettings};
use super::protocol::Reply;
use crate::backend::BackendError;

/// Requests outstanding on a connection before further ones go to the next connection:
/// enough for large batches, few enough that a burst still spreads over the connections
/// (and over memcached's threads, which each serve their own connections).
const SPILL_THRESHOLD: usize = 32;

/// A server and its connections.
pub(crate) struct Server {
    /// `host:port` as configured.
    pub(crate) name: Arc<str>,
    pub(crate) host: String,
    pub(crate) port: u16,
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    consecutive_failures: AtomicU32,
    down: AtomicBool,
}

/// A connection slot: the live connection (cheap to read on every call) and a lock that
/// lets one caller at a time replace it.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Connection>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Connection>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // A closed connection still holds its socket: let it go, so the server sees it
        // closed instead of filling our receive buffer.
        if current.as_ref().is_some_and(|conn| conn.is_closed()) {
            *current = None;
        }
        current.clone()
    }

    fn replace(&self, conn: Option<Arc<Connection>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }
}

/// What a transition of [`Server::record`] changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    WentDown,
}

impl Server {
    pub(crate) fn new(host: String, port: u16, name: Arc<str>, connections: usize) -> Self {
        Self {
            name,
            host,
            port,
            slots: (0..connections.max(1)).map(|_| Slot::default()).collect(),
            next_slot: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            down: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Sends a request on one of the pooled connections, connecting the slot if needed.
    /// Unbounded in time: the caller applies the operation timeout.
    pub(crate) async fn call(
        &self,
        request: Bytes,
        settings: &ConnectionSettings,
    ) -> Result<(Arc<Connection>, Reply), BackendError> {
        let conn = match self.pick() {
            (_, Some(conn)) => conn,
            (slot, None) => self.connection(slot, settings).await?,
        };
        match conn.call(request).await {
            Ok(reply) => Ok((conn, reply)),
            Err(err) => {
                if conn.is_closed() {
                    // Release the socket now rather than at the slot's next use: a server
                    // that broke the protocol may still be sending.
                    self.forget(&conn);
                }
                Err(err)
            }
        }
    }

    /// Empties the slot that holds `conn`, if one still does.
    fn forget(&self, conn: &Arc<Connection>) {
        for slot in self.slots.iter() {
            let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.as_ref().is_some_and(|held| Arc::ptr_eq(held, conn)) {
                *current = None;
            }
        }
    }

    /// The slot for the next request, with its live connection if it has one: the first
    /// slot whose connection has fewer than [`SPILL_THRESHOLD`] requests outstanding (or
    /// is not connected), so that concurrent requests share a connection and go out and
    /// come back together: one write and one read for several requests, for memcached and
    /// for both kernels, where spreading them over the connections would split every batch.
    /// The further slots take the overflow, and are only connected when there is some.
    /// When every connection is that busy, round robin.
    fn pick(&self) -> (&Slot, Option<Arc<Connection>>) {
        for slot in self.slots.iter() {
            match slot.live() {
                Some(conn) if conn.outstanding() >= SPILL_THRESHOLD => {}
                live => return (slot, live),
            }
        }
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        (slot, slot.live())
    }

    async fn connection(
        &self,
        slot: &Slot,
        settings: &ConnectionSettings,
    ) -> Result<Arc<Connection>, BackendError> {
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let _connecting = slot.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let conn = Arc::new(
            Connection::connect(&self.host, self.port, Arc::clone(&self.name), settings).await?,
        );
        slot.replace(Some(Arc::clone(&conn)));
        Ok(conn)
    }

    /// Drops every pooled connection (they are replaced on next use).
    pub(crate) fn close_connections(&self) {
        for slot in self.slots.iter() {
            if let Some(conn) = slot.live() {
                conn.close();
            }
            slot.replace(None);
        }
    }

    /// Counts a call's outcome. Only unavailability counts as failure: a server that
    /// answers with an error is up.
    pub(crate) fn record(
        &self,
        outcome: &Result<Reply, BackendError>,
        threshold: u32,
    ) -> Transition {
        match outcome {
            Err(err) if err.is_unavailable() => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= threshold && !self.down.swap(true, Ordering::AcqRel) {
                    return Transition::WentDown;
                }
                Transition::None
            }
            _ => {
                // Read first: a store on every success would bounce the cache line between
                // the threads calling this server.
                if self.consecutive_failures.load(Ordering::Acquire) != 0 {
                    self.consecutive_failures.store(0, Ordering::Release);
                }
                Transition::None
            }
        }
    }

    /// Marks the server up again after the probe got an answer.
    pub(crate) fn mark_up(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        self.down.store(false, Ordering::Release);
    }
}
