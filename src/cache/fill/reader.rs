//! Filling an entry at the origin's pace. A response on its way into the cache is read by
//! a task of its own, which takes the bounded copy and completes the fill (publishing the
//! entry to waiting requests, storing it, releasing the flight and the lease) as soon as
//! the origin has sent the body, however slowly the client reads. The client reads the
//! same frames from a queue at its own speed; a client that goes away ends the fill.
//!
//! Why not a plain channel: while the copy is taken, the reader must never wait for the
//! client (a client with a zero HTTP/2 window would hold every other request for the URL),
//! and the queue is bounded by the entry size limit anyway, since it shares its chunks with
//! the copy. What clients have not read yet counts against one [`FillBudget`] per layer,
//! so many clients that stop reading cannot make the process hold a full entry each: past
//! the budget, and once nothing is being stored (the body outgrew the limit), the reader
//! waits for its client again, with at most [`QUEUE_LOW_WATER`] bytes read ahead.

use std::any::Any;
use std::collections::VecDeque;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::cache::background::Background;
use crate::cache::body::Tee;

/// How far the reader runs ahead of a slow client once it no longer fills an entry.
const QUEUE_LOW_WATER: usize = 64 * 1024;

/// What a queued frame counts for beyond its data: its place in the queue (a `Frame`
/// holds a `HeaderMap` inline, 96 bytes), twice since the queue grows by doubling. So
/// small or empty frames cannot pile up for less than they hold.
const FRAME_OVERHEAD: usize = 2 * std::mem::size_of::<Result<Frame<Bytes>, ErasedError>>();

/// Bytes read from origins but not yet by clients, across the fills of one layer.
#[derive(Debug)]
pub(crate) struct FillBudget {
    queued: AtomicUsize,
    limit: usize,
}

impl FillBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            queued: AtomicUsize::new(0),
            limit,
        })
    }

    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < self.limit
    }

    fn take(&self, cost: usize) {
        self.queued.fetch_add(cost, Ordering::Relaxed);
    }

    fn give_back(&self, cost: usize) {
        // Never below zero, whatever the interleaving of a client's drop and a read.
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(cost))
            });
    }
}

/// What a frame counts for in the queue and the budget.
fn cost(frame: &Result<Frame<Bytes>, ErasedError>) -> usize {
    let data = match frame {
        Ok(frame) => frame.data_ref().map_or(0, Bytes::len),
        Err(_) => 0,
    };
    data.saturating_add(FRAME_OVERHEAD)
}

/// A body error on its way through the queue. The queue is not generic over the body so
/// that [`ResponseBody`](super::ResponseBody) needs no `Body` bound on its type; the
/// client's side turns it back into the body's own error type.
pub(crate) type ErasedError = Box<dyn Any + Send>;

/// The queue between the reading task and the client's body.
pub(crate) struct Queue {
    state: Mutex<State>,
    budget: Arc<FillBudget>,
}

struct State {
    frames: VecDeque<Result<Frame<Bytes>, ErasedError>>,
    queued_bytes: usize,
    /// The origin's body has ended (or its reader is gone): nothing more will come.
    ended: bool,
    client_gone: bool,
    client: Option<Waker>,
    reader: Option<Waker>,
    /// The origin's body panicked while the reader polled it: the client's body re-raises
    /// it, as if it had polled the body itself.
    panicked: Option<Box<dyn Any + Send>>,
}

