//! The read side of a connection: the reader task that parses replies, hands each to the
//! oldest waiter, and keeps the callers' deadlines.

use super::*;

/// Why the reader stops parsing a connection's bytes.
enum Failure {
    /// A reply breaks the protocol or is more than its request allows.
    Malformed(ProtocolError),
    /// Bytes arrived with no request left to answer.
    Unsolicited,
}

/// The read buffer's capacity when a connection opens, and again after a large reply.
const READ_BUFFER: usize = 16 * 1024;

/// The most free capacity the read buffer keeps past a reply it handed out. Values are
/// views of the buffer's allocation (no copy per hit), so a reply read into the room a
/// large one left would hold all of that allocation alive for as long as its caller keeps
/// it (a small raw value, a tiny page a slow client leaves unread): megabytes per value,
/// where every budget counts the value's own bytes.
const MAX_SPARE: usize = 4 * READ_BUFFER;

pub(super) fn unsolicited(server: &str) -> BackendError {
    tracing::warn!(%server, "unsolicited bytes from memcached; dropping the connection");
    BackendError::Protocol(ProtocolViolation::new(ProtocolError::Unsolicited))
}

/// Reads replies and hands each to the oldest waiter, until the connection fails.
pub(super) async fn read_loop(
    reader: Reader,
    mut socket: OwnedReadHalf,
    settings: ConnectionSettings,
) {
    let err = read_replies(&reader.shared, &mut socket, &settings).await;
    reader.shared.fail(err);
}

/// The reader task's hold on its connection. The reader keeps the callers' deadlines, so a
/// reader dropped unfinished (its runtime shut down, even before it first ran) ends the
/// connection: its waiters get an error rather than wait with nobody to give up on them.
pub(super) struct Reader {
    pub(super) shared: Arc<Shared>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Nothing once the connection failed (the usual way the reader ends).
        self.shared.fail(self.shared.closed_error());
    }
}

