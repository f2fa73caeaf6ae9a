//! [`Memcache`], the service: lookup, then a cached response, a revalidation, or the inner
//! service's response on its way into the cache.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tower::Service;

use super::body::{ResponseBody, Tee};
use super::future::ResponseFuture;
use super::key::{KeyOutcome, RequestHead, RequestTarget};
use super::layer::{Config, MemcacheLayer};
use super::lease::{self, Acquired, Lease};
use super::single_flight::{self, Flight, Leader};
use super::status::{CACHE_STATUS, CacheStatus, Detail, Forward, Outcome};
use super::storage::{Found, Lookup, Storage, parse_tags};
use super::stored::{self, Admission, backend_ttl, header_map, now_ms};
use super::{CacheLifetime, OriginUnreachable};
use crate::backend::Backend;
use crate::codec::entry::{Entry, EntryMeta, VariantIndex};
use crate::policy::cache_control::parse_delta_seconds;
use crate::policy::conditional::{
    add_validators, has_origin_preconditions, has_preconditions, not_modified, same_representation,
};
use crate::policy::freshness::{Freshness, Reuse};
use crate::policy::{CacheControl, NotStorable, Policy, normalized_header, vary_names};
use crate::stats::CacheStats;

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

/// What the layer knows once, for every request.
pub(crate) struct Shared<B> {
    pub(crate) config: Config<B>,
    pub(crate) storage: Storage<B>,
    status: Option<CacheStatus>,
    /// Response fields the layer consumes and never stores or sends on.
    own_fields: Vec<HeaderName>,
}

/// What the layer does with one cacheable request.
struct Plan {
    canonical: String,
    key: String,
    /// The route's lifetime.
    lifetime: Duration,
    request_cc: CacheControl,
    /// `false` for requests with preconditions only the origin can evaluate: they are never
    /// answered from the cache, neither from a lookup nor from another request's response.
    from_cache: bool,
}

/// Held by the request that refills a URL: its followers in this process and its lease
/// across processes are released when it is dropped (after the store lands).
struct Filler<B: Backend> {
    leader: Option<Leader>,
    lease: Option<Lease<B>>,
}

impl<B: Backend> Filler<B> {
    fn none() -> Self {
        Self {
            leader: None,
            lease: None,
        }
    }

    fn publish(&self, entry: Option<Arc<Entry>>) {
        if let Some(leader) = &self.leader {
            leader.publish(entry);
        }
    }

    /// Nothing will be stored: followers go on their own, the lease is gone when this
    /// returns.
    async fn release(self) {
        self.publish(None);
        if let Some(lease) = self.lease {
            lease.release().await;
        }
    }
}

/// Where an entry for a request goes: its primary key, and what the lookup learnt about
/// the URL's variant index and the namespace generation.
struct Destination {
    key: String,
    index: Option<VariantIndex>,
    generation: Option<u64>,
}

impl Destination {
    fn new(plan: &Plan, found: &Found) -> Self {
        Self {
            key: plan.key.clone(),
            index: found.index.clone(),
            generation: found.generation,
        }
    }
}

/// Why a response, or a stored response refreshed by one, does not become an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// A HEAD response has no body to store.
    Head,
    /// The backend is marked down: the write would fail.
    BackendUnavailable,
    /// The storing rules refuse it.
    Policy(NotStorable),
    /// A refresh names other selecting request headers than the stored response, whose
    /// values for them are unknown.
    VaryChanged,
    /// A response stored for an authenticated request lost the directives that let a
    /// shared cache keep it (RFC 9111 §3.5).
    NoLongerShareable,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::Head => "a HEAD response has no body to store",
            Self::BackendUnavailable => "backend unavailable",
            Self::VaryChanged => "the refresh changes Vary",
            Self::NoLongerShareable => "authenticated and no longer shareable",
            Self::Policy(NotStorable::Status) => "status not stored",
            Self::Policy(NotStorable::NoStore) => "no-store",
            Self::Policy(NotStorable::Private) => "private",
            Self::Policy(NotStorable::NoCache) => "no-cache without a validator",
            Self::Policy(NotStorable::SetCookie) => "sets a cookie",
            Self::Policy(NotStorable::Authorization) => "authenticated and not shareable",
            Self::Policy(NotStorable::VaryStar) => "Vary: *",
            Self::Policy(NotStorable::Partial) => "partial content",
            Self::Policy(NotStorable::ZeroLifetime) => {
                "nothing to reuse: no freshness, stale window or validator"
            }
        }
    }

    /// Whether a refused refresh leaves the stored entry unusable: the response now says
    /// it must not be stored. A refusal that comes from the refreshing request alone (its
    /// own `no-store`, its credentials, a backend that is down) leaves the entry as it was,
    /// so no client can evict what others use just by asking.
    fn makes_entry_unusable(self, request_cc: &CacheControl) -> bool {
        match self {
            Self::Head | Self::BackendUnavailable => false,
            Self::Policy(NotStorable::NoStore) => !request_cc.no_store,
            Self::Policy(NotStorable::Authorization) => false,
            Self::Policy(_) | Self::VaryChanged | Self::NoLongerShareable => true,
        }
    }
}

