//! Route rules: which requests a rule picks, and what it decides for them.
//!
//! A rule is matched against three readings of the request's path. The *rule reading*
//! ([`rule_path`]) is the path as an ordinary decoder sees it. The *origin reading*
//! ([`origin_reading`]) is the path as the most lenient origin might resolve it (case
//! folded, Unicode letters whose case mapping is ASCII too, escapes decoded again, IIS's `%u` escapes, overlong UTF-8, fullwidth forms and
//! NFKC's other forms of path delimiters read as ASCII, the rest as NFKC writes it, `\` as `/`, dot segments, `;` parameters, white space around segments
//! and Windows' trailing dots and spaces gone; cut at an escaped delimiter, and where it is cut, read on past it as
//! well; and with `;` parameters dropped before decoding, as Tomcat drops them). The
//! path as sent is a third reading (a strict router's). Each reading picks a lifetime and
//! the shortest wins; a `no_cache` rule in any turns caching off. A private page's
//! `no_cache` rule has to hold for every spelling some origin answers with that page, or an
//! attacker lures a victim to `/Account`, `/x/..%2Faccount` or `/account;.css`, the
//! victim's page is stored, and the attacker reads it (web cache deception); and a lifetime
//! rule must not lengthen the lifetime of a path that only some readings put under it
//! (`/static/..%2Faccount` or `/%73tatic/x` under a rule for `/static/`, with the default
//! lifetime 0). Caching fewer of those odd spellings is the price, never a wrong answer.

use std::borrow::Cow;
use std::time::Duration;

/// How a route rule picks requests.
///
/// `Exact` and `Prefix` rules see the path (and read their own) as an origin that
/// normalises it may: escaped unreserved characters decoded (`/%61ccount` is `/account`)
/// and runs of `/` as one (`//account` is `/account`). A rule that turns caching off
/// ([`no_cache`]) also holds for every spelling a lenient origin resolves to its path: in
/// any letter case (non-ASCII letters too, `Ü` as `ü`, `ς` as `σ`, `և` as `եւ`; `ſ`, the
/// Kelvin sign, `ı`, `İ`, `ß` and ligatures like `ﬁ` read as the ASCII letters their case
/// mappings give), with escapes decoded (twice, `%252F` as `/`; IIS's `%u002e` too, and
/// an overlong UTF-8 `%c0%ae`, a fullwidth `%ef%bc%8e` or NFKC's `‥` and `﹒` read as
/// dots), every other compatibility form as NFKC writes it (`𝐚`, `ⓐ`, `ᵃ` as `a`) and a
/// letter with combining marks as the letter they compose (`e` + U+0301 as `é`), `\`
/// read as `/`,
/// dot segments resolved (`/x/../account`), `;` parameters dropped (`/account;v=1`; also
/// as sent, before decoding, as Tomcat does: `/account;%2F..%2Fx`),
/// white space around a segment trimmed as Spring does (`/%20account`) and its trailing
/// dots and spaces dropped as Windows does (`/account.`), cut at
/// an escaped `?`, `#`, NUL or line break (`/account%0A`) or read on past one
/// (`/x%3F/../account`), and with or without a trailing slash. A lifetime rule lengthens
/// a lifetime only where every reading puts the path under it: the path as sent (as
/// axum's router matches it), as decoded above, and as a lenient origin resolves it. `/static/..%2Faccount` (a lenient origin's `/account`) and
/// `/%73tatic/x` or `//static/x` (no `/static/` path to a strict router) get the shortest
/// of the readings' lifetimes, so "cache only `/static/`" (a default lifetime of 0) never
/// stores another route's page for it.
///
/// `Exact` and `Prefix` rules are literal paths. One written as other frameworks write
/// routes, with a glob or a route parameter (`/account/*`, `/account/**`,
/// `/account/{id}`, `/account/:id`), matches no request as text: it is also read as a
/// route pattern (`*` or `**` taking the rest of the path, or none of it: `/account/**`
/// covers `/account` too, as Spring's does), where it only restricts: a `no_cache` rule
/// keeps what it names out of the cache (and possibly more), a lifetime rule caps the
/// lifetime there (it shortens, never lengthens). Such a rule is logged as a warning
/// when it is added.
///
/// [`no_cache`]: crate::cache::MemcacheLayer::no_cache
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteMatch {
    /// The request path, exactly: `/account.css` and `/account/x` are other paths (a
    /// [`no_cache`] rule also covers `/account/` and the odd spellings above). When the
    /// application answers other paths as it answers this one (a `.:format` suffix, a
    /// catch-all below it), a `no_cache` rule for a private page needs
    /// [`Prefix`](Self::Prefix), or an attacker who lures a victim to `/account.css`
    /// then reads the victim's page from the cache (web cache deception). Per-user pages
    /// should say `Cache-Control: private` in any case (SECURITY.md).
    ///
    /// [`no_cache`]: crate::cache::MemcacheLayer::no_cache
    Exact(String),
    /// Any path that starts with this prefix.
    Prefix(String),
    /// axum's `MatchedPath` (the route pattern, e.g. `/users/{id}`), present when the layer
    /// is added with `route_layer` and the `axum` feature is on. The router matched the
    /// path as sent; where a lenient origin reads the path (its parameters decoded, dot
    /// segments resolved, as above) outside the pattern (`/static/..%2Faccount` for
    /// `/static/{*path}`, whose handler may hand `../account` on to a proxy or a file
    /// server), the shortest lifetime of the readings applies, and a `no_cache` rule the
    /// reading falls under holds. So does one for a path inside the pattern where the
    /// pattern still covers the reading (`/x/..%2Faccount`, routed to `/{*path}`, reads
    /// `/account`); a pattern inside a `no_cache` area stays the exception to it.
    ///
    /// For a request that names no route pattern (a layer wrapped around the whole router
    /// rather than added with `Router::layer` or `route_layer`, a server other than
    /// axum, or no `axum` feature), a `Pattern` rule only restricts, for every path its
    /// pattern covers in any of the readings above: a `no_cache` rule turns caching off,
    /// a lifetime rule caps the lifetime (it shortens, never lengthens). So a rule
    /// protects what it names wherever the layer sits.
    Pattern(String),
}

/// What a route rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteAction {
    /// Cache for this long.
    Lifetime(Duration),
    /// Never cache (requests bypass the cache).
    NoCache,
}

/// One per-route rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteRule {
    /// Which requests.
    pub matcher: RouteMatch,
    /// What to do with them.
    pub action: RouteAction,
}

/// The route rules of one layer.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteRules {
    /// Every rule, its `Exact` or `Prefix` path in the rule reading.
    rules: Vec<RouteRule>,
    /// The `Exact` and `Prefix` rules in the origin reading.
    origin_rules: Vec<OriginRule>,
    /// Rules read as route patterns too (see [`PatternReading`]).
    pattern_readings: Vec<PatternReading>,
}

/// A rule read as an axum route pattern, matched against every reading of the path: an
/// `Exact` or `Prefix` rule written with pattern syntax (`/account/*`, `/account/{id}`,
/// `/account/:id`, as other frameworks write routes), which as literal text matches no
/// request, and a `Pattern` rule, for requests that name no route pattern (a layer around
/// the whole router, a hyper server, no `axum` feature), which it could not otherwise
/// match. Read so, a rule only restricts: a `no_cache` rule turns caching off for what the
/// pattern covers, a lifetime rule caps the lifetime there (it shortens, never lengthens).
/// It may cover more paths than meant, never fewer: caching less is the price of a rule
/// that would otherwise do nothing.
#[derive(Clone, Debug)]
struct PatternReading {
    pattern: String,
    action: RouteAction,
    /// A `Prefix` rule: paths whose first segments the pattern covers.
    prefix: bool,
    /// From a `Pattern` rule: only for requests without a route pattern of their own.
    unrouted_only: bool,
    /// For a glob written last (`/account/**`, `/account/*`), the pattern without it
    /// (`/account`): Spring's `/account/**` covers `/account` itself, where an axum
    /// catch-all needs a segment. `None` for `Pattern` rules (axum's own meaning).
    root: Option<String>,
}

