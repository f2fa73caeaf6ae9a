//! One configured memcached server: its small pool of pipelined connections (filled in
//! order, see [`Server::pick`]) and its health.
//!
//! Health is a count of consecutive failures. At the threshold the server is marked down:
//! calls for its keys fail at once, without connecting or waiting, while a background probe
//! sends `version` at a short interval and marks it up the moment it answers (and the keys
//! to reset on rejoin are deleted on it). Health ([`Health`]) is shared by the same server
//! of sibling backends, which each have their own connections: one probe watches it for
//! all ([`ProbeClaim`]). While those keys are being deleted the server is
//! *rejoining*: still out of use for its keys, but writes every server must take
//! ([`Server::misses_writes_to_every_server`]) go to it, so none is skipped once the reset
//! that was to make up for skipped ones has begun.
//!
//! Each new connection first asks `stats settings` for the server's `item_size_max`, the
//! item size limit learned for the server ([`ItemLimit`]), so that items the server would
//! refuse are refused before they are sent.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use tokio::time::Instant;

use super::connection::{Connection, ConnectionSettings, Elapsed, deadline_in};
use super::protocol::{self, Reply};
use crate::backend::{BackendError, UnreachableReason};

/// memcached refuses an `-I` below 1 KiB; a smaller `item_size_max` is not believed.
const MIN_ITEM_SIZE_MAX: usize = 1024;

/// Requests outstanding on a connection before further ones go to the next connection:
/// enough for large batches, few enough that a burst still spreads over the connections
/// (and over memcached's threads, which each serve their own connections).
const SPILL_THRESHOLD: usize = 32;

/// A server and its connections. Its [`Health`] may be shared with the same server of
/// sibling backends (`TcpBackend::sibling`), which have connections of their own.
pub(crate) struct Server {
    /// `host:port` as configured.
    pub(crate) name: Arc<str>,
    pub(crate) host: String,
    pub(crate) port: u16,
    slots: Box<[Arc<Slot>]>,
    next_slot: AtomicUsize,
    /// Shared by the siblings.
    health: Arc<Health>,
}

/// What is known about a server, whichever connections learned it: shared by every
/// sibling backend, so that a server marked down by one is down for all.
struct Health {
    consecutive_failures: AtomicU32,
    /// [`UP`], [`DOWN`] or [`REJOINING`].
    state: AtomicU8,
    /// Moved at each change between in use and out of use, so that a connect that ends
    /// late can tell whether the server stayed in use since it began
    /// ([`in_use_since`](Self::in_use_since)).
    epoch: AtomicU32,
    /// Set while a probe task watches the server (one for all siblings); cleared when the
    /// probe ends, however it ends (its runtime may shut down while the server is down).
    probing: AtomicBool,
    /// What this server is known to accept.
    item_limit: ItemLimit,
    /// Cleared when `stats settings` cost a slot's connection twice in a row (twemproxy
    /// closes the connection on every `stats`): new connections then skip it, until the
    /// server is marked up again (see [`Slot::settings_closes`]).
    ask_settings: AtomicBool,
    /// Bumped when the server's reset on rejoin begins: a slot's closed `stats settings`
    /// queries counted before it ([`Slot::settings_closes`]) no longer count, in every
    /// sibling (the probe's [`Server::begin_rejoin`] reaches only its own slots).
    settings_round: AtomicU32,
    /// A `flush_all` missed it (it was marked down, or did not answer): it may still hold
    /// what the flush removed everywhere else, so it is flushed before it serves again
    /// (and was marked down for that, if it was in use).
    missed_flush: AtomicBool,
    /// Cleared when it is put back in use, set by the first call it answers since. Marked
    /// down with it still clear, the probe that put it back was wrong about it (it
    /// answers `version` and not lookups: a worker thread stuck on a lock), and
    /// `relapses` grows (review TU).
    answered: AtomicBool,
    /// Outages in a row that began before it answered a call since its rejoin: its probe
    /// waits twice as long for each (up to [`MAX_RELAPSE_SHIFT`] doublings), or every
    /// probe interval it was put back and the requests in flight paid the timeout again,
    /// for as long as it stayed in that state. Cleared by an outage after an answer.
    relapses: AtomicU32,
    /// Its handles into the `metrics` recorder, registered on first use.
    #[cfg(feature = "metrics")]
    exported: std::sync::OnceLock<Exported>,
}

