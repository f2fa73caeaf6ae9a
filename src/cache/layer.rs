//! [`MemcacheLayer`]: the configuration, and the layer that wraps services with it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use tower::Layer;

use super::background::Background;
use super::config::Config;
use super::fill::FillBudget;
use super::key::{Canonical, KeyFn};
use super::purge::Purger;
use super::service::Memcache;
use super::shared::Shared;
use super::single_flight::SingleFlight;
use super::status::{InvalidCacheStatusName, checked_name};
use super::storage::LayerMemory;
use crate::backend::{Backend, DEFAULT_ITEM_SIZE_LIMIT};
use crate::cache::policy::freshness::Heuristic;
use crate::cache::policy::{CacheMode, Policy, RouteAction, RouteMatch, RouteRule};
use crate::cache::stats::CacheStats;

/// Whole-representation fills after range misses that run at once, per layer; further
/// range misses pass through without one.
const MAX_WHOLE_FILLS: usize = 8;

/// Unsafe requests whose clients left before the origin answered that a layer follows
/// to their answer at once (see `invalidate::Unanswered`); past it such a call goes with
/// its client, as a client that sends unsafe requests and leaves at once would otherwise
/// hold origin requests without holding a connection.
const MAX_UNANSWERED: usize = 256;

/// How long a request the layer makes of its own may run ([`MemcacheLayer::background_timeout`]).
const DEFAULT_BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Background refreshes (stale-while-revalidate) a layer runs at once. A stale hit costs
/// its client nothing to wait for, so without a bound a client sweeping stale URLs would
/// open an origin request (a socket, a task) per URL; past it the stale response is
/// served and the refresh left to a later request within the window.
const MAX_BACKGROUND_REFRESHES: usize = 64;

/// The largest body stored by default: memcached's 1 MiB item size less room for the key,
/// the entry's metadata and memcached's own overhead.
pub const DEFAULT_MAX_ENTRY_SIZE: usize = DEFAULT_ITEM_SIZE_LIMIT - 16 * 1024;

/// The header a handler can set to choose one response's lifetime in seconds (`0`: don't
/// store); the layer removes it before the response is sent.
pub const DEFAULT_LIFETIME_HEADER: &str = "x-memcache-lifetime";

/// The default of [`MemcacheLayer::fill_buffer`]: 64 MiB.
const DEFAULT_FILL_BUFFER: usize = 64 * 1024 * 1024;

/// The response header that tags a response for [`Purger::purge_tag`]; the layer removes it
/// before the response is sent.
pub const DEFAULT_TAG_HEADER: &str = "surrogate-key";

/// `CDN-Cache-Control`, the targeted cache-control field of RFC 9213 §3 (for caches that
/// operate on behalf of an origin, as a CDN does), to give
/// [`MemcacheLayer::targeted_cache_control`].
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// A tower [`Layer`] that caches the responses of the services it wraps in memcached.
///
/// Every builder method documents its default. The layer is cheap to clone; clones share
/// their statistics and their in-process request coalescing.
///
/// ```
/// use std::time::Duration;
/// use tower_memcache::cache::MemcacheLayer;
/// use tower_memcache::backend::MemoryBackend;
/// use tower_memcache::cache::RouteMatch;
///
/// let layer = MemcacheLayer::new(MemoryBackend::new())
///     .namespace("site")
///     .route(RouteMatch::Prefix("/slow/".into()), Duration::from_secs(30))
///     .no_cache(RouteMatch::Exact("/stats".into()));
/// let stats = layer.stats();
/// # let _ = stats;
/// ```
#[derive(Clone)]
#[must_use]
pub struct MemcacheLayer<B> {
    config: Config<B>,
}

