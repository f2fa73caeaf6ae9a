//! What the cache layer may store and for how long. Pure decisions over methods, paths
//! and headers; no I/O.
//!
//! - [`cache_control`]: the directives of a request or response.
//! - [`freshness`]: lifetimes, ages and whether a stored response may be reused.
//! - [`conditional`]: validators, and 304s answered from the cache.
//! - [`date`]: HTTP dates, read as tolerantly as RFC 9111 §4.2 asks of a cache.
//! - [`targeted`]: targeted cache-control fields (RFC 9213), which rule a response
//!   instead of its `Cache-Control` and `Expires`.
//! - [`range`]: `Range` and `If-Range`, answered from a stored response.
//! - [`fields`]: which response fields are kept: hop-by-hop ones, a client's own, and
//!   the ones the cache decides by.
//! - [`vary`]: `Vary`, and request fields' values normalised for matching.
//! - [`route`]: route rules, and the two readings of a path they are matched against.
//! - this module: which responses may be stored, and for how long.

pub(super) mod cache_control;
pub(super) mod conditional;
pub(super) mod date;
mod fields;
pub(super) mod freshness;
pub(super) mod range;
mod route;
pub(super) mod targeted;
mod vary;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

#[doc(inline)]
pub(super) use cache_control::CacheControl;
pub(super) use cache_control::MAX_DELTA_SECONDS;
use fields::{COOKIE_SETTERS, is_unstored_field};
pub(crate) use fields::{PER_CLIENT_FIELDS, answers_credentials, is_never_stored};
pub use fields::{decides_caching, is_hop_by_hop};
use freshness::{Heuristic, explicit_lifetime, heuristic_lifetime};
pub use route::RouteMatch;
use route::RouteRules;
pub(crate) use route::{RouteAction, RouteRule};
pub(crate) use vary::{normalized_header, vary_names};

/// The statuses stored by default: RFC 9110's heuristically cacheable ones.
pub(super) const DEFAULT_STATUSES: [u16; 11] = freshness::HEURISTIC_STATUSES;

/// The default lifetime of lovely.memcached and p01.memcache: an hour.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A byte of a token (RFC 9110 §5.6.2), which is what a field name is.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// What a layer makes of an entry read back, judged by its own settings
/// ([`Policy::judge_stored`]): its revalidation flags as this layer's directives read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StoredRuling {
    /// `no-cache` by this layer's ruling directives: revalidated before every reuse.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage` by them: never served stale.
    pub forbids_stale: bool,
}

/// Why a layer does not serve an entry another process stored ([`Policy::judge_stored`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotServed {
    /// This layer would not have stored the response.
    Refused(NotStorable),
    /// The entry holds a field this layer keeps out of entries.
    Field(HeaderName),
}

/// Who decides how long a response stays fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheMode {
    /// Route rules (and the handler's `CacheLifetime` or lifetime header) set lifetimes;
    /// the origin's `max-age` and `Expires` are not consulted. The layer's default.
    #[default]
    Routes,
    /// The origin's headers rule (RFC 9111 §4.2): `s-maxage`, `max-age`, `Expires − Date`,
    /// else heuristic freshness from `Last-Modified`; nothing else is fresh. A handler's
    /// `CacheLifetime` still overrides. The reverse proxy's default.
    Origin,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum NotStorable {
    /// The status is not in the configured set (and, in origin mode, the response has no
    /// explicit freshness that would allow another understood 2xx or 3xx).
    Status,
    /// `Cache-Control: no-store` on the request or response.
    NoStore,
    /// `Cache-Control: private` (a shared cache must not store it).
    Private,
    /// `Cache-Control: no-cache` on a response with no validator to revalidate it with.
    NoCache,
    /// The response sets a cookie, and storing those is off.
    SetCookie,
    /// The request carried `Authorization` and the response did not allow sharing.
    Authorization,
    /// `Vary: *`.
    VaryStar,
    /// Nothing to reuse: no freshness, no validator and no stale window.
    ZeroLifetime,
    /// A response that may not be the whole representation, never stored or served as if
    /// it were: a `206`, a `226`, one with `Content-Range`, or anything but a `200` to a
    /// request with `Range` (which the range may have caused).
    Partial,
    /// A live stream (`text/event-stream`, `multipart/x-mixed-replace`): what it sends
    /// happens once, to the connection that is open when it does, and the stream may never
    /// end.
    LiveStream,
}

