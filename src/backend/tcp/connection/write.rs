//! The write side of a connection: who owns it, the backlog behind the owner, and the
//! writer task that waits for a full socket to drain.

use super::*;

/// The most bytes one write gathers from the backlog, so one burst cannot make a single
/// huge `writev`.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The most requests one write gathers (the `writev` slices live on the stack).
const MAX_BATCH_REQUESTS: usize = 64;

/// Batches a task writes synchronously before it hands the rest of the backlog to the
/// writer task: enough to drain a burst, few enough that one caller is not kept writing
/// for everyone under steady load.
pub(super) const MAX_SYNC_BATCHES: usize = 3;

/// The write side: its owner and the requests waiting for it. Every change of owner goes
/// through these methods, under the state lock; they only move ownership and requests, and
/// the owner then writes outside the lock, synchronously or in the writer task.
///
/// Invariants (checked with `debug_assert!`):
/// - one owner at a time, and only the owner takes requests from the backlog;
/// - the backlog is empty and no merged gets is open while the write side is
///   [`Owner::Idle`] (every request is either written by the caller that claimed the write
///   side, or queued behind an owner);
/// - while a caller yields, its request is first in the backlog (or the open merged gets):
///   nobody else takes it;
/// - the open merged gets comes after the whole backlog, and is sealed into it before any
///   batch is taken or any other request queued ([`State::seal`]);
/// - a yield is known by its epoch, so that a caller back from its yield (or dropped) after
///   being taken over cannot act on a later caller's yield.
pub(super) struct WriteTurn {
    pub(super) owner: Owner,
    /// Counts the yields of [`Owner::Yielding`], so that an observer can tell the same
    /// yield from a later one.
    pub(super) yield_epoch: u64,
    /// Requests accepted but not yet written, in order, behind whatever the owner writes.
    pub(super) backlog: VecDeque<Bytes>,
    /// Gets queued after the backlog that later gets may still join (see [`merge`](crate::backend::tcp::merge)).
    pub(super) open: Option<OpenGets>,
    /// Requests ever taken to be written (by the caller that writes its own at once, or
    /// in a batch), counted before their first byte goes out: a reply can only answer one
    /// of these, so the reader refuses one that would answer a request still waiting
    /// ([`begun`](Self::begun)).
    begun: u64,
    /// How many requests at the front of the backlog were taken already (an owner's
    /// unwritten rest, handed on): not counted again when taken again.
    handed_back: usize,
}

impl WriteTurn {
    pub(super) fn new() -> Self {
        Self {
            owner: Owner::Idle,
            yield_epoch: 0,
            backlog: VecDeque::new(),
            open: None,
            begun: 0,
            handed_back: 0,
        }
    }

    /// How many requests have been taken to be written since the connection opened. Read
    /// under the state lock after a reply's bytes arrived, it counts the reply's request
    /// if that was ever sent: it is counted under the lock before its bytes are written.
    pub(super) fn begun(&self) -> u64 {
        self.begun
    }

    /// Moves a batch from the front of the backlog to `batch`, counting what it begins.
    fn take(&mut self, batch: &mut VecDeque<Bytes>) {
        let before = batch.len();
        take_batch(&mut self.backlog, batch);
        let moved = batch.len() - before;
        let again = moved.min(self.handed_back);
        self.handed_back -= again;
        self.begun += (moved - again) as u64;
    }

    /// Whether nobody owns the write side: the caller that finds it so writes at once, or
    /// yields first when replies are due before its own.
    pub(super) fn is_idle(&self) -> bool {
        let idle = self.owner == Owner::Idle;
        debug_assert!(
            !idle || (self.backlog.is_empty() && self.open.is_none()),
            "an idle write side with requests waiting"
        );
        idle
    }

    /// The caller that found the write side idle writes its request now.
    pub(super) fn claim_now(&mut self) {
        debug_assert!(self.is_idle());
        self.owner = Owner::Sync;
        self.begun += 1;
    }

    /// The caller that found the write side idle, with replies due before its own, yields
    /// first (its request just queued); returns the yield's epoch.
    pub(super) fn claim_after_yield(&mut self) -> u64 {
        debug_assert_eq!(self.owner, Owner::Idle);
        debug_assert!(
            !self.backlog.is_empty() || self.open.is_some(),
            "a yield without its request"
        );
        self.owner = Owner::Yielding;
        self.yield_epoch += 1;
        self.yield_epoch
    }

    /// Whether the caller that yielded at `epoch` still owns the write side.
    fn is_yield(&self, epoch: u64) -> bool {
        let ours = self.owner == Owner::Yielding && self.yield_epoch == epoch;
        debug_assert!(
            !ours || !self.backlog.is_empty() || self.open.is_some(),
            "a yield without its request"
        );
        ours
    }

    /// The caller that yielded at `epoch` is back: it writes synchronously, starting with
    /// `batch` (filled here). False when it was taken over meanwhile.
    pub(super) fn resume(&mut self, epoch: u64, batch: &mut VecDeque<Bytes>) -> bool {
        if !self.is_yield(epoch) {
            return false;
        }
        self.owner = Owner::Sync;
        self.take(batch);
        true
    }

    /// The caller that yielded at `epoch` was dropped: the writer task gets the write side
    /// (true: wake it), unless the caller was taken over meanwhile.
    fn yield_to_task(&mut self, epoch: u64) -> bool {
        if !self.is_yield(epoch) {
            return false;
        }
        self.owner = Owner::Task;
        true
    }

