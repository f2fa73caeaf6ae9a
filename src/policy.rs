//! What the cache layer may store and for how long. Pure decisions over methods, paths
//! and headers; no I/O.

use std::collections::HashSet;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// The statuses stored by default: RFC 9110's heuristically cacheable ones.
pub const DEFAULT_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The seeds' default lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The parsed `Cache-Control` directives of a request or response (all header lines
/// together). Unknown directives are ignored.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::CACHE_CONTROL};
/// use tower_memcache::policy::CacheControl;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=60, x-unknown"));
/// let cc = CacheControl::parse(&headers);
/// assert!(cc.public);
/// assert_eq!(cc.max_age, Some(60));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names).
    pub no_cache: bool,
    /// `private` (with or without field names).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`; an invalid value counts as 0 (stale), as RFC 9111 §4.2.1 asks.
    pub max_age: Option<u64>,
    /// `s-maxage`; invalid counts as 0.
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` line in `headers`. Where a directive with a value
    /// appears twice, the most restrictive (smallest) value wins.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in split_directives(text) {
                let (name, arg) = match directive.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => cc.max_age = Some(min_seconds(cc.max_age, arg)),
                    "s-maxage" => cc.s_maxage = Some(min_seconds(cc.s_maxage, arg)),
                    _ => {}
                }
            }
        }
        cc
    }
}

fn min_seconds(current: Option<u64>, arg: Option<&str>) -> u64 {
    let parsed = arg
        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
        .map(|a| a.parse::<u64>().unwrap_or(u64::MAX)) // too many digits: "very long"
        .unwrap_or(0);
    current.map_or(parsed, |c| c.min(parsed))
}

/// Splits on commas outside quoted strings (`no-cache="a, b"` is one directive).
fn split_directives(text: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

/// Headers that describe one connection, never stored (RFC 9110 §7.6.1), plus the ones a
/// `Connection` header names.
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    if HOP_BY_HOP.contains(&name.as_str()) {
        return true;
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// How a route rule picks requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// The request path, exactly.
    Exact(String),
    /// Any path that starts with this prefix.
    Prefix(String),
    /// axum's `MatchedPath` (the route pattern, e.g. `/users/{id}`), present when the layer
    /// is added with `route_layer` and the `axum` feature is on.
    Pattern(String),
}

/// What a route rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Cache for this long.
    Lifetime(Duration),
    /// Never cache (requests bypass the cache).
    NoCache,
}

/// One per-route rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// Which requests.
    pub matcher: RouteMatch,
    /// What to do with them.
    pub action: RouteAction,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStorable {
    /// The status is not in the configured set.
    Status,
    /// `Cache-Control: no-store` on the request or response.
    NoStore,
    /// `Cache-Control: private` (a shared cache must not store it).
    Private,
    /// `Cache-Control: no-cache` on the response (it must be revalidated on every use).
    NoCache,
    /// The response sets a cookie, and storing those is off.
    SetCookie,
    /// The request carried `Authorization` and the response did not allow sharing.
    Authorization,
    /// `Vary: *`.
    VaryStar,
    /// A lifetime of zero.
    ZeroLifetime,
}

/// The storage policy: route rules, default lifetime, statuses, cookies.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<RouteRule>,
    default_lifetime: Duration,
    statuses: HashSet<u16>,
    store_set_cookie: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default_lifetime: DEFAULT_LIFETIME,
            statuses: DEFAULT_STATUSES.into_iter().collect(),
            store_set_cookie: false,
        }
    }
}

impl Policy {
    /// Adds a route rule. Exact rules win over patterns, patterns over prefixes, and the
    /// longest prefix over shorter ones.
    pub fn add_rule(&mut self, rule: RouteRule) {
        self.rules.push(rule);
    }

    /// Sets the lifetime of routes no rule names.
    pub fn set_default_lifetime(&mut self, lifetime: Duration) {
        self.default_lifetime = lifetime;
    }

    /// Replaces the set of statuses that may be stored.
    pub fn set_statuses(&mut self, statuses: impl IntoIterator<Item = u16>) {
        self.statuses = statuses.into_iter().collect();
    }

    /// Whether responses with `Set-Cookie` may be stored.
    pub fn set_store_set_cookie(&mut self, store: bool) {
        self.store_set_cookie = store;
    }

    /// The default lifetime.
    pub fn default_lifetime(&self) -> Duration {
        self.default_lifetime
    }

    /// Whether the cache handles this method at all (GET and HEAD).
    pub fn is_cacheable_method(method: &Method) -> bool {
        method == Method::GET || method == Method::HEAD
    }

    /// The route's lifetime, or `None` when its rule turns caching off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_memcache::policy::{Policy, RouteAction, RouteMatch, RouteRule};
    ///
    /// let mut policy = Policy::default();
    /// policy.add_rule(RouteRule {
    ///     matcher: RouteMatch::Prefix("/api/".into()),
    ///     action: RouteAction::Lifetime(Duration::from_secs(30)),
    /// });
    /// policy.add_rule(RouteRule {
    ///     matcher: RouteMatch::Exact("/api/live".into()),
    ///     action: RouteAction::NoCache,
    /// });
    /// assert_eq!(policy.route_lifetime("/api/users", None), Some(Duration::from_secs(30)));
    /// assert_eq!(policy.route_lifetime("/api/live", None), None);
    /// assert_eq!(policy.route_lifetime("/", None), Some(Duration::from_secs(3600)));
    /// ```
    pub fn route_lifetime(&self, path: &str, pattern: Option<&str>) -> Option<Duration> {
        let exact = self
            .rules
            .iter()
            .find(|r| matches!(&r.matcher, RouteMatch::Exact(p) if p == path));
        let by_pattern = || {
            let pattern = pattern?;
            self.rules
                .iter()
                .find(|r| matches!(&r.matcher, RouteMatch::Pattern(p) if p == pattern))
        };
        let by_prefix = || {
            self.rules
                .iter()
                .filter_map(|r| match &r.matcher {
                    RouteMatch::Prefix(p) if path.starts_with(p.as_str()) => Some((p.len(), r)),
                    _ => None,
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, r)| r)
        };
        match exact.or_else(by_pattern).or_else(by_prefix) {
            Some(RouteRule {
                action: RouteAction::NoCache,
                ..
            }) => None,
            Some(RouteRule {
                action: RouteAction::Lifetime(lifetime),
                ..
            }) => Some(*lifetime),
            None => Some(self.default_lifetime),
        }
    }

    /// Whether a response may be stored, given the request's headers.
    pub fn storable(
        &self,
        request_headers: &HeaderMap,
        status: StatusCode,
        response_headers: &HeaderMap,
    ) -> Result<(), NotStorable> {
        if !self.statuses.contains(&status.as_u16()) {
            return Err(NotStorable::Status);
        }
        let request_cc = CacheControl::parse(request_headers);
        let cc = CacheControl::parse(response_headers);
        if cc.no_store || request_cc.no_store {
            return Err(NotStorable::NoStore);
        }
        if cc.private {
            return Err(NotStorable::Private);
        }
        if cc.no_cache {
            return Err(NotStorable::NoCache);
        }
        if !self.store_set_cookie && response_headers.contains_key(header::SET_COOKIE) {
            return Err(NotStorable::SetCookie);
        }
        // RFC 9111 §3.5: only these directives let a shared cache store a response to an
        // authenticated request.
        if request_headers.contains_key(header::AUTHORIZATION)
            && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
        {
            return Err(NotStorable::Authorization);
        }
        if vary_names(response_headers).any(|name| name == "*") {
            return Err(NotStorable::VaryStar);
        }
        Ok(())
    }
}