/// How long a stored response lives, as [`Policy::lifetimes`] decides it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// Freshness lifetime, counted from age zero.
    pub fresh: Duration,
    /// `stale-while-revalidate` window.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` window.
    pub stale_if_error: Duration,
}

/// The storage policy: mode, route rules, default lifetime, statuses, cookies, heuristics.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    mode: CacheMode,
    rules: RouteRules,
    default_lifetime: Duration,
    statuses: HashSet<u16>,
    store_set_cookie: bool,
    share_set_cookie: bool,
    heuristic: Heuristic,
    /// RFC 9213's target list (see [`targeted`]); empty: off.
    targets: Vec<HeaderName>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: CacheMode::default(),
            rules: RouteRules::default(),
            default_lifetime: DEFAULT_LIFETIME,
            statuses: DEFAULT_STATUSES.into_iter().collect(),
            store_set_cookie: false,
            share_set_cookie: false,
            heuristic: Heuristic::default(),
            targets: Vec::new(),
        }
    }
}

impl Policy {
    /// Adds a route rule. Exact rules win over patterns, patterns over prefixes, and the
    /// longest prefix over shorter ones.
    pub(crate) fn add_rule(&mut self, rule: RouteRule) {
        self.rules.add(rule);
    }

    /// Sets who decides lifetimes.
    pub(crate) fn set_mode(&mut self, mode: CacheMode) {
        self.mode = mode;
    }

    /// Who decides lifetimes.
    pub(crate) fn mode(&self) -> CacheMode {
        self.mode
    }

    /// Sets heuristic freshness (origin mode).
    pub(crate) fn set_heuristic(&mut self, heuristic: Heuristic) {
        self.heuristic = heuristic;
    }

    /// Sets the lifetime of routes no rule names.
    pub(crate) fn set_default_lifetime(&mut self, lifetime: Duration) {
        self.default_lifetime = lifetime;
    }

    /// Replaces the set of statuses that may be stored.
    pub(crate) fn set_statuses(&mut self, statuses: impl IntoIterator<Item = u16>) {
        self.statuses = statuses.into_iter().collect();
    }

    /// Whether responses with `Set-Cookie` may be stored (without the cookie: it never
    /// enters an entry).
    pub(crate) fn set_store_set_cookie(&mut self, store: bool) {
        self.store_set_cookie = store;
    }

    pub(crate) fn set_share_set_cookie(&mut self, share: bool) {
        self.share_set_cookie = share;
    }

    /// Whether `Set-Cookie` is stored and replayed to everyone (RFC 9111 §7.3 permits it;
    /// off unless the operator says so).
    pub(crate) fn shares_set_cookie(&self) -> bool {
        self.share_set_cookie
    }

    /// Whether the cache looks requests with this method up (GET and HEAD).
    pub(crate) fn is_cacheable_method(method: &Method) -> bool {
        method == Method::GET || method == Method::HEAD
    }

