//! [`Memcache`], the service, and the decision tree of a request: plan, lookup, then a
//! stored response, a wait for another request's, or an exchange with the origin. The
//! pieces live beside it: what a layer knows once in [`shared`](super::shared), the plan
//! and its key in [`target`](super::target), answers from an entry in
//! [`answer`](super::answer), and the phases [`coalesce`](super::coalesce),
//! [`fill`](super::fill), [`revalidate`](super::revalidate) and
//! [`invalidate`](super::invalidate).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower::Service;

use super::answer::Answered;
use super::body::ResponseBody;
use super::coalesce::{Coordinated, Waiting};
use super::exchange::Exchange;
use super::future::ResponseFuture;
use super::invalidate::bypass;
use super::layer::MemcacheLayer;
use super::near::Near;
use super::range::{self, WholeFill};
use super::revalidate::{For, exchange, revalidate_in_background};
use super::shared::Shared;
use super::status::{Detail, Forward, Outcome};
use super::storage::{self, Found, Lookup};
use super::stored::{self, now_ms};
use crate::backend::Backend;
use crate::cache::policy::conditional::strip_preconditions;
use crate::cache::policy::freshness::Reuse;
use crate::cache::stats::CacheStats;

/// A tower service that answers from memcached when it can and stores what its inner
/// service answers when the policy allows. Built by [`MemcacheLayer`].
pub struct Memcache<S, B> {
    inner: S,
    shared: Arc<Shared<B>>,
}

impl<S: Clone, B> Clone for Memcache<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, B> fmt::Debug for Memcache<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memcache")
            .field("inner", &self.inner)
            .field("namespace", &self.shared.config.namespace)
            .finish_non_exhaustive()
    }
}

impl<S, B: Backend> Memcache<S, B> {
    /// Wraps `inner` with a cache over `backend` and the default settings.
    pub fn new(inner: S, backend: B) -> Self {
        tower::Layer::layer(&MemcacheLayer::new(backend), inner)
    }

    /// A [`MemcacheLayer`] over `backend`, to configure.
    pub fn layer(backend: B) -> MemcacheLayer<B> {
        MemcacheLayer::new(backend)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<B>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The statistics this service counts into (shared with its layer).
    pub fn stats(&self) -> CacheStats {
        self.shared.config.stats.clone()
    }
}

impl<S, B, ReqBody, ResBody> Service<Request<ReqBody>> for Memcache<S, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; a fresh clone stays for
        // the next one (tower's usual dance).
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture {
            inner: Box::pin(handle(Arc::clone(&self.shared), ready, request)),
        }
    }
}