/// The lower-cased field names a response's `Vary` lists.
pub fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
}

/// A request header's value normalised for `Vary` matching: all lines joined with `, `,
/// runs of white space folded, ends trimmed. `None` when absent.
pub fn normalized_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let joined = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    Some(
        joined
            .split(',')
            .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn cache_control_parsing() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "no-cache=\"set-cookie, x-a\", max-age=10"),
            ("cache-control", "MAX-AGE=5, s-maxage=abc, private"),
        ]));
        assert!(cc.no_cache && cc.private && !cc.public);
        assert_eq!(cc.max_age, Some(5), "most restrictive wins");
        assert_eq!(cc.s_maxage, Some(0), "invalid means stale");
    }

    #[test]
    fn storability() {
        let policy = Policy::default();
        let none = HeaderMap::new();
        assert_eq!(policy.storable(&none, StatusCode::OK, &none), Ok(()));
        assert_eq!(
            policy.storable(&none, StatusCode::CREATED, &none),
            Err(NotStorable::Status)
        );
        let cases = [
            (&[("cache-control", "no-store")][..], NotStorable::NoStore),
            (&[("cache-control", "private")][..], NotStorable::Private),
            (&[("cache-control", "no-cache")][..], NotStorable::NoCache),
            (&[("set-cookie", "a=b")][..], NotStorable::SetCookie),
            (&[("vary", "accept, *")][..], NotStorable::VaryStar),
        ];
        for (response, reason) in cases {
            assert_eq!(
                policy.storable(&none, StatusCode::OK, &headers(response)),
                Err(reason)
            );
        }
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            policy.storable(&auth, StatusCode::OK, &none),
            Err(NotStorable::Authorization)
        );
        for allow in ["public", "s-maxage=10", "must-revalidate"] {
            let response = headers(&[("cache-control", allow)]);
            assert_eq!(
                policy.storable(&auth, StatusCode::OK, &response),
                Ok(()),
                "{allow}"
            );
        }
        let no_store_request = headers(&[("cache-control", "no-store")]);
        assert_eq!(
            policy.storable(&no_store_request, StatusCode::OK, &none),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn hop_by_hop_includes_connection_tokens() {
        let map = headers(&[("connection", "close, X-Custom")]);
        assert!(is_hop_by_hop(&header::TRANSFER_ENCODING, &map));
        assert!(is_hop_by_hop(&HeaderName::from_static("x-custom"), &map));
        assert!(!is_hop_by_hop(&header::CONTENT_TYPE, &map));
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
    }

    #[test]
    fn vary_values_are_normalised() {
        let map = headers(&[
            ("accept-encoding", "gzip,   br"),
            ("accept-encoding", " deflate "),
        ]);
        assert_eq!(
            normalized_header(&map, "accept-encoding").as_deref(),
            Some("gzip, br, deflate")
        );
        assert_eq!(normalized_header(&map, "accept"), None);
        let names: Vec<_> = vary_names(&headers(&[("vary", "Accept-Encoding, ACCEPT")])).collect();
        assert_eq!(names, ["accept-encoding", "accept"]);
    }
}