    /// Why a GET or HEAD carries input that can change its response yet is in no cache
    /// key: a body (RFC 9110 §9.3.1 gives it no meaning, but some origins read it), or a
    /// method-override field that makes frameworks run another method's handler. Such a
    /// request is neither answered from the cache nor stored: its answer could belong to
    /// another request. `None` for an ordinary request.
    ///
    /// An override spelled with `_` (`X_HTTP_Method_Override`) counts: CGI-style gateways
    /// (WSGI, Rack, PHP's `$_SERVER`) read `_` and `-` alike, so the frameworks behind them
    /// follow it as the override itself.
    ///
    /// A GET asking to switch protocols (`Upgrade`, a WebSocket handshake) counts too: it
    /// asks for a connection, not for the representation, and only the handler can give
    /// it (a stored page answering it left the socket closed for everyone). But for `h2c`
    /// alone, which `curl --http2` offers with every `http://` GET and a server that does
    /// not switch answers as any GET.
    pub(crate) fn unkeyed_request_input(headers: &HeaderMap) -> Option<&'static str> {
        // One pass over the fields instead of a hashed lookup per name: this runs on every
        // hit.
        for (name, value) in headers {
            if *name == header::UPGRADE && !only_h2c(value.as_bytes()) {
                return Some("protocol upgrade");
            }
            if *name == header::TRANSFER_ENCODING
                || (*name == header::CONTENT_LENGTH && value.as_bytes().iter().any(|b| *b != b'0'))
            {
                return Some("request body");
            }
            if METHOD_OVERRIDES
                .iter()
                .any(|spelled| same_to_cgi(name.as_str(), spelled))
            {
                return Some("method override field");
            }
        }
        None
    }

    /// Whether a successful response to this method invalidates the target URI
    /// (RFC 9111 §4.4): every method not known to be safe, but CONNECT. A CONNECT opens
    /// a tunnel and changes nothing at its target; HTTP/2's WebSocket handshake is one
    /// (RFC 8441), and its every success removed the page stored at the socket's URL.
    /// Nor a safe method spelled in another case (`get`): an unknown method by RFC 9110
    /// §9.1, but many servers upper-case the method before routing and answer it as the
    /// safe one, so any client could evict any page at will, with nothing changed at the
    /// origin.
    pub(crate) fn invalidates(method: &Method) -> bool {
        if matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::CONNECT
        ) {
            return false;
        }
        let name = method.as_str();
        !["GET", "HEAD", "OPTIONS", "TRACE"]
            .iter()
            .any(|safe| name.eq_ignore_ascii_case(safe))
    }

    /// Whether a server that upper-cases the method reads this one as GET or HEAD (`get`,
    /// `Head`): a method-override field on it is then honoured as on GET or HEAD (see
    /// [`overridden_to_unsafe`](Self::overridden_to_unsafe)). Never looked up: only GET
    /// and HEAD themselves are ([`is_cacheable_method`](Self::is_cacheable_method)).
    pub(crate) fn reads_as_cacheable(method: &Method) -> bool {
        Self::is_cacheable_method(method)
            || ["GET", "HEAD"]
                .iter()
                .any(|safe| method.as_str().eq_ignore_ascii_case(safe))
    }

    /// Whether a request that [`invalidates`](Self::invalidates) nothing by its method
    /// asks for another one through a method-override field (spelled as
    /// [`unkeyed_request_input`](Self::unkeyed_request_input) reads it) that is not known
    /// to be safe: a framework behind the layer runs that method's handler (a `GET` with
    /// `X-HTTP-Method-Override: DELETE` deletes), so its success invalidates as the method
    /// itself would. Looked at only on the bypass path, never on a hit.
    pub(crate) fn overridden_to_unsafe(headers: &HeaderMap) -> bool {
        headers.iter().any(|(name, value)| {
            METHOD_OVERRIDES
                .iter()
                .any(|spelled| same_to_cgi(name.as_str(), spelled))
                && Method::from_bytes(value.as_bytes().trim_ascii())
                    .map_or(true, |method| Self::invalidates(&method))
        })
    }

    /// The route's lifetime, or `None` when its rule turns caching off.
    pub(crate) fn route_lifetime(&self, path: &str, pattern: Option<&str>) -> Option<Duration> {
        self.rules.lifetime(path, pattern, self.default_lifetime)
    }

    /// Whether a response may be stored (RFC 9111 §3), given the request's directives.
    /// `response_headers` and `cc` are as [`Policy::response_directives`] gives them (a
    /// targeted field's directives, and the headers without `Expires`, when one rules).
    pub(crate) fn storable(
        &self,
        request_headers: &HeaderMap,
        request_cc: &CacheControl,
        status: StatusCode,
        response_headers: &HeaderMap,
        cc: &CacheControl,
    ) -> Result<(), NotStorable> {
        let understood = is_understood(status);
        let explicit = cc.public
            || cc.max_age.is_some()
            || cc.s_maxage.is_some()
            || response_headers.contains_key(header::EXPIRES);
        // A 206 (single or multipart) is a part, a 304 no representation: never stored as
        // an entry, whatever `statuses` lists, or a part would be replayed as the whole.
        // So is a 226 (RFC 3229 delta encoding, `A-IM`): a delta against the instance one
        // client holds, which only a cache that implements instance manipulations may
        // reuse (§10.6). Stored, one client's chosen slice of a feed was everyone's.
        if status == StatusCode::PARTIAL_CONTENT || status == StatusCode::IM_USED {
            return Err(NotStorable::Partial);
        }
        // Asked for with `Range`, only a 200 (the range ignored) is the representation:
        // any other status may be the range's doing (a 416 without `Content-Range`, a 400
        // for a range the origin refused), and stored under the URL, whatever `statuses`
        // lists, it answered every client that asked for the whole.
        if request_headers.contains_key(header::RANGE) && status != StatusCode::OK {
            return Err(NotStorable::Partial);
        }
        // A 1xx is no final response: a 101 hands the connection to another protocol (a
        // WebSocket handshake, with its `Sec-WebSocket-Accept` for one client's key), and
        // replayed it ends HTTP on every connection that asks. Never stored either.
        if status == StatusCode::NOT_MODIFIED || status.is_informational() {
            return Err(NotStorable::Status);
        }
        // Explicit freshness admits any other understood 2xx or 3xx in origin mode, but
        // no error: a client makes an origin fail with what the key does not hold (an
        // oversize or malformed field, an `Expect`, a rate limit, a slow body), and
        // stored, its 400, 429 or 503 would answer everyone for the lifetime an origin
        // stamps on every response (cache-poisoned denial of service). An error is stored
        // only when `statuses` lists it (404, 405, 410, 414 and 501 by default).
        let status_ok = self.statuses.contains(&status.as_u16())
            || (self.mode == CacheMode::Origin
                && explicit
                && understood
                && !status.is_client_error()
                && !status.is_server_error());
        if !status_ok {
            return Err(NotStorable::Status);
        }
        // Any other status with a Content-Range is an origin's partial body all the same.
        if response_headers.contains_key(header::CONTENT_RANGE) {
            return Err(NotStorable::Partial);
        }
        // A live stream is no representation to reuse: admitted, every client that came
        // while it ran waited `coalesce_timeout` for an end that may never come, and a
        // stream that ended was replayed, its old events as new, to every later client.
        if is_live_stream(response_headers) {
            return Err(NotStorable::LiveStream);
        }
        // §3 and §5.2.2.3: with must-understand a response is stored only when the cache
        // implements its status code's caching rules, and then its no-store is ignored.
        if cc.must_understand && !implements_status(status) {
            return Err(NotStorable::Status);
        }
        let no_store = cc.no_store && !cc.must_understand;
        if no_store || request_cc.no_store {
            return Err(NotStorable::NoStore);
        }
        if cc.private {
            return Err(NotStorable::Private);
        }
        if cc.no_cache && !conditional::has_validators(response_headers) {
            return Err(NotStorable::NoCache);
        }
        // A cookie the response sets, in either field, that its own directives do not
        // keep out of the cache.
        let stripped = |field: &HeaderName| {
            [&cc.private_fields, &cc.no_cache_fields]
                .iter()
                .any(|fields| fields.iter().any(|f| f == field.as_str()))
        };
        if !self.store_set_cookie
            && !self.share_set_cookie
            && COOKIE_SETTERS
                .iter()
                .any(|field| response_headers.contains_key(field) && !stripped(field))
        {
            return Err(NotStorable::SetCookie);
        }
        // §3.5: only these directives let a shared cache store a response to an
        // authenticated request.
        if request_headers.contains_key(header::AUTHORIZATION) && !cc.allows_authenticated() {
            return Err(NotStorable::Authorization);
        }
        if vary_names(response_headers).any(|name| name == "*") {
            return Err(NotStorable::VaryStar);
        }
        Ok(())
    }

    /// This layer's judgement of an entry read back, which a process configured otherwise
    /// may have written (a rolling change, a canary, two services sharing a namespace):
    /// its status and stored fields are judged as [`storable`](Self::storable) and the
    /// entry's field filter would judge them here, by this layer's `statuses`, mode,
    /// targeted fields and cookie sharing. An entry this layer would not have stored, or
    /// that holds a field it keeps out, is not served on the writer's word (its `400`
    /// after `statuses` was narrowed, its `Cache-Control: private` page stored on a
    /// targeted field's word, the field a targeted `private="…"` names); the flags say
    /// how this layer's directives have it revalidated. Only what the stored response
    /// tells: the request that brought it (`Authorization`, `Range`) was judged when it
    /// was stored, and its lifetimes are the writer's.
    pub(crate) fn judge_stored(
        &self,
        status: u16,
        stored: &[(HeaderName, http::HeaderValue)],
    ) -> Result<StoredRuling, NotServed> {
        let status =
            StatusCode::from_u16(status).map_err(|_| NotServed::Refused(NotStorable::Status))?;
        let mut headers = HeaderMap::with_capacity(stored.len());
        for (name, value) in stored {
            headers.append(name.clone(), value.clone());
        }
        let ruling = self.response_directives(&headers);
        if let Some((name, _)) = stored
            .iter()
            .find(|(name, _)| ruling.is_unstored_field(name, &headers, self.share_set_cookie))
        {
            return Err(NotServed::Field(name.clone()));
        }
        self.storable(
            &HeaderMap::new(),
            &CacheControl::default(),
            status,
            &ruling.headers,
            &ruling.cc,
        )
        .map_err(NotServed::Refused)?;
        Ok(StoredRuling {
            no_cache: ruling.cc.no_cache,
            forbids_stale: ruling.cc.forbids_stale(),
        })
    }

    /// This policy without its route rules: what judging an entry read back needs
    /// ([`judge_stored`](Self::judge_stored)), cheap to keep beside every storage.
    pub(crate) fn for_reading(&self) -> Self {
        Self {
            mode: self.mode,
            rules: RouteRules::default(),
            default_lifetime: self.default_lifetime,
            statuses: self.statuses.clone(),
            store_set_cookie: self.store_set_cookie,
            share_set_cookie: self.share_set_cookie,
            heuristic: self.heuristic,
            targets: self.targets.clone(),
        }
    }

    /// Feeds `hasher` what [`judge_stored`](Self::judge_stored) judges by: two policies
    /// that feed it alike judge every entry alike.
    pub(crate) fn hash_reading(&self, hasher: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        let mut statuses: Vec<u16> = self.statuses.iter().copied().collect();
        statuses.sort_unstable();
        statuses.hash(hasher);
        (self.mode == CacheMode::Origin).hash(hasher);
        self.store_set_cookie.hash(hasher);
        self.share_set_cookie.hash(hasher);
        for target in &self.targets {
            target.as_str().hash(hasher);
        }
        self.targets.len().hash(hasher);
    }

    /// How long a response stays fresh and how long it may then be served stale.
    ///
    /// `chosen` is the lifetime the route (or the handler) chose; `handler_override` says
    /// the handler chose it for this response. In [`CacheMode::Routes`] `chosen` is the
    /// lifetime; in [`CacheMode::Origin`] the origin's headers are, unless the handler
    /// overrode them.
    pub(crate) fn lifetimes(
        &self,
        chosen: Duration,
        handler_override: bool,
        status: StatusCode,
        response_headers: &HeaderMap,
        cc: &CacheControl,
        response_time: SystemTime,
    ) -> Lifetimes {
        let fresh = match self.mode {
            CacheMode::Routes => chosen,
            CacheMode::Origin if handler_override => chosen,
            CacheMode::Origin => explicit_lifetime(cc, response_headers, response_time)
                .or_else(|| {
                    heuristic_lifetime(
                        status.as_u16(),
                        cc,
                        response_headers,
                        response_time,
                        &self.heuristic,
                    )
                })
                .unwrap_or(Duration::ZERO),
        };
        let window = |secs: Option<u64>| {
            if cc.forbids_stale() || cc.no_cache {
                Duration::ZERO
            } else {
                secs.map_or(Duration::ZERO, Duration::from_secs)
            }
        };
        Lifetimes {
            fresh,
            stale_while_revalidate: window(cc.stale_while_revalidate),
            stale_if_error: window(cc.stale_if_error),
        }
    }
}

