//! [`Memcache`], the service: lookup, then a cached response or the inner service's
//! response on its way into the cache.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::CacheLifetime;
use super::body::{ResponseBody, Tee};
use super::future::ResponseFuture;
use super::key::{RequestHead, canonical_key};
use super::layer::{Config, MemcacheLayer};
use super::single_flight::{self, Flight, Leader};
use crate::backend::{Backend, Lifetime};
use crate::codec::entry::{Entry, EntryMeta, FLAG_HTTP_ENTRY, decode_entry, encode_entry};
use crate::key::build_key;
use crate::policy::{CacheControl, Policy, is_hop_by_hop, normalized_header, vary_names};
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

/// What the layer knows once, for every request: config plus precomputed header values.
pub(crate) struct Shared<B> {
    config: Config<B>,
    status_values: Option<StatusValues>,
}

/// `Cache-Status` values for the common outcomes, formatted once.
struct StatusValues {
    name: String,
    hit: HeaderValue,
    collapsed: HeaderValue,
    stored: HeaderValue,
    miss: HeaderValue,
    bypass: HeaderValue,
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Hit,
    Collapsed,
    Stored,
    Miss,
    Bypass,
}

impl<B: Backend> Shared<B> {
    pub(crate) fn new(config: Config<B>) -> Self {
        let status_values = config.cache_status.as_ref().and_then(|name| {
            let value = |params: &str| HeaderValue::from_str(&format!("{name}; {params}")).ok();
            Some(StatusValues {
                name: name.clone(),
                hit: value("hit")?,
                collapsed: value("fwd=uri-miss; collapsed")?,
                stored: value("fwd=uri-miss; stored")?,
                miss: value("fwd=uri-miss")?,
                bypass: value("fwd=bypass")?,
            })
        });
        Self {
            config,
            status_values,
        }
    }

    fn cache_status(&self, outcome: Outcome, detail: Option<&str>) -> Option<HeaderValue> {
        let values = self.status_values.as_ref()?;
        let base = match outcome {
            Outcome::Hit => &values.hit,
            Outcome::Collapsed => &values.collapsed,
            Outcome::Stored => &values.stored,
            Outcome::Miss => &values.miss,
            Outcome::Bypass => &values.bypass,
        };
        match detail {
            None => Some(base.clone()),
            Some(detail) => {
                let text = format!("{}; detail={detail}", base.to_str().unwrap_or(&values.name));
                HeaderValue::from_str(&text).ok()
            }
        }
    }

