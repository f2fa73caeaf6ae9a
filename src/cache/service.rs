//! [`Memcache`], the service, and the decision tree of a request: plan, lookup, then a
//! stored response, a wait for another request's, or an exchange with the origin. The
//! phases live beside it: [`coalesce`](super::coalesce), [`fill`](super::fill),
//! [`revalidate`](super::revalidate), [`invalidate`](super::invalidate).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use tower::Service;

use super::CacheLifetime;
use super::body::ResponseBody;
use super::coalesce::Coordinated;
use super::config::Config;
use super::exchange::{Exchange, Plan};
use super::future::ResponseFuture;
use super::invalidate::bypass;
use super::key::{InvalidTarget, KeyOutcome, RequestHead};
use super::layer::MemcacheLayer;
use super::near::Near;
use super::range::{self, WholeFill};
use super::revalidate::{For, exchange, revalidate_in_background};
use super::status::{self, CACHE_STATUS, CacheStatus, Detail, Forward, Outcome};
use super::storage::{Found, Lookup, Storage, parse_tags};
use super::stored::{self, header_map, now_ms};
use crate::backend::Backend;
use crate::cache::entry::Entry;
use crate::cache::policy::cache_control::parse_delta_seconds;
use crate::cache::policy::conditional::{
    has_origin_preconditions, may_be_not_modified, not_modified,
};
use crate::cache::policy::freshness::{Freshness, Reuse};
use crate::cache::policy::{CacheControl, Policy, normalized_header, sets_cookie, vary_names};
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

/// Marks a response the layer built from a stored one.
#[derive(Clone, Copy, Debug)]
pub(super) struct FromCache;

/// What the layer knows once, for every request.
pub(crate) struct Shared<B> {
    pub(crate) config: Config<B>,
    pub(crate) storage: Storage<B>,
    pub(super) status: Option<CacheStatus>,
    /// Response fields the layer consumes and never stores or sends on.
    pub(super) own_fields: Vec<HeaderName>,
}

/// How a request comes to be answered from a stored response.
#[derive(Clone, Copy, Debug)]
pub(super) enum Answered {
    /// Its own lookup found it: a hit, or a stale hit.
    Lookup,
    /// The near tier had it, fresh.
    Near,
    /// Another request's exchange for the same URL produced it.
    Collapsed(Forward),
    /// The origin's 304 to this request's revalidation refreshed it.
    Revalidated(Forward),
    /// It stands in, stale, for an origin that failed.
    StaleIfError,
    /// It stands in, stale, for an origin that could not be reached.
    StaleIfUnreachable,
}

/// How an answer from an entry is counted in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Counted {
    /// A hit (or stale hit): the request's one outcome.
    Hit,
    /// Served from the cache after the request was counted as a revalidation: a hit in
    /// the snapshot, but no second outcome in `tower_memcache_requests_total`.
    AfterRevalidation,
    /// The layer's own background work: it answers nobody.
    Nobody,
}

impl Answered {
    pub(super) fn outcome(self, freshness: &Freshness) -> Outcome {
        // Only a stale answer says by how much (a fresh hit, the common case, skips it).
        let stale_for = || freshness.staleness().as_secs();
        match self {
            Self::Near => Outcome::NearHit,
            Self::Lookup if freshness.is_fresh() => Outcome::Hit,
            Self::Lookup => Outcome::StaleHit {
                stale_for: stale_for(),
                detail: None,
            },
            Self::StaleIfError => Outcome::StaleHit {
                stale_for: stale_for(),
                detail: Some(Detail::StaleIfError),
            },
            Self::StaleIfUnreachable => Outcome::StaleHit {
                stale_for: stale_for(),
                detail: Some(Detail::OriginUnreachable),
            },
            Self::Collapsed(fwd) => Outcome::Forwarded {
                fwd,
                fwd_status: None,
                stored: false,
                collapsed: true,
                detail: None,
            },
            Self::Revalidated(fwd) => Outcome::Forwarded {
                fwd,
                fwd_status: Some(304),
                stored: false,
                collapsed: false,
                detail: None,
            },
        }
    }
}