/// Whether an `Upgrade` value offers `h2c` and nothing else.
fn only_h2c(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"h2c")
}

/// Whether the response is a live stream by its media type (in any case, with or without
/// parameters): server-sent events, or server push by `multipart/x-mixed-replace` (each
/// part replaces the one before: a camera's feed, a progress page).
///
/// Every member of every line counts: browsers read a `Content-Type` list
/// (`text/plain, text/event-stream`) by its last valid member (Fetch, "extract a MIME
/// type"), so a live type anywhere in it may be what the client gets. A comma inside a
/// quoted parameter cuts a member short, which at worst leaves a page unstored.
fn is_live_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .any(|member| {
            let essence = member
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            essence.eq_ignore_ascii_case(b"text/event-stream")
                || essence.eq_ignore_ascii_case(b"multipart/x-mixed-replace")
        })
}

/// Whether two field sets name the same media type (RFC 9110 §8.3.1: `type/subtype`, in
/// any case; parameters such as `charset` may differ): each one `Content-Type` line of
/// one member. A list is read by browsers by its last valid member (Fetch, "extract a
/// MIME type"), so it never counts as the same; nor does an absent field.
pub(crate) fn same_media_type(a: &HeaderMap, b: &HeaderMap) -> bool {
    fn essence(headers: &HeaderMap) -> Option<&[u8]> {
        let mut lines = headers.get_all(header::CONTENT_TYPE).iter();
        let line = lines.next()?.as_bytes();
        if lines.next().is_some() || line.contains(&b',') {
            return None;
        }
        let essence = line.split(|b| *b == b';').next()?.trim_ascii();
        (!essence.is_empty()).then_some(essence)
    }
    match (essence(a), essence(b)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// RFC 3229's `A-IM`: the instance manipulations (deltas) a request accepts; a `226`
/// answers it, never stored.
pub(crate) const A_IM: HeaderName = HeaderName::from_static("a-im");

/// Statuses whose caching semantics the layer understands (§5.2.2.3): every final status
/// but 206 (no range support), 226 (no instance manipulations) and 304 (handled as a
/// revalidation).
fn is_understood(status: StatusCode) -> bool {
    (200..600).contains(&status.as_u16())
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::IM_USED
        && status != StatusCode::NOT_MODIFIED
}

/// Statuses whose caching requirements the layer implements, for `must-understand`
/// (RFC 9111 §5.2.2.3): the final statuses RFC 9110 §15 defines (their caching rules are
/// RFC 9111's general ones), less 206 (partial responses are never stored) and 304 (a
/// revalidation, never stored as such). An unregistered status such as 599 may still be
/// stored on explicit freshness (§3), but not with `must-understand`.
fn implements_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=303 | 305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// The request fields some frameworks read to run another method's handler than the
/// request's (method-override middleware, API gateways).
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether the field name `field` is `name` to a CGI-style gateway, which makes both
/// `HTTP_` + the name upper-cased with `-` as `_`: equal, with `_` standing for `-`
/// anywhere. (Names are lower-case in a `HeaderMap`; `name` is.)
fn same_to_cgi(field: &str, name: &str) -> bool {
    field.len() == name.len()
        && field
            .bytes()
            .zip(name.bytes())
            .all(|(f, n)| f == n || (f == b'_' && n == b'-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;

    /// A header map from name/value pairs, for the policy modules' tests.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn same_media_type_reads_the_essence_of_one_member() {
        let typed = |value: &str| headers(&[("content-type", value)]);
        let same = |a: &str, b: &str| same_media_type(&typed(a), &typed(b));
        assert!(same("text/plain", "text/plain;charset=utf-8"));
        assert!(same("Text/HTML; charset=UTF-8", " text/html "));
        assert!(!same("application/json", "text/html; charset=UTF-8"));
        assert!(!same("text/plain", "text/plain, text/html"));
        assert!(!same("text/plain", ""));
        assert!(!same_media_type(&HeaderMap::new(), &typed("text/html")));
        assert!(!same_media_type(&typed("text/html"), &HeaderMap::new()));
        let mut two = typed("text/plain");
        two.append(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert!(!same_media_type(&two, &typed("text/plain")));
    }

    #[test]
    fn storability() {
        let policy = Policy::default();
        let none = HeaderMap::new();
        let storable = |policy: &Policy, request: &HeaderMap, status, response: &HeaderMap| {
            policy.storable(
                request,
                &CacheControl::parse_request(request),
                status,
                response,
                &CacheControl::parse(response),
            )
        };
        assert_eq!(storable(&policy, &none, StatusCode::OK, &none), Ok(()));
        assert_eq!(
            storable(&policy, &none, StatusCode::CREATED, &none),
            Err(NotStorable::Status)
        );
        let cases = [
            (&[("cache-control", "no-store")][..], NotStorable::NoStore),
            (&[("cache-control", "private")][..], NotStorable::Private),
            (&[("cache-control", "no-cache")][..], NotStorable::NoCache),
            (&[("set-cookie", "a=b")][..], NotStorable::SetCookie),
            (&[("vary", "accept, *")][..], NotStorable::VaryStar),
            (
                &[("content-type", "Text/Event-Stream; charset=utf-8")][..],
                NotStorable::LiveStream,
            ),
            (
                &[("content-type", "multipart/x-mixed-replace;boundary=b")][..],
                NotStorable::LiveStream,
            ),
            (
                &[("content-type", "text/plain, Text/Event-Stream")][..],
                NotStorable::LiveStream,
            ),
        ];
        for page in ["text/event-stream-page", "text/html; charset=\"a,b\""] {
            let page = headers(&[("content-type", page)]);
            assert_eq!(storable(&policy, &none, StatusCode::OK, &page), Ok(()));
        }
        for (response, reason) in cases {
            assert_eq!(
                storable(&policy, &none, StatusCode::OK, &headers(response)),
                Err(reason)
            );
        }
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            storable(&policy, &auth, StatusCode::OK, &none),
            Err(NotStorable::Authorization)
        );
        for allow in ["public", "s-maxage=10", "must-revalidate"] {
            let response = headers(&[("cache-control", allow)]);
            assert_eq!(
                storable(&policy, &auth, StatusCode::OK, &response),
                Ok(()),
                "{allow}"
            );
        }
        let no_store_request = headers(&[("cache-control", "no-store")]);
        assert_eq!(
            storable(&policy, &no_store_request, StatusCode::OK, &none),
            Err(NotStorable::NoStore)
        );
        // §5.2.2.3 must-understand overrides no-store for an understood status...
        let understood = headers(&[("cache-control", "no-store, must-understand")]);
        assert_eq!(
            storable(&policy, &none, StatusCode::OK, &understood),
            Ok(())
        );
        // ... and keeps any other status out, whatever else allows storing it.
        let mut everything = Policy::default();
        everything.set_mode(CacheMode::Origin);
        everything.set_statuses(100..1000);
        let unknown = StatusCode::from_u16(599).unwrap();
        let must_understand = headers(&[("cache-control", "max-age=60, must-understand")]);
        for response in [&understood, &must_understand] {
            assert_eq!(
                storable(&everything, &none, unknown, response),
                Err(NotStorable::Status)
            );
        }
        let fresh = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(storable(&everything, &none, unknown, &fresh), Ok(()));
        for status in [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_GATEWAY,
        ] {
            assert_eq!(
                storable(&everything, &none, status, &understood),
                Ok(()),
                "{status}"
            );
        }
        // §5.2.2.4: no-cache is stored only with a validator to revalidate it with.
        let validated = headers(&[("cache-control", "no-cache"), ("etag", "\"1\"")]);
        assert_eq!(storable(&policy, &none, StatusCode::OK, &validated), Ok(()));
        // A cookie the response keeps out of shared caches is stripped, not a refusal.
        let stripped = headers(&[
            ("cache-control", "private=\"set-cookie\""),
            ("set-cookie", "a=b"),
        ]);
        assert_eq!(storable(&policy, &none, StatusCode::OK, &stripped), Ok(()));
        // Origin mode: explicit freshness allows statuses beyond the heuristic ones.
        let explicit = headers(&[("cache-control", "max-age=5")]);
        assert_eq!(
            storable(&policy, &none, StatusCode::BAD_GATEWAY, &explicit),
            Err(NotStorable::Status)
        );
        let mut origin = Policy::default();
        origin.set_mode(CacheMode::Origin);
        for status in [203, 299, 302, 307] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                storable(&origin, &none, status, &explicit),
                Ok(()),
                "{status}"
            );
        }
        // ... but no error beyond `statuses`: a client can make an origin answer one.
        for status in [400, 403, 408, 417, 429, 431, 499, 500, 502, 503, 504, 599] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                storable(&origin, &none, status, &explicit),
                Err(NotStorable::Status),
                "{status}"
            );
        }
        assert_eq!(
            storable(&origin, &none, StatusCode::NOT_FOUND, &explicit),
            Ok(())
        );
        let mut listed = origin.clone();
        listed.set_statuses([200, 503]);
        assert_eq!(
            storable(&listed, &none, StatusCode::SERVICE_UNAVAILABLE, &explicit),
            Ok(())
        );
        assert_eq!(
            storable(&origin, &none, StatusCode::PARTIAL_CONTENT, &explicit),
            Err(NotStorable::Partial)
        );
        let ranged = headers(&[
            ("cache-control", "max-age=5"),
            ("content-range", "bytes 0-4/10"),
        ]);
        for policy in [&policy, &origin] {
            assert_eq!(
                storable(policy, &none, StatusCode::OK, &ranged),
                Err(NotStorable::Partial)
            );
        }
    }

    #[test]
    fn route_rules_precedence() {
        let mut policy = Policy::default();
        let secs = |s| RouteAction::Lifetime(Duration::from_secs(s));
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Prefix("/a".into()),
            action: secs(1),
        });
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Prefix("/a/b".into()),
            action: secs(2),
        });
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Pattern("/a/{id}".into()),
            action: secs(3),
        });
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Exact("/a/b/c".into()),
            action: RouteAction::NoCache,
        });
        assert_eq!(
            policy.route_lifetime("/a/x", None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            policy.route_lifetime("/a/b/x", None),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            policy.route_lifetime("/a/b", Some("/a/{id}")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(policy.route_lifetime("/a/b/c", Some("/a/{id}")), None);
        // Rules match the path an origin that decodes it sees.
        assert_eq!(policy.route_lifetime("/a/b/%63", Some("/a/{id}")), None);
        assert_eq!(policy.route_lifetime("/%61/b/c", None), None);
        assert_eq!(policy.route_lifetime("//a//b/c", None), None);
        // Rules are read as paths are: one written with `//` or an escape still matches.
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Exact("//x//%79".into()),
            action: RouteAction::NoCache,
        });
        assert_eq!(policy.route_lifetime("//x//y", None), None);
        assert_eq!(policy.route_lifetime("/x/y", None), None);
    }
}