    /// What to do with a request: `None` to bypass the cache.
    fn plan<T>(&self, request: &Request<T>) -> Option<Plan> {
        if !Policy::is_cacheable_method(request.method()) {
            return None;
        }
        let lifetime = self
            .config
            .policy
            .route_lifetime(request.uri().path(), matched_path(request))?;
        let head = RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        };
        let canonical = match &self.config.key_fn {
            Some(key_fn) => format!("GET {}", key_fn.key(&head)?),
            None => canonical_key(&self.config.default_scheme, &head, &self.config.key_headers),
        };
        let request_cc = CacheControl::parse(request.headers());
        Some(Plan {
            key: build_key(Some(&self.config.namespace), &canonical),
            canonical,
            lifetime,
            // The client asks for a fresh response: go to the origin, store the result.
            lookup: !(request_cc.no_cache || request_cc.max_age == Some(0)),
        })
    }

    async fn lookup(&self, plan: &Plan, request_headers: &HeaderMap) -> Lookup {
        // No separate availability check: a backend whose server is down fails the get at
        // once, and checking first would route (hash) the key twice on every hit.
        let backend = &self.config.backend;
        let item =
            match tokio::time::timeout(self.config.lookup_timeout, backend.get(&plan.key)).await {
                Ok(Ok(item)) => item,
                Ok(Err(err)) => {
                    tracing::debug!(key = %plan.key, error = %err, "cache lookup failed; miss");
                    self.config.stats.record_backend_error();
                    return Lookup::Unavailable;
                }
                Err(_) => {
                    tracing::debug!(key = %plan.key, "cache lookup timed out; miss");
                    self.config.stats.record_backend_error();
                    return Lookup::Unavailable;
                }
            };
        let Some(item) = item.filter(|item| item.flags == FLAG_HTTP_ENTRY) else {
            return Lookup::Miss;
        };
        match decode_entry(item.value) {
            Ok(entry) if self.usable(&entry, plan, request_headers) => Lookup::Hit(Arc::new(entry)),
            Ok(_) => Lookup::Miss,
            Err(err) => {
                tracing::debug!(key = %plan.key, error = %err, "undecodable cache entry; miss");
                Lookup::Miss
            }
        }
    }

    /// Whether an entry may answer this request: same canonical key (never someone else's
    /// bytes), still fresh, same selecting header values.
    fn usable(&self, entry: &Entry, plan: &Plan, request_headers: &HeaderMap) -> bool {
        let meta = &entry.meta;
        if meta.canonical_key != plan.canonical {
            tracing::debug!(key = %plan.key, "entry stored for another request; miss");
            return false;
        }
        if now_ms() >= meta.stored_at_ms.saturating_add(meta.fresh_for_ms) {
            return false;
        }
        meta.vary
            .iter()
            .all(|(name, stored)| normalized_header(request_headers, name) == *stored)
    }

    fn hit_response<ResBody>(
        &self,
        entry: &Entry,
        is_head: bool,
        outcome: Outcome,
    ) -> Response<ResponseBody<ResBody>> {
        let meta = &entry.meta;
        let mut response = Response::new(if is_head {
            ResponseBody::empty()
        } else {
            ResponseBody::cached(entry.body.clone())
        });
        // The version stays the default: it belongs to the client's connection, and an
        // origin's HTTP/1.0 replayed to HTTP/1.1 clients would close their connections.
        *response.status_mut() = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
        let headers = response.headers_mut();
        headers.reserve(meta.headers.len() + 3);
        let mut origin_age = 0;
        for (name, value) in &meta.headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            if name == header::AGE {
                origin_age = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                continue;
            }
            headers.append(name, value);
        }
        // RFC 9111 §4.2.3: the age it had when stored plus the time it has spent here.
        let resident = now_ms().saturating_sub(meta.stored_at_ms) / 1000;
        headers.insert(header::AGE, HeaderValue::from(origin_age + resident));
        if is_head {
            // A GET's body length still describes the resource; hyper derives it for GET.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        }
        if let Some(status) = self.cache_status(outcome, None) {
            headers.append(CACHE_STATUS, status);
        }
        self.config
            .stats
            .record_hit(if is_head { 0 } else { entry.body.len() });
        tracing::debug!(
            status = meta.status,
            bytes = entry.body.len(),
            "served from cache"
        );
        response
    }

    /// Decides whether the inner service's response is stored, and sets it on its way.
    fn on_response<ResBody>(
        self: &Arc<Self>,
        plan: Plan,
        request_headers: &HeaderMap,
        mut response: Response<ResBody>,
        leader: Option<Leader>,
        is_head: bool,
        detail: Option<&str>,
    ) -> Response<ResponseBody<ResBody>>
    where
        ResBody: Body<Data = Bytes> + Send + 'static,
    {
        let lifetime = self.response_lifetime(&mut response, plan.lifetime);
        let decision = if is_head {
            Err("a HEAD response has no body to store")
        } else if lifetime.is_zero() {
            Err("lifetime of zero")
        } else if !self.config.backend.is_available(&plan.key) {
            Err("backend unavailable")
        } else {
            self.config
                .policy
                .storable(request_headers, response.status(), response.headers())
                .map_err(|_| "not storable by policy")
        };
        let (tee, outcome) = match decision {
            Ok(()) => {
                let meta = self.entry_meta(&plan, request_headers, &response, lifetime);
                let on_complete = self.store_on_complete(plan.key, meta, lifetime, leader);
                let tee = Tee::new(
                    self.config.max_entry_size,
                    &response.body().size_hint(),
                    on_complete,
                );
                let outcome = if tee.is_some() {
                    Outcome::Stored
                } else {
                    Outcome::Miss
                };
                (tee, outcome)
            }
            Err(reason) => {
                tracing::debug!(key = %plan.key, status = %response.status(), reason, "response not stored");
                if let Some(leader) = leader {
                    leader.publish(None);
                }
                (None, Outcome::Miss)
            }
        };
        if let Some(status) = self.cache_status(outcome, detail) {
            response.headers_mut().append(CACHE_STATUS, status);
        }
        response.map(|body| ResponseBody::teeing(body, tee))
    }

    /// The response's own lifetime (extension or header, the header removed) or the route's.
    fn response_lifetime<T>(&self, response: &mut Response<T>, route: Duration) -> Duration {
        let mut lifetime = route;
        if let Some(name) = &self.config.lifetime_header {
            if let Some(value) = response.headers_mut().remove(name) {
                match value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    Some(secs) => lifetime = Duration::from_secs(secs),
                    None => tracing::debug!(header = %name, "unparseable lifetime header ignored"),
                }
            }
        }
        if let Some(CacheLifetime(chosen)) = response.extensions_mut().remove::<CacheLifetime>() {
            lifetime = chosen;
        }
        lifetime
    }

    fn entry_meta<T>(
        &self,
        plan: &Plan,
        request_headers: &HeaderMap,
        response: &Response<T>,
        lifetime: Duration,
    ) -> EntryMeta {
        let response_headers = response.headers();
        let headers = response_headers
            .iter()
            .filter(|(name, _)| !is_hop_by_hop(name, response_headers) && *name != CACHE_STATUS)
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect();
        let vary = vary_names(response_headers)
            .map(|name| {
                let value = normalized_header(request_headers, &name);
                (name, value)
            })
            .collect();
        EntryMeta {
            canonical_key: plan.canonical.clone(),
            status: response.status().as_u16(),
            headers,
            vary,
            stored_at_ms: now_ms(),
            fresh_for_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// What happens when a stored body is complete: followers get the entry at once, and
    /// the backend gets it in the background.
    fn store_on_complete(
        self: &Arc<Self>,
        key: String,
        meta: EntryMeta,
        lifetime: Duration,
        leader: Option<Leader>,
    ) -> Box<dyn FnOnce(Bytes) + Send> {
        let shared = Arc::clone(self);
        Box::new(move |body: Bytes| {
            let entry = Arc::new(Entry { meta, body });
            if let Some(leader) = &leader {
                leader.publish(Some(Arc::clone(&entry)));
            }
            // A body polled outside a tokio runtime cannot be stored in the background.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::debug!("no tokio runtime to store the entry; skipped");
                return;
            };
            runtime.spawn(async move {
                shared.store(key, &entry, lifetime).await;
                // Until the entry is in the backend, requests for the key join this flight
                // and get the entry from it instead of missing.
                drop(leader);
            });
        })
    }

    async fn store(&self, key: String, entry: &Entry, lifetime: Duration) {
        let stats = &self.config.stats;
        let bytes = match encode_entry(&entry.meta, &entry.body) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::debug!(%key, error = %err, "entry not encodable; not stored");
                stats.record_store_failure();
                return;
            }
        };
        let set = self.config.backend.set(
            &key,
            bytes,
            FLAG_HTTP_ENTRY,
            Lifetime::from_duration(lifetime),
        );
        match tokio::time::timeout(self.config.lookup_timeout, set).await {
            Ok(Ok(())) => {
                stats.record_store();
                tracing::debug!(%key, bytes = entry.body.len(), ?lifetime, "response stored");
            }
            Ok(Err(err)) => {
                stats.record_store_failure();
                tracing::debug!(%key, error = %err, "store failed");
            }
            Err(_) => {
                stats.record_store_failure();
                tracing::debug!(%key, "store timed out");
            }
        }
    }
}