impl PatternReading {
    fn new(pattern: &str, action: RouteAction, prefix: bool, unrouted_only: bool) -> Self {
        let root = (!unrouted_only)
            .then(|| {
                let trimmed = pattern.trim_end_matches('/');
                let (root, last) = trimmed.rsplit_once('/')?;
                last.starts_with('*').then(|| format!("{root}/"))
            })
            .flatten();
        Self {
            pattern: pattern.to_owned(),
            action,
            prefix,
            unrouted_only,
            root,
        }
    }

    fn covers(&self, reading: &str) -> bool {
        self.pattern_covers(reading)
            || self
                .root
                .as_deref()
                .is_some_and(|root| pattern_covers(root, reading))
    }

    fn pattern_covers(&self, reading: &str) -> bool {
        if !self.prefix {
            return pattern_covers(&self.pattern, reading);
        }
        // The reading's first segments, as many as the pattern has (a catch-all takes
        // the rest anyway); fewer are no path under it.
        let wanted = self.pattern.split('/').filter(|p| !p.is_empty()).count();
        let start = reading
            .split('/')
            .filter(|segment| !segment.is_empty())
            .take(wanted)
            .fold(
                String::with_capacity(reading.len()),
                |mut start, segment| {
                    start.push('/');
                    start.push_str(segment);
                    start
                },
            );
        pattern_covers(&self.pattern, &start)
    }
}

/// Whether a rule's path is written with route-pattern syntax: a segment holding a glob
/// (`*`), a parameter in braces (`{id}`), or starting with `:` (axum 0.7, Express).
fn has_pattern_syntax(path: &str) -> bool {
    path.split('/').any(|segment| {
        segment.contains('*')
            || segment.starts_with(':')
            || segment
                .find('{')
                .is_some_and(|open| segment[open..].contains('}'))
    })
}

/// An `Exact` or `Prefix` rule in the origin reading.
#[derive(Clone, Debug)]
struct OriginRule {
    path: String,
    prefix: bool,
    /// A prefix written with a trailing `/` (`/account/`) covers whole segments only in
    /// the origin reading, which drops trailing slashes: `/accounting` stays its own.
    /// A segment's format suffix is no part of it (Rails' `/account(.:format)` answers
    /// `/account.json` as `/account`, which the rule covers): `/account.json` is under
    /// it (review SD), for a `no_cache` rule only. To another origin (case-blind, with no
    /// format suffix) `/account/avatars.json` is no path under `/account/avatars/`: a
    /// lifetime rule for that prefix, the longest, outranked `no_cache(Prefix("/account"))`
    /// there and stored the page (review SF).
    whole_segments: bool,
    action: RouteAction,
}

impl OriginRule {
    fn covers(&self, path: &str) -> bool {
        if !self.prefix {
            return path == self.path;
        }
        path.starts_with(&self.path)
            && (!self.whole_segments
                || path.len() == self.path.len()
                || self.path.ends_with('/')
                || match path.as_bytes().get(self.path.len()) {
                    Some(b'/') => true,
                    Some(b'.') => matches!(self.action, RouteAction::NoCache),
                    _ => false,
                })
    }
}

/// Which kind of rule decided a path.
enum Decided<'r> {
    ByPath(&'r RouteAction),
    /// The route pattern's rule, with the pattern.
    ByPattern(&'r str, &'r RouteAction),
    Default,
}

impl RouteRules {
    /// Adds a rule. Exact rules win over patterns, patterns over prefixes, and the
    /// longest prefix over shorter ones; of rules with one matcher, the strictest
    /// (`no_cache`, else the shortest lifetime), in whatever order they were added.
    pub(crate) fn add(&mut self, mut rule: RouteRule) {
        // Written as request paths are read, or a rule spelled with `//` or an escape
        // would match nothing.
        if let RouteMatch::Exact(path) | RouteMatch::Prefix(path) = &mut rule.matcher {
            if let Cow::Owned(read) = rule_path(path) {
                *path = read;
            }
        }
        match &rule.matcher {
            RouteMatch::Pattern(pattern) => {
                self.pattern_readings
                    .push(PatternReading::new(pattern, rule.action, false, true))
            }
            RouteMatch::Exact(path) | RouteMatch::Prefix(path) if has_pattern_syntax(path) => {
                tracing::warn!(
                    rule = ?rule.matcher,
                    action = ?rule.action,
                    "a route rule written with a glob or a route parameter matches no path as \
                     text; it is also read as a route pattern (`*` taking the rest of the \
                     path), where it only restricts: no_cache turns caching off, a lifetime \
                     caps it"
                );
                let prefix = matches!(rule.matcher, RouteMatch::Prefix(_));
                self.pattern_readings
                    .push(PatternReading::new(path, rule.action, prefix, false));
            }
            RouteMatch::Exact(_) | RouteMatch::Prefix(_) => {}
        }
        // Lifetime rules too: a path that is under one as written but not as the origin
        // reads it (`/static/..%2Faccount`) must not get its lifetime.
        let (path, prefix) = match &rule.matcher {
            RouteMatch::Exact(path) => (path, false),
            RouteMatch::Prefix(path) => (path, true),
            RouteMatch::Pattern(_) => {
                self.rules.push(rule);
                return;
            }
        };
        self.origin_rules.push(OriginRule {
            path: origin_reading(path),
            prefix,
            whole_segments: prefix && path.ends_with('/'),
            action: rule.action,
        });
        self.rules.push(rule);
    }

    /// The route's lifetime, or `None` when a rule turns caching off for it in any
    /// reading of its path. Each reading (the path as sent, the rule reading, the origin
    /// reading) picks its rule's lifetime (`default` where no rule names it) and the
    /// shortest wins: a lifetime rule lengthens nothing that some origin routes elsewhere
    /// ("cache only `/static/`" must store neither `/static/..%2Faccount`, a lenient
    /// origin's `/account`, nor `/%73tatic/x`, a strict router's fallback), and one the
    /// origin reading falls under shortens an odd spelling's lifetime like its own.
    pub(crate) fn lifetime(
        &self,
        path: &str,
        pattern: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        // No rule to match (the proxy never has one): the path is not read for them, a
        // decoding pass and a search on every request.
        if self.rules.is_empty() {
            return Some(default);
        }
        let read = rule_path(path);
        let cap = self.pattern_cap(path, &read, pattern)?;
        let lifetime = self.lifetime_read(path, &read, pattern, default)?;
        Some(lifetime.min(cap))
    }

    /// [`lifetime`](Self::lifetime) by the rules as written, `read` being the path's rule
    /// reading.
    fn lifetime_read(
        &self,
        path: &str,
        read: &str,
        pattern: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        let mut as_written = match self.decide(read, pattern) {
            Decided::ByPath(action) => lifetime_of(action)?,
            Decided::ByPattern(pattern, action) => {
                return self.pattern_lifetime(path, pattern, action, default);
            }
            Decided::Default => default,
        };
        // The path as sent is a reading too: a router that matches it as it came (axum's)
        // takes `/%73tatic/x` or `//static/x` for no `/static/` path, and may answer it
        // with a page of the user's own (its fallback), so a rule the decoded reading puts
        // it under lengthens nothing.
        if read != path {
            let as_sent = match self.decide(path, None) {
                Decided::ByPath(action) | Decided::ByPattern(_, action) => lifetime_of(action)?,
                Decided::Default => default,
            };
            as_written = as_written.min(as_sent);
        }
        if self.origin_rules.is_empty() {
            return Some(as_written);
        }
        // A path no origin reads otherwise is its own origin reading: no allocation.
        if !may_read_otherwise(path) {
            return Some(as_written.min(self.origin_lifetime(path, default)?));
        }
        let mut as_resolved = as_written;
        for reading in every_origin_reading(path)? {
            as_resolved = as_resolved.min(self.origin_lifetime(&reading, default)?);
        }
        Some(as_resolved)
    }