/// The examples these items once carried in their docs, kept as tests now that the
/// module is internal.
#[cfg(test)]
mod doc_examples {
    #[test]
    fn example_1() {
        use crate::cache::policy::Policy;
        use http::HeaderMap;

        let mut headers = HeaderMap::new();
        assert_eq!(Policy::unkeyed_request_input(&headers), None);
        headers.insert("x-http-method-override", "POST".parse().unwrap());
        assert!(Policy::unkeyed_request_input(&headers).is_some());
        let mut handshake = HeaderMap::new();
        handshake.insert("upgrade", "websocket".parse().unwrap());
        assert!(Policy::unkeyed_request_input(&handshake).is_some());
        handshake.insert("upgrade", "h2c, websocket".parse().unwrap());
        assert!(Policy::unkeyed_request_input(&handshake).is_some());
        // `curl --http2` on `http://` offers h2c with every GET: a server that does not
        // switch answers it as any GET, so it is looked up as one.
        handshake.insert("upgrade", "H2C".parse().unwrap());
        assert_eq!(Policy::unkeyed_request_input(&handshake), None);
    }

    #[test]
    fn example_2() {
        use crate::cache::policy::{Policy, RouteAction, RouteMatch, RouteRule};
        use std::time::Duration;

        let mut policy = Policy::default();
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Prefix("/api/".into()),
            action: RouteAction::Lifetime(Duration::from_secs(30)),
        });
        policy.add_rule(RouteRule {
            matcher: RouteMatch::Exact("/api/live".into()),
            action: RouteAction::NoCache,
        });
        assert_eq!(
            policy.route_lifetime("/api/users", None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(policy.route_lifetime("/api/live", None), None);
        assert_eq!(
            policy.route_lifetime("/", None),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn example_3() {
        use crate::cache::policy::{CacheControl, NotStorable, Policy};
        use http::{HeaderMap, HeaderValue, StatusCode};

        let policy = Policy::default();
        let request = HeaderMap::new();
        let mut response = HeaderMap::new();
        response.insert("cache-control", HeaderValue::from_static("private"));
        let verdict = policy.storable(
            &request,
            &CacheControl::default(),
            StatusCode::OK,
            &response,
            &CacheControl::parse(&response),
        );
        assert_eq!(verdict, Err(NotStorable::Private));
    }
}
