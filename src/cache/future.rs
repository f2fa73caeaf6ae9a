//! [`ResponseFuture`], the service's future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use super::body::ResponseBody;

/// Boxed because the flow awaits backend calls whose futures are `impl Future` types
/// (the `Backend` trait's methods), which cannot be named in a hand-written state machine.
/// One allocation per request, small next to any network round trip.
pub(crate) type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

/// The future of [`Memcache`](super::Memcache): a lookup, then a cached response or the
/// inner service's.
pub struct ResponseFuture<B, E> {
    pub(crate) inner: BoxedResponse<B, E>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