/// The RFC 9211 header.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

struct Plan {
    key: String,
    canonical: String,
    lifetime: Duration,
    lookup: bool,
}

enum Lookup {
    Hit(Arc<Entry>),
    Miss,
    Unavailable,
}

async fn handle<S, B, ReqBody, ResBody>(
    shared: Arc<Shared<B>>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: Backend,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let stats = &shared.config.stats;
    let Some(plan) = shared.plan(&request) else {
        stats.record_bypass();
        tracing::debug!(method = %request.method(), path = request.uri().path(), "cache bypassed");
        let mut response = inner.call(request).await?;
        if let Some(status) = shared.cache_status(Outcome::Bypass, None) {
            response.headers_mut().append(CACHE_STATUS, status);
        }
        return Ok(response.map(ResponseBody::passthrough));
    };
    let is_head = request.method() == Method::HEAD;
    let mut detail = None;
    if plan.lookup {
        match shared.lookup(&plan, request.headers()).await {
            Lookup::Hit(entry) => return Ok(shared.hit_response(&entry, is_head, Outcome::Hit)),
            Lookup::Miss => {}
            Lookup::Unavailable => detail = Some("backend-unavailable"),
        }
    }
    // A HEAD miss neither leads (its response has no body to share) nor follows.
    let flight = if is_head {
        Flight::Alone
    } else {
        shared
            .config
            .flights
            .join(&plan.key, shared.config.max_coalesced)
    };
    let leader = match flight {
        Flight::Leader(leader) => Some(leader),
        Flight::Follower(rx) => {
            stats.record_coalesced();
            let entry = single_flight::wait(rx, shared.config.coalesce_timeout).await;
            if let Some(entry) = entry.filter(|e| shared.usable(e, &plan, request.headers())) {
                return Ok(shared.hit_response(&entry, is_head, Outcome::Collapsed));
            }
            None
        }
        Flight::Alone => None,
    };
    stats.record_miss();
    tracing::debug!(key = %plan.key, "cache miss; calling the inner service");
    let request_headers = request.headers().clone();
    let response = inner.call(request).await?;
    Ok(shared.on_response(plan, &request_headers, response, leader, is_head, detail))
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