    /// What the rules read as patterns ([`PatternReading`]) that cover a reading of `path`
    /// (as sent, `read`, or as a lenient origin resolves it) allow: `None` when one is a
    /// `no_cache` rule, else the shortest of their lifetimes (`Duration::MAX` when none
    /// covers it). `pattern` is the request's own route pattern, if it names one.
    fn pattern_cap(&self, path: &str, read: &str, pattern: Option<&str>) -> Option<Duration> {
        let mut applicable = self
            .pattern_readings
            .iter()
            .filter(|rule| pattern.is_none() || !rule.unrouted_only)
            .peekable();
        if applicable.peek().is_none() {
            return Some(Duration::MAX);
        }
        let resolved = every_origin_reading(path)?;
        let covering = applicable.filter(|rule| {
            [path, read]
                .into_iter()
                .chain(resolved.iter().map(String::as_str))
                .any(|reading| rule.covers(reading))
        });
        match strictest(covering.map(|rule| (&rule.action, ()))) {
            Some((action, ())) => lifetime_of(action),
            None => Some(Duration::MAX),
        }
    }

    /// The lifetime of a path the router matched to a route `pattern` with a rule. The
    /// router matched the path as sent, and the route's rule decides for what it serves;
    /// but a handler gets its parameters decoded (`/static/{*path}` gets `../account` for
    /// `/static/..%2Faccount`) and may hand them on (a proxy, a file server) to an origin
    /// that resolves them elsewhere. An origin reading the pattern no longer covers is
    /// another route's path: the shortest lifetime wins, as for the other rules. One it
    /// still covers may be another route's too (a catch-all `/{*path}` covers `/account`,
    /// which the router sends to its own route when asked plainly): a `no_cache` rule
    /// for a path inside the pattern holds (see [`Self::no_cache_within`]).
    fn pattern_lifetime(
        &self,
        path: &str,
        pattern: &str,
        action: &RouteAction,
        default: Duration,
    ) -> Option<Duration> {
        let mut lifetime = lifetime_of(action)?;
        // Where the pattern does not name the path as sent, it is a nested router's
        // stripped path (`/users/7` for `/api/users/{id}`): the full path was checked.
        if !may_read_otherwise(path) || !pattern_covers(pattern, path) {
            return Some(lifetime);
        }
        for reading in every_origin_reading(path)? {
            if !pattern_covers(pattern, &reading) {
                lifetime = lifetime.min(self.origin_lifetime(&reading, default)?);
            } else if self.no_cache_within(pattern, &reading) {
                return None;
            }
        }
        Some(lifetime)
    }

    /// The lifetime the origin rules give a path in an origin reading (`default` where
    /// none covers it), or `None` for a `no_cache` rule's.
    fn origin_lifetime(&self, reading: &str, default: Duration) -> Option<Duration> {
        match self.origin_rule(reading) {
            Some(rule) => lifetime_of(&rule.action),
            None => Some(default),
        }
    }

    /// The origin rule that decides an origin reading: an exact one, else the longest
    /// prefix.
    fn origin_rule(&self, reading: &str) -> Option<&OriginRule> {
        // The strictest of equals, whatever the order the rules were added in (see
        // `decide`): two rules may also read alike here though written apart
        // (`/Account` and `/account`).
        let exact = self
            .origin_rules
            .iter()
            .filter(|rule| !rule.prefix && rule.covers(reading))
            .min_by_key(|rule| strictness(&rule.action));
        let by_prefix = || {
            let longest = self
                .origin_rules
                .iter()
                .filter(|rule| rule.prefix && rule.covers(reading))
                .map(|rule| rule.path.len())
                .max()?;
            self.origin_rules
                .iter()
                .filter(|rule| rule.prefix && rule.path.len() == longest && rule.covers(reading))
                .min_by_key(|rule| strictness(&rule.action))
        };
        exact.or_else(by_prefix)
    }

    /// Whether a `no_cache` rule for a path `pattern` covers decides `reading`: a
    /// private route inside the pattern's (`/account` in `/{*path}`), which the router
    /// gives a route of its own when asked plainly. A pattern inside a `no_cache` rule's
    /// area (`/users/{name}/avatar` in `/users`) is the operator's exception to it, and
    /// keeps its lifetime.
    fn no_cache_within(&self, pattern: &str, reading: &str) -> bool {
        self.origin_rule(reading).is_some_and(|rule| {
            matches!(rule.action, RouteAction::NoCache) && pattern_covers(pattern, &rule.path)
        })
    }

    /// The rule that decides `path` (in the rule reading) or the route `pattern`.
    fn decide(&self, path: &str, pattern: Option<&str>) -> Decided<'_> {
        // Of several rules with one matcher (a base layer's lifetime and an application's
        // `no_cache` for the same path), the strictest decides, whatever the order they
        // were added in: the first one won for `Exact` and `Pattern` rules, the last for
        // `Prefix` rules, so a `no_cache` rule was ignored in one order.
        let exact = strictest(self.rules.iter().filter_map(|r| match &r.matcher {
            RouteMatch::Exact(p) if p == path => Some((&r.action, ())),
            _ => None,
        }));
        if let Some((action, ())) = exact {
            return Decided::ByPath(action);
        }
        let by_pattern = pattern.and_then(|pattern| {
            strictest(self.rules.iter().filter_map(|r| match &r.matcher {
                RouteMatch::Pattern(p) if p == pattern => Some((&r.action, p.as_str())),
                _ => None,
            }))
        });
        if let Some((action, pattern)) = by_pattern {
            return Decided::ByPattern(pattern, action);
        }
        let longest = self
            .rules
            .iter()
            .filter_map(|r| match &r.matcher {
                RouteMatch::Prefix(p) if path.starts_with(p.as_str()) => Some(p.len()),
                _ => None,
            })
            .max();
        let by_prefix = longest.and_then(|longest| {
            strictest(self.rules.iter().filter_map(|r| match &r.matcher {
                RouteMatch::Prefix(p) if p.len() == longest && path.starts_with(p.as_str()) => {
                    Some((&r.action, ()))
                }
                _ => None,
            }))
        });
        by_prefix.map_or(Decided::Default, |(action, ())| Decided::ByPath(action))
    }
}

/// The strictest of several actions (with what goes with each): `no_cache`, else the
/// shortest lifetime; the first of equals.
fn strictest<'r, T>(
    candidates: impl Iterator<Item = (&'r RouteAction, T)>,
) -> Option<(&'r RouteAction, T)> {
    candidates.min_by_key(|(action, _)| strictness(action))
}

/// How strict an action is, lowest first: `no_cache`, then lifetimes from the shortest.
fn strictness(action: &RouteAction) -> (bool, Duration) {
    match action {
        RouteAction::NoCache => (false, Duration::ZERO),
        RouteAction::Lifetime(lifetime) => (true, *lifetime),
    }
}

/// Whether an axum route `pattern` (`/users/{id}`, `/static/{*path}`, `/{file}.png`)
/// matches an origin reading (lower-case, so literal segments compare in any case). A
/// segment with a parameter matches any segment that starts and ends with the literal
/// text around it.
fn pattern_covers(pattern: &str, reading: &str) -> bool {
    let mut segments = reading.split('/').skip(1).filter(|s| !s.is_empty());
    for part in pattern.split('/').skip(1).filter(|p| !p.is_empty()) {
        // A catch-all (`{*rest}`, axum 0.7's `*rest`) takes what is left, at least a
        // segment (axum routes no empty one to it: `/static` is not `/static/{*path}`'s).
        if part.starts_with("{*") || part.starts_with('*') {
            return segments.next().is_some();
        }
        let Some(segment) = segments.next() else {
            return false;
        };
        let matches = match part.split_once('{') {
            Some((before, after)) => {
                let after = after.rsplit_once('}').map_or("", |(_, after)| after);
                segment.len() > before.len() + after.len()
                    && starts_with_ignore_case(segment, before)
                    && ends_with_ignore_case(segment, after)
            }
            // axum 0.7's `:id`.
            None if part.starts_with(':') => true,
            None => segment.eq_ignore_ascii_case(part),
        };
        if !matches {
            return false;
        }
    }
    segments.next().is_none()
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text
            .get(text.len() - suffix.len()..)
            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

fn lifetime_of(action: &RouteAction) -> Option<Duration> {
    match action {
        RouteAction::NoCache => None,
        RouteAction::Lifetime(lifetime) => Some(*lifetime),
    }
}

/// A request path as route rules see it: percent-encoded unreserved characters decoded
/// (RFC 3986 §6.2.2.2), other escapes kept with upper-case hex (§6.2.2.1), and runs of
/// `/` read as one. The cache key keeps the path byte for byte; this is only what a rule
/// is matched against.
pub(crate) fn rule_path(path: &str) -> Cow<'_, str> {
    let decoded = decode_unreserved(path);
    // Path normalisers answer `//account` and `/account//x` as `/account` (tower-http's
    // `NormalizePathLayer` trims leading slashes, nginx merges slashes): a `no_cache` rule
    // for `/account` must hold for them too, or a victim lured there fills an entry.
    if !decoded.contains("//") {
        return decoded;
    }
    let mut merged = String::with_capacity(decoded.len());
    let mut after_slash = false;
    for c in decoded.chars() {
        if !(c == '/' && after_slash) {
            merged.push(c);
        }
        after_slash = c == '/';
    }
    Cow::Owned(merged)
}

