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

mod reading;

use std::borrow::Cow;
use std::time::Duration;

use reading::{every_origin_reading, may_read_otherwise};
pub(crate) use reading::{origin_reading, rule_path};

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

#[cfg(test)]
mod tests {
    use super::reading::origin_readings;
    use super::*;

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
}