    /// An observer's look for a caller stuck in its yield: takes the write side for a
    /// synchronous write of `batch` (filled here) when the yield it saw at its previous
    /// look (`seen`) still holds it. Each observer keeps its own `seen`.
    pub(super) fn take_over_stale_yield(
        &mut self,
        seen: &mut Option<u64>,
        batch: &mut VecDeque<Bytes>,
    ) -> bool {
        if self.owner != Owner::Yielding {
            *seen = None;
            return false;
        }
        if *seen != Some(self.yield_epoch) {
            *seen = Some(self.yield_epoch);
            return false;
        }
        *seen = None;
        debug_assert!(self.is_yield(self.yield_epoch));
        self.owner = Owner::Sync;
        self.take(batch);
        true
    }

    /// The owner `by` (a synchronous writer, or the writer task) has written its batch:
    /// the next one goes to `batch`, or, when the backlog is empty, the write side is given
    /// up (false).
    pub(super) fn next_batch(&mut self, by: Owner, batch: &mut VecDeque<Bytes>) -> bool {
        debug_assert_eq!(
            self.owner, by,
            "a batch taken by a task that does not own the write side"
        );
        debug_assert!(
            batch.is_empty(),
            "a batch taken before the last one was written"
        );
        if self.backlog.is_empty() {
            self.owner = Owner::Idle;
            return false;
        }
        self.take(batch);
        true
    }

    /// A synchronous writer hands the write side and its unwritten `rest` (which goes
    /// before the backlog) to the writer task, which is to be woken.
    pub(super) fn hand_on(&mut self, rest: &mut VecDeque<Bytes>) {
        debug_assert_eq!(
            self.owner,
            Owner::Sync,
            "handed on by a task that does not own it"
        );
        self.handed_back += rest.len();
        while let Some(bytes) = rest.pop_back() {
            self.backlog.push_front(bytes);
        }
        self.owner = Owner::Task;
    }

    /// The connection ended: nothing more is written.
    pub(super) fn close(&mut self) {
        debug_assert!(
            self.open.is_none(),
            "closed before the merged gets was sealed"
        );
        self.backlog.clear();
        self.handed_back = 0;
    }
}

/// A caller's claim on the write side while it yields (see [`Connection::call`]).
pub(super) struct Yielding<'a> {
    pub(super) shared: &'a Shared,
    pub(super) epoch: u64,
    /// Whether dropping the guard hands the write side on: until the caller is back.
    pub(super) armed: bool,
}

impl Yielding<'_> {
    /// Back from the yield: writes the backlog, unless it was taken over meanwhile.
    pub(super) fn resume(mut self) {
        self.armed = false;
        let mut batch = VecDeque::new();
        {
            let mut state = self.shared.lock();
            if state.closed || !state.resume(self.epoch, &mut batch) {
                return;
            }
        }
        self.shared.write_owned(batch);
    }
}

impl Drop for Yielding<'_> {
    /// A caller dropped during its yield: the writer task writes the backlog instead. No
    /// I/O in a destructor, and nothing was written yet, so nothing is half written.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let handed = {
            let mut state = self.shared.lock();
            !state.closed && state.write.yield_to_task(self.epoch)
        };
        if handed {
            self.shared.wake_writer.notify_one();
        }
    }
}

/// Moves requests from the front of `backlog` to `batch`, up to the batch bounds (at least
/// one).
fn take_batch(backlog: &mut VecDeque<Bytes>, batch: &mut VecDeque<Bytes>) {
    let mut bytes = 0;
    while let Some(front) = backlog.front() {
        if !batch.is_empty() && (batch.len() >= MAX_BATCH_REQUESTS || bytes >= MAX_BATCH_BYTES) {
            break;
        }
        bytes += front.len();
        if let Some(request) = backlog.pop_front() {
            batch.push_back(request);
        }
    }
}

/// Writes as much of `batch` as the socket takes without waiting, one `write` or `writev`
/// per attempt, removing what was written. `Ok(true)` when all of it went out, `Ok(false)`
/// when the socket is full.
pub(super) fn write_now(socket: &OwnedWriteHalf, batch: &mut VecDeque<Bytes>) -> io::Result<bool> {
    while let Some(front) = batch.front() {
        let written = if batch.len() == 1 {
            socket.try_write(front)
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_BATCH_REQUESTS];
            let count = batch.len().min(MAX_BATCH_REQUESTS);
            for (slice, bytes) in slices.iter_mut().zip(batch.iter()) {
                *slice = IoSlice::new(bytes);
            }
            socket.try_write_vectored(&slices[..count])
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut written) => {
                while written > 0 {
                    let Some(front) = batch.front_mut() else {
                        break;
                    };
                    if front.len() <= written {
                        written -= front.len();
                        batch.pop_front();
                    } else {
                        front.advance(written);
                        written = 0;
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// Writes the backlog while it owns the write side, waiting for the socket when it is full;
/// gives the write side back once the backlog is empty.
pub(super) async fn write_loop(shared: Arc<Shared>) {
    let mut batch = VecDeque::new();
    loop {
        shared.wake_writer.notified().await;
        loop {
            {
                let mut state = shared.lock();
                // A leftover wakeup while another task (or nobody) owns the write side.
                if state.closed || state.write.owner != Owner::Task {
                    break;
                }
                if !state.next_batch(Owner::Task, &mut batch) {
                    break;
                }
            }
            loop {
                match write_now(&shared.socket, &mut batch) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(err) => return shared.fail(write_failed(&shared.server, err)),
                }
                if let Err(err) = shared.socket.writable().await {
                    return shared.fail(write_failed(&shared.server, err));
                }
            }
        }
    }
}
