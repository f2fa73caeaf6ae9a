//! An origin whose answers take time, for floods and flights: each call counts, waits
//! as its pace says, then answers as a script of the request and the call's number says.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Semaphore;

use super::scripted_service::{Replies, Reply};

/// How long a call waits before it answers.
#[derive(Clone)]
pub enum Pace {
    /// Every call, this long.
    Every(Duration),
    /// The first call until `gate` gives it a permit; later ones not at all.
    First(Arc<Semaphore>),
    /// The first call not at all; each later one until `gate` gives it a permit (which it
    /// keeps), then `then` (an origin's round trip; none when zero).
    AfterFirst {
        gate: Arc<Semaphore>,
        then: Duration,
    },
}

/// An origin that counts its calls in `calls` (the test's counter), waits as `pace`
/// says, and answers as its script says.
#[derive(Clone)]
pub struct Paced {
    calls: Arc<AtomicUsize>,
    pace: Pace,
    script: Arc<Replies>,
}

impl Paced {
    pub fn new(
        calls: Arc<AtomicUsize>,
        pace: Pace,
        script: impl Fn(&Request<()>, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls,
            pace,
            script: Arc::new(script),
        }
    }
}

impl tower::Service<Request<()>> for Paced {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (pace, script) = (self.pace.clone(), Arc::clone(&self.script));
        Box::pin(async move {
            match pace {
                Pace::Every(delay) => tokio::time::sleep(delay).await,
                Pace::AfterFirst { gate, then } if call > 1 => {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    if !then.is_zero() {
                        tokio::time::sleep(then).await;
                    }
                }
                Pace::First(gate) if call == 1 => {
                    let _ = gate.acquire().await;
                }
                Pace::AfterFirst { .. } | Pace::First(_) => {}
            }
            Ok(script(&request, call).into_response())
        })
    }
}