// An `async` block rather than an `async fn`: an `async fn`'s future keeps its arguments
// twice (as arguments and as the body's locals), and this future is allocated for every
// request.
#[allow(clippy::manual_async_fn)]
pub(super) fn handle<S, B, ReqBody, ResBody>(
    shared: Arc<Shared<B>>,
    inner: S,
    request: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>> + Send + 'static
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    async move {
        let Some(mut plan) = shared.plan(&request) else {
            // Boxed, like the other paths that are not a hit: `handle`'s own future stays
            // small, and a hit allocates and moves only what a hit needs.
            return Box::pin(bypass(&shared, inner, request)).await;
        };
        let is_head = request.method() == Method::HEAD;
        // A request whose wait for another gave nothing usable (another variant's response,
        // one overtaken by a purge, a leader whose client hung up) looks the URL up again,
        // a few times at most: each round ends with an answer, a wait bounded by
        // `coalesce_timeout`, or the origin.
        let mut retries: u8 = 3;
        // Counted in `coalesced` once, and waiting `coalesce_timeout` in all, however many
        // rounds it waits.
        let mut waiting = Waiting::default();
        // `inner` is a clone not polled ready, its readiness let go during a wait.
        let mut unready = false;
        let mut inner = inner;
        loop {
            let mut near_mark = None;
            if let (Some(near), true) = (shared.storage.near(), plan.from_cache) {
                let headers = request.headers();
                let (entry, basis) =
                    match near.get(&plan.key, &plan.canonical, headers, shared.storage.reader()) {
                        Near::Current(entry) => (Some(entry), None),
                        Near::Lapsed(entry, basis) => (Some(entry), Some(basis)),
                        Near::Nothing => (None, None),
                    };
                if let Some(entry) = entry {
                    let now = now_ms();
                    let freshness = stored::freshness(&entry.meta, now);
                    // Received past the tolerated skew (this clock was set back since the
                    // tier read it): no age to tell, as read from memcached (review SL).
                    let fresh = freshness.reuse(&plan.request_cc) == Reuse::Fresh
                        && !storage::received_ahead(&entry.meta, now);
                    let current = match basis {
                        None => true,
                        // Past its window: confirmed by its store epoch and generations (most
                        // often remembered: no round trip), else looked up in full below.
                        // Boxed: once per window, and a hit's own future stays small.
                        Some(basis) if fresh => {
                            let mark = near.mark(&plan.key);
                            let storage = &shared.storage;
                            let confirm =
                                Box::pin(storage.reconfirm(&plan.key, &entry.meta, basis));
                            let read = confirm.await;
                            if let Some(read) = read {
                                near.renew(&plan.key, &entry, mark.since(Some(read)));
                            }
                            read.is_some()
                        }
                        Some(_) => false,
                    };
                    if fresh && current {
                        shared.config.stats.record_near_hit();
                        let answered = Answered::Near;
                        // Answered: the request's field map holds the response's.
                        let mut request = request;
                        let fields = std::mem::take(request.headers_mut());
                        return Ok(
                            shared.answer_taking(&entry, &freshness, fields, is_head, answered)
                        );
                    }
                }
                // Before the lookup reads anything: what this process changes from now on
                // refuses what it finds.
                let mark = near.mark(&plan.key);
                near_mark = Some((near, mark));
            }
            let (found, detail) = if plan.from_cache {
                match shared
                    .storage
                    .lookup(&plan.canonical, &plan.key, request.headers())
                    .await
                {
                    Lookup::Found(found) => (found, None),
                    Lookup::Unavailable => (Found::default(), Some(Detail::BackendUnavailable)),
                }
            } else {
                (Found::default(), None)
            };
            // Not looked up (a precondition only the origin can judge): the request's own
            // semantics rule the cache out, whatever it holds; not a `uri-miss`.
            let mut fwd = if plan.from_cache {
                Forward::UriMiss
            } else {
                Forward::Request
            };
            if let Some(entry) = &found.entry {
                let freshness = stored::freshness(&entry.meta, now_ms());
                match freshness.reuse(&plan.request_cc) {
                    Reuse::Fresh | Reuse::StaleAccepted => {
                        // A shared cookie may be kept: what the tier keeps it answers
                        // only to layers of this one's settings (`Storage::reader`), and
                        // a layer that does not share cookies has other settings.
                        if let Some((near, mark)) = near_mark.filter(|_| freshness.is_fresh()) {
                            let mark = mark.since(found.vouched);
                            // One set of selecting headers: a request selects at most one of
                            // the variants kept, as it would in memcached.
                            match &found.index {
                                None => near.keep(
                                    &plan.key,
                                    entry,
                                    false,
                                    mark,
                                    found.basis,
                                    shared.storage.reader(),
                                ),
                                Some(index) if index.name_sets.len() == 1 => {
                                    near.keep(
                                        &plan.key,
                                        entry,
                                        true,
                                        mark,
                                        found.basis,
                                        shared.storage.reader(),
                                    );
                                }
                                Some(_) => {}
                            }
                        }
                        // Answered: the request's field map holds the response's.
                        let mut request = request;
                        let fields = std::mem::take(request.headers_mut());
                        return Ok(shared.answer_taking(
                            entry,
                            &freshness,
                            fields,
                            is_head,
                            Answered::Lookup,
                        ));
                    }
                    Reuse::StaleWhileRevalidate => {
                        let headers = request.headers();
                        let response =
                            shared.answer(entry, &freshness, headers, is_head, Answered::Lookup);
                        let ex = Exchange {
                            plan,
                            found,
                            fwd: Forward::Stale,
                            detail: None,
                            is_head,
                        };
                        // The refresh is for the entry, whole: a 206 would refresh nothing;
                        // and the cache's own, with the stored validators: a 304 to the
                        // client's conditions may select nothing stored (review RS).
                        let mut request = request;
                        range::strip(request.headers_mut());
                        strip_preconditions(request.headers_mut());
                        shared.config.canonical.spell_as_keyed(&mut request);
                        revalidate_in_background(&shared, inner, request, ex);
                        return Ok(response);
                    }
                    // Fresh, yet the request's directives ask for the origin: "request".
                    Reuse::Validate if freshness.is_fresh() || plan.request_cc.no_cache => {
                        fwd = Forward::Request;
                    }
                    Reuse::Validate => fwd = Forward::Stale,
                }
            } else if found.index.is_some() {
                fwd = Forward::VaryMiss;
            }
            if plan.request_cc.only_if_cached {
                tracing::debug!(key = %plan.key, "only-if-cached and nothing usable stored: 504");
                // Nothing usable stored: a miss, as any other (only the origin is spared).
                shared.config.stats.record_miss();
                let mut response = stored::gateway_timeout(is_head);
                let outcome = Outcome::Generated {
                    detail: Detail::OnlyIfCached,
                };
                shared.set_status(&mut response, outcome);
                return Ok(response);
            }
            let ex = Exchange {
                plan,
                found,
                fwd,
                detail,
                is_head,
            };
            let headers = request.headers();
            // A request that waits for another's response lets the inner service's
            // readiness go (a `ConcurrencyLimit`'s slot held for nothing), keeping an
            // unready clone, and is made ready again only if it goes to the origin.
            let mut idle = || {
                if !unready {
                    inner = inner.clone();
                    unready = true;
                }
            };
            let retry = retries > 0;
            let coordinate =
                Box::pin(shared.coordinate_idle(&ex, headers, retry, &mut waiting, &mut idle));
            let filler = match coordinate.await {
                Coordinated::Answered(entry, freshness) => {
                    let headers = request.headers();
                    let answered = Answered::Collapsed(ex.fwd);
                    return Ok(shared.answer(&entry, &freshness, headers, is_head, answered));
                }
                Coordinated::Go(filler) => filler,
                Coordinated::Retry => {
                    retries = retries.saturating_sub(1);
                    plan = ex.plan;
                    continue;
                }
            };
            if unready {
                let ready = futures_util::future::poll_fn(|cx| inner.poll_ready(cx));
                if let Err(err) = ready.await {
                    filler.release().await;
                    return Err(err);
                }
            }
            // The origin answers for the authority the key holds, as the key spells it.
            let mut request = request;
            shared.config.canonical.spell_as_keyed(&mut request);
            // A range set the cache itself would ignore, many times the page for a few
            // bytes of request (§17.15): the origin is asked for the whole (stored, and
            // the client gets the 200 a hit would give it). Only `Range` asks for a part.
            if range::tame(request.headers_mut()) {
                tracing::debug!(key = %ex.plan.key, "abusive or invalid Range not forwarded");
            }
            // A range miss: the range goes as it is, the whole may follow (see `range`).
            let whole = WholeFill::for_request(&shared, &inner, &request, &ex);
            let response =
                Box::pin(exchange(&shared, inner, request, &ex, filler, For::Client)).await;
            if let (Some(whole), Ok(answered)) = (whole, &response) {
                whole.start(&shared, answered);
            }
            return response;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::Response;
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceExt};

    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::near::NearCache;
    use crate::cache::shared::testing::{entry, exchange_for, get, shared};
    use crate::cache::stored::now_ms;

    /// Review SL: an entry a near tier holds was read when its receipt time was within the
    /// tolerated second of this process's clock; the clock was then set back an hour (it
    /// had run ahead; NTP or an operator set it right). Its age, counted from a time now an
    /// hour to come, was zero: the tier answered it as fresh past its lifetime for as long
    /// as renewals (store epoch and generations, the entry not read again) kept it, eight
    /// windows of `max_staleness`, where memcached's copy, read now, is a miss (review RN).
    #[tokio::test]
    async fn a_near_entry_received_past_the_clock_set_back_is_not_answered() {
        let near = NearCache::new(1 << 20, Duration::from_secs(60));
        let layer = MemcacheLayer::new(MemoryBackend::new()).near_cache(near);
        let shared = shared(&layer);
        let request = get("http://site.example/near-set-back");
        let ex = exchange_for(&shared, &request).await;
        let mut kept = entry(&ex, &[]);
        // Received at what the clock read before it was set back an hour.
        kept.meta.stored_at_ms = now_ms() + 3_600_000;
        let tier = shared.storage.near().expect("a near tier");
        tier.keep(
            &ex.plan.key,
            &kept,
            false,
            tier.mark(&ex.plan.key),
            None,
            shared.storage.reader(),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let origin = tower::service_fn(move |_: http::Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"origin")))) }
        });
        let answer = layer
            .layer(origin)
            .oneshot(get("http://site.example/near-set-back"))
            .await
            .unwrap();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"origin");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