impl<B: Backend> Shared<B> {
    pub(crate) fn new(config: Config<B>) -> Self {
        let status = config.cache_status.as_deref().and_then(CacheStatus::new);
        // `Cache-Status` is not among them: the members of caches nearer the origin are
        // stored with the response, and ours follows them on every answer.
        let own_fields = [config.lifetime_header.clone(), config.tag_header.clone()]
            .into_iter()
            .flatten()
            .collect();
        let storage = config.storage();
        Self {
            config,
            storage,
            status,
            own_fields,
        }
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// Says what the cache did in `Cache-Status` (when the layer sends it), after the
    /// members of the caches nearer the origin (RFC 9211 §2: "the last member represents
    /// the cache closest to the user", and "caches SHOULD preserve the existing field
    /// value"). Members that do not parse as a Structured List are dropped: appended to,
    /// they would make ours unreadable too.
    pub(super) fn set_status<T>(&self, response: &mut Response<T>, outcome: Outcome) {
        let Some(value) = self
            .status
            .as_ref()
            .and_then(|status| status.value(outcome))
        else {
            return;
        };
        match response.headers_mut().entry(CACHE_STATUS) {
            http::header::Entry::Vacant(slot) => {
                slot.insert(value);
            }
            http::header::Entry::Occupied(mut slot) => {
                let joined = status::appended(slot.iter(), &value);
                slot.insert(joined.unwrap_or(value));
            }
        }
    }

    /// What to do with a request: `None` to bypass the cache.
    pub(super) fn plan<T>(&self, request: &Request<T>) -> Option<Plan> {
        if !Policy::is_cacheable_method(request.method()) {
            return None;
        }
        if let Some(reason) = Policy::unkeyed_request_input(request.headers()) {
            tracing::debug!(
                reason,
                "request carries input the key cannot hold; cache bypassed"
            );
            return None;
        }
        // Rules match the path the key holds (and `MatchedPath` names): a `no_cache` rule
        // for `/account` must hold for the router nested there, which sees `/me`. Rules
        // written for that stripped path still hold too: in a nested router the stricter
        // reading wins (no caching, else the shorter lifetime).
        let Some(target) = keyed_target(request) else {
            tracing::debug!(
                path = request.uri().path(),
                "target rewritten after routing; cache bypassed"
            );
            return None;
        };
        let pattern = matched_path(request);
        let mut lifetime = self.policy().route_lifetime(target.path(), pattern)?;
        if !std::ptr::eq(target, request.uri()) && target.path() != request.uri().path() {
            let stripped = self
                .policy()
                .route_lifetime(request.uri().path(), pattern)?;
            lifetime = lifetime.min(stripped);
        }
        let head = RequestHead {
            method: request.method(),
            uri: target,
            headers: request.headers(),
            extensions: request.extensions(),
        };
        let canonical = match self.config.canonical.request_key(&head) {
            KeyOutcome::Key(canonical) => canonical,
            KeyOutcome::Declined => return None,
            KeyOutcome::Invalid(InvalidTarget::SchemeMismatch) => {
                warn_scheme_mismatch_once(request.uri(), &self.config.canonical.default_scheme);
                return None;
            }
            KeyOutcome::Invalid(invalid) => {
                tracing::debug!(reason = %invalid, "request target cannot be keyed; cache bypassed");
                return None;
            }
        };
        Some(Plan {
            key: self.storage.primary_key(&canonical),
            canonical,
            lifetime,
            request_cc: CacheControl::parse_request(request.headers()),
            from_cache: !has_origin_preconditions(request.headers()),
            arrived: self.config.flights.epoch(),
        })
    }

    /// Answers from an entry, counted as a hit: the stored response, or a 304 when the
    /// client's own conditions hold (RFC 9110 §13.2.2). `freshness` is the entry's now, as
    /// the caller decided on it.
    pub(super) fn answer<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: &HeaderMap,
        is_head: bool,
        answered: Answered,
    ) -> Response<ResponseBody<ResBody>> {
        let counted = Counted::Hit;
        self.answer_counted(
            entry,
            freshness,
            request_headers,
            is_head,
            answered,
            counted,
        )
    }