/// The most doublings of the probe interval for a server that keeps failing right after
/// its rejoin (16 times: 3.2 s at the default 200 ms).
const MAX_RELAPSE_SHIFT: u32 = 4;

/// The longest a relapsed server's probe waits, whatever the interval: a server restarted
/// twice with no traffic between counts as relapsed too, and with a 30 s interval sixteen
/// times that kept a healthy server out for 8 minutes (review TY). An interval above it is
/// kept as it is.
const MAX_RELAPSE_WAIT: std::time::Duration = std::time::Duration::from_millis(3200);

/// A server's latency histogram and health gauge.
#[cfg(feature = "metrics")]
struct Exported {
    duration: metrics::Histogram,
    up: metrics::Gauge,
}

impl Health {
    /// The server's time in use now, or `None` while it is out of use: for
    /// [`still_in_use`](Self::still_in_use).
    fn in_use_since(&self) -> Option<u32> {
        // The epoch first: a transition to down moves it after the state, one to up
        // before (see `record`, `mark_down`, `finish_rejoin`).
        let epoch = self.epoch.load(Ordering::SeqCst);
        (self.state.load(Ordering::SeqCst) == UP).then_some(epoch)
    }

    /// Whether the server has been in use throughout since `since` was read.
    fn still_in_use(&self, since: Option<u32>) -> bool {
        since.is_some()
            && self.state.load(Ordering::SeqCst) == UP
            && Some(self.epoch.load(Ordering::SeqCst)) == since
    }

    /// Asks a new connection for `stats settings`, bounded by `within`, and takes the
    /// answer ([`settings_answered`](Self::settings_answered)): whether the connection is
    /// still of use.
    async fn query_settings(
        &self,
        server: &str,
        conn: &Connection,
        within: Instant,
        slot: &Slot,
    ) -> bool {
        let mut request = BytesMut::new();
        protocol::encode_stats(&mut request, Some("settings"));
        let reply = conn.call(request.freeze(), Some(within)).await;
        self.settings_answered(server, conn, reply, slot)
    }

    /// What a new connection's `stats settings` answered (see
    /// [`Server::learn_settings`]): whether the connection is still of use.
    fn settings_answered(
        &self,
        server: &str,
        conn: &Connection,
        reply: Result<Result<Reply, BackendError>, Elapsed>,
        slot: &Slot,
    ) -> bool {
        match reply {
            Ok(Ok(Reply::Stats(stats))) => {
                // A settings listing: memcached itself, which answers a multi-get key by
                // key, so queued gets may share one line (twemproxy closes the
                // connection on `stats`, and fails a whole multi-get for one dead server).
                conn.merge_gets();
                slot.settings_closes.store(0, Ordering::Release);
                // `-C`: every `cas` is refused, so nothing stored by compare-and-swap (the
                // HTTP cache's entries) ever lands there.
                if stats
                    .iter()
                    .any(|(name, value)| name == "cas_enabled" && value == "no")
                {
                    tracing::warn!(
                        server,
                        "memcached runs with CAS disabled (-C): the HTTP cache stores nothing on it"
                    );
                }
                let item_size_max = stats
                    .iter()
                    .find(|(name, _)| name == "item_size_max")
                    .and_then(|(_, value)| value.parse::<usize>().ok())
                    .filter(|&max| max >= MIN_ITEM_SIZE_MAX);
                match item_size_max {
                    Some(max) => {
                        self.item_limit.report(max);
                        tracing::debug!(
                            server,
                            item_size_max = max,
                            "memcached item size limit learned"
                        );
                    }
                    None => {
                        tracing::debug!(server, "no usable item_size_max in stats settings")
                    }
                }
                true
            }
            // An empty listing, or an error reply: not supported here (a proxy).
            Ok(Ok(
                Reply::Values(_) | Reply::Error | Reply::ClientError(_) | Reply::ServerError(_),
            )) => true,
            // Answered, but not in sync (or not with what was asked): unusable.
            Ok(Ok(_)) => {
                conn.close();
                self.stop_asking_settings(server);
                false
            }
            // Too slow: the reply is discarded when it comes; the connection stays in sync.
            Err(_) => true,
            // Closed by this client (another caller's reply broke the protocol, the server
            // was marked down) or by its stall check (a server slow a moment, not one that
            // refuses the query): the next connection asks again. Its callers are told.
            Ok(Err(
                BackendError::Timeout { .. }
                | BackendError::Unreachable {
                    reason: UnreachableReason::Closed,
                    ..
                },
            )) => true,
            Ok(Err(err)) => {
                if conn.is_closed() {
                    tracing::debug!(server, error = %err, "stats settings closed the connection");
                    // Twice in a row on one slot: a proxy that does not support it, not a
                    // restart (which may close the queries of several slots at once).
                    // Those counted before the server's last return are another process's.
                    let round = self.settings_round.load(Ordering::Acquire);
                    if slot.settings_round.swap(round, Ordering::AcqRel) != round {
                        slot.settings_closes.store(0, Ordering::Release);
                    }
                    if slot.settings_closes.fetch_add(1, Ordering::AcqRel) + 1 >= 2 {
                        self.stop_asking_settings(server);
                    }
                    false
                } else {
                    true
                }
            }
        }
    }