/// How a request comes to be answered from a stored response.
#[derive(Clone, Copy, Debug)]
enum Answered {
    /// Its own lookup found it: a hit, or a stale hit.
    Lookup,
    /// Another request's exchange for the same URL produced it.
    Collapsed(Forward),
    /// The origin's 304 to this request's revalidation refreshed it.
    Revalidated(Forward),
    /// It stands in, stale, for an origin that failed.
    StaleIfError,
}

impl Answered {
    fn outcome(self, freshness: &Freshness) -> Outcome {
        let stale_for = freshness.staleness().as_secs();
        match self {
            Self::Lookup if freshness.is_fresh() => Outcome::Hit,
            Self::Lookup => Outcome::StaleHit {
                stale_for,
                detail: None,
            },
            Self::StaleIfError => Outcome::StaleHit {
                stale_for,
                detail: Some(Detail::StaleIfError),
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
        let own_fields = [
            Some(CACHE_STATUS),
            config.lifetime_header.clone(),
            config.tag_header.clone(),
        ]
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

    fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// Says what the cache did in `Cache-Status` (when the layer sends it).
    fn set_status<T>(&self, response: &mut Response<T>, outcome: Outcome) {
        if let Some(value) = self
            .status
            .as_ref()
            .and_then(|status| status.value(outcome))
        {
            response.headers_mut().insert(CACHE_STATUS, value);
        }
    }

    /// What to do with a request: `None` to bypass the cache.
    fn plan<T>(&self, request: &Request<T>) -> Option<Plan> {
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
        let lifetime = self
            .policy()
            .route_lifetime(request.uri().path(), matched_path(request))?;
        let head = RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        };
        let canonical = match self.config.canonical.key(&head) {
            KeyOutcome::Key(canonical) => canonical,
            KeyOutcome::Declined => return None,
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
        })
    }

    /// Answers from an entry: the stored response, or a 304 when the client's own
    /// conditions hold (RFC 9110 §13.2.2).
    /// `freshness` is the entry's now, as the caller decided on it.
    fn answer<ResBody>(
        &self,
        entry: &Entry,
        freshness: &Freshness,
        request_headers: &HeaderMap,
        is_head: bool,
        answered: Answered,
    ) -> Response<ResponseBody<ResBody>> {
        let meta = &entry.meta;
        // Only a request with preconditions needs the stored headers as a map.
        let stored_headers = (meta.status == 200 && has_preconditions(request_headers))
            .then(|| header_map(meta))
            .filter(|stored| not_modified(request_headers, stored));
        let mut response = stored::response(entry, is_head, stored_headers.as_ref(), freshness.age);
        let stale = !freshness.is_fresh();
        self.set_status(&mut response, answered.outcome(freshness));
        let sent = if is_head || stored_headers.is_some() {
            0
        } else {
            entry.body.len()
        };
        self.config.stats.record_hit(sent);
        if stale {
            self.config.stats.record_stale();
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
    /// now.
    fn usable_now(
        &self,
        entry: &Entry,
        plan: &Plan,
        request_headers: &HeaderMap,
    ) -> Option<Freshness> {
        let meta = &entry.meta;
        let freshness = stored::freshness(meta, now_ms());
        (stored::selects(meta, &plan.canonical, request_headers)
            && matches!(
                freshness.reuse(&plan.request_cc),
                Reuse::Fresh | Reuse::StaleAccepted
            ))
        .then_some(freshness)
    }

    /// The response's own lifetime (extension or header, the header removed) or the
    /// route's, and whether the handler chose it.
    fn response_lifetime<T>(
        &self,
        response: &mut Response<T>,
        route: Duration,
    ) -> (Duration, bool) {
        let mut lifetime = (route, false);
        if let Some(name) = &self.config.lifetime_header {
            if let Some(value) = response.headers_mut().remove(name) {
                // Clamped like delta-seconds, so no lifetime overflows a time sum.
                match value
                    .to_str()
                    .ok()
                    .and_then(|v| parse_delta_seconds(v.trim()))
                {
                    Some(secs) => lifetime = (Duration::from_secs(secs), true),
                    None => tracing::debug!(header = %name, "unparseable lifetime header ignored"),
                }
            }
        }
        if let Some(CacheLifetime(chosen)) = response.extensions_mut().remove::<CacheLifetime>() {
            lifetime = (chosen, true);
        }
        lifetime
    }

    /// Removes the tag header (it is never sent on) and returns its tags.
    fn take_tags<T>(&self, response: &mut Response<T>) -> Vec<String> {
        let Some(name) = &self.config.tag_header else {
            return Vec::new();
        };
        let tags = parse_tags(
            response
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        response.headers_mut().remove(name);
        tags
    }

    fn admission(
        &self,
        chosen: Duration,
        handler_override: bool,
        request_time: SystemTime,
        authenticated: bool,
    ) -> Admission<'_> {
        Admission {
            policy: self.policy(),
            chosen,
            handler_override,
            own_fields: &self.own_fields,
            request_time,
            response_time: SystemTime::now(),
            authenticated,
        }
    }

    /// The selecting request headers: the response's `Vary` plus the configured key
    /// headers, with this request's normalised values.
    fn vary_values(
        &self,
        request_headers: &HeaderMap,
        response_headers: &HeaderMap,
    ) -> Vec<(String, Option<String>)> {
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
            .into_iter()
            .map(|name| {
                let value = normalized_header(request_headers, &name);
                (name, value)
            })
            .collect()
    }

    /// Decides whether the inner service's response is stored, and sets it on its way.
    #[allow(clippy::too_many_arguments)]
    fn on_response<ResBody>(
        self: &Arc<Self>,
        plan: &Plan,
        found: &Found,
        request_headers: &HeaderMap,
        request_time: SystemTime,
        mut response: Response<ResBody>,
        filler: Filler<B>,
        is_head: bool,
        fwd: Forward,
        detail: Option<Detail>,
    ) -> (Response<ResponseBody<ResBody>>, Option<Filler<B>>)
    where
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let tags = self.take_tags(&mut response);
        let (chosen, handler_override) = self.response_lifetime(&mut response, plan.lifetime);
        let authenticated = request_headers.contains_key(header::AUTHORIZATION);
        let admission = self.admission(chosen, handler_override, request_time, authenticated);
        let decision = if is_head {
            Err(Refusal::Head)
        } else {
            let vary = self.vary_values(request_headers, response.headers());
            self.admit(
                plan,
                request_headers,
                response.status(),
                response.headers(),
                vary,
                &admission,
            )
        };
        let (tee, unused) = match decision {
            Ok((meta, ttl)) => {
                let on_complete =
                    self.store_on_complete(Destination::new(plan, found), meta, tags, ttl, filler);
                let tee = Tee::new(
                    self.config.max_entry_size,
                    &response.body().size_hint(),
                    on_complete,
                );
                (tee, None)
            }
            Err(refusal) => {
                tracing::debug!(key = %plan.key, status = %response.status(), reason = refusal.reason(), "response not stored");
                (None, Some(filler))
            }
        };
        let outcome = Outcome::Forwarded {
            fwd,
            fwd_status: None,
            stored: tee.is_some(),
            collapsed: false,
            detail,
        };
        self.set_status(&mut response, outcome);
        (
            response.map(|body| ResponseBody::teeing(body, tee, &self.config.fill_budget)),
            unused,
        )
    }

    /// The admission gate: every write of an entry passes here, judged on the header set
    /// it would store (a first response, or a stored one merged with a 304 or HEAD
    /// response). Admitted, the entry's metadata and backend lifetime.
    fn admit(
        &self,
        plan: &Plan,
        request_headers: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        vary: Vec<(String, Option<String>)>,
        admission: &Admission<'_>,
    ) -> Result<(EntryMeta, Duration), Refusal> {
        let routes_mode = self.policy().mode() == crate::policy::CacheMode::Routes;
        if admission.chosen.is_zero() && (admission.handler_override || routes_mode) {
            return Err(Refusal::Policy(NotStorable::ZeroLifetime));
        }
        if !self.config.backend.is_available(&plan.key) {
            return Err(Refusal::BackendUnavailable);
        }
        let cc = CacheControl::parse(headers);
        self.policy()
            .storable(request_headers, &plan.request_cc, status, headers, &cc)
            .map_err(Refusal::Policy)?;
        let meta = admission.meta(plan.canonical.clone(), status, headers, vary);
        let ttl = backend_ttl(&meta, self.config.keep_stale);
        if ttl.is_zero() {
            return Err(Refusal::Policy(NotStorable::ZeroLifetime));
        }
        Ok((meta, ttl))
    }

    /// What happens when a stored body is complete: followers get the entry at once, and
    /// the backend gets it in the background.
    fn store_on_complete(
        self: &Arc<Self>,
        to: Destination,
        meta: EntryMeta,
        tags: Vec<String>,
        ttl: Duration,
        filler: Filler<B>,
    ) -> Box<dyn FnOnce(Bytes) + Send> {
        let shared = Arc::clone(self);
        Box::new(move |body: Bytes| {
            let entry = Arc::new(Entry { meta, body });
            shared.store_in_background(to, tags, entry, ttl, filler);
        })
    }

    /// §4.3.4, §4.3.5: `entry` refreshed by a 304 or a HEAD response (its fields, its
    /// lifetime, new tags if it names any). The merged response passes the admission gate
    /// like a first store: admitted, it is published and put back in the background;
    /// refused for what the response now says (`private`, `no-store`, a new `Vary`, …)
    /// the stored entry is removed; refused for what this request says (its own
    /// `no-store`, `Authorization`) the stored entry is left as it was. Returns the
    /// refreshed entry, to answer this request with.
    #[allow(clippy::too_many_arguments)]
    async fn refresh<T>(
        self: &Arc<Self>,
        plan: &Plan,
        found: &Found,
        entry: &Entry,
        request_headers: &HeaderMap,
        response: &mut Response<T>,
        request_time: SystemTime,
        filler: Filler<B>,
    ) -> Arc<Entry> {
        let tags = self.take_tags(response);
        let (chosen, handler_override) = self.response_lifetime(response, plan.lifetime);
        // Only the stored response's own history marks it authenticated: a refreshing
        // request's credentials (which anyone can make up) must not change how long
        // everyone else may reuse it.
        let admission = self.admission(
            chosen,
            handler_override,
            request_time,
            entry.meta.authenticated,
        );
        let merged = admission.merged_headers(entry, response.headers());
        let refreshed = Arc::new(admission.refreshed(entry, &merged));
        let status = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
        let vary = self.vary_values(request_headers, &merged);
        let same_selection = vary.len() == entry.meta.vary.len()
            && vary
                .iter()
                .zip(&entry.meta.vary)
                .all(|((new, _), (old, _))| new == old);
        let verdict = if request_headers.contains_key(header::AUTHORIZATION)
            && !entry.meta.authenticated
        {
            // The merged response would answer an authenticated request now; leave the
            // stored one as it was.
            Err(Refusal::Policy(NotStorable::Authorization))
        } else if entry.meta.authenticated && !CacheControl::parse(&merged).allows_authenticated() {
            // §3.5 for an entry first stored for an authenticated request, whoever
            // refreshes it now.
            Err(Refusal::NoLongerShareable)
        } else if same_selection {
            self.admit(
                plan,
                request_headers,
                status,
                &merged,
                entry.meta.vary.clone(),
                &admission,
            )
        } else {
            Err(Refusal::VaryChanged)
        };
        match verdict {
            Ok((_, ttl)) => {
                let to = Destination::new(plan, found);
                self.store_in_background(to, tags, Arc::clone(&refreshed), ttl, filler);
            }
            Err(refusal) => {
                tracing::debug!(key = %plan.key, reason = refusal.reason(), "refreshed response not stored");
                if refusal.makes_entry_unusable(&plan.request_cc) {
                    if let Err(err) = self.storage.invalidate(&plan.key).await {
                        tracing::debug!(key = %plan.key, error = %err, "unstorable entry not removed");
                    }
                }
                filler.release().await;
            }
        }
        refreshed
    }

    /// Publishes `entry` to this process's followers and writes it to the backend in the
    /// background; `filler` is released once it is there. `tags` are resolved to their
    /// generations first (none: the entry keeps the tags it has).
    fn store_in_background(
        self: &Arc<Self>,
        to: Destination,
        tags: Vec<String>,
        entry: Arc<Entry>,
        ttl: Duration,
        filler: Filler<B>,
    ) {
        filler.publish(Some(Arc::clone(&entry)));
        // A body polled outside a tokio runtime cannot be stored in the background.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime to store the entry; skipped");
            return;
        };
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            shared.store(&to, &tags, &entry, ttl).await;
            // Until the entry is in the backend, requests for the key join this flight and
            // get the entry from it instead of missing.
            drop(filler);
        });
    }

    async fn store(&self, to: &Destination, tags: &[String], entry: &Entry, ttl: Duration) {
        let stats = &self.config.stats;
        let storage = &self.storage;
        let Some(generation) = storage.generation(to.generation).await else {
            tracing::debug!(key = %to.key, "namespace generation unavailable; not stored");
            stats.record_store_failure();
            return;
        };
        let mut meta = entry.meta.clone();
        meta.generation = generation;
        if !tags.is_empty() {
            let Some(tags) = storage.tag_generations(tags).await else {
                tracing::debug!(key = %to.key, "tag generations unavailable; not stored");
                stats.record_store_failure();
                return;
            };
            meta.tags = tags;
        }
        let key = &to.key;
        if storage
            .store(key, &meta, &entry.body, to.index.as_ref(), ttl)
            .await
        {
            stats.record_store();
            tracing::debug!(%key, bytes = entry.body.len(), ?ttl, "response stored");
        } else {
            stats.record_store_failure();
        }
    }

    /// RFC 9111 §4.4: a successful response to an unsafe method invalidates the target
    /// URI and the same-origin URIs in `Location` and `Content-Location`.
    async fn invalidate_after(
        &self,
        target: &Uri,
        request_headers: &HeaderMap,
        extensions: &http::Extensions,
        locations: Vec<HeaderValue>,
    ) {
        let mut uris = vec![target.clone()];
        uris.extend(locations.iter().filter_map(|value| {
            same_origin(
                target,
                request_headers,
                value,
                &self.config.canonical.default_scheme,
            )
        }));
        for uri in uris {
            let Some(canonical) =
                self.config
                    .canonical
                    .key_for_get(&uri, request_headers, extensions)
            else {
                continue;
            };
            let key = self.storage.primary_key(&canonical);
            match self.storage.invalidate(&key).await {
                Ok(()) => tracing::debug!(%canonical, "invalidated by an unsafe method"),
                Err(err) => tracing::debug!(%canonical, error = %err, "invalidation failed"),
            }
        }
    }
}

