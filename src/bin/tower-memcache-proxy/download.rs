//! The origin's response body on its way to the client and the cache, cut off when the
//! origin stalls, and what ends an upload the origin answered early ([`Answered`]).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::connections::Place;
use crate::upload::Answered;

pin_project! {
    /// The origin's response body, cut off (an error: never stored, never complete to a
    /// client) once the proxy has waited `--upstream-timeout` for its next frame (nginx's
    /// `proxy_read_timeout`). Only the time spent waiting for the origin counts, not the
    /// time the body waits for a slow client to take what it sent.
    pub(crate) struct Download {
        #[pin]
        body: Incoming,
        #[pin]
        stalled: tokio::time::Sleep,
        timeout: Duration,
        waiting: bool,
        // The request's place at the origin (`--upstream-max-connections`): given back
        // once the body ended, not when the response is dropped, which a cache fill may
        // do later.
        place: Option<Place>,
        // Ends the request's upload, if one is still under way, once this answer ended
        // (or was dropped): see [`Answered`].
        answered: Option<Answered>,
    }
}

impl Download {
    pub(crate) fn new(
        body: Incoming,
        timeout: Duration,
        place: Place,
        answered: Option<Answered>,
    ) -> Self {
        Self {
            body,
            // Armed when a wait starts.
            stalled: tokio::time::sleep(timeout),
            timeout,
            waiting: false,
            place: Some(place),
            answered,
        }
    }
}

/// The error a [`Download`] that stopped ends with.
#[derive(Debug)]
struct OriginStalled;

impl std::fmt::Display for OriginStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the origin sent nothing of its response body for --upstream-timeout")
    }
}

impl Error for OriginStalled {}

impl http_body::Body for Download {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting = false;
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(answered) = this.answered.as_ref() {
                        answered.passed(frame.data_ref().map_or(0, Bytes::len));
                    }
                    // Until asked for the next frame, the place waits for the reader: the
                    // client, or a cache fill that reads at the origin's pace.
                    if let Some(place) = this.place.as_mut() {
                        place.downloads(true);
                    }
                }
                _ => {
                    this.place.take();
                    this.answered.take();
                }
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if let Some(place) = this.place.as_mut() {
            place.downloads(false);
        }
        if !*this.waiting {
            *this.waiting = true;
            let deadline = tokio::time::Instant::now() + *this.timeout;
            this.stalled.as_mut().reset(deadline);
            // Everything read of the answer was taken: the client keeps up with it.
            if let Some(answered) = this.answered.as_ref() {
                answered.taken();
            }
        }
        if this.stalled.poll(cx).is_ready() {
            this.place.take();
            this.answered.take();
            tracing::warn!("upstream stopped sending a response body: cut off");
            return Poll::Ready(Some(Err(Box::new(OriginStalled))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