async fn read_replies(
    shared: &Shared,
    socket: &mut OwnedReadHalf,
    settings: &ConnectionSettings,
) -> BackendError {
    let server = &*shared.server;
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut decoder = protocol::Decoder::default();
    let mut replies = Vec::new();
    let mut answered = Vec::new();
    // What the requests whose replies are due asked for, oldest first: the reader's copy of
    // the front of `State::asked`, refreshed under the lock it takes anyway.
    let mut pending: VecDeque<Asked> = VecDeque::new();
    // The epoch of a yielding caller seen by the previous delivery, and by the previous tick.
    let mut seen_by_reader = None;
    let mut seen_by_ticker = None;
    // Stall detection without a timer per read: a tick every `stall_timeout`; a tick that
    // finds requests outstanding that were already outstanding at the previous tick, with no
    // reply completed in between, ends the connection. A stalled reply is so noticed after
    // one to two `stall_timeout`s. Bytes alone are not progress: a server that trickles a
    // reply a byte at a time would otherwise hold every caller bounded tighter than the
    // timeout (the layer's lookup limit) at its deadline, forever, and never be marked down;
    // a reply that takes a whole `stall_timeout` to arrive has timed out its caller anyway.
    // One too large to add (`Duration::MAX`) never ticks.
    let mut ticker =
        tokio::time::interval_at(deadline_in(settings.stall_timeout), settings.stall_timeout);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = false;
    let mut waited_last_tick = false;
    // Replies handed out since the connection opened (see `WriteTurn::begun`).
    let mut replied: u64 = 0;
    loop {
        tokio::select! {
            biased;
            read = socket.read_buf(&mut buf) => match read {
                Ok(0) => return unreachable(server, UnreachableReason::ClosedByPeer),
                Ok(_) => {}
                Err(err) => return unreachable(server, UnreachableReason::Read(Arc::new(err))),
            },
            () = poll_fn(|cx| shared.poll_deadlines(cx)) => continue,
            _ = ticker.tick() => {
                // When no reply is due, nothing else would notice a caller that stopped
                // in its yield.
                if shared.take_over_stale_yield(&mut seen_by_ticker) {
                    // Requests just went out: their replies get a full tick.
                    progress = true;
                }
                let waiting = !shared.lock().waiters.is_empty();
                if waiting && waited_last_tick && !progress {
                    let told = {
                        let state = shared.lock();
                        state.waiters.iter().any(Waiting::waits)
                            || state.write.open.as_ref().is_some_and(OpenGets::waits)
                    };
                    if !told {
                        shared.unreported_stall.store(true, Ordering::Release);
                    }
                    return BackendError::Timeout {
                        server: server.to_string(),
                        after: settings.stall_timeout,
                    };
                }
                waited_last_tick = waiting;
                progress = false;
                continue;
            }
        }
        // Every complete reply in the buffer, each bounded by what its request asked, then
        // one lock for all their waiters. A request is queued before it is written, so every
        // byte that arrives belongs to a queued request: bytes with none left to answer are
        // something nobody asked for, and so is a reply for a request not yet taken to be
        // written (checked under the lock below). Each reply must also be of a kind its
        // request can get, whether or not its caller still waits. Parsing stops at the first incomplete reply, so what
        // stays in `buf` is a prefix of a reply its request allows: the buffer holds at most
        // what the oldest outstanding request can legitimately be sent, plus one read. (A
        // value over the limit is not part of it: the decoder cuts its bytes out as they
        // arrive, and wants no room for it.)
        let mut failure = loop {
            if buf.is_empty() {
                break None;
            }
            if pending.is_empty() {
                pending.extend(shared.lock().asked.drain(..));
            }
            let Some(asked) = pending.front() else {
                break Some(Failure::Unsolicited);
            };
            match decoder.decode(&mut buf, &settings.limits, asked) {
                Ok(Some(reply)) => {
                    replies.push(reply);
                    pending.pop_front();
                }
                Ok(None) => break None,
                Err(err) => break Some(Failure::Malformed(err)),
            }
        };
        let unmatched = {
            let mut state = shared.lock();
            if state.closed {
                return shared.closed_error();
            }
            pending.extend(state.asked.drain(..));
            // A reply for a request not yet taken to be written (waiting in the backlog)
            // answers nothing this client sent: the peer lies or is out of step, and it
            // must not reach that request's caller (a purge would report a delete it never
            // sent). The replies before it are handed out; the connection goes.
            let sent =
                usize::try_from(state.write.begun().saturating_sub(replied)).unwrap_or(usize::MAX);
            if replies.len() > sent {
                replies.truncate(sent);
                failure = Some(Failure::Unsolicited);
            }
            let count = replies.len().min(state.waiters.len());
            replied += count as u64;
            answered.extend(state.waiters.drain(..count));
            // While replies keep coming the timer's branch above may not be polled: the
            // deadlines are looked at here too, after the replies just read were taken
            // (a reply in hand is delivered, as a timer around the call polls the call
            // first).
            if state.timer.is_elapsed() {
                state.expire();
            }
            // Never true (each reply consumed a queued request's `Asked`), kept as a guard.
            count < replies.len()
        };
        let delivered = answered.len();
        shared
            .slots
            .add_permits(answered.iter().map(Waiting::callers).sum());
        for (waiting, reply) in answered.drain(..).zip(replies.drain(..)) {
            waiting.answer(Ok(reply));
        }
        match failure {
            Some(Failure::Malformed(err)) => {
                // The stream cannot be resynchronised, and a hostile server must not get to
                // send more: the connection goes now, its waiters get the error.
                tracing::warn!(
                    %server,
                    error = %err,
                    "memcached reply breaks the protocol; dropping the connection"
                );
                return BackendError::Protocol(ProtocolViolation::new(err));
            }
            Some(Failure::Unsolicited) => return unsolicited(server),
            None if unmatched => return unsolicited(server),
            None => {}
        }
        if delivered > 0 {
            progress = true;
            shared.take_over_stale_yield(&mut seen_by_reader);
        }
        if delivered > 0 && buf.capacity() - buf.len() > MAX_SPARE {
            // What a large reply left (see `MAX_SPARE`): later replies go to an allocation
            // of their own, what is here of the next copied once (once per reply handed
            // out, never per read of a large one).
            let mut fresh = BytesMut::with_capacity(READ_BUFFER.max(buf.len()));
            fresh.extend_from_slice(&buf);
            buf = fresh;
        }
        // A large value announced and not all here: room for all of it at once (after the
        // swap above, which would undo it), not a doubling and a copy of what is in per
        // read. `reserve` at least doubles, so a merged line of many values stays linear.
        let wanted = decoder.wanted();
        if wanted > buf.capacity() {
            buf.reserve(wanted - buf.len());
        }
    }
}