/// A `Location` / `Content-Location` value as a URI on the request's origin, if it is one.
/// Both origins are validated authorities: a response cannot invalidate another site's
/// entries by naming it, however its Host was spelled.
fn same_origin(
    target: &Uri,
    request_headers: &HeaderMap,
    value: &HeaderValue,
    default_scheme: &str,
) -> Option<Uri> {
    let uri: Uri = value.to_str().ok()?.trim().parse().ok()?;
    let own = RequestTarget::from_parts(default_scheme, target, request_headers).ok()?;
    match uri.authority() {
        // An absolute path: on the target's origin.
        None if uri.path().starts_with('/') => {
            if own.authority().is_empty() {
                return Some(uri);
            }
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            format!("{own}{path}").parse().ok()
        }
        None => None,
        Some(_) => {
            let theirs = RequestTarget::from_parts(default_scheme, &uri, &HeaderMap::new()).ok()?;
            (theirs == own).then_some(uri)
        }
    }
}

async fn handle<S, B, ReqBody, ResBody>(
    shared: Arc<Shared<B>>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let Some(plan) = shared.plan(&request) else {
        // Boxed, like the other paths that are not a hit: `handle`'s own future stays
        // small, and a hit allocates and moves only what a hit needs.
        return Box::pin(bypass(&shared, inner, request)).await;
    };
    let is_head = request.method() == Method::HEAD;
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
    let mut fwd = Forward::UriMiss;
    if let Some(entry) = &found.entry {
        let freshness = stored::freshness(&entry.meta, now_ms());
        match freshness.reuse(&plan.request_cc) {
            Reuse::Fresh | Reuse::StaleAccepted => {
                let headers = request.headers();
                return Ok(shared.answer(entry, &freshness, headers, is_head, Answered::Lookup));
            }
            Reuse::StaleWhileRevalidate => {
                let headers = request.headers();
                let response = shared.answer(entry, &freshness, headers, is_head, Answered::Lookup);
                revalidate_in_background(&shared, inner, request, plan, found);
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
        let mut response = stored::gateway_timeout();
        let outcome = Outcome::Generated {
            detail: Detail::OnlyIfCached,
        };
        shared.set_status(&mut response, outcome);
        return Ok(response);
    }
    // Coordinate with other requests for the key: in this process, then across processes.
    let mut filler = Filler::none();
    if !is_head && plan.from_cache {
        match shared
            .config
            .flights
            .join(&plan.key, shared.config.max_coalesced)
        {
            Flight::Leader(leader) => filler.leader = Some(leader),
            Flight::Follower(rx) => {
                shared.config.stats.record_coalesced();
                tracing::debug!(key = %plan.key, "waiting for the response of a request under way");
                let entry = single_flight::wait(rx, shared.config.coalesce_timeout).await;
                if let Some((entry, freshness)) = entry.and_then(|entry| {
                    let freshness = shared.usable_now(&entry, &plan, request.headers())?;
                    Some((entry, freshness))
                }) {
                    let headers = request.headers();
                    let answered = Answered::Collapsed(fwd);
                    return Ok(shared.answer(&entry, &freshness, headers, is_head, answered));
                }
                tracing::debug!(key = %plan.key, "no usable response from the request waited for (timed out, failed or not stored); going on alone");
            }
            Flight::Alone => {}
        }
        if filler.leader.is_some() && detail.is_none() {
            if let Some(ttl) = shared.config.lease {
                match lease::acquire(&shared.storage, &plan.canonical, ttl).await {
                    Acquired::Mine(lease) => {
                        tracing::debug!(key = %plan.key, "lease taken: this request refills the entry");
                        filler.lease = Some(lease);
                    }
                    Acquired::Elsewhere => {
                        tracing::debug!(key = %plan.key, "another process holds the lease; waiting for its entry");
                        if let Some((entry, freshness)) =
                            Box::pin(wait_for_other_process(&shared, &plan, request.headers()))
                                .await
                        {
                            filler.publish(Some(Arc::clone(&entry)));
                            return Ok(shared.answer(
                                &entry,
                                &freshness,
                                request.headers(),
                                is_head,
                                Answered::Collapsed(fwd),
                            ));
                        }
                        tracing::debug!(key = %plan.key, "no entry from the lease holder (released, or the wait ended); going to the inner service");
                    }
                    Acquired::Unknown => {}
                }
            }
        }
    }
    Box::pin(exchange(
        &shared, inner, request, &plan, &found, filler, fwd, detail,
    ))
    .await
}

/// Polls for the entry another process is refilling, for at most the lease wait, and
/// stops early when that process released its lease without storing anything.
async fn wait_for_other_process<B: Backend>(
    shared: &Shared<B>,
    plan: &Plan,
    request_headers: &HeaderMap,
) -> Option<(Arc<Entry>, Freshness)> {
    let now = tokio::time::Instant::now();
    // A configured wait too long to add is as good as forever: the lease's own lifetime
    // still ends the wait.
    let deadline = now
        .checked_add(shared.config.lease_wait)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
    loop {
        tokio::time::sleep(shared.config.lease_poll).await;
        // The lease before the entry: its holder releases it only once its entry is
        // stored, so a lease found gone means the lookup that follows sees that entry,
        // whereas a lookup read first could miss a store that lands just before the
        // release (and send this request to the origin as well).
        let released = !lease::held(&shared.storage, &plan.canonical).await;
        let lookup = shared
            .storage
            .lookup(&plan.canonical, &plan.key, request_headers)
            .await;
        if let Lookup::Found(Found {
            entry: Some(entry), ..
        }) = lookup
        {
            if let Some(freshness) = shared.usable_now(&entry, plan, request_headers) {
                return Some((entry, freshness));
            }
        }
        // Released with nothing stored: stop waiting, go to the origin.
        if released || tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Sends the request to the inner service (conditionally, when a stored response can be
/// revalidated) and turns its answer into the client's: a refreshed entry on 304, the
/// stale entry when the origin fails and that is allowed, or the new response on its way
/// into the cache.
#[allow(clippy::too_many_arguments)]
async fn exchange<S, B, ReqBody, ResBody>(
    shared: &Arc<Shared<B>>,
    mut inner: S,
    mut request: Request<ReqBody>,
    plan: &Plan,
    found: &Found,
    filler: Filler<B>,
    fwd: Forward,
    detail: Option<Detail>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: Backend,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let stats = &shared.config.stats;
    let is_head = request.method() == Method::HEAD;
    let request_headers = request.headers().clone();
    let stale = found.entry.clone();
    let stored_headers = stale.as_ref().map(|entry| header_map(&entry.meta));
    let ours = match &stored_headers {
        Some(stored) if !has_preconditions(&request_headers) => {
            add_validators(request.headers_mut(), stored)
        }
        _ => false,
    };
    if stale.is_some() {
        stats.record_revalidation();
    } else {
        stats.record_miss();
    }
    tracing::debug!(key = %plan.key, revalidating = stale.is_some(), conditional = ours, "calling the inner service");
    let request_time = SystemTime::now();
    let outcome = inner.call(request).await;
    let stale_fallback = |unreachable: bool| {
        let entry = stale.as_ref()?;
        let freshness = stored::freshness(&entry.meta, now_ms());
        if freshness.usable_on_error(&plan.request_cc) {
            return Some(shared.answer(
                entry,
                &freshness,
                &request_headers,
                is_head,
                Answered::StaleIfError,
            ));
        }
        if unreachable && freshness.forbids_stale {
            let mut response = stored::gateway_timeout();
            let outcome = Outcome::forwarded(Forward::Stale, Some(Detail::MustRevalidate));
            shared.set_status(&mut response, outcome);
            return Some(response);
        }
        None
    };
    let mut response = match outcome {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(key = %plan.key, "inner service failed");
            return match stale_fallback(true) {
                Some(response) => Ok(response),
                None => Err(err),
            };
        }
    };
    let unreachable = response.extensions().get::<OriginUnreachable>().is_some();
    let failed = unreachable || matches!(response.status().as_u16(), 500 | 502 | 503 | 504);
    if failed {
        if let Some(fallback) = stale_fallback(unreachable) {
            return Ok(fallback);
        }
        if stale.is_some() {
            // §4.3.3: a 5xx to a revalidation may be treated as no answer. It passes to
            // the client, and the stored response stays for later requests (and their
            // stale-if-error) instead of being replaced by an error page.
            tracing::debug!(key = %plan.key, status = %response.status(), "origin failed a revalidation; stored response kept");
            filler.release().await;
            shared.take_tags(&mut response);
            let mut passed = response.map(ResponseBody::passthrough);
            shared.set_status(&mut passed, Outcome::forwarded(fwd, detail));
            return Ok(passed);
        }
    }
    if let (Some(entry), Some(stored)) = (&stale, &stored_headers) {
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED
            && (ours || same_representation(response.headers(), stored))
        {
            // §4.3.4: the stored response is still good; refresh its headers and lifetime.
            let refreshed = shared
                .refresh(
                    plan,
                    found,
                    entry,
                    &request_headers,
                    &mut response,
                    request_time,
                    filler,
                )
                .await;
            tracing::debug!(key = %plan.key, "revalidated: 304 refreshed the stored response");
            let answered = Answered::Revalidated(fwd);
            if ours {
                let freshness = stored::freshness(&refreshed.meta, now_ms());
                let headers = &request_headers;
                let mut answer = shared.answer(&refreshed, &freshness, headers, is_head, answered);
                // The cookies the origin set in its 304 are this client's, never stored.
                for cookie in response.headers().get_all(header::SET_COOKIE) {
                    answer
                        .headers_mut()
                        .append(header::SET_COOKIE, cookie.clone());
                }
                return Ok(answer);
            }
            let mut passed = response.map(ResponseBody::passthrough);
            let freshness = stored::freshness(&refreshed.meta, now_ms());
            shared.set_status(&mut passed, answered.outcome(&freshness));
            return Ok(passed);
        }
        if is_head && status == StatusCode::OK {
            // §4.3.5: a HEAD response updates the stored GET response, or, when it
            // describes another representation, makes it unusable.
            let same_length = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_none_or(|len| {
                    len.to_str().ok().and_then(|l| l.parse::<usize>().ok())
                        == Some(entry.body.len())
                });
            if same_representation(response.headers(), stored) && same_length {
                let headers = &request_headers;
                let (at, filler) = (request_time, filler);
                shared
                    .refresh(plan, found, entry, headers, &mut response, at, filler)
                    .await;
            } else if let Err(err) = shared.storage.invalidate(&plan.key).await {
                tracing::debug!(key = %plan.key, error = %err, "stale GET entry not removed");
            }
            shared.take_tags(&mut response);
            let mut passed = response.map(ResponseBody::passthrough);
            shared.set_status(&mut passed, Outcome::forwarded(fwd, detail));
            return Ok(passed);
        }
    }
    let (response, unused) = shared.on_response(
        plan,
        found,
        &request_headers,
        request_time,
        response,
        filler,
        is_head,
        fwd,
        detail,
    );
    if let Some(filler) = unused {
        filler.release().await;
    }
    Ok(response)
}

/// RFC 5861 §3: the stale entry was served; refresh it with this same request in the
/// background, once per key at a time in this process and, with leases, across processes.
fn revalidate_in_background<S, B, ReqBody, ResBody>(
    shared: &Arc<Shared<B>>,
    inner: S,
    request: Request<ReqBody>,
    plan: Plan,
    found: Found,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    // A refresh (or a miss) already under way for the key will do.
    let Some(leader) = shared.config.flights.try_lead(&plan.key) else {
        tracing::debug!(key = %plan.key, "stale served; a refresh is already under way");
        return;
    };
    tracing::debug!(key = %plan.key, "stale served; refreshing in the background");
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = Arc::clone(shared);
    runtime.spawn(async move {
        let mut filler = Filler {
            leader: Some(leader),
            lease: None,
        };
        if let Some(ttl) = shared.config.lease {
            match lease::acquire(&shared.storage, &plan.canonical, ttl).await {
                Acquired::Mine(lease) => filler.lease = Some(lease),
                Acquired::Elsewhere => {
                    tracing::debug!(key = %plan.key, "another process is refreshing; refresh skipped");
                    return;
                }
                Acquired::Unknown => {}
            }
        }
        let mut inner = inner;
        let inner = match futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await {
            Ok(()) => inner,
            Err(_) => return,
        };
        if let Ok(response) = exchange(
            &shared, inner, request, &plan, &found, filler, Forward::Stale, None,
        )
        .await
        {
            drain(response.into_body()).await;
        }
    });
}

/// Reads a body to its end, so a response refreshed in the background is stored.
async fn drain<B: Body>(body: B) {
    let mut body = std::pin::pin!(body);
    while let Some(frame) = futures_util::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if frame.is_err() {
            break;
        }
    }
}

/// A request the cache does not look up: other methods (which may invalidate), and
/// routes or keys that opt out.
async fn bypass<S, B, ReqBody, ResBody>(
    shared: &Arc<Shared<B>>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: Backend,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    shared.config.stats.record_bypass();
    let method = request.method().clone();
    tracing::debug!(%method, path = request.uri().path(), "cache bypassed");
    let invalidates = Policy::invalidates(&method);
    let saved = invalidates.then(|| {
        (
            request.uri().clone(),
            request.headers().clone(),
            request.extensions().clone(),
        )
    });
    let mut response = inner.call(request).await?;
    shared.take_tags(&mut response);
    if let Some((uri, headers, extensions)) = saved {
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            let locations = [header::LOCATION, header::CONTENT_LOCATION]
                .iter()
                .filter_map(|name| response.headers().get(name).cloned())
                .collect();
            shared
                .invalidate_after(&uri, &headers, &extensions, locations)
                .await;
        }
    }
    let fwd = if Policy::is_cacheable_method(&method) {
        Forward::Bypass
    } else {
        Forward::Method
    };
    let mut response = response.map(ResponseBody::passthrough);
    shared.set_status(&mut response, Outcome::forwarded(fwd, None));
    Ok(response)
}

#[cfg(feature = "axum")]
fn matched_path<T>(request: &Request<T>) -> Option<&str> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn matched_path<T>(_request: &Request<T>) -> Option<&str> {
    None
}