impl Queue {
    fn new(budget: Arc<FillBudget>) -> Self {
        Self {
            budget,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                queued_bytes: 0,
                ended: false,
                client_gone: false,
                client: None,
                reader: None,
                panicked: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data: go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the reader may read another frame; `Ready(false)` once the client is gone.
    /// (Filling on for waiters after the client left would keep a slow stream, say
    /// server-sent events, open for as long as it takes to outgrow the entry limit;
    /// the waiters go to the origin themselves instead, as they would have before.)
    fn poll_room(&self, cx: &mut Context<'_>, filling: bool) -> Poll<bool> {
        let mut state = self.lock();
        if state.client_gone {
            return Poll::Ready(false);
        }
        if (filling && self.budget.has_room()) || state.queued_bytes < QUEUE_LOW_WATER {
            return Poll::Ready(true);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the client is gone; if not, the reader is woken when it goes.
    fn poll_client_gone(&self, cx: &mut Context<'_>) -> bool {
        let mut state = self.lock();
        if !state.client_gone {
            state.reader = Some(cx.waker().clone());
        }
        state.client_gone
    }

    fn push(&self, frame: Option<Result<Frame<Bytes>, ErasedError>>, end: bool) {
        let mut state = self.lock();
        if let Some(frame) = frame {
            if !state.client_gone {
                let cost = cost(&frame);
                state.queued_bytes += cost;
                self.budget.take(cost);
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

    fn panicked(&self, payload: Box<dyn Any + Send>) {
        self.lock().panicked = Some(payload);
        self.end();
    }

    /// The client's side: the next frame, the end, or a wait.
    pub(crate) fn poll_frame(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErasedError>>> {
        let mut state = self.lock();
        if let Some(frame) = state.frames.pop_front() {
            let cost = cost(&frame);
            state.queued_bytes -= cost;
            self.budget.give_back(cost);
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
            return Poll::Ready(Some(frame));
        }
        if let Some(payload) = state.panicked.take() {
            drop(state);
            std::panic::resume_unwind(payload);
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
    /// (the entry is not stored).
    fn client_gone(&self) {
        let mut state = self.lock();
        state.client_gone = true;
        state.frames.clear();
        self.budget
            .give_back(std::mem::take(&mut state.queued_bytes));
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
// The error hands back what it was given, once per body and only outside a runtime: a box
// would cost every fill an allocation for nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn start<B>(
    body: B,
    tee: Tee,
    budget: &Arc<FillBudget>,
    background: &Background,
) -> Result<QueueReader, (B, Tee)>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Err((body, tee));
    }
    let queue = Arc::new(Queue::new(Arc::clone(budget)));
    background.spawn(read(body, tee, EndOnDrop(Arc::clone(&queue))));
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
    // How long this fill has waited for its client while copying (see `STALL_GRACE`).
    let mut waited = Duration::ZERO;
    loop {
        let filling = tee.is_some();
        if !wait_for_room(queue, &mut tee, filling, &mut waited).await {
            tracing::debug!("client gone; origin body dropped and the response not stored");
            return;
        }
        // A client that leaves while the origin is slow to send ends the wait at once.
        let next = std::future::poll_fn(|cx| {
            if queue.poll_client_gone(cx) {
                return Poll::Ready(Read::ClientGone);
            }
            // A panic in the origin's body surfaces in the client's body, where polling
            // the body inline would have raised it.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Pin::as_mut(&mut body).poll_frame(cx)
            }));
            match polled {
                Ok(Poll::Ready(frame)) => Poll::Ready(Read::Frame(frame)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(payload) => Poll::Ready(Read::Panicked(payload)),
            }
        });
        let frame = match next.await {
            Read::Frame(frame) => frame,
            Read::ClientGone => {
                tracing::debug!("client gone; origin body dropped and the response not stored");
                return;
            }
            Read::Panicked(payload) => {
                queue.panicked(payload);
                return;
            }
        };
        // An error ends the body: it is passed on, and nothing after it is read.
        let end = !matches!(frame, Some(Ok(_))) || body.is_end_stream();
        if let Some(copy) = tee.as_mut() {
            if let Some(reason) = copy.take(frame.as_ref()) {
                tracing::debug!(reason, "response not stored");
                if let Some(copy) = tee.take() {
                    copy.refuse();
                }
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

/// Room for the reader's next frame (`false`: the client is gone). While the body is
/// copied for the cache, the reader waits for its client only once the layer's budget is
/// spent (by clients that read slowly or not at all, an attacker's among them); once such
/// waits add up to [`STALL_GRACE`], what waits for this entry (the requests following its
/// flight, other processes waiting for its placeholder) stops waiting for this client
/// ([`Tee::stalled`]).
async fn wait_for_room(
    queue: &Queue,
    tee: &mut Option<Tee>,
    filling: bool,
    waited: &mut Duration,
) -> bool {
    // Polled once first: most often there is room, and no clock is read.
    let now = std::future::poll_fn(|cx| Poll::Ready(queue.poll_room(cx, filling))).await;
    if let Poll::Ready(room) = now {
        return room;
    }
    let room = std::future::poll_fn(|cx| queue.poll_room(cx, filling));
    let Some(copy) = tee.as_mut().filter(|copy| copy.may_stall()) else {
        return room.await;
    };
    let since = tokio::time::Instant::now();
    let left = STALL_GRACE.saturating_sub(*waited);
    let mut room = pin!(room);
    let room = match tokio::time::timeout(left, room.as_mut()).await {
        Ok(room) => room,
        Err(_) => {
            copy.stalled();
            room.await
        }
    };
    *waited = waited.saturating_add(since.elapsed());
    room
}

/// How long in all a fill may wait for its client, while it copies a body past the
/// layer's spent `fill_buffer`, before the requests waiting for its entry stop waiting
/// for that client: long enough for a client that reads to take a frame or two (a fill
/// handed on at its first wait gave its flight away as soon as its reader was a frame
/// ahead, and every heir asked the origin again), short beside any origin's time.
const STALL_GRACE: Duration = Duration::from_millis(100);

/// What one read of the origin's body gave.
enum Read<F> {
    Frame(Option<F>),
    ClientGone,
    Panicked(Box<dyn Any + Send>),
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::cache::ResponseBody;

    /// An origin body fed by the test, counting the frames it was asked for.
    struct Fed {
        rx: mpsc::Receiver<Bytes>,
        polled: Arc<AtomicUsize>,
    }

    impl Body for Fed {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let frame = std::task::ready!(self.rx.poll_recv(cx));
            self.polled
                .fetch_add(usize::from(frame.is_some()), Ordering::SeqCst);
            Poll::Ready(frame.map(|data| Ok(Frame::data(data))))
        }
    }

    fn fed() -> (mpsc::Sender<Bytes>, Fed, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::channel(1024);
        let polled = Arc::new(AtomicUsize::new(0));
        let body = Fed {
            rx,
            polled: Arc::clone(&polled),
        };
        (tx, body, polled)
    }

    fn tee(limit: usize) -> (Tee, oneshot::Receiver<Bytes>) {
        let (done, stored) = oneshot::channel();
        let tee = Tee::new(
            limit,
            Some(&SizeHint::new()),
            Box::new(move |body| {
                // Refused: the sender goes unused, as it did when a refusal said nothing.
                if let Some(body) = body {
                    let _ = done.send(body);
                }
            }),
        );
        (tee.unwrap(), stored)
    }

    #[tokio::test]
    async fn the_entry_is_filled_while_the_client_reads_nothing() {
        let (tx, body, _) = fed();
        let (tee, stored) = tee(1024);
        let client = ResponseBody::teeing(
            body,
            Some(tee),
            &FillBudget::new(usize::MAX),
            &Background::default(),
        );
        tx.send(Bytes::from_static(b"hello ")).await.unwrap();
        tx.send(Bytes::from_static(b"world")).await.unwrap();
        drop(tx);
        let stored = tokio::time::timeout(Duration::from_secs(1), stored).await;
        assert_eq!(stored.unwrap().unwrap(), "hello world");
        // The client, reading later, gets the same bytes.
        let read = client.collect().await.unwrap().to_bytes();
        assert_eq!(read, "hello world");
    }

    #[tokio::test]
    async fn a_client_that_leaves_ends_the_fill() {
        let (tx, body, _) = fed();
        let (tee, stored) = tee(1024);
        let client = ResponseBody::teeing(
            body,
            Some(tee),
            &FillBudget::new(usize::MAX),
            &Background::default(),
        );
        tx.send(Bytes::from_static(b"part")).await.unwrap();
        tokio::task::yield_now().await;
        drop(client);
        // Nothing stored, and the reader let go of the origin's body.
        assert!(stored.await.is_err());
        tokio::time::timeout(Duration::from_secs(1), tx.closed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn past_the_entry_limit_the_reader_waits_for_the_client() {
        let (tx, body, polled) = fed();
        let (tee, stored) = tee(10);
        let mut client = ResponseBody::teeing(
            body,
            Some(tee),
            &FillBudget::new(usize::MAX),
            &Background::default(),
        );
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        for _ in 0..64 {
            tx.send(chunk.clone()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Over the limit: not stored, and read ahead by at most the low-water mark.
        assert!(stored.await.is_err());
        let ahead = polled.load(Ordering::SeqCst);
        assert!(
            ahead * chunk.len() <= QUEUE_LOW_WATER + chunk.len(),
            "{ahead}"
        );
        let first = client.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), chunk.len());
        drop(tx);
        let mut total = first.len();
        while let Some(frame) = client.frame().await {
            total += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(total, 64 * chunk.len());
    }

    /// A body that fails on every poll (as some streams do after their first error), or
    /// panics.
    struct Broken {
        polled: Arc<AtomicUsize>,
        panics: bool,
    }

    impl Body for Broken {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            self.polled.fetch_add(1, Ordering::SeqCst);
            assert!(!self.panics, "origin body bug");
            Poll::Ready(Some(Err("broken")))
        }
    }

    #[tokio::test]
    async fn an_error_ends_the_body() {
        let polled = Arc::new(AtomicUsize::new(0));
        let body = Broken {
            polled: Arc::clone(&polled),
            panics: false,
        };
        let (tee, stored) = tee(1024);
        let mut client = ResponseBody::teeing(
            body,
            Some(tee),
            &FillBudget::new(usize::MAX),
            &Background::default(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            polled.load(Ordering::SeqCst),
            1,
            "polled again after an error"
        );
        assert!(stored.await.is_err());
        assert_eq!(client.frame().await.unwrap().unwrap_err(), "broken");
        assert!(client.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_panic_in_the_origin_body_reaches_the_client() {
        let body = Broken {
            polled: Arc::new(AtomicUsize::new(0)),
            panics: true,
        };
        let (tee, _stored) = tee(1024);
        let client = ResponseBody::teeing(
            body,
            Some(tee),
            &FillBudget::new(usize::MAX),
            &Background::default(),
        );
        let read = tokio::spawn(async move { client.collect().await.map(|_| ()) });
        let joined = read.await.unwrap_err();
        assert!(joined.is_panic(), "a truncated body must not look complete");
    }

    #[tokio::test]
    async fn clients_that_read_nothing_share_one_budget() {
        let budget = FillBudget::new(64 * 1024);
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut clients = Vec::new();
        let mut fed_counts = Vec::new();
        for _ in 0..4 {
            let (tx, body, polled) = fed();
            let (tee, _stored) = tee(1024 * 1024);
            clients.push((
                ResponseBody::teeing(body, Some(tee), &budget, &Background::default()),
                tx.clone(),
            ));
            for _ in 0..32 {
                tx.send(chunk.clone()).await.unwrap();
            }
            fed_counts.push(polled);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Past the budget each fill reads at most the low-water mark ahead of its client.
        let read: usize = fed_counts.iter().map(|p| p.load(Ordering::SeqCst)).sum();
        let bound = 64 * 1024 + 4 * (QUEUE_LOW_WATER + chunk.len());
        assert!(read * chunk.len() <= bound, "{read} chunks read ahead");
        assert!(read < 4 * 32);
        // Reading gives the budget back.
        drop(clients);
        assert_eq!(budget.queued.load(Ordering::SeqCst), 0);
    }
}