    fn stop_asking_settings(&self, server: &str) {
        if self.ask_settings.swap(false, Ordering::AcqRel) {
            tracing::info!(
                server,
                "memcached server does not answer stats settings; its item size limit is \
                 learned from refusals only until it is marked down and up again"
            );
        }
    }
}

/// The item size limit learned for one server; `usize::MAX` while nothing is known.
#[derive(Debug)]
pub(crate) struct ItemLimit {
    /// `item_size_max` as the server reported it on its last new connection.
    reported: AtomicUsize,
    /// Just below the smallest item it refused as too large since that report.
    refused_below: AtomicUsize,
}

impl ItemLimit {
    fn new() -> Self {
        Self {
            reported: AtomicUsize::new(usize::MAX),
            refused_below: AtomicUsize::new(usize::MAX),
        }
    }

    /// The largest item (as [`check_item_size`](crate::backend::check_item_size) counts
    /// it) the server is believed to accept.
    pub(crate) fn get(&self) -> usize {
        self.reported
            .load(Ordering::Acquire)
            .min(self.refused_below.load(Ordering::Acquire))
    }

    /// The server reports `item_size_max`. A different figure than before means it was
    /// reconfigured: what it refused earlier no longer tells anything.
    fn report(&self, item_size_max: usize) {
        let previous = self.reported.swap(item_size_max, Ordering::AcqRel);
        if previous != item_size_max {
            self.refused_below.store(usize::MAX, Ordering::Release);
        }
    }

    /// The server refused an item of `size` as too large: nothing that large is sent
    /// again. Returns the new limit.
    pub(crate) fn refused(&self, size: usize) -> usize {
        self.refused_below
            .fetch_min(size.saturating_sub(1), Ordering::AcqRel);
        self.get()
    }
}

/// A connection slot: the live connection (cheap to read on every call) and a lock that
/// lets one caller at a time replace it.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Connection>>>,
    /// Held by whoever connects the slot: a caller, or the connect its caller gave up on,
    /// finishing in the background.
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// A failure of the server here that nobody was told of, for [`Server::take_stalls`]:
    /// a connection let go here had stalled with nobody told
    /// ([`Connection::take_unreported_stall`]), or a connect whose caller gave up failed.
    unreported_stall: AtomicBool,
    /// `stats settings` queries in a row on this slot's new connections that cost their
    /// connection. One alone is not taken for a proxy: a memcached restarting as it was
    /// asked closes it too (with the query given up, `flush_all` and `stats` were refused
    /// as unsupported until the server happened to be marked down and up again). Per
    /// slot: a restart closes the queries of every slot connecting then, one each, which
    /// counted per server made "two in a row".
    settings_closes: AtomicU32,
    /// The server's [`Health::settings_round`] that `settings_closes` counts in.
    settings_round: AtomicU32,
}

impl Slot {
    fn live(&self) -> Option<Arc<Connection>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // A closed connection still holds its socket: let it go, so the server sees it
        // closed instead of filling our receive buffer.
        if let Some(conn) = current.take_if(|conn| conn.is_closed()) {
            if conn.take_unreported_stall() {
                self.unreported_stall.store(true, Ordering::Release);
            }
        }
        current.clone()
    }

    fn replace(&self, conn: Option<Arc<Connection>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// What a connect whose caller gave up came to (`None`: nothing to keep or count, see
    /// [`Server::connect`]). Kept, or counted, only if the server stayed in use since the
    /// connect began (`since`): one begun before an outage says nothing about the server
    /// back in use (and a connection kept while it is out of use would outlive the
    /// purge of its connections). Decided under the slot's lock, which
    /// [`Server::close_connections`] takes too: either this sees the server out of use, or
    /// its outcome is cleared there.
    fn settle(
        &self,
        outcome: Option<Result<Arc<Connection>, BackendError>>,
        health: &Health,
        since: Option<u32>,
    ) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !health.still_in_use(since) {
            drop(current);
            if let Some(Ok(conn)) = outcome {
                conn.close();
            }
            return;
        }
        match outcome {
            // Nobody connected the slot meanwhile: its connecting lock was held throughout.
            Some(Ok(conn)) => *current = Some(conn),
            Some(Err(_)) => self.unreported_stall.store(true, Ordering::Release),
            None => {}
        }
    }
}