    /// [`answer`](Self::answer) for a request that is done with: its field map, emptied,
    /// holds the response's fields: hyper hands each request the map of the previous
    /// response on its connection, so a hit then allocates no map of its own (over a KiB).
    pub(super) fn answer_taking<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: HeaderMap,
        is_head: bool,
        answered: Answered,
    ) -> Response<ResponseBody<ResBody>> {
        let fields = Cow::Owned(request_headers);
        self.answer_from(entry, freshness, fields, is_head, answered, Counted::Hit)
    }

    /// [`answer`](Self::answer), counted as `counted` says.
    pub(super) fn answer_counted<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: &HeaderMap,
        is_head: bool,
        answered: Answered,
        counted: Counted,
    ) -> Response<ResponseBody<ResBody>> {
        let fields = Cow::Borrowed(request_headers);
        self.answer_from(entry, freshness, fields, is_head, answered, counted)
    }

    fn answer_from<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        fields: Cow<'_, HeaderMap>,
        is_head: bool,
        answered: Answered,
        counted: Counted,
    ) -> Response<ResponseBody<ResBody>> {
        let meta = &entry.meta;
        let request_headers: &HeaderMap = &fields;
        // Only a request that may be answered 304 needs the stored headers as a map.
        let stored_headers = (meta.status == 200 && may_be_not_modified(request_headers))
            .then(|| header_map(meta))
            .filter(|map| not_modified(request_headers, map, stored::received_at(meta)));
        // Only a range request's fields are read once the response is built; otherwise an
        // owned map, emptied, holds the response's.
        let range_request = request_headers.contains_key(http::header::RANGE);
        let (map, fields) = match fields {
            Cow::Owned(mut map) if !range_request => {
                map.clear();
                (map, None)
            }
            fields => (HeaderMap::new(), Some(fields)),
        };
        let readers = match answered {
            Answered::Near => stored::Readers::Threads,
            _ => stored::Readers::One,
        };
        let mut response = stored::response(
            entry,
            is_head,
            stored_headers.as_ref(),
            freshness.age,
            readers,
            map,
        );
        // Built from the cache, not passed through from the origin: a range miss's whole
        // fill starts only for the origin's own 206. Only a range request can start one,
        // so only its answer is marked (a first extension allocates; a hit should not).
        if range_request {
            response.extensions_mut().insert(FromCache);
        }
        // A response the origin has just validated (its 304) is not served stale, however
        // short its lifetime (`max-age=0`, a stored `no-cache`).
        let stale = !freshness.is_fresh() && !matches!(answered, Answered::Revalidated(_));
        // §13.2.2: a `Range` applies once the other preconditions let the 200 through.
        let applies = range_request && !is_head && stored_headers.is_none() && meta.status == 200;
        let ranged = match fields {
            Some(fields) if applies => range::apply(&mut response, entry, &fields),
            _ => None,
        };
        self.set_status(&mut response, answered.outcome(freshness));
        let sent = if is_head || stored_headers.is_some() {
            0
        } else {
            ranged.unwrap_or(entry.body.len())
        };
        match counted {
            Counted::Hit => self.config.stats.record_hit(sent, stale),
            Counted::AfterRevalidation => self.config.stats.record_served(sent, stale),
            Counted::Nobody => {}
        }
        tracing::debug!(
            status = meta.status,
            bytes = sent,
            stale,
            "served from cache"
        );
        response
    }

    /// The freshness of an entry published by another request, if it may answer this one
    /// now. `validated`: its response was fetched after this request arrived, a validation
    /// made since, which satisfies the request's own `no-cache` and `max-age` (RFC 9111
    /// §5.2.1.1, §5.2.1.4); `min-fresh` and the response's freshness still rule, and so
    /// do the response's own `no-cache` or `must-revalidate`: those ask for each request
    /// to be forwarded (§5.2.2.4), so that the origin may judge it (a paywall answering
    /// each reader's cookie). Without it, a flood of `Pragma: no-cache` requests reached
    /// the origin once per request.
    pub(super) fn usable_now(
        &self,
        entry: &Entry,
        plan: &Plan,
        request_headers: &HeaderMap,
        validated: bool,
    ) -> Option<Freshness> {
        let meta = &entry.meta;
        if !stored::selects(meta, &plan.canonical, request_headers) {
            return None;
        }
        let freshness = stored::freshness(meta, now_ms());
        let usable = matches!(
            freshness.reuse(&plan.request_cc),
            Reuse::Fresh | Reuse::StaleAccepted
        ) || validated && {
            let mut relaxed = plan.request_cc.clone();
            relaxed.no_cache = false;
            relaxed.max_age = None;
            freshness.reuse(&relaxed) == Reuse::Fresh
        };
        usable.then_some(freshness)
    }

    /// The response's own lifetime (extension or header, the header removed) or the
    /// route's, and whether the handler chose it.
    pub(super) fn response_lifetime<T>(
        &self,
        response: &mut Response<T>,
        route: Duration,
    ) -> (Duration, bool) {
        let mut lifetime = (route, false);
        if let Some(name) = &self.config.lifetime_header {
            if response.headers().contains_key(name) {
                // Clamped like delta-seconds, so no lifetime overflows a time sum. Like an
                // invalid `max-age` (RFC 9111 §4.2.1), a value that is no number of seconds
                // (`0.5`, `-1`, `30s`) means stale at once: ignored, the route's lifetime
                // (an hour by default) outlived what the handler asked. Of several values
                // (lines or list members) the smallest rules, as for `max-age`.
                let secs = response
                    .headers()
                    .get_all(name)
                    .iter()
                    .flat_map(|value| value.as_bytes().split(|b| *b == b','))
                    .map(<[u8]>::trim_ascii)
                    .filter(|member| !member.is_empty())
                    .map(|member| {
                        std::str::from_utf8(member)
                            .ok()
                            .and_then(parse_delta_seconds)
                            .unwrap_or_else(|| {
                                tracing::debug!(header = %name, "lifetime header is no number of seconds; stale at once");
                                0
                            })
                    })
                    .min()
                    .unwrap_or(0);
                response.headers_mut().remove(name);
                lifetime = (Duration::from_secs(secs), true);
            }
        }
        if let Some(CacheLifetime(chosen)) = response.extensions_mut().remove::<CacheLifetime>() {
            lifetime = (chosen, true);
        }
        lifetime
    }

    /// Removes the fields the layer consumes (tag and lifetime headers) from a response
    /// passed on without being stored: they are instructions to the layer, never sent on.
    pub(super) fn drop_own_fields<T>(&self, response: &mut Response<T>) {
        for name in &self.own_fields {
            response.headers_mut().remove(name);
        }
    }

    /// Removes the tag header (it is never sent on) and returns its tags; `None` when they
    /// cannot all be kept (too many, too long, not UTF-8): a purge of one left out would
    /// not reach the entry, so the response must not be stored.
    pub(super) fn take_tags<T>(&self, response: &mut Response<T>) -> Option<Vec<String>> {
        let Some(name) = &self.config.tag_header else {
            return Some(Vec::new());
        };
        let values: Option<Vec<&str>> = response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .collect();
        let tags = values.and_then(parse_tags);
        response.headers_mut().remove(name);
        tags
    }
    /// The names of the selecting request headers: the response's `Vary` plus the
    /// configured key headers, sorted, once each.
    pub(super) fn selecting_names(&self, response_headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = vary_names(response_headers).collect();
        names.extend(
            self.config
                .key_headers
                .iter()
                .map(|n| n.as_str().to_string()),
        );
        names.sort();
        names.dedup();
        names
    }

    /// The selecting request headers with this request's normalised values.
    pub(super) fn vary_values(
        &self,
        request_headers: &HeaderMap,
        response_headers: &HeaderMap,
    ) -> Vec<(String, Option<String>)> {
        self.selecting_names(response_headers)
            .into_iter()
            .map(|name| {
                let value = normalized_header(request_headers, &name);
                (name, value)
            })
            .collect()
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
        // Counted in `coalesced` once, however many rounds it waits.
        let mut waited = false;
        // `inner` is a clone not polled ready, its readiness let go during a wait.
        let mut unready = false;
        let mut inner = inner;
        loop {
            let mut near_mark = None;
            if let (Some(near), true) = (shared.storage.near(), plan.from_cache) {
                let headers = request.headers();
                let (entry, basis) = match near.get(&plan.key, &plan.canonical, headers) {
                    Near::Current(entry) => (Some(entry), None),
                    Near::Lapsed(entry, basis) => (Some(entry), Some(basis)),
                    Near::Nothing => (None, None),
                };
                if let Some(entry) = entry {
                    let freshness = stored::freshness(&entry.meta, now_ms());
                    let fresh = freshness.reuse(&plan.request_cc) == Reuse::Fresh;
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
                        // A shared cookie stays out of the near tier: a layer of the same
                        // namespace that does not share cookies may read it (its memcached
                        // lookups refuse such an entry, see `Storage::decode`).
                        let keepable = !shared.policy().shares_set_cookie()
                            || !entry.meta.headers.iter().any(|(name, _)| sets_cookie(name));
                        if let Some((near, mark)) =
                            near_mark.filter(|_| keepable && freshness.is_fresh())
                        {
                            let mark = mark.since(found.vouched);
                            // One set of selecting headers: a request selects at most one of
                            // the variants kept, as it would in memcached.
                            match &found.index {
                                None => near.keep(&plan.key, entry, false, mark, found.basis),
                                Some(index) if index.name_sets.len() == 1 => {
                                    near.keep(&plan.key, entry, true, mark, found.basis);
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
                        // The refresh is for the entry, whole: a 206 would refresh nothing.
                        let mut request = request;
                        range::strip(request.headers_mut());
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
                let mut response = stored::gateway_timeout();
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
                Box::pin(shared.coordinate_idle(&ex, headers, retry, &mut waited, &mut idle));
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
            // the client gets the 200 a hit would give it).
            if range::abusive(request.headers()) {
                tracing::debug!(key = %ex.plan.key, "abusive or invalid Range not forwarded");
                range::strip(request.headers_mut());
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

#[cfg(feature = "axum")]
pub(super) fn matched_path<T>(request: &Request<T>) -> Option<&str> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
pub(super) fn matched_path<T>(_request: &Request<T>) -> Option<&str> {
    None
}

/// Says once per process that a request named another scheme than the layer's: a layer
/// behind TLS left at the default `http` sees every HTTP/2 request so (`:scheme https`),
/// and caches none of them; on a plain listener it is a client's doing, and one line is
/// all it gets.
fn warn_scheme_mismatch_once(uri: &http::Uri, default_scheme: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(scheme = ?uri.scheme_str(), "target names another scheme than the layer's; cache bypassed");
        return;
    }
    tracing::warn!(
        scheme = ?uri.scheme_str(),
        default_scheme,
        "a request names another scheme than the layer's default_scheme and is not cached \
         (further ones are logged at debug level); a layer serving TLS needs \
         MemcacheLayer::default_scheme(\"https\")"
    );
}

/// The target the client sent, which keys the request. axum's `Router::nest` hands a
/// nested router (and a layer on it) the path without its prefix, and keeps the whole
/// target as `OriginalUri`: keyed by the stripped path, `/v1/x` and `/v2/x` of two nested
/// routers sharing a layer shared the key of `/x`, one's page served for the other.
#[cfg(feature = "axum")]
pub(super) fn client_target<T>(request: &Request<T>) -> &http::Uri {
    request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or(request.uri(), |original| &original.0)
}

#[cfg(not(feature = "axum"))]
pub(super) fn client_target<T>(request: &Request<T>) -> &http::Uri {
    request.uri()
}

/// The target that keys a lookup: the client's ([`client_target`]), while the inner
/// service reads that target or the one `Router::nest` made of it (the same query, the
/// path less a prefix). `None` when the target was changed otherwise after axum's
/// `Router` took it (a route middleware outside the layer putting a cookie's locale in
/// the query, rewriting the path): the handler answers a target the client did not send,
/// and keyed by the client's, one client's answer was stored for every other; keyed by
/// the rewritten one, it was stored for clients who asked that target without the input
/// that made it.
#[cfg(feature = "axum")]
pub(super) fn keyed_target<T>(request: &Request<T>) -> Option<&http::Uri> {
    let original = client_target(request);
    let seen = request.uri();
    let nested_or_same = original.query() == seen.query()
        && (original.path().ends_with(seen.path()) && seen.path().starts_with('/')
            // `nest("/v1", ..)` hands `/v1` on as `/`.
            || seen.path() == "/");
    nested_or_same.then_some(original)
}

#[cfg(not(feature = "axum"))]
pub(super) fn keyed_target<T>(request: &Request<T>) -> Option<&http::Uri> {
    Some(request.uri())
}

#[cfg(test)]
mod tests {
    use http::header::{self, HeaderValue};

    use super::testing::{bare_entry, get, shared};
    use super::*;
    use crate::backend::MemoryBackend;

    #[test]
    fn an_answer_in_the_request_s_own_map_holds_the_response_s_fields_alone() {
        let shared = shared(&MemcacheLayer::new(MemoryBackend::new()));
        let mut entry = bare_entry();
        entry.meta.headers = vec![
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (header::ETAG, HeaderValue::from_static("\"v1\"")),
        ];
        let freshness = stored::freshness(&entry.meta, now_ms());
        let asks: [&[(&str, &str)]; 4] = [
            &[("accept", "*/*"), ("x-secret", "1"), ("age", "9")],
            &[("if-none-match", "\"v1\""), ("cookie", "a=b")],
            &[("range", "bytes=1-2"), ("x-secret", "1")],
            &[],
        ];
        for ask in asks {
            let mut request = get("/a");
            for (name, value) in ask {
                let value = HeaderValue::from_static(value);
                request.headers_mut().append(*name, value);
            }
            for is_head in [false, true] {
                let headers = request.headers();
                let fresh: Response<ResponseBody<()>> =
                    shared.answer(&entry, &freshness, headers, is_head, Answered::Near);
                let taking: Response<ResponseBody<()>> = shared.answer_taking(
                    &entry,
                    &freshness,
                    headers.clone(),
                    is_head,
                    Answered::Near,
                );
                assert_eq!(taking.status(), fresh.status(), "{ask:?}");
                assert_eq!(taking.headers(), fresh.headers(), "{ask:?}");
                assert!(!taking.headers().contains_key("x-secret"));
            }
        }
    }
}

/// Helpers for the lifecycle modules' unit tests: one layer's `Shared` over
/// `MemoryBackend`, and a request's `Exchange` after its lookup, without the service.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Request;

    use super::Shared;
    use crate::backend::MemoryBackend;
    use crate::cache::MemcacheLayer;
    use crate::cache::entry::{Entry, EntryMeta};
    use crate::cache::exchange::Exchange;
    use crate::cache::status::Forward;
    use crate::cache::storage::{Found, Lookup};
    use crate::cache::stored::now_ms;

    pub(crate) fn shared(layer: &MemcacheLayer<MemoryBackend>) -> Arc<Shared<MemoryBackend>> {
        Arc::new(Shared::new(layer.config().clone()))
    }

    pub(crate) fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    /// The request planned and looked up, as `handle` does before deciding.
    pub(crate) async fn exchange_for(
        shared: &Shared<MemoryBackend>,
        request: &Request<()>,
    ) -> Exchange {
        let plan = shared.plan(request).expect("a cacheable request");
        let found = match shared
            .storage
            .lookup(&plan.canonical, &plan.key, request.headers())
            .await
        {
            Lookup::Found(found) => found,
            Lookup::Unavailable => Found::default(),
        };
        Exchange {
            plan,
            found,
            fwd: Forward::UriMiss,
            detail: None,
            is_head: false,
        }
    }

    /// Stores `entry` for `request` as a fill would: a placeholder first, then the entry
    /// in its place.
    pub(crate) async fn put(shared: &Shared<MemoryBackend>, request: &Request<()>, entry: &Entry) {
        let ex = exchange_for(shared, request).await;
        let placed = shared
            .storage
            .place(
                &ex.plan.key,
                crate::cache::storage::unique(),
                std::time::SystemTime::now(),
            )
            .await;
        let crate::cache::storage::Placed::Mine(placeholder, _) = placed else {
            panic!("no placeholder placed")
        };
        let to = crate::cache::storage::Target {
            key: ex.plan.key.clone(),
            slot: crate::cache::storage::Slot::Placeholder {
                cas: 0,
                placeholder,
            },
            index: ex.found.index.clone(),
            generation: ex.found.generation,
            requested: std::time::SystemTime::now(),
        };
        let (stored, _) = shared.store(&to, &[], entry, Duration::from_secs(60)).await;
        assert_eq!(stored, crate::cache::storage::StoreOutcome::Stored);
    }

    /// What a lookup for `request` finds stored now.
    pub(crate) async fn stored_entry(
        shared: &Shared<MemoryBackend>,
        request: &Request<()>,
    ) -> Option<Arc<Entry>> {
        exchange_for(shared, request).await.found.entry
    }

    /// A fresh 200 entry for no URL in particular.
    pub(crate) fn bare_entry() -> Entry {
        entry_for(String::new(), &[])
    }

    /// A fresh 200 entry for `ex`'s URL, with `headers`.
    pub(crate) fn entry(ex: &Exchange, headers: &[(&'static str, &'static str)]) -> Entry {
        entry_for(ex.plan.canonical.clone(), headers)
    }

    fn entry_for(canonical_key: String, headers: &[(&'static str, &'static str)]) -> Entry {
        Entry {
            meta: EntryMeta {
                canonical_key,
                status: 200,
                headers: headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            http::HeaderName::from_static(n),
                            http::HeaderValue::from_static(v),
                        )
                    })
                    .collect(),
                vary: Vec::new(),
                stored_at_ms: now_ms(),
                initial_age_ms: 0,
                fresh_for_ms: Duration::from_secs(60).as_millis() as u64,
                stale_while_revalidate_ms: 0,
                stale_if_error_ms: 0,
                forbids_stale: false,
                no_cache: false,
                authenticated: false,
                generation: 0,
                tags: Vec::new(),
            },
            body: Bytes::from_static(b"stored"),
        }
    }
}
