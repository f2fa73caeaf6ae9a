//! Filling an entry at the origin's pace. A response on its way into the cache is read by
//! a task of its own, which takes the bounded copy and completes the fill (publishing the
//! entry to waiting requests, storing it, releasing the flight and the lease) as soon as
//! the origin has sent the body, whatever the client does. The client reads the same
//! frames from a queue at its own speed.
//!
//! Why not a plain channel: while the copy is taken, the reader must never wait for the
//! client (a client with a zero HTTP/2 window would hold every other request for the URL),
//! and the queue is bounded by the entry size limit anyway, since everything in it is also
//! in the copy. Once nothing is being stored (the body outgrew the limit), the reader
//! waits for the client again, with at most [`QUEUE_LOW_WATER`] bytes read ahead.

use std::any::Any;
use std::collections::VecDeque;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::Tee;

/// How far the reader runs ahead of a slow client once it no longer fills an entry.
const QUEUE_LOW_WATER: usize = 64 * 1024;

/// A body error on its way through the queue. The queue is not generic over the body so
/// that [`ResponseBody`](super::ResponseBody) needs no `Body` bound on its type; the
/// client's side turns it back into the body's own error type.
pub(crate) type ErasedError = Box<dyn Any + Send>;

/// The queue between the reading task and the client's body.
pub(crate) struct Queue {
    state: Mutex<State>,
}

struct State {
    frames: VecDeque<Result<Frame<Bytes>, ErasedError>>,
    queued_bytes: usize,
    /// The origin's body has ended (or its reader is gone): nothing more will come.
    ended: bool,
    client_gone: bool,
    client: Option<Waker>,
    reader: Option<Waker>,
}

impl Queue {
    fn new() -> Self {
        Self {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                queued_bytes: 0,
                ended: false,
                client_gone: false,
                client: None,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data: go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the reader may read another frame; `Ready(false)` when nobody needs it.
    fn poll_room(&self, cx: &mut Context<'_>, filling: bool) -> Poll<bool> {
        let mut state = self.lock();
        if state.client_gone && !filling {
            return Poll::Ready(false);
        }
        if filling || state.queued_bytes < QUEUE_LOW_WATER {
            return Poll::Ready(true);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn push(&self, frame: Option<Result<Frame<Bytes>, ErasedError>>, end: bool) {
        let mut state = self.lock();
        if let Some(frame) = frame {
            if !state.client_gone {
                if let Ok(data) = frame.as_ref().map(Frame::data_ref) {
                    state.queued_bytes += data.map_or(0, Bytes::len);
                }
                state.frames.push_back(frame);
            }
        }
        state.ended |= end;
        if let Some(client) = state.client.take() {
            client.wake();
        }
    }

    fn end(&self) {
        self.push(None, true);
    }

    /// The client's side: the next frame, the end, or a wait.
    pub(crate) fn poll_frame(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErasedError>>> {
        let mut state = self.lock();
        if let Some(frame) = state.frames.pop_front() {
            if let Ok(Some(data)) = frame.as_ref().map(Frame::data_ref) {
                state.queued_bytes -= data.len();
            }
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
            return Poll::Ready(Some(frame));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.client = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let state = self.lock();
        state.ended && state.frames.is_empty()
    }

    /// The client's body was dropped: nothing more is queued for it, and the reader stops
    /// unless it is still filling the entry.
    fn client_gone(&self) {
        let mut state = self.lock();
        state.client_gone = true;
        state.frames.clear();
        state.queued_bytes = 0;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

/// Ends the queue however the reader stops (finished, or dropped with its runtime), so the
/// client is never left waiting for a frame that cannot come.
struct EndOnDrop(Arc<Queue>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Starts reading `body` on a task of its own, filling `tee`; the queue the client reads
/// from, or the body and copy back when there is no tokio runtime to read them on.
pub(crate) fn start<B>(body: B, tee: Tee) -> Result<QueueReader, (B, Tee)>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err((body, tee));
    };
    let queue = Arc::new(Queue::new());
    runtime.spawn(read(body, tee, EndOnDrop(Arc::clone(&queue))));
    Ok(QueueReader(queue))
}

/// The client's end of a [`Queue`]; dropping it tells the reader.
pub(crate) struct QueueReader(Arc<Queue>);

impl QueueReader {
    pub(crate) fn queue(&self) -> &Queue {
        &self.0
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.0.client_gone();
    }
}

async fn read<B>(body: B, tee: Tee, queue: EndOnDrop)
where
    B: Body<Data = Bytes>,
    B::Error: Send + 'static,
{
    let queue = &queue.0;
    let mut body = pin!(body);
    let mut tee = Some(tee);
    loop {
        let filling = tee.is_some();
        if !std::future::poll_fn(|cx| queue.poll_room(cx, filling)).await {
            tracing::debug!("client gone and nothing to store; origin body dropped");
            return;
        }
        let frame = std::future::poll_fn(|cx| Pin::as_mut(&mut body).poll_frame(cx)).await;
        let end = frame.is_none() || body.is_end_stream();
        if let Some(copy) = tee.as_mut() {
            if let Some(reason) = copy.take(frame.as_ref()) {
                tracing::debug!(reason, "response not stored");
                tee = None;
            }
        }
        if end {
            if let Some(copy) = tee.take() {
                copy.complete();
            }
        }
        let erased = frame.map(|frame| frame.map_err(|err| Box::new(err) as ErasedError));
        queue.push(erased, end);
        if end {
            return;
        }
    }
}

/// What the client's body reports of its size: the origin's hint less what was sent.
pub(crate) fn remaining(hint: &SizeHint, sent: u64) -> SizeHint {
    let mut left = SizeHint::new();
    left.set_lower(hint.lower().saturating_sub(sent));
    if let Some(upper) = hint.upper() {
        left.set_upper(upper.saturating_sub(sent));
    }
    left
}