impl<B: fmt::Debug> fmt::Debug for MemcacheLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("MemcacheLayer")
            .field("backend", &c.backend)
            .field("namespace", &c.namespace)
            .field("policy", &c.policy)
            .field("key_headers", &c.key_headers)
            .field("custom_key", &c.canonical.key_fn.is_some())
            .field("cache_status", &c.cache_status)
            .field("max_entry_size", &c.max_entry_size)
            .field("lookup_timeout", &c.lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> MemcacheLayer<B> {
    /// A layer over `backend` with the defaults below.
    pub fn new(backend: B) -> Self {
        Self {
            config: Config {
                backend,
                namespace: String::new(),
                policy: Policy::default(),
                key_headers: Vec::new(),
                canonical: Canonical {
                    key_fn: None,
                    default_scheme: "http".to_string(),
                },
                cache_status: Some("tower-memcache".to_string()),
                lifetime_header: Some(HeaderName::from_static(DEFAULT_LIFETIME_HEADER)),
                max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
                lookup_timeout: Duration::from_millis(100),
                coalesce_timeout: Duration::from_secs(5),
                background_timeout: DEFAULT_BACKGROUND_TIMEOUT,
                max_coalesced: 1024,
                tag_header: Some(HeaderName::from_static(DEFAULT_TAG_HEADER)),
                keep_stale: Duration::from_secs(60),
                stale_if_unreachable: None,
                lease: Some(Duration::from_secs(5)),
                lease_wait: Duration::from_secs(2),
                lease_poll: Duration::from_millis(20),
                stats: CacheStats::default(),
                flights: SingleFlight::default(),
                passes: Default::default(),
                fill_budget: FillBudget::new(DEFAULT_FILL_BUFFER),
                background: Background::default(),
                memory: LayerMemory::default(),
                whole_fills: Arc::new(tokio::sync::Semaphore::new(MAX_WHOLE_FILLS)),
                unanswered: Arc::new(tokio::sync::Semaphore::new(MAX_UNANSWERED)),
                refreshes: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND_REFRESHES)),
                own_request_body: None,
                near: None,
            },
        }
    }

    /// The namespace put in front of every key (the key formula of [`crate::key`]). Defaults to none.
    ///
    /// Give each application its own: a key holds the authority a client names, not the
    /// application that answered, so two applications sharing memcached and a namespace
    /// let a client send one of them the other's `Host` and have its page stored as the
    /// other site's.
    ///
    /// A new namespace comes with counters of its own ([`stats`](Self::stats), and the
    /// `metrics` feature's series labelled with it): layers made from one base layer with
    /// namespaces of their own count apart. Take `stats` from the finished layer.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        if namespace != self.config.namespace {
            // Clones share their counters: kept, a sibling's requests would count here
            // too, labelled with whichever namespace was set last.
            self.config.stats = CacheStats::default();
        }
        self.config.namespace = namespace;
        self.config.stats.label_namespace(&self.config.namespace);
        self
    }

    /// The lifetime of routes no rule names. Defaults to 3600 s, the memcache client's default.
    /// In [`CacheMode::Routes`] a lifetime of 0 (here or in a [`route`](Self::route) rule)
    /// stores nothing, whatever validators or stale windows the response has.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.policy.set_default_lifetime(lifetime);
        self
    }

    /// Caches the matching routes for `lifetime`. Exact rules win over patterns, patterns
    /// over prefixes, longer prefixes over shorter; of rules with one matcher, a
    /// [`no_cache`](Self::no_cache) rule wins, then the shortest lifetime, whatever the
    /// order they were added in. Defaults to no rules.
    pub fn route(mut self, matcher: RouteMatch, lifetime: Duration) -> Self {
        let action = RouteAction::Lifetime(lifetime);
        self.config.policy.add_rule(RouteRule { matcher, action });
        self
    }

    /// Never caches the matching routes, in every spelling a lenient origin reads as
    /// their path (`/Account`, `/x/..%2Faccount`, `/account;.css`: see [`RouteMatch`]).
    /// For a private area, prefer [`RouteMatch::Prefix`]: an
    /// [`Exact`](RouteMatch::Exact) rule leaves other paths the application may answer
    /// alike (`/account.css`, `/account/x`) cacheable.
    pub fn no_cache(mut self, matcher: RouteMatch) -> Self {
        let action = RouteAction::NoCache;
        self.config.policy.add_rule(RouteRule { matcher, action });
        self
    }

    /// The statuses that may be stored. Defaults to 200, 203, 204, 300, 301, 308, 404,
    /// 405, 410, 414 and 501. A 1xx (101 Switching Protocols among them), a 206, a 226 (an
    /// RFC 3229 delta) and a 304 are never stored, whatever this lists, nor anything but a
    /// 200 to a request that reached the origin with `Range`.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.config.policy.set_statuses(statuses);
        self
    }

    /// Whether responses that set cookies may be stored. The cookie itself never is: the
    /// entry is stored without its `Set-Cookie` fields, which go only to the client whose
    /// request brought them. Defaults to `false`.
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.config.policy.set_store_set_cookie(store);
        self
    }

    /// Stores `Set-Cookie` with the response and replays it to **every** client that gets
    /// the stored response, as RFC 9111 §7.3 permits a shared cache to do. Only for cookies
    /// that are the same for everyone (a consent flag, a load balancer's affinity value):
    /// a session or any per-user cookie would be handed to strangers. A `private="set-cookie"`
    /// or `no-cache="set-cookie"` still keeps it out. Defaults to `false`, and nothing else
    /// turns it on.
    ///
    /// ```
    /// use tower_memcache::{MemcacheLayer, MemoryBackend};
    ///
    /// // An origin whose only cookie is a site-wide "consent=v2" banner flag.
    /// let layer = MemcacheLayer::new(MemoryBackend::new()).share_set_cookie(true);
    /// # let _ = layer;
    /// ```
    pub fn share_set_cookie(mut self, share: bool) -> Self {
        self.config.policy.set_share_set_cookie(share);
        self
    }

    /// Request headers that select among a URL's stored responses as if every response
    /// named them in `Vary` (e.g. `accept-language`): each value gets its own entry, under
    /// the URL's key, so purging the URL purges them all. Defaults to none. An entry not
    /// selected by each of them (stored by a process configured without one, before a
    /// rolling change reached it) is a miss, refilled per value.
    pub fn key_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.key_headers = headers.into_iter().collect();
        self
    }

    /// Replaces the canonical request key with your own; the namespace still applies.
    /// Defaults to method (HEAD as GET), scheme, authority, path and query. Variants by
    /// `Vary` and [`key_headers`](Self::key_headers) still apply under your key.
    pub fn key_fn(mut self, key_fn: impl KeyFn) -> Self {
        self.config.canonical.key_fn = Some(Arc::new(key_fn));
        self
    }

    /// The scheme of the connections the layer serves (`https` behind TLS): the scheme
    /// of keys, since servers see origin-form targets. A request whose target names
    /// another scheme (absolute form, HTTP/2's `:scheme`) is not cached: its answer is
    /// the one for this connection. Defaults to `http`.
    ///
    /// Read as a scheme: in any case, around white space and a trailing `://` (`HTTPS`,
    /// `https://` are `https`). Taken byte for byte, `https://` made every request
    /// unkeyable (the cache stored nothing), and `HTTPS` kept an unsafe request's
    /// `Location` in the layer's own scheme from invalidating the page it names. Anything
    /// but `http` or `https` is logged as a warning: no request can then be keyed.
    pub fn default_scheme(mut self, scheme: impl Into<String>) -> Self {
        let written = scheme.into();
        let trimmed = written.trim();
        let scheme = trimmed
            .strip_suffix("://")
            .or_else(|| trimmed.strip_suffix(':'))
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            tracing::warn!(
                scheme = ?written,
                "default_scheme is neither http nor https: no request can be keyed, and the \
                 cache stores nothing"
            );
        }
        self.config.canonical.default_scheme = scheme;
        self
    }

    /// The cache's name in the RFC 9211 `Cache-Status` header. Defaults to
    /// `tower-memcache`. A name that is no Token (`Example CDN`) goes out as a String.
    ///
    /// # Panics
    ///
    /// If no `Cache-Status` field can carry the name as meant: a control character (a
    /// newline read with it), text outside printable ASCII, an empty name, or white space
    /// at its ends. Taken, such a name turned the header off without a word. For a name
    /// read from configuration, [`try_cache_status_name`](Self::try_cache_status_name)
    /// returns the error instead.
    ///
    /// ```
    /// # use tower_memcache::{MemcacheLayer, backend::MemoryBackend};
    /// let layer = MemcacheLayer::new(MemoryBackend::new()).cache_status_name("Example CDN");
    /// ```
    pub fn cache_status_name(self, name: impl Into<String>) -> Self {
        match self.try_cache_status_name(name) {
            Ok(layer) => layer,
            Err(invalid) => panic!("MemcacheLayer::cache_status_name: {invalid}"),
        }
    }

    /// [`cache_status_name`](Self::cache_status_name), with a name no `Cache-Status` field
    /// can carry returned as an error rather than a panic.
    ///
    /// ```
    /// # use tower_memcache::{MemcacheLayer, backend::MemoryBackend};
    /// let layer = MemcacheLayer::new(MemoryBackend::new());
    /// assert!(layer.clone().try_cache_status_name("edge").is_ok());
    /// assert!(layer.try_cache_status_name("edge\n").is_err());
    /// ```
    pub fn try_cache_status_name(
        mut self,
        name: impl Into<String>,
    ) -> Result<Self, InvalidCacheStatusName> {
        let name = name.into();
        checked_name(&name)?;
        self.config.cache_status = Some(name);
        Ok(self)
    }

    /// Turns the `Cache-Status` header off (`false`) or on. Defaults to on.
    pub fn cache_status_header(mut self, enabled: bool) -> Self {
        match (enabled, self.config.cache_status.is_some()) {
            (false, _) => self.config.cache_status = None,
            (true, false) => self.config.cache_status = Some("tower-memcache".to_string()),
            (true, true) => {}
        }
        self
    }

    /// The response header a handler sets to choose that response's lifetime in seconds;
    /// removed before sending. `None` turns it off. Defaults to `x-memcache-lifetime`.
    /// A value that is no whole number of seconds (`0.5`, `-1`, `30s`) counts as `0`, which
    /// keeps the response out of the cache in either mode; of several values the smallest
    /// rules. (A [`CacheLifetime`](super::CacheLifetime) response extension does the same.)
    pub fn lifetime_header(mut self, header: Option<HeaderName>) -> Self {
        self.config.lifetime_header = header;
        self
    }

    /// The largest body stored; larger bodies pass through unstored. Defaults to
    /// [`DEFAULT_MAX_ENTRY_SIZE`] (just under memcached's 1 MiB item size).
    pub fn max_entry_size(mut self, bytes: usize) -> Self {
        self.config.max_entry_size = bytes;
        self
    }

    /// Puts an in-process near tier in front of the backend: hot entries are answered from
    /// this process's memory, without a memcached round trip, for at most the tier's
    /// `max_staleness` after they were last read from memcached. Off by default.
    ///
    /// - Only fresh entries are answered from it, with the usual `Age`, conditionals and
    ///   ranges, and `Cache-Status: …; hit; detail=near`; anything else is looked up in
    ///   memcached as without it.
    /// - Purges ([`Purger`]), unsafe-method invalidations and stores
    ///   made through this process (every layer and purger sharing the `NearCache`) apply
    ///   to it before they return; those of other processes show within `max_staleness`.
    /// - Past `max_staleness` an entry is confirmed by its server's store epoch and its
    ///   generations (usually remembered: no round trip) rather than read again, and read
    ///   in full at least every `8 × max_staleness`; an entry memcached evicted may be
    ///   answered, while fresh, until then. Every process sharing the namespace must write
    ///   store epochs (any layer of this version does).
    /// - It keeps only what a lookup found in memcached, bounded in bytes; URLs whose
    ///   responses vary on more than one set of request headers are not kept.
    ///
    /// Give the same [`NearCache`](crate::cache::NearCache) to every layer of a process
    /// (one per thread, say) so that they share one bound and see each other's purges.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_memcache::MemcacheLayer;
    /// use tower_memcache::backend::MemoryBackend;
    /// use tower_memcache::cache::NearCache;
    ///
    /// let layer = MemcacheLayer::new(MemoryBackend::new())
    ///     .near_cache(NearCache::new(32 << 20, Duration::from_secs(1)));
    /// ```
    pub fn near_cache(mut self, near: super::NearCache) -> Self {
        self.config.near = Some(near);
        // What was noted of outages was for the tier a clone of this layer may still have.
        self.config.memory.outages = Arc::default();
        self
    }

    /// The most a request waits for the cache lookup before going to the inner service.
    /// Defaults to 100 ms.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.config.lookup_timeout = timeout;
        self
    }

    /// How long a request the layer makes of its own may take, from waiting for the inner
    /// service's readiness to the end of its body, before it is dropped: a
    /// `stale-while-revalidate` refresh, or the whole-representation GET after a range
    /// miss. No client waits for these, so no client's timeout ends them: without this, an
    /// inner service that never answers would hold one of the few places such requests
    /// have (64 refreshes, 8 whole fills per layer) for good, and once all were held no
    /// stale entry would be refreshed in the background again. It also bounds how long an
    /// unsafe request whose client left before the origin answered is still waited for
    /// (its success invalidates, RFC 9111 §4.4; 256 such calls per layer at once).
    /// Defaults to 60 s (nginx's `proxy_read_timeout`).
    pub fn background_timeout(mut self, timeout: Duration) -> Self {
        self.config.background_timeout = timeout;
        self
    }

    /// The most a request waits for another request's response to the same key before
    /// going to the inner service itself: in all, however many requests it waits for in
    /// turn (leaders that go away, or whose response was not for it). Defaults to 5 s.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.config.coalesce_timeout = timeout;
        self
    }

    /// How many requests may wait for one in-flight response; more go to the inner
    /// service. `0` turns coalescing off. Defaults to 1024.
    pub fn max_coalesced(mut self, waiting: usize) -> Self {
        self.config.max_coalesced = waiting;
        self
    }

    /// How many bytes of responses being stored may wait, across all clients of this
    /// layer, for clients that read more slowly than the origin sends. Within it, an entry
    /// is filled at the origin's pace whatever its client does; past it, reading follows
    /// the client again (so a crowd of stalled clients costs this much memory, not an
    /// entry each). Each frame waiting counts its data and its place in the queue (a
    /// couple of hundred bytes), so a body sent in tiny frames is bounded alike. A fill
    /// that has waited 100 ms in all for its client so hands the requests waiting for its
    /// entry (its single flight, other processes' waits for its placeholder) on: they
    /// do not wait for that client.
    /// Defaults to 64 MiB.
    pub fn fill_buffer(mut self, bytes: usize) -> Self {
        self.config.fill_budget = FillBudget::new(bytes);
        self
    }

    /// Who decides lifetimes: route rules ([`CacheMode::Routes`], the default) or the
    /// origin's `Cache-Control` / `Expires` ([`CacheMode::Origin`]). The safety rules of
    /// RFC 9111 (`no-store`, `private`, `no-cache`, `must-revalidate`, request directives,
    /// validation, `Vary`, invalidation) hold in both.
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.config.policy.set_mode(mode);
        self
    }

    /// Heuristic freshness in origin mode, for responses with `Last-Modified` and no
    /// explicit lifetime (RFC 9111 §4.2.2). Defaults to a tenth of the time since the last
    /// modification, at most a day; a fraction of `0.0` turns it off.
    pub fn heuristic(mut self, fraction: f64, max: Duration) -> Self {
        self.config
            .policy
            .set_heuristic(Heuristic { fraction, max });
        self
    }

    /// The targeted cache-control fields (RFC 9213) this cache obeys, most applicable first
    /// (its *target list*): e.g. a field named for your deployment, then
    /// [`CDN_CACHE_CONTROL`]. The first of them that a response carries with a valid,
    /// non-empty value (an RFC 8941 Dictionary of cache directives) decides, instead of
    /// the response's `Cache-Control` and `Expires`, whether the response is stored and
    /// how long it is fresh or may be served stale: `max-age`, `s-maxage`, `no-store`,
    /// `no-cache`, `private`, `public`, `must-revalidate`, `proxy-revalidate`,
    /// `stale-while-revalidate`, `stale-if-error`, `must-understand`. A field that is not
    /// a valid dictionary (or is empty) is ignored, and `Cache-Control` applies. A known
    /// directive with a value of the wrong type (`max-age="60"`) is not consumed, but its
    /// field still rules (RFC 9213 §2.1), failing closed (as for a field that names no
    /// directive the cache knows, `maxage=60`): a mistyped restrictive directive
    /// (`private=1`) still restricts, and `Cache-Control`'s restrictive directives
    /// (`no-store`, `private`, `no-cache`, `must-revalidate`, `proxy-revalidate`) apply
    /// beside such a field, as restrictions only (its `must-revalidate` does not let a
    /// response to an authenticated request be stored, RFC 9111 §3.5; the field's
    /// `must-understand` does not lift its `no-store`), so `Cache-Control: private` next
    /// to a mistyped `CDN-Cache-Control` keeps the response out of the cache. The fields
    /// are stored and forwarded unchanged, for caches downstream; a request's are never
    /// read. Lifetimes come from them only in [`CacheMode::Origin`], as from
    /// `Cache-Control`.
    /// Defaults to none (targeted fields are not obeyed; the reverse proxy example
    /// obeys `CDN-Cache-Control`).
    ///
    /// ```
    /// use http::header::HeaderName;
    /// use tower_memcache::backend::MemoryBackend;
    /// use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode, MemcacheLayer};
    ///
    /// let layer = MemcacheLayer::new(MemoryBackend::new())
    ///     .mode(CacheMode::Origin)
    ///     .targeted_cache_control([
    ///         HeaderName::from_static("example-cache-control"),
    ///         CDN_CACHE_CONTROL,
    ///     ]);
    /// # let _ = layer;
    /// ```
    pub fn targeted_cache_control(mut self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.policy.set_targets(fields);
        self
    }

    /// The response header listing a response's tags (space- or comma-separated, at most
    /// 32 of at most 128 bytes each), removed before sending; [`Purger::purge_tag`]
    /// invalidates every entry with a tag. A response naming more, or longer ones, is not
    /// stored (a purge of a tag left out would not reach it). `None` turns tags off.
    /// Defaults to `surrogate-key`.
    pub fn tag_header(mut self, header: Option<HeaderName>) -> Self {
        self.config.tag_header = header;
        self
    }

    /// How long a stale entry with a validator (`ETag`, `Last-Modified`) stays in memcached
    /// after its freshness and stale windows end, so it can be revalidated with a
    /// conditional request instead of downloaded again. Defaults to 60 s.
    pub fn keep_stale(mut self, duration: Duration) -> Self {
        self.config.keep_stale = duration;
        self
    }

    /// Serve a stale stored response, at most `max_staleness` past its lifetime, when the
    /// origin cannot be reached: the inner service fails, or answers with a response
    /// carrying [`OriginUnreachable`](super::OriginUnreachable) (connection refused or
    /// closed, timeout), as nginx's `proxy_cache_use_stale error timeout` and Varnish's
    /// grace do. Never for a response that said `must-revalidate`, `proxy-revalidate`,
    /// `no-cache` or `s-maxage` (RFC 9111 §4.2.4), nor for a request with `no-cache`; the
    /// answer says `Cache-Status: …; fwd=stale; ttl=-N; detail=origin-unreachable`. As
    /// within `stale-if-error`, only while memcached still holds the stale response (read
    /// again after the failure; one purged meanwhile, or memcached unreadable then, gives
    /// the origin's failure; one replaced meanwhile leaves its replacement, when usable so
    /// or fresh enough for the request, to stand in). Entries stay in memcached that much longer. Defaults to
    /// `None`: stale only within `stale-if-error`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_memcache::{MemcacheLayer, MemoryBackend};
    ///
    /// let layer = MemcacheLayer::new(MemoryBackend::new())
    ///     .stale_if_unreachable(Some(Duration::from_secs(3600)));
    /// # let _ = layer;
    /// ```
    pub fn stale_if_unreachable(mut self, max_staleness: Option<Duration>) -> Self {
        self.config.stale_if_unreachable = max_staleness;
        self
    }

    /// Stampede protection across processes: a process that misses takes a lease of this
    /// lifetime in memcached before calling the inner service; the others wait for its
    /// entry (see [`lease_wait`](Self::lease_wait)). `None` turns leases off (the single
    /// flight inside each process stays). Defaults to 5 s.
    pub fn lease(mut self, lifetime: Option<Duration>) -> Self {
        self.config.lease = lifetime;
        self
    }

    /// How long a request waits for another process's lease holder before going to the
    /// inner service itself, and how often it looks. Defaults to 2 s, every 20 ms. The
    /// wait is one for the whole request: a request that looks the URL up again (what it
    /// waited for could not be used as it is) and finds another lease waits only for what
    /// is left of it.
    pub fn lease_wait(mut self, wait: Duration, poll_every: Duration) -> Self {
        self.config.lease_wait = wait;
        self.config.lease_poll = poll_every.max(Duration::from_millis(1));
        self
    }

    /// How the layer makes the (empty) body of a request of its own. When a `Range`
    /// request misses, it goes to the inner service as it is; once that answers 206 with a
    /// complete length within [`max_entry_size`](Self::max_entry_size), the layer fetches
    /// the whole representation in the background with a GET of its own, so that later
    /// range requests are answered from the cache. And when the origin answers the
    /// layer's revalidation with a 304 for another representation than the stored one
    /// (RFC 9111 §4.3.4), the layer sends the client's request once more without its
    /// validators (a 502 to the client when it cannot). Those requests need a body of the
    /// inner service's request body type: `()`, `String`, `Vec<u8>`, `Bytes` (and, with the
    /// `axum` feature, `axum::body::Body`) are made without this setting; for any other,
    /// give `make`, which must return that type (checked at run time: a mismatch, or no
    /// maker, only means range misses fill nothing and such a 304 ends in a 502).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_memcache::backend::MemoryBackend;
    /// use tower_memcache::cache::MemcacheLayer;
    ///
    /// // An inner service taking `Request<Option<Bytes>>`.
    /// let layer = MemcacheLayer::new(MemoryBackend::new())
    ///     .own_request_body(|| Option::<Bytes>::None);
    /// # let _ = layer;
    /// ```
    pub fn own_request_body<T, F>(mut self, make: F) -> Self
    where
        T: Send + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        self.config.own_request_body = Some(Arc::new(move || Box::new(make())));
        self
    }

    /// The configuration (for the lifecycle modules' unit tests).
    #[cfg(test)]
    pub(crate) fn config(&self) -> &Config<B> {
        &self.config
    }

    /// The layer's statistics, shared by every service it builds (and by its clones, until
    /// one is given another [`namespace`](Self::namespace)).
    pub fn stats(&self) -> CacheStats {
        self.config.stats.clone()
    }

    /// The layer's background work (stores, refreshes, lease releases), to wait for:
    /// see [`Background::idle`].
    pub fn background(&self) -> Background {
        self.config.background.clone()
    }

    /// A handle that purges entries of this layer's namespace: one URL, one tag, the whole
    /// namespace, or everything in the backend.
    ///
    /// It purges what the layer is configured with when it is taken: take it from the
    /// finished layer. One taken before [`namespace`](Self::namespace) purges the old
    /// namespace, and one taken before [`near_cache`](Self::near_cache) does not empty
    /// this process's near tier (its purges then reach the tier only within
    /// `max_staleness`, as another process's do).
    pub fn purger(&self) -> Purger<B> {
        Purger::new(&self.config)
    }
}

impl<S, B: Backend> Layer<S> for MemcacheLayer<B> {
    type Service = Memcache<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Memcache::from_shared(inner, Arc::new(Shared::new(self.config.clone())))
    }
}