/// `path` with percent-encoded unreserved characters decoded, other escapes upper-cased.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(byte) => {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(byte));
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 0xf)]));
                }
                i += 3;
            }
            None => {
                // The rest up to the next '%' as it is (a `Uri` path is ASCII).
                let next = path[i + 1..].find('%').map_or(path.len(), |at| i + 1 + at);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

/// The byte `%XY` at `at` stands for, if `bytes[at..]` starts with an escape.
fn escape_at(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

/// Whether an origin might read `path` as another path than its rule reading: it holds
/// an escape, a `\`, a `;`, an upper-case letter, a non-ASCII byte, a dot segment, a
/// segment ending in `.`, an empty segment or a trailing slash. Most paths hold none: they are their own origin reading.
fn may_read_otherwise(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() > 1 && bytes.last() == Some(&b'/')
        || bytes.iter().enumerate().any(|(i, byte)| match byte {
            // Non-ASCII: UTF-8 sent raw, which may spell an ASCII character.
            b'%' | b'\\' | b';' | b'A'..=b'Z' | 0x80.. => true,
            b'/' => matches!(bytes.get(i + 1), Some(b'/' | b'.')),
            // A segment's trailing dot, which Windows drops (`/account.`).
            b'.' => matches!(bytes.get(i + 1), None | Some(b'/')),
            _ => false,
        })
}

/// How many times the origin reading decodes escapes: an origin that decodes twice (a
/// proxy and a framework, each decoding once) reads `%252F` as `/`; a third layer of
/// escapes is no spelling any origin we know of resolves.
const DECODING_PASSES: usize = 2;

/// `path` as the most lenient origin might resolve it: escapes decoded (up to
/// [`DECODING_PASSES`] times, IIS's `%uXXXX` too, with overlong UTF-8 and fullwidth
/// forms of ASCII characters read as those characters, and the text normalised as NFKC), `\` as `/` (IIS, Windows file
/// servers), white space around a segment (Spring) and its trailing dots and spaces
/// (Windows) dropped, cut at a decoded
/// `?`, `#`, NUL (OpenLiteSpeed) or line break (nginx regex locations), letters in lower
/// case (case-insensitive routers and file systems; non-ASCII letters too, and those
/// whose case mapping is ASCII, such as `ſ`, as that ASCII), each segment's `;` parameters
/// dropped (Tomcat, Spring, Jetty), dot segments resolved (RFC 3986 §5.2.4), empty
/// segments and a trailing slash dropped. Only ever used to turn caching off or shorten
/// a lifetime.
///
/// A path NFKC would swell past [`SWELL_LIMIT`] has no reading (see
/// [`compatibility_form`]): here, for a rule's own path, it is read as written.
pub(crate) fn origin_reading(path: &str) -> String {
    origin_readings(path).map_or_else(|| path.to_owned(), |(cut, _)| cut)
}

/// Every reading of `path` by a lenient origin: [`origin_readings`]', and where the path
/// holds `;` parameters, those of the path with each one dropped as it came, up to the
/// next `/` as sent, before anything is decoded. Tomcat (and Spring's `UrlPathHelper`)
/// cut them so: an escaped `/` or `\` inside one is part of the parameter, so
/// `/account;%2F..%2Fnews` is their `/account` and `/static/x/..;%2Fb/..;/account` their
/// `/static/x/../../account`, where decoding first read `/news` and `/static/account`
/// (review SD). The first reading is [`origin_reading`]'s. `None` as for
/// [`origin_readings`].
fn every_origin_reading(path: &str) -> Option<Vec<String>> {
    let (cut, read_on) = origin_readings(path)?;
    let mut readings = Vec::with_capacity(4);
    readings.push(cut);
    readings.extend(read_on);
    if path.contains(';') {
        let dropped = path
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/");
        let (cut, read_on) = origin_readings(&dropped)?;
        readings.push(cut);
        readings.extend(read_on);
    }
    Some(readings)
}

/// [`origin_reading`], and where it cut the path, the reading of an origin that reads
/// on: nginx keeps an escaped `?`, `#` or line break as a byte of its segment and
/// resolves the dot segments after it, so `/static/x%3F/../../account` is its `/account`
/// (the cut alone read `/static/x`). `None` for a path NFKC would swell past
/// [`SWELL_LIMIT`]: a request's is not cached where rules read paths so.
fn origin_readings(path: &str) -> Option<(String, Option<String>)> {
    // Raw too: a request line may hold UTF-8 (`/x/．．/account`), which `Uri` keeps.
    let mut bytes = compatibility_form(fold_to_ascii(path.as_bytes().to_vec()))?;
    for _ in 0..DECODING_PASSES {
        if !bytes.contains(&b'%') {
            break;
        }
        bytes = compatibility_form(fold_to_ascii(decode_all(&bytes)))?;
    }
    bytes.make_ascii_lowercase();
    let end = bytes
        .iter()
        // A newline too: PCRE's `$` (nginx regex locations) matches before a final one.
        .position(|byte| matches!(byte, b'?' | b'#' | 0 | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    let read_on = (end < bytes.len()).then(|| lower_case(resolve_segments(&bytes)));
    Some((lower_case(resolve_segments(&bytes[..end])), read_on))
}

/// A reading with its non-ASCII letters in lower case too (`Ü` as `ü`), as routers that
/// compare without case by Unicode's rules read them (ASP.NET Core's `OrdinalIgnoreCase`,
/// Java's `equalsIgnoreCase`). What is left after [`fold_to_ascii`] lower-cases to no
/// ASCII byte but a letter before a combining mark (`ǰ`'s upper case is `J̌`), so no `/`
/// or `.` appears here that the segments were not resolved with.
///
/// Each character on its own, as those routers compare: `str::to_lowercase` writes `Σ`
/// as `ς` at a word's end and `σ` elsewhere, so a rule's `/ΛΟΓΑΡΙΑΣ` read `/λογαριας`,
/// no prefix of `/λογαριασμος`. And through its upper case: letters that upper-case
/// alike are one to them (`ς` and `σ`, `µ` and `μ`, `ϐ` and `β`), as `Ü` and `ü` are.
/// An upper case of several letters is read as those letters (`և` is `ԵՒ`, so `եւ`;
/// `ᾳ` is `ΑΙ`, so `αι`; `ŉ` is `ʼN`), as routers that compare in full upper case
/// (JavaScript's `toUpperCase`, Python's `casefold`) read it, the way `ß` is `ss`:
/// kept as it was, `/երևան` and `/երեւան` (two spellings of one Armenian word) were two
/// paths, and a `no_cache` rule written with one missed the other (review RL). Those
/// letters are never `/`, `.` or an escape, so no segment changes.
fn lower_case(reading: String) -> String {
    if reading.is_ascii() {
        return reading;
    }
    // Rarely longer: a few letters' upper cases are two or three (`ΐ` is three).
    let mut folded = String::with_capacity(reading.len());
    for c in reading.chars() {
        for upper in c.to_uppercase() {
            folded.extend(upper.to_lowercase());
        }
    }
    folded
}

/// Decoded, lower-cased path bytes resolved as [`origin_reading`] says: `\` as `/`, `;`
/// parameters, trailing dots and spaces, dot segments, empty segments and a trailing
/// slash gone.
fn resolve_segments(bytes: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in bytes.split(|byte| matches!(byte, b'/' | b'\\')) {
        let segment = match segment.iter().position(|byte| *byte == b';') {
            Some(at) => &segment[..at],
            None => segment,
        };
        let segment = trimmed(segment);
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut reading = Vec::with_capacity(bytes.len() + 1);
    for segment in &segments {
        reading.push(b'/');
        reading.extend_from_slice(segment);
    }
    if reading.is_empty() {
        reading.push(b'/');
    }
    String::from_utf8_lossy(&reading).into_owned()
}

/// A segment as lenient origins trim it: white space and control bytes around it gone
/// (Java's `String.trim`, as Spring's `trimTokens` applies it: CVE-2016-5007), then,
/// unless it is a dot segment, the dots and spaces it ends with (Win32 path
/// normalisation: IIS serves `/account.` and `/account%20` as `/account`).
fn trimmed(segment: &[u8]) -> &[u8] {
    let kept = |byte: &u8| *byte > b' ';
    let start = segment.iter().position(kept).unwrap_or(segment.len());
    let end = segment
        .iter()
        .rposition(kept)
        .map_or(start, |last| last + 1);
    let segment = &segment[start..end];
    if matches!(segment, b"." | b"..") {
        return segment;
    }
    let end = segment
        .iter()
        .rposition(|byte| !matches!(byte, b'.' | b' '))
        .map_or(0, |last| last + 1);
    &segment[..end]
}

/// Every escape in `bytes` decoded once: `%XY`, and IIS's `%uXXXX` (as UTF-8).
fn decode_all(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(byte) = escape_at(bytes, i) {
            out.push(byte);
            i += 3;
        } else if let Some(c) = wide_escape_at(bytes, i) {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            i += 6;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The character IIS's `%uXXXX` at `at` stands for (U+FFFD for a lone surrogate), if
/// `bytes[at..]` starts with one.
fn wide_escape_at(bytes: &[u8], at: usize) -> Option<char> {
    if bytes.get(at) != Some(&b'%') || !matches!(bytes.get(at + 1), Some(b'u' | b'U')) {
        return None;
    }
    let mut code = 0u32;
    for offset in 2..6 {
        code = (code << 4) | u32::from(hex_value(*bytes.get(at + offset)?)?);
    }
    Some(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
}

/// Decoded bytes as an origin that normalises Unicode by compatibility (NFKC: Python's
/// `unicodedata.normalize`, Java's `Normalizer`, applied before routing) reads them:
/// every compatibility form as its letters (`𝐚`, `ⓐ` and `ᵃ` as `a`, `ｱ` as `ア`, `①` as
/// `1`) and a letter followed by combining marks as the one letter they compose
/// (`e` + U+0301 as `é`, which a rule for `/café` is written with). [`fold_to_ascii`]'s
/// list has the delimiters among these; this is the rest (review RL's note), by Unicode's
/// own tables. Only the text that is UTF-8 is normalised, each run apart:
/// a byte that is not (an overlong form, half an escape yet to be decoded) stays as it
/// is, so a later pass still reads it.
///
/// `None` when the normal form is more than [`SWELL_LIMIT`] bytes longer: one character
/// may be 18 (U+FDFA), and a 64 KiB path of them took 49 ms to normalise and lower-case,
/// thirty times its plain reading, on every request an attacker sends. No path a route is
/// written for grows so (a halfwidth or fullwidth form is no longer, `㍿` is four
/// characters).
fn compatibility_form(bytes: Vec<u8>) -> Option<Vec<u8>> {
    use unicode_normalization::UnicodeNormalization;
    if bytes.is_ascii() {
        return Some(bytes);
    }
    let normal = |text: &str| {
        unicode_normalization::is_nfkc_quick(text.chars())
            == unicode_normalization::IsNormalized::Yes
    };
    if bytes.utf8_chunks().all(|chunk| normal(chunk.valid())) {
        return Some(bytes);
    }
    let limit = bytes.len().saturating_add(SWELL_LIMIT);
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().nfkc() {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            if out.len() > limit {
                return None;
            }
        }
        out.extend_from_slice(chunk.invalid());
    }
    // What it composed may be one of the fold's letters: `I` and a combining dot above
    // are `İ`, which the fold reads as `i`.
    Some(fold_to_ascii(out))
}

/// How many bytes NFKC may add to a path before [`compatibility_form`] gives up on it.
const SWELL_LIMIT: usize = 1024;

/// Decoded bytes with the non-ASCII spellings of ASCII characters that lenient decoders
/// read as those characters: overlong UTF-8 (`C0 AE` is `.` to IIS 4/5 and old Java
/// decoders, CVE-2000-0884, CVE-2008-2938), the fullwidth forms U+FF01 to U+FF5E (`．`,
/// `／`, `＼`: Windows' best-fit mapping and NFKC read them as `.`, `/`, `\`), the other
/// characters NFKC writes as path delimiters (`‥` U+2025 as `..`, `﹒` U+FE52 as `.`,
/// `﹨` U+FE68 as `\`, `;` U+037E as `;`, `﹪` U+FE6A as `%`, `℀` U+2100 as `a/c`: an
/// origin that normalises so before it resolves reads `/static/‥/account` as
/// `/account`), and the letters Unicode case mappings take to ASCII ones, which an origin that compares paths
/// without case by Unicode's rules reads as those letters: `ſ` (U+017F) upper-cases to `S`
/// and `ı` (U+0131) to `I` (Java's `equalsIgnoreCase`, JavaScript's and Python's
/// `upper()`), the Kelvin sign (U+212A) lower-cases to `k` and `İ` (U+0130) to `i`
/// (Java's `toLowerCase`), and `ß`, `ẞ` and the ligatures U+FB00 to U+FB06 case-fold to
/// their letters (`ss`, `ff`, `fi`, ...: JavaScript's `toUpperCase`, Python's `casefold`).
/// A fold is never longer than the bytes it replaces.
fn fold_to_ascii(bytes: Vec<u8>) -> Vec<u8> {
    if !bytes
        .iter()
        .any(|byte| matches!(byte, 0xc0..=0xc5 | 0xcd | 0xe0..=0xe2 | 0xef | 0xf0))
    {
        return bytes;
    }
    const LIGATURES: [&[u8]; 7] = [b"ff", b"fi", b"fl", b"ffi", b"ffl", b"st", b"st"];
    const DOTS: [&[u8]; 3] = [b".", b"..", b"..."];
    let continues = |byte: u8| byte & 0xc0 == 0x80;
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // The ASCII byte an overlong or fullwidth form stands for.
        let mut one = [0u8];
        let (ascii, len): (&[u8], usize) = match bytes[i..] {
            [lead @ (0xc0 | 0xc1), second, ..] if continues(second) => {
                one[0] = ((lead & 0x1f) << 6) | (second & 0x3f);
                (&one, 2)
            }
            [0xe0, second @ (0x80 | 0x81), third, ..] if continues(third) => {
                one[0] = ((second & 0x3f) << 6) | (third & 0x3f);
                (&one, 3)
            }
            [0xf0, 0x80, third @ (0x80 | 0x81), fourth, ..] if continues(fourth) => {
                one[0] = ((third & 0x3f) << 6) | (fourth & 0x3f);
                (&one, 4)
            }
            // U+FF01..U+FF3F (EF BC 81..BF) and U+FF40..U+FF5E (EF BD 80..9E): the
            // character 0xFEE0 below.
            [0xef, 0xbc, third @ 0x81..=0xbf, ..] => {
                one[0] = third - 0x60;
                (&one, 3)
            }
            [0xef, 0xbd, third @ 0x80..=0x9e, ..] => {
                one[0] = third - 0x20;
                (&one, 3)
            }
            // Case mappings to ASCII letters: ß, İ and ı, ſ, ẞ, the Kelvin sign, and
            // the ligatures U+FB00..U+FB06.
            [0xc3, 0x9f, ..] => (b"ss", 2),
            [0xc4, 0xb0 | 0xb1, ..] => (b"i", 2),
            [0xc5, 0xbf, ..] => (b"s", 2),
            [0xe1, 0xba, 0x9e, ..] => (b"ss", 3),
            [0xe2, 0x84, 0xaa, ..] => (b"k", 3),
            [0xef, 0xac, third @ 0x80..=0x86, ..] => (LIGATURES[usize::from(third - 0x80)], 3),
            // NFKC's path delimiters beyond the fullwidth forms (review RL): `;`
            // (U+037E, `;` even to NFC), the dot leaders and ellipses, `⁇`, the
            // account-of signs (`℀` is `a/c`), and the small and vertical forms.
            [0xcd, 0xbe, ..] => (b";", 2),
            [0xe2, 0x80, third @ 0xa4..=0xa6, ..] => (DOTS[usize::from(third - 0xa4)], 3),
            [0xe2, 0x81, 0x87, ..] => (b"??", 3),
            [0xe2, 0x84, third @ (0x80 | 0x81 | 0x85 | 0x86), ..] => {
                let sign: &[u8] = match third {
                    0x80 => b"a/c",
                    0x81 => b"a/s",
                    0x85 => b"c/o",
                    _ => b"c/u",
                };
                (sign, 3)
            }
            [0xef, 0xb8, third @ (0x94 | 0x96 | 0x99 | 0xb0), ..] => {
                let form: &[u8] = match third {
                    0x94 => b";",
                    0x96 => b"?",
                    0x99 => b"...",
                    _ => b"..",
                };
                (form, 3)
            }
            [
                0xef,
                0xb9,
                third @ (0x92 | 0x94 | 0x96 | 0x9f | 0xa8 | 0xaa),
                ..,
            ] => {
                let form: &[u8] = match third {
                    0x92 => b".",
                    0x94 => b";",
                    0x96 => b"?",
                    0x9f => b"#",
                    0xa8 => b"\\",
                    _ => b"%",
                };
                (form, 3)
            }
            _ => (&bytes[i..=i], 1),
        };
        out.extend_from_slice(ascii);
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_paths_decode_unreserved_escapes_and_merge_slashes() {
        assert_eq!(rule_path("/account"), "/account");
        assert_eq!(rule_path("/%61ccount"), "/account");
        assert_eq!(rule_path("/a%2fb%7E%2D"), "/a%2Fb~-");
        // Runs of `/` read as one; an escaped `/` is no `/`.
        assert_eq!(rule_path("//account"), "/account");
        assert_eq!(rule_path("/account///x//"), "/account/x/");
        assert_eq!(rule_path("/%2F/%2Faccount"), "/%2F/%2Faccount");
        assert_eq!(rule_path("/%2f%2F/%61"), "/%2F%2F/a");
        assert_eq!(rule_path("/%zz%4"), "/%zz%4");
        assert_eq!(rule_path("%"), "%");
        // One pass, like the inner service's decoder: a stray `%` stays as it is.
        assert_eq!(rule_path("/%a%30"), "/%a0");
    }

    fn rules(list: &[(RouteMatch, RouteAction)]) -> RouteRules {
        let mut rules = RouteRules::default();
        for (matcher, action) in list {
            rules.add(RouteRule {
                matcher: matcher.clone(),
                action: *action,
            });
        }
        rules
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn origin_readings_resolve_what_lenient_origins_resolve() {
        for (path, reading) in [
            ("/account", "/account"),
            ("/", "/"),
            ("", "/"),
            ("/Account/", "/account"),
            ("//account//x/", "/account/x"),
            ("/x/../account", "/account"),
            ("/x/..%2Faccount", "/account"),
            ("/x/%2e%2E/account", "/account"),
            ("/%2Faccount", "/account"),
            ("/%252Faccount", "/account"),
            ("/x\\..\\account", "/account"),
            ("/x/..;/account", "/account"),
            ("/account;jsessionid=1", "/account"),
            ("/account;/x.css", "/account/x.css"),
            ("/account%3F.css", "/account"),
            ("/account%23.css", "/account"),
            ("/account%00.css", "/account"),
            ("/account%0A", "/account"),
            ("/account%0d%0a.css", "/account"),
            ("/./account/.", "/account"),
            ("/../../account", "/account"),
            ("/%zz%4", "/%zz%4"),
            ("/caf%C3%A9", "/caf\u{e9}"),
            ("/%ff", "/\u{fffd}"),
            // Windows drops a segment's trailing dots and spaces (review RC).
            ("/account.", "/account"),
            ("/Account.%20./x", "/account/x"),
            ("/a.b/...", "/a.b"),
            ("/x/../.", "/"),
            // Spring trims white space around a segment (review RC).
            ("/%20Account%09/%0b%0c", "/account"),
            ("/x/%20..%20/account", "/account"),
            // IIS's `%u` escapes, overlong UTF-8 and fullwidth forms (review RC).
            ("/x/%u002e%U002E/account", "/account"),
            ("/x/..%u002Faccount", "/account"),
            ("/%u00e9%ud800", "/\u{e9}\u{fffd}"),
            ("/%u00", "/%u00"),
            ("/x/%c0%ae%c0%ae%c0%afaccount", "/account"),
            ("/x/..%c1%9caccount", "/account"),
            ("/x/%e0%80%ae%e0%80%ae/%f0%80%80%aeaccount", "/.account"),
            ("/x/..%ef%bc%8f%EF%BD%81ccount", "/account"),
            ("/%c0%80x", "/"),
            ("/%c0", "/\u{fffd}"),
            ("/%ef%bc%80", "/\u{ff00}"),
            ("/x/\u{ff0e}\u{ff0e}\u{ff0f}\u{ff21}ccount", "/account"),
            // NFKC's other path delimiters (review RL).
            ("/x/\u{2025}/account", "/account"),
            (
                "/x/%E2%80%A4%E2%80%A4/y/\u{fe52}\u{fe52}/\u{fe30}/account",
                "/account",
            ),
            ("/x\u{fe68}..\u{fe68}account\u{37e}.css", "/account"),
            ("/x/%EF%B9%AA2e%ef%b9%aa2E/account%EF%B9%94x", "/account"),
            ("/account\u{2026}/\u{fe19}", "/account"),
            (
                "/account\u{fe56}x/\u{fe5f}/\u{2047}\u{fe14}\u{fe16}",
                "/account",
            ),
            (
                "/dat\u{2100}ache/\u{2101}\u{2105}\u{2106}",
                "/data/cache/a/sc/oc/u",
            ),
            // Every other compatibility form, and letters with combining marks composed
            // (NFKC).
            ("/\u{1d41a}ccount", "/account"),
            ("/%F0%9D%90%9Account/%E2%93%90", "/account/a"),
            ("/\u{24b6}CCOUNT/\u{1d43}\u{1d2c}", "/account/aa"),
            ("/caf\u{65}\u{301}/CAF%45%CC%81", "/caf\u{e9}/caf\u{e9}"),
            ("/%C3%A9/\u{ff71}/\u{2460}", "/\u{e9}/\u{30a2}/1"),
            ("/x/\u{1d7ce}/../\u{1d41a}ccount", "/x/account"),
            ("/SETTI\u{307}NGS/I%CC%87", "/settings/i"),
            ("/%c1%81%CC%81ccount", "/\u{e1}ccount"),
            // Non-ASCII letters in lower case, and Unicode case mappings to ASCII letters
            // (review RF).
            ("/%C3%9Cbersicht/\u{dc}BER", "/\u{fc}bersicht/\u{fc}ber"),
            ("/%C5%BFettings", "/settings"),
            // Each letter on its own, through its upper case: `Σ`, `ς` and `σ` alike
            // wherever they stand, `µ` as `μ` (review RJ).
            (
                "/\u{39b}\u{3a3}/\u{3bb}\u{3c2}x",
                "/\u{3bb}\u{3c3}/\u{3bb}\u{3c3}x",
            ),
            (
                "/%CE%A3%CF%82%CF%83/%C2%B5",
                "/\u{3c3}\u{3c3}\u{3c3}/\u{3bc}",
            ),
            // An upper case of several letters is those letters (review RL).
            (
                "/\u{587}/%D4%B5%D5%92/\u{1fb3}/\u{1fbc}/\u{149}",
                "/\u{565}\u{582}/\u{565}\u{582}/\u{3b1}\u{3b9}/\u{3b1}\u{3b9}/\u{2bc}n",
            ),
            ("/\u{17f}ETTINGS", "/settings"),
            ("/%u017Fettings", "/settings"),
            ("/%25C5%25BFettings", "/settings"),
            ("/SETT%C4%B0NGS/sett%c4%b1ngs", "/settings/settings"),
            ("/%E2%84%AAiosk", "/kiosk"),
            ("/acce%C3%9F/acce\u{1e9e}", "/access/access"),
            (
                "/%EF%AC%80%EF%AC%81%EF%AC%82%EF%AC%83%EF%AC%84%EF%AC%85%EF%AC%86",
                "/fffiflffifflstst",
            ),
            (
                "/%EF%AC%87%C3%9E%C5%BE%E2%84%AB",
                "/\u{fb07}\u{fe}\u{17e}\u{e5}",
            ),
        ] {
            assert_eq!(origin_reading(path), reading, "{path:?}");
        }
        // Where the path is cut, an origin that reads on is a reading too.
        for (path, cut, read_on) in [
            ("/account", "/account", None),
            ("/account%3F.css", "/account", Some("/account?.css")),
            ("/static/x%3F/../../account", "/static/x", Some("/account")),
            (
                "/static/X%23/..%2F../Account",
                "/static/x",
                Some("/account"),
            ),
            ("/static/x%0a/../../account", "/static/x", Some("/account")),
        ] {
            let readings = origin_readings(path).unwrap();
            assert_eq!(
                (readings.0.as_str(), readings.1.as_deref()),
                (cut, read_on),
                "{path:?}"
            );
        }
    }

    /// A path NFKC swells past the bound is not read (an attacker's 64 KiB of U+FDFA,
    /// eighteen characters each, cost 49 ms a request): where rules read paths, it is not
    /// cached, whatever rule it would fall under; one that swells less is read and
    /// cached as before.
    #[test]
    fn a_path_nfkc_would_swell_past_the_bound_is_not_cached() {
        let rules = rules(&[
            (RouteMatch::Prefix("/account".into()), RouteAction::NoCache),
            (
                RouteMatch::Prefix("/news/".into()),
                RouteAction::Lifetime(MINUTE),
            ),
        ]);
        // 33 bytes each from 3: 40 of them add 1 200 bytes, 30 add 900.
        let swelling = |count: usize| format!("/news/{}", "\u{fdfa}".repeat(count));
        assert_eq!(origin_readings(&swelling(40)), None);
        assert_eq!(rules.lifetime(&swelling(40), None, HOUR), None);
        assert_eq!(
            rules.lifetime(
                &format!("/x/{}/../../\u{1d41a}ccount", "\u{fdfa}".repeat(40)),
                None,
                HOUR
            ),
            None
        );
        assert!(origin_readings(&swelling(30)).is_some());
        assert_eq!(rules.lifetime(&swelling(30), None, HOUR), Some(MINUTE));
        // Escaped, it swells in a decoding pass just the same.
        let escaped = format!("/news/{}", "%EF%B7%BA".repeat(40));
        assert_eq!(rules.lifetime(&escaped, None, HOUR), None);
        // No rule that reads paths: nothing is read, and the default holds.
        assert_eq!(
            RouteRules::default().lifetime(&swelling(40), None, HOUR),
            Some(HOUR)
        );
    }

    /// What a path holds (`;` parameters, escaped slashes, dot segments, in any number)
    /// never multiplies its readings: at most four, none longer than three times the path
    /// and NFKC's allowance (a letter's lower case may be three), so the rules cost what
    /// the path's length does, whatever an attacker puts in it (review SF).
    #[test]
    fn a_path_has_few_readings_whatever_it_holds() {
        for unit in [
            ";",
            ";%2F..%2F",
            "/..;/",
            "/./",
            "%2F..",
            ";a=%5C..%5C/",
            "%3F/../",
            "%252F..%252F",
            "/\u{ff0e}\u{ff0e}/",
            ";%0A/..",
            "\u{390}",
        ] {
            for count in [1, 64, 4096] {
                let path = format!("/static/{}", unit.repeat(count));
                let readings = every_origin_reading(&path).expect("no NFKC swell");
                assert!(readings.len() <= 4, "{unit:?} x {count}: {readings:?}");
                let bound = 3 * (path.len() + SWELL_LIMIT);
                assert!(
                    readings.iter().all(|reading| reading.len() <= bound),
                    "{unit:?} x {count}"
                );
            }
        }
    }

    #[test]
    fn only_odd_paths_are_read_again() {
        for odd in [
            "/a/", "/A", "/%61", "/a\\b", "/a;b", "/a/./b", "/a/../b", "//a", "/a/.b", "/a.",
            "/a./b", "/\u{e9}",
        ] {
            assert!(may_read_otherwise(odd), "{odd:?}");
        }
        for plain in ["/", "/a", "/a/b.css", "/a.b/c-d_e~f", "/a/b.c.d", ""] {
            assert!(!may_read_otherwise(plain), "{plain:?}");
        }
    }

    #[test]
    fn no_cache_rules_hold_for_every_spelling_an_origin_resolves_to_their_path() {
        let rules = rules(&[
            (RouteMatch::Prefix("/account".into()), RouteAction::NoCache),
            (RouteMatch::Exact("/stats".into()), RouteAction::NoCache),
            (
                RouteMatch::Prefix("/account/avatars/".into()),
                RouteAction::Lifetime(MINUTE),
            ),
            (RouteMatch::Prefix("/private/".into()), RouteAction::NoCache),
        ]);
        for path in [
            "/account",
            "/Account",
            "/ACCOUNT/settings",
            "/x/../account",
            "/x/..%2Faccount",
            "/x/..%252faccount",
            "/%2Faccount",
            "/static\\..\\account",
            "/static/..;/account",
            "/account;.css",
            "/stats/",
            "/Stats",
            "/stats;.css",
            "/stats%3F.css",
            "/x/%2e%2e/stats",
            // Tomcat drops a parameter before decoding, escaped `/` and all (review SD).
            "/stats;%2F..%2Fx.css",
            "/Stats;v=%5C..%5Cx",
            "/private",
            "/Private/x",
        ] {
            assert_eq!(rules.lifetime(path, None, HOUR), None, "{path:?}");
        }
        assert_eq!(rules.lifetime("/stats.css", None, HOUR), Some(HOUR));
        assert_eq!(rules.lifetime("/static/app.css", None, HOUR), Some(HOUR));
        assert_eq!(rules.lifetime("/News/", None, HOUR), Some(HOUR));
        assert_eq!(rules.lifetime("/privateer", None, HOUR), Some(HOUR));
        // Rails' `/private(.:format)` (review SD).
        assert_eq!(rules.lifetime("/private.json", None, HOUR), None);
        assert_eq!(rules.lifetime("/Private.css", None, HOUR), None);
        assert_eq!(rules.lifetime("/Privateer/", None, HOUR), Some(HOUR));
        // A longer lifetime rule below a `no_cache` prefix still wins in both readings.
        assert_eq!(
            rules.lifetime("/account/avatars/Me.png", None, HOUR),
            Some(MINUTE)
        );
        // Each reading picks a lifetime and the shorter wins: a lenient origin reads this
        // under the `/account/avatars/` rule, not `/account`; as written no rule names it.
        assert_eq!(
            rules.lifetime("/Account/Avatars/me.png", None, HOUR),
            Some(MINUTE)
        );
    }

    #[test]
    fn a_lifetime_rule_lengthens_only_what_both_readings_put_under_it() {
        let rules = rules(&[
            (
                RouteMatch::Prefix("/static/".into()),
                RouteAction::Lifetime(HOUR),
            ),
            (
                RouteMatch::Prefix("/news".into()),
                RouteAction::Lifetime(MINUTE),
            ),
        ]);
        // "Cache only /static/": as written these are under it, as a lenient origin
        // resolves them they are `/account` (review QY).
        for path in [
            "/static/..%2Faccount",
            "/static/..;/account",
            "/static/%2e%2e/account",
            "/static/..%5Caccount",
        ] {
            assert_eq!(
                rules.lifetime(path, None, Duration::ZERO),
                Some(Duration::ZERO)
            );
        }
        assert_eq!(
            rules.lifetime("/static/app.css", None, Duration::ZERO),
            Some(HOUR)
        );
        assert_eq!(
            rules.lifetime("/static/App.css", None, Duration::ZERO),
            Some(HOUR)
        );
        assert_eq!(
            rules.lifetime("/static/x/../app.css", None, Duration::ZERO),
            Some(HOUR)
        );
        assert_eq!(
            rules.lifetime("/staticfoo", None, Duration::ZERO),
            Some(Duration::ZERO)
        );
        // A strict router (the path as sent) reads these as no `/static/` path.
        for path in ["/%73tatic/app.css", "//static/app.css", "/static%2Fapp.css"] {
            assert_eq!(
                rules.lifetime(path, None, Duration::ZERO),
                Some(Duration::ZERO)
            );
        }
        assert_eq!(
            rules.lifetime("/static/%7Eapp.css", None, Duration::ZERO),
            Some(HOUR)
        );
        assert_eq!(rules.lifetime("/news/A", None, HOUR), Some(MINUTE));
        // The origin reads it under `/news`: no longer than that rule says.
        assert_eq!(rules.lifetime("/NEWS/a", None, HOUR), Some(MINUTE));
        assert_eq!(rules.lifetime("/other", None, HOUR), Some(HOUR));
    }

    #[test]
    fn a_route_pattern_is_the_routers_own_reading() {
        let rules = rules(&[
            (RouteMatch::Prefix("/users".into()), RouteAction::NoCache),
            (
                RouteMatch::Pattern("/users/{name}/avatar".into()),
                RouteAction::Lifetime(MINUTE),
            ),
        ]);
        assert_eq!(
            rules.lifetime("/users/Alice/avatar", Some("/users/{name}/avatar"), HOUR),
            Some(MINUTE)
        );
        assert_eq!(rules.lifetime("/Users/Alice", None, HOUR), None);
    }

    #[test]
    fn a_route_patterns_rule_holds_only_for_what_its_pattern_covers() {
        let rules = rules(&[
            (RouteMatch::Prefix("/account".into()), RouteAction::NoCache),
            (
                RouteMatch::Pattern("/static/{*path}".into()),
                RouteAction::Lifetime(HOUR),
            ),
            (
                RouteMatch::Pattern("/img/{name}.png".into()),
                RouteAction::Lifetime(HOUR),
            ),
        ]);
        let static_files = Some("/static/{*path}");
        for (path, lifetime) in [
            ("/static/app.css", Some(HOUR)),
            ("/static/App.css", Some(HOUR)),
            ("/static/a/../b%2Fc.css", Some(HOUR)),
            // The handler's `../account` resolves to another route (review RC).
            ("/static/..%2Faccount", None),
            ("/static/..%2Fnews", Some(MINUTE)),
            ("/static/x%3F/..%2F..%2Faccount", None),
        ] {
            assert_eq!(
                rules.lifetime(path, static_files, MINUTE),
                lifetime,
                "{path}"
            );
        }
        // A nested router's stripped path (`/users/Alice` for `/api/users/{id}`): the
        // pattern does not name this spelling; the full path's reading is checked.
        assert_eq!(
            rules.lifetime("/Users/Alice", Some("/api/users/{id}"), Duration::ZERO),
            Some(Duration::ZERO)
        );
        let nested = rules_with_nested();
        for path in ["/users/Alice", "/api/users/Alice"] {
            assert_eq!(
                nested.lifetime(path, Some("/api/users/{id}"), Duration::ZERO),
                Some(HOUR),
                "{path}"
            );
        }
        assert_eq!(
            nested.lifetime(
                "/api/users/..%2F..%2Faccount",
                Some("/api/users/{id}"),
                Duration::ZERO
            ),
            Some(Duration::ZERO)
        );
        let images = Some("/img/{name}.png");
        for (path, lifetime) in [
            ("/img/a.png", Some(HOUR)),
            ("/img/A.PNG", Some(HOUR)),
            ("/img/%61.png", Some(HOUR)),
            ("/img/..%2F.png", Some(MINUTE)),
            ("/img/..%2F..%2Faccount%3F.png", None),
        ] {
            assert_eq!(rules.lifetime(path, images, MINUTE), lifetime, "{path}");
        }
    }

    #[test]
    fn a_no_cache_rule_holds_for_a_reading_a_catch_all_pattern_covers() {
        let rules = rules(&[
            (RouteMatch::Prefix("/account".into()), RouteAction::NoCache),
            (
                RouteMatch::Pattern("/{*path}".into()),
                RouteAction::Lifetime(HOUR),
            ),
        ]);
        let everything = Some("/{*path}");
        // Review RE: the router sends `/account` to its own route; `/x/..%2Faccount`
        // reaches the catch-all, whose handler hands `x/../account` on.
        for (path, lifetime) in [
            ("/x/..%2Faccount", None),
            ("/Account", None),
            ("/news", Some(HOUR)),
            ("/News.html", Some(HOUR)),
            ("/x/..%2Fnews", Some(HOUR)),
        ] {
            assert_eq!(rules.lifetime(path, everything, MINUTE), lifetime, "{path}");
        }
    }

    fn rules_with_nested() -> RouteRules {
        rules(&[(
            RouteMatch::Pattern("/api/users/{id}".into()),
            RouteAction::Lifetime(HOUR),
        )])
    }

    #[test]
    fn route_patterns_cover_what_axum_routes_to_them() {
        for (pattern, reading, covered) in [
            ("/users/{id}", "/users/7", true),
            ("/users/{id}", "/users", false),
            ("/users/{id}", "/users/7/x", false),
            ("/Users/{id}/Avatar", "/users/7/avatar", true),
            ("/static/{*path}", "/static/a/b", true),
            ("/static/{*path}", "/account", false),
            ("/static/{*path}", "/static", false),
            ("/{*path}", "/", false),
            ("/static/*path", "/static/a", true),
            ("/users/:id", "/users/a", true),
            ("/{file}.png", "/a.png", true),
            ("/{file}.png", "/.png", false),
            ("/v{n}", "/v2", true),
            ("/v{n}", "/x2", false),
            ("/", "/", true),
            ("/", "/a", false),
        ] {
            assert_eq!(
                pattern_covers(pattern, reading),
                covered,
                "{pattern} {reading}"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any path: no panic. A path whose every `%` starts an escape: a rule path is its
            /// own rule path. (A stray `%` can meet a decoded hex digit, `%a%30` → `%a0`, as
            /// in any single-pass decoder, the inner service's included: rules match what one
            /// decoding pass sees, never a second.)
            #[test]
            fn rule_paths_are_stable(
                path in "[/a-zA-Z0-9%._~-]{0,24}",
                escaped in "([/a-zA-Z0-9._~-]|%[0-9a-fA-F]{2}){0,12}",
            ) {
                let _ = rule_path(&path);
                let once = rule_path(&escaped).into_owned();
                prop_assert_eq!(rule_path(&once), once.as_str());
            }

            /// A path the layer does not read again (most paths) is its own origin reading,
            /// so skipping the reading changes no decision.
            #[test]
                        fn plain_paths_are_their_own_origin_reading(path in "(/[a-z0-9._~-]{1,6}){1,5}") {
                if !may_read_otherwise(&path) {
                    prop_assert_eq!(origin_reading(&path), path);
                }
            }

            /// Any bytes, any text: decoding and folding never panic, and folding only
            /// shortens; the origin reading of any text is a path (review RC's `%u`,
            /// overlong and fullwidth forms, trimming).
            #[test]
            fn any_input_is_read_without_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..48),
                text in "([/%uUcCeEfF0-9a-fA-F.;\\\\ \t]|\\PC){0,40}",
            ) {
                let folded = fold_to_ascii(bytes.clone());
                prop_assert!(folded.len() <= bytes.len());
                let _ = decode_all(&bytes);
                let reading = origin_reading(&text);
                prop_assert!(reading.starts_with('/'));
                let _ = may_read_otherwise(&text);
            }

            /// Any path: no panic, and the origin reading is its own origin reading when
            /// it holds no escape (escapes are decoded a bounded number of times).
            #[test]
            fn origin_readings_are_stable(path in "[/a-zA-Z0-9%._~;\\\\-]{0,32}") {
                let reading = origin_reading(&path);
                if !reading.contains('%') {
                    prop_assert_eq!(origin_reading(&reading), reading);
                }
            }
        }
    }
}