/// The watch over a server held by its one probe; released when dropped (the probe ended,
/// or its task was dropped with its runtime).
pub(crate) struct ProbeClaim(Arc<Health>);

impl Drop for ProbeClaim {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::SeqCst);
    }
}

/// In use.
const UP: u8 = 0;
/// Marked down: calls fail fast, and writes to every server skip it (it is reset before it
/// serves again).
const DOWN: u8 = 1;
/// Answering again, its reset under way: calls for its keys still fail fast, but writes to
/// every server reach it (the reset may already be behind them).
const REJOINING: u8 = 2;

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
            slots: (0..connections.max(1)).map(|_| Arc::default()).collect(),
            next_slot: AtomicUsize::new(0),
            health: Arc::new(Health {
                consecutive_failures: AtomicU32::new(0),
                answered: AtomicBool::new(true),
                relapses: AtomicU32::new(0),
                state: AtomicU8::new(UP),
                epoch: AtomicU32::new(0),
                probing: AtomicBool::new(false),
                item_limit: ItemLimit::new(),
                ask_settings: AtomicBool::new(true),
                settings_round: AtomicU32::new(0),
                missed_flush: AtomicBool::new(false),
                #[cfg(feature = "metrics")]
                exported: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The same server with connections of its own (none yet), sharing this one's health.
    pub(crate) fn sibling(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            host: self.host.clone(),
            port: self.port,
            slots: (0..self.slots.len()).map(|_| Arc::default()).collect(),
            next_slot: AtomicUsize::new(0),
            health: Arc::clone(&self.health),
        }
    }

    /// Whether the server was taken for a proxy that closes the connection on `stats`
    /// (twemproxy: see [`Slot::settings_closes`]), until it is marked down and up again.
    /// twemproxy also answers a multi-get that touches a server it cannot reach with one
    /// error, and closes the connection with every request pipelined on it.
    pub(crate) fn is_closing_proxy(&self) -> bool {
        !self.health.ask_settings.load(Ordering::Acquire)
    }

    /// What this server is known to accept.
    pub(crate) fn item_limit(&self) -> &ItemLimit {
        &self.health.item_limit
    }

    /// Claims the watch over this server for a new probe; `None` if a probe (of any
    /// sibling) holds it. Read first: calls that fail fast ask on each call.
    pub(crate) fn claim_probe(&self) -> Option<ProbeClaim> {
        let probing = &self.health.probing;
        if probing.load(Ordering::SeqCst) || probing.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(ProbeClaim(Arc::clone(&self.health)))
    }

    /// Whether a probe watches this server.
    pub(crate) fn is_probed(&self) -> bool {
        self.health.probing.load(Ordering::SeqCst)
    }

    #[cfg(feature = "metrics")]
    fn exported(&self) -> &Exported {
        self.health.exported.get_or_init(|| {
            let labels = [metrics::Label::new("server", self.name.to_string())];
            let exported = Exported {
                duration: metrics::histogram!(
                    "tower_memcache_backend_request_duration_seconds",
                    labels.iter()
                ),
                up: metrics::gauge!("tower_memcache_backend_server_up", labels.iter()),
            };
            exported.up.set(if self.is_down() { 0.0 } else { 1.0 });
            exported
        })
    }

    /// Records how long one request to this server took (the `metrics` feature; without
    /// it the caller does not even read the clock).
    #[cfg(feature = "metrics")]
    pub(crate) fn observe_duration(&self, elapsed: std::time::Duration) {
        self.exported().duration.record(elapsed.as_secs_f64());
    }

    /// Exports whether the server is in use now (the `metrics` feature); called after
    /// each transition.
    pub(crate) fn export_health(&self) {
        #[cfg(feature = "metrics")]
        self.exported()
            .up
            .set(if self.is_down() { 0.0 } else { 1.0 });
    }

    /// A `flush_all` missed this server: it is flushed on its next rejoin (the caller
    /// marks it down, so that there is one before it serves again).
    pub(crate) fn missed_flush(&self) {
        self.health.missed_flush.store(true, Ordering::SeqCst);
    }

    /// Whether a flush is owed (see [`missed_flush`](Self::missed_flush)), no longer owed
    /// from now on: [`missed_flush`](Self::missed_flush) again if it cannot be made.
    pub(crate) fn take_missed_flush(&self) -> bool {
        self.health.missed_flush.swap(false, Ordering::SeqCst)
    }

    /// Out of use: marked down, or rejoining.
    pub(crate) fn is_down(&self) -> bool {
        self.health.state.load(Ordering::Acquire) != UP
    }

    /// Whether writes every server must take skip this server: only while it is marked
    /// down and its reset has not begun (a reset that begins later orphans what they
    /// would have changed). A rejoining server takes them: its reset may have deleted the
    /// keys already, and a server that skipped a write after that would serve content
    /// that missed it.
    pub(crate) fn misses_writes_to_every_server(&self) -> bool {
        self.health.state.load(Ordering::Acquire) == DOWN
    }

    /// Sends a request on one of the pooled connections, connecting the slot if needed,
    /// and gives up at `deadline` ([`Elapsed`]).
    ///
    /// `proxy_closes`: the command, when a proxy closes the connection on it (`stats`,
    /// `flush_all`). Where a new connection's `stats settings` already cost it, it is
    /// refused unsent with [`BackendError::Unsupported`]: twemproxy drops every request
    /// pipelined with it, and a status page asking three times would mark it down (and
    /// have the keys to reset on rejoin deleted: the whole cache orphaned).
    pub(crate) async fn call(
        &self,
        request: Bytes,
        settings: &ConnectionSettings,
        deadline: Instant,
        proxy_closes: Option<&'static str>,
    ) -> Result<Result<(Arc<Connection>, Reply), BackendError>, Elapsed> {
        let conn = match self.pick() {
            (_, Some(conn)) => conn,
            // Boxed: connecting is rare, and every call's future (and each future that
            // awaits one, up to a request's) would otherwise carry its state.
            (slot, None) => match Box::pin(self.connection(slot, settings, deadline)).await? {
                Ok(conn) => conn,
                Err(err) => return Ok(Err(err)),
            },
        };
        // Checked once connected: a first connection asks `stats settings` before this.
        if let Some(command) = proxy_closes {
            if !self.health.ask_settings.load(Ordering::Acquire) {
                return Ok(Err(BackendError::Unsupported {
                    server: self.name.to_string(),
                    command,
                }));
            }
        }
        // The connection keeps the deadline: no timer per call.
        Ok(match conn.call(request, Some(deadline)).await? {
            Ok(reply) => Ok((conn, reply)),
            Err(err) => {
                if conn.is_closed() {
                    // Release the socket now rather than at the slot's next use: a server
                    // that broke the protocol may still be sending.
                    self.forget(&conn);
                }
                Err(err)
            }
        })
    }

    /// How many of its connections stalled with nobody told since the last look (see
    /// [`Connection::take_unreported_stall`]): each a failure of the server that no call
    /// reported, its callers all given up at their deadlines first.
    pub(crate) fn take_stalls(&self) -> u32 {
        let mut stalls = 0;
        for slot in self.slots.iter() {
            // Lets a closed connection go, noting its stall.
            let _ = slot.live();
            if slot.unreported_stall.swap(false, Ordering::AcqRel) {
                stalls += 1;
            }
        }
        stalls
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
    fn pick(&self) -> (&Arc<Slot>, Option<Arc<Connection>>) {
        for slot in self.slots.iter() {
            match slot.live() {
                Some(conn) if conn.outstanding() >= SPILL_THRESHOLD => {}
                live => return (slot, live),
            }
        }
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        (slot, slot.live())
    }

    /// The slot's connection, connected now if needed; gives up at `deadline`
    /// ([`Elapsed`]) while waiting for another caller's connect or its own. Once connected,
    /// the caller waits for the `stats settings` answer until `deadline` too, and a slow
    /// answer keeps the connection: a caller bounded
    /// tighter than the connect timeout would otherwise drop every new connection to a
    /// server that accepts and never answers (a stopped process), each call opening
    /// another and none of them reporting anything, so the server was never marked down.
    /// Kept, the connection's stall check ends it and counts it
    /// ([`Connection::take_unreported_stall`]).
    ///
    /// A connect given up at the caller's deadline goes on in the background, holding the
    /// slot's connecting lock, until the connect timeout: one that fails then counts as a
    /// failure of the server nobody was told of ([`take_stalls`](Self::take_stalls)), and
    /// one that succeeds is the slot's connection (once its `stats settings` query is
    /// answered or given up), as long as the server stayed in use meanwhile
    /// ([`Slot::settle`]).
    /// Dropped there, a server whose connects hang (a host that is gone, a firewall that
    /// drops) was never marked down under callers bounded tighter than the connect
    /// timeout: each of their requests paid its whole limit, forever.
    async fn connection(
        &self,
        slot: &Arc<Slot>,
        settings: &ConnectionSettings,
        deadline: Instant,
    ) -> Result<Result<Arc<Connection>, BackendError>, Elapsed> {
        if let Some(conn) = slot.live() {
            return Ok(Ok(conn));
        }
        // Timers of their own: the connection that keeps the deadlines is not there yet.
        let connecting = Arc::clone(&slot.connecting);
        // Shared with a connect that outlives this call, if one does.
        let connecting = Arc::new(
            tokio::time::timeout_at(deadline, connecting.lock_owned())
                .await
                .map_err(|_| Elapsed)?,
        );
        // Someone else may have connected while we waited.
        if let Some(conn) = slot.live() {
            return Ok(Ok(conn));
        }
        let mut conn = match self.connect(slot, settings, deadline, &connecting).await? {
            Ok(conn) => conn,
            Err(err) => return Ok(Err(err)),
        };
        // A query that cost the connection: open another, which asks again after a first
        // closed query and skips it after a second (see `Slot::settings_closes`).
        while self.health.ask_settings.load(Ordering::Acquire)
            && !self.learn_settings(slot, &conn, settings, deadline).await
        {
            conn = match self.connect(slot, settings, deadline, &connecting).await? {
                Ok(conn) => conn,
                Err(err) => return Ok(Err(err)),
            };
        }
        slot.replace(Some(Arc::clone(&conn)));
        Ok(Ok(conn))
    }

    /// Opens a connection for `slot`, by `deadline`; past it, the attempt is left to finish
    /// in the background, holding `connecting` (see [`connection`](Self::connection)).
    async fn connect(
        &self,
        slot: &Arc<Slot>,
        settings: &ConnectionSettings,
        deadline: Instant,
        connecting: &Arc<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<Result<Arc<Connection>, BackendError>, Elapsed> {
        let since = self.health.in_use_since();
        let (host, port, name) = (self.host.clone(), self.port, Arc::clone(&self.name));
        let owned = settings.clone();
        let connect_timeout = settings.connect_timeout;
        // Boxed: it may move to a task of its own (connecting is rare).
        let mut attempt = Box::pin(async move {
            Connection::connect(&host, port, name, &owned)
                .await
                .map(Arc::new)
        });
        if let Ok(connected) = tokio::time::timeout_at(deadline, &mut attempt).await {
            return Ok(connected);
        }
        let slot = Arc::clone(slot);
        let connecting = Arc::clone(connecting);
        let (health, name) = (Arc::clone(&self.health), Arc::clone(&self.name));
        tokio::spawn(async move {
            let outcome = match attempt.await {
                // Asked as a caller's new connection is: without the answer the connection
                // never merged gets (nor learnt the item size limit) for as long as it
                // lived. Given up when the query cost it: the next caller connects again.
                Ok(conn) if health.ask_settings.load(Ordering::Acquire) => health
                    .query_settings(&name, &conn, deadline_in(connect_timeout), &slot)
                    .await
                    .then_some(Ok(conn)),
                outcome => Some(outcome),
            };
            slot.settle(outcome, &health, since);
            drop(connecting);
        });
        Err(Elapsed)
    }

    /// Asks a new connection for `stats settings` and records the server's
    /// `item_size_max`, within the connect timeout. False when the query closed the
    /// connection or got a reply of the wrong kind: the connection is given up. An error
    /// reply, an empty listing or a slow answer leave the limit as it was and the
    /// connection in use. Part of connecting, so a server's limit is known before the
    /// requests it would refuse are sent, at the cost of one round trip per new connection.
    ///
    /// The caller waits until its `deadline` at most (see [`connection`](Self::connection)),
    /// then keeps the connection; the query runs on in a task of its own, so that an
    /// answer that comes later still lets the connection merge gets and records the limit
    /// (dropped with the call, it left the connection unmerged for as long as it lived).
    async fn learn_settings(
        &self,
        slot: &Arc<Slot>,
        conn: &Arc<Connection>,
        settings: &ConnectionSettings,
        deadline: Instant,
    ) -> bool {
        let within = deadline_in(settings.connect_timeout);
        let (conn, health, name, slot) = (
            Arc::clone(conn),
            Arc::clone(&self.health),
            Arc::clone(&self.name),
            Arc::clone(slot),
        );
        let query =
            tokio::spawn(async move { health.query_settings(&name, &conn, within, &slot).await });
        match tokio::time::timeout_at(deadline, query).await {
            Ok(Ok(kept)) => kept,
            // Too slow for this caller (the answer is still taken when it comes), or the
            // query's task ended with its runtime: the connection stays in sync.
            Ok(Err(_)) | Err(_) => true,
        }
    }

    /// Drops every pooled connection (they are replaced on next use).
    pub(crate) fn close_connections(&self) {
        for slot in self.slots.iter() {
            let conn = {
                let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
                // Stalls before the server was marked down are not held against its
                // return. Under the lock a connect finishing in the background settles
                // under (see `Slot::settle`).
                slot.unreported_stall.store(false, Ordering::Release);
                current.take()
            };
            if let Some(conn) = conn {
                conn.close();
            }
        }
    }

    /// Counts a call's outcome. Only unavailability counts as failure: a server that
    /// answers with an error is up. A transition to down is counted in `outages` first
    /// (see [`mark_down`](Self::mark_down)).
    pub(crate) fn record(
        &self,
        outcome: &Result<Reply, BackendError>,
        threshold: u32,
        outages: &AtomicU64,
    ) -> Transition {
        match outcome {
            Err(err) if err.is_unavailable() => {
                let failures = self
                    .health
                    .consecutive_failures
                    .fetch_add(1, Ordering::AcqRel)
                    + 1;
                if failures >= threshold && self.health.state.load(Ordering::Acquire) == UP {
                    // Counted before the transition (a loser of the race counts once more:
                    // one more forgetting, nothing worse).
                    outages.fetch_add(1, Ordering::SeqCst);
                    if self
                        .health
                        .state
                        // SeqCst, as `mark_down`: see `claim_probe`.
                        .compare_exchange(UP, DOWN, Ordering::SeqCst, Ordering::Acquire)
                        .is_ok()
                    {
                        self.health.epoch.fetch_add(1, Ordering::SeqCst);
                        self.count_relapse();
                        return Transition::WentDown;
                    }
                }
                Transition::None
            }
            _ => {
                // Read first: a store on every success would bounce the cache line between
                // the threads calling this server.
                if self.health.consecutive_failures.load(Ordering::Acquire) != 0 {
                    self.health.consecutive_failures.store(0, Ordering::Release);
                }
                if !self.health.answered.load(Ordering::Acquire) {
                    self.health.answered.store(true, Ordering::Release);
                }
                Transition::None
            }
        }
    }

    /// Marks the server down whatever its failure count; true if it was up (false if it
    /// was rejoining: its probe, still running, then resets it once more).
    ///
    /// Counted in `outages` before the transition: a write to every server that skips
    /// the server (it is down) and returns, then a lookup that starts, must see the count
    /// moved, or what the near tier remembers of the server vouches for what the write
    /// missed once the server is back. (Counted after, a thread stalled in between let a
    /// purge skip the server, the server rejoin, and a lookup take the old generation as
    /// current.) Rare: the count moves even when the server was not up.
    pub(crate) fn mark_down(&self, outages: &AtomicU64) -> bool {
        outages.fetch_add(1, Ordering::SeqCst);
        // SeqCst: a probe ending after its server's rejoin reads the state after
        // releasing its claim; this transition, followed by the marker's claim attempt,
        // is then seen by one of them (the probe watches on, or the marker starts one).
        let was_up = self.health.state.swap(DOWN, Ordering::SeqCst) == UP;
        if was_up {
            self.health.epoch.fetch_add(1, Ordering::SeqCst);
            self.count_relapse();
        }
        was_up
    }

    /// At an outage: whether it began before the server answered a call since its last
    /// rejoin (see [`Health::relapses`]).
    fn count_relapse(&self) {
        if self.health.answered.load(Ordering::Acquire) {
            self.health.relapses.store(0, Ordering::Release);
        } else {
            let relapses = self.health.relapses.load(Ordering::Acquire);
            self.health
                .relapses
                .store((relapses + 1).min(MAX_RELAPSE_SHIFT), Ordering::Release);
        }
    }

    /// How long its probe waits between attempts: `interval`, doubled for each outage in
    /// a row that began before the server answered a call since its rejoin, up to
    /// [`MAX_RELAPSE_WAIT`] (or `interval` when that is longer).
    pub(crate) fn probe_wait(&self, interval: std::time::Duration) -> std::time::Duration {
        let shift = self.health.relapses.load(Ordering::Acquire);
        interval
            .saturating_mul(1 << shift)
            .min(interval.max(MAX_RELAPSE_WAIT))
    }

    /// The probe got an answer and is about to reset the server: from now on writes to
    /// every server reach it. False if it is not marked down.
    pub(crate) fn begin_rejoin(&self) -> bool {
        let begun = self
            .health
            .state
            .compare_exchange(DOWN, REJOINING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if begun {
            // It may be another process now (restarted, replaced): its settings are asked
            // again before the reset, on a connection of its own (not the probe's, made
            // without asking). Asked only after it, a server once taken for a proxy had
            // its reset's `flush_all` refused as unsupported unsent, and came back with
            // values that flush was owed for.
            self.health.ask_settings.store(true, Ordering::Release);
            // Siblings' slots too (they are not in reach here): see `Health::settings_round`.
            self.health.settings_round.fetch_add(1, Ordering::AcqRel);
            for slot in self.slots.iter() {
                slot.settings_closes.store(0, Ordering::Release);
            }
            self.close_connections();
        }
        begun
    }

    /// The reset failed: the server is marked down again (writes skip it until the next
    /// reset begins).
    pub(crate) fn abort_rejoin(&self) {
        let _ = self.health.state.compare_exchange(
            REJOINING,
            DOWN,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Marks the server up again after its reset (whose connections asked its settings
    /// again, see [`begin_rejoin`](Self::begin_rejoin)). False if it was marked down
    /// meanwhile (it failed a write every server must take): it needs another reset.
    pub(crate) fn finish_rejoin(&self) -> bool {
        self.health.consecutive_failures.store(0, Ordering::Release);
        // Before the state: a call answered once it is in use counts.
        self.health.answered.store(false, Ordering::Release);
        // Before the state: a connect that began out of use never sees the server in use
        // with the epoch it began in.
        self.health.epoch.fetch_add(1, Ordering::SeqCst);
        self.health
            .state
            .compare_exchange(REJOINING, UP, Ordering::SeqCst, Ordering::Acquire)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn a_relapsed_servers_probe_waits_longer_up_to_a_bound() {
        let server = Server::new("127.0.0.1".into(), 1, Arc::from("s"), 1);
        let wait = |relapses: u32, interval: Duration| {
            server.health.relapses.store(relapses, Ordering::Release);
            server.probe_wait(interval)
        };
        let default = Duration::from_millis(200);
        assert_eq!(wait(0, default), default);
        assert_eq!(wait(1, default), 2 * default);
        assert_eq!(wait(MAX_RELAPSE_SHIFT, default), MAX_RELAPSE_WAIT);
        // A long interval is not multiplied into minutes (review TY), nor shortened.
        let long = Duration::from_secs(30);
        assert_eq!(wait(0, long), long);
        assert_eq!(wait(MAX_RELAPSE_SHIFT, long), long);
        assert_eq!(wait(2, Duration::from_secs(1)), MAX_RELAPSE_WAIT);
    }

    #[test]
    fn item_limit_is_the_smaller_of_report_and_refusals() {
        let limit = ItemLimit::new();
        assert_eq!(limit.get(), usize::MAX, "nothing known");
        limit.report(512 * 1024);
        assert_eq!(limit.get(), 512 * 1024);
        // A refusal below the report lowers it; one above changes nothing.
        assert_eq!(limit.refused(600 * 1024), 512 * 1024);
        assert_eq!(limit.refused(400 * 1024), 400 * 1024 - 1);
        assert_eq!(limit.refused(450 * 1024), 400 * 1024 - 1);
        // The same report again (a new connection): refusals still hold.
        limit.report(512 * 1024);
        assert_eq!(limit.get(), 400 * 1024 - 1);
        // Another figure: the server was reconfigured, refusals are forgotten.
        limit.report(2 * 1024 * 1024);
        assert_eq!(limit.get(), 2 * 1024 * 1024);
        assert_eq!(limit.refused(0), 0, "no underflow");
    }
}
